//! Networking resources between the replicated state and the proto: networks, subnets, ports,
//! floating IPs, security groups and their rules. Pure functions of values (and, for ports and
//! floating IPs, of the state they are seen in).
use flotilla_proto::v1 as pb;
use tonic::Status;

use super::convert::meta;
use crate::state::{
    Direction, Ethertype, FloatingIp, GatewaySpec, HostRoute, NetOutcome, Network, NetworkSpec,
    NetworkType, Port, SecurityGroup, SecurityGroupRule, State, Subnet, SubnetSpec,
};

fn status(up: bool) -> i32 {
    if up {
        pb::NetworkResourceStatus::Active as i32
    } else {
        pb::NetworkResourceStatus::Down as i32
    }
}

pub(super) fn network_type_to_pb(t: NetworkType) -> i32 {
    (match t {
        NetworkType::Vxlan => pb::NetworkType::Vxlan,
        NetworkType::Flat => pb::NetworkType::Flat,
        NetworkType::Vlan => pb::NetworkType::Vlan,
    }) as i32
}

pub fn network(n: &Network) -> pb::Network {
    pb::Network {
        id: n.id.clone(),
        name: n.name.clone(),
        project_id: n.project_id.clone(),
        network_type: network_type_to_pb(n.network_type),
        segmentation_id: n.segmentation_id,
        physical_network: n.physical_network.clone(),
        external: n.external,
        shared: n.shared,
        mtu: n.mtu,
        admin_state_up: n.admin_state_up,
        status: status(n.admin_state_up),
        subnet_ids: n.subnet_ids.clone(),
        description: n.description.clone(),
        meta: Some(meta(&n.meta)),
    }
}

fn routes_to_pb(routes: &[HostRoute]) -> Vec<pb::SubnetHostRoute> {
    routes
        .iter()
        .map(|r| pb::SubnetHostRoute {
            destination: r.destination.clone(),
            nexthop: r.nexthop.clone(),
        })
        .collect()
}

pub(super) fn routes_from_pb(routes: Vec<pb::SubnetHostRoute>) -> Vec<HostRoute> {
    routes
        .into_iter()
        .map(|r| HostRoute {
            destination: r.destination,
            nexthop: r.nexthop,
        })
        .collect()
}

pub fn subnet(s: &Subnet) -> pb::Subnet {
    pb::Subnet {
        id: s.id.clone(),
        network_id: s.network_id.clone(),
        name: s.name.clone(),
        project_id: s.project_id.clone(),
        cidr: s.cidr.to_string(),
        ip_version: s.cidr.family.version(),
        gateway_ip: s.gateway_ip(),
        allocation_pools: s
            .pool_strings()
            .into_iter()
            .map(|(start, end)| pb::SubnetAllocationPool { start, end })
            .collect(),
        dns_nameservers: s.dns_nameservers.clone(),
        enable_dhcp: s.enable_dhcp,
        host_routes: routes_to_pb(&s.host_routes),
        description: s.description.clone(),
        meta: Some(meta(&s.meta)),
    }
}

/// A port as users see it: its host is its server's owner host, and it is ACTIVE once that
/// host's agent reported it wired (DOWN before, after a move until the new host reports it,
/// while the host is down, and when unbound or administratively down).
pub fn port(state: &State, p: &Port) -> pb::Port {
    let st = if p.admin_state_up && state.port_wired(p) {
        pb::NetworkResourceStatus::Active
    } else {
        pb::NetworkResourceStatus::Down
    };
    let host = state
        .port_host(p)
        .map(|h| h.info.hostname.clone())
        .unwrap_or_default();
    pb::Port {
        id: p.id.clone(),
        network_id: p.network_id.clone(),
        name: p.name.clone(),
        project_id: p.project_id.clone(),
        mac_address: p.mac_address.clone(),
        fixed_ips: p
            .fixed_ips
            .iter()
            .map(|f| pb::PortFixedIp {
                subnet_id: f.subnet_id.clone(),
                ip_address: f.ip_address.clone(),
            })
            .collect(),
        security_group_ids: p.security_group_ids.clone(),
        device_owner: p.device_owner.clone(),
        device_id: p.device_id.clone(),
        host,
        status: st as i32,
        admin_state_up: p.admin_state_up,
        port_security_enabled: p.port_security_enabled,
        description: p.description.clone(),
        meta: Some(meta(&p.meta)),
    }
}

pub fn floating_ip(state: &State, f: &FloatingIp) -> pb::FloatingIp {
    let port = state.port(&f.port_id);
    let server_id = port
        .filter(|p| p.device_owner.starts_with("compute:"))
        .map(|p| p.device_id.clone())
        .unwrap_or_default();
    pb::FloatingIp {
        id: f.id.clone(),
        floating_network_id: f.network_id.clone(),
        floating_ip_address: f.address.clone(),
        port_id: f.port_id.clone(),
        fixed_ip_address: f.fixed_ip_address.clone(),
        project_id: f.project_id.clone(),
        status: status(port.is_some()),
        server_id,
        host: port
            .and_then(|p| state.port_host(p))
            .map(|h| h.info.hostname.clone())
            .unwrap_or_default(),
        description: f.description.clone(),
        meta: Some(meta(&f.meta)),
    }
}

fn direction_to_pb(d: Direction) -> i32 {
    (match d {
        Direction::Ingress => pb::SecurityGroupRuleDirection::Ingress,
        Direction::Egress => pb::SecurityGroupRuleDirection::Egress,
    }) as i32
}

pub fn rule(r: &SecurityGroupRule) -> pb::SecurityGroupRule {
    pb::SecurityGroupRule {
        id: r.id.clone(),
        security_group_id: r.security_group_id.clone(),
        direction: direction_to_pb(r.direction),
        ethertype: (match r.ethertype {
            Ethertype::Ipv4 => pb::SecurityGroupRuleEthertype::Ipv4,
            Ethertype::Ipv6 => pb::SecurityGroupRuleEthertype::Ipv6,
        }) as i32,
        protocol: r.protocol.clone(),
        port_range_min: r.port_range_min,
        port_range_max: r.port_range_max,
        remote_ip_prefix: r.remote_ip_prefix.clone(),
        remote_group_id: r.remote_group_id.clone(),
        description: r.description.clone(),
        project_id: r.project_id.clone(),
        meta: Some(meta(&r.meta)),
    }
}

pub fn security_group(state: &State, g: &SecurityGroup) -> pb::SecurityGroup {
    pb::SecurityGroup {
        id: g.id.clone(),
        name: g.name.clone(),
        description: g.description.clone(),
        project_id: g.project_id.clone(),
        rules: state.rules_of(&g.id).map(rule).collect(),
        meta: Some(meta(&g.meta)),
    }
}

pub(super) fn direction_from_pb(v: i32) -> Result<Option<Direction>, Status> {
    match pb::SecurityGroupRuleDirection::try_from(v) {
        Ok(pb::SecurityGroupRuleDirection::Unspecified) => Ok(None),
        Ok(pb::SecurityGroupRuleDirection::Ingress) => Ok(Some(Direction::Ingress)),
        Ok(pb::SecurityGroupRuleDirection::Egress) => Ok(Some(Direction::Egress)),
        Err(_) => Err(Status::invalid_argument(format!("unknown direction {v}"))),
    }
}

pub(super) fn network_type_from_pb(v: i32) -> Result<NetworkType, Status> {
    match pb::NetworkType::try_from(v) {
        Ok(pb::NetworkType::Unspecified | pb::NetworkType::Vxlan) => Ok(NetworkType::Vxlan),
        Ok(pb::NetworkType::Flat) => Ok(NetworkType::Flat),
        Ok(pb::NetworkType::Vlan) => Ok(NetworkType::Vlan),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown network type {v}"
        ))),
    }
}

pub(super) fn ethertype_from_pb(v: i32) -> Result<Ethertype, Status> {
    match pb::SecurityGroupRuleEthertype::try_from(v) {
        Ok(pb::SecurityGroupRuleEthertype::Unspecified | pb::SecurityGroupRuleEthertype::Ipv4) => {
            Ok(Ethertype::Ipv4)
        }
        Ok(pb::SecurityGroupRuleEthertype::Ipv6) => Ok(Ethertype::Ipv6),
        Err(_) => Err(Status::invalid_argument(format!("unknown ethertype {v}"))),
    }
}

/// A new subnet's gateway: `gateway_ip`, none (`disable_gateway`) or the default.
fn gateway_from_pb(disable_gateway: bool, gateway_ip: String) -> Result<GatewaySpec, Status> {
    match (disable_gateway, gateway_ip.is_empty()) {
        (true, true) => Ok(GatewaySpec::None),
        (true, false) => Err(Status::invalid_argument(
            "give either gateway_ip or disable_gateway, not both",
        )),
        (false, true) => Ok(GatewaySpec::Default),
        (false, false) => Ok(GatewaySpec::Address(gateway_ip)),
    }
}

/// The network a create request asks for.
pub(super) fn network_spec(
    id: String,
    r: pb::CreateNetworkRequest,
    project_id: String,
    network_type: NetworkType,
    vni_range: (u32, u32),
) -> NetworkSpec {
    NetworkSpec {
        id,
        name: r.name,
        description: r.description,
        project_id,
        network_type,
        segmentation_id: r.segmentation_id,
        physical_network: r.physical_network,
        external: r.external,
        shared: r.shared,
        mtu: r.mtu,
        admin_state_up: r.admin_state_up.unwrap_or(true),
        vni_range,
    }
}

/// The subnet a create request asks for.
pub(super) fn subnet_spec(
    id: String,
    r: pb::CreateSubnetRequest,
    network_id: String,
) -> Result<SubnetSpec, Status> {
    let gateway = gateway_from_pb(r.disable_gateway, r.gateway_ip)?;
    Ok(SubnetSpec {
        id,
        network_id,
        name: r.name,
        description: r.description,
        cidr: r.cidr,
        ip_version: r.ip_version,
        gateway,
        allocation_pools: r
            .allocation_pools
            .into_iter()
            .map(|a| (a.start, a.end))
            .collect(),
        dns_nameservers: r.dns_nameservers,
        enable_dhcp: r.enable_dhcp.unwrap_or(true),
        host_routes: routes_from_pb(r.host_routes),
    })
}

pub(super) fn unexpected(o: NetOutcome) -> Status {
    Status::internal(format!("unexpected outcome {o:?}"))
}

/// A resource a networking command answers with.
pub(super) trait Answer: Sized {
    type Pb;
    /// The resource `o` carries.
    fn take(o: NetOutcome) -> Result<Self, Status>;
    /// The resource as users see it now in `state` (itself if it is gone since).
    fn now(&self, state: &State) -> Self::Pb;
}

macro_rules! answer {
    ($($t:ident => $pb:ty, $lookup:ident, $show:expr;)*) => {$(
        impl Answer for $t {
            type Pb = $pb;
            fn take(o: NetOutcome) -> Result<$t, Status> {
                match o {
                    NetOutcome::$t(x) => Ok(x),
                    o => Err(unexpected(o)),
                }
            }
            fn now(&self, state: &State) -> $pb {
                let show: fn(&State, &$t) -> $pb = $show;
                show(state, state.$lookup(&self.id).unwrap_or(self))
            }
        }
    )*};
}

answer! {
    Network => pb::Network, network, |_, n| network(n);
    Subnet => pb::Subnet, subnet, |_, s| subnet(s);
    Port => pb::Port, port, port;
    FloatingIp => pb::FloatingIp, floating_ip, floating_ip;
    SecurityGroup => pb::SecurityGroup, security_group, security_group;
}

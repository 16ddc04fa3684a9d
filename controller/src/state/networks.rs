//! Tenant networking in replicated state (Neutron's model): networks, subnets, ports, floating
//! IPs. IPAM happens here, in `apply` (I3): an address is handed out by the entry that records
//! it, so two concurrent requests can never get the same one. Security groups are in
//! [`super::security_groups`].
//!
//! Ids (and the ids of a project's `default` security group, should this entry create it) are
//! stamped by the proposer; VNIs, MAC addresses and fixed addresses are chosen here from state
//! alone, so every replica picks the same.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ipam::{self, Cidr, Family, Pool};
use super::quota::{Resource, ResourceDelta};
use super::security_groups::{SecurityGroup, SecurityGroupRule};
use super::{validate, Change, Command, Envelope, EventAction, Meta, Outcome, Rejection, State};

pub(super) type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// The VXLAN VNIs a tenant network may get when the leader's configuration names none.
pub const DEFAULT_VNI_RANGE: (u32, u32) = (1, 65_535);
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Generated MAC addresses: this prefix (OpenStack's `fa:16:3e`) and a 24-bit counter.
pub const MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3e];
/// Physical MTU assumed for flat and VLAN networks; VXLAN takes 50 bytes of it.
pub const PHYSICAL_MTU: u32 = 1500;
pub const VXLAN_OVERHEAD: u32 = 50;
/// What owns an address that backs a floating IP (instead of a port id).
const FIP_OWNER: &str = "floatingip:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkType {
    Vxlan,
    Flat,
    Vlan,
}

impl NetworkType {
    pub fn max_mtu(self) -> u32 {
        match self {
            NetworkType::Vxlan => PHYSICAL_MTU - VXLAN_OVERHEAD,
            NetworkType::Flat | NetworkType::Vlan => PHYSICAL_MTU,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub network_type: NetworkType,
    /// VNI (VXLAN) or VLAN id; 0 for flat.
    pub segmentation_id: u32,
    pub physical_network: String,
    pub external: bool,
    pub shared: bool,
    pub mtu: u32,
    pub admin_state_up: bool,
    /// In creation order.
    pub subnet_ids: Vec<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub cidr: Cidr,
    pub gateway: Option<u128>,
    /// Sorted, disjoint, inside the CIDR, without the gateway.
    pub pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub enable_dhcp: bool,
    pub host_routes: Vec<HostRoute>,
    /// Address → owner (a port id, or `floatingip:<id>`).
    pub allocated: BTreeMap<u128, String>,
    pub meta: Meta,
}

impl Subnet {
    pub fn gateway_ip(&self) -> String {
        self.gateway
            .map(|g| ipam::format_ip(self.cidr.family, g))
            .unwrap_or_default()
    }

    pub fn pool_strings(&self) -> Vec<(String, String)> {
        let f = self.cidr.family;
        self.pools
            .iter()
            .map(|p| (ipam::format_ip(f, p.start), ipam::format_ip(f, p.end)))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub mac_address: String,
    pub fixed_ips: Vec<FixedIp>,
    pub security_group_ids: Vec<String>,
    pub device_owner: String,
    pub device_id: String,
    pub admin_state_up: bool,
    pub port_security_enabled: bool,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    pub network_id: String,
    pub subnet_id: String,
    pub address: String,
    pub project_id: String,
    /// Associated port and which of its addresses; empty when unassociated.
    pub port_id: String,
    pub fixed_ip_address: String,
    pub description: String,
    pub meta: Meta,
}

/// What `CreateNetwork` records; the API has checked who may set the admin-only fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub network_type: NetworkType,
    /// 0 = allocate (VXLAN).
    pub segmentation_id: u32,
    pub physical_network: String,
    pub external: bool,
    pub shared: bool,
    pub mtu: Option<u32>,
    pub admin_state_up: bool,
    /// Inclusive range tenant VNIs come from (the leader's configuration).
    pub vni_range: (u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewaySpec {
    /// The first usable address of the CIDR.
    Default,
    None,
    Address(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub cidr: String,
    /// 0 = derived from the CIDR.
    pub ip_version: u32,
    pub gateway: GatewaySpec,
    /// (start, end); empty = the whole usable range except the gateway.
    pub allocation_pools: Vec<(String, String)>,
    pub dns_nameservers: Vec<String>,
    pub enable_dhcp: bool,
    pub host_routes: Vec<HostRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub id: String,
    pub network_id: String,
    /// The owner; may differ from the network's for a shared network.
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// Empty = generated.
    pub mac_address: String,
    /// Empty = one address from each IP version's first subnet with room.
    pub fixed_ips: Vec<FixedIp>,
    /// Ids; empty = the project's `default` group (unless port security is off).
    pub security_group_ids: Vec<String>,
    pub port_security_enabled: bool,
    pub admin_state_up: bool,
    pub device_owner: String,
    pub device_id: String,
    /// Ids for the project's `default` group and its rules, used when this entry creates it.
    pub default_group_ids: Vec<String>,
}

/// Networking commands, carried by [`Command::Networking`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetCommand {
    CreateNetwork(NetworkSpec),
    UpdateNetwork {
        network_id: String,
        name: Option<String>,
        description: Option<String>,
        admin_state_up: Option<bool>,
        shared: Option<bool>,
        external: Option<bool>,
        mtu: Option<u32>,
    },
    DeleteNetwork {
        network_id: String,
    },
    CreateSubnet(SubnetSpec),
    UpdateSubnet {
        subnet_id: String,
        name: Option<String>,
        description: Option<String>,
        /// `Some("")` removes the gateway.
        gateway_ip: Option<String>,
        enable_dhcp: Option<bool>,
        dns_nameservers: Option<Vec<String>>,
        host_routes: Option<Vec<HostRoute>>,
    },
    DeleteSubnet {
        subnet_id: String,
    },
    CreatePort(PortSpec),
    UpdatePort {
        port_id: String,
        name: Option<String>,
        description: Option<String>,
        admin_state_up: Option<bool>,
        port_security_enabled: Option<bool>,
        security_group_ids: Option<Vec<String>>,
    },
    DeletePort {
        port_id: String,
    },
    CreateFloatingIp {
        id: String,
        network_id: String,
        project_id: String,
        /// Empty = the lowest free address.
        address: String,
        /// Associate right away when not empty.
        port_id: String,
        fixed_ip_address: String,
        description: String,
    },
    UpdateFloatingIp {
        floating_ip_id: String,
        description: Option<String>,
    },
    DeleteFloatingIp {
        floating_ip_id: String,
    },
    AssociateFloatingIp {
        floating_ip_id: String,
        port_id: String,
        /// Empty = the port's first IPv4 address.
        fixed_ip_address: String,
    },
    DisassociateFloatingIp {
        floating_ip_id: String,
    },
    CreateSecurityGroup {
        id: String,
        project_id: String,
        name: String,
        description: String,
        /// Ids of its two egress rules, then ids for the project's `default` group.
        fresh_ids: Vec<String>,
    },
    UpdateSecurityGroup {
        group_id: String,
        name: Option<String>,
        description: Option<String>,
    },
    DeleteSecurityGroup {
        group_id: String,
    },
    CreateSecurityGroupRule(super::security_groups::RuleSpec),
    DeleteSecurityGroupRule {
        rule_id: String,
    },
    /// Creates the project's `default` group unless it has one.
    EnsureDefaultSecurityGroup {
        project_id: String,
        fresh_ids: Vec<String>,
    },
}

impl NetCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            NetCommand::CreateNetwork(_) => "create_network",
            NetCommand::UpdateNetwork { .. } => "update_network",
            NetCommand::DeleteNetwork { .. } => "delete_network",
            NetCommand::CreateSubnet(_) => "create_subnet",
            NetCommand::UpdateSubnet { .. } => "update_subnet",
            NetCommand::DeleteSubnet { .. } => "delete_subnet",
            NetCommand::CreatePort(_) => "create_port",
            NetCommand::UpdatePort { .. } => "update_port",
            NetCommand::DeletePort { .. } => "delete_port",
            NetCommand::CreateFloatingIp { .. } => "create_floating_ip",
            NetCommand::UpdateFloatingIp { .. } => "update_floating_ip",
            NetCommand::DeleteFloatingIp { .. } => "delete_floating_ip",
            NetCommand::AssociateFloatingIp { .. } => "associate_floating_ip",
            NetCommand::DisassociateFloatingIp { .. } => "disassociate_floating_ip",
            NetCommand::CreateSecurityGroup { .. } => "create_security_group",
            NetCommand::UpdateSecurityGroup { .. } => "update_security_group",
            NetCommand::DeleteSecurityGroup { .. } => "delete_security_group",
            NetCommand::CreateSecurityGroupRule(_) => "create_security_group_rule",
            NetCommand::DeleteSecurityGroupRule { .. } => "delete_security_group_rule",
            NetCommand::EnsureDefaultSecurityGroup { .. } => "ensure_default_security_group",
        }
    }
}

/// What a networking command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetOutcome {
    Network(Network),
    Subnet(Subnet),
    Port(Port),
    FloatingIp(FloatingIp),
    SecurityGroup(SecurityGroup),
    SecurityGroupRule(SecurityGroupRule),
}

/// Networking resources of the state. Plain `BTreeMap`s: encoding stays deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Networking {
    pub(super) networks: BTreeMap<String, Network>,
    pub(super) subnets: BTreeMap<String, Subnet>,
    pub(super) ports: BTreeMap<String, Port>,
    pub(super) floating_ips: BTreeMap<String, FloatingIp>,
    pub(super) security_groups: BTreeMap<String, SecurityGroup>,
    pub(super) rules: BTreeMap<String, SecurityGroupRule>,
    /// Counter behind generated MAC addresses (only ever grows).
    pub(super) next_mac: u32,
    /// Host id → the existing ports its agent last reported wired (observed state).
    pub(super) wired: BTreeMap<String, BTreeSet<String>>,
}

pub(super) fn ok(out: NetOutcome, change: Change<'static>) -> Applied {
    Ok((Outcome::Net(Box::new(out)), Some(change)))
}

pub(super) fn change(
    resource_type: &'static str,
    id: &str,
    name: &str,
    action: EventAction,
    project_id: &str,
) -> Change<'static> {
    Change {
        resource_type,
        resource_id: id.to_owned(),
        resource_name: name.to_owned(),
        action,
        project_id: project_id.to_owned(),
    }
}

pub(super) fn one(r: Resource) -> ResourceDelta {
    [(r, 1)].into_iter().collect()
}

fn invalid(msg: impl Into<String>) -> Rejection {
    Rejection::Invalid(msg.into())
}

fn precondition(msg: impl Into<String>) -> Rejection {
    Rejection::FailedPrecondition(msg.into())
}

fn check_name(kind: &str, name: &str) -> Result<(), Rejection> {
    // Neutron's names may be empty; when given they follow the usual rules.
    if name.is_empty() {
        return Ok(());
    }
    validate::name(kind, name).map_err(Rejection::Invalid)
}

fn check_description(kind: &str, text: &str) -> Result<(), Rejection> {
    validate::description(kind, text).map_err(Rejection::Invalid)
}

/// `aa:bb:cc:dd:ee:ff`, lower case, unicast.
pub fn normalize_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let bad = || format!("{mac:?} is not a MAC address (e.g. fa:16:3e:12:34:56)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut bytes = [0u8; 6];
    for (b, p) in bytes.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if bytes[0] & 1 == 1 {
        return Err(format!("{mac:?} is a multicast MAC address"));
    }
    if bytes == [0; 6] {
        return Err(format!("{mac:?} is not a usable MAC address"));
    }
    Ok(format_mac(bytes))
}

fn format_mac(b: [u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn check_mtu(t: NetworkType, mtu: u32) -> Result<(), Rejection> {
    if !(68..=t.max_mtu()).contains(&mtu) {
        return Err(invalid(format!(
            "mtu {mtu} is out of range: a {t:?} network allows 68 to {}",
            t.max_mtu()
        )));
    }
    Ok(())
}

fn check_dns(family: Family, servers: &[String]) -> Result<(), Rejection> {
    if servers.len() > 5 {
        return Err(invalid("at most 5 DNS name servers per subnet"));
    }
    for s in servers {
        let (f, _) = ipam::parse_ip(s).map_err(Rejection::Invalid)?;
        if f != family {
            return Err(invalid(format!(
                "DNS name server {s} is not an IPv{} address like the subnet",
                family.version()
            )));
        }
    }
    Ok(())
}

fn check_routes(cidr: &Cidr, routes: &[HostRoute]) -> Result<(), Rejection> {
    if routes.len() > 20 {
        return Err(invalid("at most 20 host routes per subnet"));
    }
    for r in routes {
        let dest = Cidr::parse(&r.destination).map_err(Rejection::Invalid)?;
        let (f, _) = ipam::parse_ip(&r.nexthop).map_err(Rejection::Invalid)?;
        if dest.family != cidr.family || f != cidr.family {
            return Err(invalid(format!(
                "host route {} via {} is not IPv{} like the subnet",
                r.destination,
                r.nexthop,
                cidr.family.version()
            )));
        }
    }
    Ok(())
}

impl State {
    pub(super) fn apply_networking(&mut self, revision: u64, env: &Envelope) -> Applied {
        let Command::Networking(cmd) = &env.command else {
            unreachable!("apply_networking called with a non-networking command")
        };
        let t = env.time_ms;
        match cmd {
            NetCommand::CreateNetwork(spec) => self.create_network(revision, t, spec),
            NetCommand::UpdateNetwork {
                network_id,
                name,
                description,
                admin_state_up,
                shared,
                external,
                mtu,
            } => {
                let n = self.network_or_reject(network_id)?.clone();
                let mut next = n.clone();
                if let Some(v) = name {
                    check_name("network", v)?;
                    next.name = v.clone();
                }
                if let Some(v) = description {
                    check_description("network", v)?;
                    next.description = v.clone();
                }
                if let Some(v) = admin_state_up {
                    next.admin_state_up = *v;
                }
                if let Some(v) = mtu {
                    check_mtu(n.network_type, *v)?;
                    next.mtu = *v;
                }
                if let Some(v) = shared {
                    if !*v && n.shared {
                        let foreign = self
                            .net
                            .ports
                            .values()
                            .any(|p| p.network_id == n.id && p.project_id != n.project_id);
                        if foreign {
                            return Err(precondition(format!(
                                "network {} has ports of other projects; it must stay shared \
                                 until they are deleted",
                                n.id
                            )));
                        }
                    }
                    next.shared = *v;
                }
                if let Some(v) = external {
                    if !*v
                        && n.external
                        && self.net.floating_ips.values().any(|f| f.network_id == n.id)
                    {
                        return Err(precondition(format!(
                            "floating IPs are allocated from network {}; delete them first",
                            n.id
                        )));
                    }
                    next.external = *v;
                }
                if next == n {
                    return Ok((Outcome::Net(Box::new(NetOutcome::Network(n))), None));
                }
                next.meta.touch(revision, t);
                self.net.networks.insert(next.id.clone(), next.clone());
                let c = change(
                    "network",
                    &next.id,
                    &next.name,
                    EventAction::Updated,
                    &next.project_id,
                );
                ok(NetOutcome::Network(next), c)
            }
            NetCommand::DeleteNetwork { network_id } => {
                let n = self.network_or_reject(network_id)?.clone();
                let ports = self
                    .net
                    .ports
                    .values()
                    .filter(|p| p.network_id == n.id)
                    .count();
                if ports > 0 {
                    return Err(precondition(format!(
                        "network {} still has {ports} port(s); delete them first",
                        n.id
                    )));
                }
                if self.net.floating_ips.values().any(|f| f.network_id == n.id) {
                    return Err(precondition(format!(
                        "floating IPs are allocated from network {}; delete them first",
                        n.id
                    )));
                }
                for sid in &n.subnet_ids {
                    if let Some(s) = self.net.subnets.remove(sid) {
                        self.release(&s.project_id, &one(Resource::Subnets));
                        self.more_changes.push(change(
                            "subnet",
                            &s.id,
                            &s.name,
                            EventAction::Deleted,
                            &s.project_id,
                        ));
                    }
                }
                self.net.networks.remove(&n.id);
                self.release(&n.project_id, &one(Resource::Networks));
                let c = change(
                    "network",
                    &n.id,
                    &n.name,
                    EventAction::Deleted,
                    &n.project_id,
                );
                Ok((Outcome::Deleted, Some(c)))
            }
            NetCommand::CreateSubnet(spec) => self.create_subnet(revision, t, spec),
            NetCommand::UpdateSubnet {
                subnet_id,
                name,
                description,
                gateway_ip,
                enable_dhcp,
                dns_nameservers,
                host_routes,
            } => {
                let s = self.subnet_or_reject(subnet_id)?.clone();
                let mut next = s.clone();
                if let Some(v) = name {
                    check_name("subnet", v)?;
                    next.name = v.clone();
                }
                if let Some(v) = description {
                    check_description("subnet", v)?;
                    next.description = v.clone();
                }
                if let Some(v) = enable_dhcp {
                    next.enable_dhcp = *v;
                }
                if let Some(v) = dns_nameservers {
                    check_dns(s.cidr.family, v)?;
                    next.dns_nameservers = v.clone();
                }
                if let Some(v) = host_routes {
                    check_routes(&s.cidr, v)?;
                    next.host_routes = v.clone();
                }
                if let Some(g) = gateway_ip {
                    next.gateway = if g.is_empty() {
                        None
                    } else {
                        let addr = check_gateway(&s.cidr, g)?;
                        if ipam::in_pools(&s.pools, addr) {
                            return Err(invalid(format!(
                                "gateway {g} is inside an allocation pool of subnet {}",
                                s.id
                            )));
                        }
                        if s.allocated.contains_key(&addr) {
                            return Err(precondition(format!(
                                "gateway {g} is allocated to a port"
                            )));
                        }
                        Some(addr)
                    };
                }
                if next == s {
                    return Ok((Outcome::Net(Box::new(NetOutcome::Subnet(s))), None));
                }
                next.meta.touch(revision, t);
                self.net.subnets.insert(next.id.clone(), next.clone());
                let c = change(
                    "subnet",
                    &next.id,
                    &next.name,
                    EventAction::Updated,
                    &next.project_id,
                );
                ok(NetOutcome::Subnet(next), c)
            }
            NetCommand::DeleteSubnet { subnet_id } => {
                let s = self.subnet_or_reject(subnet_id)?.clone();
                if !s.allocated.is_empty() {
                    return Err(precondition(format!(
                        "{} address(es) of subnet {} are allocated (to ports or floating IPs); \
                         delete those first",
                        s.allocated.len(),
                        s.id
                    )));
                }
                self.net.subnets.remove(&s.id);
                self.release(&s.project_id, &one(Resource::Subnets));
                if let Some(n) = self.net.networks.get_mut(&s.network_id) {
                    n.subnet_ids.retain(|id| *id != s.id);
                }
                let c = change(
                    "subnet",
                    &s.id,
                    &s.name,
                    EventAction::Deleted,
                    &s.project_id,
                );
                Ok((Outcome::Deleted, Some(c)))
            }
            NetCommand::CreatePort(spec) => self.create_port(revision, t, spec),
            NetCommand::UpdatePort {
                port_id,
                name,
                description,
                admin_state_up,
                port_security_enabled,
                security_group_ids,
            } => {
                let p = self.port_or_reject(port_id)?.clone();
                let mut next = p.clone();
                if let Some(v) = name {
                    check_name("port", v)?;
                    next.name = v.clone();
                }
                if let Some(v) = description {
                    check_description("port", v)?;
                    next.description = v.clone();
                }
                if let Some(v) = admin_state_up {
                    next.admin_state_up = *v;
                }
                if let Some(v) = port_security_enabled {
                    next.port_security_enabled = *v;
                }
                if let Some(groups) = security_group_ids {
                    self.check_port_groups(&p.project_id, groups)?;
                    next.security_group_ids = groups.clone();
                }
                if !next.port_security_enabled && !next.security_group_ids.is_empty() {
                    return Err(invalid(
                        "a port without port security cannot have security groups; remove them \
                         in the same request",
                    ));
                }
                if next == p {
                    return Ok((Outcome::Net(Box::new(NetOutcome::Port(p))), None));
                }
                next.meta.touch(revision, t);
                self.net.ports.insert(next.id.clone(), next.clone());
                let c = change(
                    "port",
                    &next.id,
                    &next.name,
                    EventAction::Updated,
                    &next.project_id,
                );
                ok(NetOutcome::Port(next), c)
            }
            NetCommand::DeletePort { port_id } => {
                let p = self.port_or_reject(port_id)?.clone();
                if p.device_owner.starts_with("compute:") && !p.device_id.is_empty() {
                    return Err(precondition(format!(
                        "port {} is attached to server {}; delete the server or detach the port",
                        p.id, p.device_id
                    )));
                }
                self.remove_port(revision, t, &p);
                let c = change("port", &p.id, &p.name, EventAction::Deleted, &p.project_id);
                Ok((Outcome::Deleted, Some(c)))
            }
            NetCommand::CreateFloatingIp {
                id,
                network_id,
                project_id,
                address,
                port_id,
                fixed_ip_address,
                description,
            } => self.create_floating_ip(
                revision,
                t,
                FipRequest {
                    id,
                    network_id,
                    project_id,
                    address,
                    port_id,
                    fixed_ip_address,
                    description,
                },
            ),
            NetCommand::UpdateFloatingIp {
                floating_ip_id,
                description,
            } => {
                let f = self.floating_ip_or_reject(floating_ip_id)?.clone();
                let mut next = f.clone();
                if let Some(v) = description {
                    check_description("floating IP", v)?;
                    next.description = v.clone();
                }
                if next == f {
                    return Ok((Outcome::Net(Box::new(NetOutcome::FloatingIp(f))), None));
                }
                next.meta.touch(revision, t);
                self.net.floating_ips.insert(next.id.clone(), next.clone());
                let c = change(
                    "floating_ip",
                    &next.id,
                    &next.address,
                    EventAction::Updated,
                    &next.project_id,
                );
                ok(NetOutcome::FloatingIp(next), c)
            }
            NetCommand::DeleteFloatingIp { floating_ip_id } => {
                let f = self.floating_ip_or_reject(floating_ip_id)?.clone();
                self.net.floating_ips.remove(&f.id);
                if let Some(s) = self.net.subnets.get_mut(&f.subnet_id) {
                    s.allocated
                        .retain(|_, owner| *owner != format!("{FIP_OWNER}{}", f.id));
                }
                self.release(&f.project_id, &one(Resource::FloatingIps));
                let c = change(
                    "floating_ip",
                    &f.id,
                    &f.address,
                    EventAction::Deleted,
                    &f.project_id,
                );
                Ok((Outcome::Deleted, Some(c)))
            }
            NetCommand::AssociateFloatingIp {
                floating_ip_id,
                port_id,
                fixed_ip_address,
            } => {
                let f = self.floating_ip_or_reject(floating_ip_id)?.clone();
                let mut next = f.clone();
                let fixed = self.fip_target(&f, port_id, fixed_ip_address)?;
                next.port_id = port_id.clone();
                next.fixed_ip_address = fixed;
                if next == f {
                    return Ok((Outcome::Net(Box::new(NetOutcome::FloatingIp(f))), None));
                }
                next.meta.touch(revision, t);
                self.net.floating_ips.insert(next.id.clone(), next.clone());
                let c = change(
                    "floating_ip",
                    &next.id,
                    &next.address,
                    EventAction::Updated,
                    &next.project_id,
                );
                ok(NetOutcome::FloatingIp(next), c)
            }
            NetCommand::DisassociateFloatingIp { floating_ip_id } => {
                let f = self.floating_ip_or_reject(floating_ip_id)?.clone();
                if f.port_id.is_empty() {
                    return Ok((Outcome::Net(Box::new(NetOutcome::FloatingIp(f))), None));
                }
                let mut next = f;
                next.port_id.clear();
                next.fixed_ip_address.clear();
                next.meta.touch(revision, t);
                self.net.floating_ips.insert(next.id.clone(), next.clone());
                let c = change(
                    "floating_ip",
                    &next.id,
                    &next.address,
                    EventAction::Updated,
                    &next.project_id,
                );
                ok(NetOutcome::FloatingIp(next), c)
            }
            NetCommand::CreateSecurityGroup { .. }
            | NetCommand::UpdateSecurityGroup { .. }
            | NetCommand::DeleteSecurityGroup { .. }
            | NetCommand::CreateSecurityGroupRule(_)
            | NetCommand::DeleteSecurityGroupRule { .. }
            | NetCommand::EnsureDefaultSecurityGroup { .. } => {
                self.apply_security_group(revision, t, cmd)
            }
        }
    }

    pub(super) fn project_enabled(&self, project_id: &str) -> Result<(), Rejection> {
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| Rejection::not_found("project", project_id))?;
        if !project.enabled {
            return Err(precondition(format!(
                "project {:?} is disabled",
                project.name
            )));
        }
        Ok(())
    }

    fn create_network(&mut self, revision: u64, t: i64, spec: &NetworkSpec) -> Applied {
        check_name("network", &spec.name)?;
        check_description("network", &spec.description)?;
        self.project_enabled(&spec.project_id)?;
        if self.net.networks.contains_key(&spec.id) {
            return Err(invalid(format!("network id {} is taken", spec.id)));
        }
        let segmentation_id = match spec.network_type {
            NetworkType::Vxlan => {
                if !spec.physical_network.is_empty() {
                    return Err(invalid("a VXLAN network has no physical network"));
                }
                let used = |vni: u32| {
                    self.net
                        .networks
                        .values()
                        .any(|n| n.network_type == NetworkType::Vxlan && n.segmentation_id == vni)
                };
                if spec.segmentation_id != 0 {
                    if spec.segmentation_id > MAX_VNI {
                        return Err(invalid(format!(
                            "VNI {} is out of range (1 to {MAX_VNI})",
                            spec.segmentation_id
                        )));
                    }
                    if used(spec.segmentation_id) {
                        return Err(precondition(format!(
                            "VNI {} is used by another network",
                            spec.segmentation_id
                        )));
                    }
                    spec.segmentation_id
                } else {
                    let (lo, hi) = spec.vni_range;
                    let lo = lo.max(1);
                    let hi = hi.min(MAX_VNI);
                    let mut taken: Vec<u32> = self
                        .net
                        .networks
                        .values()
                        .filter(|n| n.network_type == NetworkType::Vxlan)
                        .map(|n| n.segmentation_id)
                        .filter(|v| (lo..=hi).contains(v))
                        .collect();
                    taken.sort_unstable();
                    let mut candidate = lo;
                    for v in taken {
                        if v == candidate {
                            candidate += 1;
                        } else if v > candidate {
                            break;
                        }
                    }
                    if candidate > hi || lo > hi {
                        return Err(Rejection::QuotaExceeded(format!(
                            "no free VXLAN VNI is left in the range {lo}-{hi}"
                        )));
                    }
                    candidate
                }
            }
            NetworkType::Flat => {
                if spec.physical_network.is_empty() {
                    return Err(invalid("a flat network needs a physical network"));
                }
                if spec.segmentation_id != 0 {
                    return Err(invalid("a flat network has no segmentation id"));
                }
                if self.net.networks.values().any(|n| {
                    n.network_type == NetworkType::Flat
                        && n.physical_network == spec.physical_network
                }) {
                    return Err(precondition(format!(
                        "physical network {:?} already carries a flat network",
                        spec.physical_network
                    )));
                }
                0
            }
            NetworkType::Vlan => {
                if spec.physical_network.is_empty() {
                    return Err(invalid("a VLAN network needs a physical network"));
                }
                if !(1..=4094).contains(&spec.segmentation_id) {
                    return Err(invalid(format!(
                        "VLAN id {} is out of range (1 to 4094)",
                        spec.segmentation_id
                    )));
                }
                if self.net.networks.values().any(|n| {
                    n.network_type == NetworkType::Vlan
                        && n.physical_network == spec.physical_network
                        && n.segmentation_id == spec.segmentation_id
                }) {
                    return Err(precondition(format!(
                        "VLAN {} on physical network {:?} is used by another network",
                        spec.segmentation_id, spec.physical_network
                    )));
                }
                spec.segmentation_id
            }
        };
        let mtu = spec.mtu.unwrap_or(spec.network_type.max_mtu());
        check_mtu(spec.network_type, mtu)?;
        self.charge(&spec.project_id, &one(Resource::Networks))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        let n = Network {
            id: spec.id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            project_id: spec.project_id.clone(),
            network_type: spec.network_type,
            segmentation_id,
            physical_network: spec.physical_network.clone(),
            external: spec.external,
            shared: spec.shared,
            mtu,
            admin_state_up: spec.admin_state_up,
            subnet_ids: Vec::new(),
            meta: Meta::new(revision, t),
        };
        self.net.networks.insert(n.id.clone(), n.clone());
        let c = change(
            "network",
            &n.id,
            &n.name,
            EventAction::Created,
            &n.project_id,
        );
        ok(NetOutcome::Network(n), c)
    }

    fn create_subnet(&mut self, revision: u64, t: i64, spec: &SubnetSpec) -> Applied {
        check_name("subnet", &spec.name)?;
        check_description("subnet", &spec.description)?;
        let network = self.network_or_reject(&spec.network_id)?.clone();
        self.project_enabled(&network.project_id)?;
        if self.net.subnets.contains_key(&spec.id) {
            return Err(invalid(format!("subnet id {} is taken", spec.id)));
        }
        let cidr = Cidr::parse(&spec.cidr).map_err(Rejection::Invalid)?;
        if spec.ip_version != 0 && spec.ip_version != cidr.family.version() {
            return Err(invalid(format!(
                "ip_version {} does not match CIDR {cidr}",
                spec.ip_version
            )));
        }
        if cidr.family == Family::V4 && cidr.prefix_len > 30 {
            return Err(invalid(format!(
                "CIDR {cidr} is too small: an IPv4 subnet needs a prefix of /30 or shorter"
            )));
        }
        if let Some(other) = network
            .subnet_ids
            .iter()
            .filter_map(|id| self.net.subnets.get(id))
            .find(|s| s.cidr.overlaps(&cidr))
        {
            return Err(invalid(format!(
                "CIDR {cidr} overlaps subnet {} ({}) of the same network",
                other.id, other.cidr
            )));
        }
        let gateway = match &spec.gateway {
            GatewaySpec::None => None,
            GatewaySpec::Default => cidr.usable().map(|(first, _)| first),
            GatewaySpec::Address(g) => Some(check_gateway(&cidr, g)?),
        };
        let pools = if spec.allocation_pools.is_empty() {
            ipam::default_pools(&cidr, gateway)
        } else {
            let mut pools = Vec::new();
            for (start, end) in &spec.allocation_pools {
                let (fs, s) = ipam::parse_ip(start).map_err(Rejection::Invalid)?;
                let (fe, e) = ipam::parse_ip(end).map_err(Rejection::Invalid)?;
                if fs != cidr.family || fe != cidr.family {
                    return Err(invalid(format!(
                        "allocation pool {start}-{end} is not IPv{} like the subnet",
                        cidr.family.version()
                    )));
                }
                pools.push(Pool { start: s, end: e });
            }
            ipam::check_pools(&cidr, gateway, &pools).map_err(Rejection::Invalid)?
        };
        check_dns(cidr.family, &spec.dns_nameservers)?;
        check_routes(&cidr, &spec.host_routes)?;
        let s = Subnet {
            id: spec.id.clone(),
            network_id: network.id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            project_id: network.project_id.clone(),
            cidr,
            gateway,
            pools,
            dns_nameservers: spec.dns_nameservers.clone(),
            enable_dhcp: spec.enable_dhcp,
            host_routes: spec.host_routes.clone(),
            allocated: BTreeMap::new(),
            meta: Meta::new(revision, t),
        };
        self.charge(&s.project_id, &one(Resource::Subnets))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        self.net.subnets.insert(s.id.clone(), s.clone());
        if let Some(n) = self.net.networks.get_mut(&network.id) {
            n.subnet_ids.push(s.id.clone());
        }
        let c = change(
            "subnet",
            &s.id,
            &s.name,
            EventAction::Created,
            &s.project_id,
        );
        ok(NetOutcome::Subnet(s), c)
    }

    fn check_port_groups(&self, project_id: &str, groups: &[String]) -> Result<(), Rejection> {
        for g in groups {
            let found = self
                .net
                .security_groups
                .get(g)
                .ok_or_else(|| Rejection::not_found("security group", g))?;
            if found.project_id != project_id {
                return Err(invalid(format!(
                    "security group {g} belongs to another project"
                )));
            }
        }
        Ok(())
    }

    fn generate_mac(&mut self) -> Result<String, Rejection> {
        for _ in 0..(1u32 << 24) {
            let n = self.net.next_mac & 0x00ff_ffff;
            self.net.next_mac = self.net.next_mac.wrapping_add(1);
            let [_, a, b, c] = n.to_be_bytes();
            let mac = format_mac([MAC_PREFIX[0], MAC_PREFIX[1], MAC_PREFIX[2], a, b, c]);
            if !self.net.ports.values().any(|p| p.mac_address == mac) {
                return Ok(mac);
            }
        }
        Err(Rejection::QuotaExceeded(
            "no generated MAC address is left".into(),
        ))
    }

    pub(super) fn create_port(&mut self, revision: u64, t: i64, spec: &PortSpec) -> Applied {
        check_name("port", &spec.name)?;
        check_description("port", &spec.description)?;
        self.project_enabled(&spec.project_id)?;
        let network = self.network_or_reject(&spec.network_id)?.clone();
        if network.project_id != spec.project_id && !network.shared {
            return Err(precondition(format!(
                "network {} belongs to another project and is not shared",
                network.id
            )));
        }
        if self.net.ports.contains_key(&spec.id) {
            return Err(invalid(format!("port id {} is taken", spec.id)));
        }
        if !spec.port_security_enabled && !spec.security_group_ids.is_empty() {
            return Err(invalid(
                "a port without port security cannot have security groups",
            ));
        }
        self.check_port_groups(&spec.project_id, &spec.security_group_ids)?;
        // Work on a copy of the subnets touched, committed only when everything fits.
        let mut subnets: BTreeMap<String, Subnet> = network
            .subnet_ids
            .iter()
            .filter_map(|id| self.net.subnets.get(id))
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        let mut fixed_ips = Vec::new();
        if spec.fixed_ips.is_empty() {
            for family in [Family::V4, Family::V6] {
                let candidates: Vec<&String> = network
                    .subnet_ids
                    .iter()
                    .filter(|id| subnets.get(*id).is_some_and(|s| s.cidr.family == family))
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let found = candidates.iter().find_map(|id| {
                    let s = &subnets[*id];
                    ipam::lowest_free(&s.pools, &s.allocated).map(|a| ((*id).clone(), a))
                });
                let Some((sid, addr)) = found else {
                    return Err(Rejection::QuotaExceeded(format!(
                        "no free IPv{} address is left on network {}",
                        family.version(),
                        network.id
                    )));
                };
                let s = subnets.get_mut(&sid).expect("candidate exists");
                s.allocated.insert(addr, spec.id.clone());
                fixed_ips.push(FixedIp {
                    subnet_id: sid,
                    ip_address: ipam::format_ip(family, addr),
                });
            }
        } else {
            for req in &spec.fixed_ips {
                let (sid, addr) = pick_address(&network, &subnets, req)?;
                let s = subnets.get_mut(&sid).expect("picked subnet exists");
                if let Some(owner) = s.allocated.get(&addr) {
                    let what = if owner == &spec.id {
                        "this port already".to_owned()
                    } else {
                        "another port or floating IP".to_owned()
                    };
                    return Err(precondition(format!(
                        "address {} of subnet {sid} is in use by {what}",
                        ipam::format_ip(s.cidr.family, addr)
                    )));
                }
                s.allocated.insert(addr, spec.id.clone());
                fixed_ips.push(FixedIp {
                    subnet_id: sid,
                    ip_address: ipam::format_ip(s.cidr.family, addr),
                });
            }
        }
        let mac_address = if spec.mac_address.is_empty() {
            None
        } else {
            let mac = normalize_mac(&spec.mac_address).map_err(Rejection::Invalid)?;
            if self.net.ports.values().any(|p| p.mac_address == mac) {
                return Err(precondition(format!("MAC address {mac} is in use")));
            }
            Some(mac)
        };
        self.check_quota(&spec.project_id, &one(Resource::Ports))?;
        let mac_address = match mac_address {
            Some(m) => m,
            None => self.generate_mac()?,
        };
        let security_group_ids = if spec.port_security_enabled && spec.security_group_ids.is_empty()
        {
            vec![self.ensure_default_group(
                revision,
                t,
                &spec.project_id,
                &spec.default_group_ids,
            )?]
        } else {
            spec.security_group_ids.clone()
        };
        self.charge(&spec.project_id, &one(Resource::Ports))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        self.net.subnets.extend(subnets);
        let p = Port {
            id: spec.id.clone(),
            network_id: network.id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            project_id: spec.project_id.clone(),
            mac_address,
            fixed_ips,
            security_group_ids,
            device_owner: spec.device_owner.clone(),
            device_id: spec.device_id.clone(),
            admin_state_up: spec.admin_state_up,
            port_security_enabled: spec.port_security_enabled,
            meta: Meta::new(revision, t),
        };
        self.net.ports.insert(p.id.clone(), p.clone());
        let c = change("port", &p.id, &p.name, EventAction::Created, &p.project_id);
        ok(NetOutcome::Port(p), c)
    }

    /// Forgets a port: frees its addresses, disassociates its floating IPs, gives back quota.
    pub(super) fn remove_port(&mut self, revision: u64, t: i64, p: &Port) {
        for ip in &p.fixed_ips {
            if let Some(s) = self.net.subnets.get_mut(&ip.subnet_id) {
                s.allocated.retain(|_, owner| *owner != p.id);
            }
        }
        for f in self.net.floating_ips.values_mut() {
            if f.port_id == p.id {
                f.port_id.clear();
                f.fixed_ip_address.clear();
                f.meta.touch(revision, t);
                self.more_changes.push(change(
                    "floating_ip",
                    &f.id,
                    &f.address,
                    EventAction::Updated,
                    &f.project_id,
                ));
            }
        }
        self.net.ports.remove(&p.id);
        for wired in self.net.wired.values_mut() {
            wired.remove(&p.id);
        }
        self.net.wired.retain(|_, w| !w.is_empty());
        self.release(&p.project_id, &one(Resource::Ports));
    }

    fn create_floating_ip(&mut self, revision: u64, t: i64, r: FipRequest<'_>) -> Applied {
        check_description("floating IP", r.description)?;
        self.project_enabled(r.project_id)?;
        if self.net.floating_ips.contains_key(r.id) {
            return Err(invalid(format!("floating IP id {} is taken", r.id)));
        }
        let network = self.network_or_reject(r.network_id)?.clone();
        if !network.external {
            return Err(invalid(format!(
                "network {} is not external; floating IPs come from external networks",
                network.id
            )));
        }
        let v4: Vec<&Subnet> = network
            .subnet_ids
            .iter()
            .filter_map(|id| self.net.subnets.get(id))
            .filter(|s| s.cidr.family == Family::V4)
            .collect();
        let (subnet_id, addr) = if r.address.is_empty() {
            v4.iter()
                .find_map(|s| ipam::lowest_free(&s.pools, &s.allocated).map(|a| (s.id.clone(), a)))
                .ok_or_else(|| {
                    Rejection::QuotaExceeded(format!(
                        "no free address is left on external network {}",
                        network.id
                    ))
                })?
        } else {
            let (family, addr) = ipam::parse_ip(r.address).map_err(Rejection::Invalid)?;
            let s = v4
                .iter()
                .find(|s| s.cidr.contains(family, addr))
                .ok_or_else(|| {
                    invalid(format!(
                        "{} is not inside an IPv4 subnet of network {}",
                        r.address, network.id
                    ))
                })?;
            let usable = s.cidr.usable().is_some_and(|(a, b)| addr >= a && addr <= b);
            if !usable || s.gateway == Some(addr) {
                return Err(invalid(format!(
                    "{} is the gateway, network or broadcast address of subnet {}",
                    r.address, s.id
                )));
            }
            if s.allocated.contains_key(&addr) {
                return Err(precondition(format!("address {} is in use", r.address)));
            }
            (s.id.clone(), addr)
        };
        let mut f = FloatingIp {
            id: r.id.to_owned(),
            network_id: network.id.clone(),
            subnet_id: subnet_id.clone(),
            address: ipam::format_ip(Family::V4, addr),
            project_id: r.project_id.to_owned(),
            port_id: String::new(),
            fixed_ip_address: String::new(),
            description: r.description.to_owned(),
            meta: Meta::new(revision, t),
        };
        if !r.port_id.is_empty() {
            f.fixed_ip_address = self.fip_target(&f, r.port_id, r.fixed_ip_address)?;
            f.port_id = r.port_id.to_owned();
        }
        self.charge(r.project_id, &one(Resource::FloatingIps))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        if let Some(s) = self.net.subnets.get_mut(&subnet_id) {
            s.allocated.insert(addr, format!("{FIP_OWNER}{}", f.id));
        }
        self.net.floating_ips.insert(f.id.clone(), f.clone());
        let c = change(
            "floating_ip",
            &f.id,
            &f.address,
            EventAction::Created,
            &f.project_id,
        );
        ok(NetOutcome::FloatingIp(f), c)
    }

    /// Which fixed address of `port_id` the floating IP `f` may map to.
    fn fip_target(&self, f: &FloatingIp, port_id: &str, fixed: &str) -> Result<String, Rejection> {
        let port = self.port_or_reject(port_id)?;
        if port.project_id != f.project_id {
            return Err(invalid(format!(
                "port {port_id} belongs to another project than the floating IP"
            )));
        }
        if port.network_id == f.network_id {
            return Err(invalid(
                "a floating IP cannot map to a port on its own external network",
            ));
        }
        let v4: Vec<&FixedIp> = port
            .fixed_ips
            .iter()
            .filter(|ip| ipam::parse_ip(&ip.ip_address).is_ok_and(|(fam, _)| fam == Family::V4))
            .collect();
        let chosen = if fixed.is_empty() {
            v4.first()
                .map(|ip| ip.ip_address.clone())
                .ok_or_else(|| invalid(format!("port {port_id} has no IPv4 address")))?
        } else {
            v4.iter()
                .find(|ip| ip.ip_address == fixed)
                .map(|ip| ip.ip_address.clone())
                .ok_or_else(|| {
                    invalid(format!("{fixed} is not an IPv4 address of port {port_id}"))
                })?
        };
        if let Some(other) = self
            .net
            .floating_ips
            .values()
            .find(|o| o.id != f.id && o.port_id == port_id && o.fixed_ip_address == chosen)
        {
            return Err(precondition(format!(
                "{chosen} of port {port_id} already has floating IP {}",
                other.address
            )));
        }
        Ok(chosen)
    }

    fn network_or_reject(&self, id: &str) -> Result<&Network, Rejection> {
        self.net
            .networks
            .get(id)
            .ok_or_else(|| Rejection::not_found("network", id))
    }

    fn subnet_or_reject(&self, id: &str) -> Result<&Subnet, Rejection> {
        self.net
            .subnets
            .get(id)
            .ok_or_else(|| Rejection::not_found("subnet", id))
    }

    fn port_or_reject(&self, id: &str) -> Result<&Port, Rejection> {
        self.net
            .ports
            .get(id)
            .ok_or_else(|| Rejection::not_found("port", id))
    }

    fn floating_ip_or_reject(&self, id: &str) -> Result<&FloatingIp, Rejection> {
        self.net
            .floating_ips
            .get(id)
            .ok_or_else(|| Rejection::not_found("floating IP", id))
    }

    // Reads for the API.

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.net.networks.get(id)
    }

    pub fn networks_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Network> + 'a {
        super::page_after(&self.net.networks, after)
    }

    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.net.subnets.get(id)
    }

    pub fn subnets_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Subnet> + 'a {
        super::page_after(&self.net.subnets, after)
    }

    pub fn port(&self, id: &str) -> Option<&Port> {
        self.net.ports.get(id)
    }

    pub fn ports_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Port> + 'a {
        super::page_after(&self.net.ports, after)
    }

    pub fn floating_ip(&self, id: &str) -> Option<&FloatingIp> {
        self.net.floating_ips.get(id)
    }

    pub fn floating_ips_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = &'a FloatingIp> + 'a {
        super::page_after(&self.net.floating_ips, after)
    }
}

struct FipRequest<'a> {
    id: &'a str,
    network_id: &'a str,
    project_id: &'a str,
    address: &'a str,
    port_id: &'a str,
    fixed_ip_address: &'a str,
    description: &'a str,
}

/// A gateway address: inside the CIDR and not its network (or IPv4 broadcast) address.
fn check_gateway(cidr: &Cidr, g: &str) -> Result<u128, Rejection> {
    let (family, addr) = ipam::parse_ip(g).map_err(Rejection::Invalid)?;
    if !cidr.contains(family, addr) {
        return Err(invalid(format!("gateway {g} is not inside {cidr}")));
    }
    if !cidr.usable().is_some_and(|(a, b)| addr >= a && addr <= b) {
        return Err(invalid(format!(
            "gateway {g} is the network or broadcast address of {cidr}"
        )));
    }
    Ok(addr)
}

/// The subnet and address a requested fixed IP names: an address must be inside a pool; no
/// address means the subnet's lowest free one.
fn pick_address(
    network: &Network,
    subnets: &BTreeMap<String, Subnet>,
    req: &FixedIp,
) -> Result<(String, u128), Rejection> {
    let subnet = if req.subnet_id.is_empty() {
        if req.ip_address.is_empty() {
            return Err(invalid("a fixed IP needs a subnet, an address or both"));
        }
        let (family, addr) = ipam::parse_ip(&req.ip_address).map_err(Rejection::Invalid)?;
        network
            .subnet_ids
            .iter()
            .filter_map(|id| subnets.get(id))
            .find(|s| s.cidr.contains(family, addr))
            .ok_or_else(|| {
                invalid(format!(
                    "{} is not inside any subnet of network {}",
                    req.ip_address, network.id
                ))
            })?
    } else {
        subnets.get(&req.subnet_id).ok_or_else(|| {
            invalid(format!(
                "subnet {} is not a subnet of network {}",
                req.subnet_id, network.id
            ))
        })?
    };
    if req.ip_address.is_empty() {
        let addr = ipam::lowest_free(&subnet.pools, &subnet.allocated).ok_or_else(|| {
            Rejection::QuotaExceeded(format!("no free address is left in subnet {}", subnet.id))
        })?;
        return Ok((subnet.id.clone(), addr));
    }
    let (family, addr) = ipam::parse_ip(&req.ip_address).map_err(Rejection::Invalid)?;
    if !subnet.cidr.contains(family, addr) {
        return Err(invalid(format!(
            "{} is not inside subnet {} ({})",
            req.ip_address, subnet.id, subnet.cidr
        )));
    }
    if !ipam::in_pools(&subnet.pools, addr) {
        return Err(invalid(format!(
            "{} is outside the allocation pools of subnet {}",
            req.ip_address, subnet.id
        )));
    }
    Ok((subnet.id.clone(), addr))
}

impl State {
    /// What networking resources a project still owns that block its deletion (networks,
    /// ports, floating IPs), as "N network(s), …"; None when there are none.
    pub(super) fn project_networking_in_use(&self, project_id: &str) -> Option<String> {
        let networks = self
            .net
            .networks
            .values()
            .filter(|n| n.project_id == project_id)
            .count();
        let ports = self
            .net
            .ports
            .values()
            .filter(|p| p.project_id == project_id)
            .count();
        let fips = self
            .net
            .floating_ips
            .values()
            .filter(|f| f.project_id == project_id)
            .count();
        let parts: Vec<String> = [
            (networks, "network(s)"),
            (ports, "port(s)"),
            (fips, "floating IP(s)"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Drops a deleted project's security groups (its `default` one included) and their rules.
    pub(super) fn forget_project_networking(&mut self, project_id: &str) {
        self.net
            .security_groups
            .retain(|_, g| g.project_id != project_id);
        self.net.rules.retain(|_, r| r.project_id != project_id);
    }
}

impl State {
    /// Records usage without the admission check: the `default` security group and its rules
    /// are created whenever a project needs them and count, over quota or not (as Neutron).
    pub(super) fn force_charge(&mut self, project_id: &str, delta: &ResourceDelta) {
        let usage = self.quota_usage.entry(project_id.to_owned()).or_default();
        for (&r, &amount) in delta {
            *usage.entry(r).or_insert(0) += amount;
        }
        usage.retain(|_, v| *v != 0);
    }
}

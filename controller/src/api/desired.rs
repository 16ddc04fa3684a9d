//! The desired state of one host (pure: a function of the replicated state). The agent hub
//! pushes it on every change; the compute sim's fake agents and the move duties use it too.
//!
//! For host H:
//! - `servers`: the servers H owns (not being deleted) and the ones being migrated into H
//!   (`incoming_migration`, at their destination generation), each with its `ports` in NIC
//!   order: MAC, fixed IPs, the network's MTU, admin state, port security and the effective
//!   security group rules (a rule naming a remote group becomes one rule per address of that
//!   group's ports, `/32` or `/128`, `remote_group_id` kept).
//! - `networks`: every network with a port in `servers`, and the external network of every
//!   floating IP in `floating_ips`, with their subnets.
//! - `tunnel_peers`: every other registered host, up or down (hosts are never deleted).
//! - `floating_ips`: the floating IPs associated with ports of servers H owns (not those being
//!   migrated in: the source keeps doing the NAT until ownership moves).
//! - `remote_ports`: for each network in `networks`, its ports bound to servers another host
//!   owns, with that host's tunnel address.
use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::v1 as pb;

use super::network_convert::{network_type_to_pb, rule, subnet};
use crate::state::{DesiredPower, Ethertype, Port, SecurityGroupRule, Server, State};

/// What `host_id` should run.
pub fn desired_state(state: &State, host_id: &str) -> pb::DesiredState {
    let mut rules = RuleCache::default();
    let placed = state
        .servers_on(host_id)
        .map(|s| desired_server_with(state, &mut rules, s, s.placement_generation, false))
        .collect::<Vec<_>>();
    let incoming = state
        .migrating_to(host_id)
        .map(|s| {
            let generation = s
                .migration
                .as_ref()
                .map_or(s.placement_generation, |m| m.destination_generation);
            desired_server_with(state, &mut rules, s, generation, true)
        })
        .collect::<Vec<_>>();
    let mut network_ids: BTreeSet<String> = placed
        .iter()
        .chain(&incoming)
        .flat_map(|s| s.ports.iter().map(|p| p.network_id.clone()))
        .collect();
    let local_ports: BTreeSet<&str> = state
        .servers_on(host_id)
        .flat_map(|s| s.nics.iter().map(|n| n.port_id.as_str()))
        .collect();
    let mut floating_ips = Vec::new();
    if !local_ports.is_empty() {
        for f in state.floating_ips_after("") {
            if f.port_id.is_empty() || !local_ports.contains(f.port_id.as_str()) {
                continue;
            }
            network_ids.insert(f.network_id.clone());
            floating_ips.push(pb::DesiredFloatingIp {
                floating_ip_address: f.address.clone(),
                fixed_ip_address: f.fixed_ip_address.clone(),
                port_id: f.port_id.clone(),
                floating_network_id: f.network_id.clone(),
            });
        }
    }
    let networks = network_ids
        .iter()
        .filter_map(|id| state.network(id))
        .map(|n| pb::DesiredNetwork {
            network_id: n.id.clone(),
            network_type: network_type_to_pb(n.network_type),
            segmentation_id: n.segmentation_id,
            physical_network: n.physical_network.clone(),
            mtu: n.mtu,
            subnets: n
                .subnet_ids
                .iter()
                .filter_map(|sid| state.subnet(sid))
                .map(subnet)
                .collect(),
        })
        .collect();
    let tunnel_peers = state
        .hosts()
        .filter(|h| h.id != host_id)
        .map(|h| pb::DesiredTunnelPeer {
            host_id: h.id.clone(),
            hostname: h.info.hostname.clone(),
            address: h.info.tunnel_endpoint().to_string(),
        })
        .collect();
    let mut remote_ports = Vec::new();
    if !network_ids.is_empty() {
        for p in state.ports_after("") {
            if !network_ids.contains(&p.network_id) {
                continue;
            }
            let Some(s) = state.port_server(p) else {
                continue;
            };
            if s.host_id == host_id || s.host_id.is_empty() || is_deleting(s) {
                continue;
            }
            let Some(owner) = state.host(&s.host_id) else {
                continue;
            };
            remote_ports.push(pb::DesiredRemotePort {
                port_id: p.id.clone(),
                network_id: p.network_id.clone(),
                mac_address: p.mac_address.clone(),
                ip_addresses: p.fixed_ips.iter().map(|f| f.ip_address.clone()).collect(),
                host_id: owner.id.clone(),
                tunnel_address: owner.info.tunnel_endpoint().to_string(),
            });
        }
    }
    pb::DesiredState {
        revision: state.revision(),
        servers: placed.into_iter().chain(incoming).collect(),
        networks,
        tunnel_peers,
        floating_ips,
        remote_ports,
    }
}

fn is_deleting(s: &Server) -> bool {
    s.status == crate::state::ServerStatus::Deleting
}

/// One server as an agent should hold it, at `generation`, with its ports.
pub fn desired_server(
    state: &State,
    s: &Server,
    generation: u64,
    incoming: bool,
) -> pb::DesiredServer {
    desired_server_with(state, &mut RuleCache::default(), s, generation, incoming)
}

fn desired_server_with(
    state: &State,
    rules: &mut RuleCache,
    s: &Server,
    generation: u64,
    incoming: bool,
) -> pb::DesiredServer {
    let f = &s.flavor;
    let extra_gib = f.ephemeral_gib + f.swap_mib.div_ceil(1024);
    pb::DesiredServer {
        id: s.id.clone(),
        name: s.name.clone(),
        project_id: s.project_id.clone(),
        vcpus: f.vcpus,
        ram_mib: f.ram_mib,
        root_disk_gib: s.claim.disk_gib.saturating_sub(extra_gib),
        ephemeral_gib: f.ephemeral_gib,
        swap_mib: f.swap_mib,
        extra_specs: f.extra_specs.clone().into_iter().collect(),
        image_id: s.image.id.clone(),
        image_sha256: s.image.sha256.clone(),
        image_size_bytes: s.image.size_bytes,
        image_disk_format: super::convert::disk_format(s.image.disk_format) as i32,
        placement_generation: generation,
        power_state: match s.desired_power {
            DesiredPower::Running => pb::ServerPowerState::Running,
            DesiredPower::Shutdown => pb::ServerPowerState::Shutdown,
        } as i32,
        ports: state
            .server_ports(s)
            .map(|p| desired_port(state, rules, p))
            .collect(),
        console_log_path: String::new(),
        user_data: s.user_data.clone(),
        metadata: s.metadata.clone().into_iter().collect(),
        incoming_migration: incoming,
    }
}

fn desired_port(state: &State, rules: &mut RuleCache, p: &Port) -> pb::DesiredPort {
    let security_group_rules = if p.port_security_enabled {
        p.security_group_ids
            .iter()
            .flat_map(|g| rules.of_group(state, g).to_vec())
            .collect()
    } else {
        Vec::new()
    };
    pb::DesiredPort {
        port_id: p.id.clone(),
        network_id: p.network_id.clone(),
        mac_address: p.mac_address.clone(),
        fixed_ips: p
            .fixed_ips
            .iter()
            .map(|f| pb::PortFixedIp {
                subnet_id: f.subnet_id.clone(),
                ip_address: f.ip_address.clone(),
            })
            .collect(),
        mtu: state.network(&p.network_id).map_or(0, |n| n.mtu),
        admin_state_up: p.admin_state_up,
        port_security_enabled: p.port_security_enabled,
        security_group_rules,
    }
}

/// The expanded rules of each security group, computed once per desired state.
#[derive(Default)]
struct RuleCache {
    groups: BTreeMap<String, Vec<pb::SecurityGroupRule>>,
    /// Group id → the addresses of its ports (all of them, bound or not).
    members: Option<BTreeMap<String, Vec<String>>>,
}

impl RuleCache {
    fn of_group(&mut self, state: &State, group_id: &str) -> &[pb::SecurityGroupRule] {
        if !self.groups.contains_key(group_id) {
            let mut out = Vec::new();
            let rules: Vec<&SecurityGroupRule> = state.rules_of(group_id).collect();
            for r in rules {
                if r.remote_group_id.is_empty() {
                    out.push(rule(r));
                    continue;
                }
                let members = self.members(state);
                let v6 = r.ethertype == Ethertype::Ipv6;
                for ip in members.get(&r.remote_group_id).into_iter().flatten() {
                    if ip.contains(':') != v6 {
                        continue;
                    }
                    let mut expanded = rule(r);
                    expanded.remote_ip_prefix = format!("{ip}/{}", if v6 { 128 } else { 32 });
                    out.push(expanded);
                }
            }
            self.groups.insert(group_id.to_owned(), out);
        }
        &self.groups[group_id]
    }

    fn members(&mut self, state: &State) -> &BTreeMap<String, Vec<String>> {
        self.members.get_or_insert_with(|| {
            let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for p in state.ports_after("") {
                for g in &p.security_group_ids {
                    let ips = m.entry(g.clone()).or_default();
                    ips.extend(p.fixed_ips.iter().map(|f| f.ip_address.clone()));
                }
            }
            for ips in m.values_mut() {
                ips.sort();
                ips.dedup();
            }
            m
        })
    }
}

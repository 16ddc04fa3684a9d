//! What Open vSwitch on this host should hold for the desired state (pure): the integration
//! bridge, a DHCP port per network (which also anchors the network's local VLAN), VXLAN tunnels
//! to the other hosts, the router plugs, and every OpenFlow flow of the integration bridge.
//!
//! # Forwarding (all explicit, no MAC learning)
//! The controller knows where every port is, so the bridge never floods to learn: a frame to a
//! local guest's MAC goes to that guest (through its ingress security group), to a remote
//! port's MAC into the tunnel to its host with the network's VNI, to the network's gateway MAC
//! to the local router; broadcast goes to the network's local ports and the tunnels of the
//! hosts with ports on it; unknown unicast is dropped. Frames from a tunnel are delivered only
//! locally (never back into a tunnel). DHCP from a guest goes only to the local DHCP port; ARP
//! for the gateway only to the local router. The network's local VLAN id is its identity on
//! the bridge: the ports' `tag`, the register the pipeline carries it in, and the conntrack
//! zone of its security groups.
//!
//! # Tables
//! - 0 classify by in_port: guest → reg5 = its OpenFlow port, reg6 = VLAN, table 10 (20
//!   without port security); DHCP and router ports → reg6, table 20; tunnels → table 5.
//! - 5 tunnel: VNI → reg6, table 21.
//! - 10 anti-spoofing: only the port's MAC with its fixed IPs (and DHCP before it has one).
//! - 11/12 egress security group (conntrack: established and related pass, new must match a
//!   rule and is committed).
//! - 20 forward from local ports, 21 forward from tunnels.
//! - 30/31 ingress security group, then out to the guest (reg7 = its OpenFlow port).
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use flotilla_proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::driver::ovs::{
    BridgeSpec, CookieMatch, FailMode, Flow, Mac, PortInfo, PortKind, PortSpec, TunnelInfo,
    TunnelKey, TunnelSpec, VlanTag, Vni, MAX_VLAN,
};
use crate::net::config::NetworkConfig;
use crate::net::sg_flows::{rule_matches, Direction};

/// Cookie of every flow Flotilla puts on the integration bridge.
pub const FLOW_COOKIE: u64 = 0x0f10_7111_0000_0001;
/// `external_ids` key: the Flotilla network a DHCP or router port belongs to.
pub const NETWORK_KEY: &str = "flotilla-network";
/// `external_ids` key: what a Flotilla-made port is for (`dhcp`, `router`, `external`).
pub const ROLE_KEY: &str = "flotilla-role";
/// `external_ids` key of a tunnel: the remote host's id.
pub const HOST_KEY: &str = "flotilla-host";

const BROADCAST: &str = "01:00:00:00:00:00/01:00:00:00:00:00";
const ZONE: &str = "zone=NXM_NX_REG6[0..15]";

pub fn cookies() -> CookieMatch {
    CookieMatch::exact(FLOW_COOKIE)
}

/// 12 hex digits of sha256(id): a device-name-sized tag (`fd-` / `vx-` + 12 = 15 characters,
/// the Linux limit) that two ids share with negligible probability — a prefix of the id would
/// not do (ids with a common prefix, such as sequential ones, would collide).
pub fn short(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..6])
}

pub fn dhcp_port_name(network_id: &str) -> String {
    format!("fd-{}", short(network_id))
}

pub fn tunnel_name(host_id: &str) -> String {
    format!("vx-{}", short(host_id))
}

/// The network's gateway MAC ([`crate::net::router::gateway_mac`]), the same on every host (a
/// guest's ARP entry for its gateway stays valid after a live migration).
pub fn gateway_mac(network_id: &str) -> Mac {
    crate::net::router::gateway_mac(network_id)
}

/// A router of [`crate::net::router`] as the switch sees it: its internal side on the
/// integration bridge, its external side on the bridge of the external network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterPlug {
    pub network_id: String,
    /// Host end of the veth whose other end holds the gateway addresses.
    pub internal_peer: String,
    pub external_peer: String,
    /// The bridge `bridge_mappings` gives the external network's physical network.
    pub external_bridge: String,
}

/// A network present on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNetwork {
    pub network_id: String,
    pub vni: Vni,
    pub vlan: VlanTag,
    pub dhcp_port: String,
    /// IPv4 gateways of its subnets.
    pub gateways: Vec<IpAddr>,
}

/// Bridges, ports and tunnels the host should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub bridges: Vec<BridgeSpec>,
    /// Flotilla's ports on the integration bridge (DHCP ports, routers' internal sides).
    pub int_ports: Vec<PortSpec>,
    /// Routers' external sides: (bridge, port).
    pub ext_ports: Vec<(String, PortSpec)>,
    pub tunnels: Vec<TunnelSpec>,
    pub networks: BTreeMap<String, LocalNetwork>,
    /// What could not be planned (a provider network for a guest, no VLAN left, a bad peer
    /// address); the rest is planned anyway.
    pub errors: Vec<String>,
}

/// Every port of a server this host runs or is receiving, with whether it is only incoming.
fn local_ports(
    desired: &pb::DesiredState,
) -> impl Iterator<Item = (&pb::DesiredServer, &pb::DesiredPort)> {
    desired
        .servers
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
}

/// Plans the topology. `int_ports` (the integration bridge's ports as they are) keeps each
/// network's local VLAN across agent restarts: it is read back from the network's DHCP port.
pub fn plan_topology(
    desired: &pb::DesiredState,
    cfg: &NetworkConfig,
    routers: &[RouterPlug],
    int_ports: &[PortInfo],
) -> Topology {
    let mut t = Topology::default();
    let networks: BTreeMap<&str, &pb::DesiredNetwork> = desired
        .networks
        .iter()
        .map(|n| (n.network_id.as_str(), n))
        .collect();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for (_, p) in local_ports(desired) {
        wanted.insert(p.network_id.as_str());
    }
    for r in routers {
        wanted.insert(r.network_id.as_str());
    }
    // Local VLANs already given out (by an earlier run) stay.
    let mut vlans: BTreeMap<String, VlanTag> = BTreeMap::new();
    for p in int_ports {
        if p.external_ids.get(ROLE_KEY).map(String::as_str) == Some("dhcp") {
            if let (Some(net), Some(tag)) = (p.external_ids.get(NETWORK_KEY), p.tag) {
                vlans.insert(net.clone(), tag);
            }
        }
    }
    vlans.retain(|net, _| wanted.contains(net.as_str()));
    let mut used: BTreeSet<u16> = vlans.values().map(|v| v.get()).collect();
    for net_id in wanted {
        let Some(net) = networks.get(net_id) else {
            t.errors.push(format!(
                "network {net_id} of a local port is not in the desired state"
            ));
            continue;
        };
        let vxlan = matches!(
            pb::NetworkType::try_from(net.network_type),
            Ok(pb::NetworkType::Vxlan | pb::NetworkType::Unspecified)
        );
        if !vxlan {
            t.errors.push(format!(
                "network {net_id}: only VXLAN tenant networks can have guests' ports on hosts \
                 in this release (it is a provider network)"
            ));
            continue;
        }
        let Ok(vni) = Vni::new(net.segmentation_id) else {
            t.errors.push(format!(
                "network {net_id}: invalid VNI {}",
                net.segmentation_id
            ));
            continue;
        };
        let vlan = match vlans.get(net_id) {
            Some(v) => *v,
            None => match (1..=MAX_VLAN).find(|v| !used.contains(v)) {
                Some(v) => {
                    used.insert(v);
                    VlanTag::new(v).expect("in range")
                }
                None => {
                    t.errors
                        .push(format!("network {net_id}: no local VLAN left on this host"));
                    continue;
                }
            },
        };
        let gateways = net
            .subnets
            .iter()
            .filter(|s| s.ip_version == 4 || s.cidr.contains('.'))
            .filter_map(|s| s.gateway_ip.parse::<IpAddr>().ok())
            .collect();
        let dhcp_port = dhcp_port_name(net_id);
        t.int_ports.push(PortSpec {
            name: dhcp_port.clone(),
            kind: PortKind::Internal,
            tag: Some(vlan),
            external_ids: ids(&[(ROLE_KEY, "dhcp"), (NETWORK_KEY, net_id)]),
        });
        t.networks.insert(
            net_id.to_string(),
            LocalNetwork {
                network_id: net_id.to_string(),
                vni,
                vlan,
                dhcp_port,
                gateways,
            },
        );
    }
    let mut mapped: BTreeSet<&str> = BTreeSet::new();
    for r in routers {
        let Some(net) = t.networks.get(&r.network_id) else {
            continue;
        };
        t.int_ports.push(PortSpec {
            name: r.internal_peer.clone(),
            kind: PortKind::System,
            tag: Some(net.vlan),
            external_ids: ids(&[(ROLE_KEY, "router"), (NETWORK_KEY, &r.network_id)]),
        });
        t.ext_ports.push((
            r.external_bridge.clone(),
            PortSpec {
                name: r.external_peer.clone(),
                kind: PortKind::System,
                tag: None,
                external_ids: ids(&[(ROLE_KEY, "external"), (NETWORK_KEY, &r.network_id)]),
            },
        ));
        mapped.insert(&r.external_bridge);
    }
    t.bridges
        .push(BridgeSpec::new(&cfg.integration_bridge, FailMode::Secure));
    for b in mapped {
        t.bridges.push(BridgeSpec::new(b, FailMode::Standalone));
    }
    for peer in &desired.tunnel_peers {
        match peer.address.parse::<IpAddr>() {
            Ok(remote_ip) => t.tunnels.push(TunnelSpec {
                name: tunnel_name(&peer.host_id),
                remote_ip,
                local_ip: cfg.tunnel_local_ip,
                key: TunnelKey::Flow,
                external_ids: ids(&[(HOST_KEY, &peer.host_id)]),
            }),
            Err(_) => t.errors.push(format!(
                "host {} ({}): tunnel address {:?} is not an IP address",
                peer.hostname, peer.host_id, peer.address
            )),
        }
    }
    t.int_ports.sort_by(|a, b| a.name.cmp(&b.name));
    t.tunnels.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Flotilla's ports on a bridge that the topology no longer wants (never a guest's port).
pub fn stale_ports<'a>(wanted: &[PortSpec], actual: &'a [PortInfo]) -> Vec<&'a str> {
    let want: BTreeSet<&str> = wanted.iter().map(|p| p.name.as_str()).collect();
    actual
        .iter()
        .filter(|p| p.external_ids.contains_key(ROLE_KEY) && !want.contains(p.name.as_str()))
        .map(|p| p.name.as_str())
        .collect()
}

/// Flotilla's tunnels the topology no longer wants.
pub fn stale_tunnels<'a>(wanted: &[TunnelSpec], actual: &'a [TunnelInfo]) -> Vec<&'a str> {
    let want: BTreeSet<&str> = wanted.iter().map(|t| t.name.as_str()).collect();
    actual
        .iter()
        .filter(|t| {
            t.spec.external_ids.contains_key(HOST_KEY) && !want.contains(t.spec.name.as_str())
        })
        .map(|t| t.spec.name.as_str())
        .collect()
}

/// The integration bridge's flows and what they make of the guests' ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowPlan {
    pub flows: Vec<Flow>,
    /// Ports of servers this host owns whose interface is on the bridge with flows planned.
    pub wired: BTreeSet<String>,
    /// Guests' ports (plugged by libvirt) whose tag must be set to their network's VLAN.
    pub tag_fixes: Vec<PortSpec>,
    pub errors: Vec<String>,
}

/// A guest's interface as found on the bridge.
struct Vif<'a> {
    ofport: u32,
    info: &'a PortInfo,
}

/// Plans every flow of the integration bridge from the topology and the ports and tunnels as
/// they are now (OpenFlow port numbers are OVS's to give).
pub fn plan_flows(
    desired: &pb::DesiredState,
    topo: &Topology,
    routers: &[RouterPlug],
    int_ports: &[PortInfo],
    tunnels: &[TunnelInfo],
) -> FlowPlan {
    let mut plan = FlowPlan::default();
    let mut flows: Vec<Flow> = Vec::new();
    let mut add = |table: u8, priority: u16, m: &str, a: &str| {
        flows.push(Flow::new(FLOW_COOKIE, table, priority, m, a));
    };
    let ofport_of = |name: &str| {
        int_ports
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.ofport)
    };
    let vif_of = |port: &pb::DesiredPort| -> Option<Vif<'_>> {
        int_ports
            .iter()
            .filter(|p| p.external_ids.get("iface-id") == Some(&port.port_id))
            .filter(|p| !p.external_ids.contains_key(ROLE_KEY))
            .find_map(|info| info.ofport.map(|ofport| Vif { ofport, info }))
    };
    let tunnel_port: BTreeMap<&str, u32> = tunnels
        .iter()
        .filter_map(|t| Some((t.spec.external_ids.get(HOST_KEY)?.as_str(), t.ofport?)))
        .collect();

    // Table 0: tunnels; tables 5: VNI → network.
    for port in tunnel_port.values() {
        add(0, 100, &format!("in_port={port}"), "resubmit(,5)");
    }
    // Per network: local outputs for broadcast, remote hosts, DHCP and router ports.
    for net in topo.networks.values() {
        let reg6 = format!("reg6={:#x}", net.vlan.get());
        let load6 = format!("load:{:#x}->NXM_NX_REG6[]", net.vlan.get());
        let tun = format!("load:{:#x}->NXM_NX_TUN_ID[]", net.vni.get());
        add(
            5,
            100,
            &format!("tun_id={:#x}", net.vni.get()),
            &format!("{load6},resubmit(,21)"),
        );
        let mut local_out: Vec<u32> = Vec::new();
        let dhcp = ofport_of(&net.dhcp_port);
        if let Some(d) = dhcp {
            add(
                0,
                100,
                &format!("in_port={d}"),
                &format!("{load6},resubmit(,20)"),
            );
            add(
                20,
                60,
                &format!("udp,{reg6},tp_src=68,tp_dst=67"),
                &format!("output:{d}"),
            );
        } else {
            add(20, 60, &format!("udp,{reg6},tp_src=68,tp_dst=67"), "drop");
        }
        add(21, 60, &format!("udp,{reg6},tp_dst=67"), "drop");
        let router = routers
            .iter()
            .find(|r| r.network_id == net.network_id)
            .and_then(|r| ofport_of(&r.internal_peer));
        for gw in &net.gateways {
            let m = format!("arp,{reg6},arp_tpa={gw}");
            match router {
                Some(r) => add(20, 60, &m, &format!("output:{r}")),
                None => add(20, 60, &m, "drop"),
            }
            add(21, 60, &m, "drop");
        }
        if let Some(r) = router {
            add(
                0,
                100,
                &format!("in_port={r}"),
                &format!("{load6},resubmit(,20)"),
            );
            let gw_mac = gateway_mac(&net.network_id);
            add(
                20,
                100,
                &format!("{reg6},dl_dst={gw_mac}"),
                &format!("output:{r}"),
            );
            add(21, 100, &format!("{reg6},dl_dst={gw_mac}"), "drop");
            local_out.push(r);
        }
        // Remote ports: unicast by MAC; broadcast to each host with a port on the network.
        let mut remote_hosts: BTreeSet<u32> = BTreeSet::new();
        for rp in desired
            .remote_ports
            .iter()
            .filter(|p| p.network_id == net.network_id)
        {
            let Some(t) = tunnel_port.get(rp.host_id.as_str()) else {
                continue;
            };
            let Ok(mac) = rp.mac_address.parse::<Mac>() else {
                plan.errors.push(format!(
                    "remote port {}: bad MAC {:?}",
                    rp.port_id, rp.mac_address
                ));
                continue;
            };
            add(
                20,
                90,
                &format!("{reg6},dl_dst={mac}"),
                &format!("{tun},output:{t}"),
            );
            remote_hosts.insert(*t);
        }
        // Local guests.
        let mut guest_out: Vec<u32> = Vec::new();
        for (server, port) in local_ports(desired).filter(|(_, p)| p.network_id == net.network_id) {
            let Some(vif) = vif_of(port) else { continue };
            if vif.info.tag != Some(net.vlan) {
                let mut ids = BTreeMap::from([("iface-id".to_string(), port.port_id.clone())]);
                if let Some(mac) = vif.info.external_ids.get("attached-mac") {
                    ids.insert("attached-mac".into(), mac.clone());
                }
                plan.tag_fixes.push(PortSpec {
                    name: vif.info.name.clone(),
                    // As it is: only the tag changes.
                    kind: if vif.info.ovs_type == "internal" {
                        PortKind::Internal
                    } else {
                        PortKind::System
                    },
                    tag: Some(net.vlan),
                    external_ids: ids,
                });
            }
            if !port.admin_state_up {
                continue;
            }
            let Ok(mac) = port.mac_address.parse::<Mac>() else {
                plan.errors.push(format!(
                    "port {}: bad MAC {:?}",
                    port.port_id, port.mac_address
                ));
                continue;
            };
            let p = vif.ofport;
            if port.port_security_enabled {
                add(
                    0,
                    100,
                    &format!("in_port={p}"),
                    &format!("load:{p:#x}->NXM_NX_REG5[],{load6},resubmit(,10)"),
                );
                anti_spoofing(&mut add, port, p, mac);
                for rule in &port.security_group_rules {
                    for (dir, table, reg_action) in [
                        (Direction::Egress, 12, "resubmit(,20)".to_string()),
                        (Direction::Ingress, 31, format!("output:{p}")),
                    ] {
                        match rule_matches(rule, dir, p) {
                            Ok(ms) => {
                                for m in ms {
                                    add(
                                        table,
                                        100,
                                        &format!("ct_state=+new+trk,{m}"),
                                        &format!("ct(commit,{ZONE}),{reg_action}"),
                                    );
                                }
                            }
                            Err(e) => plan.errors.push(format!("port {}: {e}", port.port_id)),
                        }
                    }
                }
                deliveries(
                    &mut add,
                    &reg6,
                    mac,
                    server,
                    &format!("load:{p:#x}->NXM_NX_REG7[],resubmit(,30)"),
                );
            } else {
                add(
                    0,
                    100,
                    &format!("in_port={p}"),
                    &format!("{load6},resubmit(,20)"),
                );
                deliveries(&mut add, &reg6, mac, server, &format!("output:{p}"));
            }
            // An incoming copy (live migration) gets its flows but no deliveries and no
            // broadcast until ownership moves: until then the running copy is the source's.
            if !server.incoming_migration {
                guest_out.push(p);
                plan.wired.insert(port.port_id.clone());
            }
        }
        local_out.extend(guest_out.iter().copied());
        if let Some(d) = dhcp {
            local_out.push(d);
        }
        let mut bcast: Vec<String> = local_out.iter().map(|p| format!("output:{p}")).collect();
        if !remote_hosts.is_empty() {
            bcast.push(tun.clone());
            bcast.extend(remote_hosts.iter().map(|t| format!("output:{t}")));
        }
        if !bcast.is_empty() {
            add(
                20,
                50,
                &format!("{reg6},dl_dst={BROADCAST}"),
                &bcast.join(","),
            );
        }
        let from_tunnel: Vec<String> = guest_out.iter().map(|p| format!("output:{p}")).collect();
        if !from_tunnel.is_empty() {
            add(
                21,
                50,
                &format!("{reg6},dl_dst={BROADCAST}"),
                &from_tunnel.join(","),
            );
        }
    }
    // Fixed parts of the pipeline.
    add(0, 0, "", "drop");
    add(5, 0, "", "drop");
    add(10, 0, "", "drop");
    add(11, 100, "ip", &format!("ct(table=12,{ZONE})"));
    add(11, 100, "ipv6", &format!("ct(table=12,{ZONE})"));
    add(11, 0, "", "drop");
    add(12, 200, "ct_state=-new+est-rel-inv+trk", "resubmit(,20)");
    add(12, 200, "ct_state=-new-est+rel-inv+trk", "resubmit(,20)");
    add(12, 190, "ct_state=+inv+trk", "drop");
    add(12, 0, "", "drop");
    add(20, 0, "", "drop");
    add(21, 0, "", "drop");
    add(30, 200, "arp", "output:NXM_NX_REG7[0..15]");
    add(
        30,
        200,
        "udp,tp_src=67,tp_dst=68",
        "output:NXM_NX_REG7[0..15]",
    );
    add(30, 100, "ip", &format!("ct(table=31,{ZONE})"));
    add(30, 100, "ipv6", &format!("ct(table=31,{ZONE})"));
    add(30, 0, "", "drop");
    add(
        31,
        200,
        "ct_state=-new+est-rel-inv+trk",
        "output:NXM_NX_REG7[0..15]",
    );
    add(
        31,
        200,
        "ct_state=-new-est+rel-inv+trk",
        "output:NXM_NX_REG7[0..15]",
    );
    add(31, 190, "ct_state=+inv+trk", "drop");
    add(31, 0, "", "drop");
    // One flow per identity (a later duplicate would only be a planning slip).
    let mut by_key: BTreeMap<(u8, u16, String), Flow> = BTreeMap::new();
    for f in flows {
        by_key.insert((f.table, f.priority, f.match_.clone()), f);
    }
    plan.flows = by_key.into_values().collect();
    plan
}

/// Tables 20 and 21: frames to the guest's MAC go to `action`, unless the server is only
/// being migrated in.
fn deliveries(
    add: &mut impl FnMut(u8, u16, &str, &str),
    reg6: &str,
    mac: Mac,
    server: &pb::DesiredServer,
    action: &str,
) {
    if server.incoming_migration {
        return;
    }
    add(20, 100, &format!("{reg6},dl_dst={mac}"), action);
    add(21, 100, &format!("{reg6},dl_dst={mac}"), action);
}

/// Table 10: the port may send from its MAC and fixed IPs only (and DHCP before it has one).
fn anti_spoofing(
    add: &mut impl FnMut(u8, u16, &str, &str),
    port: &pb::DesiredPort,
    p: u32,
    mac: Mac,
) {
    let reg5 = format!("reg5={p:#x}");
    add(
        10,
        110,
        &format!("udp,{reg5},dl_src={mac},nw_src=0.0.0.0,tp_src=68,tp_dst=67"),
        "resubmit(,20)",
    );
    add(10, 105, &format!("udp,{reg5},tp_src=67"), "drop");
    for ip in port
        .fixed_ips
        .iter()
        .filter_map(|f| f.ip_address.parse::<IpAddr>().ok())
    {
        match ip {
            IpAddr::V4(v4) => {
                add(
                    10,
                    110,
                    &format!("udp,{reg5},dl_src={mac},nw_src={v4},tp_src=68,tp_dst=67"),
                    "resubmit(,20)",
                );
                add(
                    10,
                    100,
                    &format!("ip,{reg5},dl_src={mac},nw_src={v4}"),
                    "resubmit(,11)",
                );
                add(
                    10,
                    100,
                    &format!("arp,{reg5},dl_src={mac},arp_spa={v4},arp_sha={mac}"),
                    "resubmit(,20)",
                );
            }
            IpAddr::V6(v6) => {
                add(
                    10,
                    100,
                    &format!("ipv6,{reg5},dl_src={mac},ipv6_src={v6}"),
                    "resubmit(,11)",
                );
            }
        }
    }
}

#[cfg(test)]
#[path = "ovs_plan_tests.rs"]
mod tests;

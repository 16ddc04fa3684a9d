//! The network plan by its outputs.
use std::collections::BTreeMap;

use super::*;

const NET: &str = "aaaaaaaa-1111-4000-8000-000000000001";
const NET2: &str = "bbbbbbbb-1111-4000-8000-000000000002";
const PEER: &str = "cccccccc-1111-4000-8000-000000000003";

fn network(id: &str, vni: u32) -> pb::DesiredNetwork {
    pb::DesiredNetwork {
        network_id: id.into(),
        network_type: pb::NetworkType::Vxlan as i32,
        segmentation_id: vni,
        subnets: vec![pb::Subnet {
            cidr: "10.0.0.0/24".into(),
            ip_version: 4,
            gateway_ip: "10.0.0.1".into(),
            enable_dhcp: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn port(id: &str, net: &str, mac: &str, ip: &str) -> pb::DesiredPort {
    pb::DesiredPort {
        port_id: id.into(),
        network_id: net.into(),
        mac_address: mac.into(),
        fixed_ips: vec![pb::PortFixedIp {
            subnet_id: String::new(),
            ip_address: ip.into(),
        }],
        admin_state_up: true,
        port_security_enabled: true,
        security_group_rules: vec![pb::SecurityGroupRule {
            id: "egress".into(),
            direction: pb::SecurityGroupRuleDirection::Egress as i32,
            ethertype: pb::SecurityGroupRuleEthertype::Ipv4 as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn desired() -> pb::DesiredState {
    pb::DesiredState {
        servers: vec![pb::DesiredServer {
            id: "s1".into(),
            ports: vec![port("p1", NET, "fa:16:3e:00:00:01", "10.0.0.5")],
            ..Default::default()
        }],
        networks: vec![network(NET, 100)],
        tunnel_peers: vec![pb::DesiredTunnelPeer {
            host_id: PEER.into(),
            hostname: "b".into(),
            address: "192.0.2.2".into(),
        }],
        remote_ports: vec![pb::DesiredRemotePort {
            port_id: "p9".into(),
            network_id: NET.into(),
            mac_address: "fa:16:3e:00:00:09".into(),
            host_id: PEER.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn vif(name: &str, port_id: &str, ofport: u32, tag: Option<u16>) -> PortInfo {
    PortInfo {
        name: name.into(),
        ovs_type: String::new(),
        tag: tag.map(|t| VlanTag::new(t).unwrap()),
        external_ids: BTreeMap::from([("iface-id".to_string(), port_id.to_string())]),
        ofport: Some(ofport),
    }
}

/// The ports as OVS would report them after the topology was applied.
fn applied(topo: &Topology, mut extra: Vec<PortInfo>) -> Vec<PortInfo> {
    let mut v: Vec<PortInfo> = topo
        .int_ports
        .iter()
        .enumerate()
        .map(|(i, p)| PortInfo {
            name: p.name.clone(),
            ovs_type: p.kind.ovs_type().into(),
            tag: p.tag,
            external_ids: p.external_ids.clone(),
            ofport: Some(10 + i as u32),
        })
        .collect();
    v.append(&mut extra);
    v
}

fn tunnels(topo: &Topology) -> Vec<TunnelInfo> {
    topo.tunnels
        .iter()
        .enumerate()
        .map(|(i, t)| TunnelInfo {
            spec: t.clone(),
            ofport: Some(20 + i as u32),
        })
        .collect()
}

fn find<'a>(flows: &'a [Flow], table: u8, m: &str) -> Option<&'a Flow> {
    flows.iter().find(|f| f.table == table && f.match_ == m)
}

#[test]
fn topology_gives_each_network_a_vlan_dhcp_port_and_tunnels() {
    let mut d = desired();
    d.servers[0]
        .ports
        .push(port("p2", NET2, "fa:16:3e:00:00:02", "10.0.0.6"));
    d.networks.push(network(NET2, 200));
    let topo = plan_topology(&d, &NetworkConfig::default(), &[], &[]);
    assert!(topo.errors.is_empty(), "{:?}", topo.errors);
    let vlans: Vec<u16> = topo.networks.values().map(|n| n.vlan.get()).collect();
    assert_eq!(vlans, vec![1, 2]);
    assert_eq!(topo.int_ports.len(), 2);
    assert!(topo.int_ports.iter().any(|p| p.name == dhcp_port_name(NET)));
    assert_eq!(dhcp_port_name(NET).len(), 15);
    assert_eq!(topo.tunnels.len(), 1);
    assert_eq!(topo.tunnels[0].name, tunnel_name(PEER));
    // Ids with a common prefix still get distinct names.
    assert_ne!(
        tunnel_name("b0000000-0000-4000-8000-000000000001"),
        tunnel_name("b0000000-0000-4000-8000-000000000002")
    );
    assert_eq!(topo.bridges[0].fail_mode, FailMode::Secure);
}

#[test]
fn vlans_survive_a_restart_and_freed_ones_are_reused() {
    let d = desired();
    // An earlier run gave NET VLAN 7; a gone network held 1.
    let mut old = vif(&dhcp_port_name(NET), "", 3, Some(7));
    old.external_ids = ids(&[(ROLE_KEY, "dhcp"), (NETWORK_KEY, NET)]);
    let mut gone = vif("fd-0123456789ab", "", 4, Some(1));
    gone.external_ids = ids(&[(ROLE_KEY, "dhcp"), (NETWORK_KEY, "dddddddd-0000")]);
    let observed = vec![old, gone];
    let topo = plan_topology(&d, &NetworkConfig::default(), &[], &observed);
    assert_eq!(topo.networks[NET].vlan.get(), 7);
    assert_eq!(
        stale_ports(&topo.int_ports, &observed),
        vec!["fd-0123456789ab"]
    );
    // A guest's port (no flotilla role) is never stale.
    assert!(stale_ports(&topo.int_ports, &[vif("vnet0", "p1", 5, None)]).is_empty());
}

#[test]
fn provider_networks_and_bad_peers_are_errors_not_panics() {
    let mut d = desired();
    d.networks[0].network_type = pb::NetworkType::Flat as i32;
    d.tunnel_peers[0].address = "host-b.example".into();
    let topo = plan_topology(&d, &NetworkConfig::default(), &[], &[]);
    assert_eq!(topo.errors.len(), 2, "{:?}", topo.errors);
    assert!(topo.networks.is_empty() && topo.tunnels.is_empty());
}

#[test]
fn a_plugged_guest_is_wired_with_anti_spoofing_security_and_forwarding() {
    let d = desired();
    let topo = plan_topology(&d, &NetworkConfig::default(), &[], &[]);
    let ports = applied(&topo, vec![vif("vnet0", "p1", 5, None)]);
    let plan = plan_flows(&d, &topo, &[], &ports, &tunnels(&topo));
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    assert_eq!(plan.wired.iter().collect::<Vec<_>>(), vec!["p1"]);
    // libvirt plugged it untagged: the tag is fixed.
    assert_eq!(plan.tag_fixes.len(), 1);
    assert_eq!(plan.tag_fixes[0].tag.unwrap().get(), 1);
    let f = &plan.flows;
    assert_eq!(
        find(f, 0, "in_port=5").unwrap().actions,
        "load:0x5->NXM_NX_REG5[],load:0x1->NXM_NX_REG6[],resubmit(,10)"
    );
    assert!(find(
        f,
        10,
        "ip,reg5=0x5,dl_src=fa:16:3e:00:00:01,nw_src=10.0.0.5"
    )
    .is_some());
    assert!(find(f, 12, "ct_state=+new+trk,ip,reg5=0x5").is_some());
    assert_eq!(
        find(f, 20, "reg6=0x1,dl_dst=fa:16:3e:00:00:09")
            .unwrap()
            .actions,
        "load:0x64->NXM_NX_TUN_ID[],output:20"
    );
    assert_eq!(
        find(f, 20, "reg6=0x1,dl_dst=fa:16:3e:00:00:01")
            .unwrap()
            .actions,
        "load:0x5->NXM_NX_REG7[],resubmit(,30)"
    );
    assert_eq!(
        find(f, 20, "reg6=0x1,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00")
            .unwrap()
            .actions,
        "output:5,output:10,load:0x64->NXM_NX_TUN_ID[],output:20"
    );
    // From the tunnel: only local outputs.
    assert_eq!(
        find(f, 21, "reg6=0x1,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00")
            .unwrap()
            .actions,
        "output:5"
    );
    assert_eq!(
        find(f, 20, "udp,reg6=0x1,tp_src=68,tp_dst=67")
            .unwrap()
            .actions,
        "output:10"
    );
    assert_eq!(
        find(f, 20, "arp,reg6=0x1,arp_tpa=10.0.0.1")
            .unwrap()
            .actions,
        "drop"
    );
    // No ingress rule: nothing new gets in.
    assert!(!f
        .iter()
        .any(|fl| fl.table == 31 && fl.match_.contains("reg7=0x5")));
    // Every flow is Flotilla's and valid.
    for fl in f {
        assert_eq!(fl.cookie, FLOW_COOKIE);
        crate::driver::ovs::check_flow(fl).unwrap();
    }
}

#[test]
fn not_yet_plugged_admin_down_and_incoming_ports_are_not_wired() {
    let d = desired();
    let topo = plan_topology(&d, &NetworkConfig::default(), &[], &[]);
    let plan = plan_flows(&d, &topo, &[], &applied(&topo, vec![]), &tunnels(&topo));
    assert!(plan.wired.is_empty());
    assert!(find(&plan.flows, 0, "in_port=5").is_none());

    let mut down = d.clone();
    down.servers[0].ports[0].admin_state_up = false;
    let ports = applied(&topo, vec![vif("vnet0", "p1", 5, Some(1))]);
    let plan = plan_flows(&down, &topo, &[], &ports, &tunnels(&topo));
    assert!(plan.wired.is_empty());
    assert!(find(&plan.flows, 0, "in_port=5").is_none());

    let mut incoming = d.clone();
    incoming.servers[0].incoming_migration = true;
    let plan = plan_flows(&incoming, &topo, &[], &ports, &tunnels(&topo));
    assert!(plan.wired.is_empty());
    // Its own traffic can leave as soon as it runs here, but nothing is delivered to it yet:
    // the running copy is still the source's.
    assert!(find(&plan.flows, 0, "in_port=5").is_some());
    assert!(find(&plan.flows, 20, "reg6=0x1,dl_dst=fa:16:3e:00:00:01").is_none());
}

#[test]
fn a_port_without_security_skips_the_filters() {
    let mut d = desired();
    d.servers[0].ports[0].port_security_enabled = false;
    let topo = plan_topology(&d, &NetworkConfig::default(), &[], &[]);
    let ports = applied(&topo, vec![vif("vnet0", "p1", 5, Some(1))]);
    let plan = plan_flows(&d, &topo, &[], &ports, &tunnels(&topo));
    assert_eq!(
        find(&plan.flows, 0, "in_port=5").unwrap().actions,
        "load:0x1->NXM_NX_REG6[],resubmit(,20)"
    );
    assert_eq!(
        find(&plan.flows, 20, "reg6=0x1,dl_dst=fa:16:3e:00:00:01")
            .unwrap()
            .actions,
        "output:5"
    );
    assert!(!plan
        .flows
        .iter()
        .any(|f| f.table == 10 && f.match_.contains("reg5=0x5")));
}

#[test]
fn a_router_gets_the_gateway_mac_and_gateway_arp() {
    let d = desired();
    let router = RouterPlug {
        network_id: NET.into(),
        internal_peer: "tr-aaaaaaaa".into(),
        external_peer: "tg-aaaaaaaa".into(),
        external_bridge: "br-ex".into(),
    };
    let topo = plan_topology(
        &d,
        &NetworkConfig::default(),
        std::slice::from_ref(&router),
        &[],
    );
    assert_eq!(topo.ext_ports.len(), 1);
    assert_eq!(topo.bridges.len(), 2);
    let ports = applied(&topo, vec![vif("vnet0", "p1", 5, Some(1))]);
    let r = ports
        .iter()
        .find(|p| p.name == "tr-aaaaaaaa")
        .unwrap()
        .ofport
        .unwrap();
    let plan = plan_flows(&d, &topo, &[router], &ports, &tunnels(&topo));
    let gw = gateway_mac(NET);
    assert_eq!(
        find(&plan.flows, 20, &format!("reg6=0x1,dl_dst={gw}"))
            .unwrap()
            .actions,
        format!("output:{r}")
    );
    assert_eq!(
        find(&plan.flows, 20, "arp,reg6=0x1,arp_tpa=10.0.0.1")
            .unwrap()
            .actions,
        format!("output:{r}")
    );
    assert_eq!(
        find(&plan.flows, 21, "arp,reg6=0x1,arp_tpa=10.0.0.1")
            .unwrap()
            .actions,
        "drop"
    );
}

#[test]
fn gateway_macs_are_stable_and_local() {
    assert_eq!(gateway_mac(NET), gateway_mac(NET));
    assert_ne!(gateway_mac(NET), gateway_mac(NET2));
    assert!(gateway_mac(NET).to_string().starts_with("fa:16:3f:"));
}

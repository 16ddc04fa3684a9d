//! The network reconcile against a real Open vSwitch (userspace datapath), with "guests" that
//! are network namespaces plugged into `br-int` the way libvirt plugs a guest's tap (a port
//! with `iface-id` and `attached-mac`): DHCP gives each its port's address through the flows,
//! guests of one network reach each other through their security groups, another network's
//! guest cannot, a spoofed source address is dropped, a rule change takes effect, a second
//! converge changes nothing, lost flows come back, and a restarted agent keeps its VLANs.
//!
//! Runs as root with openvswitch-switch, iproute2, udhcpc and ping (deploy/install-deps.sh);
//! skips, saying why, otherwise. Every address lives in namespaces this test makes (no route
//! of the machine is involved; the OVS namespace has no addresses at all) and is removed after.
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::driver::ovs::{OvsVsctl, VSwitch};
use flotilla_agent::net::config::NetworkConfig;
use flotilla_agent::net::converge::{NetworkHost, NoRouters};
use flotilla_agent::testbed::find_tool;
use flotilla_proto::v1 as pb;

use flotilla_agent::testbed_ovs::{enter, missing_prerequisite, Netns, OvsDaemons};

const NET_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const NET_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const PEER_HOST: &str = "cccccccc-0000-4000-8000-000000000003";

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A guest: a namespace whose `eth0` (with the port's MAC) is a veth whose other end is
/// plugged into `br-int` as libvirt would plug a tap.
struct Guest {
    ns: Netns,
    port_id: String,
    mac: String,
}

impl Guest {
    fn plug(ovs: &OvsDaemons, name: String, host_if: &str, port_id: &str, mac: &str) -> Guest {
        let ns = Netns::new(name);
        ok(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
        ]);
        ok(&["ip", "-n", &ns.0, "link", "set", "eth0", "address", mac]);
        ok(&["ip", "-n", &ns.0, "link", "set", "eth0", "up"]);
        ok(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ok(&["ip", "link", "set", host_if, "up"]);
        let db = format!("--db=unix:{}", ovs.dir.join("db.sock").display());
        ok(&[
            "ovs-vsctl",
            &db,
            "add-port",
            "br-int",
            host_if,
            "--",
            "set",
            "interface",
            host_if,
            &format!("external_ids:iface-id={port_id}"),
            &format!("external_ids:attached-mac={mac}"),
        ]);
        Guest {
            ns,
            port_id: port_id.into(),
            mac: mac.into(),
        }
    }

    /// Runs udhcpc once; returns what its script printed for the lease.
    fn dhcp(&self, script: &Path) -> Result<String, String> {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns.0,
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "8",
            "-T",
            "1",
            "-s",
            &script.display().to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.lines().find(|l| l.starts_with("BOUND ")) {
            Some(l) if out.status.success() => Ok(l.to_string()),
            _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
        }
    }

    fn pings(&self, ip: &str, from: Option<&str>) -> bool {
        let mut args = vec![
            "ip", "netns", "exec", &self.ns.0, "ping", "-c", "1", "-W", "1",
        ];
        if let Some(src) = from {
            args.extend(["-I", src]);
        }
        args.push(ip);
        run(&args).status.success()
    }

    /// Pings until one gets through (ARP and the first flow setup take a moment).
    fn reaches(&self, ip: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.pings(ip, None) {
                return true;
            }
        }
        false
    }

    /// Two tries, both failing.
    fn cannot_reach(&self, ip: &str, from: Option<&str>) -> bool {
        !self.pings(ip, from) && !self.pings(ip, from)
    }
}

fn rule(
    direction: pb::SecurityGroupRuleDirection,
    protocol: &str,
    remote: &str,
) -> pb::SecurityGroupRule {
    pb::SecurityGroupRule {
        id: format!("{direction:?}-{protocol}-{remote}"),
        direction: direction as i32,
        ethertype: pb::SecurityGroupRuleEthertype::Ipv4 as i32,
        protocol: protocol.into(),
        remote_ip_prefix: remote.into(),
        ..Default::default()
    }
}

fn port(g: &Guest, network: &str, ip: &str, rules: Vec<pb::SecurityGroupRule>) -> pb::DesiredPort {
    pb::DesiredPort {
        port_id: g.port_id.clone(),
        network_id: network.into(),
        mac_address: g.mac.clone(),
        fixed_ips: vec![pb::PortFixedIp {
            subnet_id: format!("sub-{network}"),
            ip_address: ip.into(),
        }],
        mtu: 1450,
        admin_state_up: true,
        port_security_enabled: true,
        security_group_rules: rules,
    }
}

fn network(id: &str, vni: u32) -> pb::DesiredNetwork {
    pb::DesiredNetwork {
        network_id: id.into(),
        network_type: pb::NetworkType::Vxlan as i32,
        segmentation_id: vni,
        mtu: 1450,
        subnets: vec![pb::Subnet {
            id: format!("sub-{id}"),
            network_id: id.into(),
            cidr: "10.50.0.0/24".into(),
            ip_version: 4,
            gateway_ip: "10.50.0.1".into(),
            enable_dhcp: true,
            dns_nameservers: vec!["10.50.0.2".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn server(id: &str, ports: Vec<pb::DesiredPort>) -> pb::DesiredServer {
    pb::DesiredServer {
        id: id.into(),
        name: format!("vm-{id}"),
        ports,
        ..Default::default()
    }
}

#[test]
fn converge_wires_guests_with_dhcp_security_groups_and_isolation() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping: {why}");
        return;
    }
    for t in ["udhcpc", "ping"] {
        if find_tool(t).is_none() {
            eprintln!("skipping: {t} is not installed (run deploy/install-deps.sh as root)");
            return;
        }
    }
    let tag = format!("n{}", std::process::id() % 100_000);
    let host = Netns::new(format!("{tag}-host"));
    let dir = tempfile::tempdir().unwrap();
    let ovs = OvsDaemons::start_in(dir.path(), Some(&host.0));
    enter(&host.0);
    let vs: Arc<dyn VSwitch> = Arc::new(OvsVsctl::new(ovs.config()).unwrap());
    let cfg = NetworkConfig {
        ovs_rundir: ovs.dir.clone(),
        ..Default::default()
    };
    let net = NetworkHost::new(cfg.clone(), vs.clone(), Arc::new(NoRouters));
    let first = net.converge(&pb::DesiredState::default());
    assert!(first.errors.is_empty(), "{:?}", first.errors);

    let g1 = Guest::plug(
        &ovs,
        format!("{tag}-g1"),
        &format!("{tag}v1"),
        "11111111-0000-4000-8000-000000000001",
        "fa:16:3e:00:00:11",
    );
    let g2 = Guest::plug(
        &ovs,
        format!("{tag}-g2"),
        &format!("{tag}v2"),
        "22222222-0000-4000-8000-000000000002",
        "fa:16:3e:00:00:12",
    );
    let g3 = Guest::plug(
        &ovs,
        format!("{tag}-g3"),
        &format!("{tag}v3"),
        "33333333-0000-4000-8000-000000000003",
        "fa:16:3e:00:00:13",
    );
    use pb::SecurityGroupRuleDirection::{Egress, Ingress};
    let group_a = |ingress: Vec<pb::SecurityGroupRule>| {
        let mut r = vec![rule(Egress, "any", "")];
        r.extend(ingress);
        r
    };
    let from_group = vec![
        rule(Ingress, "any", "10.50.0.11/32"),
        rule(Ingress, "any", "10.50.0.12/32"),
    ];
    let desired = |p2_ingress: Vec<pb::SecurityGroupRule>| pb::DesiredState {
        revision: 1,
        servers: vec![
            server(
                "s1",
                vec![port(&g1, NET_A, "10.50.0.11", group_a(from_group.clone()))],
            ),
            server(
                "s2",
                vec![port(&g2, NET_A, "10.50.0.12", group_a(p2_ingress))],
            ),
            // Another tenant's network with the same CIDR.
            server("s3", vec![port(&g3, NET_B, "10.50.0.13", group_a(vec![]))]),
        ],
        networks: vec![network(NET_A, 100), network(NET_B, 200)],
        tunnel_peers: vec![pb::DesiredTunnelPeer {
            host_id: PEER_HOST.into(),
            hostname: "peer".into(),
            // TEST-NET-1: never routed here (the OVS namespace has no routes at all).
            address: "192.0.2.77".into(),
        }],
        remote_ports: vec![pb::DesiredRemotePort {
            port_id: "44444444-0000-4000-8000-000000000004".into(),
            network_id: NET_A.into(),
            mac_address: "fa:16:3e:00:00:14".into(),
            ip_addresses: vec!["10.50.0.14".into()],
            host_id: PEER_HOST.into(),
            tunnel_address: "192.0.2.77".into(),
        }],
        floating_ips: vec![],
    };

    let started = Instant::now();
    let wired = net.converge(&desired(from_group.clone()));
    eprintln!(
        "timing: first converge with 3 ports {:.2?}, {} OVS operations, {} flows",
        started.elapsed(),
        wired.ovs_ops,
        wired.flows_changed
    );
    assert!(wired.errors.is_empty(), "{:?}", wired.errors);
    assert_eq!(wired.wired.len(), 3, "{:?}", wired.wired);
    let started = Instant::now();
    let again = net.converge(&desired(from_group.clone()));
    eprintln!(
        "timing: converge with nothing to do {:.2?}",
        started.elapsed()
    );
    assert_eq!(
        (again.ovs_ops, again.flows_changed),
        (0, 0),
        "a second converge changed things: {again:?}"
    );
    assert!(vs
        .list_tunnels("br-int")
        .unwrap()
        .iter()
        .any(|t| t.spec.remote_ip.to_string() == "192.0.2.77"));

    // DHCP through the flows: each guest gets its port's address.
    let script = dir.path().join("udhcpc.sh");
    fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr add \"$ip/$mask\" dev \"$interface\"; \
         echo \"BOUND $ip/$mask router=$router dns=$dns mtu=$mtu\";; esac\n",
    )
    .unwrap();
    ok(&["chmod", "+x", &script.display().to_string()]);
    let lease1 = g1.dhcp(&script).expect("g1's DHCP");
    assert!(
        lease1.starts_with("BOUND 10.50.0.11/24 router=10.50.0.1 dns=10.50.0.2 mtu=1450"),
        "{lease1}"
    );
    assert!(g2
        .dhcp(&script)
        .expect("g2's DHCP")
        .starts_with("BOUND 10.50.0.12/24"));
    assert!(g3
        .dhcp(&script)
        .expect("g3's DHCP")
        .starts_with("BOUND 10.50.0.13/24"));
    assert!(
        net.dhcp().stats().total.replies >= 6,
        "{:?}",
        net.dhcp().stats()
    );

    // One network, the group's rules: both ways.
    assert!(g1.reaches("10.50.0.12"), "g1 → g2");
    assert!(g2.reaches("10.50.0.11"), "g2 → g1");
    // Another network: not even ARP crosses.
    assert!(
        g3.cannot_reach("10.50.0.11", None),
        "g3 (network B) reached g1 (network A)"
    );
    assert!(g1.cannot_reach("10.50.0.13", None), "g1 reached network B");
    // A spoofed source address is dropped.
    ok(&[
        "ip",
        "-n",
        &g1.ns.0,
        "addr",
        "add",
        "10.50.0.99/24",
        "dev",
        "eth0",
    ]);
    assert!(
        g1.cannot_reach("10.50.0.12", Some("10.50.0.99")),
        "a spoofed source got through"
    );

    // g2 without ingress rules: closed; an ICMP rule from anywhere: open again.
    let closed = net.converge(&desired(vec![]));
    assert!(closed.flows_changed > 0);
    assert!(
        g1.cannot_reach("10.50.0.12", None),
        "g2 is reachable without an ingress rule"
    );
    assert!(
        g2.reaches("10.50.0.11"),
        "g2's own connections must still work (replies are established)"
    );
    net.converge(&desired(vec![rule(Ingress, "icmp", "0.0.0.0/0")]));
    assert!(g1.reaches("10.50.0.12"), "the ICMP rule did not open g2");

    // Lost flows come back.
    let final_state = desired(vec![rule(Ingress, "icmp", "0.0.0.0/0")]);
    ok(&[
        "ovs-ofctl",
        "del-flows",
        &format!("unix:{}", ovs.dir.join("br-int.mgmt").display()),
    ]);
    assert!(!g1.pings("10.50.0.12", None));
    let repaired = net.converge(&final_state);
    assert!(repaired.flows_changed > 20, "{repaired:?}");
    assert!(g1.reaches("10.50.0.12"), "not repaired");

    // A lost DHCP port and a lost tunnel come back (the DHCP port with its VLAN: guests answer).
    let dhcp_a = flotilla_agent::net::ovs_plan::dhcp_port_name(NET_A);
    let tunnel = flotilla_agent::net::ovs_plan::tunnel_name(PEER_HOST);
    let db = format!("--db=unix:{}", ovs.dir.join("db.sock").display());
    ok(&["ovs-vsctl", &db, "del-port", "br-int", &dhcp_a]);
    ok(&["ovs-vsctl", &db, "del-port", "br-int", &tunnel]);
    let back = net.converge(&final_state);
    assert!(back.errors.is_empty(), "{:?}", back.errors);
    let ports = vs.list_ports("br-int").unwrap();
    assert!(
        ports.iter().any(|p| p.name == dhcp_a && p.tag.is_some()),
        "{ports:?}"
    );
    assert!(vs
        .list_tunnels("br-int")
        .unwrap()
        .iter()
        .any(|t| t.spec.name == tunnel));
    assert!(g1.dhcp(&script).is_ok(), "DHCP after the port came back");
    assert!(
        g1.reaches("10.50.0.12"),
        "forwarding after the ports came back"
    );

    // A restarted agent finds its VLANs and changes nothing.
    let tags: Vec<_> = vs
        .list_ports("br-int")
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.tag))
        .collect();
    drop(net);
    let restarted = NetworkHost::new(cfg, vs.clone(), Arc::new(NoRouters));
    let after = restarted.converge(&final_state);
    assert_eq!((after.ovs_ops, after.flows_changed), (0, 0), "{after:?}");
    let tags_after: Vec<_> = vs
        .list_ports("br-int")
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.tag))
        .collect();
    assert_eq!(tags, tags_after);
    assert!(g2.dhcp(&script).is_ok(), "DHCP after the restart");

    // A host change: one server gone.
    let mut fewer = final_state.clone();
    fewer.servers.retain(|s| s.id != "s3");
    fewer.networks.retain(|n| n.network_id != NET_B);
    let change = restarted.converge(&fewer);
    eprintln!(
        "timing: a server and its network gone: {} OVS operations, {} flows changed",
        change.ovs_ops, change.flows_changed
    );
    assert_eq!(change.wired.len(), 2);
    assert!(!vs
        .list_ports("br-int")
        .unwrap()
        .iter()
        .any(|p| p.name == flotilla_agent::net::ovs_plan::dhcp_port_name(NET_B)));
    drop(restarted);
    drop((g1, g2, g3));
}

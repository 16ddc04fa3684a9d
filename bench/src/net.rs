//! `flotilla-bench net-real`: the agent's network reconcile against a real Open vSwitch
//! (userspace datapath, its own ovsdb-server and ovs-vswitchd in a private network namespace).
//!
//! With N guests' ports already wired on the host, it measures:
//! - port-to-wired: a new port appears in the desired state with its NIC plugged (as libvirt
//!   plugs a tap at domain start) → the converge that wires it (flows, tag, DHCP) returns;
//! - Open vSwitch operations (mutating calls / flows changed) per host change: a port added to a
//!   network the host has, a port removed, the first port of a new network, a peer host joining,
//!   a remote port appearing;
//! - a converge with nothing to do (reads only).
//!
//! NICs are OVS internal ports carrying the `iface-id`/`attached-mac` libvirt sets: wiring only
//! looks at the port, not at what is behind it. Needs root and openvswitch-switch.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use flotilla_agent::driver::ovs::{OvsVsctl, VSwitch};
use flotilla_agent::net::config::NetworkConfig;
use flotilla_agent::net::converge::{ConvergeReport, NetworkHost, NoRouters};
use flotilla_agent::testbed_ovs::{enter, missing_prerequisite, Netns, OvsDaemons};
use flotilla_proto::v1 as pb;

#[derive(Args, Clone)]
pub struct NetArgs {
    /// Ports already wired on the host, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,50,200")]
    pub ports: Vec<usize>,
    /// Ports per tenant network.
    #[arg(long, default_value_t = 10)]
    pub per_network: usize,
    /// Other hosts (tunnels); each holds one remote port per network.
    #[arg(long, default_value_t = 10)]
    pub peers: usize,
    /// Port add/remove rounds per run.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
}

pub async fn run(a: NetArgs) -> Result<()> {
    if let Some(why) = missing_prerequisite() {
        bail!("net-real needs a private Open vSwitch: {why}");
    }
    // Entering a network namespace is per thread: a thread of its own, not a runtime worker.
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || measure_all(&a))
            .join()
            .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
    })
    .await?
}

fn measure_all(a: &NetArgs) -> Result<()> {
    println!(
        "{:>6} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8}",
        "ports",
        "wire p50",
        "wire p99",
        "wire max",
        "+port",
        "-port",
        "+network",
        "+peer",
        "+remote",
        "idle ms"
    );
    for &n in &a.ports {
        measure(a, n)?;
    }
    Ok(())
}

fn uuid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

fn mac(i: usize) -> String {
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

struct World {
    per_network: usize,
    peers: usize,
    desired: pb::DesiredState,
}

impl World {
    fn network_of(&self, i: usize) -> String {
        uuid(0xa000_0000, i / self.per_network)
    }

    fn ensure_network(&mut self, id: &str) {
        if self.desired.networks.iter().any(|n| n.network_id == id) {
            return;
        }
        let idx = self.desired.networks.len();
        self.desired.networks.push(pb::DesiredNetwork {
            network_id: id.into(),
            network_type: pb::NetworkType::Vxlan as i32,
            segmentation_id: 1000 + idx as u32,
            mtu: 1450,
            subnets: vec![pb::Subnet {
                cidr: format!("10.{}.{}.0/24", 100 + idx / 256, idx % 256),
                ip_version: 4,
                gateway_ip: format!("10.{}.{}.1", 100 + idx / 256, idx % 256),
                enable_dhcp: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        for p in 0..self.peers {
            let r = self.desired.remote_ports.len();
            self.desired.remote_ports.push(pb::DesiredRemotePort {
                port_id: uuid(0xc000_0000, r),
                network_id: id.into(),
                mac_address: mac(0x80_0000 + r),
                ip_addresses: vec![],
                host_id: uuid(0xb000_0000, p),
                tunnel_address: format!("192.0.2.{}", p + 1),
            });
        }
    }

    /// Port `i` on network `net` (the one `network_of` gives when `None`).
    fn add_port(&mut self, i: usize, net: Option<String>) -> String {
        let net = net.unwrap_or_else(|| self.network_of(i));
        self.ensure_network(&net);
        let port_id = uuid(0xd000_0000, i);
        let net_idx = self
            .desired
            .networks
            .iter()
            .position(|n| n.network_id == net)
            .unwrap();
        self.desired.servers.push(pb::DesiredServer {
            id: uuid(0xe000_0000, i),
            name: format!("vm{i}"),
            ports: vec![pb::DesiredPort {
                port_id: port_id.clone(),
                network_id: net,
                mac_address: mac(i),
                fixed_ips: vec![pb::PortFixedIp {
                    subnet_id: String::new(),
                    ip_address: format!(
                        "10.{}.{}.{}",
                        100 + net_idx / 256,
                        net_idx % 256,
                        10 + i % self.per_network
                    ),
                }],
                mtu: 1450,
                admin_state_up: true,
                port_security_enabled: true,
                security_group_rules: vec![
                    rule(pb::SecurityGroupRuleDirection::Egress, "", None),
                    rule(pb::SecurityGroupRuleDirection::Ingress, "tcp", Some(22)),
                    rule(pb::SecurityGroupRuleDirection::Ingress, "icmp", None),
                ],
            }],
            ..Default::default()
        });
        port_id
    }
}

fn rule(
    dir: pb::SecurityGroupRuleDirection,
    protocol: &str,
    port: Option<u32>,
) -> pb::SecurityGroupRule {
    pb::SecurityGroupRule {
        id: format!("{dir:?}{protocol}"),
        direction: dir as i32,
        ethertype: pb::SecurityGroupRuleEthertype::Ipv4 as i32,
        protocol: protocol.into(),
        port_range_min: port,
        port_range_max: port,
        ..Default::default()
    }
}

/// Plugs a NIC the way libvirt does (a port with `iface-id` and `attached-mac`).
fn plug(db: &str, i: usize, port_id: &str) -> Result<()> {
    let name = format!("vif{i}");
    let out = std::process::Command::new("ovs-vsctl")
        .args([
            db,
            "add-port",
            "br-int",
            &name,
            "--",
            "set",
            "interface",
            &name,
            "type=internal",
        ])
        .arg(format!("external_ids:iface-id={port_id}"))
        .arg(format!("external_ids:attached-mac={}", mac(i)))
        .output()?;
    if !out.status.success() {
        bail!(
            "ovs-vsctl add-port: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn unplug(db: &str, i: usize) -> Result<()> {
    let out = std::process::Command::new("ovs-vsctl")
        .args([db, "del-port", "br-int", &format!("vif{i}")])
        .output()?;
    if !out.status.success() {
        bail!(
            "ovs-vsctl del-port: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn checked(r: ConvergeReport) -> Result<ConvergeReport> {
    if !r.errors.is_empty() {
        bail!("converge errors: {:?}", r.errors);
    }
    Ok(r)
}

fn measure(a: &NetArgs, n: usize) -> Result<()> {
    let ns = Netns::new(format!("flbench{}", std::process::id() % 100_000));
    let dir = tempfile::tempdir()?;
    let ovs = OvsDaemons::start_in(dir.path(), Some(&ns.0));
    enter(&ns.0);
    let db = format!("--db=unix:{}", ovs.dir.join("db.sock").display());
    let vs: Arc<dyn VSwitch> = Arc::new(OvsVsctl::new(ovs.config())?);
    let cfg = NetworkConfig {
        ovs_rundir: ovs.dir.clone(),
        ..Default::default()
    };
    let net = NetworkHost::new(cfg, vs, Arc::new(NoRouters));
    let mut world = World {
        per_network: a.per_network,
        peers: a.peers,
        desired: pb::DesiredState::default(),
    };
    for p in 0..a.peers {
        world.desired.tunnel_peers.push(pb::DesiredTunnelPeer {
            host_id: uuid(0xb000_0000, p),
            hostname: format!("peer{p}"),
            address: format!("192.0.2.{}", p + 1),
        });
    }
    checked(net.converge(&world.desired))?;
    for i in 0..n {
        let port = world.add_port(i, None);
        plug(&db, i, &port)?;
    }
    let all = checked(net.converge(&world.desired))?;
    if all.wired.len() != n {
        bail!("{} of {n} ports wired", all.wired.len());
    }

    let mut wire_ms = Vec::new();
    let (mut add, mut remove) = ((0, 0), (0, 0));
    for r in 0..a.rounds {
        let i = n + r;
        let before = world.desired.clone();
        // On a network the host already has.
        let port = world.add_port(i, Some(world.network_of(0)));
        plug(&db, i, &port)?;
        let started = Instant::now();
        let report = checked(net.converge(&world.desired))?;
        let took = started.elapsed();
        if !report.wired.contains(&port) {
            bail!("the new port was not wired in one converge");
        }
        wire_ms.push(took.as_secs_f64() * 1000.0);
        add = (report.ovs_ops, report.flows_changed);
        world.desired = before;
        unplug(&db, i)?;
        let report = checked(net.converge(&world.desired))?;
        remove = (report.ovs_ops, report.flows_changed);
    }
    // The first port of a network new to the host.
    let i = n + a.rounds;
    let port = world.add_port(i, Some(uuid(0xa100_0000, 0)));
    plug(&db, i, &port)?;
    let new_net = checked(net.converge(&world.desired))?;
    // A peer host joins.
    world.desired.tunnel_peers.push(pb::DesiredTunnelPeer {
        host_id: uuid(0xb000_0000, a.peers),
        hostname: "newpeer".into(),
        address: "192.0.2.250".into(),
    });
    let peer = checked(net.converge(&world.desired))?;
    // A port appears on another host (e.g. a server booted or migrated there).
    world.desired.remote_ports.push(pb::DesiredRemotePort {
        port_id: uuid(0xc100_0000, 0),
        network_id: world.network_of(0),
        mac_address: mac(0xf0_0000),
        ip_addresses: vec![],
        host_id: uuid(0xb000_0000, a.peers),
        tunnel_address: "192.0.2.250".into(),
    });
    let remote = checked(net.converge(&world.desired))?;
    let started = Instant::now();
    let idle_rounds = 5;
    for _ in 0..idle_rounds {
        let r = checked(net.converge(&world.desired))?;
        if r.ovs_ops != 0 {
            bail!("a converge with nothing to do changed something: {r:?}");
        }
    }
    let idle = started.elapsed() / idle_rounds;
    wire_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| wire_ms[((wire_ms.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{n:>6} {:>7.1}ms {:>7.1}ms {:>7.1}ms | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8.1}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        format!("{}/{}", add.0, add.1),
        format!("{}/{}", remove.0, remove.1),
        format!("{}/{}", new_net.ovs_ops, new_net.flows_changed),
        format!("{}/{}", peer.ovs_ops, peer.flows_changed),
        format!("{}/{}", remote.ovs_ops, remote.flows_changed),
        ms(idle)
    );
    drop(net);
    drop(ovs);
    drop(ns);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

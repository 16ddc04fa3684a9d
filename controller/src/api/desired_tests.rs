//! The networking part of a host's desired state, by its contents: ports of owned and incoming
//! servers with expanded security group rules, the networks they need, tunnel peers, the
//! floating IPs the host NATs (owner only) and the other hosts' ports on its networks.
use std::collections::BTreeMap;

use flotilla_proto::v1 as pb;

use crate::api::agent_hub::duties;
use crate::api::agents::desired_state;
use crate::api::test_fixtures::{registration, stored_image};
use crate::scheduler::AllocationRatios;
use crate::state::*;

const RATIOS: AllocationRatios = AllocationRatios {
    cpu: 1.0,
    ram: 1.0,
    disk: 1.0,
};

pub(super) struct Sim {
    pub(super) state: State,
    index: u64,
}

impl Sim {
    pub(super) fn ok(&mut self, command: Command) -> Outcome {
        self.index += 1;
        let env = Envelope {
            request_id: String::new(),
            actor: "sim".into(),
            time_ms: 1_000 + self.index as i64,
            command,
        };
        let out = self.state.apply(self.index, &env);
        assert!(!matches!(out, Outcome::Rejected(_)), "{out:?}");
        out
    }

    pub(super) fn net(&mut self, c: NetCommand) {
        self.ok(Command::Networking(c));
    }

    fn server(&mut self, id: &str, host: &str, nics: Vec<NicSpec>) {
        let flavor = FlavorSnapshot {
            id: "f".into(),
            name: "f".into(),
            vcpus: 1,
            ram_mib: 512,
            disk_gib: 1,
            ephemeral_gib: 0,
            swap_mib: 0,
            extra_specs: BTreeMap::new(),
        };
        self.ok(Command::CreateServersWithNics {
            servers: vec![NewServer {
                id: id.into(),
                name: id.into(),
                project_id: "p".into(),
                user_id: "u".into(),
                flavor,
                image_id: "img".into(),
                host_id: host.into(),
                availability_zone: String::new(),
                metadata: BTreeMap::new(),
                user_data: vec![],
                operation_id: format!("boot-{id}"),
                group_id: String::new(),
            }],
            ratios: RATIOS,
            nics: vec![nics],
            default_group_ids: (0..DEFAULT_GROUP_IDS)
                .map(|i| format!("dg-{id}-{i}"))
                .collect(),
        });
    }
}

pub(super) fn network(id: &str, t: NetworkType, physnet: &str, external: bool) -> NetCommand {
    NetCommand::CreateNetwork(NetworkSpec {
        id: id.into(),
        name: id.into(),
        description: String::new(),
        project_id: "p".into(),
        network_type: t,
        segmentation_id: 0,
        physical_network: physnet.into(),
        external,
        shared: false,
        mtu: None,
        admin_state_up: true,
        vni_range: (5000, 5999),
    })
}

pub(super) fn subnet(id: &str, network: &str, cidr: &str) -> NetCommand {
    NetCommand::CreateSubnet(SubnetSpec {
        id: id.into(),
        network_id: network.into(),
        name: id.into(),
        description: String::new(),
        cidr: cidr.into(),
        ip_version: 0,
        gateway: GatewaySpec::Default,
        allocation_pools: Vec::new(),
        dns_nameservers: Vec::new(),
        enable_dhcp: true,
        host_routes: Vec::new(),
    })
}

fn nic(port: &str) -> NicSpec {
    NicSpec::Network {
        port_id: port.into(),
        network_id: "n1".into(),
        fixed_ip: String::new(),
    }
}

/// Hosts h1..h3 (192.0.2.N), tenant network n1 (10.0.0.0/24), external flat network ext
/// (172.24.4.0/24); server a on h1 (port pa, 10.0.0.2) with floating IP 172.24.4.2, server b
/// on h2 (port pb, 10.0.0.3).
pub(super) fn cluster() -> Sim {
    let mut sim = Sim {
        state: State::new(),
        index: 0,
    };
    sim.ok(Command::CreateProject {
        id: "p".into(),
        name: "p".into(),
        description: String::new(),
        enabled: true,
        properties: BTreeMap::new(),
    });
    for cmd in stored_image("img", "p", DiskFormat::Raw, Visibility::Private, 1 << 20) {
        sim.ok(cmd);
    }
    for i in 1..=3 {
        sim.ok(Command::RegisterHost {
            host_id: format!("h{i}"),
            info: HostRegistration {
                // node2 has a separate VXLAN underlay.
                tunnel_address: if i == 2 {
                    "198.51.100.2".into()
                } else {
                    String::new()
                },
                ..registration(
                    &format!("node{i}"),
                    &format!("192.0.2.{i}"),
                    Capacity::new(8, 8192, 80),
                )
            },
        });
    }
    sim.net(network("n1", NetworkType::Vxlan, "", false));
    sim.net(subnet("s1", "n1", "10.0.0.0/24"));
    sim.net(network("ext", NetworkType::Flat, "public", true));
    sim.net(subnet("s-ext", "ext", "172.24.4.0/24"));
    sim.server("a", "h1", vec![nic("pa")]);
    sim.server("b", "h2", vec![nic("pb")]);
    sim.net(NetCommand::CreateFloatingIp {
        id: "fip".into(),
        network_id: "ext".into(),
        project_id: "p".into(),
        address: String::new(),
        port_id: "pa".into(),
        fixed_ip_address: String::new(),
        description: String::new(),
    });
    sim
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|x| id(x).to_owned()).collect()
}

#[test]
fn a_host_gets_its_servers_ports_with_expanded_rules_and_what_reaches_them() {
    let sim = cluster();
    let d = desired_state(&sim.state, "h1");
    assert_eq!(ids(&d.servers, |s| &s.id), ["a"]);
    let pa = sim.state.port("pa").unwrap();
    let port = &d.servers[0].ports[0];
    assert_eq!(
        (
            port.port_id.as_str(),
            port.network_id.as_str(),
            port.mac_address.as_str(),
            port.mtu,
            port.admin_state_up,
            port.port_security_enabled
        ),
        ("pa", "n1", pa.mac_address.as_str(), 1450, true, true)
    );
    assert_eq!(port.fixed_ips[0].ip_address, "10.0.0.2");
    // The default group: both egress rules as they are; ingress from the group itself becomes
    // one rule per IPv4 address of its ports (no IPv6 addresses: no IPv6 ingress rule).
    let default = sim.state.default_group_of("p").unwrap().id.clone();
    let mut ingress: Vec<(&str, &str)> = port
        .security_group_rules
        .iter()
        .filter(|r| r.direction == pb::SecurityGroupRuleDirection::Ingress as i32)
        .map(|r| (r.remote_ip_prefix.as_str(), r.remote_group_id.as_str()))
        .collect();
    ingress.sort();
    assert_eq!(
        ingress,
        [
            ("10.0.0.2/32", default.as_str()),
            ("10.0.0.3/32", default.as_str())
        ]
    );
    let egress = port
        .security_group_rules
        .iter()
        .filter(|r| r.direction == pb::SecurityGroupRuleDirection::Egress as i32)
        .count();
    assert_eq!(egress, 2);

    // Networks: n1 (its port) and ext (its floating IP), with subnets.
    assert_eq!(ids(&d.networks, |n| &n.network_id), ["ext", "n1"]);
    let n1 = d.networks.iter().find(|n| n.network_id == "n1").unwrap();
    assert_eq!(
        (n1.network_type, n1.segmentation_id, n1.mtu),
        (pb::NetworkType::Vxlan as i32, 5000, 1450)
    );
    assert_eq!(n1.subnets[0].cidr, "10.0.0.0/24");
    let ext = d.networks.iter().find(|n| n.network_id == "ext").unwrap();
    assert_eq!(ext.physical_network, "public");
    // Every other host is a tunnel peer, at its tunnel address (its address when it has none).
    let peers: Vec<(&str, &str, &str)> = d
        .tunnel_peers
        .iter()
        .map(|p| (p.host_id.as_str(), p.hostname.as_str(), p.address.as_str()))
        .collect();
    assert_eq!(
        peers,
        [
            ("h2", "node2", "198.51.100.2"),
            ("h3", "node3", "192.0.2.3")
        ]
    );
    assert_eq!(
        d.floating_ips,
        [pb::DesiredFloatingIp {
            floating_ip_address: "172.24.4.2".into(),
            fixed_ip_address: "10.0.0.2".into(),
            port_id: "pa".into(),
            floating_network_id: "ext".into(),
        }]
    );
    let pb_port = sim.state.port("pb").unwrap();
    assert_eq!(
        d.remote_ports,
        [pb::DesiredRemotePort {
            port_id: "pb".into(),
            network_id: "n1".into(),
            mac_address: pb_port.mac_address.clone(),
            ip_addresses: vec!["10.0.0.3".into()],
            host_id: "h2".into(),
            tunnel_address: "198.51.100.2".into(),
        }]
    );

    // h2 does no NAT for a, and needs no external network.
    let d2 = desired_state(&sim.state, "h2");
    assert!(d2.floating_ips.is_empty());
    assert_eq!(ids(&d2.networks, |n| &n.network_id), ["n1"]);
    assert_eq!(ids(&d2.remote_ports, |p| &p.port_id), ["pa"]);
    // h3 holds nothing: no networks, no remote ports, but tunnels to both others.
    let d3 = desired_state(&sim.state, "h3");
    assert!(d3.networks.is_empty() && d3.remote_ports.is_empty());
    assert_eq!(d3.tunnel_peers.len(), 2);
}

#[test]
fn a_migration_destination_wires_the_port_first_and_takes_over_the_nat_with_ownership() {
    let mut sim = cluster();
    // A host that is down stays a tunnel peer.
    let lease_id = sim.state.host("h3").unwrap().lease_id;
    sim.ok(Command::MarkHostDown {
        host_id: "h3".into(),
        lease_id,
    });
    assert_eq!(desired_state(&sim.state, "h1").tunnel_peers.len(), 2);
    sim.ok(Command::ServerObserved {
        host_id: "h1".into(),
        lease_id: sim.state.host("h1").unwrap().lease_id,
        servers: vec![ObservedServer {
            id: "a".into(),
            power: PowerState::Running,
            generation: 1,
            error: String::new(),
        }],
    });
    sim.ok(Command::ServerRequest {
        server_id: "a".into(),
        operation_id: "mig".into(),
        request: ServerRequest::Migrate(MoveSpec {
            host_id: "h2".into(),
            live: true,
            block_migration: true,
            timeout_seconds: 60,
            force: false,
            parent_id: String::new(),
            ratios: RATIOS,
        }),
    });
    // The prepare command carries the port.
    let prepare = duties(&sim.state, &RATIOS)
        .commands
        .into_iter()
        .find_map(|(host, c)| match c.payload {
            Some(pb::agent_command::Payload::PrepareMigration(p)) => Some((host, p)),
            _ => None,
        })
        .expect("a prepare command");
    assert_eq!(prepare.0, "h2");
    assert_eq!(
        ids(&prepare.1.server.unwrap().ports, |p| &p.port_id),
        ["pa"]
    );
    let d2 = desired_state(&sim.state, "h2");
    let incoming = d2.servers.iter().find(|s| s.id == "a").unwrap();
    assert!(incoming.incoming_migration);
    assert_eq!(ids(&incoming.ports, |p| &p.port_id), ["pa"]);
    // Still owned by h1: h1 keeps the NAT, and h2 still sends pa's traffic to h1.
    assert!(d2.floating_ips.is_empty());
    assert_eq!(
        ids(&d2.remote_ports, |p| &p.host_id),
        ["h1"],
        "pa stays remote (on h1) until ownership moves"
    );
    assert_eq!(desired_state(&sim.state, "h1").floating_ips.len(), 1);

    for step in ["prepare_destination", "migrate"] {
        sim.ok(Command::MigrationStep {
            operation_id: "mig".into(),
            step: step.into(),
            ok: true,
            message: "<domain/>".into(),
        });
    }
    assert_eq!(sim.state.server("a").unwrap().host_id, "h2");
    let d2 = desired_state(&sim.state, "h2");
    assert_eq!(ids(&d2.floating_ips, |f| &f.port_id), ["pa"]);
    assert!(d2.remote_ports.is_empty());
    assert_eq!(ids(&d2.networks, |n| &n.network_id), ["ext", "n1"]);
    let d1 = desired_state(&sim.state, "h1");
    assert!(d1.servers.is_empty() && d1.floating_ips.is_empty() && d1.networks.is_empty());
}

#[test]
fn security_group_and_floating_ip_changes_change_the_desired_state_of_the_hosts_concerned() {
    let mut sim = cluster();
    let without_revision = |mut d: pb::DesiredState| {
        d.revision = 0;
        d
    };
    let before = without_revision(desired_state(&sim.state, "h1"));
    let before3 = without_revision(desired_state(&sim.state, "h3"));
    let default = sim.state.default_group_of("p").unwrap().id.clone();
    sim.net(NetCommand::CreateSecurityGroupRule(RuleSpec {
        id: "ssh".into(),
        security_group_id: default,
        direction: Direction::Ingress,
        ethertype: Ethertype::Ipv4,
        protocol: "tcp".into(),
        port_range_min: Some(22),
        port_range_max: Some(22),
        remote_ip_prefix: "0.0.0.0/0".into(),
        remote_group_id: String::new(),
        description: String::new(),
    }));
    let after = without_revision(desired_state(&sim.state, "h1"));
    assert_ne!(before, after);
    assert!(after.servers[0].ports[0]
        .security_group_rules
        .iter()
        .any(|r| r.id == "ssh" && r.port_range_min == Some(22)));
    assert_eq!(
        before3,
        without_revision(desired_state(&sim.state, "h3")),
        "a host without ports is not concerned"
    );
    sim.net(NetCommand::DisassociateFloatingIp {
        floating_ip_id: "fip".into(),
    });
    let d1 = desired_state(&sim.state, "h1");
    assert!(d1.floating_ips.is_empty());
    assert_eq!(ids(&d1.networks, |n| &n.network_id), ["n1"]);
    // Port security off: no rules at all.
    sim.net(NetCommand::UpdatePort {
        port_id: "pa".into(),
        name: None,
        description: None,
        admin_state_up: None,
        port_security_enabled: Some(false),
        security_group_ids: Some(vec![]),
    });
    let port = &desired_state(&sim.state, "h1").servers[0].ports[0];
    assert!(!port.port_security_enabled && port.security_group_rules.is_empty());
}

//! State tests of networking: VNI allocation, subnet validation, IPAM (I3), MAC generation,
//! floating IPs, security groups and the refusals of deletes in use. By outcomes only.
use std::collections::BTreeMap;

use super::*;

struct Log {
    state: State,
    index: u64,
    ids: u64,
}

impl Log {
    fn new() -> Log {
        let mut log = Log {
            state: State::new(),
            index: 0,
            ids: 0,
        };
        for (id, name) in [("p1", "one"), ("p2", "two")] {
            log.ok(Command::CreateProject {
                id: id.into(),
                name: name.into(),
                description: String::new(),
                enabled: true,
                properties: BTreeMap::new(),
            });
        }
        log
    }

    fn fresh(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.ids += 1;
                format!("gen-{}", self.ids)
            })
            .collect()
    }

    fn apply(&mut self, command: NetCommand) -> Outcome {
        self.apply_cmd(Command::Networking(command))
    }

    fn apply_cmd(&mut self, command: Command) -> Outcome {
        self.index += 1;
        let env = Envelope {
            request_id: String::new(),
            actor: "tester".into(),
            time_ms: 1_000 + self.index as i64,
            command,
        };
        self.state.apply(self.index, &env)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let out = self.apply_cmd(command);
        assert!(!matches!(out, Outcome::Rejected(_)), "{out:?}");
        out
    }

    fn net(&mut self, command: NetCommand) -> NetOutcome {
        match self.apply(command) {
            Outcome::Net(o) => *o,
            other => panic!("expected a networking outcome, got {other:?}"),
        }
    }

    fn rejected(&mut self, command: NetCommand) -> Rejection {
        match self.apply(command) {
            Outcome::Rejected(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn network(&mut self, id: &str, project: &str) -> Network {
        match self.net(NetCommand::CreateNetwork(network_spec(id, project))) {
            NetOutcome::Network(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn subnet(&mut self, id: &str, network: &str, cidr: &str) -> Subnet {
        match self.net(NetCommand::CreateSubnet(subnet_spec(id, network, cidr))) {
            NetOutcome::Subnet(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn port_spec(&mut self, id: &str, network: &str, project: &str) -> PortSpec {
        PortSpec {
            id: id.into(),
            network_id: network.into(),
            project_id: project.into(),
            name: String::new(),
            description: String::new(),
            mac_address: String::new(),
            fixed_ips: Vec::new(),
            security_group_ids: Vec::new(),
            port_security_enabled: true,
            admin_state_up: true,
            device_owner: String::new(),
            device_id: String::new(),
            default_group_ids: self.fresh(DEFAULT_GROUP_IDS),
        }
    }

    fn port(&mut self, id: &str, network: &str, project: &str) -> Port {
        let spec = self.port_spec(id, network, project);
        match self.net(NetCommand::CreatePort(spec)) {
            NetOutcome::Port(p) => p,
            other => panic!("{other:?}"),
        }
    }
}

fn network_spec(id: &str, project: &str) -> NetworkSpec {
    NetworkSpec {
        id: id.into(),
        name: format!("net-{id}"),
        description: String::new(),
        project_id: project.into(),
        network_type: NetworkType::Vxlan,
        segmentation_id: 0,
        physical_network: String::new(),
        external: false,
        shared: false,
        mtu: None,
        admin_state_up: true,
        vni_range: (100, 102),
    }
}

fn subnet_spec(id: &str, network: &str, cidr: &str) -> SubnetSpec {
    SubnetSpec {
        id: id.into(),
        network_id: network.into(),
        name: format!("sub-{id}"),
        description: String::new(),
        cidr: cidr.into(),
        ip_version: 0,
        gateway: GatewaySpec::Default,
        allocation_pools: Vec::new(),
        dns_nameservers: Vec::new(),
        enable_dhcp: true,
        host_routes: Vec::new(),
    }
}

fn fixed(subnet: &str, ip: &str) -> FixedIp {
    FixedIp {
        subnet_id: subnet.into(),
        ip_address: ip.into(),
    }
}

fn ips(p: &Port) -> Vec<&str> {
    p.fixed_ips.iter().map(|f| f.ip_address.as_str()).collect()
}

#[test]
fn tenant_networks_get_the_lowest_free_vni_which_is_reused_only_after_delete() {
    let mut log = Log::new();
    assert_eq!(log.network("n1", "p1").segmentation_id, 100);
    assert_eq!(log.network("n2", "p1").segmentation_id, 101);
    assert_eq!(log.network("n3", "p2").segmentation_id, 102);
    let full = log.rejected(NetCommand::CreateNetwork(network_spec("n4", "p1")));
    assert!(matches!(full, Rejection::QuotaExceeded(ref m) if m.contains("no free VXLAN VNI")));
    log.apply(NetCommand::DeleteNetwork {
        network_id: "n2".into(),
    });
    assert_eq!(log.network("n4", "p1").segmentation_id, 101);
    let n = log.state.network("n1").unwrap();
    assert_eq!((n.mtu, n.admin_state_up), (1450, true));
    // An explicit VNI in use is refused.
    let mut spec = network_spec("n5", "p1");
    spec.segmentation_id = 100;
    let taken = log.rejected(NetCommand::CreateNetwork(spec));
    assert!(
        matches!(taken, Rejection::FailedPrecondition(_)),
        "{taken:?}"
    );
}

#[test]
fn provider_networks_need_a_physical_network_and_a_free_vlan() {
    let mut log = Log::new();
    let mut vlan = network_spec("v1", "p1");
    vlan.network_type = NetworkType::Vlan;
    let r = log.rejected(NetCommand::CreateNetwork(vlan.clone()));
    assert!(matches!(r, Rejection::Invalid(_)), "{r:?}");
    vlan.physical_network = "physnet1".into();
    vlan.segmentation_id = 4095;
    assert!(matches!(
        log.rejected(NetCommand::CreateNetwork(vlan.clone())),
        Rejection::Invalid(_)
    ));
    vlan.segmentation_id = 42;
    log.net(NetCommand::CreateNetwork(vlan.clone()));
    vlan.id = "v2".into();
    assert!(matches!(
        log.rejected(NetCommand::CreateNetwork(vlan)),
        Rejection::FailedPrecondition(_)
    ));
    let mut flat = network_spec("f1", "p1");
    flat.network_type = NetworkType::Flat;
    flat.physical_network = "physnet1".into();
    match log.net(NetCommand::CreateNetwork(flat)) {
        NetOutcome::Network(n) => assert_eq!((n.segmentation_id, n.mtu), (0, 1500)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subnets_validate_cidr_gateway_and_pools() {
    let mut log = Log::new();
    log.network("n1", "p1");
    let s = log.subnet("s1", "n1", "10.0.0.0/24");
    assert_eq!(s.gateway_ip(), "10.0.0.1");
    assert_eq!(
        s.pool_strings(),
        vec![("10.0.0.2".to_owned(), "10.0.0.254".to_owned())]
    );
    let bad = |f: &dyn Fn(&mut SubnetSpec)| {
        let mut spec = subnet_spec("s2", "n1", "10.1.0.0/24");
        f(&mut spec);
        spec
    };
    let cases: Vec<(SubnetSpec, &str)> = vec![
        (bad(&|s| s.cidr = "10.1.0.7/24".into()), "host bits"),
        (bad(&|s| s.cidr = "10.0.0.128/25".into()), "overlaps"),
        (
            bad(&|s| s.gateway = GatewaySpec::Address("10.2.0.1".into())),
            "not inside",
        ),
        (
            bad(&|s| s.allocation_pools = vec![("10.1.0.1".into(), "10.1.0.9".into())]),
            "gateway",
        ),
        (
            bad(&|s| {
                s.allocation_pools = vec![
                    ("10.1.0.10".into(), "10.1.0.20".into()),
                    ("10.1.0.15".into(), "10.1.0.30".into()),
                ]
            }),
            "overlap",
        ),
        (
            bad(&|s| s.allocation_pools = vec![("10.1.0.10".into(), "10.1.1.20".into())]),
            "not inside",
        ),
        (bad(&|s| s.ip_version = 6), "ip_version"),
        (
            bad(&|s| s.dns_nameservers = vec!["dns.example".into()]),
            "not an IP",
        ),
    ];
    for (spec, why) in cases {
        match log.rejected(NetCommand::CreateSubnet(spec)) {
            Rejection::Invalid(m) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    let mut v6 = subnet_spec("s6", "n1", "fd00::/64");
    v6.gateway = GatewaySpec::None;
    log.net(NetCommand::CreateSubnet(v6));
    assert_eq!(
        log.state.network("n1").unwrap().subnet_ids,
        vec!["s1".to_owned(), "s6".to_owned()]
    );
}

#[test]
fn ipam_hands_out_each_address_once_and_reports_exhaustion() {
    let mut log = Log::new();
    log.network("n1", "p1");
    let mut spec = subnet_spec("s1", "n1", "10.0.0.0/24");
    spec.allocation_pools = vec![("10.0.0.10".into(), "10.0.0.29".into())];
    log.net(NetCommand::CreateSubnet(spec));
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: Vec::new(),
        changes: [(Resource::Ports, UNLIMITED)].into_iter().collect(),
    });
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let p = log.port(&format!("port-{i:02}"), "n1", "p1");
        assert_eq!(p.fixed_ips.len(), 1);
        assert!(seen.insert(p.fixed_ips[0].ip_address.clone()), "{p:?}");
    }
    assert_eq!(seen.first().unwrap(), "10.0.0.10");
    assert_eq!(seen.last().unwrap(), "10.0.0.29");
    let spec = log.port_spec("port-x", "n1", "p1");
    match log.rejected(NetCommand::CreatePort(spec)) {
        Rejection::QuotaExceeded(m) => assert!(m.contains("no free IPv4 address"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Releasing one address makes exactly that one available again.
    log.apply(NetCommand::DeletePort {
        port_id: "port-05".into(),
    });
    assert_eq!(ips(&log.port("port-y", "n1", "p1")), vec!["10.0.0.15"]);
}

#[test]
fn requested_addresses_must_be_free_and_inside_a_pool() {
    let mut log = Log::new();
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/24");
    let mut spec = log.port_spec("a", "n1", "p1");
    spec.fixed_ips = vec![fixed("", "10.0.0.50")];
    match log.net(NetCommand::CreatePort(spec)) {
        NetOutcome::Port(p) => assert_eq!(p.fixed_ips, vec![fixed("s1", "10.0.0.50")]),
        other => panic!("{other:?}"),
    }
    let mut taken = log.port_spec("b", "n1", "p1");
    taken.fixed_ips = vec![fixed("s1", "10.0.0.50")];
    assert!(matches!(
        log.rejected(NetCommand::CreatePort(taken)),
        Rejection::FailedPrecondition(_)
    ));
    for (ip, why) in [
        ("10.0.0.1", "outside the allocation pools"),
        ("10.0.0.255", "outside the allocation pools"),
        ("10.9.0.5", "not inside any subnet"),
    ] {
        let mut spec = log.port_spec("b", "n1", "p1");
        spec.fixed_ips = vec![fixed("", ip)];
        match log.rejected(NetCommand::CreatePort(spec)) {
            Rejection::Invalid(m) => assert!(m.contains(why), "{ip}: {m}"),
            other => panic!("{ip}: {other:?}"),
        }
    }
    // A refused port allocated nothing: the next automatic address is the lowest free one.
    assert_eq!(ips(&log.port("c", "n1", "p1")), vec!["10.0.0.2"]);
    // Two addresses of one request may not collide either.
    let mut twice = log.port_spec("d", "n1", "p1");
    twice.fixed_ips = vec![fixed("s1", "10.0.0.60"), fixed("s1", "10.0.0.60")];
    assert!(matches!(
        log.rejected(NetCommand::CreatePort(twice)),
        Rejection::FailedPrecondition(_)
    ));
    assert_eq!(ips(&log.port("e", "n1", "p1")), vec!["10.0.0.3"]);
}

#[test]
fn ports_get_distinct_generated_macs_and_refuse_a_duplicate_mac() {
    let mut log = Log::new();
    log.network("n1", "p1");
    let a = log.port("a", "n1", "p1");
    let b = log.port("b", "n1", "p1");
    assert_eq!(a.mac_address, "fa:16:3e:00:00:00");
    assert_eq!(b.mac_address, "fa:16:3e:00:00:01");
    assert!(
        a.fixed_ips.is_empty(),
        "a network without subnets gives no address"
    );
    let mut spec = log.port_spec("c", "n1", "p1");
    spec.mac_address = "FA:16:3E:00:00:02".into();
    match log.net(NetCommand::CreatePort(spec)) {
        NetOutcome::Port(p) => assert_eq!(p.mac_address, "fa:16:3e:00:00:02"),
        other => panic!("{other:?}"),
    }
    // The generator skips a MAC a user took.
    assert_eq!(log.port("d", "n1", "p1").mac_address, "fa:16:3e:00:00:03");
    let mut dup = log.port_spec("e", "n1", "p1");
    dup.mac_address = a.mac_address.clone();
    assert!(matches!(
        log.rejected(NetCommand::CreatePort(dup)),
        Rejection::FailedPrecondition(_)
    ));
    let mut multicast = log.port_spec("e", "n1", "p1");
    multicast.mac_address = "01:00:5e:00:00:01".into();
    assert!(matches!(
        log.rejected(NetCommand::CreatePort(multicast)),
        Rejection::Invalid(_)
    ));
}

#[test]
fn a_port_without_groups_gets_the_project_default_group_created_once() {
    let mut log = Log::new();
    log.network("n1", "p1");
    let a = log.port("a", "n1", "p1");
    let b = log.port("b", "n1", "p1");
    assert_eq!(a.security_group_ids.len(), 1);
    assert_eq!(a.security_group_ids, b.security_group_ids);
    let g = log.state.default_group_of("p1").unwrap().clone();
    assert_eq!(g.id, a.security_group_ids[0]);
    let rules: Vec<_> = log.state.rules_of(&g.id).cloned().collect();
    assert_eq!(rules.len(), 4);
    let ingress: Vec<_> = rules
        .iter()
        .filter(|r| r.direction == Direction::Ingress)
        .collect();
    assert_eq!(ingress.len(), 2);
    assert!(ingress.iter().all(|r| r.remote_group_id == g.id));
    assert!(rules
        .iter()
        .filter(|r| r.direction == Direction::Egress)
        .all(|r| r.remote_group_id.is_empty() && r.remote_ip_prefix.is_empty()));
    // The default group cannot be deleted; a group used by ports neither.
    let r = log.rejected(NetCommand::DeleteSecurityGroup {
        group_id: g.id.clone(),
    });
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("default")));
    let ids = log.fresh(2 + DEFAULT_GROUP_IDS);
    log.net(NetCommand::CreateSecurityGroup {
        id: "web".into(),
        project_id: "p1".into(),
        name: "web".into(),
        description: String::new(),
        fresh_ids: ids,
    });
    assert_eq!(log.state.rules_of("web").count(), 2);
    log.net(NetCommand::UpdatePort {
        port_id: "a".into(),
        name: None,
        description: None,
        admin_state_up: None,
        port_security_enabled: None,
        security_group_ids: Some(vec!["web".into()]),
    });
    let r = log.rejected(NetCommand::DeleteSecurityGroup {
        group_id: "web".into(),
    });
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("1 port")));
    log.apply(NetCommand::DeletePort {
        port_id: "a".into(),
    });
    assert_eq!(
        log.apply(NetCommand::DeleteSecurityGroup {
            group_id: "web".into()
        }),
        Outcome::Deleted
    );
    assert_eq!(log.state.rules_of("web").count(), 0);
}

#[test]
fn security_group_rules_are_validated_and_duplicates_refused() {
    let mut log = Log::new();
    let ids = log.fresh(2 + DEFAULT_GROUP_IDS);
    log.net(NetCommand::CreateSecurityGroup {
        id: "g".into(),
        project_id: "p1".into(),
        name: "g".into(),
        description: String::new(),
        fresh_ids: ids,
    });
    let rule = |id: &str, protocol: &str, min: Option<u32>, max: Option<u32>, prefix: &str| {
        NetCommand::CreateSecurityGroupRule(RuleSpec {
            id: id.into(),
            security_group_id: "g".into(),
            direction: Direction::Ingress,
            ethertype: Ethertype::Ipv4,
            protocol: protocol.into(),
            port_range_min: min,
            port_range_max: max,
            remote_ip_prefix: prefix.into(),
            remote_group_id: String::new(),
            description: String::new(),
        })
    };
    match log.net(rule("r1", "TCP", Some(22), None, "192.0.2.0/24")) {
        NetOutcome::SecurityGroupRule(r) => {
            assert_eq!(r.protocol, "tcp");
            assert_eq!((r.port_range_min, r.port_range_max), (Some(22), Some(22)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        log.rejected(rule("r2", "tcp", Some(22), Some(22), "192.0.2.0/24")),
        Rejection::Duplicate(m) if m.contains("already has this rule")
    ));
    for (cmd, why) in [
        (rule("r3", "tcp", Some(80), Some(79), ""), "port range"),
        (rule("r3", "gre", None, None, ""), "protocol"),
        (rule("r3", "47", Some(1), None, ""), "no ports"),
        (rule("r3", "icmp", Some(300), None, ""), "ICMP"),
        (rule("r3", "any", None, None, "fd00::/64"), "ethertype"),
        (rule("r3", "icmpv6", None, None, ""), "IPv6"),
    ] {
        match log.rejected(cmd) {
            Rejection::Invalid(m) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    log.net(rule("r4", "icmp", Some(8), Some(0), ""));
    assert_eq!(log.state.rules_of("g").count(), 4);
}

#[test]
fn deletes_in_use_are_refused_until_the_users_are_gone() {
    let mut log = Log::new();
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/24");
    log.port("a", "n1", "p1");
    let r = log.rejected(NetCommand::DeleteNetwork {
        network_id: "n1".into(),
    });
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("1 port")));
    let r = log.rejected(NetCommand::DeleteSubnet {
        subnet_id: "s1".into(),
    });
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("allocated")));
    log.network("n2", "p1");
    let mut server_port = log.port_spec("b", "n2", "p1");
    server_port.device_owner = "compute:nova".into();
    server_port.device_id = "server-1".into();
    log.net(NetCommand::CreatePort(server_port));
    let r = log.rejected(NetCommand::DeletePort {
        port_id: "b".into(),
    });
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("server-1")));
    log.apply(NetCommand::DeletePort {
        port_id: "a".into(),
    });
    // Deleting a network deletes its (now unused) subnets.
    assert_eq!(
        log.apply(NetCommand::DeleteNetwork {
            network_id: "n1".into()
        }),
        Outcome::Deleted
    );
    assert!(log.state.subnet("s1").is_none());
}

#[test]
fn quotas_limit_networks_ports_and_floating_ips() {
    let mut log = Log::new();
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: Vec::new(),
        changes: [(Resource::Networks, 1), (Resource::Ports, 1)]
            .into_iter()
            .collect(),
    });
    log.network("n1", "p1");
    assert!(matches!(
        log.rejected(NetCommand::CreateNetwork(network_spec("n2", "p1"))),
        Rejection::QuotaExceeded(_)
    ));
    log.subnet("s1", "n1", "10.0.0.0/24");
    log.port("a", "n1", "p1");
    let spec = log.port_spec("b", "n1", "p1");
    assert!(matches!(
        log.rejected(NetCommand::CreatePort(spec)),
        Rejection::QuotaExceeded(_)
    ));
    let q = log.state.project_quota("p1");
    assert_eq!(q.items[&Resource::Networks].in_use, 1);
    assert_eq!(q.items[&Resource::Ports].in_use, 1);
    // The refused port took no address.
    log.apply(NetCommand::DeletePort {
        port_id: "a".into(),
    });
    assert_eq!(
        log.state.project_quota("p1").items[&Resource::Ports].in_use,
        0
    );
    assert_eq!(ips(&log.port("c", "n1", "p1")), vec!["10.0.0.2"]);
}

#[test]
fn floating_ips_come_from_external_networks_and_follow_their_port() {
    let mut log = Log::new();
    let mut ext = network_spec("ext", "p2");
    ext.network_type = NetworkType::Flat;
    ext.physical_network = "public".into();
    ext.external = true;
    log.net(NetCommand::CreateNetwork(ext));
    let mut pub_subnet = subnet_spec("pub", "ext", "203.0.113.0/24");
    pub_subnet.allocation_pools = vec![("203.0.113.10".into(), "203.0.113.11".into())];
    log.net(NetCommand::CreateSubnet(pub_subnet));
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/24");
    log.port("a", "n1", "p1");
    let fip = |id: &str, port: &str| NetCommand::CreateFloatingIp {
        id: id.into(),
        network_id: "ext".into(),
        project_id: "p1".into(),
        address: String::new(),
        port_id: port.into(),
        fixed_ip_address: String::new(),
        description: String::new(),
    };
    match log.net(fip("f1", "a")) {
        NetOutcome::FloatingIp(f) => {
            assert_eq!(f.address, "203.0.113.10");
            assert_eq!(f.fixed_ip_address, "10.0.0.2");
        }
        other => panic!("{other:?}"),
    }
    // One floating IP per fixed address.
    assert!(matches!(
        log.rejected(fip("f2", "a")),
        Rejection::FailedPrecondition(_)
    ));
    log.net(fip("f2", ""));
    assert!(matches!(
        log.rejected(fip("f3", "")),
        Rejection::QuotaExceeded(_)
    ));
    // Floating IPs come only from external networks.
    let internal = NetCommand::CreateFloatingIp {
        id: "f3".into(),
        network_id: "n1".into(),
        project_id: "p1".into(),
        address: String::new(),
        port_id: String::new(),
        fixed_ip_address: String::new(),
        description: String::new(),
    };
    assert!(matches!(log.rejected(internal), Rejection::Invalid(_)));
    // Deleting the port disassociates; deleting the floating IP frees its address.
    log.apply(NetCommand::DeletePort {
        port_id: "a".into(),
    });
    assert_eq!(log.state.floating_ip("f1").unwrap().port_id, "");
    log.apply(NetCommand::DeleteFloatingIp {
        floating_ip_id: "f1".into(),
    });
    match log.net(fip("f4", "")) {
        NetOutcome::FloatingIp(f) => assert_eq!(f.address, "203.0.113.10"),
        other => panic!("{other:?}"),
    }
    let r = log.rejected(NetCommand::DeleteNetwork {
        network_id: "ext".into(),
    });
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("floating")));
    assert_eq!(
        log.state.project_quota("p1").items[&Resource::FloatingIps].in_use,
        2
    );
}

#[test]
fn replicas_agree_and_networking_survives_a_snapshot() {
    let mut log = Log::new();
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/24");
    log.port("a", "n1", "p1");
    let restored = State::decode(&log.state.encode()).unwrap();
    assert_eq!(restored.checksum(), log.state.checksum());
    assert_eq!(restored.port("a"), log.state.port("a"));
}

#[test]
fn a_retried_create_port_returns_the_same_port_and_allocates_nothing_more() {
    let mut log = Log::new();
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/24");
    let spec = log.port_spec("a", "n1", "p1");
    let env = Envelope {
        request_id: "req-1".into(),
        actor: "tester".into(),
        time_ms: 5_000,
        command: Command::Networking(NetCommand::CreatePort(spec)),
    };
    let first = log.state.apply(100, &env);
    let again = log.state.apply(101, &env);
    assert_eq!(first, again);
    assert_eq!(log.state.ports_after("").count(), 1);
}

#[test]
fn a_project_with_networking_resources_cannot_be_deleted_and_its_default_group_goes_with_it() {
    let mut log = Log::new();
    log.network("n1", "p1");
    log.port("a", "n1", "p1");
    match log.apply_cmd(Command::DeleteProject {
        project: "p1".into(),
    }) {
        Outcome::Rejected(Rejection::FailedPrecondition(m)) => {
            assert!(m.contains("1 network(s), 1 port(s)"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    log.apply(NetCommand::DeletePort {
        port_id: "a".into(),
    });
    log.apply(NetCommand::DeleteNetwork {
        network_id: "n1".into(),
    });
    let group = log.state.default_group_of("p1").unwrap().id.clone();
    log.ok(Command::DeleteProject {
        project: "p1".into(),
    });
    assert!(log.state.security_group(&group).is_none());
    assert_eq!(log.state.rules_of(&group).count(), 0);
}

#[test]
fn subnets_security_groups_and_rules_are_counted_and_limited() {
    let mut log = Log::new();
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: Vec::new(),
        changes: [
            (Resource::Subnets, 1),
            (Resource::SecurityGroups, 2),
            (Resource::SecurityGroupRules, 7),
        ]
        .into_iter()
        .collect(),
    });
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/24");
    let r = log.rejected(NetCommand::CreateSubnet(subnet_spec(
        "s2",
        "n1",
        "10.1.0.0/24",
    )));
    assert!(
        matches!(r, Rejection::QuotaExceeded(ref m) if m.contains("subnets")),
        "{r:?}"
    );
    // The default group (1 group, 4 rules) is created and counted with the first group.
    let ids = log.fresh(2 + DEFAULT_GROUP_IDS);
    log.net(NetCommand::CreateSecurityGroup {
        id: "web".into(),
        project_id: "p1".into(),
        name: "web".into(),
        description: String::new(),
        fresh_ids: ids,
    });
    let used = |log: &Log, r: Resource| log.state.project_quota("p1").items[&r].in_use;
    assert_eq!(used(&log, Resource::SecurityGroups), 2);
    assert_eq!(used(&log, Resource::SecurityGroupRules), 6);
    let rule = |id: &str, port: u32| {
        NetCommand::CreateSecurityGroupRule(RuleSpec {
            id: id.into(),
            security_group_id: "web".into(),
            direction: Direction::Ingress,
            ethertype: Ethertype::Ipv4,
            protocol: "tcp".into(),
            port_range_min: Some(port),
            port_range_max: None,
            remote_ip_prefix: String::new(),
            remote_group_id: String::new(),
            description: String::new(),
        })
    };
    log.net(rule("r1", 22));
    assert!(matches!(
        log.rejected(rule("r2", 80)),
        Rejection::QuotaExceeded(_)
    ));
    let ids = log.fresh(2 + DEFAULT_GROUP_IDS);
    let r = log.rejected(NetCommand::CreateSecurityGroup {
        id: "db".into(),
        project_id: "p1".into(),
        name: "db".into(),
        description: String::new(),
        fresh_ids: ids,
    });
    assert!(matches!(r, Rejection::QuotaExceeded(_)), "{r:?}");
    // Deleting gives everything back.
    log.apply(NetCommand::DeleteSecurityGroup {
        group_id: "web".into(),
    });
    assert_eq!(used(&log, Resource::SecurityGroups), 1);
    assert_eq!(used(&log, Resource::SecurityGroupRules), 4);
    log.apply(NetCommand::DeleteSubnet {
        subnet_id: "s1".into(),
    });
    assert_eq!(used(&log, Resource::Subnets), 0);
}

/// After any sequence of port and floating IP creates and deletes: every allocated address
/// belongs to exactly the port or floating IP that holds it, no address is held twice, and
/// quota usage equals what exists.
#[test]
fn ipam_bookkeeping_stays_exact_under_a_random_workload() {
    let mut log = Log::new();
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: Vec::new(),
        changes: [
            (Resource::Ports, UNLIMITED),
            (Resource::FloatingIps, UNLIMITED),
        ]
        .into_iter()
        .collect(),
    });
    let mut ext = network_spec("ext", "p1");
    ext.network_type = NetworkType::Flat;
    ext.physical_network = "public".into();
    ext.external = true;
    log.net(NetCommand::CreateNetwork(ext));
    log.subnet("pub", "ext", "203.0.113.0/28");
    log.network("n1", "p1");
    log.subnet("s1", "n1", "10.0.0.0/28");
    log.subnet("s2", "n1", "10.0.1.0/29");
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for step in 0..400 {
        let ports: Vec<String> = log.state.ports_after("").map(|p| p.id.clone()).collect();
        let fips: Vec<String> = log
            .state
            .floating_ips_after("")
            .map(|f| f.id.clone())
            .collect();
        match next(6) {
            0 | 1 => {
                let mut spec = log.port_spec(&format!("port-{step}"), "n1", "p1");
                if next(3) == 0 {
                    let subnet = if next(2) == 0 { "s1" } else { "s2" };
                    spec.fixed_ips = vec![fixed(subnet, "")];
                }
                if next(4) == 0 {
                    spec.fixed_ips = vec![fixed("", &format!("10.0.0.{}", 1 + next(14)))];
                }
                log.apply(NetCommand::CreatePort(spec));
            }
            2 if !ports.is_empty() => {
                let id = ports[next(ports.len() as u64) as usize].clone();
                log.apply(NetCommand::DeletePort { port_id: id });
            }
            3 => {
                let port = ports
                    .get(next(ports.len() as u64 + 1) as usize)
                    .cloned()
                    .unwrap_or_default();
                log.apply(NetCommand::CreateFloatingIp {
                    id: format!("fip-{step}"),
                    network_id: "ext".into(),
                    project_id: "p1".into(),
                    address: String::new(),
                    port_id: port,
                    fixed_ip_address: String::new(),
                    description: String::new(),
                });
            }
            4 if !fips.is_empty() => {
                let id = fips[next(fips.len() as u64) as usize].clone();
                log.apply(NetCommand::DeleteFloatingIp { floating_ip_id: id });
            }
            _ => {}
        }
        // The books: allocations are exactly the ports' and floating IPs' addresses.
        let mut expected: BTreeMap<(String, String), String> = BTreeMap::new();
        for p in log.state.ports_after("") {
            for ip in &p.fixed_ips {
                let prev =
                    expected.insert((ip.subnet_id.clone(), ip.ip_address.clone()), p.id.clone());
                assert!(prev.is_none(), "step {step}: {} held twice", ip.ip_address);
            }
        }
        for f in log.state.floating_ips_after("") {
            let prev = expected.insert(
                (f.subnet_id.clone(), f.address.clone()),
                format!("floatingip:{}", f.id),
            );
            assert!(prev.is_none(), "step {step}: {} held twice", f.address);
        }
        let actual: BTreeMap<(String, String), String> = log
            .state
            .subnets_after("")
            .flat_map(|s| {
                s.allocated.iter().map(move |(a, owner)| {
                    (
                        (s.id.clone(), ipam::format_ip(s.cidr.family, *a)),
                        owner.clone(),
                    )
                })
            })
            .collect();
        assert_eq!(actual, expected, "step {step}");
        let q = log.state.project_quota("p1");
        assert_eq!(
            q.items[&Resource::Ports].in_use as usize,
            log.state.ports_after("").count()
        );
        assert_eq!(
            q.items[&Resource::FloatingIps].in_use as usize,
            log.state.floating_ips_after("").count()
        );
    }
    assert!(log.state.ports_after("").count() > 5);
}

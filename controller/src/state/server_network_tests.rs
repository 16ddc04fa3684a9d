//! Servers on networks (I3): NIC ports created or bound in the apply that admits the servers,
//! all or nothing; addresses never handed out twice; ports deleted or unbound with their
//! server; a port's host and wired status following its server's owner host.
use super::*;

const ALL: AllocationRatios = AllocationRatios {
    cpu: 1.0,
    ram: 1.0,
    disk: 1.0,
};

fn net(log: &mut Log, command: NetCommand) -> NetOutcome {
    match log.ok(Command::Networking(command)) {
        Outcome::Net(o) => *o,
        other => panic!("{other:?}"),
    }
}

/// `setup()` plus a big host h3, project p2, the image public, network n1 of p1 with subnet
/// 10.0.0.0/24 (gateway .1), and unlimited instances and cores for p1.
fn networked() -> Log {
    let mut log = setup();
    log.ok(register("node3", "h3", 64, 64 * 1024));
    log.ok(Command::CreateProject {
        id: "p2".into(),
        name: "beta".into(),
        description: String::new(),
        enabled: true,
        properties: BTreeMap::new(),
    });
    log.ok(Command::UpdateImage {
        image_id: "img".into(),
        changes: ImageChanges {
            name: None,
            min_disk_gib: None,
            min_ram_mib: None,
            protected: None,
            visibility: Some(Visibility::Public),
            set_properties: BTreeMap::new(),
            unset_properties: Vec::new(),
        },
    });
    for project in ["p1", "p2"] {
        log.ok(Command::SetQuota {
            project: project.into(),
            reset_to_default: Vec::new(),
            changes: [
                (Resource::Instances, UNLIMITED),
                (Resource::Vcpus, UNLIMITED),
                (Resource::RamMib, UNLIMITED),
                (Resource::DiskGib, UNLIMITED),
            ]
            .into_iter()
            .collect(),
        });
    }
    network(&mut log, "n1", "p1", "10.0.0.0/24", false);
    log
}

fn network(log: &mut Log, id: &str, project: &str, cidr: &str, shared: bool) {
    net(
        log,
        NetCommand::CreateNetwork(NetworkSpec {
            id: id.into(),
            name: format!("net-{id}"),
            description: String::new(),
            project_id: project.into(),
            network_type: NetworkType::Vxlan,
            segmentation_id: 0,
            physical_network: String::new(),
            external: false,
            shared,
            mtu: None,
            admin_state_up: true,
            vni_range: DEFAULT_VNI_RANGE,
        }),
    );
    net(
        log,
        NetCommand::CreateSubnet(SubnetSpec {
            id: format!("{id}-sub"),
            network_id: id.into(),
            name: String::new(),
            description: String::new(),
            cidr: cidr.into(),
            ip_version: 0,
            gateway: GatewaySpec::Default,
            allocation_pools: Vec::new(),
            dns_nameservers: Vec::new(),
            enable_dhcp: true,
            host_routes: Vec::new(),
        }),
    );
}

fn user_port(log: &mut Log, id: &str, network: &str, project: &str) -> Port {
    let spec = PortSpec {
        id: id.into(),
        network_id: network.into(),
        project_id: project.into(),
        name: format!("port-{id}"),
        description: String::new(),
        mac_address: String::new(),
        fixed_ips: Vec::new(),
        security_group_ids: Vec::new(),
        port_security_enabled: true,
        admin_state_up: true,
        device_owner: String::new(),
        device_id: String::new(),
        default_group_ids: (0..DEFAULT_GROUP_IDS)
            .map(|i| format!("{id}-sg-{i}"))
            .collect(),
    };
    match net(log, NetCommand::CreatePort(spec)) {
        NetOutcome::Port(p) => p,
        other => panic!("{other:?}"),
    }
}

fn on_network(port_id: &str, network: &str) -> NicSpec {
    NicSpec::Network {
        port_id: port_id.into(),
        network_id: network.into(),
        fixed_ip: String::new(),
    }
}

fn with_nics(servers: Vec<NewServer>, nics: Vec<Vec<NicSpec>>) -> Command {
    let ids = servers
        .first()
        .map(|s| format!("{}-dg", s.id))
        .unwrap_or_default();
    Command::CreateServersWithNics {
        servers,
        ratios: ALL,
        nics,
        default_group_ids: (0..DEFAULT_GROUP_IDS)
            .map(|i| format!("{ids}-{i}"))
            .collect(),
    }
}

fn in_project(id: &str, host: &str, project: &str) -> NewServer {
    NewServer {
        project_id: project.into(),
        ..new_server(id, host)
    }
}

fn rejection(out: Outcome) -> Rejection {
    match out {
        Outcome::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn port_ips(log: &Log, server: &str) -> Vec<String> {
    let s = log.server(server);
    log.state
        .server_ports(s)
        .flat_map(|p| p.fixed_ips.iter().map(|f| f.ip_address.clone()))
        .collect()
}

fn ports_of(log: &Log, project: &str) -> i64 {
    log.state.project_quota(project).items[&Resource::Ports].in_use
}

fn wired(log: &mut Log, host: &str, ports: &[&str]) -> Outcome {
    let lease_id = log.lease(host);
    log.apply(Command::PortsWired {
        host_id: host.into(),
        lease_id,
        port_ids: ports.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[test]
fn a_multi_create_on_a_network_gives_each_server_its_own_port_in_the_same_apply() {
    let mut log = networked();
    let servers: Vec<NewServer> = (1..=3)
        .map(|i| new_server(&format!("s{i}"), "h3"))
        .collect();
    let nics = (1..=3)
        .map(|i| vec![on_network(&format!("port{i}"), "n1")])
        .collect();
    let revision = log.state.revision();
    log.ok(with_nics(servers, nics));
    // One entry, one revision: servers, ports and the default group together.
    assert_eq!(log.state.revision(), revision + 1);
    for (i, ip) in ["10.0.0.2", "10.0.0.3", "10.0.0.4"].iter().enumerate() {
        let id = format!("s{}", i + 1);
        assert_eq!(port_ips(&log, &id), vec![ip.to_string()]);
        let s = log.server(&id);
        assert_eq!(s.nics.len(), 1);
        assert!(s.nics[0].delete_with_server);
        let p = log.state.port(&s.nics[0].port_id).unwrap();
        assert_eq!(
            (p.device_owner.as_str(), p.device_id.as_str()),
            ("compute:nova", id.as_str())
        );
        let default = log.state.default_group_of("p1").unwrap();
        assert_eq!(p.security_group_ids, vec![default.id.clone()]);
        assert_eq!(log.state.port_host(p).unwrap().info.hostname, "node3");
        assert!(!log.state.port_wired(p), "DOWN until the agent reports it");
    }
    assert_eq!(ports_of(&log, "p1"), 3);
}

#[test]
fn ipam_never_hands_out_an_address_twice_and_a_create_that_does_not_fit_leaves_nothing() {
    let mut log = networked();
    // A /29: .1 is the gateway, .2-.6 are free (5 addresses).
    network(&mut log, "small", "p1", "192.168.9.0/29", false);
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: Vec::new(),
        changes: [(Resource::Ports, UNLIMITED)].into_iter().collect(),
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut n = 0;
    for batch in [2, 2] {
        let servers: Vec<NewServer> = (0..batch)
            .map(|i| new_server(&format!("s{}", n + i), "h3"))
            .collect();
        let nics = (0..batch)
            .map(|i| vec![on_network(&format!("p{}", n + i), "small")])
            .collect();
        log.ok(with_nics(servers, nics));
        for i in 0..batch {
            for ip in port_ips(&log, &format!("s{}", n + i)) {
                assert!(seen.insert(ip.clone()), "{ip} handed out twice");
            }
        }
        n += batch;
    }
    assert_eq!(seen.len(), 4);
    let usage = log.state.project_quota("p1");
    // Two more servers need two addresses; one is left: the whole create is refused.
    let servers = vec![new_server("x1", "h3"), new_server("x2", "h3")];
    let nics = vec![
        vec![on_network("xp1", "small")],
        vec![on_network("xp2", "small")],
    ];
    let r = rejection(log.apply(with_nics(servers, nics)));
    assert!(
        matches!(r, Rejection::QuotaExceeded(ref m) if m.contains("no free IPv4 address")),
        "{r:?}"
    );
    assert!(log.state.server("x1").is_none() && log.state.port("xp1").is_none());
    assert_eq!(log.state.project_quota("p1"), usage);
    // The one left still goes to the next server.
    log.ok(with_nics(
        vec![new_server("x3", "h3")],
        vec![vec![on_network("xp3", "small")]],
    ));
    assert_eq!(port_ips(&log, "x3"), vec!["192.168.9.6".to_owned()]);
    // A fixed IP in use is refused.
    let fixed = NicSpec::Network {
        port_id: "xp4".into(),
        network_id: "n1".into(),
        fixed_ip: "10.0.0.50".into(),
    };
    log.ok(with_nics(vec![new_server("x4", "h3")], vec![vec![fixed]]));
    let again = NicSpec::Network {
        port_id: "xp5".into(),
        network_id: "n1".into(),
        fixed_ip: "10.0.0.50".into(),
    };
    let r = rejection(log.apply(with_nics(vec![new_server("x5", "h3")], vec![vec![again]])));
    assert!(matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("in use")));
}

#[test]
fn a_port_in_use_is_refused_naming_its_server_and_nothing_is_half_applied() {
    let mut log = networked();
    user_port(&mut log, "mine", "n1", "p1");
    log.ok(with_nics(
        vec![new_server("s1", "h3")],
        vec![vec![NicSpec::Port {
            port_id: "mine".into(),
        }]],
    ));
    let p = log.state.port("mine").unwrap();
    assert_eq!(
        (p.device_owner.as_str(), p.device_id.as_str()),
        ("compute:nova", "s1")
    );
    assert!(!log.server("s1").nics[0].delete_with_server);
    let ports = ports_of(&log, "p1");
    let addresses = log.state.subnet("n1-sub").unwrap().allocated.len();
    // A new port first, then the port in use: the new one must not stay behind.
    let r = rejection(log.apply(with_nics(
        vec![new_server("s2", "h3")],
        vec![vec![
            on_network("fresh", "n1"),
            NicSpec::Port {
                port_id: "mine".into(),
            },
        ]],
    )));
    assert!(
        matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("server s1 (vm-s1)")),
        "{r:?}"
    );
    assert!(log.state.server("s2").is_none() && log.state.port("fresh").is_none());
    assert_eq!(ports_of(&log, "p1"), ports);
    assert_eq!(
        log.state.subnet("n1-sub").unwrap().allocated.len(),
        addresses
    );
    assert_eq!(log.usage(Resource::Instances), 1);
    // One port twice in one create is refused too.
    user_port(&mut log, "twice", "n1", "p1");
    let both = vec![
        NicSpec::Port {
            port_id: "twice".into(),
        },
        NicSpec::Port {
            port_id: "twice".into(),
        },
    ];
    let r = rejection(log.apply(with_nics(vec![new_server("s3", "h3")], vec![both])));
    assert!(matches!(r, Rejection::Invalid(_)), "{r:?}");
    assert!(log.state.port("twice").unwrap().device_id.is_empty());
}

#[test]
fn another_project_cannot_attach_to_a_private_network_or_bind_a_foreign_port() {
    let mut log = networked();
    user_port(&mut log, "p1port", "n1", "p1");
    let r = rejection(log.apply(with_nics(
        vec![in_project("t1", "h3", "p2")],
        vec![vec![on_network("t1p", "n1")]],
    )));
    assert!(
        matches!(r, Rejection::FailedPrecondition(ref m) if m.contains("not shared")),
        "{r:?}"
    );
    let r = rejection(log.apply(with_nics(
        vec![in_project("t2", "h3", "p2")],
        vec![vec![NicSpec::Port {
            port_id: "p1port".into(),
        }]],
    )));
    assert!(matches!(r, Rejection::Invalid(ref m) if m.contains("another project")));
    assert!(log.state.server("t1").is_none() && log.state.server("t2").is_none());
    // A shared network takes ports of every project, each owned by the server's project.
    network(&mut log, "public", "p1", "10.9.0.0/24", true);
    log.ok(with_nics(
        vec![in_project("t3", "h3", "p2")],
        vec![vec![on_network("t3p", "public")]],
    ));
    assert_eq!(log.state.port("t3p").unwrap().project_id, "p2");
    assert_eq!(ports_of(&log, "p2"), 1);
}

#[test]
fn the_port_quota_counts_server_ports_and_a_create_over_it_is_refused_whole() {
    let mut log = networked();
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: Vec::new(),
        changes: [(Resource::Ports, 2)].into_iter().collect(),
    });
    let servers: Vec<NewServer> = (1..=3)
        .map(|i| new_server(&format!("s{i}"), "h3"))
        .collect();
    let nics = (1..=3)
        .map(|i| vec![on_network(&format!("port{i}"), "n1")])
        .collect();
    let r = rejection(log.apply(with_nics(servers, nics)));
    assert!(matches!(r, Rejection::QuotaExceeded(_)), "{r:?}");
    assert_eq!(
        (ports_of(&log, "p1"), log.usage(Resource::Instances)),
        (0, 0)
    );
    assert!(log.state.subnet("n1-sub").unwrap().allocated.is_empty());
    let servers: Vec<NewServer> = (1..=2)
        .map(|i| new_server(&format!("s{i}"), "h3"))
        .collect();
    let nics = (1..=2)
        .map(|i| vec![on_network(&format!("port{i}"), "n1")])
        .collect();
    log.ok(with_nics(servers, nics));
    assert_eq!(ports_of(&log, "p1"), 2);
}

#[test]
fn a_delete_frees_the_addresses_of_its_own_ports_and_unbinds_the_ports_it_was_given() {
    let mut log = networked();
    user_port(&mut log, "kept", "n1", "p1");
    log.ok(with_nics(
        vec![new_server("s1", "h1")],
        vec![vec![
            on_network("own", "n1"),
            NicSpec::Port {
                port_id: "kept".into(),
            },
        ]],
    ));
    assert_eq!(port_ips(&log, "s1"), vec!["10.0.0.3", "10.0.0.2"]);
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    assert_eq!(wired(&mut log, "h1", &["own", "kept"]), Outcome::Unchanged);
    assert!(log.state.port_wired(log.state.port("own").unwrap()));
    log.ok(request("s1", "del", ServerRequest::Delete));
    log.report("h1", &[]);
    assert!(log.state.server("s1").is_none());
    assert!(log.state.port("own").is_none());
    let kept = log.state.port("kept").unwrap();
    assert!(kept.device_id.is_empty() && kept.device_owner.is_empty());
    assert!(log.state.port_host(kept).is_none() && !log.state.port_wired(kept));
    assert_eq!(ports_of(&log, "p1"), 1);
    // The freed address is the lowest free one again; the kept port can be bound again.
    log.ok(with_nics(
        vec![new_server("s2", "h1")],
        vec![vec![
            on_network("again", "n1"),
            NicSpec::Port {
                port_id: "kept".into(),
            },
        ]],
    ));
    assert_eq!(port_ips(&log, "s2"), vec!["10.0.0.3", "10.0.0.2"]);
}

#[test]
fn ports_follow_their_server_through_live_migration_and_evacuation() {
    let mut log = networked();
    log.ok(with_nics(
        vec![new_server("s1", "h1")],
        vec![vec![on_network("nic", "n1")]],
    ));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    let host = |log: &Log| {
        let p = log.state.port("nic").unwrap();
        (
            log.state.port_host(p).unwrap().info.hostname.clone(),
            log.state.port_wired(p),
        )
    };
    assert_eq!(host(&log), ("node1".into(), false));
    let before = log.state.revision();
    wired(&mut log, "h1", &["nic", "no-such-port"]);
    assert!(log.state.revision() > before, "a status change is an event");
    assert_eq!(host(&log), ("node1".into(), true));
    // The same list again changes nothing.
    let before = log.state.revision();
    wired(&mut log, "h1", &["nic"]);
    assert_eq!(log.state.revision(), before);
    // A report under an old lease is refused.
    let stale = log.apply(Command::PortsWired {
        host_id: "h1".into(),
        lease_id: 999,
        port_ids: vec![],
    });
    assert!(matches!(stale, Outcome::Rejected(_)));

    log.ok(request(
        "s1",
        "mig",
        ServerRequest::Migrate(MoveSpec {
            host_id: "h2".into(),
            live: true,
            block_migration: true,
            timeout_seconds: 60,
            force: false,
            parent_id: String::new(),
            ratios: ALL,
        }),
    ));
    // The destination wires it before the migration: the port stays on its owner until then.
    wired(&mut log, "h2", &["nic"]);
    assert_eq!(host(&log), ("node1".into(), true));
    log.ok(Command::MigrationStep {
        operation_id: "mig".into(),
        step: "prepare_destination".into(),
        ok: true,
        message: "<domain/>".into(),
    });
    log.ok(Command::MigrationStep {
        operation_id: "mig".into(),
        step: "migrate".into(),
        ok: true,
        message: String::new(),
    });
    assert_eq!(log.server("s1").host_id, "h2");
    assert_eq!(host(&log), ("node2".into(), true));
    // The source unwiring it changes nothing for the port now.
    wired(&mut log, "h1", &[]);
    assert_eq!(host(&log), ("node2".into(), true));

    // h2 dies: DOWN; evacuated to h3, the port is on node3 and DOWN until h3 reports it.
    let lease_id = log.lease("h2");
    log.ok(Command::MarkHostDown {
        host_id: "h2".into(),
        lease_id,
    });
    assert_eq!(host(&log), ("node2".into(), false));
    log.ok(request(
        "s1",
        "evac",
        ServerRequest::Evacuate(MoveSpec {
            host_id: "h3".into(),
            live: false,
            block_migration: false,
            timeout_seconds: 0,
            force: false,
            parent_id: String::new(),
            ratios: ALL,
        }),
    ));
    assert_eq!(log.server("s1").host_id, "h3");
    assert_eq!(host(&log), ("node3".into(), false));
    wired(&mut log, "h3", &["nic"]);
    assert_eq!(host(&log), ("node3".into(), true));
    // Its address and MAC never changed.
    assert_eq!(port_ips(&log, "s1"), vec!["10.0.0.2"]);
}

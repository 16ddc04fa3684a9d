//! The [`RouterDriver`] conformance suite, run against
//! [`super::router_fake::FakeRouterDriver`] (a unit test in `router_fake.rs`) and
//! [`super::router_linux::IpRouterDriver`] as root in a private network and mount namespace
//! (`agent/tests/router_real.rs`).
//!
//! Each check uses only the trait (tampering, too, is done with steps), names its networks
//! from the fixture's seed, and ends with nothing of its own left, so one driver runs them all
//! in sequence.
use std::collections::BTreeSet;
use std::time::Instant;

use flotilla_proto::v1 as pb;

use super::router::{
    expected_nft, plan, routers_from_desired, Ipv4Cidr, Mac, ObservedHost, RouteSpec, RouterSpec,
    Step, SYSCTLS,
};
use super::router_linux::{RouterDriver, RouterError, RouterReconciler};

/// A driver under test.
pub struct RouterFixture<'a> {
    pub driver: &'a dyn RouterDriver,
    /// Network ids (and so namespace names) start with `seed` in 8 hex digits.
    pub seed: u32,
}

type Check = fn(&RouterFixture<'_>);

/// Every check, by name.
pub const ROUTER_CHECKS: &[(&str, Check)] = &[
    (
        "builds_routers_from_nothing_then_needs_nothing",
        builds_routers_from_nothing_then_needs_nothing,
    ),
    ("follows_floating_ip_changes", follows_floating_ip_changes),
    (
        "repairs_what_was_lost_or_changed",
        repairs_what_was_lost_or_changed,
    ),
    ("removes_what_is_not_wanted", removes_what_is_not_wanted),
    ("steps_keep_the_contract", steps_keep_the_contract),
];

/// Runs every check, printing each name and duration.
pub fn run_router_suite(f: &RouterFixture<'_>) {
    for (name, check) in ROUTER_CHECKS {
        let started = Instant::now();
        eprintln!("router conformance: {name} ...");
        check(f);
        eprintln!("router conformance: {name} ok ({:.2?})", started.elapsed());
    }
}

fn network_id(seed: u32, i: u32) -> String {
    format!("{:08x}-0000-4000-8000-00000000000{i}", seed.wrapping_add(i))
}

/// Tenant networks A (10.91.0.0/24) and B (10.95.0.0/24) and external network E
/// (10.92.0.0/24 and 10.94.0.0/24); `fips` are (floating, fixed, tenant 0 or 1).
pub fn desired_state(seed: u32, fips: &[(&str, &str, u32)]) -> pb::DesiredState {
    let subnet = |cidr: &str, gw: &str| pb::Subnet {
        cidr: cidr.into(),
        gateway_ip: gw.into(),
        ..Default::default()
    };
    let net = |i: u32, subnets: Vec<pb::Subnet>| pb::DesiredNetwork {
        network_id: network_id(seed, i),
        subnets,
        ..Default::default()
    };
    pb::DesiredState {
        servers: vec![pb::DesiredServer {
            id: "server".into(),
            ports: (0..2)
                .map(|i| pb::DesiredPort {
                    port_id: format!("port{i}"),
                    network_id: network_id(seed, i),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        networks: vec![
            net(0, vec![subnet("10.91.0.0/24", "10.91.0.1")]),
            net(1, vec![subnet("10.95.0.0/24", "10.95.0.1")]),
            net(
                2,
                vec![
                    subnet("10.92.0.0/24", "10.92.0.1"),
                    subnet("10.94.0.0/24", "10.94.0.1"),
                ],
            ),
        ],
        floating_ips: fips
            .iter()
            .map(|(fl, fx, t)| pb::DesiredFloatingIp {
                floating_ip_address: fl.to_string(),
                fixed_ip_address: fx.to_string(),
                port_id: format!("port{t}"),
                floating_network_id: network_id(seed, 2),
            })
            .collect(),
        ..Default::default()
    }
}

fn routers(seed: u32, fips: &[(&str, &str, u32)]) -> Vec<RouterSpec> {
    let derived = routers_from_desired(&desired_state(seed, fips));
    assert_eq!(derived.errors, vec![], "the suite's desired state resolves");
    derived.routers
}

/// One floating IP on each tenant network: two routers.
pub fn two_routers(seed: u32) -> Vec<RouterSpec> {
    routers(
        seed,
        &[
            ("10.92.0.10", "10.91.0.5", 0),
            ("10.92.0.20", "10.95.0.5", 1),
        ],
    )
}

fn observe(f: &RouterFixture<'_>) -> ObservedHost {
    f.driver
        .observe()
        .unwrap_or_else(|e| panic!("observe: {e}"))
}

fn converge(f: &RouterFixture<'_>, r: &mut RouterReconciler, desired: &[RouterSpec]) -> Vec<Step> {
    let report = r
        .converge(f.driver, desired)
        .unwrap_or_else(|e| panic!("converge: {e}"));
    assert!(
        report.failures.is_empty(),
        "converge failed: {:#?}",
        report.failures
    );
    report.executed
}

fn apply(f: &RouterFixture<'_>, step: Step) {
    f.driver
        .apply(&step)
        .unwrap_or_else(|e| panic!("{step:?}: {e}"));
}

fn apply_fails(f: &RouterFixture<'_>, step: Step) -> RouterError {
    match f.driver.apply(&step) {
        Ok(()) => panic!("{step:?} should fail"),
        Err(e) => e,
    }
}

/// The observation shows `desired` exactly, and planning again gives nothing.
fn assert_in_place(f: &RouterFixture<'_>, desired: &[RouterSpec]) {
    let host = observe(f);
    for spec in desired {
        let ns = host
            .namespaces
            .get(&spec.namespace)
            .unwrap_or_else(|| panic!("{} is missing: {host:#?}", spec.namespace));
        for v in [&spec.internal, &spec.external] {
            let inside = &ns.links[&v.inside];
            assert_eq!(inside.kind, "veth", "{}", v.inside);
            assert_eq!(inside.mac, Some(v.mac), "{}", v.inside);
            assert!(inside.up, "{} is up", v.inside);
            let want: BTreeSet<Ipv4Cidr> = v.addresses.iter().copied().collect();
            assert_eq!(inside.addresses, want, "{}", v.inside);
            let peer = &host.peers[&v.peer];
            assert_eq!(peer.kind, "veth", "{}", v.peer);
            assert!(peer.up, "{} is up", v.peer);
        }
        assert_eq!(ns.links.len(), 2, "{:?}", ns.links.keys());
        let routes: BTreeSet<RouteSpec> = spec.routes.iter().cloned().collect();
        assert_eq!(ns.routes, routes);
        for (k, v) in SYSCTLS {
            assert_eq!(ns.sysctls.get(*k).map(String::as_str), Some(*v), "{k}");
        }
        assert_eq!(ns.nft.as_ref(), Some(&expected_nft(spec)));
    }
    let plans = plan(desired, &host);
    assert!(plans.is_empty(), "nothing left to do, but: {plans:#?}");
}

/// Nothing named after this seed's networks is left.
fn assert_gone(f: &RouterFixture<'_>, specs: &[RouterSpec]) {
    let host = observe(f);
    for s in specs {
        assert!(
            !host.namespaces.contains_key(&s.namespace),
            "{} left",
            s.namespace
        );
        for p in [s.internal_peer(), s.external_peer()] {
            assert!(!host.peers.contains_key(p), "{p} left");
        }
    }
}

fn clean_up(f: &RouterFixture<'_>, specs: &[RouterSpec]) {
    converge(f, &mut RouterReconciler::new(), &[]);
    assert_gone(f, specs);
}

fn builds_routers_from_nothing_then_needs_nothing(f: &RouterFixture<'_>) {
    let specs = two_routers(f.seed);
    let mut r = RouterReconciler::new();
    let done = converge(f, &mut r, &specs);
    let announced = done
        .iter()
        .filter(|s| matches!(s, Step::Announce { .. }))
        .count();
    assert_eq!(announced, 2, "each new floating IP is announced: {done:#?}");
    assert_in_place(f, &specs);
    let again = converge(f, &mut r, &specs);
    assert!(
        again.iter().all(|s| !s.is_mutation()),
        "a second round changes nothing: {again:#?}"
    );
    clean_up(f, &specs);
}

fn follows_floating_ip_changes(f: &RouterFixture<'_>) {
    let before = two_routers(f.seed);
    let mut r = RouterReconciler::new();
    converge(f, &mut r, &before);
    // Router A gets a second floating IP from the other external subnet and its first moves;
    // router B's only floating IP goes.
    let after = routers(
        f.seed,
        &[
            ("10.92.0.11", "10.91.0.5", 0),
            ("10.94.0.7", "10.91.0.6", 0),
        ],
    );
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].routes.len(), 3, "two on-link routes and a default");
    let done = converge(f, &mut r, &after);
    assert!(done
        .iter()
        .any(|s| matches!(s, Step::DeleteNamespace { .. })));
    assert_in_place(f, &after);
    assert_gone(f, &before[1..]);
    clean_up(f, &before);
}

fn repairs_what_was_lost_or_changed(f: &RouterFixture<'_>) {
    let specs = two_routers(f.seed);
    let mut r = RouterReconciler::new();
    converge(f, &mut r, &specs);
    let a = &specs[0];
    let ns = || a.namespace.clone();
    let fip = a.nat[0].floating_ip;
    // The last address of qg goes, and with it its routes.
    apply(
        f,
        Step::DeleteAddress {
            namespace: ns(),
            dev: a.external.inside.clone(),
            cidr: Ipv4Cidr::host(fip),
        },
    );
    // The nft table goes (declare and delete, as `nft delete table` would).
    apply(
        f,
        Step::LoadNft {
            namespace: ns(),
            ruleset: "table ip flotilla\ndelete table ip flotilla\n".into(),
        },
    );
    apply(
        f,
        Step::SetSysctl {
            namespace: ns(),
            key: "net.ipv4.ip_forward".into(),
            value: "0".into(),
        },
    );
    apply(
        f,
        Step::AddAddress {
            namespace: ns(),
            dev: a.internal.inside.clone(),
            cidr: "10.91.0.99/24".parse().expect("cidr"),
        },
    );
    apply(
        f,
        Step::AddRoute {
            namespace: ns(),
            route: RouteSpec {
                dst: Some("10.96.0.0/24".parse().expect("cidr")),
                via: None,
                dev: a.internal.inside.clone(),
            },
        },
    );
    apply(
        f,
        Step::SetMac {
            namespace: ns(),
            dev: a.internal.inside.clone(),
            mac: Mac([0x02, 0, 0, 0, 0, 0x42]),
        },
    );
    // Router B loses its internal veth (deleting the peer deletes both ends).
    apply(
        f,
        Step::DeletePeer {
            name: specs[1].internal_peer().to_string(),
        },
    );
    let host = observe(f);
    assert!(!host.namespaces[&specs[1].namespace]
        .links
        .contains_key(&specs[1].internal.inside));
    let routes = &host.namespaces[&a.namespace].routes;
    assert!(
        routes.iter().all(|r| r.dev != a.external.inside),
        "qg's routes went with its last address: {routes:?}"
    );
    let done = converge(f, &mut r, &specs);
    assert!(
        done.contains(&Step::Announce {
            namespace: ns(),
            dev: a.external.inside.clone(),
            address: fip,
        }),
        "a re-added floating IP is announced: {done:#?}"
    );
    assert_in_place(f, &specs);
    clean_up(f, &specs);
}

fn removes_what_is_not_wanted(f: &RouterFixture<'_>) {
    let specs = two_routers(f.seed);
    let mut r = RouterReconciler::new();
    converge(f, &mut r, &specs);
    let stray = format!("flr-{:08x}", f.seed.wrapping_add(0x100));
    apply(
        f,
        Step::AddNamespace {
            namespace: stray.clone(),
        },
    );
    converge(f, &mut r, &specs[..1]);
    let host = observe(f);
    assert!(!host.namespaces.contains_key(&stray), "{stray} was removed");
    assert_in_place(f, &specs[..1]);
    assert_gone(f, &specs[1..]);
    clean_up(f, &specs);
}

fn steps_keep_the_contract(f: &RouterFixture<'_>) {
    let specs = two_routers(f.seed);
    let a = &specs[0];
    let ns = || a.namespace.clone();
    let qg = || a.external.inside.clone();
    let fip = a.nat[0].floating_ip;
    apply(f, Step::AddNamespace { namespace: ns() });
    apply(f, Step::AddNamespace { namespace: ns() });
    apply(
        f,
        Step::AddVeth {
            namespace: ns(),
            veth: a.external.clone(),
        },
    );
    let taken = apply_fails(
        f,
        Step::AddVeth {
            namespace: ns(),
            veth: a.external.clone(),
        },
    );
    assert!(matches!(taken, RouterError::Failed { .. }), "{taken}");
    let add = Step::AddAddress {
        namespace: ns(),
        dev: qg(),
        cidr: Ipv4Cidr::host(fip),
    };
    apply(f, add.clone());
    apply(f, add);
    let off_link = RouteSpec {
        dst: None,
        via: Some("10.92.0.1".parse().expect("ip")),
        dev: qg(),
    };
    let err = apply_fails(
        f,
        Step::AddRoute {
            namespace: ns(),
            route: off_link.clone(),
        },
    );
    assert!(matches!(err, RouterError::Failed { .. }), "{err}");
    for route in &a.routes {
        for _ in 0..2 {
            apply(
                f,
                Step::AddRoute {
                    namespace: ns(),
                    route: route.clone(),
                },
            );
        }
    }
    apply(
        f,
        Step::Announce {
            namespace: ns(),
            dev: qg(),
            address: fip,
        },
    );
    let not_ours = apply_fails(
        f,
        Step::Announce {
            namespace: ns(),
            dev: qg(),
            address: "10.92.0.99".parse().expect("ip"),
        },
    );
    assert!(matches!(not_ours, RouterError::Failed { .. }), "{not_ours}");
    for absent in [
        Step::DeleteAddress {
            namespace: ns(),
            dev: qg(),
            cidr: "10.92.0.99/32".parse().expect("cidr"),
        },
        Step::DeleteRoute {
            namespace: ns(),
            route: RouteSpec {
                dst: Some("10.97.0.0/24".parse().expect("cidr")),
                via: None,
                dev: qg(),
            },
        },
        Step::DeletePeer {
            name: a.internal_peer().to_string(),
        },
        Step::DeleteNamespace {
            namespace: specs[1].namespace.clone(),
        },
    ] {
        let err = apply_fails(f, absent);
        assert!(matches!(err, RouterError::Failed { .. }), "{err}");
    }
    let invalid = apply_fails(
        f,
        Step::SetSysctl {
            namespace: ns(),
            key: "net.ipv4.ip_forward".into(),
            value: "1; reboot".into(),
        },
    );
    assert!(matches!(invalid, RouterError::Invalid { .. }), "{invalid}");
    // Deleting the inside end deletes the peer too.
    apply(
        f,
        Step::DeleteLink {
            namespace: ns(),
            dev: qg(),
        },
    );
    let host = observe(f);
    assert!(!host.peers.contains_key(a.external_peer()));
    assert!(host.namespaces[&a.namespace].links.is_empty());
    apply(f, Step::DeleteNamespace { namespace: ns() });
    assert_gone(f, &specs);
}

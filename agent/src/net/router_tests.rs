//! Tests of the pure router core: derivation, naming, the nft ruleset, the planner.
use super::*;

pub(crate) const TENANT: &str = "3f2a1b4c-0000-4000-8000-000000000001";
pub(crate) const EXTERNAL: &str = "9e8d7c6b-0000-4000-8000-000000000002";

fn subnet(cidr: &str, gateway: &str) -> pb::Subnet {
    pb::Subnet {
        cidr: cidr.to_string(),
        gateway_ip: gateway.to_string(),
        ..Default::default()
    }
}

fn fip(floating: &str, fixed: &str, port: &str) -> pb::DesiredFloatingIp {
    pb::DesiredFloatingIp {
        floating_ip_address: floating.to_string(),
        fixed_ip_address: fixed.to_string(),
        port_id: port.to_string(),
        floating_network_id: EXTERNAL.to_string(),
    }
}

/// A tenant network (two subnets, one without a gateway, one IPv6), an external network, a
/// server with ports p1, p2 on the tenant network, and a floating IP for p1.
fn desired() -> pb::DesiredState {
    let port = |id: &str| pb::DesiredPort {
        port_id: id.to_string(),
        network_id: TENANT.to_string(),
        ..Default::default()
    };
    pb::DesiredState {
        servers: vec![pb::DesiredServer {
            id: "s1".into(),
            ports: vec![port("p1"), port("p2")],
            ..Default::default()
        }],
        networks: vec![
            pb::DesiredNetwork {
                network_id: TENANT.to_string(),
                subnets: vec![
                    subnet("10.91.0.0/24", "10.91.0.1"),
                    subnet("10.93.0.0/24", ""),
                    subnet("fd00::/64", "fd00::1"),
                ],
                ..Default::default()
            },
            pb::DesiredNetwork {
                network_id: EXTERNAL.to_string(),
                subnets: vec![subnet("10.92.0.0/24", "10.92.0.1")],
                ..Default::default()
            },
        ],
        floating_ips: vec![fip("10.92.0.10", "10.91.0.5", "p1")],
        ..Default::default()
    }
}

fn one_router(d: &pb::DesiredState) -> RouterSpec {
    let derived = routers_from_desired(d);
    assert_eq!(derived.errors, vec![]);
    assert_eq!(derived.routers.len(), 1);
    derived.routers.into_iter().next().unwrap()
}

/// The observation of a host where `specs` are exactly in place.
fn in_place(specs: &[RouterSpec]) -> ObservedHost {
    let mut host = ObservedHost::default();
    for s in specs {
        let mut ns = ObservedNamespace::default();
        for v in [&s.internal, &s.external] {
            ns.links.insert(
                v.inside.clone(),
                ObservedLink {
                    kind: "veth".into(),
                    mac: Some(v.mac),
                    up: true,
                    addresses: v.addresses.iter().copied().collect(),
                },
            );
            host.peers.insert(
                v.peer.clone(),
                ObservedLink {
                    kind: "veth".into(),
                    mac: None,
                    up: true,
                    addresses: BTreeSet::new(),
                },
            );
        }
        ns.routes = s.routes.iter().cloned().collect();
        ns.sysctls = SYSCTLS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ns.nft = Some(expected_nft(s));
        host.namespaces.insert(s.namespace.clone(), ns);
    }
    host
}

fn steps(plans: &[NamespacePlan]) -> Vec<Step> {
    plans.iter().flat_map(|p| p.steps.clone()).collect()
}

#[test]
fn a_floating_ip_gives_its_network_a_router_with_derived_names_and_macs() {
    let r = one_router(&desired());
    assert_eq!(r.network_id, TENANT);
    assert_eq!(r.namespace, "flr-3f2a1b4c");
    assert_eq!(r.internal.inside, "qr-3f2a1b4c");
    assert_eq!(r.internal_peer(), "tr-3f2a1b4c");
    assert_eq!(r.external.inside, "qg-3f2a1b4c");
    assert_eq!(r.external_peer(), "tg-3f2a1b4c");
    assert_eq!(r.external_network_id, EXTERNAL);
    assert_eq!(r.internal.mac, gateway_mac(TENANT));
    assert_eq!(r.external.mac, external_mac(TENANT));
    assert!(r.internal.mac.to_string().starts_with("fa:16:3f:"));
    assert_ne!(r.internal.mac, r.external.mac);
    let d = Sha256::digest(format!("gw:{TENANT}").as_bytes());
    assert_eq!(r.internal.mac.0[3..], d[..3]);
    // Only the IPv4 subnet with a gateway gives the router an address.
    assert_eq!(r.internal.addresses, vec!["10.91.0.1/24".parse().unwrap()]);
    assert_eq!(r.external.addresses, vec!["10.92.0.10/32".parse().unwrap()]);
    let route = |dst: Option<&str>, via: Option<&str>| RouteSpec {
        dst: dst.map(|d| d.parse().unwrap()),
        via: via.map(|v| v.parse().unwrap()),
        dev: "qg-3f2a1b4c".into(),
    };
    assert_eq!(
        r.routes,
        vec![
            route(Some("10.92.0.0/24"), None),
            route(None, Some("10.92.0.1"))
        ]
    );
    assert_eq!(
        r.nat,
        vec![NatPair {
            floating_ip: "10.92.0.10".parse().unwrap(),
            fixed_ip: "10.91.0.5".parse().unwrap(),
            port_id: "p1".into(),
        }]
    );
}

#[test]
fn an_unresolvable_floating_ip_is_reported_and_does_not_block_the_others() {
    let mut d = desired();
    let mut bad_ext = fip("10.92.0.12", "10.91.0.7", "p2");
    bad_ext.floating_network_id = "nope".into();
    d.floating_ips.extend([
        fip("10.92.0.11", "10.91.0.6", "p-elsewhere"),
        bad_ext,
        fip("10.99.0.1", "10.91.0.6", "p2"),
        fip("10.92.0.10", "10.91.0.6", "p2"),
        fip("10.92.0.13", "10.91.0.5", "p2"),
        fip("10.92.0.14", "10.93.0.5", "p2"),
        fip("fd01::5", "10.91.0.6", "p2"),
        fip("10.92.0.1", "10.91.0.6", "p2"),
    ]);
    let derived = routers_from_desired(&d);
    assert_eq!(derived.routers.len(), 1);
    assert_eq!(
        derived.routers[0].nat.len(),
        1,
        "{:?}",
        derived.routers[0].nat
    );
    let problems: BTreeMap<String, String> = derived
        .errors
        .iter()
        .map(|e| (e.floating_ip.clone(), e.problem.clone()))
        .collect();
    assert_eq!(problems.len(), 8, "{problems:#?}");
    assert!(problems["10.92.0.11"].contains("not on a server"));
    assert!(problems["10.92.0.12"].contains("external network nope"));
    assert!(problems["10.99.0.1"].contains("no subnet of external network"));
    assert!(problems["10.92.0.10"].contains("listed twice"));
    assert!(problems["10.92.0.13"].contains("already has a floating IP"));
    assert!(problems["10.92.0.14"].contains("with a gateway"));
    assert!(problems["fd01::5"].contains("not IPv4"));
    assert!(problems["10.92.0.1"].contains("external subnet"));
    let msg = derived.errors[0].to_string();
    assert!(msg.starts_with("floating IP "), "{msg}");
}

#[test]
fn no_floating_ips_means_no_routers() {
    let mut d = desired();
    d.floating_ips.clear();
    assert_eq!(routers_from_desired(&d), DerivedRouters::default());
}

#[test]
fn the_ruleset_replaces_the_table_atomically_and_names_every_rule() {
    let r = one_router(&desired());
    let text = render_nft(&r);
    assert!(text.starts_with("table ip flotilla\ndelete table ip flotilla\ntable ip flotilla {"));
    assert!(text.contains("iifname \"qg-3f2a1b4c\" ip daddr 10.92.0.10 dnat to 10.91.0.5"));
    assert!(text.contains("oifname \"qg-3f2a1b4c\" ip saddr 10.91.0.5 snat to 10.92.0.10"));
    assert!(text.contains("type filter hook forward priority filter; policy drop;"));
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.split_once("comment \"")
                .map(|(_, c)| c.trim_end_matches('"'))
        })
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = expected_nft(&r)
        .values()
        .flat_map(|c| c.rules.iter().flatten().cloned())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>(),
        expected.iter().collect::<BTreeSet<_>>()
    );
}

#[test]
fn from_nothing_the_plan_builds_the_router_in_order_and_announces_last() {
    let r = one_router(&desired());
    let plans = plan(std::slice::from_ref(&r), &ObservedHost::default());
    assert_eq!(plans.len(), 1);
    let ns = || r.namespace.clone();
    let mut want = vec![Step::AddNamespace { namespace: ns() }];
    for (k, v) in SYSCTLS {
        want.push(Step::SetSysctl {
            namespace: ns(),
            key: k.to_string(),
            value: v.to_string(),
        });
    }
    want.push(Step::AddVeth {
        namespace: ns(),
        veth: r.internal.clone(),
    });
    want.push(Step::AddVeth {
        namespace: ns(),
        veth: r.external.clone(),
    });
    for (dev, cidr) in [
        ("qr-3f2a1b4c", "10.91.0.1/24"),
        ("qg-3f2a1b4c", "10.92.0.10/32"),
    ] {
        want.push(Step::AddAddress {
            namespace: ns(),
            dev: dev.into(),
            cidr: cidr.parse().unwrap(),
        });
    }
    for route in &r.routes {
        want.push(Step::AddRoute {
            namespace: ns(),
            route: route.clone(),
        });
    }
    want.push(Step::LoadNft {
        namespace: ns(),
        ruleset: render_nft(&r),
    });
    want.push(Step::Announce {
        namespace: ns(),
        dev: "qg-3f2a1b4c".into(),
        address: "10.92.0.10".parse().unwrap(),
    });
    assert_eq!(plans[0].steps, want);
}

#[test]
fn a_router_in_place_needs_nothing() {
    let r = one_router(&desired());
    assert_eq!(
        plan(
            std::slice::from_ref(&r),
            &in_place(std::slice::from_ref(&r))
        ),
        vec![]
    );
}

#[test]
fn a_lost_address_route_or_rule_is_repaired_alone() {
    let r = one_router(&desired());
    let ns = r.namespace.clone();
    let mut host = in_place(std::slice::from_ref(&r));
    let o = host.namespaces.get_mut(&ns).unwrap();
    o.links.get_mut("qg-3f2a1b4c").unwrap().addresses.clear();
    o.routes.clear();
    o.nft
        .as_mut()
        .unwrap()
        .get_mut("forward")
        .unwrap()
        .rules
        .push(None);
    o.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
    let got = steps(&plan(std::slice::from_ref(&r), &host));
    let mut want = vec![
        Step::SetSysctl {
            namespace: ns.clone(),
            key: "net.ipv4.ip_forward".into(),
            value: "1".into(),
        },
        Step::AddAddress {
            namespace: ns.clone(),
            dev: "qg-3f2a1b4c".into(),
            cidr: "10.92.0.10/32".parse().unwrap(),
        },
    ];
    want.extend(r.routes.iter().map(|route| Step::AddRoute {
        namespace: ns.clone(),
        route: route.clone(),
    }));
    want.push(Step::LoadNft {
        namespace: ns.clone(),
        ruleset: render_nft(&r),
    });
    want.push(Step::Announce {
        namespace: ns.clone(),
        dev: "qg-3f2a1b4c".into(),
        address: "10.92.0.10".parse().unwrap(),
    });
    assert_eq!(got, want);
}

#[test]
fn a_moved_floating_ip_is_added_before_the_old_one_goes() {
    let r = one_router(&desired());
    let host = in_place(std::slice::from_ref(&r));
    let mut d = desired();
    d.floating_ips = vec![fip("10.92.0.20", "10.91.0.5", "p1")];
    let moved = one_router(&d);
    let got = steps(&plan(std::slice::from_ref(&moved), &host));
    let add = got
        .iter()
        .position(|s| matches!(s, Step::AddAddress { .. }));
    let del = got
        .iter()
        .position(|s| matches!(s, Step::DeleteAddress { .. }));
    assert!(add.unwrap() < del.unwrap(), "{got:#?}");
    assert!(got.iter().any(|s| matches!(s, Step::LoadNft { .. })));
    assert!(!got.iter().any(|s| matches!(s, Step::AddRoute { .. })));
}

#[test]
fn a_lost_peer_recreates_its_veth_with_addresses_and_routes() {
    let r = one_router(&desired());
    let mut host = in_place(std::slice::from_ref(&r));
    host.peers.remove("tg-3f2a1b4c");
    let got = steps(&plan(std::slice::from_ref(&r), &host));
    assert_eq!(
        got[..2],
        [
            Step::DeleteLink {
                namespace: r.namespace.clone(),
                dev: "qg-3f2a1b4c".into(),
            },
            Step::AddVeth {
                namespace: r.namespace.clone(),
                veth: r.external.clone(),
            },
        ]
    );
    let routes = got
        .iter()
        .filter(|s| matches!(s, Step::AddRoute { .. }))
        .count();
    assert_eq!(routes, 2);
    assert!(matches!(got.last(), Some(Step::Announce { .. })));
}

#[test]
fn unwanted_namespaces_and_stray_peers_are_removed() {
    let r = one_router(&desired());
    let mut host = in_place(std::slice::from_ref(&r));
    host.peers
        .insert("tg-00000000".into(), ObservedLink::default());
    host.peers
        .insert("tg-other".into(), ObservedLink::default());
    let got = plan(&[], &host);
    let ns = r.namespace.clone();
    assert_eq!(
        got,
        vec![
            NamespacePlan {
                namespace: ns.clone(),
                steps: vec![
                    Step::DeleteLink {
                        namespace: ns.clone(),
                        dev: "qg-3f2a1b4c".into(),
                    },
                    Step::DeleteLink {
                        namespace: ns.clone(),
                        dev: "qr-3f2a1b4c".into(),
                    },
                    Step::DeleteNamespace { namespace: ns },
                ],
            },
            NamespacePlan {
                namespace: "flr-00000000".into(),
                steps: vec![Step::DeletePeer {
                    name: "tg-00000000".into()
                }],
            },
        ]
    );
}

#[test]
fn a_new_floating_ip_is_announced_again_in_the_next_rounds_only() {
    let r = one_router(&desired());
    let desired = [r.clone()];
    let first = plan(&desired, &ObservedHost::default());
    let mut a = Announcements::default();
    a.record(&steps(&first));
    let host = in_place(&desired);
    let mut counts = Vec::new();
    for _ in 0..4 {
        let planned = plan(&desired, &host);
        counts.push(a.due(&desired, &planned).len());
    }
    assert_eq!(counts, vec![1, 1, 0, 0]);
    a.request(&r);
    assert_eq!(
        a.due(&[], &[]),
        vec![],
        "forgotten once the router is not wanted"
    );
}

#[test]
fn cidrs_parse_and_contain() {
    let c: Ipv4Cidr = "10.91.0.7/24".parse().unwrap();
    assert_eq!(c.network().to_string(), "10.91.0.0/24");
    assert!(c.contains("10.91.0.200".parse().unwrap()));
    assert!(!c.contains("10.91.1.1".parse().unwrap()));
    assert_eq!("1.2.3.4".parse::<Ipv4Cidr>().unwrap().prefix(), 32);
    assert!("1.2.3.4/33".parse::<Ipv4Cidr>().is_err());
    assert_eq!(
        "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().network().prefix(),
        0
    );
    assert_eq!(short_id("AB-cd-12"), None);
    assert_eq!(short_id("ABCD-EF01-2345").as_deref(), Some("abcdef01"));
}

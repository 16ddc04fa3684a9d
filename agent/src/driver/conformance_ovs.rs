//! The [`VSwitch`] conformance suite, run against [`super::ovs_fake::FakeVSwitch`] (a unit
//! test in `ovs_fake.rs`) and [`super::ovs::OvsVsctl`] with a private ovsdb-server and
//! ovs-vswitchd (`agent/tests/ovs_real.rs`).
//!
//! Each check uses only the trait, names its bridges and ports with the fixture's prefix
//! (internal ports and netdev bridges become host devices, so a prefix unique to the run keeps
//! concurrent runs apart) and deletes the bridges it made, so one driver runs them all in
//! sequence. Flows are written in the form `ovs-ofctl dump-flows` prints, so real and fake read
//! back the same text.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use super::ovs::{
    BridgeSpec, CookieMatch, FailMode, Flow, Mac, OvsError, PortKind, PortSpec, TunnelKey,
    TunnelSpec, VSwitch, VlanTag, Vni,
};

/// A driver under test.
pub struct OvsFixture<'a> {
    pub vswitch: &'a dyn VSwitch,
    /// 1 to 6 characters that start every bridge and port name the suite makes.
    pub prefix: String,
}

impl OvsFixture<'_> {
    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

type Check = fn(&OvsFixture<'_>);

/// Every VSwitch check, by name.
pub const OVS_CHECKS: &[(&str, Check)] = &[
    (
        "bridges_are_userspace_and_converge",
        bridges_are_userspace_and_converge,
    ),
    (
        "ports_carry_their_tag_and_managed_external_ids",
        ports_carry_their_tag_and_managed_external_ids,
    ),
    (
        "a_port_on_another_bridge_is_a_conflict",
        a_port_on_another_bridge_is_a_conflict,
    ),
    (
        "a_missing_bridge_is_reported_as_such",
        a_missing_bridge_is_reported_as_such,
    ),
    (
        "tunnels_are_vxlan_ports_with_their_options",
        tunnels_are_vxlan_ports_with_their_options,
    ),
    (
        "tunnel_and_plain_port_operations_never_mix",
        tunnel_and_plain_port_operations_never_mix,
    ),
    (
        "invalid_inputs_are_refused_before_any_change",
        invalid_inputs_are_refused_before_any_change,
    ),
    (
        "flows_are_listed_and_deleted_by_cookie",
        flows_are_listed_and_deleted_by_cookie,
    ),
    (
        "sync_flows_converges_and_then_does_nothing",
        sync_flows_converges_and_then_does_nothing,
    ),
];

/// Runs every check, printing each name and duration.
pub fn run_ovs_suite(f: &OvsFixture<'_>) {
    assert!(
        (1..=6).contains(&f.prefix.len()),
        "the prefix must be 1 to 6 characters"
    );
    for (name, check) in OVS_CHECKS {
        let started = Instant::now();
        eprintln!("ovs conformance: {name} ...");
        check(f);
        eprintln!("ovs conformance: {name} ok ({:.2?})", started.elapsed());
    }
}

/// Our cookies: the top byte 0xf1 says "Flotilla", the rest is free for the reconcile.
const OURS: CookieMatch = CookieMatch {
    value: 0xf1 << 56,
    mask: 0xff << 56,
};
const FOREIGN_COOKIE: u64 = 0x2;

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tag(v: u16) -> VlanTag {
    VlanTag::new(v).expect("valid tag")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn mac(s: &str) -> Mac {
    s.parse().expect("MAC")
}

fn bridge(f: &OvsFixture<'_>, suffix: &str) -> String {
    let name = f.name(suffix);
    f.vswitch
        .ensure_bridge(&BridgeSpec::new(&name, FailMode::Secure))
        .unwrap_or_else(|e| panic!("ensure_bridge {name}: {e}"));
    name
}

fn cleanup(f: &OvsFixture<'_>, bridges: &[&str]) {
    for b in bridges {
        f.vswitch
            .delete_bridge(b)
            .unwrap_or_else(|e| panic!("delete_bridge {b}: {e}"));
    }
}

fn bridges_are_userspace_and_converge(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let name = f.name("int");
    let mut spec = BridgeSpec::new(&name, FailMode::Secure);
    spec.external_ids = ids(&[("flotilla-role", "integration")]);
    vs.ensure_bridge(&spec).unwrap();
    vs.ensure_bridge(&spec).unwrap();
    let listed: Vec<_> = vs
        .list_bridges()
        .unwrap()
        .into_iter()
        .filter(|b| b.name == name)
        .collect();
    assert_eq!(listed.len(), 1, "ensure_bridge twice made one bridge");
    assert_eq!(listed[0].datapath_type, "netdev");
    assert_eq!(listed[0].fail_mode, Some(FailMode::Secure));
    assert_eq!(listed[0].external_ids, spec.external_ids);

    // Converges: fail mode, and managed ids exactly as the spec says.
    spec.fail_mode = FailMode::Standalone;
    spec.external_ids = ids(&[("flotilla-generation", "2")]);
    vs.ensure_bridge(&spec).unwrap();
    let b = vs
        .list_bridges()
        .unwrap()
        .into_iter()
        .find(|b| b.name == name)
        .expect("bridge listed");
    assert_eq!(b.fail_mode, Some(FailMode::Standalone));
    assert_eq!(b.external_ids, spec.external_ids);

    assert!(vs.delete_bridge(&name).unwrap());
    assert!(!vs.delete_bridge(&name).unwrap());
    assert!(vs.list_bridges().unwrap().iter().all(|b| b.name != name));
}

fn ports_carry_their_tag_and_managed_external_ids(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let br = bridge(f, "int");
    let p = f.name("p1");
    let mut spec = PortSpec::vif(
        &p,
        PortKind::Internal,
        "0b7a3c52-6f3e-4a61-9f0e-5d2c1b0a9e11",
        mac("fa:16:3e:00:00:01"),
        tag(5),
    );
    spec.external_ids
        .insert("flotilla-network".into(), "net-a".into());
    vs.ensure_port(&br, &spec).unwrap();
    vs.ensure_port(&br, &spec).unwrap();
    let ports = vs.list_ports(&br).unwrap();
    assert_eq!(
        ports.len(),
        1,
        "one port (the bridge's own is not listed): {ports:?}"
    );
    assert_eq!(ports[0].name, p);
    assert_eq!(ports[0].ovs_type, "internal");
    assert_eq!(ports[0].tag, Some(tag(5)));
    assert_eq!(ports[0].external_ids, spec.external_ids);
    assert!(ports[0].ofport.is_some(), "an internal port gets an ofport");
    let ofport = ports[0].ofport;

    // Converges: new tag, a managed key dropped, another added; the ofport stays.
    spec.tag = Some(tag(7));
    spec.external_ids.remove("flotilla-network");
    spec.external_ids
        .insert("flotilla-server".into(), "srv-1".into());
    vs.ensure_port(&br, &spec).unwrap();
    let ports = vs.list_ports(&br).unwrap();
    assert_eq!(ports[0].tag, Some(tag(7)));
    assert_eq!(ports[0].external_ids, spec.external_ids);
    assert_eq!(
        ports[0].ofport, ofport,
        "converging does not re-add the port"
    );

    // A trunk: no tag.
    spec.tag = None;
    vs.ensure_port(&br, &spec).unwrap();
    assert_eq!(vs.list_ports(&br).unwrap()[0].tag, None);

    assert!(vs.delete_port(&br, &p).unwrap());
    assert!(!vs.delete_port(&br, &p).unwrap());
    assert!(vs.list_ports(&br).unwrap().is_empty());
    cleanup(f, &[&br]);
}

fn a_port_on_another_bridge_is_a_conflict(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let a = bridge(f, "int");
    let b = bridge(f, "tun");
    let p = f.name("p2");
    let spec = PortSpec {
        name: p.clone(),
        kind: PortKind::Internal,
        tag: Some(tag(9)),
        external_ids: ids(&[("iface-id", "port-2")]),
    };
    vs.ensure_port(&a, &spec).unwrap();
    let e = vs.ensure_port(&b, &spec).unwrap_err();
    assert!(
        matches!(e, OvsError::Conflict { .. }),
        "ensure elsewhere: {e}"
    );
    let e = vs.delete_port(&b, &p).unwrap_err();
    assert!(
        matches!(e, OvsError::Conflict { .. }),
        "delete elsewhere: {e}"
    );
    assert_eq!(
        vs.list_ports(&a).unwrap().len(),
        1,
        "the port stayed on {a}"
    );
    assert!(vs.list_ports(&b).unwrap().is_empty());
    cleanup(f, &[&a, &b]);
}

fn a_missing_bridge_is_reported_as_such(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let none = f.name("none");
    let is_missing = |r: Result<(), OvsError>, what: &str| match r {
        Err(OvsError::NoSuchBridge { bridge }) => assert_eq!(bridge, none, "{what}"),
        other => panic!("{what}: expected NoSuchBridge, got {other:?}"),
    };
    is_missing(vs.list_ports(&none).map(drop), "list_ports");
    is_missing(vs.list_tunnels(&none).map(drop), "list_tunnels");
    is_missing(vs.list_flows(&none, OURS).map(drop), "list_flows");
    is_missing(
        vs.add_flows(&none, &[Flow::new(OURS.value, 0, 1, "", "drop")]),
        "add_flows",
    );
    is_missing(
        vs.ensure_port(
            &none,
            &PortSpec {
                name: f.name("p3"),
                kind: PortKind::Internal,
                tag: None,
                external_ids: BTreeMap::new(),
            },
        ),
        "ensure_port",
    );
    is_missing(
        vs.delete_port(&none, &f.name("p3")).map(drop),
        "delete_port",
    );
    assert!(!vs.delete_bridge(&none).unwrap());
}

fn tunnel(name: &str, remote: &str, local: Option<&str>, key: TunnelKey) -> TunnelSpec {
    TunnelSpec {
        name: name.to_string(),
        remote_ip: ip(remote),
        local_ip: local.map(ip),
        key,
        external_ids: ids(&[("flotilla-host", "host-b")]),
    }
}

fn tunnels_are_vxlan_ports_with_their_options(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let br = bridge(f, "tun");
    let t1 = tunnel(
        &f.name("vx1"),
        "192.0.2.12",
        Some("192.0.2.11"),
        TunnelKey::Flow,
    );
    let t2 = tunnel(
        &f.name("vx2"),
        "2001:db8::12",
        None,
        TunnelKey::Vni(Vni::new(5001).unwrap()),
    );
    for t in [&t1, &t2, &t1] {
        vs.ensure_tunnel(&br, t).unwrap();
    }
    let listed = vs.list_tunnels(&br).unwrap();
    let specs: Vec<_> = listed.iter().map(|t| t.spec.clone()).collect();
    assert_eq!(specs, vec![t1.clone(), t2.clone()]);
    assert!(listed.iter().all(|t| t.ofport.is_some()), "{listed:?}");
    assert!(
        vs.list_ports(&br).unwrap().is_empty(),
        "tunnels are not listed as ports"
    );

    // Converges: another remote, a fixed VNI, no local address, other managed ids.
    let mut t1b = tunnel(
        &t1.name,
        "192.0.2.13",
        None,
        TunnelKey::Vni(Vni::new(MAX_TEST_VNI).unwrap()),
    );
    t1b.external_ids = ids(&[("flotilla-host", "host-c")]);
    vs.ensure_tunnel(&br, &t1b).unwrap();
    let specs: Vec<_> = vs
        .list_tunnels(&br)
        .unwrap()
        .into_iter()
        .map(|t| t.spec)
        .collect();
    assert_eq!(specs, vec![t1b, t2.clone()]);

    assert!(vs.delete_tunnel(&br, &t1.name).unwrap());
    assert!(!vs.delete_tunnel(&br, &t1.name).unwrap());
    assert!(
        vs.delete_port(&br, &t2.name).unwrap(),
        "delete_port removes tunnels too"
    );
    assert!(vs.list_tunnels(&br).unwrap().is_empty());
    cleanup(f, &[&br]);
}

const MAX_TEST_VNI: u32 = (1 << 24) - 1;

fn tunnel_and_plain_port_operations_never_mix(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let br = bridge(f, "int");
    let plain = PortSpec {
        name: f.name("p4"),
        kind: PortKind::Internal,
        tag: Some(tag(4094)),
        external_ids: ids(&[("iface-id", "port-4")]),
    };
    let vx = tunnel(&f.name("vx4"), "192.0.2.14", None, TunnelKey::Flow);
    vs.ensure_port(&br, &plain).unwrap();
    vs.ensure_tunnel(&br, &vx).unwrap();

    let conflict = |r: Result<bool, OvsError>, what: &str| match r {
        Err(OvsError::Conflict { .. }) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    };
    conflict(
        vs.delete_tunnel(&br, &plain.name),
        "delete_tunnel of a plain port",
    );
    conflict(
        vs.ensure_tunnel(
            &br,
            &tunnel(&plain.name, "192.0.2.15", None, TunnelKey::Flow),
        )
        .map(|_| true),
        "ensure_tunnel over a plain port",
    );
    conflict(
        vs.ensure_port(
            &br,
            &PortSpec {
                name: vx.name.clone(),
                ..plain.clone()
            },
        )
        .map(|_| true),
        "ensure_port over a tunnel",
    );
    // Nothing changed.
    let ports = vs.list_ports(&br).unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].tag, Some(tag(4094)));
    assert_eq!(ports[0].external_ids, plain.external_ids);
    let tunnels = vs.list_tunnels(&br).unwrap();
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].spec, vx);
    cleanup(f, &[&br]);
}

fn invalid_inputs_are_refused_before_any_change(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let before = vs.list_bridges().unwrap();
    let invalid = |r: Result<(), OvsError>, what: &str| match r {
        Err(OvsError::Invalid { .. }) => {}
        other => panic!("{what}: expected Invalid, got {other:?}"),
    };
    for name in [
        "",
        "a-name-longer-than-15",
        "-dash",
        ".dot",
        "sp ace",
        "semi;colon",
        "quo\"te",
        "slash/x",
        "ünïcode",
    ] {
        invalid(
            vs.ensure_bridge(&BridgeSpec::new(name, FailMode::Secure)),
            &format!("bridge name {name:?}"),
        );
    }
    let mut spec = BridgeSpec::new(&f.name("int"), FailMode::Secure);
    for (k, v) in [
        ("vm-uuid", "x"),
        ("flotilla-", "x"),
        ("Flotilla-x", "x"),
        ("flotilla-x", ""),
        ("flotilla-x", "a b"),
        ("flotilla-x", "a,b"),
        ("flotilla-x", "a=b"),
        ("flotilla-x", "a\"b"),
        ("flotilla-x", "{a}"),
        ("attached-mac", "fa:16:3e:00:00"),
        ("attached-mac", "fa:16:3e:00:00:0g"),
    ] {
        spec.external_ids = ids(&[(k, v)]);
        invalid(vs.ensure_bridge(&spec), &format!("external_ids {k}={v:?}"));
    }
    assert!(Vni::new(0).is_err() && Vni::new(1 << 24).is_err());
    assert!(Vni::new(1).is_ok() && Vni::new(MAX_TEST_VNI).is_ok());
    assert!(VlanTag::new(0).is_err() && VlanTag::new(4095).is_err());
    assert!(VlanTag::new(1).is_ok() && VlanTag::new(4094).is_ok());
    for bad in [
        "",
        "fa:16:3e:00:00",
        "fa:16:3e:00:00:00:00",
        "fa-16-3e-00-00-00",
        "fa:16:3e:0:00:00",
    ] {
        assert!(bad.parse::<Mac>().is_err(), "MAC {bad:?}");
    }
    assert_eq!(mac("FA:16:3E:00:00:0A").to_string(), "fa:16:3e:00:00:0a");

    // Tunnel addresses, on a real bridge so only validation can refuse them.
    let br = bridge(f, "tun");
    for (remote, local) in [
        ("0.0.0.0", None),
        ("255.255.255.255", None),
        ("224.0.0.1", None),
        ("::", None),
        ("192.0.2.1", Some("2001:db8::1")),
        ("192.0.2.1", Some("0.0.0.0")),
    ] {
        invalid(
            vs.ensure_tunnel(&br, &tunnel(&f.name("vx5"), remote, local, TunnelKey::Flow)),
            &format!("tunnel {remote} from {local:?}"),
        );
    }
    for (m, a) in [
        ("in_port=1", ""),
        ("in_port=1 ", "drop"),
        ("in_port=1", "output:1 output:2"),
        ("in_port=\"1\"", "drop"),
        ("cookie=0x1", "drop"),
        ("actions=drop", "drop"),
        ("in_port=1", "drop;reboot"),
    ] {
        invalid(
            vs.add_flows(&br, &[Flow::new(OURS.value, 0, 1, m, a)]),
            &format!("flow {m:?} {a:?}"),
        );
    }
    assert!(vs.list_tunnels(&br).unwrap().is_empty());
    assert!(vs.list_flows(&br, OURS).unwrap().is_empty());
    cleanup(f, &[&br]);
    assert_eq!(vs.list_bridges().unwrap(), before);
}

/// Flows in the form `ovs-ofctl dump-flows --no-stats` prints them.
fn sample_flows() -> Vec<Flow> {
    let c = OURS.value;
    vec![
        Flow::new(c | 1, 0, 0, "", "drop"),
        Flow::new(c | 2, 0, 100, "in_port=1", "mod_vlan_vid:5,resubmit(,10)"),
        Flow::new(c | 3, 0, 32768, "in_port=2", "resubmit(,10)"),
        Flow::new(c | 4, 10, 10, "dl_vlan=5", "strip_vlan,output:1"),
        Flow::new(c | 5, 20, 7, "ip,nw_dst=10.0.0.0/24", "drop"),
        Flow::new(c | 6, 20, 8, "arp,dl_dst=fa:16:3e:00:00:01", "NORMAL"),
        Flow::new(
            c | 7,
            30,
            50,
            "tun_id=0x1389,in_port=3",
            "mod_vlan_vid:5,resubmit(,10)",
        ),
    ]
}

fn flows_are_listed_and_deleted_by_cookie(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let br = bridge(f, "int");
    let mut flows = sample_flows();
    flows.sort();
    let foreign = Flow::new(FOREIGN_COOKIE, 0, 5, "in_port=9", "drop");
    vs.add_flows(&br, &flows).unwrap();
    vs.add_flows(&br, std::slice::from_ref(&foreign)).unwrap();
    vs.add_flows(&br, &flows).unwrap();
    assert_eq!(
        vs.list_flows(&br, OURS).unwrap(),
        flows,
        "flows read back as written, ours only"
    );
    assert_eq!(
        vs.list_flows(&br, CookieMatch::exact(FOREIGN_COOKIE))
            .unwrap(),
        vec![foreign.clone()]
    );

    // Same table/priority/match: replaced, not added.
    let mut changed = flows[1].clone();
    changed.actions = "drop".into();
    changed.cookie = OURS.value | 0x99;
    vs.add_flows(&br, std::slice::from_ref(&changed)).unwrap();
    let listed = vs.list_flows(&br, OURS).unwrap();
    assert_eq!(listed.len(), flows.len());
    assert!(listed.contains(&changed), "{listed:?}");

    // Strict deletion needs the cookie too.
    vs.delete_flows(&br, std::slice::from_ref(&flows[1]))
        .unwrap();
    assert!(
        vs.list_flows(&br, OURS).unwrap().contains(&changed),
        "wrong cookie: kept"
    );
    vs.delete_flows(&br, std::slice::from_ref(&changed))
        .unwrap();
    vs.delete_flows(&br, std::slice::from_ref(&changed))
        .unwrap();
    assert_eq!(vs.list_flows(&br, OURS).unwrap().len(), flows.len() - 1);

    assert_eq!(
        vs.delete_flows_by_cookie(&br, OURS).unwrap(),
        flows.len() - 1
    );
    assert_eq!(vs.delete_flows_by_cookie(&br, OURS).unwrap(), 0);
    assert!(vs.list_flows(&br, OURS).unwrap().is_empty());
    assert_eq!(
        vs.list_flows(&br, CookieMatch::exact(FOREIGN_COOKIE))
            .unwrap(),
        vec![foreign],
        "another owner's flow is left alone"
    );
    cleanup(f, &[&br]);
}

fn sync_flows_converges_and_then_does_nothing(f: &OvsFixture<'_>) {
    let vs = f.vswitch;
    let br = bridge(f, "int");
    let foreign = Flow::new(FOREIGN_COOKIE, 0, 5, "in_port=9", "drop");
    vs.add_flows(&br, std::slice::from_ref(&foreign)).unwrap();
    let mut desired = sample_flows();
    desired.sort();
    let sync = vs.sync_flows(&br, OURS, &desired).unwrap();
    assert_eq!(sync.added, desired);
    assert!(sync.deleted.is_empty());
    assert!(vs.sync_flows(&br, OURS, &desired).unwrap().is_noop());

    // One flow gets new actions, one goes, one arrives.
    let gone = desired.remove(0);
    desired[0].actions = "drop".into();
    let new = Flow::new(OURS.value | 8, 40, 1, "in_port=4", "output:1");
    desired.push(new.clone());
    let sync = vs.sync_flows(&br, OURS, &desired).unwrap();
    let mut want_added = vec![desired[0].clone(), new];
    want_added.sort();
    assert_eq!(sync.added, want_added);
    assert_eq!(sync.deleted, vec![gone]);
    assert!(vs.sync_flows(&br, OURS, &desired).unwrap().is_noop());
    desired.sort();
    assert_eq!(vs.list_flows(&br, OURS).unwrap(), desired);

    // A desired flow outside the cookie space is refused before any change.
    let stray = Flow::new(FOREIGN_COOKIE, 0, 6, "in_port=8", "drop");
    match vs.sync_flows(&br, OURS, &[stray]) {
        Err(OvsError::Invalid { .. }) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(vs.sync_flows(&br, OURS, &[]).unwrap().deleted.len() == desired.len());
    assert_eq!(
        vs.list_flows(&br, CookieMatch::exact(FOREIGN_COOKIE))
            .unwrap(),
        vec![foreign]
    );
    cleanup(f, &[&br]);
}

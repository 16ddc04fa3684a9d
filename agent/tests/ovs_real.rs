//! The VSwitch conformance suite against a real Open vSwitch: this test's own ovsdb-server and
//! ovs-vswitchd (userspace datapath) in a temp directory, plus what only the real driver can
//! show. Needs root and openvswitch-switch (deploy/install-deps.sh); skips, saying why,
//! otherwise.
//!
//! Bridges and internal ports of the netdev datapath are tap devices that outlive
//! ovs-vswitchd, so ovs-vswitchd runs in its own network namespace (`unshare --net`; the
//! drivers reach it through unix sockets, which namespaces do not separate), and the daemons'
//! guard still deletes every bridge before it stops both daemons by pid.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_agent::driver::conformance_ovs::{run_ovs_suite, OvsFixture};
use flotilla_agent::driver::ovs::{
    BridgeSpec, CookieMatch, FailMode, Flow, Mac, OvsConfig, OvsError, OvsVsctl, PortKind,
    PortSpec, VSwitch, VlanTag,
};
use flotilla_agent::testbed::find_tool;

use flotilla_agent::testbed_ovs::{missing_prerequisite, OvsDaemons};

/// Network devices whose names start with `prefix`.
fn devices_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn prefix() -> String {
    format!("o{}", std::process::id() % 100_000)
}

#[test]
fn real_ovs_passes_the_conformance_suite_and_leaves_no_devices() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIP: {why}");
        return;
    }
    let prefix = prefix();
    let dir = tempfile::tempdir().unwrap();
    {
        let ovs = OvsDaemons::start(dir.path());
        let vs = OvsVsctl::new(ovs.config()).unwrap();
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_ovs_suite(&OvsFixture {
                vswitch: &vs,
                prefix: prefix.clone(),
            })
        }));
        if let Err(panic) = result {
            eprintln!("{}", ovs.logs());
            std::panic::resume_unwind(panic);
        }
        eprintln!("timing: OVS conformance suite {:.2?}", started.elapsed());
        assert!(
            vs.list_bridges().unwrap().is_empty(),
            "the suite cleaned up"
        );
        assert_eq!(
            ovs.devices(&prefix),
            Vec::<String>::new(),
            "deleted bridges leave no tap devices"
        );
    }
    assert_eq!(
        devices_with_prefix(&prefix),
        Vec::<String>::new(),
        "devices left behind"
    );
}

#[test]
fn a_libvirt_style_port_without_its_tap_yet_is_recorded() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIP: {why}");
        return;
    }
    let prefix = format!("{}l", prefix());
    let dir = tempfile::tempdir().unwrap();
    let ovs = OvsDaemons::start(dir.path());
    let vs = OvsVsctl::new(ovs.config()).unwrap();
    let br = format!("{prefix}int");
    vs.ensure_bridge(&BridgeSpec::new(&br, FailMode::Secure))
        .unwrap();
    assert_eq!(
        ovs.devices(&prefix),
        vec![br.clone()],
        "a netdev bridge is a tap"
    );
    // libvirt creates the tap and the port itself; the agent may repair the port before the
    // guest starts, when the device does not exist yet.
    let mac: Mac = "fa:16:3e:12:34:56".parse().unwrap();
    let spec = PortSpec::vif(
        &format!("{prefix}tap"),
        PortKind::System,
        "6f1d3f5e-0f6a-4c43-9a36-2d2f7c1e8b10",
        mac,
        VlanTag::new(12).unwrap(),
    );
    let started = Instant::now();
    vs.ensure_port(&br, &spec).unwrap();
    vs.ensure_port(&br, &spec).unwrap();
    eprintln!("timing: two ensure_port {:.2?}", started.elapsed());
    let ports = vs.list_ports(&br).unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].ovs_type, "");
    assert_eq!(ports[0].ofport, None, "no device, no OpenFlow port");
    assert_eq!(ports[0].external_ids, spec.external_ids);
    assert_eq!(ports[0].tag, spec.tag);
    drop(ovs);
    assert_eq!(devices_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn without_a_running_ovsdb_server_calls_fail_promptly() {
    if find_tool("ovs-vsctl").is_none() || find_tool("ovs-ofctl").is_none() {
        eprintln!("SKIP: openvswitch-switch is not installed (run deploy/install-deps.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = OvsConfig::with_rundir(dir.path());
    config.timeout = Duration::from_secs(2);
    let vs = OvsVsctl::new(config).unwrap();
    let started = Instant::now();
    let e = vs.list_bridges().unwrap_err();
    assert!(
        matches!(e, OvsError::Failed { .. } | OvsError::Timeout { .. }),
        "{e:?}"
    );
    let e = vs.list_flows("br-int", CookieMatch::exact(1)).unwrap_err();
    assert!(
        matches!(
            e,
            OvsError::Failed { .. } | OvsError::Timeout { .. } | OvsError::NoSuchBridge { .. }
        ),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    eprintln!("timing: two failing calls {:.2?}", started.elapsed());
}

#[test]
fn a_missing_binary_is_named() {
    let mut config = OvsConfig::with_rundir(Path::new("/nonexistent"));
    config.ovs_vsctl = PathBuf::from("/nonexistent/ovs-vsctl");
    let vs = OvsVsctl::new(config).unwrap();
    match vs.list_bridges() {
        Err(e @ OvsError::Missing { .. }) => {
            assert!(e.to_string().contains("/nonexistent/ovs-vsctl"), "{e}")
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    let config = OvsConfig {
        datapath_type: "dpdk".into(),
        ..OvsConfig::default()
    };
    assert!(matches!(
        OvsVsctl::new(config),
        Err(OvsError::Invalid { .. })
    ));
}

#[test]
fn a_flow_batch_the_switch_rejects_changes_nothing() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIP: {why}");
        return;
    }
    let prefix = format!("{}b", prefix());
    let dir = tempfile::tempdir().unwrap();
    let ovs = OvsDaemons::start(dir.path());
    let vs = OvsVsctl::new(ovs.config()).unwrap();
    let br = format!("{prefix}int");
    vs.ensure_bridge(&BridgeSpec::new(&br, FailMode::Secure))
        .unwrap();
    let ours = CookieMatch {
        value: 0xf1 << 56,
        mask: 0xff << 56,
    };
    let good = vec![
        Flow::new(ours.value | 1, 0, 10, "in_port=1", "drop"),
        Flow::new(ours.value | 2, 0, 20, "in_port=2", "drop"),
    ];
    let started = Instant::now();
    vs.sync_flows(&br, ours, &good).unwrap();
    eprintln!(
        "timing: sync_flows of 2 new flows {:.2?}",
        started.elapsed()
    );
    // Valid text that ovs-ofctl refuses (no such port): the whole bundle is rejected, so the
    // deletions of the good flows and the addition before the bad one do not happen either.
    let bad = vec![
        Flow::new(ours.value | 3, 0, 30, "in_port=3", "drop"),
        Flow::new(ours.value | 4, 0, 40, "in_port=4", "output:NOPE"),
    ];
    match vs.sync_flows(&br, ours, &bad) {
        Err(OvsError::Failed { message, .. }) => assert!(message.contains("NOPE"), "{message}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(vs.list_flows(&br, ours).unwrap(), good);
    assert!(matches!(
        vs.add_flows(&br, &bad),
        Err(OvsError::Failed { .. })
    ));
    assert_eq!(vs.list_flows(&br, ours).unwrap(), good);
    let started = Instant::now();
    assert!(vs.sync_flows(&br, ours, &good).unwrap().is_noop());
    eprintln!(
        "timing: sync_flows without changes {:.2?}",
        started.elapsed()
    );
}

//! The DHCP responder against a real DHCP client: busybox `udhcpc` in a private network
//! namespace, talking to [`DhcpServers`] over a veth pair. Needs root, `ip` and `udhcpc`
//! (deploy/install-deps.sh); skips, saying why, otherwise.
//!
//! The test's end of the pair stays in the test's namespace without an address (no route
//! changes; IPv6 off on it), so every frame stays on the pair. The namespace, and with it the
//! pair, is deleted by a guard, also when the test fails.
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::net::dhcp::{DhcpInterface, DhcpLease};
use flotilla_agent::net::dhcp_server::{DhcpServers, DhcpStats};
use flotilla_agent::testbed::{find_tool, missing_root_or_tools};

const CLIENT_MAC: &str = "52:54:00:d4:c0:01";
const STRANGER_MAC: &str = "52:54:00:d4:c0:99";

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    missing_root_or_tools(
        "creates a network namespace and a veth pair",
        &["ip", "udhcpc"],
    )
}

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `ip` to completion, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new(tool("ip"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace and the veth pair; deleted on drop.
struct Net {
    ns: String,
    host_if: String,
    guest_if: String,
}

impl Net {
    fn new() -> Self {
        let tag = format!("{:05x}", std::process::id() & 0xf_ffff);
        let net = Net {
            ns: format!("flotilla-dhcp-{tag}"),
            host_if: format!("fdt{tag}h"),
            guest_if: format!("fdt{tag}g"),
        };
        net.cleanup(); // left over from a killed run with the same pid
        net
    }

    fn create(&self) {
        ip(&["netns", "add", &self.ns]);
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.guest_if,
        ]);
        ip(&["link", "set", &self.guest_if, "netns", &self.ns]);
        // No IPv6 link-local address, hence no router solicitations from the host's end.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.host_if);
        let _ = fs::write(sysctl, "1");
        ip(&["link", "set", &self.host_if, "up"]);
        ip(&["-n", &self.ns, "link", "set", "lo", "up"]);
        self.set_guest_mac(CLIENT_MAC);
    }

    fn set_guest_mac(&self, mac: &str) {
        ip(&["-n", &self.ns, "link", "set", &self.guest_if, "down"]);
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &self.guest_if,
            "address",
            mac,
        ]);
        ip(&["-n", &self.ns, "link", "set", &self.guest_if, "up"]);
    }

    fn cleanup(&self) {
        for args in [
            vec!["netns", "del", &self.ns],
            vec!["link", "del", &self.host_if],
        ] {
            let _ = Command::new(tool("ip"))
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs udhcpc once in the namespace; the variables its script got on `bound`, or None when
/// it got no lease.
fn udhcpc(net: &Net, dir: &Path, tries: u32) -> Option<BTreeMap<String, String>> {
    let out = dir.join("bound.env");
    let _ = fs::remove_file(&out);
    let script = dir.join("script.sh");
    let vars = "ip subnet mask broadcast router dns mtu hostname staticroutes serverid lease";
    let body = format!(
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nfor v in {vars}; do eval \"echo $v=\\${{$v}}\"; done > '{}'\n",
        out.display()
    );
    fs::write(&script, body).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let tries = tries.to_string();
    let mut child = Command::new(tool("ip"))
        .args(["netns", "exec", &net.ns])
        .arg(tool("udhcpc"))
        .args([
            "-i",
            &net.guest_if,
            "-f",
            "-q",
            "-n",
            "-t",
            &tries,
            "-T",
            "1",
        ])
        .args(["-O", "mtu", "-O", "staticroutes", "-s"])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("udhcpc starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("udhcpc's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("udhcpc did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        return None;
    }
    let text = fs::read_to_string(&out).expect("the script wrote what it got");
    let vars = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(vars)
}

/// Polls `stats` until `f` holds, panicking with `what` after 5 s.
fn wait_stats(servers: &DhcpServers, what: &str, f: impl Fn(&DhcpStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f(&servers.stats()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            servers.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn table(ip: Ipv4Addr) -> DhcpInterface {
    DhcpInterface {
        server_ip: Ipv4Addr::new(10, 77, 0, 1),
        server_mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
        leases: vec![DhcpLease {
            mac: [0x52, 0x54, 0x00, 0xd4, 0xc0, 0x01],
            ip,
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3)],
            routes: vec![(
                Ipv4Addr::new(172, 16, 0, 0),
                12,
                Ipv4Addr::new(10, 77, 0, 254),
            )],
            mtu: Some(1442),
            hostname: Some("web-1".into()),
            lease_secs: 86_400,
        }],
    }
}

#[test]
fn udhcpc_gets_the_ports_fixed_address_and_strangers_get_nothing() {
    if let Some(why) = missing_prerequisite() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new();
    let servers = DhcpServers::new();
    let wanted = |ip| BTreeMap::from([(net.host_if.clone(), table(ip))]);
    let first_ip = Ipv4Addr::new(10, 77, 0, 23);

    // Before the interface exists: reported, and tried again on the next sync.
    let failed = servers.sync(wanted(first_ip));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, net.host_if);
    assert!(failed[0].1.contains("no interface"), "{failed:?}");
    net.create();
    assert_eq!(servers.sync(wanted(first_ip)), vec![]);
    assert_eq!(servers.sync(wanted(first_ip)), vec![], "sync is idempotent");
    assert!(
        servers.stats().interfaces[&net.host_if].1,
        "the responder runs"
    );

    let got = udhcpc(&net, dir.path(), 5).expect("udhcpc gets a lease");
    let expected = [
        ("ip", "10.77.0.23"),
        ("subnet", "255.255.255.0"),
        ("broadcast", "10.77.0.255"),
        ("router", "10.77.0.1"),
        ("dns", "10.77.0.2 10.77.0.3"),
        ("mtu", "1442"),
        ("hostname", "web-1"),
        (
            "staticroutes",
            "172.16.0.0/12 10.77.0.254 0.0.0.0/0 10.77.0.1",
        ),
        ("serverid", "10.77.0.1"),
        ("lease", "86400"),
    ];
    for (name, value) in expected {
        assert_eq!(
            got.get(name).map(String::as_str),
            Some(value),
            "{name} in {got:?}"
        );
    }
    wait_stats(&servers, "an OFFER and an ACK", |s| s.total.replies >= 2);

    // A MAC no port has: no answer at all.
    net.set_guest_mac(STRANGER_MAC);
    assert_eq!(
        udhcpc(&net, dir.path(), 2),
        None,
        "a stranger gets no lease"
    );
    wait_stats(&servers, "the stranger's requests counted", |s| {
        s.total.ignored >= 1
    });
    let replies = servers.stats().total.replies;

    // A new lease table reaches the running responder.
    net.set_guest_mac(CLIENT_MAC);
    let second_ip = Ipv4Addr::new(10, 77, 0, 42);
    assert_eq!(servers.sync(wanted(second_ip)), vec![]);
    let got = udhcpc(&net, dir.path(), 5).expect("udhcpc gets the new lease");
    assert_eq!(got.get("ip").map(String::as_str), Some("10.77.0.42"));
    assert!(servers.stats().total.replies >= replies + 2);

    // Removed: the thread stops within its read timeout, and nobody answers any more.
    let started = Instant::now();
    assert_eq!(servers.sync(BTreeMap::new()), vec![]);
    let stop_time = started.elapsed();
    println!("responder stopped in {stop_time:?}");
    assert!(stop_time < Duration::from_millis(1500), "{stop_time:?}");
    let stats = servers.stats();
    assert!(stats.interfaces.is_empty(), "{stats:?}");
    assert!(
        stats.total.replies >= 4,
        "removed interfaces still count: {stats:?}"
    );
    assert_eq!(udhcpc(&net, dir.path(), 2), None, "no responder, no lease");
}

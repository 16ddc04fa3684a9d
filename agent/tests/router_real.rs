//! The router driver for real: `ip`, `nft`, `sysctl`, `arping` in router namespaces. Needs root
//! and iproute2, nftables, procps, iputils (arping, ping), python3 and bash; skips, saying why,
//! otherwise.
//!
//! Each test runs itself again inside a private network namespace and a private mount namespace
//! with its own tmpfs on `/run/netns` (`unshare --net --mount`), as an agent inside a test host
//! would: every namespace, bridge and veth it makes is invisible to the machine and to
//! concurrent runs, and dies with it even if a guard does not run. No address of the test
//! ranges (10.91.0.0/24 tenant, 10.92.0.0/24 external) is ever on the test's own namespace,
//! which has no route at all: traffic cannot leave the machine (checked with `ip route get`).
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::net::conformance_router::{desired_state, run_router_suite, RouterFixture};
use flotilla_agent::net::router::{routers_from_desired, RouterSpec, Step};
use flotilla_agent::net::router_linux::{IpRouterDriver, RouterConfig, RouterReconciler};
use flotilla_agent::testbed::{find_tool, missing_root_or_tools};

const INNER: &str = "FLOTILLA_ROUTER_REAL_INNER";
const TOOLS: &[&str] = &[
    "ip", "nft", "sysctl", "arping", "ping", "unshare", "mount", "python3", "bash", "timeout",
];

fn missing_prerequisite() -> Option<String> {
    missing_root_or_tools("network namespaces and nftables need root", TOOLS)
}

/// True inside the isolated run. Outside, runs `test` again isolated (or says why it skips)
/// and returns false.
fn isolated(test: &str) -> bool {
    if std::env::var_os(INNER).is_some() {
        return true;
    }
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping {test}: {why}");
        return false;
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = Command::new(tool("unshare"))
        .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; mkdir -p /run/netns; mount -t tmpfs -o size=1m flotilla-netns /run/netns; \
             exec \"$0\" \"$@\"",
        )
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .status()
        .expect("unshare");
    assert!(
        status.success(),
        "the isolated run of {test} failed (its output is above)"
    );
    false
}

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `args` (in namespace `ns` if given) to completion.
fn cmd(ns: Option<&str>, args: &[&str]) -> Output {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new(tool("ip"));
            c.args(["netns", "exec", ns]);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(tool(args[0]));
            c.args(&args[1..]);
            c
        }
    };
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Like [`cmd`], panicking with stderr on failure; stdout.
fn ok(ns: Option<&str>, args: &[&str]) -> String {
    let out = cmd(ns, args);
    assert!(
        out.status.success(),
        "{ns:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it holds, panicking with `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = cmd(None, &["ip", "netns", "delete", &self.0]);
    }
}

struct Link(&'static str);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = cmd(None, &["ip", "link", "delete", "dev", self.0]);
    }
}

/// A process started in a namespace, killed by pid on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP listener in `ns` on `port` that prints "ready", then each client's address.
fn listener(ns: &str, port: u16, log: &Path) -> Proc {
    let script = "import socket, sys\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('0.0.0.0', int(sys.argv[1])))\n\
                  s.listen()\n\
                  print('ready', flush=True)\n\
                  while True:\n    c, a = s.accept()\n    print(a[0], flush=True)\n    c.close()\n";
    let python = if Path::new("/usr/bin/python3").is_file() {
        PathBuf::from("/usr/bin/python3")
    } else {
        tool("python3")
    };
    let child = Command::new(tool("ip"))
        .args(["netns", "exec", ns])
        .arg(python)
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(fs::File::create(log).expect("log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let proc = Proc(child);
    wait_until(Duration::from_secs(10), "the listener is ready", || {
        fs::read_to_string(log)
            .unwrap_or_default()
            .contains("ready")
    });
    proc
}

/// Whether a TCP connection from `ns` to `addr:port` is accepted (bash's /dev/tcp).
fn connects(ns: &str, addr: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    cmd(Some(ns), &["timeout", "3", "bash", "-c", &script])
        .status
        .success()
}

fn pings(ns: &str, addr: &str) -> bool {
    cmd(Some(ns), &["ping", "-c", "1", "-W", "1", addr])
        .status
        .success()
}

fn logged(log: &Path, line: &str) -> bool {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l == line)
}

#[test]
fn router_conformance_real() {
    if !isolated("router_conformance_real") {
        return;
    }
    let driver = IpRouterDriver::new(RouterConfig::default());
    run_router_suite(&RouterFixture {
        driver: &driver,
        seed: std::process::id(),
    });
}

fn converge(r: &mut RouterReconciler, d: &IpRouterDriver, specs: &[RouterSpec]) -> Vec<Step> {
    let report = r.converge(d, specs).expect("observe");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    report.executed
}

#[test]
fn floating_ip_nat_real() {
    if !isolated("floating_ip_nat_real") {
        return;
    }
    let pid = std::process::id();
    let dir = tempfile::tempdir().expect("tempdir");
    // The "external" network (a client at 10.92.0.50) and the "tenant" playing the guest
    // (10.91.0.5, default route via the gateway 10.91.0.1), each behind a bridge without
    // addresses in the test's namespace.
    let ext = Netns(format!("flx-ext{pid}"));
    let ten = Netns(format!("flx-ten{pid}"));
    for ns in [&ext, &ten] {
        ok(None, &["ip", "netns", "add", &ns.0]);
        ok(Some(&ns.0), &["ip", "link", "set", "dev", "lo", "up"]);
    }
    let _links = [
        Link("br-ext"),
        Link("br-ten"),
        Link("vx-ext"),
        Link("vx-ten"),
    ];
    for (br, veth, ns, addr) in [
        ("br-ext", "vx-ext", &ext.0, "10.92.0.50/24"),
        ("br-ten", "vx-ten", &ten.0, "10.91.0.5/24"),
    ] {
        ok(None, &["ip", "link", "add", "name", br, "type", "bridge"]);
        ok(None, &["ip", "link", "set", "dev", br, "up"]);
        let peer = [
            "ip", "link", "add", "name", veth, "type", "veth", "peer", "name", "eth0",
        ];
        ok(None, &[&peer[..], &["netns", ns.as_str()]].concat());
        ok(
            None,
            &["ip", "link", "set", "dev", veth, "master", br, "up"],
        );
        ok(Some(ns), &["ip", "addr", "add", addr, "dev", "eth0"]);
        ok(Some(ns), &["ip", "link", "set", "dev", "eth0", "up"]);
    }
    ok(
        Some(&ten.0),
        &["ip", "route", "add", "default", "via", "10.91.0.1"],
    );
    // Safety: the test's own namespace routes nowhere; the namespaces route only to the bridges.
    assert!(!cmd(None, &["ip", "route", "get", "10.92.0.10"])
        .status
        .success());
    let route = ok(Some(&ext.0), &["ip", "-o", "route", "get", "10.92.0.10"]);
    assert!(
        route.contains("dev eth0") && !route.contains(" via "),
        "{route}"
    );
    let route = ok(Some(&ten.0), &["ip", "-o", "route", "get", "10.92.0.50"]);
    assert!(route.contains("via 10.91.0.1 dev eth0"), "{route}");

    let desired = desired_state(pid, &[("10.92.0.10", "10.91.0.5", 0)]);
    let derived = routers_from_desired(&desired);
    assert_eq!(derived.errors, vec![]);
    let specs = derived.routers;
    let spec = specs[0].clone();
    let (fl_ns, qg) = (spec.namespace.as_str(), spec.external.inside.as_str());
    let driver = IpRouterDriver::new(RouterConfig::default());
    let mut r = RouterReconciler::new();
    let started = Instant::now();
    converge(&mut r, &driver, &specs);
    let built = driver.counts();
    eprintln!("router built in {:.2?}: {built:?}", started.elapsed());
    // What the OVS reconcile does on a host: plug the peers into their bridges.
    ok(
        None,
        &[
            "ip",
            "link",
            "set",
            "dev",
            spec.internal_peer(),
            "master",
            "br-ten",
        ],
    );
    ok(
        None,
        &[
            "ip",
            "link",
            "set",
            "dev",
            spec.external_peer(),
            "master",
            "br-ext",
        ],
    );

    // DNAT: the external client reaches the tenant at the floating IP, with its own address.
    wait_until(
        Duration::from_secs(20),
        "the floating IP answers pings",
        || pings(&ext.0, "10.92.0.10"),
    );
    let ten_log = dir.path().join("tenant.log");
    let _ten_listener = listener(&ten.0, 8080, &ten_log);
    assert!(
        connects(&ext.0, "10.92.0.10", 8080),
        "TCP to the floating IP"
    );
    wait_until(
        Duration::from_secs(5),
        "the tenant sees the client's address",
        || logged(&ten_log, "10.92.0.50"),
    );
    // SNAT: the tenant's connections leave from the floating IP.
    let ext_log = dir.path().join("external.log");
    let _ext_listener = listener(&ext.0, 8081, &ext_log);
    assert!(connects(&ten.0, "10.92.0.50", 8081), "TCP from the tenant");
    wait_until(
        Duration::from_secs(5),
        "the client sees the floating IP",
        || logged(&ext_log, "10.92.0.10"),
    );

    // Idle rounds run no mutating command (the new floating IP is announced twice more).
    let mut announcements = Vec::new();
    for _ in 0..3 {
        let before = driver.counts();
        let done = converge(&mut r, &driver, &specs);
        let after = driver.counts();
        assert!(done.iter().all(|s| !s.is_mutation()), "{done:#?}");
        assert_eq!(
            after.mutations, before.mutations,
            "an idle round mutates nothing"
        );
        eprintln!(
            "idle round: {} read commands, {} announcements, 0 mutations",
            after.reads - before.reads,
            after.announcements - before.announcements
        );
        announcements.push(after.announcements - before.announcements);
    }
    assert_eq!(announcements, vec![1, 1, 0]);

    // A lost floating IP (its routes go with qg's last address) is re-added and announced: the
    // external client's stale ARP entry is corrected by the gratuitous ARP.
    let qg_mac = spec.external.mac.to_string();
    ok(
        Some(&ext.0),
        &[
            "ip",
            "neigh",
            "replace",
            "10.92.0.10",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "eth0",
            "nud",
            "stale",
        ],
    );
    ok(
        None,
        &[
            "ip",
            "-n",
            fl_ns,
            "addr",
            "delete",
            "10.92.0.10/32",
            "dev",
            qg,
        ],
    );
    let done = converge(&mut r, &driver, &specs);
    assert!(
        done.iter().any(|s| matches!(s, Step::Announce { .. })),
        "{done:#?}"
    );
    assert_eq!(
        done.iter()
            .filter(|s| matches!(s, Step::AddRoute { .. }))
            .count(),
        2
    );
    wait_until(
        Duration::from_secs(10),
        "the client learns the floating IP's MAC",
        || {
            let neigh = ok(
                Some(&ext.0),
                &["ip", "neigh", "show", "10.92.0.10", "dev", "eth0"],
            );
            neigh.contains(&qg_mac) || {
                converge(&mut r, &driver, &specs);
                false
            }
        },
    );
    assert!(pings(&ext.0, "10.92.0.10"));

    // A deleted nft table: the floating IP is the router's own (TCP refused), until repaired.
    ok(Some(fl_ns), &["nft", "delete", "table", "ip", "flotilla"]);
    assert!(
        !connects(&ext.0, "10.92.0.10", 8080),
        "no DNAT without the table"
    );
    let done = converge(&mut r, &driver, &specs);
    assert!(
        done.iter().any(|s| matches!(s, Step::LoadNft { .. })),
        "{done:#?}"
    );
    assert!(connects(&ext.0, "10.92.0.10", 8080), "DNAT is back");

    // Lost routes: the router cannot answer the client, until repaired.
    ok(None, &["ip", "-n", fl_ns, "route", "delete", "default"]);
    ok(
        None,
        &[
            "ip",
            "-n",
            fl_ns,
            "route",
            "delete",
            "10.92.0.0/24",
            "dev",
            qg,
        ],
    );
    assert!(!pings(&ext.0, "10.92.0.10"), "no route back to the client");
    let done = converge(&mut r, &driver, &specs);
    assert_eq!(
        done.iter().filter(|s| s.is_mutation()).count(),
        2,
        "{done:#?}"
    );
    assert!(pings(&ext.0, "10.92.0.10"), "routes are back");
    let before = driver.counts();
    converge(&mut r, &driver, &specs);
    assert_eq!(
        driver.counts().mutations,
        before.mutations,
        "repaired, then idle"
    );

    // A namespace of ours nobody wants (as after an agent restart) is removed.
    ok(None, &["ip", "netns", "add", "flr-deadbeef"]);
    converge(&mut r, &driver, &specs);
    assert!(!Path::new("/run/netns/flr-deadbeef").exists());

    // The floating IP goes: the router namespace and its peers go, the tenant is unreachable.
    let none = routers_from_desired(&desired_state(pid, &[])).routers;
    let done = converge(&mut r, &driver, &none);
    assert!(done.contains(&Step::DeleteNamespace {
        namespace: spec.namespace.clone()
    }));
    assert!(!Path::new("/run/netns").join(fl_ns).exists());
    assert!(!ok(None, &["ip", "netns", "list"]).contains(fl_ns));
    assert!(
        !cmd(None, &["ip", "link", "show", "dev", spec.external_peer()])
            .status
            .success()
    );
    assert!(
        !pings(&ext.0, "10.92.0.10"),
        "unreachable without the floating IP"
    );
    assert!(!connects(&ext.0, "10.92.0.10", 8080));
    let before = driver.counts();
    assert!(converge(&mut r, &driver, &none).is_empty());
    assert_eq!(
        driver.counts().reads - before.reads,
        1,
        "no router: one listing"
    );
}

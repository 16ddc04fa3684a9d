//! Test and benchmark infrastructure, not used by the agent: a private Open vSwitch for real
//! tests and benchmarks: this test's own ovsdb-server and ovs-vswitchd
//! (userspace datapath) in a temp directory. Bridges and internal ports of the netdev datapath
//! are tap devices that outlive ovs-vswitchd, so ovs-vswitchd runs in its own network namespace
//! (`unshare --net`, or a named one the test made; the drivers reach it through unix sockets,
//! which namespaces do not separate), and the guard deletes every bridge before it stops both
//! daemons by pid.
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::driver::ovs::{OvsConfig, OvsVsctl, VSwitch};
use crate::testbed::{find_tool, missing_root_or_tools};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const TOOLS: &[&str] = &[
    "unshare",
    "nsenter",
    "ip",
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
];

/// Why a private OVS cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if let Some(why) = missing_root_or_tools("ovs-vswitchd's netdev bridges are tap devices", TOOLS)
    {
        return Some(why);
    }
    if !Path::new(SCHEMA).is_file() {
        return Some(format!("{SCHEMA} is missing (openvswitch-common)"));
    }
    None
}

pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a tool to completion, panicking with its stderr on failure.
pub fn run(name: &str, args: &[&str], env_rundir: &Path) {
    let out = Command::new(tool(name))
        .args(args)
        .env("OVS_RUNDIR", env_rundir)
        .env("OVS_DBDIR", env_rundir)
        .env("OVS_LOGDIR", env_rundir)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until it returns true, panicking with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Our ovsdb-server and ovs-vswitchd; on drop, every bridge is deleted and both are stopped by
/// pid.
pub struct OvsDaemons {
    pub dir: PathBuf,
    /// The named network namespace ovs-vswitchd runs in, if the test gave one.
    pub netns: Option<String>,
}

impl OvsDaemons {
    pub fn start(dir: &Path) -> OvsDaemons {
        Self::start_in(dir, None)
    }

    /// With `netns`, ovs-vswitchd runs in that (existing) named namespace, where the test can
    /// reach its devices.
    pub fn start_in(dir: &Path, netns: Option<&str>) -> OvsDaemons {
        let started = Instant::now();
        let p = |f: &str| dir.join(f).display().to_string();
        run("ovsdb-tool", &["create", &p("conf.db"), SCHEMA], dir);
        let daemons = OvsDaemons {
            dir: dir.to_path_buf(),
            netns: netns.map(str::to_string),
        };
        run(
            "ovsdb-server",
            &[
                &p("conf.db"),
                &format!("--remote=punix:{}", p("db.sock")),
                &format!("--pidfile={}", p("ovsdb-server.pid")),
                &format!("--unixctl={}", p("ovsdb-server.ctl")),
                &format!("--log-file={}", p("ovsdb-server.log")),
                "--detach",
            ],
            dir,
        );
        wait_until(Duration::from_secs(10), "ovsdb-server's socket", || {
            dir.join("db.sock").exists()
        });
        run(
            "ovs-vsctl",
            &[&format!("--db=unix:{}", p("db.sock")), "--no-wait", "init"],
            dir,
        );
        // In its own network namespace: the netdev datapath makes a tap device named
        // `ovs-netdev`, one per namespace, so two instances (parallel tests, another run)
        // cannot share one; and the taps vanish with the namespace even after a crash.
        let vswitchd = tool("ovs-vswitchd").display().to_string();
        let db = format!("unix:{}", p("db.sock"));
        let pidfile = format!("--pidfile={}", p("ovs-vswitchd.pid"));
        let ctl = format!("--unixctl={}", p("ovs-vswitchd.ctl"));
        let log = format!("--log-file={}", p("ovs-vswitchd.log"));
        let daemon_args = [vswitchd.as_str(), &db, &pidfile, &ctl, &log, "--detach"];
        match netns {
            Some(ns) => {
                let mut args = vec!["netns", "exec", ns];
                args.extend(daemon_args);
                run("ip", &args, dir);
            }
            None => {
                let mut args = vec!["--net", "--"];
                args.extend(daemon_args);
                run("unshare", &args, dir);
            }
        }
        wait_until(Duration::from_secs(10), "ovs-vswitchd's pid file", || {
            read_pid(&dir.join("ovs-vswitchd.pid")).is_some_and(alive)
        });
        eprintln!(
            "timing: ovsdb-server + ovs-vswitchd up in {:.2?}",
            started.elapsed()
        );
        daemons
    }

    pub fn config(&self) -> OvsConfig {
        OvsConfig::with_rundir(&self.dir)
    }

    /// Network devices in ovs-vswitchd's namespace whose names start with `prefix`.
    pub fn devices(&self, prefix: &str) -> Vec<String> {
        let pid = read_pid(&self.dir.join("ovs-vswitchd.pid")).expect("ovs-vswitchd's pid");
        let out = Command::new(tool("nsenter"))
            .args([
                "--target",
                &pid.to_string(),
                "--net",
                "ip",
                "-o",
                "link",
                "show",
            ])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- ovs-vswitchd.log\n{}\n--- ovsdb-server.log\n{}",
            read("ovs-vswitchd.log"),
            read("ovsdb-server.log")
        )
    }

    pub fn stop(&self, daemon: &str) {
        let Some(pid) = read_pid(&self.dir.join(format!("{daemon}.pid"))) else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() >= deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OvsDaemons {
    fn drop(&mut self) {
        // Userspace tap devices outlive ovs-vswitchd: delete the bridges while it runs.
        if let Ok(vs) = OvsVsctl::new(self.config()) {
            for b in vs.list_bridges().unwrap_or_default() {
                if let Err(e) = vs.delete_bridge(&b.name) {
                    eprintln!("could not delete bridge {}: {e}", b.name);
                }
            }
        }
        self.stop("ovs-vswitchd");
        self.stop("ovsdb-server");
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        run_quiet(&["ip", "netns", "del", &name]);
        run("ip", &["netns", "add", &name], Path::new("/"));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quiet(&["ip", "netns", "del", &self.0]);
    }
}

/// Moves the calling thread (and what it spawns from now on) into the namespace.
pub fn enter(ns: &str) {
    let f = fs::File::open(Path::new("/run/netns").join(ns)).expect("the namespace's file");
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
}

fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

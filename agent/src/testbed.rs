//! Test and benchmark infrastructure, not used by the agent itself: two compute "hosts" on
//! one machine for real migration tests and benchmarks (`agent/tests/migration_real.rs`,
//! `agent/tests/e2e_moves_real.rs`, `flotilla-bench migrate-real`). Each host is a network
//! namespace (a veth on a Linux bridge, its own 10.x address) plus a private mount namespace
//! with its own `/etc/libvirt`, `/var/lib/libvirt`, `/run/libvirt`, `/var/cache/libvirt` and
//! `/var/log/libvirt`, running its own `virtlogd` and `libvirtd --listen` (TCP without auth,
//! a distinct host UUID, QEMU migrating on the host's address). See the recipe
//! `/work/shared/recipes/two-hosts.sh`.
//!
//! With networking ([`TwoHosts::start_with_networking`]) each host also runs its own
//! ovsdb-server and ovs-vswitchd (userspace datapath, `/run/openvswitch` bind-mounted from the
//! host's directory so libvirt's `ovs-vsctl` reaches it) with `br-phy` holding a second veth and
//! the host's tunnel address (VXLAN underlay, its own bridge), and `br-ex` holding a third veth
//! on an "external" segment shared with an `external` namespace (the outside world of floating
//! IPs). `/run/netns` is private per host too, so each agent's router namespaces are its own.
//!
//! Like a test fixture, setup panics (with the failing command's output) when something it
//! needs does not work; check [`missing_prerequisite`] first. Needs root.
//!
//! Safety: the bridge gets an address in the root namespace first, and setup checks that
//! `ip route get <host address>` names the bridge before any traffic, so test traffic only
//! ever goes to these namespaces (or loopback), never off the machine by the default route.
//! Names carry the process id, so concurrent runs do not collide. Everything is torn down on
//! drop by pid (QEMU pid files, libvirtd's own pid, virtlogd's pid file), never by name.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::driver::libvirt::LibvirtHypervisor;

/// Why a real-component test cannot run here, if it cannot: not root (`why_root` says what
/// needs it), or one of `tools` is not installed.
pub fn missing_root_or_tools(why_root: &str, tools: &[&str]) -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if uid != Some("0") {
        return Some(format!("not root ({why_root})"));
    }
    tools
        .iter()
        .find(|t| find_tool(t).is_none())
        .map(|tool| format!("{tool} is not installed (run deploy/install-deps.sh as root)"))
}

/// Why a private libvirtd with the QEMU driver cannot run here, if it cannot: not root, or
/// libvirtd, virtlogd, qemu-system-x86_64, qemu-img, unshare or virsh missing.
pub fn libvirt_missing_prerequisite() -> Option<String> {
    missing_root_or_tools(
        "libvirtd with the QEMU driver and tap devices need root",
        &[
            "libvirtd",
            "virtlogd",
            "qemu-system-x86_64",
            "qemu-img",
            "unshare",
            "virsh",
        ],
    )
}

/// Where `name` is installed: on `PATH`, or in `/usr/sbin`, `/usr/bin`, `/sbin`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Why two hosts cannot be set up here, if they cannot (on top of
/// [`libvirt_missing_prerequisite`]: `ip`, `qemu-io` and network namespaces).
pub fn missing_prerequisite() -> Option<String> {
    if let Some(r) = libvirt_missing_prerequisite() {
        return Some(r);
    }
    for tool in ["ip", "qemu-io"] {
        if find_tool(tool).is_none() {
            return Some(format!("{tool} is not installed (iproute2, qemu-utils)"));
        }
    }
    if !Path::new("/proc/sys/net").exists() {
        return Some("no network namespaces here".into());
    }
    None
}

/// Runs a command, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One host: namespace, address, directories, daemons.
pub struct Host {
    pub name: String,
    pub netns: String,
    /// VXLAN endpoint on `br-phy` (with networking).
    pub tunnel_address: Option<String>,
    /// The host end of the veth on the bridge (set it down to cut the host off).
    pub veth: String,
    pub address: String,
    pub dir: PathBuf,
    libvirtd: Option<Child>,
}

impl Host {
    /// The libvirt URI of this host's libvirtd through its unix socket (works from the root
    /// namespace: the socket lives in the test's directory).
    pub fn uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            self.dir.join("run/libvirt-sock").display()
        )
    }

    /// The URI other hosts' libvirtd reach this one at (peer-to-peer migration).
    pub fn tcp_uri(&self) -> String {
        format!("qemu+tcp://{}/system", self.address)
    }

    pub fn logs(&self) -> String {
        let read = |p: &str| fs::read(self.dir.join(p)).unwrap_or_default();
        let tail = |s: Vec<u8>| {
            let start = s.len().saturating_sub(8000);
            String::from_utf8_lossy(&s[start..]).into_owned()
        };
        format!(
            "--- {} libvirtd.out\n{}\n--- libvirtd.log (tail)\n{}",
            self.name,
            String::from_utf8_lossy(&read("libvirtd.out")),
            tail(read("log/libvirtd.log"))
        )
    }

    /// Cuts the host off the bridge (or reconnects it).
    pub fn set_link(&self, up: bool) {
        run(
            "ip",
            &["link", "set", &self.veth, if up { "up" } else { "down" }],
        );
    }

    /// The pid of the host's libvirtd: its namespaces are the host's (`nsenter -t`).
    pub fn pid(&self) -> Option<u32> {
        self.libvirtd.as_ref().map(Child::id)
    }

    /// Open vSwitch's run directory of this host (with networking).
    pub fn ovs_dir(&self) -> PathBuf {
        self.dir.join("ovs")
    }

    /// Runs a command in the host's network and mount namespaces.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        let pid = self.pid().expect("the host is running").to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "--", program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter {program}: {e}"))
    }

    /// Our own Open vSwitch and the bridges the host's configuration names.
    fn ovs_script(&self) -> String {
        let Some(tunnel) = &self.tunnel_address else {
            return String::new();
        };
        format!(
            "mkdir -p /run/openvswitch /run/netns
             mount --bind '{ovs}' /run/openvswitch
             mount --bind '{netns}' /run/netns
             export OVS_RUNDIR=/run/openvswitch OVS_LOGDIR=/run/openvswitch OVS_DBDIR=/run/openvswitch
             [ -f /run/openvswitch/conf.db ] || ovsdb-tool create /run/openvswitch/conf.db              /usr/share/openvswitch/vswitch.ovsschema
             ovsdb-server /run/openvswitch/conf.db --remote=punix:/run/openvswitch/db.sock              --pidfile=/run/openvswitch/ovsdb-server.pid --log-file --detach
             ovs-vsctl --no-wait init
             ovs-vswitchd --pidfile=/run/openvswitch/ovs-vswitchd.pid --log-file --detach
             ovs-vsctl --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev              -- --may-exist add-port br-phy eth1
             ovs-vsctl --may-exist add-br br-ex -- set bridge br-ex datapath_type=netdev              -- --may-exist add-port br-ex eth2
             ip link set eth1 up
ip link set eth2 up
             ip addr replace {tunnel}/24 dev br-phy
ip link set br-phy up
",
            ovs = self.ovs_dir().display(),
            netns = self.dir.join("netns").display(),
        )
    }

    fn start_daemons(&mut self) {
        let dirs = [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ];
        let mut script = String::from("set -e\n");
        for (own, system) in dirs {
            script += &format!(
                "mkdir -p {system}\nmount --bind '{}' {system}\n",
                self.dir.join(own).display()
            );
        }
        script += &self.ovs_script();
        script += &format!(
            "virtlogd -d -f /etc/libvirt/virtlogd.conf -p '{}'\n\
             exec libvirtd --listen -f /etc/libvirt/libvirtd.conf -p '{}'\n",
            self.dir.join("virtlogd.pid").display(),
            self.dir.join("libvirtd.pid").display()
        );
        let log = fs::File::create(self.dir.join("libvirtd.out")).unwrap();
        // `ip netns exec` and `unshare` exec in place: the child's pid is libvirtd's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "unshare", "-m"])
            .args(["--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ip netns exec");
        self.libvirtd = Some(child);
    }

    /// Connects to this host's libvirtd once it answers.
    pub fn connect(&mut self) -> LibvirtHypervisor {
        let uri = self.uri();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.libvirtd.as_mut().map(Child::try_wait) {
                panic!(
                    "libvirtd of {} exited ({status}):\n{}",
                    self.name,
                    self.logs()
                );
            }
            if self.dir.join("run/libvirt-sock").exists() {
                match LibvirtHypervisor::connect(&uri) {
                    Ok(hv) => return hv,
                    Err(e) if Instant::now() >= deadline => panic!("{e}\n{}", self.logs()),
                    Err(_) => {}
                }
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd of {} did not start:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Powers the host off: every process in its network namespace (QEMU, libvirtd, virtlogd)
    /// is killed at once with SIGKILL, by the pids `ip netns pids` names, as a power cut would.
    pub fn power_off(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = run("ip", &["netns", "pids", &self.netns]);
            let pids: Vec<&str> = pids.split_whitespace().collect();
            if pids.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes of {} survived SIGKILL: {pids:?}",
                self.name
            );
            for pid in pids {
                run_quiet("kill", &["-KILL", pid]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = self.libvirtd.take() {
            let _ = child.wait();
        }
    }

    /// Starts the host's daemons again after [`Self::power_off`].
    pub fn power_on(&mut self) {
        self.start_daemons();
    }

    fn stop(&mut self) {
        if let Ok(entries) = fs::read_dir(self.dir.join("run/qemu")) {
            for entry in entries.flatten() {
                // driver.pid is libvirtd's own lock file, stopped below.
                let qemu = entry.path().extension().is_some_and(|e| e == "pid")
                    && entry.file_name() != "driver.pid";
                if qemu {
                    if let Ok(pid) = fs::read_to_string(entry.path()) {
                        run_quiet("kill", &["-KILL", pid.trim()]);
                    }
                }
            }
        }
        if let Some(mut child) = self.libvirtd.take() {
            run_quiet("kill", &["-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Ok(pid) = fs::read_to_string(self.dir.join("virtlogd.pid")) {
            run_quiet("kill", &["-TERM", pid.trim()]);
        }
        for daemon in ["ovs-vswitchd", "ovsdb-server"] {
            if let Ok(pid) = fs::read_to_string(self.ovs_dir().join(format!("{daemon}.pid"))) {
                run_quiet("kill", &["-TERM", pid.trim()]);
            }
        }
    }
}

/// The "outside world" of floating IPs: a namespace on the hosts' external segment.
pub struct External {
    pub netns: String,
    /// Its address on the segment, and the segment's CIDR.
    pub address: String,
    pub cidr: String,
    bridge: String,
    veth: String,
}

impl External {
    /// Runs a command in the external namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"))
    }
}

/// The bridge and both hosts; torn down on drop.
pub struct TwoHosts {
    pub bridge: String,
    pub hosts: Vec<Host>,
    /// With networking: the tunnel underlay's bridge, and the external segment.
    pub underlay: Option<String>,
    pub external: Option<External>,
}

impl TwoHosts {
    /// Sets up the bridge, `hA` and `hB` under `root`, and starts their daemons.
    pub fn start(root: &Path) -> TwoHosts {
        Self::start_inner(root, false)
    }

    /// [`Self::start`] plus each host's Open vSwitch, tunnel underlay and external segment
    /// (see the module doc). Needs openvswitch-switch besides [`missing_prerequisite`].
    pub fn start_with_networking(root: &Path) -> TwoHosts {
        Self::start_inner(root, true)
    }

    fn start_inner(root: &Path, networking: bool) -> TwoHosts {
        let n = std::process::id() % 100_000;
        // A /24 per test process, so parallel runs do not share addresses.
        let net = 20 + std::process::id() % 200;
        let bridge = format!("flb{n}");
        let mut me = TwoHosts {
            bridge: bridge.clone(),
            hosts: Vec::new(),
            underlay: networking.then(|| format!("flu{n}")),
            external: None,
        };
        if networking {
            me.external = Some(External {
                netns: format!("flns{n}ext"),
                address: format!("10.79.{net}.100"),
                cidr: format!("10.79.{net}.0/24"),
                bridge: format!("fle{n}"),
                veth: format!("flv{n}ext"),
            });
            me.setup_segments();
        }
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.77.{net}.254/24"),
                "dev",
                &bridge,
            ],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        for (i, h) in ["hA", "hB"].into_iter().enumerate() {
            let address = format!("10.77.{net}.{}", i + 1);
            // Before any traffic: the route to the host must be our bridge.
            let route = run("ip", &["-o", "route", "get", &address]);
            assert!(
                route.contains(&format!("dev {bridge} ")),
                "no local route to {address} through {bridge}: {route}"
            );
            let host = Host {
                name: h.to_owned(),
                netns: format!("flns{n}{h}"),
                tunnel_address: networking.then(|| format!("10.78.{net}.{}", i + 1)),
                veth: format!("flv{n}{h}"),
                address,
                dir: root.join(h),
                libvirtd: None,
            };
            run("ip", &["netns", "add", &host.netns]);
            me.hosts.push(host);
            let host = me.hosts.last_mut().unwrap();
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &host.veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &host.netns,
                ],
            );
            run("ip", &["link", "set", &host.veth, "master", &bridge, "up"]);
            let ns = host.netns.clone();
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", host.address),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            for d in ["etc", "lib", "run", "cache", "log", "ovs", "netns"] {
                fs::create_dir_all(host.dir.join(d)).unwrap();
            }
            if networking {
                let (underlay, external) = (
                    me.underlay.clone().unwrap(),
                    me.external.as_ref().unwrap().bridge.clone(),
                );
                let host = me.hosts.last().unwrap();
                for (dev, root_end, segment) in [
                    ("eth1", format!("flu{n}{h}"), underlay),
                    ("eth2", format!("fle{n}{h}"), external),
                ] {
                    run(
                        "ip",
                        &[
                            "link",
                            "add",
                            &root_end,
                            "type",
                            "veth",
                            "peer",
                            "name",
                            dev,
                            "netns",
                            &host.netns,
                        ],
                    );
                    run("ip", &["link", "set", &root_end, "master", &segment, "up"]);
                }
            }
            let host = me.hosts.last_mut().unwrap();
            fs::write(
                host.dir.join("etc/libvirtd.conf"),
                format!(
                    "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{}\"\nauth_tcp = \"none\"\n\
                     auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nunix_sock_group = \"root\"\n\
                     host_uuid = \"00000000-0000-4000-8000-00000000000{}\"\n\
                     keepalive_interval = 2\nkeepalive_count = 3\n\
                     log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                    host.address,
                    i + 1
                ),
            )
            .unwrap();
            fs::write(
                host.dir.join("etc/qemu.conf"),
                format!(
                    "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
                     security_driver = \"none\"\ncgroup_controllers = [ ]\nstdio_handler = \"file\"\n\
                     migration_address = \"{0}\"\nmigration_host = \"{0}\"\n",
                    host.address
                ),
            )
            .unwrap();
            fs::write(host.dir.join("etc/virtlogd.conf"), "").unwrap();
            host.start_daemons();
        }
        me
    }

    pub fn a(&mut self) -> &mut Host {
        &mut self.hosts[0]
    }

    pub fn b(&mut self) -> &mut Host {
        &mut self.hosts[1]
    }
}

impl TwoHosts {
    /// The underlay and external bridges (no addresses in this namespace: only the hosts and
    /// the external namespace talk on them) and the external namespace.
    fn setup_segments(&self) {
        let (underlay, ext) = (
            self.underlay.as_ref().unwrap(),
            self.external.as_ref().unwrap(),
        );
        for b in [underlay, &ext.bridge] {
            run("ip", &["link", "add", b, "type", "bridge"]);
            run("ip", &["link", "set", b, "up"]);
        }
        run("ip", &["netns", "add", &ext.netns]);
        run(
            "ip",
            &[
                "link", "add", &ext.veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ext.netns,
            ],
        );
        run(
            "ip",
            &["link", "set", &ext.veth, "master", &ext.bridge, "up"],
        );
        run(
            "ip",
            &[
                "-n",
                &ext.netns,
                "addr",
                "add",
                &format!("{}/24", ext.address),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", &ext.netns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ext.netns, "link", "set", "lo", "up"]);
        // It plays a machine on a wire: frames leave with complete checksums (a veth would
        // leave them to the receiver, which Open vSwitch's userspace datapath does not fill in).
        run(
            "ip",
            &[
                "netns", "exec", &ext.netns, "ethtool", "-K", "eth0", "tx", "off",
            ],
        );
    }

    /// Checks, once the hosts run, that tunnel and external traffic stay on our segments.
    pub fn check_local_routes(&self) {
        for h in &self.hosts {
            let Some(peer) = self.hosts.iter().find(|o| o.name != h.name) else {
                continue;
            };
            let to = peer.tunnel_address.as_deref().expect("networking");
            let out = h.exec("ip", &["-o", "route", "get", to]);
            let route = String::from_utf8_lossy(&out.stdout);
            assert!(
                route.contains("dev br-phy "),
                "{}: the route to {to} is not br-phy: {route}",
                h.name
            );
        }
        if let Some(ext) = &self.external {
            let probe = ext
                .address
                .rsplit_once('.')
                .map(|(p, _)| format!("{p}.50"))
                .unwrap();
            let route = run("ip", &["-n", &ext.netns, "-o", "route", "get", &probe]);
            assert!(route.contains("dev eth0 "), "external: {route}");
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        let n = std::process::id() % 100_000;
        for h in &mut self.hosts {
            h.stop();
            run_quiet("ip", &["netns", "del", &h.netns]);
            run_quiet("ip", &["link", "del", &h.veth]);
            for end in [format!("flu{n}{}", h.name), format!("fle{n}{}", h.name)] {
                run_quiet("ip", &["link", "del", &end]);
            }
        }
        if let Some(ext) = &self.external {
            run_quiet("ip", &["netns", "del", &ext.netns]);
            run_quiet("ip", &["link", "del", &ext.veth]);
            run_quiet("ip", &["link", "del", &ext.bridge]);
        }
        if let Some(u) = &self.underlay {
            run_quiet("ip", &["link", "del", u]);
        }
        run_quiet("ip", &["link", "del", &self.bridge]);
    }
}

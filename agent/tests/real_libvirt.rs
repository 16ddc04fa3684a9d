//! The Hypervisor conformance suite and a real boot against a real libvirtd with the QEMU
//! driver (software emulation, domain type `qemu`), with real qcow2 overlays from
//! [`QemuImgDisks`].
//!
//! The test starts its own `virtlogd` and `libvirtd` in a private mount namespace, where its
//! own directories are bind-mounted over `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//! `/var/cache/libvirt` and `/var/log/libvirt`, so it neither needs nor disturbs a system
//! libvirtd. It talks to it through `qemu+unix:///system?socket=…` and stops every process it
//! started by pid. The guest is a Debian kernel with a busybox initramfs
//! (`tests/data/make-guest.sh`, cached in the target directory) that prints `tick N` on its
//! serial console every second and ignores the ACPI power button.
//!
//! Skipped, with the reason printed, when not root or when libvirtd, virtlogd,
//! qemu-system-x86_64, qemu-img or unshare are missing (deploy/install-deps.sh installs them;
//! CI runs it as root).
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::driver::conformance::disks::{image, pattern};
use flotilla_agent::driver::conformance::{
    metadata_xml, run_hypervisor_suite, HypervisorFixture, TestDomain,
};
use flotilla_agent::driver::disks::{Disks, DisksConfig, QemuImgDisks};
use flotilla_agent::driver::libvirt::LibvirtHypervisor;
use flotilla_agent::driver::{Hypervisor, PowerState, RebootMode, ShutdownOutcome};
use flotilla_agent::render::qemu_img::DiskFormat;
use uuid::Uuid;

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if uid != Some("0") {
        return Some("not root (libvirtd with the QEMU driver and tap devices need root)".into());
    }
    for tool in [
        "libvirtd",
        "virtlogd",
        "qemu-system-x86_64",
        "qemu-img",
        "unshare",
        "virsh",
    ] {
        if find_tool(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (run deploy/install-deps.sh as root)"
            ));
        }
    }
    None
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guest kernel and initramfs, built once per target directory.
fn guest() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flotilla-test-guest");
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    if kernel.is_file() && initrd.is_file() {
        return (kernel, initrd);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/make-guest.sh");
    let tmp = dir.with_extension(format!("part-{}", std::process::id()));
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed (it downloads the kernel and busybox with apt-get; run apt-get update?):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).unwrap();
    eprintln!("timing: make-guest.sh {:.1?}", started.elapsed());
    (kernel, initrd)
}

/// Our libvirtd and virtlogd; stopped (with any QEMU they left) when dropped.
struct Daemons {
    root: PathBuf,
    libvirtd: Child,
}

impl Daemons {
    fn start(root: &Path) -> Daemons {
        let dirs = [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ];
        for (own, _) in dirs {
            fs::create_dir_all(root.join(own)).unwrap();
        }
        fs::write(
            root.join("etc/libvirtd.conf"),
            "listen_tls = 0\nlisten_tcp = 0\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
             unix_sock_group = \"root\"\nlog_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\ncgroup_controllers = [ ]\n",
        )
        .unwrap();
        fs::write(root.join("etc/virtlogd.conf"), "").unwrap();
        let mut script = String::from("set -e\n");
        for (own, system) in dirs {
            script += &format!(
                "mkdir -p {system}\nmount --bind '{}' {system}\n",
                root.join(own).display()
            );
        }
        script += &format!(
            "virtlogd -d -f /etc/libvirt/virtlogd.conf -p '{}'\n\
             exec libvirtd -f /etc/libvirt/libvirtd.conf -p '{}'\n",
            root.join("virtlogd.pid").display(),
            root.join("libvirtd.pid").display()
        );
        let log = fs::File::create(root.join("libvirtd.out")).unwrap();
        let libvirtd = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare");
        Daemons {
            root: root.to_path_buf(),
            libvirtd,
        }
    }

    fn uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            self.root.join("run/libvirt-sock").display()
        )
    }

    fn logs(&self) -> String {
        let read = |p: &str| fs::read_to_string(self.root.join(p)).unwrap_or_default();
        format!(
            "--- libvirtd.out\n{}\n--- libvirtd.log\n{}",
            read("libvirtd.out"),
            read("log/libvirtd.log")
        )
    }

    /// Connects once libvirtd answers (its first connection probes QEMU).
    fn connect(&mut self) -> LibvirtHypervisor {
        let uri = self.uri();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.libvirtd.try_wait() {
                panic!("libvirtd exited ({status}):\n{}", self.logs());
            }
            if self.root.join("run/libvirt-sock").exists() {
                match LibvirtHypervisor::connect(&uri) {
                    Ok(hv) => return hv,
                    Err(e) if Instant::now() >= deadline => panic!("{e}\n{}", self.logs()),
                    Err(_) => {}
                }
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd did not start:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn kill(pid: &str, signal: &str) {
    let _ = Command::new("kill").args([signal, pid.trim()]).status();
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // QEMU processes libvirtd started (it records their pids in /run/libvirt/qemu).
        if let Ok(entries) = fs::read_dir(self.root.join("run/qemu")) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "pid") {
                    if let Ok(pid) = fs::read_to_string(entry.path()) {
                        kill(&pid, "-KILL");
                    }
                }
            }
        }
        kill(&self.libvirtd.id().to_string(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.libvirtd.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.libvirtd.kill();
                let _ = self.libvirtd.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(pid) = fs::read_to_string(self.root.join("virtlogd.pid")) {
            kill(&pid, "-TERM");
        }
    }
}

/// Renders a bootable TCG domain whose disk is a real overlay made on demand.
struct Renderer {
    kernel: PathBuf,
    initrd: PathBuf,
    disks: QemuImgDisks,
    base: PathBuf,
}

impl Renderer {
    fn render(&self, d: &TestDomain) -> String {
        let id = d.server_id;
        let disk = self
            .disks
            .create_overlay(id, &self.base, DiskFormat::Raw, 1)
            .expect("overlay")
            .path;
        let serial = match &d.console_log {
            Some(path) => format!("<log file='{}' append='on'/>", path.display()),
            None => String::new(),
        };
        let b = id.as_bytes();
        format!(
            "<domain type='qemu'>\
               <name>flotilla-{id}</name><uuid>{id}</uuid>{metadata}\
               <memory unit='MiB'>128</memory><vcpu>1</vcpu>\
               <os><type arch='x86_64' machine='pc'>hvm</type>\
                 <kernel>{kernel}</kernel><initrd>{initrd}</initrd>\
                 <cmdline>console=ttyS0 quiet</cmdline></os>\
               <features><acpi/></features>\
               <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>\
               <devices>\
                 <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                   <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
                 <interface type='ethernet'><mac address='52:54:00:{:02x}:{:02x}:{:02x}'/>\
                   <target dev='fl{}'/><model type='virtio'/></interface>\
                 <serial type='pty'>{serial}<target port='0'/></serial>\
                 <console type='pty'><target type='serial' port='0'/></console>\
                 <memballoon model='virtio'/>\
               </devices>\
             </domain>",
            b[0],
            b[1],
            b[2],
            &id.simple().to_string()[..12],
            metadata = metadata_xml(id, d.generation),
            kernel = self.kernel.display(),
            initrd = self.initrd.display(),
            disk = disk.display(),
        )
    }
}

fn console_text(hv: &dyn Hypervisor, name: &str) -> String {
    String::from_utf8_lossy(&hv.console_log(name, 1 << 20).unwrap().bytes).into_owned()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let v = f();
    eprintln!("timing: {what} {:.2?}", started.elapsed());
    v
}

#[test]
fn real_libvirtd_with_qemu_passes_the_suite_and_boots_a_guest() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("SKIP real_libvirt: {reason}");
        return;
    }
    let (kernel, initrd) = guest();
    let root = tempfile::Builder::new()
        .prefix("flotilla-libvirt-")
        .tempdir()
        .unwrap();
    let mut daemons = Daemons::start(&root.path().join("libvirt"));
    let hv = timed("libvirtd start + first connection", || daemons.connect());

    let disks = QemuImgDisks::new(DisksConfig::under(&root.path().join("data"))).unwrap();
    let base_bytes = pattern(8 << 20, 42);
    let base = disks
        .ensure_base(&image(&base_bytes, DiskFormat::Raw), &mut || {
            Ok(std::io::Cursor::new(base_bytes.clone()))
        })
        .unwrap();
    let renderer = Renderer {
        kernel,
        initrd,
        disks,
        base,
    };

    // A domain that is not Flotilla's, defined behind the driver's back.
    let foreign = root.path().join("foreign.xml");
    fs::write(
        &foreign,
        "<domain type='qemu'><name>operators-own-vm</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os></domain>",
    )
    .unwrap();
    let out = Command::new("virsh")
        .args(["-c", &daemons.uri(), "define"])
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let logs = root.path().join("consoles");
    fs::create_dir_all(&logs).unwrap();
    let render = |d: &TestDomain| renderer.render(d);
    let fixture = HypervisorFixture {
        hv: &hv,
        render: &render,
        foreign: "operators-own-vm".into(),
        guest_acpi: false,
        shutdown_timeout: Duration::from_secs(2),
        dir: logs.clone(),
    };
    timed("conformance suite", || run_hypervisor_suite(&fixture));

    // A real boot, watched on the serial console.
    let d = TestDomain {
        server_id: Uuid::new_v4(),
        generation: 1,
        console_log: Some(logs.join("boot.log")),
    };
    let xml = renderer.render(&d);
    let name = timed("define", || hv.define(&xml).unwrap());
    let booted = Instant::now();
    timed("start", || hv.start(&name).unwrap());
    wait_until(
        Duration::from_secs(90),
        "GUEST-BOOTED on the console",
        || {
            console_text(&hv, &name)
                .contains("GUEST-BOOTED")
                .then_some(())
        },
    );
    eprintln!("timing: start to GUEST-BOOTED {:.2?}", booted.elapsed());
    wait_until(Duration::from_secs(30), "tick 3 on the console", || {
        console_text(&hv, &name).contains("tick 3").then_some(())
    });
    eprintln!("timing: start to tick 3 {:.2?}", booted.elapsed());
    let info = hv.info(&name).unwrap();
    assert_eq!(
        (info.power, info.state.as_str()),
        (PowerState::Running, "running (booted)")
    );
    assert!(info.cpu_time_ns > 0);

    // Statistics: the guest writes TICK-N to /dev/vda every second.
    let stats = wait_until(
        Duration::from_secs(20),
        "disk writes in the statistics",
        || {
            let s = hv.stats(&name).unwrap();
            (s.disks[0].write_bytes > 0 && s.disks[0].write_reqs > 0).then_some(s)
        },
    );
    eprintln!("stats: {stats:?}");
    assert!(stats.cpu_time_ns > 0 && stats.vcpus == 1);
    assert_eq!(stats.memory.current_kib, 128 * 1024);
    assert!(stats.memory.rss_kib.is_some_and(|rss| rss > 0), "{stats:?}");
    assert!(stats.disks[0].read_bytes > 0, "{stats:?}");
    assert_eq!(stats.nics.len(), 1);
    assert!(stats.nics[0].device.starts_with("fl"), "{stats:?}");

    // Hard reboot: a new boot on the same console log.
    timed("hard reboot", || {
        assert_eq!(
            hv.reboot(&name, RebootMode::Hard).unwrap(),
            ShutdownOutcome::Destroyed {
                waited: Duration::ZERO
            }
        )
    });
    let rebooted = Instant::now();
    wait_until(Duration::from_secs(90), "a second GUEST-BOOTED", || {
        (console_text(&hv, &name).matches("GUEST-BOOTED").count() >= 2).then_some(())
    });
    eprintln!(
        "timing: hard reboot to GUEST-BOOTED {:.2?}",
        rebooted.elapsed()
    );

    // The guest ignores ACPI: shutdown waits out its timeout, then destroys.
    let timeout = Duration::from_secs(3);
    let outcome = timed("shutdown (3 s timeout, then destroy)", || {
        hv.shutdown(&name, timeout).unwrap()
    });
    match outcome {
        ShutdownOutcome::Destroyed { waited } => assert!(waited >= timeout),
        other => panic!("expected Destroyed, got {other:?}"),
    }
    assert_eq!(hv.info(&name).unwrap().state, "shut off (destroyed)");

    // Undefine removes a managed save image too.
    hv.start(&name).unwrap();
    let out = timed("virsh managedsave", || {
        Command::new("virsh")
            .args(["-c", &daemons.uri(), "managedsave", &name])
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let save = root
        .path()
        .join(format!("libvirt/lib/qemu/save/{name}.save"));
    assert!(save.exists(), "managed save image at {}", save.display());
    assert_eq!(hv.info(&name).unwrap().state, "shut off (saved)");
    timed("undefine", || hv.undefine(&name).unwrap());
    assert!(!save.exists(), "undefine removed the managed save image");
    assert!(hv.info(&name).unwrap_err().is_not_found());

    let foreign_info = hv.info("operators-own-vm").unwrap();
    assert_eq!(
        (foreign_info.server, foreign_info.power),
        (None, PowerState::ShutOff)
    );

    // libvirtd restarts (host maintenance): the driver reconnects on its own.
    drop(daemons);
    assert!(hv.list().is_err(), "libvirtd is down");
    let restarted = Instant::now();
    let daemons = Daemons::start(&root.path().join("libvirt"));
    let listed = wait_until(
        Duration::from_secs(60),
        "the driver to reconnect to the restarted libvirtd",
        || hv.list().ok(),
    );
    eprintln!(
        "timing: libvirtd restart to reconnected {:.2?}",
        restarted.elapsed()
    );
    assert!(
        listed.iter().any(|i| i.name == "operators-own-vm"),
        "{listed:?}"
    );
    drop(daemons);
}

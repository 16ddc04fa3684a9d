//! A private libvirtd with the QEMU driver for real-component tests, and the tiny bootable
//! guest.
//!
//! [`Daemons::start`] runs its own `virtlogd` and `libvirtd` in a private mount namespace, where
//! its own directories are bind-mounted over `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//! `/var/cache/libvirt` and `/var/log/libvirt`, so it neither needs nor disturbs a system
//! libvirtd. Clients reach it at [`Daemons::uri`] (`qemu+unix:///system?socket=…`); every
//! process it started is stopped by pid when it is dropped. Paths outside those directories
//! (disks, console logs under a test's temp dir) are the same inside and outside.
//!
//! Real-component tests skip, printing why, when [`missing_prerequisite`] says so (not root;
//! libvirtd, virtlogd, qemu-system-x86_64, qemu-img, unshare or virsh missing).
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::driver::libvirt::LibvirtHypervisor;
use sha2::Digest;

#[allow(unused_imports)] // Each test binary uses a different part.
pub use flotilla_agent::testbed::libvirt_missing_prerequisite as missing_prerequisite;

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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
pub fn guest() -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/make-guest.sh");
    // A changed script builds a new guest.
    let digest = sha2::Sha256::digest(fs::read(&script).expect("make-guest.sh"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("flotilla-test-guest-{}", hex::encode(&digest[..4])));
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    if kernel.is_file() && initrd.is_file() {
        return (kernel, initrd);
    }
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
    // Another test binary may have finished the same build meanwhile: keep the first.
    if fs::rename(&tmp, &dir).is_err() {
        assert!(
            kernel.is_file() && initrd.is_file(),
            "{} is incomplete",
            dir.display()
        );
        let _ = fs::remove_dir_all(&tmp);
    }
    eprintln!("timing: make-guest.sh {:.1?}", started.elapsed());
    (kernel, initrd)
}

/// Our libvirtd and virtlogd; stopped (with any QEMU they left) when dropped.
pub struct Daemons {
    root: PathBuf,
    libvirtd: Child,
}

impl Daemons {
    pub fn start(root: &Path) -> Daemons {
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

    pub fn uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            self.root.join("run/libvirt-sock").display()
        )
    }

    pub fn logs(&self) -> String {
        let read = |p: &str| fs::read_to_string(self.root.join(p)).unwrap_or_default();
        format!(
            "--- libvirtd.out\n{}\n--- libvirtd.log\n{}",
            read("libvirtd.out"),
            read("log/libvirtd.log")
        )
    }

    /// Connects once libvirtd answers (its first connection probes QEMU).
    pub fn connect(&mut self) -> LibvirtHypervisor {
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

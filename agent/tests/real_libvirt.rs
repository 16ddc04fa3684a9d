//! The Hypervisor conformance suite and a real boot against a real libvirtd with the QEMU
//! driver (software emulation, domain type `qemu`), with real qcow2 overlays from
//! [`QemuImgDisks`].
//!
//! The test starts its own `virtlogd` and `libvirtd` in a private mount namespace
//! ([`support::libvirtd::Daemons`]), so it neither needs nor disturbs a system libvirtd. The
//! guest is a Debian kernel with a busybox initramfs (`tests/data/make-guest.sh`, cached in the
//! target directory) that prints `tick N` on its serial console every second and ignores the
//! ACPI power button.
//!
//! Skipped, with the reason printed, when not root or when libvirtd, virtlogd,
//! qemu-system-x86_64, qemu-img or unshare are missing (deploy/install-deps.sh installs them;
//! CI runs it as root).
mod support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_agent::driver::conformance::disks::{image, pattern};
use flotilla_agent::driver::conformance::{
    metadata_xml, run_hypervisor_suite, HypervisorFixture, TestDomain,
};
use flotilla_agent::driver::disks::{DiskRef, Disks, DisksConfig, QemuImgDisks};
use flotilla_agent::driver::{Hypervisor, PowerState, RebootMode, ShutdownOutcome};
use flotilla_agent::render::qemu_img::DiskFormat;
use support::libvirtd::{guest, missing_prerequisite, wait_until, Daemons};
use uuid::Uuid;

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
            .create_overlay(
                DiskRef::root(id, d.generation),
                &self.base,
                DiskFormat::Raw,
                1,
            )
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

//! The Hypervisor conformance suite against the fake and libvirt's `test:///default`, and the
//! fake's scripting hooks. (Real libvirtd with QEMU: `real_libvirt.rs`.)
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_agent::driver::conformance::{
    metadata_xml, run_hypervisor_suite, run_migration_suite, HypervisorFixture, MigrationFixture,
    TestDomain,
};
use flotilla_agent::driver::fake::{
    Acpi, Call, Fabric, FakeHypervisor, MigrationOutcome, MigrationScript, Op,
};
use flotilla_agent::driver::libvirt::LibvirtHypervisor;
use flotilla_agent::driver::{
    Hypervisor, HypervisorError, JobPhase, MigrationRequest, PowerState, RebootMode,
    ShutdownOutcome,
};

/// A definition for the test driver (and the fake, which does not care about the type).
fn render_test(d: &TestDomain) -> String {
    let id = d.server_id;
    let serial = match &d.console_log {
        Some(path) => format!(
            "<serial type='pty'><log file='{}' append='on'/></serial>",
            path.display()
        ),
        None => String::new(),
    };
    let mac = &id.as_bytes()[..3];
    format!(
        "<domain type='test'>\
           <name>flotilla-{id}</name><uuid>{id}</uuid>{metadata}\
           <memory unit='MiB'>64</memory><vcpu>1</vcpu>\
           <os><type arch='x86_64'>hvm</type></os>\
           <devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
               <source file='/var/lib/flotilla/disks/{id}.qcow2'/><target dev='vda' bus='virtio'/></disk>\
             <interface type='ethernet'><mac address='52:54:00:{:02x}:{:02x}:{:02x}'/>\
               <target dev='fl{}'/><model type='virtio'/></interface>\
             {serial}\
           </devices>\
         </domain>",
        mac[0],
        mac[1],
        mac[2],
        &id.simple().to_string()[..12],
        metadata = metadata_xml(id, d.generation),
    )
}

fn fixture<'a>(hv: &'a dyn Hypervisor, dir: &Path, foreign: &str) -> HypervisorFixture<'a> {
    HypervisorFixture {
        hv,
        render: &render_test,
        foreign: foreign.to_string(),
        guest_acpi: true,
        shutdown_timeout: Duration::from_millis(300),
        dir: dir.to_path_buf(),
    }
}

#[test]
fn fake_hypervisor_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHypervisor::new();
    fake.insert_foreign("operators-own-vm", PowerState::Running);
    run_hypervisor_suite(&fixture(&fake, dir.path(), "operators-own-vm"));
}

#[test]
fn libvirt_test_driver_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let hv = LibvirtHypervisor::connect("test:///default").expect("test:///default");
    // The test driver's stock domain `test` has no Flotilla metadata.
    run_hypervisor_suite(&fixture(&hv, dir.path(), "test"));
}

#[test]
fn libvirt_test_driver_reports_synthetic_stats_and_no_balloon() {
    let dir = tempfile::tempdir().unwrap();
    let hv = LibvirtHypervisor::connect("test:///default").unwrap();
    let d = TestDomain {
        server_id: uuid::Uuid::new_v4(),
        generation: 1,
        console_log: Some(dir.path().join("c.log")),
    };
    let name = hv.define(&render_test(&d)).unwrap();
    hv.start(&name).unwrap();
    let stats = hv.stats(&name).unwrap();
    assert!(stats.cpu_time_ns > 0);
    assert!(stats.disks[0].read_bytes > 0, "{stats:?}");
    assert!(stats.nics[0].rx_bytes > 0, "{stats:?}");
    assert_eq!(
        stats.memory.rss_kib, None,
        "the test driver has no memory statistics"
    );
    assert_eq!(stats.memory.current_kib, 65536);
}

#[test]
fn unreachable_libvirt_is_a_connect_error_that_names_the_uri() {
    let uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    match LibvirtHypervisor::connect(uri) {
        Err(e @ HypervisorError::Connect { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(uri) && msg.contains("is libvirtd running"),
                "{msg}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

fn fake_with_domain(dir: &Path) -> (FakeHypervisor, String) {
    let fake = FakeHypervisor::new();
    let d = TestDomain {
        server_id: uuid::Uuid::new_v4(),
        generation: 1,
        console_log: Some(dir.join("console.log")),
    };
    let name = fake.define(&render_test(&d)).unwrap();
    (fake, name)
}

#[test]
fn fake_injected_failures_hit_the_next_call_only() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, name) = fake_with_domain(dir.path());
    fake.fail_next(
        Op::Start,
        &name,
        HypervisorError::Libvirt {
            action: "start",
            name: name.clone(),
            message: "Cannot access storage file '/x': No such file or directory".into(),
        },
    );
    let err = fake.start(&name).unwrap_err();
    assert!(
        err.to_string().contains("Cannot access storage file"),
        "{err}"
    );
    assert_eq!(
        fake.info(&name).unwrap().power,
        PowerState::ShutOff,
        "nothing changed"
    );
    fake.start(&name).expect("the failure was consumed");
    assert_eq!(fake.info(&name).unwrap().power, PowerState::Running);
    let ops: Vec<Op> = fake.calls().into_iter().map(|c: Call| c.op).collect();
    assert_eq!(ops, [Op::Define, Op::Start, Op::Info, Op::Start, Op::Info]);
}

#[test]
fn fake_guest_ignoring_acpi_runs_into_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, name) = fake_with_domain(dir.path());
    fake.start(&name).unwrap();
    fake.set_acpi(&name, Acpi::Ignore).unwrap();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    assert_eq!(
        fake.shutdown(&name, timeout).unwrap(),
        ShutdownOutcome::Destroyed { waited: timeout }
    );
    assert!(started.elapsed() >= timeout);
    assert_eq!(fake.info(&name).unwrap().state, "shut off (destroyed)");

    fake.start(&name).unwrap();
    fake.set_acpi(&name, Acpi::PowerOffAfter(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(
        fake.reboot(&name, RebootMode::Soft { timeout }).unwrap(),
        ShutdownOutcome::Graceful {
            after: Duration::from_millis(20)
        }
    );
    assert_eq!(fake.info(&name).unwrap().state, "running (booted)");
}

#[test]
fn fake_reports_outside_changes_and_guest_console_output() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, name) = fake_with_domain(dir.path());
    fake.start(&name).unwrap();
    fake.write_console(&name, b"GUEST-BOOTED\ntick 1\n")
        .unwrap();
    assert_eq!(fake.console_log(&name, 7).unwrap().bytes, b"tick 1\n");
    fake.set_power(&name, PowerState::Crashed, 1).unwrap();
    assert_eq!(fake.info(&name).unwrap().state, "crashed (panicked)");
    fake.set_power(&name, PowerState::ShutOff, 1).unwrap();
    let info = fake.info(&name).unwrap();
    assert_eq!(
        (info.state.as_str(), info.cpu_time_ns),
        ("shut off (shutdown)", 0)
    );
}

/// The metadata contract end to end: every golden definition of `render::domain` is read back
/// by the drivers as a Flotilla domain of the server its name says.
#[test]
fn the_renderers_golden_definitions_are_recognised_as_flotillas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/render/testdata");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let xml = std::fs::read_to_string(&path).unwrap();
        let parsed = flotilla_agent::driver::domain_xml::parse(&xml).unwrap();
        let meta = parsed
            .server
            .unwrap_or_else(|| panic!("{}: {:?}", path.display(), parsed.metadata_problem));
        assert_eq!(parsed.name, format!("flotilla-{}", meta.server_id));
        assert!(
            parsed.console_log.is_some(),
            "{}: serial log",
            path.display()
        );
        let fake = FakeHypervisor::new();
        assert_eq!(fake.define(&xml).unwrap(), parsed.name);
        seen += 1;
    }
    assert!(seen > 0, "no golden files in {}", dir.display());
}

#[test]
fn fakes_on_one_fabric_pass_the_migration_suite() {
    let dir = tempfile::tempdir().unwrap();
    let fabric = Fabric::new();
    let a = FakeHypervisor::on_fabric(&fabric, "fake://a");
    let b = FakeHypervisor::on_fabric(&fabric, "fake://b");
    let slow = |name: &str| {
        a.script_migration(
            name,
            MigrationScript {
                steps: 1,
                step: Duration::from_millis(5),
                outcome: MigrationOutcome::HangUntilAborted,
            },
        )
    };
    run_migration_suite(&MigrationFixture {
        source: &a,
        dest: &b,
        dest_uri: "fake://b".into(),
        unreachable_uri: "fake://nowhere".into(),
        render_source: &render_test,
        render_dest: &render_test,
        slow_down: &slow,
        timeout: Duration::from_secs(10),
        dir: dir.path().to_path_buf(),
    });
}

#[test]
fn fake_migrations_report_disk_then_memory_progress_and_scripted_failures() {
    let dir = tempfile::tempdir().unwrap();
    let fabric = Fabric::new();
    let a = FakeHypervisor::on_fabric(&fabric, "fake://a");
    let b = FakeHypervisor::on_fabric(&fabric, "fake://b");
    let (fake, name) = (&a, {
        let d = TestDomain {
            server_id: uuid::Uuid::new_v4(),
            generation: 1,
            console_log: Some(dir.path().join("c.log")),
        };
        let name = a.define(&render_test(&d)).unwrap();
        a.start(&name).unwrap();
        name
    });
    let dest_xml = {
        let info = fake.info(&name).unwrap();
        render_test(&TestDomain {
            server_id: info.server.unwrap().server_id,
            generation: 2,
            console_log: Some(dir.path().join("c2.log")),
        })
    };
    let request = MigrationRequest {
        dest_uri: "fake://b".into(),
        dest_xml,
        live: true,
        copy_storage: true,
    };
    // A failure after some progress: the domain stays, running.
    fake.script_migration(
        &name,
        MigrationScript {
            steps: 2,
            step: Duration::from_millis(1),
            outcome: MigrationOutcome::Fail("unable to connect to server: Connection reset".into()),
        },
    );
    let err = fake.migrate(&name, &request).unwrap_err();
    assert!(err.to_string().contains("Connection reset"), "{err}");
    assert_eq!(fake.info(&name).unwrap().power, PowerState::Running);
    assert!(b.info(&name).unwrap_err().is_not_found());
    // Progress while it runs: disk first, then memory.
    fake.script_migration(
        &name,
        MigrationScript {
            steps: 4,
            step: Duration::from_millis(40),
            outcome: MigrationOutcome::Succeed,
        },
    );
    let phases = std::thread::scope(|s| {
        let call = s.spawn(|| fake.migrate(&name, &request));
        let mut phases = Vec::new();
        while !call.is_finished() {
            if let Ok(Some(p)) = fake.job_progress(&name) {
                assert!(p.bytes_done <= p.bytes_total && p.percent() <= 100, "{p:?}");
                if phases.last() != Some(&p.phase) {
                    phases.push(p.phase);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        call.join().unwrap().expect("migrated");
        phases
    });
    assert_eq!(phases, [JobPhase::CopyingDisk, JobPhase::CopyingMemory]);
    let info = b.info(&name).unwrap();
    assert_eq!(info.state, "running (migrated)");
    assert_eq!(info.server.unwrap().generation, 2);
    // An injected failure hits the call before anything moves.
    b.fail_next(
        Op::Migrate,
        &name,
        HypervisorError::Libvirt {
            action: "migrate",
            name: name.clone(),
            message: "injected".into(),
        },
    );
    assert!(b.migrate(&name, &request).is_err());
}

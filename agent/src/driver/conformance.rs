//! Conformance suites: one per driver trait, run against the real implementation and the fake
//! alike, so the fake can stand in for the real driver in every other test.
//!
//! - Hypervisor: [`run_hypervisor_suite`] over a [`HypervisorFixture`]. Run against
//!   [`super::fake::FakeHypervisor`] and libvirt's `test:///default` in every `cargo test`
//!   (`agent/tests/drivers.rs`), and against a real libvirtd with QEMU in
//!   `agent/tests/real_libvirt.rs`.
//! - Migration: [`run_migration_suite`] over a [`MigrationFixture`] of two hypervisors: two
//!   fakes on one [`super::fake::Fabric`] (`agent/tests/hypervisor.rs`) and two real libvirtds
//!   in network namespaces (`agent/tests/migration_real.rs`).
//! - Disks: [`disks::run_disks_suite`], against [`super::disks_fake::FakeDisks`] and
//!   [`super::disks::QemuImgDisks`] (`agent/tests/drivers.rs`).
//!
//! Checks panic with a message naming what differs; each uses fresh server ids and removes
//! what it created, so one driver instance runs them all in sequence.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::domain_xml::{domain_name, METADATA_NS};
use super::{Hypervisor, HypervisorError, PowerState, RebootMode, ShutdownOutcome};

#[path = "conformance_disks.rs"]
pub mod disks;

/// What a fixture renders into a domain definition.
#[derive(Debug, Clone)]
pub struct TestDomain {
    pub server_id: Uuid,
    pub generation: u64,
    /// `<serial type='pty'><log file=… append='on'/></serial>`, or no log when `None`.
    pub console_log: Option<PathBuf>,
}

impl TestDomain {
    pub fn name(&self) -> String {
        domain_name(self.server_id)
    }
}

/// The `<metadata>` element of the contract, for fixtures' renderers.
pub fn metadata_xml(server_id: Uuid, generation: u64) -> String {
    format!(
        "<metadata><flotilla:server xmlns:flotilla=\"{METADATA_NS}\">\
         <flotilla:id>{server_id}</flotilla:id><flotilla:generation>{generation}</flotilla:generation>\
         </flotilla:server></metadata>"
    )
}

/// A driver under test and what the suite needs to know about its host.
pub struct HypervisorFixture<'a> {
    pub hv: &'a dyn Hypervisor,
    /// Renders a definition this driver can start: one vCPU or more, one disk with target
    /// `vda` and one network interface, with the metadata from [`metadata_xml`] and the
    /// given console log.
    pub render: &'a dyn Fn(&TestDomain) -> String,
    /// The name of a domain on this host that is not Flotilla's. It must keep its state.
    pub foreign: String,
    /// Guests power off when the ACPI power button is pressed (else they ignore it).
    pub guest_acpi: bool,
    /// Timeout for the shutdowns the suite makes.
    pub shutdown_timeout: Duration,
    /// A directory for console logs.
    pub dir: PathBuf,
}

type Check = fn(&HypervisorFixture<'_>);

/// Every Hypervisor check, by name.
pub const HYPERVISOR_CHECKS: &[(&str, Check)] = &[
    (
        "define_is_idempotent_and_reports_metadata",
        define_is_idempotent_and_reports_metadata,
    ),
    (
        "redefining_a_running_domain_updates_its_metadata",
        redefining_a_running_domain_updates_its_metadata,
    ),
    (
        "definitions_that_are_not_flotillas_are_refused",
        definitions_that_are_not_flotillas_are_refused,
    ),
    (
        "foreign_domains_are_listed_but_never_changed",
        foreign_domains_are_listed_but_never_changed,
    ),
    ("unknown_names_are_not_found", unknown_names_are_not_found),
    ("start_is_idempotent", start_is_idempotent),
    (
        "resume_needs_a_started_domain",
        resume_needs_a_started_domain,
    ),
    (
        "suspend_pauses_and_resume_continues",
        suspend_pauses_and_resume_continues,
    ),
    (
        "shutdown_waits_for_acpi_then_destroys",
        shutdown_waits_for_acpi_then_destroys,
    ),
    (
        "reboot_needs_a_running_domain_and_restarts_it",
        reboot_needs_a_running_domain_and_restarts_it,
    ),
    ("destroy_is_idempotent", destroy_is_idempotent),
    (
        "undefine_requires_shut_off_and_removes_the_domain",
        undefine_requires_shut_off_and_removes_the_domain,
    ),
    (
        "stats_cover_every_device_while_running",
        stats_cover_every_device_while_running,
    ),
    (
        "console_log_returns_the_tail_of_the_log_file",
        console_log_returns_the_tail_of_the_log_file,
    ),
    ("list_is_sorted_and_complete", list_is_sorted_and_complete),
];

/// Runs every check in order, printing each name and duration.
pub fn run_hypervisor_suite(f: &HypervisorFixture<'_>) {
    for (name, check) in HYPERVISOR_CHECKS {
        let started = Instant::now();
        eprintln!("hypervisor conformance: {name} ...");
        check(f);
        eprintln!(
            "hypervisor conformance: {name} ok ({:.2?})",
            started.elapsed()
        );
    }
}

fn test_domain(f: &HypervisorFixture<'_>, generation: u64) -> TestDomain {
    let server_id = Uuid::new_v4();
    TestDomain {
        server_id,
        generation,
        console_log: Some(f.dir.join(format!("{server_id}.console.log"))),
    }
}

/// Defines a fresh domain; returns it and its name.
fn defined(f: &HypervisorFixture<'_>) -> (TestDomain, String) {
    let d = test_domain(f, 1);
    let name = f.hv.define(&(f.render)(&d)).expect("define");
    assert_eq!(name, d.name());
    (d, name)
}

fn running(f: &HypervisorFixture<'_>) -> (TestDomain, String) {
    let (d, name) = defined(f);
    f.hv.start(&name).expect("start");
    (d, name)
}

fn remove(f: &HypervisorFixture<'_>, name: &str) {
    match f.hv.destroy(name) {
        Ok(()) | Err(HypervisorError::NotFound { .. }) => {}
        Err(e) => panic!("destroy {name}: {e}"),
    }
    match f.hv.undefine(name) {
        Ok(()) | Err(HypervisorError::NotFound { .. }) => {}
        Err(e) => panic!("undefine {name}: {e}"),
    }
}

fn power(f: &HypervisorFixture<'_>, name: &str) -> PowerState {
    f.hv.info(name).expect("info").power
}

fn define_is_idempotent_and_reports_metadata(f: &HypervisorFixture<'_>) {
    let (d, name) = defined(f);
    assert_eq!(f.hv.define(&(f.render)(&d)).expect("redefine"), name);
    let info = f.hv.info(&name).expect("info");
    assert_eq!(info.name, name);
    assert_eq!(
        info.uuid,
        d.server_id.to_string(),
        "renderers use the server id as UUID"
    );
    let meta = info.server.expect("Flotilla metadata");
    assert_eq!((meta.server_id, meta.generation), (d.server_id, 1));
    assert_eq!(info.power, PowerState::ShutOff);
    assert!(info.state.starts_with("shut off ("), "{}", info.state);
    assert!(info.persistent);
    assert!(info.vcpus >= 1 && info.max_memory_kib > 0, "{info:?}");
    assert_eq!(info.cpu_time_ns, 0);

    let newer = TestDomain {
        generation: 2,
        ..d.clone()
    };
    f.hv.define(&(f.render)(&newer))
        .expect("redefine with generation 2");
    assert_eq!(f.hv.info(&name).unwrap().server.unwrap().generation, 2);
    let listed: Vec<_> =
        f.hv.list()
            .unwrap()
            .into_iter()
            .filter(|i| i.name == name)
            .collect();
    assert_eq!(listed.len(), 1, "one domain after three defines");
    assert_eq!(listed[0].server.unwrap().generation, 2);
    remove(f, &name);
}

fn redefining_a_running_domain_updates_its_metadata(f: &HypervisorFixture<'_>) {
    let (d, name) = running(f);
    let newer = TestDomain {
        generation: 5,
        ..d.clone()
    };
    f.hv.define(&(f.render)(&newer))
        .expect("redefine while running");
    let info = f.hv.info(&name).unwrap();
    assert!(
        info.power.is_active(),
        "a redefinition does not stop the domain"
    );
    assert_eq!(
        info.server.unwrap().generation,
        5,
        "metadata of the persistent definition"
    );
    remove(f, &name);
}

fn definitions_that_are_not_flotillas_are_refused(f: &HypervisorFixture<'_>) {
    let d = test_domain(f, 1);
    let good = (f.render)(&d);
    let expect_invalid = |xml: &str, why: &str| match f.hv.define(xml) {
        Err(HypervisorError::InvalidDefinition { message }) => message,
        other => panic!("{why}: expected InvalidDefinition, got {other:?}"),
    };
    let without_meta = good.replace(&metadata_xml(d.server_id, 1), "");
    assert_ne!(
        without_meta, good,
        "the renderer must emit metadata_xml() verbatim"
    );
    let msg = expect_invalid(&without_meta, "no metadata");
    assert!(msg.contains("no Flotilla metadata"), "{msg}");

    let other = Uuid::new_v4();
    let renamed = good.replace(
        &format!("<name>{}</name>", d.name()),
        &format!("<name>{}</name>", domain_name(other)),
    );
    assert_ne!(renamed, good);
    let msg = expect_invalid(&renamed, "name of another server");
    assert!(msg.contains(&d.server_id.to_string()), "{msg}");

    let msg = expect_invalid("<domain><name>x</name>", "malformed XML");
    assert!(msg.contains("XML"), "{msg}");
    assert!(
        !f.hv
            .list()
            .unwrap()
            .iter()
            .any(|i| i.name == d.name() || i.name == domain_name(other)),
        "nothing was defined"
    );

    // Same UUID under another name: libvirt refuses; so must the fake.
    let name = f.hv.define(&good).unwrap();
    let twin = TestDomain {
        server_id: other,
        ..d.clone()
    };
    let twin_xml = (f.render)(&twin).replace(
        &format!("<uuid>{other}</uuid>"),
        &format!("<uuid>{}</uuid>", d.server_id),
    );
    match f.hv.define(&twin_xml) {
        Err(HypervisorError::Conflict { .. }) => {}
        other => panic!("same UUID, other name: expected Conflict, got {other:?}"),
    }
    remove(f, &name);
}

fn foreign_domains_are_listed_but_never_changed(f: &HypervisorFixture<'_>) {
    let before = f.hv.info(&f.foreign).expect("the foreign domain exists");
    assert_eq!(before.server, None);
    let listed = f.hv.list().unwrap();
    let entry = listed.iter().find(|i| i.name == f.foreign).expect("listed");
    assert_eq!(entry.server, None);

    let foreign = f.foreign.as_str();
    let refused = |result: Result<(), HypervisorError>, op: &str| match result {
        Err(HypervisorError::Foreign { name }) => assert_eq!(name, foreign),
        other => panic!("{op} on a foreign domain: expected Foreign, got {other:?}"),
    };
    refused(f.hv.start(foreign), "start");
    refused(
        f.hv.shutdown(foreign, Duration::from_millis(10)).map(drop),
        "shutdown",
    );
    refused(f.hv.reboot(foreign, RebootMode::Hard).map(drop), "reboot");
    refused(f.hv.resume(foreign), "resume");
    refused(f.hv.suspend(foreign), "suspend");
    refused(f.hv.destroy(foreign), "destroy");
    refused(f.hv.undefine(foreign), "undefine");
    let after = f.hv.info(foreign).unwrap();
    assert_eq!((after.power, after.uuid), (before.power, before.uuid));
}

fn unknown_names_are_not_found(f: &HypervisorFixture<'_>) {
    let name = domain_name(Uuid::new_v4());
    let missing = |result: Result<(), HypervisorError>, op: &str| match result {
        Err(HypervisorError::NotFound { name: n }) => assert_eq!(n, name, "{op}"),
        other => panic!("{op} of an unknown domain: expected NotFound, got {other:?}"),
    };
    missing(f.hv.start(&name), "start");
    missing(
        f.hv.shutdown(&name, Duration::from_millis(10)).map(drop),
        "shutdown",
    );
    missing(f.hv.reboot(&name, RebootMode::Hard).map(drop), "reboot");
    missing(f.hv.resume(&name), "resume");
    missing(f.hv.suspend(&name), "suspend");
    missing(f.hv.destroy(&name), "destroy");
    missing(f.hv.undefine(&name), "undefine");
    missing(f.hv.info(&name).map(drop), "info");
    missing(f.hv.stats(&name).map(drop), "stats");
    missing(f.hv.console_log(&name, 10).map(drop), "console_log");
    let err = f.hv.info(&name).unwrap_err();
    assert!(err.is_not_found());
    assert!(err.to_string().contains(&name), "{err}");
}

fn start_is_idempotent(f: &HypervisorFixture<'_>) {
    let (_, name) = running(f);
    f.hv.start(&name)
        .expect("starting a running domain is a no-op");
    let info = f.hv.info(&name).unwrap();
    assert_eq!(info.power, PowerState::Running);
    assert_eq!(info.state, "running (booted)");
    remove(f, &name);
}

fn resume_needs_a_started_domain(f: &HypervisorFixture<'_>) {
    let (_, name) = running(f);
    f.hv.resume(&name)
        .expect("resuming a running domain is a no-op");
    assert_eq!(f.hv.info(&name).unwrap().power, PowerState::Running);
    f.hv.destroy(&name).unwrap();
    match f.hv.resume(&name) {
        Err(HypervisorError::InvalidState { state, .. }) => assert_eq!(state, PowerState::ShutOff),
        other => panic!("resume of a shut-off domain: expected InvalidState, got {other:?}"),
    }
    remove(f, &name);
}

fn suspend_pauses_and_resume_continues(f: &HypervisorFixture<'_>) {
    let (_, name) = running(f);
    f.hv.suspend(&name).expect("suspend a running domain");
    let info = f.hv.info(&name).unwrap();
    assert_eq!(info.power, PowerState::Paused);
    assert_eq!(info.state, "paused (user)");
    f.hv.suspend(&name)
        .expect("suspending a paused domain is a no-op");
    assert_eq!(f.hv.info(&name).unwrap().power, PowerState::Paused);
    f.hv.resume(&name).expect("resume the suspended domain");
    let info = f.hv.info(&name).unwrap();
    assert_eq!(info.power, PowerState::Running);
    assert_eq!(info.state, "running (unpaused)");
    f.hv.destroy(&name).unwrap();
    match f.hv.suspend(&name) {
        Err(HypervisorError::InvalidState { state, .. }) => assert_eq!(state, PowerState::ShutOff),
        other => panic!("suspend of a shut-off domain: expected InvalidState, got {other:?}"),
    }
    remove(f, &name);
}

fn shutdown_waits_for_acpi_then_destroys(f: &HypervisorFixture<'_>) {
    let (_, name) = running(f);
    let timeout = f.shutdown_timeout;
    let started = Instant::now();
    let outcome = f.hv.shutdown(&name, timeout).expect("shutdown");
    let took = started.elapsed();
    let info = f.hv.info(&name).unwrap();
    assert_eq!(info.power, PowerState::ShutOff);
    if f.guest_acpi {
        assert!(
            matches!(outcome, ShutdownOutcome::Graceful { .. }),
            "{outcome:?}"
        );
        assert_eq!(info.state, "shut off (shutdown)");
    } else {
        match outcome {
            ShutdownOutcome::Destroyed { waited } => assert!(waited >= timeout, "{waited:?}"),
            other => panic!("a guest ignoring ACPI must be destroyed, got {other:?}"),
        }
        assert!(
            took >= timeout,
            "returned after {took:?}, before the timeout"
        );
        assert_eq!(info.state, "shut off (destroyed)");
    }
    assert_eq!(
        f.hv.shutdown(&name, timeout).unwrap(),
        ShutdownOutcome::AlreadyOff
    );
    remove(f, &name);
}

fn reboot_needs_a_running_domain_and_restarts_it(f: &HypervisorFixture<'_>) {
    let (_, name) = defined(f);
    match f.hv.reboot(&name, RebootMode::Hard) {
        Err(HypervisorError::InvalidState { state, .. }) => assert_eq!(state, PowerState::ShutOff),
        other => panic!("reboot of a stopped domain: expected InvalidState, got {other:?}"),
    }
    assert_eq!(
        power(f, &name),
        PowerState::ShutOff,
        "a failed reboot starts nothing"
    );
    f.hv.start(&name).unwrap();
    assert_eq!(
        f.hv.reboot(&name, RebootMode::Hard).unwrap(),
        ShutdownOutcome::Destroyed {
            waited: Duration::ZERO
        }
    );
    assert_eq!(power(f, &name), PowerState::Running);
    let outcome =
        f.hv.reboot(
            &name,
            RebootMode::Soft {
                timeout: f.shutdown_timeout,
            },
        )
        .unwrap();
    match (f.guest_acpi, outcome) {
        (true, ShutdownOutcome::Graceful { .. }) | (false, ShutdownOutcome::Destroyed { .. }) => {}
        (acpi, other) => panic!("soft reboot with guest_acpi={acpi}: got {other:?}"),
    }
    let info = f.hv.info(&name).unwrap();
    assert_eq!(
        (info.power, info.state.as_str()),
        (PowerState::Running, "running (booted)")
    );
    remove(f, &name);
}

fn destroy_is_idempotent(f: &HypervisorFixture<'_>) {
    let (_, name) = running(f);
    f.hv.destroy(&name).expect("destroy");
    let info = f.hv.info(&name).unwrap();
    assert_eq!(info.state, "shut off (destroyed)");
    assert_eq!(info.cpu_time_ns, 0);
    f.hv.destroy(&name)
        .expect("destroying a stopped domain is a no-op");
    remove(f, &name);
}

fn undefine_requires_shut_off_and_removes_the_domain(f: &HypervisorFixture<'_>) {
    let (_, name) = running(f);
    match f.hv.undefine(&name) {
        Err(HypervisorError::InvalidState { state, action, .. }) => {
            assert!(state.is_active());
            assert_eq!(action, "undefine");
        }
        other => panic!("undefine of a running domain: expected InvalidState, got {other:?}"),
    }
    assert!(power(f, &name).is_active(), "still running and defined");
    f.hv.destroy(&name).unwrap();
    f.hv.undefine(&name).expect("undefine");
    assert!(f.hv.info(&name).unwrap_err().is_not_found());
    assert!(!f.hv.list().unwrap().iter().any(|i| i.name == name));
    assert!(f.hv.undefine(&name).unwrap_err().is_not_found());
}

fn stats_cover_every_device_while_running(f: &HypervisorFixture<'_>) {
    let (_, name) = defined(f);
    match f.hv.stats(&name) {
        Err(HypervisorError::InvalidState { state, .. }) => assert_eq!(state, PowerState::ShutOff),
        other => panic!("stats of a stopped domain: expected InvalidState, got {other:?}"),
    }
    f.hv.start(&name).unwrap();
    let stats = f.hv.stats(&name).expect("stats");
    assert!(stats.vcpus >= 1);
    assert!(stats.memory.current_kib > 0, "{stats:?}");
    let disks: Vec<&str> = stats.disks.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(disks, ["vda"], "{stats:?}");
    assert!(stats.disks[0].path.is_some());
    assert_eq!(stats.nics.len(), 1, "{stats:?}");
    remove(f, &name);
}

fn console_log_returns_the_tail_of_the_log_file(f: &HypervisorFixture<'_>) {
    let mut d = test_domain(f, 1);
    d.console_log = None;
    let name = f.hv.define(&(f.render)(&d)).unwrap();
    match f.hv.console_log(&name, 100) {
        Err(HypervisorError::NoConsoleLog { name: n }) => assert_eq!(n, name),
        other => panic!("no log configured: expected NoConsoleLog, got {other:?}"),
    }
    remove(f, &name);

    let (d, name) = defined(f);
    let path = d.console_log.clone().unwrap();
    let log =
        f.hv.console_log(&name, 100)
            .expect("console log before the file exists");
    assert_eq!(
        (log.path.as_path(), log.bytes.len(), log.truncated),
        (path.as_path(), 0, false)
    );

    let text = b"line one\nline two\nline three\n";
    std::fs::write(&path, text).unwrap();
    let log = f.hv.console_log(&name, 11).unwrap();
    assert_eq!(log.bytes, b"line three\n");
    assert!(log.truncated);
    let log = f.hv.console_log(&name, 1 << 20).unwrap();
    assert_eq!(
        (log.bytes.as_slice(), log.truncated),
        (text.as_slice(), false)
    );
    remove(f, &name);
    let _ = std::fs::remove_file(path);
}

fn list_is_sorted_and_complete(f: &HypervisorFixture<'_>) {
    let names: Vec<String> = (0..3).map(|_| defined(f).1).collect();
    let listed = f.hv.list().unwrap();
    let all: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "list is sorted by name");
    for name in &names {
        let info = listed.iter().find(|i| i.name == *name).expect("listed");
        assert_eq!(
            info.server.unwrap().server_id.to_string(),
            name["flotilla-".len()..]
        );
    }
    assert!(all.contains(&f.foreign.as_str()));
    for name in &names {
        remove(f, name);
    }
}

/// Two hosts whose drivers can migrate domains to each other, for [`run_migration_suite`].
pub struct MigrationFixture<'a> {
    pub source: &'a dyn Hypervisor,
    pub dest: &'a dyn Hypervisor,
    /// `dest_uri` that reaches `dest` from `source`.
    pub dest_uri: String,
    /// A `dest_uri` nobody answers at (connection refused).
    pub unreachable_uri: String,
    /// Renders a startable definition for the source host (creating its disk there).
    pub render_source: &'a dyn Fn(&TestDomain) -> String,
    /// Renders the definition the destination wants (its own, pre-created disk, same base).
    pub render_dest: &'a dyn Fn(&TestDomain) -> String,
    /// Makes the next migration of this domain slow enough to be watched and aborted (the
    /// fake: hang until aborted; libvirt: a tiny bandwidth limit).
    pub slow_down: &'a dyn Fn(&str),
    /// How long a migration may take before the suite gives up.
    pub timeout: Duration,
    pub dir: PathBuf,
}

type MigrationCheck = fn(&MigrationFixture<'_>);

/// Every migration check, by name.
pub const MIGRATION_CHECKS: &[(&str, MigrationCheck)] = &[
    (
        "live_migration_moves_a_running_domain_with_the_destination_xml",
        live_migration_moves_a_running_domain_with_the_destination_xml,
    ),
    (
        "a_domain_started_paused_migrates_paused",
        a_domain_started_paused_migrates_paused,
    ),
    (
        "an_aborted_migration_leaves_the_domain_running_at_the_source",
        an_aborted_migration_leaves_the_domain_running_at_the_source,
    ),
    (
        "migration_refusals_change_nothing",
        migration_refusals_change_nothing,
    ),
];

/// Runs every migration check in order, printing each name and duration.
pub fn run_migration_suite(f: &MigrationFixture<'_>) {
    for (name, check) in MIGRATION_CHECKS {
        let started = Instant::now();
        eprintln!("migration conformance: {name} ...");
        check(f);
        eprintln!(
            "migration conformance: {name} ok ({:.2?})",
            started.elapsed()
        );
    }
}

fn migration_domain(f: &MigrationFixture<'_>) -> (TestDomain, TestDomain) {
    let server_id = Uuid::new_v4();
    let source = TestDomain {
        server_id,
        generation: 1,
        console_log: Some(f.dir.join(format!("{server_id}.source.log"))),
    };
    let dest = TestDomain {
        generation: 2,
        console_log: Some(f.dir.join(format!("{server_id}.dest.log"))),
        ..source.clone()
    };
    (source, dest)
}

fn request(f: &MigrationFixture<'_>, dest: &TestDomain, live: bool) -> super::MigrationRequest {
    super::MigrationRequest {
        dest_uri: f.dest_uri.clone(),
        dest_xml: (f.render_dest)(dest),
        live,
        copy_storage: true,
    }
}

fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_on(hv: &dyn Hypervisor, name: &str) {
    for r in [hv.destroy(name), hv.undefine(name)] {
        match r {
            Ok(()) | Err(HypervisorError::NotFound { .. }) => {}
            Err(e) => panic!("removing {name}: {e}"),
        }
    }
}

fn live_migration_moves_a_running_domain_with_the_destination_xml(f: &MigrationFixture<'_>) {
    let (src, dst) = migration_domain(f);
    let name = f.source.define(&(f.render_source)(&src)).expect("define");
    f.source.start(&name).expect("start");
    assert_eq!(
        f.source.job_progress(&name).expect("job"),
        None,
        "no job yet"
    );
    f.source
        .migrate(&name, &request(f, &dst, true))
        .expect("live migration");
    assert!(
        f.source.info(&name).unwrap_err().is_not_found(),
        "undefined at the source"
    );
    let info = f.dest.info(&name).expect("at the destination");
    assert_eq!(info.power, PowerState::Running, "{info:?}");
    assert!(info.persistent, "persistent at the destination");
    let meta = info.server.expect("Flotilla metadata");
    assert_eq!(
        (meta.server_id, meta.generation),
        (src.server_id, 2),
        "the destination XML's metadata"
    );
    remove_on(f.dest, &name);
}

fn a_domain_started_paused_migrates_paused(f: &MigrationFixture<'_>) {
    let (src, dst) = migration_domain(f);
    let name = f.source.define(&(f.render_source)(&src)).expect("define");
    f.source.start_paused(&name).expect("start paused");
    assert_eq!(f.source.info(&name).unwrap().power, PowerState::Paused);
    f.source.start_paused(&name).expect("idempotent");
    f.source
        .migrate(&name, &request(f, &dst, false))
        .expect("cold migration");
    assert!(f.source.info(&name).unwrap_err().is_not_found());
    assert_eq!(f.dest.info(&name).unwrap().power, PowerState::Paused);
    f.dest.resume(&name).expect("resume at the destination");
    assert_eq!(f.dest.info(&name).unwrap().power, PowerState::Running);
    remove_on(f.dest, &name);
}

fn an_aborted_migration_leaves_the_domain_running_at_the_source(f: &MigrationFixture<'_>) {
    let (src, dst) = migration_domain(f);
    let name = f.source.define(&(f.render_source)(&src)).expect("define");
    f.source.start(&name).expect("start");
    (f.slow_down)(&name);
    let req = request(f, &dst, true);
    std::thread::scope(|s| {
        let call = s.spawn(|| f.source.migrate(&name, &req));
        let progress = wait_for(f.timeout, "the migration job to report progress", || {
            f.source.job_progress(&name).expect("job progress")
        });
        assert!(
            progress.bytes_total > 0 || progress.bytes_done == 0,
            "{progress:?}"
        );
        assert!(
            f.source.abort_job(&name).expect("abort"),
            "a job was running"
        );
        let result = call.join().expect("the migrate call");
        assert!(result.is_err(), "an aborted migration fails: {result:?}");
    });
    let info = f.source.info(&name).expect("still at the source");
    assert_eq!(info.power, PowerState::Running, "{info:?}");
    assert_eq!(info.server.map(|m| m.generation), Some(1));
    wait_for(f.timeout, "no copy left at the destination", || {
        f.dest
            .info(&name)
            .is_err_and(|e| e.is_not_found())
            .then_some(())
    });
    assert_eq!(f.source.job_progress(&name).unwrap(), None);
    assert!(
        !f.source.abort_job(&name).unwrap(),
        "no job to abort any more"
    );
    remove_on(f.source, &name);
}

fn migration_refusals_change_nothing(f: &MigrationFixture<'_>) {
    let (src, dst) = migration_domain(f);
    let name = f.source.define(&(f.render_source)(&src)).expect("define");
    let refused = f.source.migrate(&name, &request(f, &dst, true));
    assert!(
        matches!(refused, Err(HypervisorError::InvalidState { .. })),
        "a shut-off domain does not migrate: {refused:?}"
    );
    f.source.start(&name).expect("start");
    assert!(
        matches!(
            f.source.start_paused(&name),
            Err(HypervisorError::InvalidState { .. })
        ),
        "a running domain cannot be started paused"
    );
    assert!(!f.source.abort_job(&name).unwrap(), "no job to abort");
    let mut unreachable = request(f, &dst, true);
    unreachable.dest_uri = f.unreachable_uri.clone();
    assert!(f.source.migrate(&name, &unreachable).is_err());
    assert_eq!(f.source.info(&name).unwrap().power, PowerState::Running);
    assert!(f.dest.info(&name).unwrap_err().is_not_found());
    let missing = f.source.migrate(
        "flotilla-00000000-0000-4000-8000-00000000beef",
        &request(f, &dst, true),
    );
    assert!(missing.unwrap_err().is_not_found());
    remove_on(f.source, &name);
}

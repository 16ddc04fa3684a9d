//! Live and cold migration between two real agents (session, executor, commands), each with
//! its own fake controller, fake disks and a fake hypervisor on one shared [`Fabric`]: the
//! controller's side of the protocol is played by the test (prepare on the destination,
//! migrate on the source, then the ownership move as two new desired states).
mod support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::config::{AgentConfig, HostFacts, ValidConfig};
use flotilla_agent::driver::disks_fake::FakeDisks;
use flotilla_agent::driver::fake::{Fabric, FakeHypervisor, MigrationOutcome, MigrationScript, Op};
use flotilla_agent::driver::{domain_xml, Hypervisor, PowerState};
use flotilla_agent::executor;
use flotilla_agent::render::domain::{domain_name, DiskRole};
use flotilla_agent::service::{self, Drivers, Running};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_command::Payload;
use flotilla_proto::v1::controller_message::Msg as Out;
use support::{wait_for, FakeController};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
const IMAGE: &str = "img-1";

/// One compute host: its controller session, drivers and running agent.
struct HostUnderTest {
    name: &'static str,
    ctl: FakeController,
    hv: Arc<FakeHypervisor>,
    disks: Arc<FakeDisks>,
    agent: std::sync::Mutex<Running>,
    config: ValidConfig,
    image_sha: String,
    _dir: tempfile::TempDir,
}

impl HostUnderTest {
    async fn start(fabric: &Arc<Fabric>, name: &'static str) -> HostUnderTest {
        let ctl = FakeController::start().await;
        let image_sha = ctl.add_image(IMAGE, (0..300_000u32).map(|i| i as u8).collect());
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "hostname = \"{name}\"\naddress = \"{name}\"\ncontrollers = [\"{}\"]\n\
             libvirt_uri = \"test:///default\"\nstate_dir = \"{}\"\n\
             reconcile_interval_secs = 1\nshutdown_timeout_secs = 1\n\
             [migration]\nuri_template = \"fake://{{address}}\"\nprogress_interval_ms = 20\n",
            ctl.address,
            dir.path().display()
        );
        let facts = HostFacts {
            hostname: "ignored".into(),
            vcpus: 8,
            ram_mib: 16384,
            disk_gib: 100,
            has_kvm: false,
            cpu_model: "Fake CPU".into(),
        };
        let config = AgentConfig::parse(&text)
            .unwrap()
            .validate_with(&facts)
            .unwrap();
        let hv = Arc::new(FakeHypervisor::on_fabric(fabric, &format!("fake://{name}")));
        let disks = Arc::new(FakeDisks::new(dir.path()));
        let agent = service::start(
            &config,
            Drivers {
                hv: hv.clone(),
                disks: disks.clone(),
                hypervisor_version: "fake".into(),
            },
        );
        HostUnderTest {
            name,
            ctl,
            hv,
            disks,
            agent: std::sync::Mutex::new(agent),
            config,
            image_sha,
            _dir: dir,
        }
    }

    /// Stops the agent and starts a new one on the same host (drivers and state directory).
    fn restart(&self) {
        let new = service::start(
            &self.config,
            Drivers {
                hv: self.hv.clone(),
                disks: self.disks.clone(),
                hypervisor_version: "fake".into(),
            },
        );
        let old = std::mem::replace(&mut *self.agent.lock().unwrap(), new);
        old.stop();
    }

    fn link(&self) -> Arc<flotilla_agent::session::Link> {
        self.agent.lock().unwrap().link.clone()
    }

    fn server(&self, id: Uuid, generation: u64, running: bool) -> pb::DesiredServer {
        pb::DesiredServer {
            id: id.to_string(),
            name: "mover".into(),
            project_id: "p".into(),
            vcpus: 1,
            ram_mib: 256,
            root_disk_gib: 1,
            ephemeral_gib: 1,
            image_id: IMAGE.into(),
            image_sha256: self.image_sha.clone(),
            image_size_bytes: 300_000,
            image_disk_format: pb::ImageDiskFormat::Raw as i32,
            placement_generation: generation,
            power_state: if running {
                pb::ServerPowerState::Running
            } else {
                pb::ServerPowerState::Shutdown
            } as i32,
            ..Default::default()
        }
    }

    fn incoming(&self, id: Uuid, generation: u64, running: bool) -> pb::DesiredServer {
        pb::DesiredServer {
            incoming_migration: true,
            ..self.server(id, generation, running)
        }
    }

    fn disk_generations(&self, id: Uuid) -> Vec<(u64, DiskRole)> {
        self.disks
            .disks()
            .keys()
            .filter(|d| d.server == id)
            .map(|d| (d.generation, d.role))
            .collect()
    }

    fn calls_on(&self, id: Uuid) -> Vec<Op> {
        let name = domain_name(&id.to_string());
        self.hv
            .calls()
            .into_iter()
            .filter(|c| c.name == name)
            .map(|c| c.op)
            .collect()
    }

    async fn command(&self, operation_id: &str, step: &str, payload: Payload) {
        self.ctl
            .send(Out::Command(pb::AgentCommand {
                operation_id: operation_id.into(),
                step: step.into(),
                payload: Some(payload),
            }))
            .await;
    }

    /// The `n`-th finished result of `(operation_id, step)`, counting from 1.
    async fn finished(&self, operation_id: &str, step: &str, n: usize) -> pb::AgentStepResult {
        wait_for(WAIT, "a finished step result", || async {
            let done: Vec<_> = self.ctl.with(|c| {
                c.step_results
                    .iter()
                    .filter(|r| r.operation_id == operation_id && r.step == step && r.finished)
                    .cloned()
                    .collect()
            });
            done.get(n - 1)
                .cloned()
                .ok_or(format!("{} finished results", done.len()))
        })
        .await
    }

    fn progress_reports(&self, operation_id: &str) -> Vec<pb::OperationProgress> {
        self.ctl.with(|c| {
            c.step_results
                .iter()
                .filter(|r| r.operation_id == operation_id && !r.finished)
                .filter_map(|r| r.progress.clone())
                .collect()
        })
    }

    /// One reconcile round now (as the executor runs on every trigger).
    async fn reconcile(&self) {
        let (host, link) = {
            let agent = self.agent.lock().unwrap();
            (agent.host.clone(), agent.link.clone())
        };
        executor::round(&host, &link).await;
    }

    async fn wait_no_copy(&self, id: Uuid) {
        let name = domain_name(&id.to_string());
        wait_for(WAIT, "no copy left on the host", || async {
            let domain = self.hv.info(&name).ok();
            let disks = self.disk_generations(id);
            (domain.is_none() && disks.is_empty())
                .then_some(())
                .ok_or(format!("{}: {domain:?} {disks:?}", self.name))
        })
        .await
    }
}

struct Pair {
    a: HostUnderTest,
    b: HostUnderTest,
    id: Uuid,
}

/// Server `id` runs on A at generation 1; B is told it comes in at generation 2 and has
/// prepared for it. Returns the destination XML.
async fn prepared(live: bool) -> (Pair, String) {
    let fabric = Fabric::new();
    let a = HostUnderTest::start(&fabric, "host-a").await;
    let b = HostUnderTest::start(&fabric, "host-b").await;
    let id = Uuid::new_v4();
    a.ctl.set_desired(vec![a.server(id, 1, true)]).await;
    a.ctl.wait_running(&id.to_string(), 1).await;
    b.ctl.set_desired(vec![b.incoming(id, 2, true)]).await;
    let prepare = Payload::PrepareMigration(pb::PrepareMigrationCommand {
        server: Some(b.incoming(id, 2, true)),
        source_host: "host-a".into(),
        source_address: "host-a".into(),
        live,
    });
    b.command("op-move", "prepare", prepare.clone()).await;
    let r = b.finished("op-move", "prepare", 1).await;
    assert!(r.ok, "{r:?}");
    let xml = r.message.clone();
    // Resent: the same XML.
    b.command("op-move", "prepare", prepare).await;
    assert_eq!(b.finished("op-move", "prepare", 2).await.message, xml);
    (Pair { a, b, id }, xml)
}

fn live_migrate(p: &Pair, xml: &str, timeout_seconds: u32) -> Payload {
    Payload::LiveMigrate(pb::LiveMigrateCommand {
        server_id: p.id.to_string(),
        destination_host: "host-b".into(),
        destination_address: "host-b".into(),
        block_migration: true,
        timeout_seconds,
        destination_generation: 2,
        destination_domain_xml: xml.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_migration_moves_the_server_and_ownership_follows() {
    let (p, xml) = prepared(true).await;
    let (a, b, id) = (&p.a, &p.b, p.id);
    let name = domain_name(&id.to_string());

    // The prepared destination: the XML records generation 2 and B's disk paths; the disks
    // exist, nothing is defined, and B's planner leaves them alone while the server comes in.
    let parsed = domain_xml::parse(&xml).unwrap();
    let meta = parsed.server.unwrap();
    assert_eq!((meta.server_id, meta.generation), (id, 2));
    let root = parsed.disks[0].source.clone().unwrap();
    assert!(
        root.starts_with(b._dir.path()) && root.ends_with(format!("{id}/2/root.qcow2")),
        "{}",
        root.display()
    );
    assert_eq!(
        b.disk_generations(id),
        [(2, DiskRole::Root), (2, DiskRole::Ephemeral)]
    );
    b.reconcile().await;
    assert_eq!(b.disk_generations(id).len(), 2, "kept while incoming");
    assert!(
        b.hv.info(&name).unwrap_err().is_not_found(),
        "nothing defined"
    );

    a.hv.script_migration(
        &name,
        MigrationScript {
            steps: 10,
            step: Duration::from_millis(30),
            outcome: MigrationOutcome::Succeed,
        },
    );
    a.command("op-move", "live_migrate", live_migrate(&p, &xml, 30))
        .await;
    let r = a.finished("op-move", "live_migrate", 1).await;
    assert!(r.ok, "{r:?}");
    assert!(r.message.contains("live migration to host-b done"), "{r:?}");
    let progress = a.progress_reports("op-move");
    assert!(!progress.is_empty(), "progress while migrating");
    let phases: Vec<&str> = progress.iter().map(|p| p.phase.as_str()).collect();
    assert!(
        phases.contains(&"copying disk") && phases.contains(&"copying memory"),
        "{phases:?}"
    );
    assert!(progress
        .iter()
        .all(|p| p.percent <= 100 && p.bytes_total > 0));

    // Running on B with generation 2, gone from A.
    let info = b.hv.info(&name).unwrap();
    assert_eq!(
        (info.power, info.server.unwrap().generation),
        (PowerState::Running, 2)
    );
    assert!(a.hv.info(&name).unwrap_err().is_not_found());

    // Before ownership moves, A's desired state still lists generation 1: A must not boot a
    // second copy from the disks it still has.
    let before = a.calls_on(id).len();
    a.reconcile().await;
    a.reconcile().await;
    let after: Vec<Op> = a.calls_on(id)[before..].to_vec();
    assert!(
        !after.iter().any(|o| matches!(o, Op::Define | Op::Start)),
        "A defined or started a second copy: {after:?}"
    );
    assert_eq!(
        a.disk_generations(id).len(),
        2,
        "A's disks wait for the move"
    );
    // Nor does an agent restarted meanwhile (the departure is remembered on disk).
    a.restart();
    wait_for(WAIT, "the restarted agent registered", || async {
        let n = a.ctl.with(|c| c.registrations.len());
        (n >= 2).then_some(()).ok_or(format!("{n} registrations"))
    })
    .await;
    a.reconcile().await;
    a.reconcile().await;
    let after: Vec<Op> = a.calls_on(id)[before..].to_vec();
    assert!(
        !after.iter().any(|o| matches!(o, Op::Define | Op::Start)),
        "the restarted agent booted a second copy: {after:?}"
    );

    // Ownership moves: A no longer lists it, B adopts it as it is.
    a.ctl.set_desired(vec![]).await;
    b.ctl.set_desired(vec![b.server(id, 2, true)]).await;
    a.wait_no_copy(id).await;
    b.ctl.wait_running(&id.to_string(), 2).await;
    b.reconcile().await;
    let b_ops = b.calls_on(id);
    assert!(
        !b_ops
            .iter()
            .any(|o| matches!(o, Op::Define | Op::Start | Op::Destroy)),
        "B adopted the running domain untouched: {b_ops:?}"
    );
    assert_eq!(b.disk_generations(id).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_live_migration_keeps_the_server_on_the_source_and_the_destination_is_cleaned() {
    let (p, xml) = prepared(true).await;
    let (a, b, id) = (&p.a, &p.b, p.id);
    let name = domain_name(&id.to_string());
    a.hv.script_migration(
        &name,
        MigrationScript {
            steps: 3,
            step: Duration::from_millis(10),
            outcome: MigrationOutcome::Fail(
                "operation failed: migration out job: unexpectedly failed".into(),
            ),
        },
    );
    a.command("op-move", "live_migrate", live_migrate(&p, &xml, 30))
        .await;
    let r = a.finished("op-move", "live_migrate", 1).await;
    assert!(!r.ok, "{r:?}");
    assert!(
        r.message.contains("unexpectedly failed") && r.message.contains("stays on host-a"),
        "{}",
        r.message
    );
    assert_eq!(a.hv.info(&name).unwrap().power, PowerState::Running);
    a.ctl.wait_running(&id.to_string(), 1).await;

    // The controller cleans the destination up.
    let destroy = Payload::DestroyStale(pb::DestroyStaleCommand {
        server_id: id.to_string(),
        current_generation: 1,
    });
    b.command("op-move", "cleanup", destroy).await;
    let r = b.finished("op-move", "cleanup", 1).await;
    assert!(r.ok && r.message.contains("generation 2"), "{r:?}");
    b.ctl.set_desired(vec![]).await;
    b.wait_no_copy(id).await;
    // A failed migration is no departure: A keeps converging the server as before.
    let before = a.calls_on(id).len();
    a.reconcile().await;
    assert!(!a.calls_on(id)[before..].contains(&Op::Destroy));
    a.ctl.set_desired(vec![a.server(id, 1, false)]).await;
    a.ctl
        .wait_state(&id.to_string(), 1, pb::ServerPowerState::Shutdown)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_migration_past_its_deadline_is_aborted_and_the_server_keeps_running() {
    let (p, xml) = prepared(true).await;
    let (a, id) = (&p.a, p.id);
    let name = domain_name(&id.to_string());
    a.hv.script_migration(
        &name,
        MigrationScript {
            steps: 2,
            step: Duration::from_millis(10),
            outcome: MigrationOutcome::HangUntilAborted,
        },
    );
    a.command("op-move", "live_migrate", live_migrate(&p, &xml, 1))
        .await;
    let r = a.finished("op-move", "live_migrate", 1).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(
        r.message,
        "live migration did not finish within 1 s; aborted, the server keeps running on host-a"
    );
    assert!(!a.progress_reports("op-move").is_empty());
    assert_eq!(a.hv.info(&name).unwrap().power, PowerState::Running);
    assert!(p.b.hv.info(&name).unwrap_err().is_not_found());
    assert!(a.calls_on(id).contains(&Op::AbortJob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_migration_cancels_a_running_live_migration() {
    let (p, xml) = prepared(true).await;
    let (a, id) = (&p.a, p.id);
    let name = domain_name(&id.to_string());
    a.hv.script_migration(
        &name,
        MigrationScript {
            steps: 1,
            step: Duration::from_millis(10),
            outcome: MigrationOutcome::HangUntilAborted,
        },
    );
    a.command("op-move", "live_migrate", live_migrate(&p, &xml, 60))
        .await;
    wait_for(WAIT, "a progress report", || async {
        (!a.progress_reports("op-move").is_empty())
            .then_some(())
            .ok_or_else(|| "none".to_owned())
    })
    .await;
    let abort = Payload::AbortMigration(pb::AbortMigrationCommand {
        server_id: id.to_string(),
    });
    a.command("op-move", "abort", abort.clone()).await;
    assert!(a.finished("op-move", "abort", 1).await.ok);
    let r = a.finished("op-move", "live_migrate", 1).await;
    assert!(!r.ok && r.message.contains("cancelled"), "{r:?}");
    assert_eq!(a.hv.info(&name).unwrap().power, PowerState::Running);
    // Nothing runs any more: aborting again is fine.
    a.command("op-move-2", "abort", abort).await;
    let again = a.finished("op-move-2", "abort", 1).await;
    assert!(
        again.ok && again.message.contains("no migration"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_migration_arrives_paused_and_boots_when_ownership_moves() {
    let (p, xml) = prepared(false).await;
    let (a, b, id) = (&p.a, &p.b, p.id);
    let name = domain_name(&id.to_string());
    let migrate = Payload::Migrate(pb::MigrateCommand {
        server_id: id.to_string(),
        destination_host: "host-b".into(),
        destination_address: "host-b".into(),
        destination_domain_xml: xml.clone(),
        destination_generation: 2,
        timeout_seconds: 30,
    });
    a.command("op-move", "migrate", migrate).await;
    let r = a.finished("op-move", "migrate", 1).await;
    assert!(r.ok, "{r:?}");
    let ops = a.calls_on(id);
    let shut = ops
        .iter()
        .position(|o| *o == Op::Shutdown)
        .expect("shut down first");
    let paused = ops
        .iter()
        .position(|o| *o == Op::StartPaused)
        .expect("then started paused");
    let moved = ops
        .iter()
        .position(|o| *o == Op::Migrate)
        .expect("then migrated");
    assert!(shut < paused && paused < moved, "{ops:?}");
    assert!(a.hv.info(&name).unwrap_err().is_not_found());
    let info = b.hv.info(&name).unwrap();
    assert_eq!(
        (info.power, info.server.unwrap().generation),
        (PowerState::Paused, 2)
    );
    b.reconcile().await;
    assert_eq!(
        b.hv.info(&name).unwrap().power,
        PowerState::Paused,
        "held while incoming"
    );

    // Ownership moves; the server should run: resuming it is its cold boot.
    a.ctl.set_desired(vec![]).await;
    b.ctl.set_desired(vec![b.server(id, 2, true)]).await;
    b.ctl.wait_running(&id.to_string(), 2).await;
    a.wait_no_copy(id).await;
    let b_ops = b.calls_on(id);
    assert!(b_ops.contains(&Op::Resume), "{b_ops:?}");
    assert!(
        !b_ops.iter().any(|o| matches!(o, Op::Define | Op::Start)),
        "{b_ops:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_migrated_server_that_should_stay_off_is_powered_off_and_a_failure_leaves_the_source_off(
) {
    let (p, xml) = prepared(false).await;
    let (a, b, id) = (&p.a, &p.b, p.id);
    let name = domain_name(&id.to_string());
    let migrate = || {
        Payload::Migrate(pb::MigrateCommand {
            server_id: id.to_string(),
            destination_host: "host-b".into(),
            destination_address: "host-b".into(),
            destination_domain_xml: xml.clone(),
            destination_generation: 2,
            timeout_seconds: 30,
        })
    };
    // First attempt fails: the paused source domain is powered off again.
    a.ctl.set_desired(vec![a.server(id, 1, false)]).await;
    a.ctl
        .wait_state(&id.to_string(), 1, pb::ServerPowerState::Shutdown)
        .await;
    a.hv.script_migration(
        &name,
        MigrationScript {
            steps: 1,
            step: Duration::from_millis(5),
            outcome: MigrationOutcome::Fail("Unable to read from monitor".into()),
        },
    );
    a.command("op-1", "migrate", migrate()).await;
    let r = a.finished("op-1", "migrate", 1).await;
    assert!(
        !r.ok && r.message.contains("Unable to read from monitor"),
        "{r:?}"
    );
    assert_eq!(a.hv.info(&name).unwrap().power, PowerState::ShutOff);
    // Second attempt works; the server should stay off at B: destroyed there, never resumed.
    a.command("op-2", "migrate", migrate()).await;
    assert!(a.finished("op-2", "migrate", 1).await.ok);
    a.ctl.set_desired(vec![]).await;
    b.ctl.set_desired(vec![b.server(id, 2, false)]).await;
    b.ctl
        .wait_state(&id.to_string(), 2, pb::ServerPowerState::Shutdown)
        .await;
    assert!(!b.calls_on(id).contains(&Op::Resume));
    a.wait_no_copy(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrating_needs_a_lease_and_a_matching_destination_xml() {
    let (p, xml) = prepared(true).await;
    let (a, id) = (&p.a, p.id);
    // XML of another generation.
    let wrong = xml.replace(
        "<flotilla:generation>2</flotilla:generation>",
        "<flotilla:generation>7</flotilla:generation>",
    );
    a.command("op-x", "live_migrate", live_migrate(&p, &wrong, 30))
        .await;
    let r = a.finished("op-x", "live_migrate", 1).await;
    assert!(!r.ok && r.message.contains("generation 7"), "{r:?}");
    // Without a lease nothing migrates.
    // (Leases over before they arrive: a new session brings no valid lease either.)
    a.ctl.with(|c| {
        c.ack_heartbeats = false;
        c.lease_ttl_ms = 1;
    });
    wait_for(WAIT, "the lease to run out", || async {
        (!a.link().lease.is_valid())
            .then_some(())
            .ok_or_else(|| "valid".to_owned())
    })
    .await;
    // Sessions come and go without a lease: resend (the agent answers a finished command
    // again) until the answer arrives.
    let cmd = pb::AgentCommand {
        operation_id: "op-y".into(),
        step: "live_migrate".into(),
        payload: Some(live_migrate(&p, &xml, 30)),
    };
    let r = wait_for(WAIT, "the answer without a lease", || async {
        a.ctl.try_send(Out::Command(cmd.clone())).await;
        let found = a.ctl.with(|c| {
            c.step_results
                .iter()
                .find(|r| r.operation_id == "op-y" && r.finished)
                .cloned()
        });
        found.ok_or_else(|| "no answer yet".to_owned())
    })
    .await;
    assert!(!r.ok && r.message.contains("lease"), "{r:?}");
    // Still here, not migrated (paused by self-fencing once the lease ran out, or not yet).
    let power = a.hv.info(&domain_name(&id.to_string())).unwrap().power;
    assert!(
        matches!(power, PowerState::Running | PowerState::Paused),
        "{power}"
    );
    assert!(!a.calls_on(id).contains(&Op::Migrate));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abort_also_cancels_a_migration_still_waiting_for_its_server() {
    let (p, xml) = prepared(true).await;
    let (a, id) = (&p.a, p.id);
    let name = domain_name(&id.to_string());
    a.hv.script_migration(
        &name,
        MigrationScript {
            steps: 1,
            step: Duration::from_millis(10),
            outcome: MigrationOutcome::HangUntilAborted,
        },
    );
    // The first migration runs; a resent one under another operation waits for the server.
    a.command("op-1", "live_migrate", live_migrate(&p, &xml, 60))
        .await;
    wait_for(WAIT, "a progress report", || async {
        (!a.progress_reports("op-1").is_empty())
            .then_some(())
            .ok_or_else(|| "none".to_owned())
    })
    .await;
    a.command("op-2", "live_migrate", live_migrate(&p, &xml, 60))
        .await;
    a.command(
        "op-3",
        "abort",
        Payload::AbortMigration(pb::AbortMigrationCommand {
            server_id: id.to_string(),
        }),
    )
    .await;
    assert!(a.finished("op-3", "abort", 1).await.ok);
    let first = a.finished("op-1", "live_migrate", 1).await;
    assert!(
        !first.ok && first.message.contains("cancelled"),
        "{first:?}"
    );
    let second = a.finished("op-2", "live_migrate", 1).await;
    assert!(
        !second.ok && second.message.contains("cancelled before it started"),
        "{second:?}"
    );
    let migrations = a.calls_on(id).iter().filter(|o| **o == Op::Migrate).count();
    assert_eq!(migrations, 1, "the second never reached libvirt");
    assert_eq!(a.hv.info(&name).unwrap().power, PowerState::Running);
}

/// The migrate command of a migration that succeeded, sent again (a leader change, or the
/// source agent restarted and lost its memory of the command) is answered ok: failing on the
/// missing domain would make the controller roll back a server that runs at its destination.
async fn a_resent_migrate_after_success_is_answered_ok(live: bool) {
    let (p, xml) = prepared(live).await;
    let (a, b, id) = (&p.a, &p.b, p.id);
    let name = domain_name(&id.to_string());
    let (step, payload) = if live {
        ("live_migrate", live_migrate(&p, &xml, 30))
    } else {
        (
            "migrate",
            Payload::Migrate(pb::MigrateCommand {
                server_id: id.to_string(),
                destination_host: "host-b".into(),
                destination_address: "host-b".into(),
                destination_domain_xml: xml.clone(),
                destination_generation: 2,
                timeout_seconds: 30,
            }),
        )
    };
    a.command("op-move", step, payload.clone()).await;
    let r = a.finished("op-move", step, 1).await;
    assert!(r.ok, "{r:?}");
    assert!(a.hv.info(&name).unwrap_err().is_not_found());
    assert_eq!(b.hv.info(&name).unwrap().server.unwrap().generation, 2);
    let migrations =
        |h: &HostUnderTest| h.calls_on(id).iter().filter(|o| **o == Op::Migrate).count();
    assert_eq!(migrations(a), 1);

    // Resent by a new leader (a step the agent has not seen).
    a.command("op-move", "resent", payload.clone()).await;
    let r = a.finished("op-move", "resent", 1).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.message, "already migrated to host-b");

    // Resent to a restarted agent: the departure is remembered on disk.
    a.restart();
    wait_for(WAIT, "the restarted agent registered", || async {
        let n = a.ctl.with(|c| c.registrations.len());
        (n >= 2).then_some(()).ok_or(format!("{n} registrations"))
    })
    .await;
    a.command("op-move", step, payload.clone()).await;
    let r = a.finished("op-move", step, 2).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.message, "already migrated to host-b");
    assert_eq!(migrations(a), 1, "nothing migrated again");

    // A migration to another generation is not the one that succeeded.
    let other = match payload {
        Payload::LiveMigrate(m) => Payload::LiveMigrate(pb::LiveMigrateCommand {
            destination_generation: 3,
            ..m
        }),
        Payload::Migrate(m) => Payload::Migrate(pb::MigrateCommand {
            destination_generation: 3,
            ..m
        }),
        other => other,
    };
    a.command("op-other", step, other).await;
    let r = a.finished("op-other", step, 1).await;
    assert!(!r.ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_migrate_resent_after_success_is_answered_ok() {
    a_resent_migrate_after_success_is_answered_ok(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_migrate_resent_after_success_is_answered_ok() {
    a_resent_migrate_after_success_is_answered_ok(false).await;
}

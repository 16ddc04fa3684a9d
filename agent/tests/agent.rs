//! The real agent (session, executor, commands) against the fake hypervisor and disks and an
//! in-process fake controller: registration, boot, power changes, removal, failures reported
//! per server, a restart that adopts what is there, fencing of stale copies, nothing started
//! without a lease, and self-fencing (guests paused) while the lease is lost.
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::config::{AgentConfig, HostFacts, ValidConfig};
use flotilla_agent::driver::disks::{DiskError, DiskRef, Disks};
use flotilla_agent::driver::disks_fake::{DiskOp, FakeDisks};
use flotilla_agent::driver::fake::{Call, FakeHypervisor, Op};
use flotilla_agent::driver::{reason, Hypervisor, HypervisorError, PowerState};
use flotilla_agent::render::domain::{
    domain_name, render_domain, Boot, CpuMode, DiskCache, DiskRole, DiskSpec, Disks as DomainDisks,
    DomainSpec, DomainType,
};
use flotilla_agent::service::{self, Drivers, Running};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::controller_message::Msg as Out;
use support::{wait_for, FakeController};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

struct World {
    ctl: FakeController,
    hv: Arc<FakeHypervisor>,
    disks: Arc<FakeDisks>,
    config: ValidConfig,
    _dir: tempfile::TempDir,
    image_sha: String,
}

impl World {
    async fn new() -> World {
        World::with_config("").await
    }

    /// A world whose agent configuration ends with `extra` (TOML).
    async fn with_config(extra: &str) -> World {
        let ctl = FakeController::start().await;
        let image_sha = ctl.add_image("img-1", (0..300_000u32).map(|i| i as u8).collect());
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "hostname = \"fake-host\"\naddress = \"127.0.0.1\"\ncontrollers = [\"{}\"]\n\
             libvirt_uri = \"test:///default\"\nstate_dir = \"{}\"\n\
             reconcile_interval_secs = 1\nshutdown_timeout_secs = 1\n{extra}",
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
        World {
            ctl,
            hv: Arc::new(FakeHypervisor::new()),
            disks: Arc::new(FakeDisks::new(dir.path())),
            config,
            _dir: dir,
            image_sha,
        }
    }

    fn start(&self) -> Running {
        service::start(
            &self.config,
            Drivers {
                hv: self.hv.clone(),
                disks: self.disks.clone(),
                hypervisor_version: "fake".into(),
            },
        )
    }

    fn server(&self, id: Uuid, generation: u64, running: bool) -> pb::DesiredServer {
        pb::DesiredServer {
            id: id.to_string(),
            name: format!("srv-{generation}"),
            project_id: "p".into(),
            vcpus: 1,
            ram_mib: 256,
            root_disk_gib: 1,
            image_id: "img-1".into(),
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

    fn calls_on(&self, id: Uuid) -> Vec<Op> {
        let name = domain_name(&id.to_string());
        self.hv
            .calls()
            .into_iter()
            .filter(|c| c.name == name)
            .map(|c| c.op)
            .collect()
    }

    fn disk_generations(&self, id: Uuid) -> Vec<(u64, DiskRole)> {
        self.disks
            .disks()
            .keys()
            .filter(|d| d.server == id)
            .map(|d| (d.generation, d.role))
            .collect()
    }

    async fn wait_gone(&self, id: Uuid) {
        let name = domain_name(&id.to_string());
        wait_for(WAIT, "the server gone from host and report", || async {
            let listed = self.ctl.observed(&id.to_string());
            let domain = self.hv.info(&name).ok();
            let disks = self.disk_generations(id);
            (listed.is_none() && domain.is_none() && disks.is_empty())
                .then_some(())
                .ok_or(format!("{listed:?} {domain:?} {disks:?}"))
        })
        .await
    }
}

/// A domain of generation `generation` defined (and started) behind the agent's back, as an
/// earlier run or another placement left it.
fn leftover(w: &World, id: Uuid, generation: u64, running: bool) {
    let spec = DomainSpec {
        domain_type: DomainType::Qemu,
        cpu: CpuMode::Qemu64,
        server_id: id.to_string(),
        name: "old".into(),
        generation,
        ram_mib: 256,
        vcpus: 1,
        boot: Boot::Disk,
        disks: DomainDisks {
            root: DiskSpec {
                path: w.disks.disk_path(DiskRef::root(id, generation)),
                size_bytes: 0,
            },
            ephemeral: None,
            swap: None,
            cache: DiskCache::None,
        },
        nics: vec![],
        console_log: w.config.console_dir().join(format!("{id}.log")),
    };
    let name =
        w.hv.define(&render_domain(&spec.validate().unwrap()))
            .unwrap();
    if running {
        w.hv.start(&name).unwrap();
    }
    w.disks.insert_disk(DiskRef::root(id, generation), 1 << 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_server_boots_changes_power_and_is_removed() {
    let w = World::new().await;
    let _agent = w.start();
    wait_for(WAIT, "registration", || async {
        w.ctl
            .with(|c| c.registrations.first().cloned())
            .ok_or_else(|| "none".to_owned())
    })
    .await;
    let reg = w.ctl.with(|c| c.registrations[0].clone());
    assert_eq!(reg.hostname, "fake-host");
    assert_eq!(
        reg.capacity,
        Some(pb::HostCapacity {
            vcpus: 8,
            ram_mib: 16384,
            disk_gib: 100
        })
    );
    assert_eq!(
        (reg.hypervisor_type.as_str(), reg.cpu_model.as_str()),
        ("qemu", "Fake CPU")
    );
    assert!(reg.servers.is_empty());

    let id = Uuid::new_v4();
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    let seen = w.ctl.wait_running(&id.to_string(), 1).await;
    assert_eq!(seen.domain_state, "running (booted)");
    assert!(seen.error.is_empty());
    assert_eq!(w.disk_generations(id), [(1, DiskRole::Root)]);
    let root = w.disks.disks()[&DiskRef::root(id, 1)].clone();
    assert_eq!(root.virtual_size, 1 << 30, "sized to the flavor");
    assert_eq!(
        root.backing_file,
        Some(w.disks.base_path(&w.image_sha).unwrap())
    );
    assert_eq!(w.calls_on(id), [Op::Define, Op::Start]);
    assert_eq!(
        w.ctl.with(|c| c.fetches.clone()),
        [("img-1".to_owned(), 0)],
        "the base was streamed from the controller once"
    );

    // Stop: a graceful shutdown, reported SHUTDOWN.
    w.ctl.set_desired(vec![w.server(id, 1, false)]).await;
    let seen = w
        .ctl
        .wait_state(&id.to_string(), 1, pb::ServerPowerState::Shutdown)
        .await;
    assert_eq!(seen.domain_state, "shut off (shutdown)");
    // Start again: the same domain, not redefined.
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    w.ctl.wait_running(&id.to_string(), 1).await;
    assert_eq!(
        w.calls_on(id),
        [Op::Define, Op::Start, Op::Shutdown, Op::Start]
    );

    // Another server with scratch disks, then the first one removed.
    let other = Uuid::new_v4();
    let mut big = w.server(other, 3, true);
    big.ephemeral_gib = 2;
    big.swap_mib = 512;
    w.ctl.set_desired(vec![big]).await;
    w.ctl.wait_running(&other.to_string(), 3).await;
    assert_eq!(
        w.disk_generations(other),
        [
            (3, DiskRole::Root),
            (3, DiskRole::Ephemeral),
            (3, DiskRole::Swap)
        ]
    );
    w.wait_gone(id).await;
    let removal: Vec<_> = w.calls_on(id)[4..]
        .iter()
        .copied()
        .filter(|&op| op != Op::Info)
        .collect();
    assert_eq!(
        removal,
        [Op::Destroy, Op::Undefine],
        "a removed server is powered off and undefined"
    );
    assert_eq!(
        w.ctl.with(|c| c.fetches.len()),
        1,
        "the cached base is reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_the_leader_hint_of_a_follower() {
    let mut w = World::new().await;
    let follower = FakeController::start().await;
    follower.with(|c| c.leader = Some(w.ctl.address.clone()));
    // Only the follower is configured: the leader is found through its hint.
    w.config.controllers = vec![follower.address.clone()];
    let _agent = w.start();
    let id = Uuid::new_v4();
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    w.ctl.wait_running(&id.to_string(), 1).await;
    assert!(follower.with(|c| c.refused) >= 1);
    assert!(follower.with(|c| c.registrations.is_empty()));
    assert_eq!(
        w.ctl.with(|c| c.fetches.len()),
        1,
        "the image came from the leader the session is with"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_powers_itself_off_is_reported_not_restarted() {
    let w = World::new().await;
    let _agent = w.start();
    let id = Uuid::new_v4();
    let name = domain_name(&id.to_string());
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    w.ctl.wait_running(&id.to_string(), 1).await;
    // `poweroff` inside the guest.
    w.hv.set_power(&name, PowerState::ShutOff, reason::SHUTOFF_SHUTDOWN)
        .unwrap();
    let seen = w
        .ctl
        .wait_state(&id.to_string(), 1, pb::ServerPowerState::Shutdown)
        .await;
    assert_eq!(seen.domain_state, "shut off (shutdown)");
    // Three more scans (1 s rounds) and no start: the controller decides.
    let scans = || {
        w.disks
            .calls()
            .iter()
            .filter(|&&op| op == DiskOp::ListDisks)
            .count()
    };
    let now = scans();
    wait_for(WAIT, "three more scans", || async {
        (scans() >= now + 3)
            .then_some(())
            .ok_or(format!("{}", scans()))
    })
    .await;
    assert_eq!(w.calls_on(id), [Op::Define, Op::Start], "not started again");
    // The controller records it as stopped; a later start request starts it.
    w.ctl.set_desired(vec![w.server(id, 1, false)]).await;
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    w.ctl.wait_running(&id.to_string(), 1).await;
    assert_eq!(w.calls_on(id), [Op::Define, Op::Start, Op::Start]);

    // A paused domain is resumed.
    w.hv.set_power(&name, PowerState::Paused, 1).unwrap();
    wait_for(WAIT, "the paused domain resumed", || async {
        let calls = w.calls_on(id);
        (calls.last() == Some(&Op::Resume))
            .then_some(())
            .ok_or(format!("{calls:?}"))
    })
    .await;
    w.ctl.wait_running(&id.to_string(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_reported_as_the_servers_error_and_retried() {
    let w = World::new().await;
    // Three rounds in a row (one per second), so the error is the host's state for a while:
    // reports carry the current state, and one that is over at once may never be sent.
    for _ in 0..3 {
        w.disks.fail_next(
            DiskOp::CreateOverlay,
            DiskError::QemuImg {
                action: "create",
                message: "No space left on device".into(),
            },
        );
    }
    let _agent = w.start();
    let id = Uuid::new_v4();
    w.ctl.set_desired(vec![w.server(id, 2, true)]).await;
    let failed = wait_for(WAIT, "the error in a report", || async {
        w.ctl.with(|c| {
            c.observed
                .iter()
                .flat_map(|o| &o.servers)
                .find(|s| s.id == id.to_string() && !s.error.is_empty())
                .cloned()
                .ok_or(format!("{:?}", c.observed.last()))
        })
    })
    .await;
    assert!(
        failed.error.contains("No space left on device"),
        "{failed:?}"
    );
    assert!(failed.error.contains("create root overlay"), "{failed:?}");
    assert_eq!(failed.placement_generation, 2, "for the desired generation");
    assert_eq!(failed.state(), pb::ServerPowerState::Unspecified);
    // The next round tries again; the error clears once the server runs.
    let seen = w.ctl.wait_running(&id.to_string(), 2).await;
    assert!(seen.error.is_empty(), "{seen:?}");

    // An image the controller cannot serve fails the boot of every server built on it.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let broken = |id| {
        let mut s = w.server(id, 1, true);
        s.image_id = "img-missing".into();
        s.image_sha256 = "cd".repeat(32);
        s
    };
    w.ctl
        .set_desired(vec![w.server(id, 2, true), broken(a), broken(b)])
        .await;
    for s in [a, b] {
        wait_for(WAIT, "the fetch error", || async {
            match w.ctl.observed(&s.to_string()) {
                Some(o) if o.error.contains("img-missing") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    assert_eq!(w.ctl.observed(&id.to_string()).unwrap().error, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_domains_and_finishes_a_boot() {
    let w = World::new().await;
    let (up, booting) = (Uuid::new_v4(), Uuid::new_v4());
    // The first agent defines `booting` but cannot start it (QEMU fails, say, on every try).
    for _ in 0..20 {
        w.hv.fail_next(
            Op::Start,
            &domain_name(&booting.to_string()),
            HypervisorError::Libvirt {
                action: "start",
                name: "x".into(),
                message: "qemu died".into(),
            },
        );
    }
    let first = w.start();
    w.ctl
        .set_desired(vec![w.server(up, 1, true), w.server(booting, 1, true)])
        .await;
    w.ctl.wait_running(&up.to_string(), 1).await;
    wait_for(WAIT, "the failed start reported", || async {
        match w.ctl.observed(&booting.to_string()) {
            Some(o) if o.error.contains("qemu died") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(first);
    w.hv.clear_failures();
    let before = w.hv.calls().len();

    let _second = w.start();
    wait_for(WAIT, "the second registration", || async {
        (w.ctl.with(|c| c.registrations.len()) == 2)
            .then_some(())
            .ok_or_else(|| "one".to_owned())
    })
    .await;
    let reg = w.ctl.with(|c| c.registrations[1].clone());
    let listed: Vec<_> = reg
        .servers
        .iter()
        .map(|s| (s.id.clone(), s.state(), s.placement_generation))
        .collect();
    let mut want = vec![
        (up.to_string(), pb::ServerPowerState::Running, 1),
        (booting.to_string(), pb::ServerPowerState::Shutdown, 1),
    ];
    want.sort();
    assert_eq!(listed, want, "the registration lists what the host holds");
    let seen = w.ctl.wait_running(&booting.to_string(), 1).await;
    assert!(seen.error.is_empty());
    let since: Vec<Call> = w.hv.calls()[before..].to_vec();
    let mutations: Vec<_> = since
        .iter()
        .filter(|c| !matches!(c.op, Op::Info))
        .map(|c| (c.op, c.name.clone()))
        .collect();
    assert_eq!(
        mutations,
        [(Op::Start, domain_name(&booting.to_string()))],
        "adopted as they are: nothing redefined, only the stopped one started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_generation_is_destroyed_before_anything_starts() {
    let w = World::new().await;
    let (moved, fresh) = (Uuid::new_v4(), Uuid::new_v4());
    leftover(&w, moved, 1, true);
    let before = w.hv.calls().len();
    w.ctl
        .set_desired(vec![w.server(moved, 2, true), w.server(fresh, 1, true)])
        .await;
    let _agent = w.start();
    w.ctl.wait_running(&moved.to_string(), 2).await;
    w.ctl.wait_running(&fresh.to_string(), 1).await;
    let calls = w.hv.calls()[before..].to_vec();
    let stale = domain_name(&moved.to_string());
    let destroyed = calls
        .iter()
        .position(|c| c.op == Op::Destroy && c.name == stale)
        .expect("the stale copy destroyed");
    let starts: Vec<_> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.op, Op::Start | Op::Define))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 4, "{calls:?}");
    assert!(
        starts.iter().all(|&i| i > destroyed),
        "destroy at {destroyed}, defines and starts at {starts:?}: {calls:?}"
    );
    assert_eq!(
        w.disk_generations(moved),
        [(2, DiskRole::Root)],
        "the stale generation's disks are gone"
    );
    let info = w.hv.info(&stale).unwrap();
    assert_eq!(info.server.unwrap().generation, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lease_nothing_starts_but_stale_copies_stop() {
    let w = World::new().await;
    // Leases that are over before they reach the agent, and heartbeats never acknowledged.
    w.ctl.with(|c| {
        c.ack_heartbeats = false;
        c.lease_ttl_ms = 1;
    });
    let (stale, wanted) = (Uuid::new_v4(), Uuid::new_v4());
    leftover(&w, stale, 1, true);
    w.ctl.set_desired(vec![w.server(wanted, 1, true)]).await;
    let _agent = w.start();
    wait_for(WAIT, "the stale copy powered off", || async {
        let info = w.hv.info(&domain_name(&stale.to_string()));
        match info {
            Ok(i) if i.power == PowerState::ShutOff => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_for(WAIT, "a few sessions and reports", || async {
        let (regs, beats) = w.ctl.with(|c| (c.registrations.len(), c.heartbeats));
        (regs >= 2 && beats >= 3)
            .then_some(())
            .ok_or(format!("{regs} registrations, {beats} heartbeats"))
    })
    .await;
    assert!(
        w.calls_on(wanted).is_empty(),
        "nothing defined or started for the wanted server"
    );
    assert!(w.disk_generations(wanted).is_empty(), "no disk created");
    assert!(
        !w.disks.calls().contains(&DiskOp::EnsureBase),
        "nothing fetched"
    );
    assert_eq!(
        w.disk_generations(stale),
        [(1, DiskRole::Root)],
        "disks wait for a lease"
    );

    // A lease again (the controller revokes the useless one; the agent registers anew): the
    // server boots and the leftover is cleaned up.
    w.ctl.with(|c| {
        c.ack_heartbeats = true;
        c.lease_ttl_ms = 5_000;
    });
    // (Between two sessions the next registration gets the new lease anyway.)
    w.ctl
        .try_send(Out::LeaseRevoked(pb::LeaseRevoked {
            reason: "test".into(),
        }))
        .await;
    w.ctl.wait_running(&wanted.to_string(), 1).await;
    w.wait_gone(stale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_carried_out_once_and_queries_answered() {
    let w = World::new().await;
    let _agent = w.start();
    let id = Uuid::new_v4();
    let sid = id.to_string();
    let name = domain_name(&sid);
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    w.ctl.wait_running(&sid, 1).await;

    let reboot = pb::AgentCommand {
        operation_id: "op-reboot".into(),
        step: "rebooting_hard".into(),
        payload: Some(pb::agent_command::Payload::Reboot(pb::RebootCommand {
            server_id: sid.clone(),
            hard: true,
        })),
    };
    w.ctl.send(Out::Command(reboot.clone())).await;
    let r = w.ctl.wait_step("op-reboot", 1).await;
    assert!(r.finished && r.ok, "{r:?}");
    // Resent (a reconnect, a new leader): the same answer, no second reboot.
    w.ctl.send(Out::Command(reboot)).await;
    let again = w.ctl.wait_step("op-reboot", 2).await;
    assert_eq!((again.ok, again.message), (r.ok, r.message));
    let reboots = w.calls_on(id).iter().filter(|&&o| o == Op::Reboot).count();
    assert_eq!(reboots, 1);

    // Console log and diagnostics.
    w.hv.write_console(&name, b"boot\nlogin: \n").unwrap();
    w.ctl
        .send(Out::Query(pb::AgentQuery {
            query_id: 7,
            query: Some(pb::agent_query::Query::ConsoleLog(
                pb::AgentConsoleLogQuery {
                    server_id: sid.clone(),
                    lines: 1,
                },
            )),
        }))
        .await;
    w.ctl
        .send(Out::Query(pb::AgentQuery {
            query_id: 8,
            query: Some(pb::agent_query::Query::Diagnostics(
                pb::AgentDiagnosticsQuery {
                    server_id: sid.clone(),
                },
            )),
        }))
        .await;
    let answers = wait_for(WAIT, "both answers", || async {
        let q = w.ctl.with(|c| c.query_results.clone());
        (q.len() == 2).then_some(q.clone()).ok_or(format!("{q:?}"))
    })
    .await;
    for a in answers {
        match (a.query_id, a.result) {
            (7, Some(pb::agent_query_result::Result::ConsoleLog(log))) => {
                assert_eq!(log.output, "login: \n");
                assert!(log.truncated);
            }
            (8, Some(pb::agent_query_result::Result::Diagnostics(d))) => {
                assert_eq!(d.server_id, sid);
                assert_eq!(d.host, "fake-host");
                assert_eq!(d.power_state(), pb::ServerPowerState::Running);
                assert_eq!(d.cpu.unwrap().vcpus, 1);
                assert_eq!(d.memory.unwrap().maximum_kib, 256 * 1024);
                assert_eq!(d.disks.len(), 1);
                assert_eq!(d.disks[0].device, "vda");
                assert_eq!(d.disks[0].capacity_bytes, 1 << 30);
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }

    // Snapshot: shut down, saved, started again, uploaded under the operation id.
    let before = w.calls_on(id).len();
    w.ctl
        .send(Out::Command(pb::AgentCommand {
            operation_id: "op-snap".into(),
            step: "image_snapshot".into(),
            payload: Some(pb::agent_command::Payload::Snapshot(pb::SnapshotCommand {
                server_id: sid.clone(),
                image_id: "img-snap".into(),
                disk_format: pb::ImageDiskFormat::Qcow2 as i32,
            })),
        }))
        .await;
    let r = w.ctl.wait_step("op-snap", 1).await;
    assert!(r.ok, "{r:?}");
    let phases: Vec<String> = w.ctl.with(|c| {
        c.step_results
            .iter()
            .filter(|r| r.operation_id == "op-snap" && !r.finished)
            .filter_map(|r| r.progress.as_ref().map(|p| p.phase.clone()))
            .collect()
    });
    assert_eq!(phases.first().map(String::as_str), Some("saving the disk"));
    let (header, content) = w.ctl.with(|c| c.uploads[0].clone());
    assert_eq!(
        (header.request_id.as_str(), header.image.as_str()),
        ("op-snap", "img-snap")
    );
    assert_eq!(header.size_bytes, content.len() as u64);
    assert_eq!(content.len(), 64 << 10);
    assert_eq!(
        &w.calls_on(id)[before..],
        [Op::Info, Op::Shutdown, Op::Start]
    );
    assert!(
        !Path::new(&w.config.state_dir)
            .join("snapshots")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "the saved file is deleted after the upload"
    );

    // Rebuild onto another image: the root disk is recreated on the new base.
    let new_sha = w.ctl.add_image("img-2", vec![7u8; 100_000]);
    w.ctl
        .send(Out::Command(pb::AgentCommand {
            operation_id: "op-rebuild".into(),
            step: "rebuilding".into(),
            payload: Some(pb::agent_command::Payload::Rebuild(pb::RebuildCommand {
                server_id: sid.clone(),
                image_id: "img-2".into(),
                image_sha256: new_sha.clone(),
                image_size_bytes: 100_000,
                image_disk_format: pb::ImageDiskFormat::Raw as i32,
            })),
        }))
        .await;
    let r = w.ctl.wait_step("op-rebuild", 1).await;
    assert!(r.ok, "{r:?}");
    let root = w.disks.disks()[&DiskRef::root(id, 1)].clone();
    assert_eq!(
        root.backing_file,
        Some(w.disks.base_path(&new_sha).unwrap())
    );
    assert_eq!(w.hv.info(&name).unwrap().power, PowerState::Running);

    // A command for a server this host does not hold fails with a reason.
    w.ctl
        .send(Out::Command(pb::AgentCommand {
            operation_id: "op-x".into(),
            step: "rebuilding".into(),
            payload: Some(pb::agent_command::Payload::Rebuild(pb::RebuildCommand {
                server_id: Uuid::new_v4().to_string(),
                image_id: "img-2".into(),
                image_sha256: new_sha,
                image_size_bytes: 100_000,
                image_disk_format: pb::ImageDiskFormat::Raw as i32,
            })),
        }))
        .await;
    let r = w.ctl.wait_step("op-x", 1).await;
    assert!(
        !r.ok && r.message.contains("not placed on this host"),
        "{r:?}"
    );
}

impl World {
    /// The controller goes silent: heartbeats unacknowledged, new sessions refused (as a
    /// controller that is electing), so the agent's lease runs out.
    fn partition(&self) {
        let address = self.ctl.address.clone();
        self.ctl.with(|c| {
            c.ack_heartbeats = false;
            c.leader = Some(address);
        });
    }

    fn heal(&self) {
        self.ctl.with(|c| {
            c.ack_heartbeats = true;
            c.leader = None;
        });
    }

    fn power(&self, id: Uuid) -> Option<PowerState> {
        self.hv
            .info(&domain_name(&id.to_string()))
            .ok()
            .map(|i| i.power)
    }

    fn suspends(&self) -> usize {
        self.hv
            .calls()
            .iter()
            .filter(|c| c.op == Op::Suspend)
            .count()
    }
}

/// The agent's own newest report of `id` (also while no session carries it).
fn reported(agent: &Running, id: Uuid) -> Option<pb::ObservedServer> {
    let id = id.to_string();
    agent
        .link
        .observed()
        .and_then(|o| o.servers.into_iter().find(|s| s.id == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_are_paused_while_the_lease_is_lost_and_resumed_with_it() {
    let w = World::new().await;
    w.ctl.with(|c| c.lease_ttl_ms = 1_000);
    let (kept, evacuated) = (Uuid::new_v4(), Uuid::new_v4());
    w.ctl
        .set_desired(vec![w.server(kept, 1, true), w.server(evacuated, 1, true)])
        .await;
    let agent = w.start();
    w.ctl.wait_running(&kept.to_string(), 1).await;
    w.ctl.wait_running(&evacuated.to_string(), 1).await;
    assert_eq!(w.suspends(), 0, "nothing paused while the lease is held");

    w.partition();
    wait_for(WAIT, "both guests paused, and reported so", || async {
        let powers = (w.power(kept), w.power(evacuated));
        let states = (
            reported(&agent, kept).map(|o| o.state()),
            reported(&agent, evacuated).map(|o| o.state()),
        );
        let paused = Some(pb::ServerPowerState::Paused);
        (powers == (Some(PowerState::Paused), Some(PowerState::Paused))
            && states == (paused, paused))
            .then_some(())
            .ok_or(format!("{powers:?} {states:?}"))
    })
    .await;
    assert!(!agent.link.lease.is_valid());
    for id in [kept, evacuated] {
        let calls = w.calls_on(id);
        assert!(
            !calls.contains(&Op::Destroy) && !calls.contains(&Op::Undefine),
            "fencing destroys nothing: {calls:?}"
        );
    }

    // Meanwhile the controllers rebuilt one server elsewhere; then the host is reachable again.
    w.ctl.set_desired(vec![w.server(kept, 1, true)]).await;
    w.heal();
    w.ctl.wait_running(&kept.to_string(), 1).await;
    w.wait_gone(evacuated).await;
    let calls = w.calls_on(kept);
    assert!(calls.contains(&Op::Resume), "{calls:?}");
    assert_eq!(
        calls.iter().filter(|op| **op == Op::Start).count(),
        1,
        "resumed, not booted again: {calls:?}"
    );
    assert_eq!(w.power(kept), Some(PowerState::Running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_with_a_prompt_controller_pauses_nothing() {
    let w = World::new().await;
    w.ctl.with(|c| c.lease_ttl_ms = 1_000);
    let id = Uuid::new_v4();
    // A guest the previous agent run left running.
    leftover(&w, id, 1, true);
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    let _agent = w.start();
    w.ctl.wait_running(&id.to_string(), 1).await;
    // Heartbeats for well over a lease TTL.
    wait_for(WAIT, "heartbeats for two lease TTLs", || async {
        let beats = w.ctl.with(|c| c.heartbeats);
        (beats >= 20)
            .then_some(())
            .ok_or(format!("{beats} heartbeats"))
    })
    .await;
    assert_eq!(w.suspends(), 0, "{:?}", w.hv.calls());
    assert_eq!(w.power(id), Some(PowerState::Running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fencing_off_guests_keep_running_without_a_lease() {
    let w = World::with_config("[lease]\nfence_on_loss = false\n").await;
    w.ctl.with(|c| c.lease_ttl_ms = 500);
    let id = Uuid::new_v4();
    w.ctl.set_desired(vec![w.server(id, 1, true)]).await;
    let agent = w.start();
    w.ctl.wait_running(&id.to_string(), 1).await;
    w.partition();
    wait_for(WAIT, "the lease lost and sessions refused", || async {
        let refused = w.ctl.with(|c| c.refused);
        (!agent.link.lease.is_valid() && refused >= 3)
            .then_some(())
            .ok_or(format!("{refused} refused"))
    })
    .await;
    assert_eq!(w.suspends(), 0);
    assert_eq!(w.power(id), Some(PowerState::Running));
}

//! Moving servers: live and cold migration, evacuation, host jobs and cancelling (I3, I5, I7).
use super::*;

fn ratios() -> AllocationRatios {
    AllocationRatios {
        cpu: 1.0,
        ram: 1.0,
        disk: 1.0,
    }
}

fn spec(host: &str, live: bool) -> MoveSpec {
    MoveSpec {
        host_id: host.into(),
        live,
        block_migration: true,
        timeout_seconds: 60,
        force: false,
        parent_id: String::new(),
        ratios: ratios(),
    }
}

fn step(op: &str, step: &str, ok: bool, message: &str) -> Command {
    Command::MigrationStep {
        operation_id: op.into(),
        step: step.into(),
        ok,
        message: message.into(),
    }
}

/// s1 ACTIVE on h1.
fn running() -> Log {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Active);
    log
}

fn down(log: &mut Log, host: &str) {
    let lease_id = log.lease(host);
    log.ok(Command::MarkHostDown {
        host_id: host.into(),
        lease_id,
    });
}

#[test]
fn a_live_migration_claims_the_destination_and_moves_ownership_only_when_libvirt_finished() {
    let mut log = running();
    log.ok(request(
        "s1",
        "mig",
        ServerRequest::Migrate(spec("h2", true)),
    ));
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.task_state.as_str(), s.host_id.as_str()),
        (ServerStatus::Migrating, "migrating", "h1")
    );
    assert_eq!(log.op("mig").kind, "live_migrate");
    assert_eq!(log.op("mig").step, "prepare_destination");
    // Both hosts hold the claim while it moves (I3: nothing else can take h2's room).
    assert_eq!(log.host("h1").used, log.host("h2").used);
    assert_eq!(log.state.migrating_to("h2").count(), 1);

    // A result for a step the operation is not at changes nothing.
    log.ok(step("mig", "migrate", true, ""));
    assert_eq!(log.server("s1").host_id, "h1");

    log.ok(step("mig", "prepare_destination", true, "<domain/>"));
    assert_eq!(log.op("mig").step, "migrate");
    let m = log.server("s1").migration.clone().unwrap();
    assert_eq!(
        (m.destination_xml.as_str(), m.destination_generation),
        ("<domain/>", 2)
    );

    log.ok(Command::OperationProgress {
        operation_id: "mig".into(),
        step: "migrate".into(),
        progress: Progress {
            phase: "copying memory".into(),
            percent: 40,
            bytes_done: 4,
            bytes_total: 10,
        },
    });
    assert_eq!(log.op("mig").progress.as_ref().unwrap().percent, 40);

    log.ok(step("mig", "migrate", true, ""));
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.host_id.as_str(), s.placement_generation),
        (ServerStatus::Active, "h2", 2)
    );
    assert!(s.migration.is_none() && s.task_state.is_empty());
    assert_eq!(log.host("h1").used, Capacity::default());
    assert_eq!(log.host("h2").used, Capacity::new(2, 1024, 1));
    assert_eq!(log.op("mig").state, OpState::Succeeded);
    assert_eq!(log.state.migrating_to("h2").count(), 0);
}

#[test]
fn a_failed_or_cancelled_migration_leaves_the_server_where_it_was_and_releases_the_claim() {
    let mut log = running();
    log.ok(request(
        "s1",
        "m1",
        ServerRequest::Migrate(spec("h2", true)),
    ));
    log.ok(step("m1", "prepare_destination", true, "<domain/>"));
    log.ok(step(
        "m1",
        "migrate",
        false,
        "did not finish within 60 s; aborted",
    ));
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.host_id.as_str(), s.placement_generation),
        (ServerStatus::Active, "h1", 1)
    );
    assert_eq!(log.host("h2").used, Capacity::default());
    assert_eq!(log.op("m1").state, OpState::Failed);
    assert!(log.op("m1").message.contains("within 60 s"));

    // Cancelled while libvirt copies: the abort makes the step fail; the op ends CANCELLED.
    log.ok(request(
        "s1",
        "m2",
        ServerRequest::Migrate(spec("h2", true)),
    ));
    log.ok(step("m2", "prepare_destination", true, "<domain/>"));
    assert!(cancellable(log.op("m2")));
    log.ok(Command::CancelOperation {
        operation_id: "m2".into(),
    });
    assert!(log.op("m2").cancel_requested && !cancellable(log.op("m2")));
    log.ok(step("m2", "migrate", false, "operation aborted"));
    assert_eq!(log.op("m2").state, OpState::Cancelled);
    assert_eq!(log.server("s1").status, ServerStatus::Active);

    // Cancelled while the destination prepares: it ends at once.
    log.ok(request(
        "s1",
        "m3",
        ServerRequest::Migrate(spec("h2", true)),
    ));
    log.ok(Command::CancelOperation {
        operation_id: "m3".into(),
    });
    assert_eq!(log.op("m3").state, OpState::Cancelled);
    assert_eq!(log.host("h2").used, Capacity::default());
    // Finished operations and other kinds cannot be cancelled.
    let out = log.apply(Command::CancelOperation {
        operation_id: "m3".into(),
    });
    assert!(matches!(
        out,
        Outcome::Rejected(Rejection::FailedPrecondition(_))
    ));
    let out = log.apply(Command::CancelOperation {
        operation_id: "op-s1".into(),
    });
    assert!(matches!(
        out,
        Outcome::Rejected(Rejection::FailedPrecondition(_))
    ));
}

#[test]
fn migration_pre_checks_refuse_with_reasons() {
    let mut log = running();
    let refused = |log: &mut Log, op: &str, r: ServerRequest, needle: &str| {
        let out = log.request("s1", op, r);
        assert!(
            matches!(&out, Outcome::Rejected(e) if e.to_string().contains(needle)),
            "{needle}: {out:?}"
        );
    };
    refused(
        &mut log,
        "a",
        ServerRequest::Migrate(spec("h1", true)),
        "on that host already",
    );
    refused(
        &mut log,
        "b",
        ServerRequest::Migrate(spec("h9", true)),
        "not found",
    );
    refused(
        &mut log,
        "c",
        ServerRequest::Evacuate(spec("h2", false)),
        "is up",
    );
    log.ok(request(
        "s1",
        "lock",
        ServerRequest::Lock {
            reason: String::new(),
        },
    ));
    refused(
        &mut log,
        "d",
        ServerRequest::Migrate(spec("h2", true)),
        "locked",
    );
    log.ok(request("s1", "unlock", ServerRequest::Unlock));
    // A full destination (4 vCPUs, three 2-vCPU servers would not fit).
    log.ok(create(vec![new_server("s2", "h2"), new_server("s3", "h2")]));
    refused(
        &mut log,
        "e",
        ServerRequest::Migrate(spec("h2", true)),
        "cannot take",
    );
    log.ok(request("s1", "stop", ServerRequest::Stop));
    log.report("h1", &[("s1", PowerState::Shutdown, 1, "")]);
    refused(
        &mut log,
        "f",
        ServerRequest::Migrate(spec("h2", true)),
        "ACTIVE",
    );
    assert_eq!(log.host("h1").used, Capacity::new(2, 1024, 1));
}

#[test]
fn a_cold_migration_finishes_when_the_destination_shows_the_power_state() {
    let mut log = running();
    log.ok(request(
        "s1",
        "cold",
        ServerRequest::Migrate(spec("h2", false)),
    ));
    assert_eq!(log.op("cold").kind, "migrate");
    log.ok(step("cold", "prepare_destination", true, "<domain/>"));
    log.ok(step("cold", "migrate", true, ""));
    let s = log.server("s1");
    assert_eq!(
        (s.host_id.as_str(), s.task_state.as_str()),
        ("h2", "finishing_migration")
    );
    assert_eq!(log.op("cold").state, OpState::Running);
    log.report("h2", &[("s1", PowerState::Paused, 2, "")]);
    assert_eq!(log.op("cold").state, OpState::Running);
    log.report("h2", &[("s1", PowerState::Running, 2, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Active);
    assert_eq!(log.op("cold").state, OpState::Succeeded);
}

#[test]
fn a_host_going_down_mid_migration_rolls_it_back() {
    let mut log = running();
    log.ok(request(
        "s1",
        "mig",
        ServerRequest::Migrate(spec("h2", true)),
    ));
    down(&mut log, "h2");
    assert_eq!(log.op("mig").state, OpState::Failed);
    assert!(log.op("mig").message.contains("node2 went down"));
    assert!(log.server("s1").migration.is_none());
    assert_eq!(log.host("h2").used, Capacity::default());
}

#[test]
fn evacuation_rebuilds_off_a_down_host_with_a_new_generation() {
    let mut log = running();
    down(&mut log, "h1");
    log.ok(request(
        "s1",
        "evac",
        ServerRequest::Evacuate(spec("h2", false)),
    ));
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.host_id.as_str(), s.placement_generation),
        (ServerStatus::Rebuild, "h2", 2)
    );
    assert_eq!(log.host("h1").used, Capacity::default());
    assert_eq!(log.host("h2").used, Capacity::new(2, 1024, 1));
    // The old host's stale copy (generation 1) does not count.
    log.report("h2", &[("s1", PowerState::Running, 1, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Rebuild);
    log.report("h2", &[("s1", PowerState::Running, 2, "")]);
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.id.as_str(), s.name.as_str()),
        (ServerStatus::Active, "s1", "vm-s1")
    );
    assert_eq!(log.op("evac").state, OpState::Succeeded);
    assert!(log.op("evac").message.contains("lost"));
    assert_eq!(log.usage(Resource::Instances), 1);
}

#[test]
fn a_host_evacuation_runs_items_within_its_parallelism_and_reports_each() {
    let mut log = setup();
    log.ok(create(vec![new_server("a", "h1"), new_server("b", "h1")]));
    log.report(
        "h1",
        &[
            ("a", PowerState::Running, 1, ""),
            ("b", PowerState::Running, 1, ""),
        ],
    );
    let job = |parallel| HostJob {
        drain: false,
        live: false,
        parallel,
        target_host_id: String::new(),
        timeout_seconds: 60,
        ratios: ratios(),
    };
    let start = |id: &str| Command::StartHostJob {
        operation_id: id.into(),
        host_id: "h1".into(),
        job: job(1),
    };
    // Refused while h1 holds its lease.
    assert!(matches!(log.apply(start("j0")), Outcome::Rejected(_)));
    down(&mut log, "h1");
    log.ok(start("job"));
    let op = log.op("job");
    assert_eq!((op.kind.as_str(), op.items.len()), ("host_evacuate", 2));
    assert!(op
        .items
        .iter()
        .all(|i| i.state == ItemState::Pending && i.method == "rebuild"));

    let item = |server: &str, host: &str, why: &str| ItemStart {
        server_id: server.into(),
        host_id: host.into(),
        no_host_reason: why.into(),
        operation_id: format!("job-{server}"),
    };
    log.ok(Command::AdvanceHostJob {
        operation_id: "job".into(),
        starts: vec![item("a", "h2", "")],
    });
    assert_eq!(log.op("job").items[0].state, ItemState::Running);
    assert_eq!(log.op("job-a").parent_id, "job");
    // b finds no host; a comes up on h2.
    log.ok(Command::AdvanceHostJob {
        operation_id: "job".into(),
        starts: vec![item("b", "", "no valid host: not enough RAM")],
    });
    assert_eq!(log.op("job").state, OpState::Running);
    log.report("h2", &[("a", PowerState::Running, 2, "")]);
    let op = log.op("job");
    assert_eq!(op.state, OpState::PartiallySucceeded, "{op:?}");
    assert_eq!(op.message, "1 of 2 servers moved");
    assert_eq!(op.items[0].state, ItemState::Succeeded);
    assert_eq!(op.items[1].state, ItemState::Failed);
    assert!(op.items[1].message.contains("not enough RAM"));
}

#[test]
fn a_drain_disables_the_host_and_cancelling_it_skips_what_has_not_started() {
    let mut log = setup();
    log.ok(create(vec![new_server("a", "h1"), new_server("b", "h1")]));
    log.report(
        "h1",
        &[
            ("a", PowerState::Running, 1, ""),
            ("b", PowerState::Shutdown, 1, ""),
        ],
    );
    log.ok(Command::StartHostJob {
        operation_id: "drain".into(),
        host_id: "h1".into(),
        job: HostJob {
            drain: true,
            live: true,
            parallel: 1,
            target_host_id: String::new(),
            timeout_seconds: 60,
            ratios: ratios(),
        },
    });
    assert!(!log.host("h1").enabled);
    assert_eq!(log.host("h1").disabled_reason, "drain");
    let methods: Vec<_> = log
        .op("drain")
        .items
        .iter()
        .map(|i| i.method.clone())
        .collect();
    assert_eq!(methods, ["live_migrate", "cold_migrate"]);
    log.ok(Command::AdvanceHostJob {
        operation_id: "drain".into(),
        starts: vec![ItemStart {
            server_id: "a".into(),
            host_id: "h2".into(),
            no_host_reason: String::new(),
            operation_id: "drain-0".into(),
        }],
    });
    log.ok(Command::CancelOperation {
        operation_id: "drain".into(),
    });
    assert_eq!(log.op("drain").items[1].state, ItemState::Cancelled);
    assert_eq!(log.op("drain").state, OpState::Running);
    log.ok(step("drain-0", "prepare_destination", true, "<domain/>"));
    log.ok(step("drain-0", "migrate", true, ""));
    assert_eq!(log.server("a").host_id, "h2");
    assert_eq!(log.op("drain").state, OpState::Cancelled);
    assert_eq!(log.op("drain").items[0].state, ItemState::Succeeded);
}

#[test]
fn a_boot_on_a_host_that_goes_down_is_rescheduled() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    down(&mut log, "h1");
    let s = log.server("s1");
    assert_eq!(s.task_state, "rescheduling");
    assert_eq!(s.failed_hosts, ["h1"]);
    assert!(s.boot_failure.contains("node1 went down"));
    log.ok(Command::RescheduleServer {
        server_id: "s1".into(),
        host_id: "h2".into(),
        ratios: ratios(),
    });
    let s = log.server("s1");
    assert_eq!((s.host_id.as_str(), s.placement_generation), ("h2", 2));
    log.report("h2", &[("s1", PowerState::Running, 2, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Active);
}

#[test]
fn a_live_migration_the_destination_reports_running_completes_without_the_source() {
    let mut log = running();
    log.ok(request(
        "s1",
        "mig",
        ServerRequest::Migrate(spec("h2", true)),
    ));
    // While preparing, a copy at the new generation on h2 proves nothing yet.
    log.report("h2", &[("s1", PowerState::Running, 2, "")]);
    assert_eq!(log.server("s1").host_id, "h1");
    log.ok(step("mig", "prepare_destination", true, "<domain/>"));
    // Copying: the incoming copy is paused.
    log.report("h2", &[("s1", PowerState::Paused, 2, "")]);
    assert_eq!(log.server("s1").host_id, "h1");
    // Done: it runs there; the source's answer never came.
    log.report("h2", &[("s1", PowerState::Running, 2, "")]);
    let s = log.server("s1");
    assert_eq!(
        (s.host_id.as_str(), s.placement_generation, s.status),
        ("h2", 2, ServerStatus::Active)
    );
    assert_eq!(log.op("mig").state, OpState::Succeeded);
    // The source's late answer changes nothing.
    log.ok(step("mig", "migrate", false, "no domain on this host"));
    assert_eq!(log.server("s1").host_id, "h2");
    assert_eq!(log.op("mig").state, OpState::Succeeded);
}

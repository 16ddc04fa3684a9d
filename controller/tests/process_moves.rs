//! Process tests of moving servers on a real 3-controller cluster with scripted agents: live
//! and cold migration with their rollback and cancel, evacuation of a dead host (refused while
//! it holds its lease), a host evacuation whose leader is killed half way, and a returning host
//! that never gets its moved servers back.
mod support;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::host_service_client::HostServiceClient;
use flotilla_proto::v1::operation_service_client::OperationServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use support::compute::{World, ALL, CONVERGE, READY};
use support::{request_id, wait_for, with_token};
use tonic::Code;

impl World {
    async fn operation(&self, id: &str) -> pb::Operation {
        let req = pb::GetOperationRequest {
            operation_id: id.into(),
            stale: false,
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { OperationServiceClient::new(ch).get_operation(req).await }
        })
        .await
        .expect("operation")
    }

    async fn wait_op(&self, id: &str) -> pb::Operation {
        wait_for(CONVERGE, "operation finished", || async {
            let op = self.operation(id).await;
            (op.finished_at_ms != 0)
                .then_some(op.clone())
                .ok_or(format!("{:?} at {}", op.state(), op.step))
        })
        .await
    }

    async fn live_migrate(&self, server: &str, host: &str) -> Result<String, tonic::Status> {
        let req = pb::LiveMigrateServerRequest {
            request_id: request_id(),
            server: server.into(),
            host: host.into(),
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { ServerServiceClient::new(ch).live_migrate_server(req).await }
        })
        .await
        .map(|r| r.operation_id)
    }

    async fn evacuate_server(&self, server: &str, host: &str) -> Result<String, tonic::Status> {
        let req = pb::EvacuateServerRequest {
            request_id: request_id(),
            server: server.into(),
            host: host.into(),
            force: false,
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { ServerServiceClient::new(ch).evacuate_server(req).await }
        })
        .await
        .map(|r| r.operation_id)
    }

    async fn cancel(&self, op: &str) -> Result<pb::Operation, tonic::Status> {
        let req = pb::CancelOperationRequest {
            request_id: request_id(),
            operation_id: op.into(),
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { OperationServiceClient::new(ch).cancel_operation(req).await }
        })
        .await
    }

    async fn evacuate_host(
        &self,
        host: &str,
        dry_run: bool,
    ) -> Result<pb::EvacuateHostResponse, tonic::Status> {
        let req = pb::EvacuateHostRequest {
            request_id: request_id(),
            host: host.into(),
            dry_run,
            parallel: 2,
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { HostServiceClient::new(ch).evacuate_host(req).await }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_and_cold_migration_move_ownership_roll_back_on_failure_and_cancel() {
    let _serial = support::serial().await;
    let w = World::start().await;
    let a = w.agent("node-a");
    let b = w.agent("node-b");
    w.wait_hosts_up(2).await;
    let id = w.create("mover", 1, "node-a").await.servers[0].id.clone();
    w.wait_status(&id, pb::ServerStatus::Active).await;

    // Scheduler-picked destination: the only other host.
    let op = w.live_migrate(&id, "").await.expect("live migrate");
    let done = w.wait_op(&op).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    assert_eq!(done.kind, "live_migrate");
    let s = w.wait_status(&id, pb::ServerStatus::Active).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("node-b", 2));
    wait_for(
        CONVERGE,
        "the copy on node-a gone, node-b runs it",
        || async {
            let gone = !a.with(|s| s.local.contains_key(&id));
            let there = b.with(|s| s.local.get(&id).map(|l| l.generation)) == Some(2);
            (gone && there)
                .then_some(())
                .ok_or(format!("gone={gone} there={there}"))
        },
    )
    .await;
    let sent: Vec<String> = a.with(|s| s.commands.iter().map(|c| c.step.clone()).collect());
    assert!(
        sent.contains(&"migrate".to_owned()),
        "source got the migrate step: {sent:?}"
    );
    assert!(b.with(|s| s.commands.iter().any(|c| c.step == "prepare_destination")));

    // libvirt fails on the source: the server stays on node-b at generation 2.
    b.with(|s| {
        s.fail_steps
            .insert("migrate".into(), "unable to connect to destination".into())
    });
    let op = w
        .live_migrate(&id, "node-a")
        .await
        .expect("live migrate back");
    let failed = w.wait_op(&op).await;
    assert_eq!(failed.state(), pb::OperationState::Failed);
    assert!(failed.error.contains("unable to connect"), "{failed:?}");
    let s = w.wait_status(&id, pb::ServerStatus::Active).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("node-b", 2));

    // Pre-checks: to the same host, or a host that does not exist.
    let same = w.live_migrate(&id, "node-b").await.unwrap_err();
    assert_eq!(same.code(), Code::FailedPrecondition, "{same:?}");
    let nowhere = w.live_migrate(&id, "node-z").await.unwrap_err();
    assert_eq!(nowhere.code(), Code::NotFound);

    // Cold migration back to node-a: shut off, moved, running again there.
    b.with(|s| s.fail_steps.clear());
    let req = pb::MigrateServerRequest {
        request_id: request_id(),
        server: id.clone(),
        host: "node-a".into(),
    };
    let op = w
        .call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { ServerServiceClient::new(ch).migrate_server(req).await }
        })
        .await
        .expect("cold migrate")
        .operation_id;
    let done = w.wait_op(&op).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    let s = w.wait_status(&id, pb::ServerStatus::Active).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("node-a", 3));

    // Cancel while the destination prepares: ends at once, nothing moved.
    b.with(|s| s.mute_steps.insert("prepare_destination".into()));
    let op = w.live_migrate(&id, "node-b").await.expect("live migrate");
    let cancelled = w.cancel(&op).await.expect("cancel");
    assert_eq!(
        cancelled.state(),
        pb::OperationState::Cancelled,
        "{cancelled:?}"
    );
    let again = w.cancel(&op).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    b.with(|s| s.mute_steps.clear());

    // Cancel while libvirt copies: CANCELLING, the source aborts, CANCELLED; still on node-a.
    a.with(|s| s.mute_steps.insert("migrate".into()));
    let op = w.live_migrate(&id, "node-b").await.expect("live migrate");
    wait_for(CONVERGE, "migrating", || async {
        let o = w.operation(&op).await;
        (o.step == "migrate").then_some(()).ok_or(o.step)
    })
    .await;
    let running = wait_for(CONVERGE, "progress reported", || async {
        let o = w.operation(&op).await;
        o.progress
            .clone()
            .filter(|p| p.percent == 42)
            .ok_or(format!("{:?}", o.progress))
    })
    .await;
    assert_eq!(running.phase, "copying memory");
    let cancelling = w.cancel(&op).await.expect("cancel");
    assert!(!cancelling.cancellable);
    let ended = w.wait_op(&op).await;
    assert_eq!(ended.state(), pb::OperationState::Cancelled, "{ended:?}");
    assert!(a.with(|s| s.commands.iter().any(|c| c.step == "abort_migration")));
    let s = w.wait_status(&id, pb::ServerStatus::Active).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("node-a", 3));
    // A finished operation cannot be cancelled.
    let late = w.cancel(&ended.id).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);

    // The server's operations list newest first, page by page.
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListOperationsRequest {
            resource_id: id.clone(),
            page_size: 2,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = w
            .call(|ch, t| {
                let req = with_token(req.clone(), &t);
                async move { OperationServiceClient::new(ch).list_operations(req).await }
            })
            .await
            .expect("list operations");
        listed.extend(page.operations);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed.len(), 6, "create, 2 live, cold, 2 cancelled");
    assert_eq!(listed[0].id, ended.id, "the newest first");
    assert_eq!(listed.last().unwrap().kind, "create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evacuating_a_dead_host_survives_a_leader_kill_and_the_host_never_gets_them_back() {
    let _serial = support::serial().await;
    let w = World::start().await;
    let a = w.agent("node-a");
    let b = w.agent("node-b");
    let c = w.agent("node-c");
    w.wait_hosts_up(3).await;
    let created = w.create("evac", 4, "node-a").await;
    let ids: Vec<String> = created.servers.iter().map(|s| s.id.clone()).collect();
    for id in &ids {
        w.wait_status(id, pb::ServerStatus::Active).await;
    }

    // While node-a holds its lease, evacuation is refused with the reason.
    let refused = w.evacuate_host("node-a", false).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("force-down"), "{refused:?}");

    // node-a dies: declared down after its lease and grace.
    drop(a);
    wait_for(CONVERGE, "node-a down", || async {
        let hosts = w.hosts().await;
        let h = hosts.iter().find(|h| h.hostname == "node-a").unwrap();
        (h.state() == pb::HostState::Down)
            .then_some(())
            .ok_or(format!("{:?}", h.state()))
    })
    .await;
    let plan = w.evacuate_host("node-a", true).await.expect("dry run");
    assert!(plan.operation_id.is_empty());
    assert_eq!(plan.plan.len(), 4);
    assert!(plan
        .plan
        .iter()
        .all(|p| p.method == "rebuild" && !p.destination.is_empty()));

    // Boots on the new hosts are held, then the leader is killed mid-evacuation.
    b.with(|s| s.hold = true);
    c.with(|s| s.hold = true);
    let started = w.evacuate_host("node-a", false).await.expect("evacuate");
    let op = started.operation_id.clone();
    wait_for(CONVERGE, "two items running", || async {
        let o = w.operation(&op).await;
        let running = o
            .items
            .iter()
            .filter(|i| i.state() == pb::OperationState::Running)
            .count();
        (running == 2)
            .then_some(())
            .ok_or(format!("{running} running: {:?}", o.items))
    })
    .await;
    let leader = w.cluster.wait_leader(&ALL, READY).await;
    w.cluster.kill(leader);
    let rest: Vec<u64> = ALL.into_iter().filter(|&n| n != leader).collect();
    w.cluster.wait_leader(&rest, READY).await;
    b.release();
    c.release();
    let done = w.wait_op(&op).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    assert_eq!(done.items.len(), 4);
    for id in &ids {
        let s = w.wait_status(id, pb::ServerStatus::Active).await;
        assert!(s.host == "node-b" || s.host == "node-c", "{s:?}");
        assert_eq!(s.placement_generation, 2);
    }

    // node-a comes back: its desired state lists none of them, so nothing runs twice.
    let a = w.agent("node-a");
    w.wait_hosts_up(3).await;
    wait_for(CONVERGE, "node-a's desired state", || async {
        a.with(|s| s.desired.as_ref().map(|d| d.servers.len()))
            .filter(|&n| n == 0)
            .ok_or("no desired state yet".to_owned())
    })
    .await;
    assert!(a.with(|s| s.local.is_empty()));
    let copies: usize = ids
        .iter()
        .map(|id| {
            [&b, &c]
                .iter()
                .filter(|ag| ag.with(|s| s.local.contains_key(id)))
                .count()
        })
        .sum();
    assert_eq!(copies, 4, "each server runs exactly once");

    // An operator fences node-b (still heartbeating): its lease is revoked, it cannot register
    // again, and its servers can be evacuated at once.
    let on_b = ids
        .iter()
        .find(|id| b.with(|s| s.local.contains_key(*id)))
        .cloned()
        .expect("a server on node-b");
    let force = |forced_down: bool| pb::SetHostForceDownRequest {
        request_id: request_id(),
        host: "node-b".into(),
        forced_down,
    };
    let refused = w.evacuate_server(&on_b, "node-a").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let req = force(true);
    w.call(|ch, t| {
        let req = with_token(req.clone(), &t);
        async move { HostServiceClient::new(ch).set_host_force_down(req).await }
    })
    .await
    .expect("force down");
    let registered = b.with(|s| s.registered);
    let op = w.evacuate_server(&on_b, "node-a").await.expect("evacuate");
    let done = w.wait_op(&op).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    let s = w.wait_status(&on_b, pb::ServerStatus::Active).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("node-a", 3));
    wait_for(CONVERGE, "node-b's lease revoked", || async {
        let hosts = w.hosts().await;
        let h = hosts.iter().find(|h| h.hostname == "node-b").unwrap();
        (h.forced_down && h.state() == pb::HostState::Down && b.with(|s| s.lease_id) > 0)
            .then_some(())
            .ok_or(format!("{:?}", h.state()))
    })
    .await;
    assert_eq!(
        b.with(|s| s.registered),
        registered,
        "no new lease while fenced"
    );
    let req = force(false);
    w.call(|ch, t| {
        let req = with_token(req.clone(), &t);
        async move { HostServiceClient::new(ch).set_host_force_down(req).await }
    })
    .await
    .expect("clear force down");
    w.wait_hosts_up(3).await;
    wait_for(CONVERGE, "node-b dropped the moved server", || async {
        (!b.with(|s| s.local.contains_key(&on_b)))
            .then_some(())
            .ok_or("still there".to_owned())
    })
    .await;
}

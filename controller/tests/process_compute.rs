//! Process tests of compute on a real 3-controller cluster with scripted agents speaking the
//! real agent protocol: registration and leases, servers placed, booted, stopped, started,
//! rebooted and deleted through the API; a failed boot rescheduled; the leader killed mid-boot;
//! a silent host declared down; an anti-affinity server group keeping its members apart.
mod support;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::server_group_service_client::ServerGroupServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use support::compute::{World, ALL, CONVERGE, READY};
use support::{request_id, wait_for, with_token};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_boot_stop_start_reboot_and_delete_through_agents() {
    let _serial = support::serial().await;
    let w = World::start().await;
    let a = w.agent("node-a");
    let b = w.agent("node-b");
    w.wait_hosts_up(2).await;

    // Two servers at once spread over the two hosts (8 vCPUs each, flavor 2).
    let created = w.create("web", 2, "").await;
    assert_eq!(created.servers.len(), 2);
    let hosts: std::collections::BTreeSet<_> =
        created.servers.iter().map(|s| s.host.clone()).collect();
    assert_eq!(hosts.len(), 2, "spread over both hosts: {hosts:?}");
    for s in &created.servers {
        let active = w.wait_status(&s.id, pb::ServerStatus::Active).await;
        assert_eq!(active.power_state(), pb::ServerPowerState::Running);
        assert_eq!(active.placement_generation, 1);
    }
    let id = created.servers[0].id.clone();
    let agent = if created.servers[0].host == "node-a" {
        &a
    } else {
        &b
    };
    assert!(
        agent.with(|s| s.local.contains_key(&id)),
        "the agent holds it"
    );

    let stop = pb::StopServerRequest {
        request_id: request_id(),
        server: id.clone(),
    };
    w.call(|ch, t| {
        let req = with_token(stop.clone(), &t);
        async move { ServerServiceClient::new(ch).stop_server(req).await }
    })
    .await
    .expect("stop");
    w.wait_status(&id, pb::ServerStatus::Shutoff).await;
    let again = w
        .call(|ch, t| {
            let req = with_token(stop.clone(), &t);
            async move { ServerServiceClient::new(ch).stop_server(req).await }
        })
        .await;
    assert!(
        again.is_ok(),
        "a retried request id returns the first outcome: {again:?}"
    );
    let fresh_stop = pb::StopServerRequest {
        request_id: request_id(),
        server: id.clone(),
    };
    let err = w
        .call(|ch, t| {
            let req = with_token(fresh_stop.clone(), &t);
            async move { ServerServiceClient::new(ch).stop_server(req).await }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let start = pb::StartServerRequest {
        request_id: request_id(),
        server: id.clone(),
    };
    w.call(|ch, t| {
        let req = with_token(start.clone(), &t);
        async move { ServerServiceClient::new(ch).start_server(req).await }
    })
    .await
    .expect("start");
    w.wait_status(&id, pb::ServerStatus::Active).await;

    let reboot = pb::RebootServerRequest {
        request_id: request_id(),
        server: id.clone(),
        hard: true,
    };
    w.call(|ch, t| {
        let req = with_token(reboot.clone(), &t);
        async move { ServerServiceClient::new(ch).reboot_server(req).await }
    })
    .await
    .expect("reboot");
    w.wait_status(&id, pb::ServerStatus::Active).await;
    assert!(agent.with(|s| s
        .commands
        .iter()
        .any(|c| matches!(&c.payload, Some(pb::agent_command::Payload::Reboot(r)) if r.hard && r.server_id == id))));

    let actions = w
        .call(|ch, t| {
            let req = with_token(
                pb::ListServerActionsRequest {
                    server: id.clone(),
                    ..Default::default()
                },
                &t,
            );
            async move { ServerServiceClient::new(ch).list_server_actions(req).await }
        })
        .await
        .expect("actions");
    let kinds: Vec<_> = actions.actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        kinds,
        ["reboot --hard", "start", "stop", "create"],
        "newest first"
    );
    assert!(actions
        .actions
        .iter()
        .all(|a| a.result() == pb::ServerActionResult::Success && a.user_id == "admin"));

    for s in &created.servers {
        let del = pb::DeleteServerRequest {
            request_id: request_id(),
            server: s.id.clone(),
        };
        w.call(|ch, t| {
            let req = with_token(del.clone(), &t);
            async move { ServerServiceClient::new(ch).delete_server(req).await }
        })
        .await
        .expect("delete");
    }
    for s in &created.servers {
        wait_for(CONVERGE, "server gone", || async {
            match w.server(&s.id).await {
                Err(e) if e.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    assert!(a.with(|s| s.local.is_empty()) && b.with(|s| s.local.is_empty()));
    let hosts = w.hosts().await;
    assert!(
        hosts.iter().all(|h| h.usage.unwrap().vcpus == 0),
        "{hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_boot_is_rescheduled_and_a_leader_killed_mid_boot_does_not_stop_it() {
    let _serial = support::serial().await;
    let w = World::start().await;
    let a = w.agent("node-a");
    let b = w.agent("node-b");
    w.wait_hosts_up(2).await;

    a.with(|s| s.fail_all = Some("qemu-img create failed: no space left on device".into()));
    let created = w.create("retry", 1, "node-a").await;
    let id = created.servers[0].id.clone();
    let s = w.wait_status(&id, pb::ServerStatus::Active).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("node-b", 2));
    assert!(b.with(|s| s.local.contains_key(&id)));
    wait_for(CONVERGE, "the failed copy on node-a removed", || async {
        (!a.with(|s| s.local.contains_key(&id)))
            .then_some(())
            .ok_or("still there".to_owned())
    })
    .await;

    // Mid-boot: the host has the desired state but has not booted yet when the leader dies.
    b.with(|s| s.hold = true);
    let created = w.create("survivor", 1, "node-b").await;
    let id = created.servers[0].id.clone();
    let leader = w.cluster.wait_leader(&ALL, READY).await;
    w.cluster.kill(leader);
    let rest: Vec<u64> = ALL.into_iter().filter(|&n| n != leader).collect();
    w.cluster.wait_leader(&rest, READY).await;
    b.release();
    let s = w.wait_status(&id, pb::ServerStatus::Active).await;
    assert_eq!(s.host, "node-b");
    assert!(
        b.with(|s| s.registered) >= 2,
        "the agent registered with the new leader"
    );

    // A host whose agent goes silent is declared down after its lease and grace.
    drop(a);
    wait_for(CONVERGE, "node-a down", || async {
        let hosts = w.hosts().await;
        let h = hosts.iter().find(|h| h.hostname == "node-a").unwrap();
        (h.state() == pb::HostState::Down && h.down_since_ms > 0)
            .then_some(())
            .ok_or(format!("{:?}", h.state()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_anti_affinity_group_spreads_its_members_and_refuses_a_third_on_two_hosts() {
    let _serial = support::serial().await;
    let w = World::start().await;
    let _a = w.agent("node-a");
    let _b = w.agent("node-b");
    w.wait_hosts_up(2).await;

    let create_group = pb::CreateServerGroupRequest {
        request_id: request_id(),
        name: "apart".into(),
        policy: pb::ServerGroupPolicy::AntiAffinity as i32,
        rules: None,
    };
    let group = w
        .call(|ch, t| {
            let req = with_token(create_group.clone(), &t);
            async move {
                ServerGroupServiceClient::new(ch)
                    .create_server_group(req)
                    .await
            }
        })
        .await
        .expect("create group");
    assert_eq!(group.policy(), pb::ServerGroupPolicy::AntiAffinity);

    let in_group = |name: &str, count: u32| pb::CreateServerRequest {
        request_id: request_id(),
        name: name.into(),
        flavor: "tiny".into(),
        image: "disk".into(),
        max_count: count,
        server_group: "apart".into(),
        ..Default::default()
    };
    let first = in_group("web", 2);
    let created = w
        .call(|ch, t| {
            let req = with_token(first.clone(), &t);
            async move { ServerServiceClient::new(ch).create_server(req).await }
        })
        .await
        .expect("two servers in the group");
    let hosts: std::collections::BTreeSet<_> =
        created.servers.iter().map(|s| s.host.clone()).collect();
    assert_eq!(hosts.len(), 2, "one member per host: {hosts:?}");
    assert!(created
        .servers
        .iter()
        .all(|s| s.server_group_id == group.id));

    let get = pb::GetServerGroupRequest {
        server_group: "apart".into(),
        stale: false,
    };
    let now = w
        .call(|ch, t| {
            let req = with_token(get.clone(), &t);
            async move {
                ServerGroupServiceClient::new(ch)
                    .get_server_group(req)
                    .await
            }
        })
        .await
        .expect("get group");
    assert_eq!(now.member_ids.len(), 2);

    let third = in_group("web-3", 1);
    let refused = w
        .call(|ch, t| {
            let req = with_token(third.clone(), &t);
            async move { ServerServiceClient::new(ch).create_server(req).await }
        })
        .await
        .expect_err("no host left for the group");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("anti-affinity"),
        "{}",
        refused.message()
    );
}

//! Real end to end for moving servers: an in-process controller, two `flotilla-agent`
//! processes and two compute hosts, each a network + mount namespace with its own libvirtd
//! ([`flotilla_agent::testbed`]), and the tiny guest of `tests/data/make-guest.sh`, which prints
//! "tick N" on its console every second. Through the gRPC API:
//!
//! 1. live migration A → B: the operation succeeds, the server is ACTIVE on B at generation 2,
//!    the guest keeps counting (no second boot) and data written to its disk on A is on B;
//! 2. live migration back with A cut off the network halfway: our deadline aborts it, the
//!    operation fails with the reason, the server stays ACTIVE on B and A drops what it prepared;
//! 3. host B dies (agent killed, libvirtd and QEMU killed): B is declared down, `host evacuate`
//!    rebuilds the server on A (it boots again), and when B comes back it never runs a second
//!    copy — its agent removes the stale one.
//!
//! Prints `timing:` lines. Skipped, with the reason printed, when not root or tools are
//! missing (CI runs it as root).
mod support;

use std::fs;
use std::time::{Duration, Instant};

use flotilla_agent::driver::{Hypervisor, PowerState};
use flotilla_agent::testbed::{self as two_hosts, run, TwoHosts};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use support::e2e::*;
use support::libvirtd::guest;
use support::wait_for;

const MOVE: Duration = Duration::from_secs(180);

/// The tick numbers on a console text, in order.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

impl Api {
    async fn power(&self, id: &str, start: bool) {
        let id = id.to_owned();
        self.call(|ch, t| {
            let id = id.clone();
            async move {
                let mut c = ServerServiceClient::new(ch);
                if start {
                    let req = pb::StartServerRequest {
                        request_id: request_id(),
                        server: id,
                    };
                    c.start_server(authed(req, &t)).await
                } else {
                    let req = pb::StopServerRequest {
                        request_id: request_id(),
                        server: id,
                    };
                    c.stop_server(authed(req, &t)).await
                }
            }
        })
        .await
        .expect("start/stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_move_live_survive_a_cut_network_and_are_evacuated_off_a_dead_host() {
    if let Some(reason) = two_hosts::missing_prerequisite() {
        eprintln!("SKIP e2e_moves_real: {reason}");
        return;
    }
    let (kernel, initrd) = guest();
    let root = tempfile::Builder::new()
        .prefix("flotilla-e2e-moves-")
        .tempdir()
        .unwrap();
    let root = root.path();
    let mut hosts = TwoHosts::start(&root.join("hosts"));
    let hv_a = hosts.a().connect();
    let hv_b = hosts.b().connect();

    let ctl = Controller::start(
        root,
        &["hA", "hB"],
        "lease_ttl_ms = 4000\nheartbeat_interval_ms = 500\nlease_grace_ms = 2000",
    )
    .await;
    let api = &ctl.api;
    let images = root.join("images");
    fs::create_dir_all(&images).unwrap();
    let image = api
        .upload_image("guest-disk", qcow2(&images, "a.qcow2", "64M"))
        .await;
    api.create_guest_flavor("e2e").await;

    let (config_a, state_a) = agent_config(root, hosts.a(), &ctl, &kernel, &initrd, "");
    let (config_b, state_b) = agent_config(root, hosts.b(), &ctl, &kernel, &initrd, "");
    let _agent_a = Agent::start(&config_a, &root.join("agent-hA.log"));
    let mut agent_b = Agent::start(&config_b, &root.join("agent-hB.log"));
    api.wait_host("hA", pb::HostState::Up, MOVE).await;
    api.wait_host("hB", pb::HostState::Up, MOVE).await;

    // A server on A, with data written into its disk while it is stopped.
    let create = pb::CreateServerRequest {
        request_id: request_id(),
        name: "mover".into(),
        flavor: "e2e".into(),
        image: image.id.clone(),
        host: "hA".into(),
        ..Default::default()
    };
    let id = api
        .call(|ch, t| {
            let req = authed(create.clone(), &t);
            async move { ServerServiceClient::new(ch).create_server(req).await }
        })
        .await
        .expect("create server")
        .servers[0]
        .id
        .clone();
    let name = format!("flotilla-{id}");
    api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    api.power(&id, false).await;
    api.wait_status(&id, pb::ServerStatus::Shutoff, BOOT).await;
    let overlay_a = state_a.join(format!("disks/{id}/1/root.qcow2"));
    let wrote = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 2M 64k",
            overlay_a.to_str().unwrap(),
        ],
    );
    assert!(wrote.contains("wrote 65536/65536"), "{wrote}");
    api.power(&id, true).await;
    api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    wait_for(BOOT, "the guest counting on A", || async {
        let text = api.console(&id).await;
        (text.contains("GUEST-BOOTED") && ticks(&text).last().is_some_and(|&t| t >= 3))
            .then_some(())
            .ok_or(format!("...{}", tail(&text, 200)))
    })
    .await;
    let before = *ticks(&api.console(&id).await).last().unwrap();

    // 1. Live migration to B.
    let started = Instant::now();
    let op = api.live_migrate(&id, "hB", 120).await;
    let progress_seen = std::sync::Mutex::new(None);
    let done = wait_for(MOVE, "the live migration", || async {
        let o = api.operation(&op).await;
        if let Some(p) = o.progress.as_ref().filter(|p| !p.phase.is_empty()) {
            *progress_seen.lock().unwrap() = Some(p.clone());
        }
        (o.finished_at_ms != 0)
            .then_some(o.clone())
            .ok_or(format!("{:?} at {}", o.state(), o.step))
    })
    .await;
    eprintln!(
        "timing: live migration through the API {:.2?} (progress seen: {:?})",
        started.elapsed(),
        progress_seen.lock().unwrap()
    );
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    let s = api.wait_status(&id, pb::ServerStatus::Active, MOVE).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("hB", 2));
    assert_eq!(hv_b.info(&name).unwrap().power, PowerState::Running);
    assert_eq!(hv_b.info(&name).unwrap().server.unwrap().generation, 2);
    wait_for(MOVE, "A's copy gone", || async {
        let gone = hv_a.info(&name).is_err() && !state_a.join(format!("disks/{id}")).exists();
        gone.then_some(()).ok_or("still on A".to_owned())
    })
    .await;
    // The guest kept counting on B: no boot there, ticks past the last one seen on A.
    let text_b = wait_for(BOOT, "ticks on B", || async {
        let text = api.console(&id).await;
        let t = ticks(&text);
        (t.last().is_some_and(|&l| l > before + 2))
            .then_some(text.clone())
            .ok_or(format!("...{}", tail(&text, 200)))
    })
    .await;
    assert!(!text_b.contains("GUEST-BOOTED"), "the guest rebooted on B");
    assert!(ticks(&text_b)[0] > 1, "the counter restarted: {text_b}");
    let overlay_b = state_b.join(format!("disks/{id}/2/root.qcow2"));
    let read = run(
        "qemu-io",
        &[
            "-r",
            "-U",
            "-f",
            "qcow2",
            "-c",
            "read -P 0x5a 2M 64k",
            overlay_b.to_str().unwrap(),
        ],
    );
    assert!(
        read.contains("read 65536/65536") && !read.contains("fail"),
        "{read}"
    );

    // 2. Back to A, with A cut off the network while memory is copied: our deadline aborts it.
    let op = api.live_migrate(&id, "hA", 8).await;
    wait_for(MOVE, "the migrate step", || async {
        let o = api.operation(&op).await;
        (o.step == "migrate" || o.finished_at_ms != 0)
            .then_some(())
            .ok_or(o.step.clone())
    })
    .await;
    hosts.a().set_link(false);
    let failed = api.wait_operation(&op, MOVE).await;
    hosts.a().set_link(true);
    assert_eq!(failed.state(), pb::OperationState::Failed, "{failed:?}");
    eprintln!("cut network: {}", failed.error);
    let s = api.wait_status(&id, pb::ServerStatus::Active, MOVE).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("hB", 2));
    assert_eq!(hv_b.info(&name).unwrap().power, PowerState::Running);
    wait_for(MOVE, "A dropped what it prepared", || async {
        let clean = hv_a.info(&name).is_err() && !state_a.join(format!("disks/{id}")).exists();
        clean.then_some(()).ok_or("A still holds a copy".to_owned())
    })
    .await;

    // 3. B dies: agent, libvirtd and QEMU killed.
    let died = Instant::now();
    agent_b.kill();
    hosts.b().power_off();
    api.wait_host("hB", pb::HostState::Down, MOVE).await;
    eprintln!(
        "timing: host declared down {:.2?} after death",
        died.elapsed()
    );
    let job = api.evacuate_host("hB").await;
    assert_eq!(job.plan.len(), 1);
    assert_eq!(job.plan[0].destination, "hA");
    let done = api.wait_operation(&job.operation_id, MOVE).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    let s = api.wait_status(&id, pb::ServerStatus::Active, MOVE).await;
    assert_eq!((s.host.as_str(), s.placement_generation), ("hA", 3));
    eprintln!("timing: death to ACTIVE on A {:.2?}", died.elapsed());
    assert_eq!(hv_a.info(&name).unwrap().power, PowerState::Running);
    api.wait_boots(&id, 1).await;

    // B comes back: its agent removes the stale copy and never starts it.
    hosts.b().power_on();
    let hv_b = hosts.b().connect();
    // libvirtd reconnects to the domains it knew in the background after it starts answering:
    // until then it shows the last recorded state. QEMU died with the host, so it settles on
    // shut off (crashed).
    wait_for(MOVE, "B's libvirtd to see QEMU gone", || async {
        match hv_b.info(&name) {
            Ok(info) if info.power == PowerState::Running => Err("still running".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let _agent_b = Agent::start(&config_b, &root.join("agent-hB.log"));
    api.wait_host("hB", pb::HostState::Up, MOVE).await;
    wait_for(MOVE, "B's stale copy removed", || async {
        if let Ok(info) = hv_b.info(&name) {
            assert_ne!(
                info.power,
                PowerState::Running,
                "a second running copy on B"
            );
            return Err(format!("still defined: {:?}", info.power));
        }
        (!state_b.join(format!("disks/{id}")).exists())
            .then_some(())
            .ok_or("disks still there".to_owned())
    })
    .await;
    assert_eq!(hv_a.info(&name).unwrap().power, PowerState::Running);
    ctl.task.abort();
}

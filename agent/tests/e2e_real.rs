//! Real end to end: a controller (in-process, with mutual TLS on its peer listener), the
//! `flotilla-agent` binary, a private libvirtd with QEMU (software emulation) and the tiny
//! bootable guest of `tests/data/make-guest.sh`. Through the gRPC API: upload a qcow2 image,
//! create a flavor whose extra spec `flotilla:kernel` names the agent's `[kernels.guest]`
//! (direct kernel boot; the image is the guest's `vda`), create a server and wait for ACTIVE
//! with the domain really running and booted (its console log, read through the API), then
//! stop, start, reboot, back up (the image becomes active), rebuild onto another image, restart
//! the agent in the middle of a second boot, and delete — checking libvirt and the disk files
//! at each step. Prints `timing:` lines.
//!
//! Skipped, with the reason printed, when not root or when libvirtd, virtlogd,
//! qemu-system-x86_64, qemu-img, unshare or virsh are missing (CI runs it as root with
//! deploy/install-deps.sh).
mod support;

use std::fs;
use std::time::{Duration, Instant};

use flotilla_agent::driver::Hypervisor;
use flotilla_agent::driver::PowerState;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::host_service_client::HostServiceClient;
use flotilla_proto::v1::image_service_client::ImageServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use support::e2e::*;
use support::libvirtd::{guest, missing_prerequisite, Daemons};
use support::wait_for;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lives_its_whole_life_on_real_libvirt_through_the_api() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("SKIP e2e_real: {reason}");
        return;
    }
    let (kernel, initrd) = guest();
    let root = tempfile::Builder::new()
        .prefix("flotilla-e2e-")
        .tempdir()
        .unwrap();
    let root = root.path();
    let mut daemons = Daemons::start(&root.join("libvirt"));
    let hv = daemons.connect();

    // The controller: one member, TLS.
    let ctl = Controller::start(
        root,
        &["e2e-host"],
        "lease_ttl_ms = 5000\nheartbeat_interval_ms = 500\nlease_grace_ms = 5000",
    )
    .await;
    let (api, peer, tls, controller) = (ctl.api, ctl.peer, ctl.tls, ctl.task);

    // Images, and a flavor booting the test kernel.
    let images = root.join("images");
    fs::create_dir_all(&images).unwrap();
    let image = api
        .upload_image("guest-disk", qcow2(&images, "a.qcow2", "64M"))
        .await;
    let other = api
        .upload_image("guest-disk-2", qcow2(&images, "b.qcow2", "96M"))
        .await;
    let big = api
        .upload_image("guest-disk-big", big_qcow2(&images, 64))
        .await;
    api.create_guest_flavor("e2e").await;

    // The agent binary.
    let state = root.join("agent");
    let agent_config = root.join("agent.toml");
    fs::write(
        &agent_config,
        format!(
            "hostname = \"e2e-host\"\naddress = \"127.0.0.1\"\ncontrollers = [\"{peer}\"]\n\
             libvirt_uri = \"{uri}\"\ndomain_type = \"qemu\"\nstate_dir = \"{state}\"\n\
             reconcile_interval_secs = 2\nshutdown_timeout_secs = 3\ndisk_cache = \"writeback\"\n\n\
             [tls]\nca = \"{tls}/ca.pem\"\ncert = \"{tls}/e2e-host.pem\"\nkey = \"{tls}/e2e-host.key\"\n\n\
             [capacity]\nvcpus = 4\nram_mib = 2048\ndisk_gib = 20\n\n\
             [kernels.guest]\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\n\
             cmdline = \"console=ttyS0 quiet\"\n",
            uri = daemons.uri(),
            state = state.display(),
            tls = tls.display(),
            kernel = kernel.display(),
            initrd = initrd.display(),
        ),
    )
    .unwrap();
    let agent_log = root.join("agent.log");
    let mut agent = Agent::start(&agent_config, &agent_log);
    let host = wait_for(Duration::from_secs(30), "the host up", || async {
        let hosts = api
            .call(|ch, t| async move {
                HostServiceClient::new(ch)
                    .list_hosts(authed(pb::ListHostsRequest::default(), &t))
                    .await
            })
            .await
            .map_err(|e| format!("{e:?}"))?
            .hosts;
        hosts
            .into_iter()
            .find(|h| h.hostname == "e2e-host" && h.state() == pb::HostState::Up)
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert_eq!(host.hypervisor_type, "qemu");
    assert!(host.hypervisor_version.starts_with("QEMU "), "{host:?}");

    // Create: ACTIVE with the domain running and the guest booted.
    let created = Instant::now();
    let create = pb::CreateServerRequest {
        request_id: request_id(),
        name: "vm1".into(),
        flavor: "e2e".into(),
        image: image.id.clone(),
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
    let s = api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    eprintln!("timing: create to ACTIVE {:.2?}", created.elapsed());
    assert_eq!(
        (s.host.as_str(), s.placement_generation, s.power_state()),
        ("e2e-host", 1, pb::ServerPowerState::Running)
    );
    let name = format!("flotilla-{id}");
    let info = hv.info(&name).unwrap();
    assert_eq!(info.power, PowerState::Running);
    assert_eq!(info.server.unwrap().generation, 1);
    api.wait_boots(&id, 1).await;
    eprintln!("timing: create to GUEST-BOOTED {:.2?}", created.elapsed());
    let root_disk = state.join(format!("disks/{id}/1/root.qcow2"));
    let cached = |sha: &str| state.join("images").join(sha).display().to_string();
    assert_eq!(backing_file(&root_disk), cached(&image.sha256));
    let diag = api
        .call(|ch, t| {
            let req = authed(pb::GetDiagnosticsRequest { server: id.clone() }, &t);
            async move { ServerServiceClient::new(ch).get_diagnostics(req).await }
        })
        .await
        .expect("diagnostics");
    assert!(diag.cpu.as_ref().unwrap().cpu_time_ns > 0, "{diag:?}");
    assert_eq!(diag.disks[0].device, "vda");
    assert_eq!(diag.disks[0].capacity_bytes, 1 << 30, "sized to the flavor");

    // Stop and start.
    let t = Instant::now();
    let stop = pb::StopServerRequest {
        request_id: request_id(),
        server: id.clone(),
    };
    api.call(|ch, tok| {
        let req = authed(stop.clone(), &tok);
        async move { ServerServiceClient::new(ch).stop_server(req).await }
    })
    .await
    .expect("stop");
    api.wait_status(&id, pb::ServerStatus::Shutoff, BOOT).await;
    eprintln!(
        "timing: stop to SHUTOFF {:.2?} (the guest ignores ACPI: 3 s timeout)",
        t.elapsed()
    );
    assert_eq!(hv.info(&name).unwrap().power, PowerState::ShutOff);
    let t = Instant::now();
    let start = pb::StartServerRequest {
        request_id: request_id(),
        server: id.clone(),
    };
    api.call(|ch, tok| {
        let req = authed(start.clone(), &tok);
        async move { ServerServiceClient::new(ch).start_server(req).await }
    })
    .await
    .expect("start");
    api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    eprintln!("timing: start to ACTIVE {:.2?}", t.elapsed());
    assert_eq!(hv.info(&name).unwrap().power, PowerState::Running);
    api.wait_boots(&id, 2).await;

    // Soft reboot: ACPI, the 3 s timeout, destroy, start.
    let t = Instant::now();
    let reboot = pb::RebootServerRequest {
        request_id: request_id(),
        server: id.clone(),
        hard: false,
    };
    api.call(|ch, tok| {
        let req = authed(reboot.clone(), &tok);
        async move { ServerServiceClient::new(ch).reboot_server(req).await }
    })
    .await
    .expect("reboot");
    api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    eprintln!("timing: reboot to ACTIVE {:.2?}", t.elapsed());
    api.wait_boots(&id, 3).await;
    assert_eq!(hv.info(&name).unwrap().power, PowerState::Running);

    // Backup: a cold snapshot uploaded into a new image, the guest running again.
    let t = Instant::now();
    let backup = pb::BackupServerRequest {
        request_id: request_id(),
        server: id.clone(),
        name: "vm1-daily".into(),
        backup_type: "daily".into(),
        rotation: 2,
    };
    let saved = api
        .call(|ch, tok| {
            let req = authed(backup.clone(), &tok);
            async move { ServerServiceClient::new(ch).backup_server(req).await }
        })
        .await
        .expect("backup");
    let saved_image = wait_for(BOOT, "the backup image active", || async {
        let req = pb::GetImageRequest {
            image: saved.image_id.clone(),
            stale: false,
        };
        let i = api
            .call(|ch, tok| {
                let req = authed(req.clone(), &tok);
                async move { ImageServiceClient::new(ch).get_image(req).await }
            })
            .await
            .map_err(|e| format!("{e:?}"))?;
        (i.status() == pb::ImageStatus::Active)
            .then_some(i.clone())
            .ok_or(format!("{:?} {}", i.status(), i.status_reason))
    })
    .await;
    api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    eprintln!("timing: backup to image ACTIVE {:.2?}", t.elapsed());
    assert!(saved_image.size_bytes > 0);
    assert_eq!(saved_image.disk_format(), pb::ImageDiskFormat::Qcow2);
    assert_eq!(hv.info(&name).unwrap().power, PowerState::Running);
    api.wait_boots(&id, 4).await;
    assert!(
        fs::read_dir(state.join("snapshots"))
            .unwrap()
            .next()
            .is_none(),
        "the saved file is gone after the upload"
    );

    // Rebuild onto the other image: a new root disk on the new base.
    let t = Instant::now();
    let rebuild = pb::RebuildServerRequest {
        request_id: request_id(),
        server: id.clone(),
        image: other.id.clone(),
        ..Default::default()
    };
    api.call(|ch, tok| {
        let req = authed(rebuild.clone(), &tok);
        async move { ServerServiceClient::new(ch).rebuild_server(req).await }
    })
    .await
    .expect("rebuild");
    let s = api.wait_status(&id, pb::ServerStatus::Active, BOOT).await;
    eprintln!("timing: rebuild to ACTIVE {:.2?}", t.elapsed());
    assert_eq!(s.image_id, other.id);
    assert_eq!(backing_file(&root_disk), cached(&other.sha256));
    api.wait_boots(&id, 5).await;
    assert_eq!(hv.info(&name).unwrap().power, PowerState::Running);

    // A second server, on an image the host does not have yet; the agent is killed while it
    // downloads it (the server in BUILD) and started again. The new agent adopts the first
    // server as it is and finishes the second.
    let boots_before = api.console(&id).await.matches("GUEST-BOOTED").count();
    let create = pb::CreateServerRequest {
        request_id: request_id(),
        name: "vm2".into(),
        flavor: "e2e".into(),
        image: big.id.clone(),
        ..Default::default()
    };
    let id2 = api
        .call(|ch, t| {
            let req = authed(create.clone(), &t);
            async move { ServerServiceClient::new(ch).create_server(req).await }
        })
        .await
        .expect("create server")
        .servers[0]
        .id
        .clone();
    let t = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "the agent fetching vm2's image",
        || async {
            let fetching = fs::read_dir(state.join("images"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".part-"));
            fetching
                .then_some(())
                .ok_or_else(|| "no download yet".to_owned())
        },
    )
    .await;
    agent.kill();
    drop(agent);
    let name2 = format!("flotilla-{id2}");
    let s2 = api.server(&id2).await.unwrap();
    assert_eq!(s2.status(), pb::ServerStatus::Build, "killed mid-boot");
    assert!(hv.info(&name2).unwrap_err().is_not_found(), "no domain yet");
    let agent = Agent::start(&agent_config, &agent_log);
    api.wait_status(&id2, pb::ServerStatus::Active, BOOT).await;
    eprintln!(
        "timing: vm2 create (agent killed and restarted) to ACTIVE {:.2?}",
        t.elapsed()
    );
    api.wait_boots(&id2, 1).await;
    assert_eq!(
        backing_file(&state.join(format!("disks/{id2}/1/root.qcow2"))),
        cached(&big.sha256)
    );
    assert_eq!(hv.info(&name2).unwrap().power, PowerState::Running);
    assert_eq!(
        api.console(&id).await.matches("GUEST-BOOTED").count(),
        boots_before,
        "the first server was adopted, not restarted"
    );

    // Delete both: domains and disks gone.
    let t = Instant::now();
    for server in [&id, &id2] {
        let del = pb::DeleteServerRequest {
            request_id: request_id(),
            server: server.to_string(),
        };
        api.call(|ch, tok| {
            let req = authed(del.clone(), &tok);
            async move { ServerServiceClient::new(ch).delete_server(req).await }
        })
        .await
        .expect("delete");
    }
    for server in [&id, &id2] {
        wait_for(BOOT, "the server gone", || async {
            match api.server(server).await {
                Err(e) if e.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    eprintln!("timing: delete (2 servers) to gone {:.2?}", t.elapsed());
    for (server, domain) in [(&id, &name), (&id2, &name2)] {
        assert!(hv.info(domain).unwrap_err().is_not_found());
        assert!(
            !state.join("disks").join(server.as_str()).exists(),
            "disks of {server} deleted"
        );
    }
    let log = fs::read_to_string(&agent_log).unwrap();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    eprintln!(
        "agent warnings and errors ({}):\n{}",
        problems.len(),
        problems.join("\n")
    );
    drop(agent);
    controller.abort();
    drop(daemons);
}

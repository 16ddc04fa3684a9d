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

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::driver::Hypervisor;
use flotilla_agent::driver::PowerState;
use flotilla_controller::certs::{write_certs, GenCertsArgs};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::flavor_service_client::FlavorServiceClient;
use flotilla_proto::v1::host_service_client::HostServiceClient;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use flotilla_proto::v1::image_service_client::ImageServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use support::libvirtd::{guest, missing_prerequisite, Daemons};
use support::wait_for;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

const PASSWORD: &str = "e2e-admin-password-42";
const BOOT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The agent binary, killed by its pid when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, log: &Path) -> Agent {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,flotilla_agent=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("flotilla-agent");
        Agent {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent log tail\n{}", self.log_tail());
        }
    }
}

/// The public API with the admin's project-scoped token.
struct Api {
    channel: Channel,
    token: String,
}

impl Api {
    /// Calls `rpc`, retrying while the controller is not ready (UNAVAILABLE).
    async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, Status>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rpc(self.channel.clone(), self.token.clone()).await {
                Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other.map(|r| r.into_inner()),
            }
        }
    }

    async fn server(&self, id: &str) -> Result<pb::Server, Status> {
        let req = pb::GetServerRequest {
            server: id.into(),
            stale: false,
        };
        self.call(|ch, t| {
            let req = authed(req.clone(), &t);
            async move { ServerServiceClient::new(ch).get_server(req).await }
        })
        .await
    }

    async fn wait_status(&self, id: &str, want: pb::ServerStatus, within: Duration) -> pb::Server {
        wait_for(within, "the server status", || async {
            let s = self.server(id).await.map_err(|e| format!("{e:?}"))?;
            (s.status() == want && s.task_state.is_empty())
                .then_some(s.clone())
                .ok_or(format!(
                    "{:?} task {:?} power {:?} fault {:?}",
                    s.status(),
                    s.task_state,
                    s.power_state(),
                    s.fault
                ))
        })
        .await
    }

    async fn console(&self, id: &str) -> String {
        let req = pb::GetConsoleLogRequest {
            server: id.into(),
            lines: 0,
        };
        self.call(|ch, t| {
            let req = authed(req.clone(), &t);
            async move { ServerServiceClient::new(ch).get_console_log(req).await }
        })
        .await
        .map(|l| l.output)
        .unwrap_or_default()
    }

    /// Waits until the console shows `n` boots.
    async fn wait_boots(&self, id: &str, n: usize) {
        wait_for(BOOT, "the guest to boot", || async {
            let text = self.console(id).await;
            let boots = text.matches("GUEST-BOOTED").count();
            (boots >= n)
                .then_some(())
                .ok_or(format!("{boots} boots: ...{}", tail(&text, 300)))
        })
        .await
    }

    async fn upload_image(&self, name: &str, content: Vec<u8>) -> pb::Image {
        let create = pb::CreateImageRequest {
            request_id: request_id(),
            name: name.into(),
            disk_format: pb::ImageDiskFormat::Qcow2 as i32,
            ..Default::default()
        };
        let image = self
            .call(|ch, t| {
                let req = authed(create.clone(), &t);
                async move { ImageServiceClient::new(ch).create_image(req).await }
            })
            .await
            .expect("create image");
        let mut msgs = vec![pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Header(
                pb::UploadImageHeader {
                    request_id: request_id(),
                    image: image.id.clone(),
                    size_bytes: content.len() as u64,
                    ..Default::default()
                },
            )),
        }];
        msgs.extend(content.chunks(1 << 20).map(|c| pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Chunk(c.to_vec())),
        }));
        let req = authed(tokio_stream::iter(msgs), &self.token);
        let up = ImageServiceClient::new(self.channel.clone())
            .upload_image(req)
            .await
            .expect("upload")
            .into_inner();
        assert_eq!(up.status(), pb::ImageStatus::Active, "{up:?}");
        up
    }
}

fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A qcow2 holding `mib` MiB of incompressible data (its download takes a while).
fn big_qcow2(dir: &Path, mib: usize) -> Vec<u8> {
    let raw = dir.join("big.raw");
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&raw, bytes).unwrap();
    let path = dir.join("big.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(path).unwrap()
}

/// A small qcow2 made by qemu-img (the guest's data disk).
fn qcow2(dir: &Path, name: &str, size: &str) -> Vec<u8> {
    let path = dir.join(name);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(size)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(path).unwrap()
}

fn backing_file(disk: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["backing-filename"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Issues TLS material for the controller `ctl` and the agent's host.
fn certs(dir: &Path, host: &str) {
    write_certs(&GenCertsArgs {
        dir: dir.to_path_buf(),
        nodes: vec!["ctl".into()],
        clients: vec![host.into()],
        sans: vec![],
        force: false,
    })
    .expect("certificates");
}

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
    let tls = root.join("tls");
    certs(&tls, "e2e-host");
    let (client, peer) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    fs::write(root.join("admin-password"), PASSWORD).unwrap();
    let config = format!(
        "id = 1\nname = \"ctl\"\ndata_dir = \"{data}\"\nclient_listen = \"{client}\"\n\
         peer_listen = \"{peer}\"\nbootstrap_admin_password_file = \"{pw}\"\n\n\
         [[initial_members]]\nid = 1\nname = \"ctl\"\nclient_address = \"{client}\"\n\
         peer_address = \"{peer}\"\n\n\
         [tls]\nca = \"{tls}/ca.pem\"\ncert = \"{tls}/ctl.pem\"\nkey = \"{tls}/ctl.key\"\n\n\
         [compute]\nlease_ttl_ms = 5000\nheartbeat_interval_ms = 500\nlease_grace_ms = 5000\n",
        data = root.join("ctl").display(),
        pw = root.join("admin-password").display(),
        tls = tls.display(),
    );
    fs::write(root.join("controller.toml"), config).unwrap();
    let config = flotilla_controller::config::ControllerConfig::load(&root.join("controller.toml"))
        .unwrap()
        .validate()
        .unwrap();
    let controller = tokio::spawn(flotilla_controller::server::run(config));

    let ca = Certificate::from_pem(fs::read(tls.join("ca.pem")).unwrap());
    let channel = Endpoint::from_shared(format!("https://{client}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
        .unwrap()
        .connect_lazy();
    let login = pb::LoginRequest {
        user: "admin".into(),
        password: PASSWORD.into(),
        project: "admin".into(),
    };
    let token = wait_for(Duration::from_secs(60), "the admin login", || async {
        IdentityServiceClient::new(channel.clone())
            .login(login.clone())
            .await
            .map(|r| r.into_inner().token)
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    let api = Api { channel, token };

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
    let flavor = pb::CreateFlavorRequest {
        request_id: request_id(),
        name: "e2e".into(),
        vcpus: 1,
        ram_mib: 128,
        disk_gib: 1,
        extra_specs: HashMap::from([("flotilla:kernel".to_owned(), "guest".to_owned())]),
        ..Default::default()
    };
    api.call(|ch, t| {
        let req = authed(flavor.clone(), &t);
        async move { FlavorServiceClient::new(ch).create_flavor(req).await }
    })
    .await
    .expect("flavor");

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
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
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

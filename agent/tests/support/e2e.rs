//! Pieces of the real end-to-end tests: the `flotilla-agent` binary as a process, an
//! in-process controller with mutual TLS on its peer listener, the public API with the admin's
//! project-scoped token, and small qcow2 helpers.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_controller::certs::{write_certs, GenCertsArgs};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::flavor_service_client::FlavorServiceClient;
use flotilla_proto::v1::host_service_client::HostServiceClient;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use flotilla_proto::v1::image_service_client::ImageServiceClient;
use flotilla_proto::v1::operation_service_client::OperationServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use super::wait_for;

pub const PASSWORD: &str = "e2e-admin-password-42";
pub const BOOT: Duration = Duration::from_secs(120);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The agent binary, killed by its pid when dropped.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, log: &Path) -> Agent {
        Self::start_in(None, config, log)
    }

    /// With `host_pid`, in that process's network and mount namespaces (a test host's
    /// libvirtd: the agent then sees the host's devices, Open vSwitch and `/run/netns`).
    pub fn start_in(host_pid: Option<u32>, config: &Path, log: &Path) -> Agent {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = match host_pid {
            // nsenter execs the agent in place: the child's pid is the agent's.
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-m", "-n", "--"])
                    .arg(env!("CARGO_BIN_EXE_flotilla-agent"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_flotilla-agent")),
        };
        let child = cmd
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

    pub fn log_tail(&self) -> String {
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
pub struct Api {
    pub channel: Channel,
    pub token: String,
}

impl Api {
    /// Calls `rpc`, retrying while the controller is not ready (UNAVAILABLE).
    pub async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, Status>
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

    pub async fn server(&self, id: &str) -> Result<pb::Server, Status> {
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

    pub async fn wait_status(
        &self,
        id: &str,
        want: pb::ServerStatus,
        within: Duration,
    ) -> pb::Server {
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

    pub async fn console(&self, id: &str) -> String {
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
    pub async fn wait_boots(&self, id: &str, n: usize) {
        wait_for(BOOT, "the guest to boot", || async {
            let text = self.console(id).await;
            let boots = text.matches("GUEST-BOOTED").count();
            (boots >= n)
                .then_some(())
                .ok_or(format!("{boots} boots: ...{}", tail(&text, 300)))
        })
        .await
    }

    pub async fn upload_image(&self, name: &str, content: Vec<u8>) -> pb::Image {
        self.upload_image_as(name, content, pb::ImageVisibility::Unspecified)
            .await
    }

    /// [`Self::upload_image`] with a visibility (public: every project can boot it).
    pub async fn upload_image_as(
        &self,
        name: &str,
        content: Vec<u8>,
        visibility: pb::ImageVisibility,
    ) -> pb::Image {
        let create = pb::CreateImageRequest {
            request_id: request_id(),
            name: name.into(),
            disk_format: pb::ImageDiskFormat::Qcow2 as i32,
            visibility: visibility as i32,
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

pub fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A qcow2 holding `mib` MiB of incompressible data (its download takes a while).
pub fn big_qcow2(dir: &Path, mib: usize) -> Vec<u8> {
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
pub fn qcow2(dir: &Path, name: &str, size: &str) -> Vec<u8> {
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

pub fn backing_file(disk: &Path) -> String {
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

impl Agent {
    /// Kills the agent at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    /// A flavor (1 vCPU, 128 MiB, 1 GiB) booting the agent's `[kernels.guest]` test kernel.
    pub async fn create_guest_flavor(&self, name: &str) {
        let flavor = pb::CreateFlavorRequest {
            request_id: request_id(),
            name: name.into(),
            vcpus: 1,
            ram_mib: 128,
            disk_gib: 1,
            extra_specs: HashMap::from([("flotilla:kernel".to_owned(), "guest".to_owned())]),
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = authed(flavor.clone(), &t);
            async move { FlavorServiceClient::new(ch).create_flavor(req).await }
        })
        .await
        .expect("flavor");
    }

    pub async fn operation(&self, id: &str) -> pb::Operation {
        let req = pb::GetOperationRequest {
            operation_id: id.into(),
            stale: false,
        };
        self.call(|ch, t| {
            let req = authed(req.clone(), &t);
            async move { OperationServiceClient::new(ch).get_operation(req).await }
        })
        .await
        .expect("get operation")
    }

    /// Waits until the operation has finished and returns it.
    pub async fn wait_operation(&self, id: &str, within: Duration) -> pb::Operation {
        wait_for(within, "the operation to finish", || async {
            let op = self.operation(id).await;
            (op.finished_at_ms != 0)
                .then_some(op.clone())
                .ok_or(format!("{:?} at {} {:?}", op.state(), op.step, op.progress))
        })
        .await
    }
}

/// A one-member controller running in this process, with TLS material for it and `hosts`.
pub struct Controller {
    pub api: Api,
    /// Its peer listener, where agents connect.
    pub peer: String,
    pub tls: PathBuf,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Controller {
    /// Starts it under `root` with `compute` as its `[compute]` section, and logs in as admin.
    pub async fn start(root: &Path, hosts: &[&str], compute: &str) -> Controller {
        Self::start_with_peer(root, hosts, compute, "127.0.0.1").await
    }

    /// With the peer listener (where agents connect) on `peer_ip`, e.g. the test hosts'
    /// bridge address for agents running in the hosts' network namespaces.
    pub async fn start_with_peer(
        root: &Path,
        hosts: &[&str],
        compute: &str,
        peer_ip: &str,
    ) -> Controller {
        let tls = root.join("tls");
        write_certs(&GenCertsArgs {
            dir: tls.clone(),
            nodes: vec!["ctl".into()],
            clients: hosts.iter().map(|h| h.to_string()).collect(),
            sans: vec![peer_ip.to_string()],
            force: false,
        })
        .expect("certificates");
        let (client, peer) = (
            format!("127.0.0.1:{}", free_port()),
            format!("{peer_ip}:{}", free_port()),
        );
        fs::write(root.join("admin-password"), PASSWORD).unwrap();
        let config = format!(
            "id = 1\nname = \"ctl\"\ndata_dir = \"{data}\"\nclient_listen = \"{client}\"\n\
             peer_listen = \"{peer}\"\nbootstrap_admin_password_file = \"{pw}\"\n\n\
             [[initial_members]]\nid = 1\nname = \"ctl\"\nclient_address = \"{client}\"\n\
             peer_address = \"{peer}\"\n\n\
             [tls]\nca = \"{tls}/ca.pem\"\ncert = \"{tls}/ctl.pem\"\nkey = \"{tls}/ctl.key\"\n\n\
             [compute]\n{compute}\n",
            data = root.join("ctl").display(),
            pw = root.join("admin-password").display(),
            tls = tls.display(),
        );
        fs::write(root.join("controller.toml"), config).unwrap();
        let config =
            flotilla_controller::config::ControllerConfig::load(&root.join("controller.toml"))
                .unwrap()
                .validate()
                .unwrap();
        let task = tokio::spawn(flotilla_controller::server::run(config));
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
        Controller {
            api: Api { channel, token },
            peer,
            tls,
            task,
        }
    }
}

/// Writes the agent config of a test host (TLS, a small capacity, the test guest's kernel, and
/// `extra` TOML appended) and returns its path and the agent's state directory.
pub fn agent_config(
    root: &Path,
    host: &flotilla_agent::testbed::Host,
    ctl: &Controller,
    kernel: &Path,
    initrd: &Path,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let state = root.join(format!("agent-{}", host.name));
    let path = root.join(format!("agent-{}.toml", host.name));
    fs::write(
        &path,
        format!(
            "hostname = \"{name}\"\naddress = \"{address}\"\ncontrollers = [\"{peer}\"]\n\
             libvirt_uri = \"{uri}\"\ndomain_type = \"qemu\"\nstate_dir = \"{state}\"\n\
             reconcile_interval_secs = 2\nshutdown_timeout_secs = 3\ndisk_cache = \"writeback\"\n\n\
             [tls]\nca = \"{tls}/ca.pem\"\ncert = \"{tls}/{name}.pem\"\nkey = \"{tls}/{name}.key\"\n\n\
             [capacity]\nvcpus = 4\nram_mib = 2048\ndisk_gib = 20\n\n\
             [kernels.guest]\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\n\
             cmdline = \"console=ttyS0 quiet\"\n\n{extra}",
            name = host.name,
            address = host.address,
            peer = ctl.peer,
            uri = host.uri(),
            state = state.display(),
            tls = ctl.tls.display(),
            kernel = kernel.display(),
            initrd = initrd.display(),
        ),
    )
    .unwrap();
    (path, state)
}

impl Api {
    pub async fn hosts(&self) -> Vec<pb::Host> {
        self.call(|ch, t| async move {
            HostServiceClient::new(ch)
                .list_hosts(authed(pb::ListHostsRequest::default(), &t))
                .await
        })
        .await
        .expect("hosts")
        .hosts
    }

    /// Waits until the host is in state `want`.
    pub async fn wait_host(&self, name: &str, want: pb::HostState, within: Duration) {
        wait_for(within, "the host state", || async {
            let hosts = self.hosts().await;
            let state = hosts.iter().find(|h| h.hostname == name).map(|h| h.state());
            (state == Some(want))
                .then_some(())
                .ok_or(format!("{name}: {state:?}"))
        })
        .await;
    }

    /// Starts a live migration; returns its operation id.
    pub async fn live_migrate(&self, id: &str, host: &str, timeout_seconds: u32) -> String {
        let req = pb::LiveMigrateServerRequest {
            request_id: request_id(),
            server: id.into(),
            host: host.into(),
            block_migration: None,
            timeout_seconds,
        };
        self.call(|ch, t| {
            let req = authed(req.clone(), &t);
            async move { ServerServiceClient::new(ch).live_migrate_server(req).await }
        })
        .await
        .expect("live migrate")
        .operation_id
    }

    /// `host evacuate HOST`.
    pub async fn evacuate_host(&self, host: &str) -> pb::EvacuateHostResponse {
        let evac = pb::EvacuateHostRequest {
            request_id: request_id(),
            host: host.into(),
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = authed(evac.clone(), &t);
            async move { HostServiceClient::new(ch).evacuate_host(req).await }
        })
        .await
        .expect("host evacuate")
    }
}

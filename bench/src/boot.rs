//! `flotilla-bench boot-real`: create-to-running time of a server on real libvirt + QEMU
//! (software emulation) through the whole control plane, next to doing the same by hand with
//! `qemu-img create` + `virsh define` + `virsh start` on the same daemon.
//!
//! Setup (everything in one temporary directory under `--data-root`, removed at the end):
//! - a private `virtlogd` + `libvirtd` ([`Daemons`]: its own `/etc/libvirt`, `/run/libvirt`, …
//!   bind-mounted in a private mount namespace; never the system daemon), reached at
//!   `qemu+unix:///system?socket=…`;
//! - three `flotilla-controller` processes (the `--controller-bin` binary, plaintext gRPC on
//!   loopback, default settings) and one `flotilla-agent` process (`--agent-bin`) with the
//!   libvirt driver, qemu-img disks and `domain_type = "qemu"`;
//! - the tiny guest of `agent/tests/data/make-guest.sh` (kernel + initramfs, built into
//!   `--guest-dir` when missing), selected by the flavor's `flotilla:kernel` extra spec; the
//!   server's image is a small empty qcow2 (the guest's `vda`), uploaded once.
//!
//! Measured, one at a time, with a pause (`--pause-ms`, or until idle with `--quiet-wait`)
//! before each:
//! - control plane: `CreateServer` → `GetServer` (linearizable, polled every `--poll-ms` from
//!   the leader) says ACTIVE, power RUNNING, no task. The first run is *cold* (the agent has to
//!   fetch the image from the controllers into its cache) and is reported on its own. Meanwhile
//!   the image cache file, the root disk overlay and libvirt's QEMU pid file are watched (every
//!   5 ms) to show where the time goes. Then `DeleteServer` and wait until `GetServer` says
//!   NOT_FOUND and the QEMU process is gone (not timed into the result).
//! - by hand: `qemu-img create -q -f qcow2 -F qcow2 -b BASE OVERLAY 1G`, `virsh define XML`,
//!   `virsh start NAME` as processes; the time until `virsh start` returns (domain running). The
//!   XML is what the agent defined (`virsh dumpxml --inactive` of the cold run's domain) with its
//!   name, uuid, disk and console paths replaced and the Flotilla metadata removed (so the agent
//!   treats it as a foreign domain and leaves it alone). Then destroy, undefine, remove.
//!
//! The two kinds of run alternate (control plane, by hand, control plane, …) so drift in the
//! machine's load hits both alike.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_proto::v1 as pb;
use pb::flavor_service_client::FlavorServiceClient;
use pb::identity_service_client::IdentityServiceClient;
use pb::image_service_client::ImageServiceClient;
use pb::server_service_client::ServerServiceClient;
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Code;

use crate::cluster::{channel, Cluster, Kind, StartOptions, FLOTILLA_ADMIN_PASSWORD};
use crate::{cpu, machine_note};

const HOST: &str = "bench-host";
const KERNEL: &str = "guest";
pub(crate) const FLAVOR: &str = "boot-bench";
/// Longest wait for a server to become ACTIVE or to be gone.
const DEADLINE: Duration = Duration::from_secs(180);

#[derive(Args)]
pub struct BootArgs {
    /// Steady-state runs of each kind (after the one cold control-plane run).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// The Flotilla controller binary.
    #[arg(long, default_value = "target/release/flotilla-controller")]
    controller_bin: PathBuf,
    /// The Flotilla agent binary.
    #[arg(long, default_value = "target/release/flotilla-agent")]
    agent_bin: PathBuf,
    /// Holds the guest's `vmlinuz` and `initrd.gz`; built with --make-guest when missing.
    #[arg(long, default_value = "target/tmp/flotilla-test-guest")]
    guest_dir: PathBuf,
    #[arg(long, default_value = "agent/tests/data/make-guest.sh")]
    make_guest: PathBuf,
    /// Where the temporary directory goes (a real disk, not tmpfs).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
    /// Flotilla uses BASE+1..3 (clients) and BASE+101..103 (peers).
    #[arg(long, default_value_t = 37400)]
    flotilla_port_base: u16,
    /// Virtual size of the uploaded base image (qcow2), MiB.
    #[arg(long, default_value_t = 64)]
    image_mib: u64,
    /// MiB of incompressible data written into the base image (0: an empty qcow2 of a few
    /// hundred KiB). The cold run's fetch into the agent's cache grows with it.
    #[arg(long, default_value_t = 0)]
    image_data_mib: u64,
    /// How often the benchmark asks for the server's status, ms.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Pause before each measured run, ms (ignored with --quiet-wait).
    #[arg(long, default_value_t = 1500)]
    pause_ms: u64,
    /// Before each run, wait up to this many seconds until the machine (controllers and agent
    /// included) uses less than --quiet-below cores (0: just pause --pause-ms).
    #[arg(long, default_value_t = 0)]
    quiet_wait: u64,
    #[arg(long, default_value_t = 0.2)]
    quiet_below: f64,
    /// Copy the controllers', agent's and libvirtd's logs here before the directory is removed.
    #[arg(long)]
    save_logs: Option<PathBuf>,
}

/// One control-plane run, seconds from just before `CreateServer`.
#[derive(Debug, Clone)]
struct CpRun {
    /// `CreateServer` answered (placement and quota committed).
    placed: f64,
    /// The image appeared in the agent's cache (only when it was not there before).
    cached: Option<f64>,
    /// The root disk overlay appeared.
    disk: Option<f64>,
    /// libvirt wrote the QEMU pid file (the process is spawned; `virsh start` returns a little
    /// later, once the CPUs run).
    qemu: Option<f64>,
    /// `GetServer` said ACTIVE / RUNNING with no task.
    active: f64,
    /// Delete to NOT_FOUND (not part of the result).
    delete: f64,
}

/// One run by hand, seconds from just before `qemu-img create`.
#[derive(Debug, Clone)]
struct HandRun {
    qemu_img: f64,
    /// `virsh define` alone (NaN in one virsh session).
    define: f64,
    /// `virsh start` alone (NaN in one virsh session).
    start: f64,
    /// libvirt wrote the QEMU pid file.
    qemu: Option<f64>,
    /// The last command returned: the domain runs.
    total: f64,
    /// Afterwards, not counted: `virsh version` (process start, connect, one call).
    noop: f64,
}

/// How the by-hand commands are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Virsh {
    /// `virsh define` and `virsh start`, each its own process (and connection).
    Separate,
    /// One `virsh "define …; start …"`: one process, one connection.
    OneSession,
}

/// Our libvirtd and virtlogd in a private mount namespace; stopped (with any QEMU they left)
/// when dropped. Adapted from `agent/tests/support/libvirtd.rs`.
struct Daemons {
    root: PathBuf,
    libvirtd: Child,
}

impl Daemons {
    fn start(root: &Path) -> Result<Daemons> {
        let dirs = [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ];
        for (own, _) in dirs {
            fs::create_dir_all(root.join(own))?;
        }
        fs::write(
            root.join("etc/libvirtd.conf"),
            "listen_tls = 0\nlisten_tcp = 0\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
             unix_sock_group = \"root\"\nlog_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
        )?;
        fs::write(
            root.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\ncgroup_controllers = [ ]\n",
        )?;
        fs::write(root.join("etc/virtlogd.conf"), "")?;
        let mut script = String::from("set -e\n");
        for (own, system) in dirs {
            script += &format!(
                "mkdir -p {system}\nmount --bind '{}' {system}\n",
                root.join(own).display()
            );
        }
        script += &format!(
            "virtlogd -d -f /etc/libvirt/virtlogd.conf -p '{}'\n\
             exec libvirtd -f /etc/libvirt/libvirtd.conf -p '{}'\n",
            root.join("virtlogd.pid").display(),
            root.join("libvirtd.pid").display()
        );
        let log = fs::File::create(root.join("libvirtd.out"))?;
        let libvirtd = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting libvirtd under unshare")?;
        Ok(Daemons {
            root: root.to_path_buf(),
            libvirtd,
        })
    }

    fn uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            self.root.join("run/libvirt-sock").display()
        )
    }

    /// libvirt's pid file of a running domain.
    fn pid_file(&self, domain: &str) -> PathBuf {
        self.root.join("run/qemu").join(format!("{domain}.pid"))
    }

    /// Waits until `virsh version` answers (the first connection probes QEMU, ~5 s).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.libvirtd.try_wait()? {
                bail!(
                    "libvirtd exited ({status}); see {}",
                    self.root.join("libvirtd.out").display()
                );
            }
            if self.root.join("run/libvirt-sock").exists()
                && virsh(&self.uri(), &["version"]).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("libvirtd did not answer within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn kill(pid: &str, signal: &str) {
    let _ = Command::new("kill").args([signal, pid.trim()]).status();
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // QEMU processes libvirtd started (it records their pids in /run/libvirt/qemu).
        if let Ok(entries) = fs::read_dir(self.root.join("run/qemu")) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "pid") {
                    if let Ok(pid) = fs::read_to_string(entry.path()) {
                        kill(&pid, "-KILL");
                    }
                }
            }
        }
        kill(&self.libvirtd.id().to_string(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.libvirtd.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.libvirtd.kill();
                let _ = self.libvirtd.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(pid) = fs::read_to_string(self.root.join("virtlogd.pid")) {
            kill(&pid, "-TERM");
        }
    }
}

/// The agent process, killed by its pid when dropped.
pub(crate) struct Agent(pub(crate) Child);

impl Agent {
    /// Starts `bin run --config CONFIG`, its output appended to `log`.
    pub(crate) fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<Agent> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,flotilla_agent=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Agent(child))
    }
}

/// What differs between the benchmarks' agent configurations.
pub(crate) struct AgentSpec<'a> {
    pub(crate) hostname: &'a str,
    /// How other hosts reach this one (the migration target).
    pub(crate) address: &'a str,
    pub(crate) controllers: &'a Cluster,
    pub(crate) libvirt_uri: &'a str,
    pub(crate) state_dir: &'a Path,
    pub(crate) kernel: &'a Path,
    pub(crate) initrd: &'a Path,
}

impl AgentSpec<'_> {
    /// Writes the agent configuration to `path`: the libvirt driver with qemu-img disks,
    /// `domain_type = "qemu"`, the guest kernel as `[kernels.guest]`, plaintext to the
    /// controllers' peer listeners.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let peers: Vec<String> = self
            .controllers
            .members
            .iter()
            .map(|m| format!("\"{}\"", m.peer_addr))
            .collect();
        fs::write(
            path,
            format!(
                "hostname = \"{host}\"\naddress = \"{address}\"\ncontrollers = [{peers}]\n\
                 libvirt_uri = \"{uri}\"\ndomain_type = \"qemu\"\nstate_dir = \"{state}\"\n\
                 shutdown_timeout_secs = 3\ndisk_cache = \"writeback\"\n\n\
                 [capacity]\nvcpus = 4\nram_mib = 2048\ndisk_gib = 20\n\n\
                 [kernels.{KERNEL}]\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\n\
                 cmdline = \"console=ttyS0 quiet\"\n",
                host = self.hostname,
                address = self.address,
                peers = peers.join(", "),
                uri = self.libvirt_uri,
                state = self.state_dir.display(),
                kernel = self.kernel.display(),
                initrd = self.initrd.display(),
            ),
        )?;
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `virsh -c URI ARGS…`; returns its stdout.
pub(crate) fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    run_tool("virsh", &[&["-c", uri], args].concat())
}

pub(crate) fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a tool as a process (async) and returns how long it took.
pub(crate) async fn timed_tool(tool: &str, args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let out = tokio::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {tool}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

/// The public API as `admin` in the `admin` project, on the leader.
pub(crate) struct Api {
    pub(crate) channel: Channel,
    auth: MetadataValue<Ascii>,
}

impl Api {
    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r
    }

    pub(crate) async fn server(&self, id: &str) -> Result<pb::Server, tonic::Status> {
        ServerServiceClient::new(self.channel.clone())
            .get_server(self.req(pb::GetServerRequest {
                server: id.into(),
                stale: false,
            }))
            .await
            .map(|r| r.into_inner())
    }
}

pub(crate) fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Everything the benchmark started. Fields drop in order: the agent, then the controllers,
/// then libvirtd (with any QEMU left).
struct Bench {
    agent: Agent,
    cluster: Cluster,
    daemons: Daemons,
    a: BootArgs,
    root: PathBuf,
    agent_log: PathBuf,
    api: Api,
    state: PathBuf,
    image_id: String,
    image_sha: String,
}

impl Bench {
    /// Waits before a measurement: --pause-ms, or until idle with --quiet-wait.
    async fn settle(&self) -> f64 {
        if self.a.quiet_wait == 0 {
            tokio::time::sleep(Duration::from_millis(self.a.pause_ms)).await;
            return f64::NAN;
        }
        let mut pids = self.cluster.pids();
        pids.push(self.agent.0.id());
        let busy = cpu::wait_idle(&pids, self.a.quiet_below, self.a.quiet_wait).await;
        if busy >= self.a.quiet_below && !self.a.json {
            eprintln!(
                "warning: still {busy:.2} cores busy after waiting {} s",
                self.a.quiet_wait
            );
        }
        busy
    }

    fn check_alive(&mut self) -> Result<()> {
        self.cluster.check_alive()?;
        if let Some(status) = self.agent.0.try_wait()? {
            bail!(
                "flotilla-agent exited ({status}); see {}",
                self.agent_log.display()
            );
        }
        Ok(())
    }

    /// One control-plane create → ACTIVE, then delete → gone. Returns the run and the id.
    async fn control_plane(&mut self, name: &str) -> Result<(CpRun, String)> {
        self.check_alive()?;
        let cache = self.state.join("images").join(&self.image_sha);
        let was_cached = cache.exists();
        let stop = Arc::new(AtomicBool::new(false));
        // The id is not known before the answer: watch the directories instead of the files.
        let disks = self.state.join("disks");
        let qemu_dir = self.daemons.root.join("run/qemu");
        let before_disks = list(&disks);
        let before_qemu = list(&qemu_dir);
        let watch_dirs = {
            let stop = stop.clone();
            let cache = cache.clone();
            tokio::spawn(async move {
                let (mut cached, mut disk, mut qemu) = (None, None, None);
                while !stop.load(Ordering::Relaxed) {
                    if cached.is_none() && cache.exists() {
                        cached = Some(Instant::now());
                    }
                    if disk.is_none() && new_file_under(&disks, &before_disks, "root.qcow2") {
                        disk = Some(Instant::now());
                    }
                    if qemu.is_none()
                        && list(&qemu_dir)
                            .iter()
                            .any(|f| f.ends_with(".pid") && !before_qemu.contains(f))
                    {
                        qemu = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (cached, disk, qemu)
            })
        };
        let t0 = Instant::now();
        let created = ServerServiceClient::new(self.api.channel.clone())
            .create_server(self.api.req(pb::CreateServerRequest {
                request_id: request_id(),
                name: name.into(),
                flavor: FLAVOR.into(),
                image: self.image_id.clone(),
                ..Default::default()
            }))
            .await
            .context("CreateServer")?
            .into_inner();
        let placed = t0.elapsed().as_secs_f64();
        let Some(id) = created.servers.first().map(|s| s.id.clone()) else {
            bail!("CreateServer returned no server");
        };
        let poll = Duration::from_millis(self.a.poll_ms.max(1));
        let active = loop {
            let s = self.api.server(&id).await.context("GetServer")?;
            if s.status() == pb::ServerStatus::Active
                && s.power_state() == pb::ServerPowerState::Running
                && s.task_state.is_empty()
            {
                break t0.elapsed().as_secs_f64();
            }
            if s.status() == pb::ServerStatus::Error {
                bail!("server {id} went to ERROR: {:?}", s.fault);
            }
            if t0.elapsed() > DEADLINE {
                bail!(
                    "server {id} not ACTIVE within {DEADLINE:?}: {:?} task {:?}; see {}",
                    s.status(),
                    s.task_state,
                    self.agent_log.display()
                );
            }
            tokio::time::sleep(poll).await;
        };
        stop.store(true, Ordering::Relaxed);
        let (cached, disk, qemu) = watch_dirs.await?;
        let since = |i: Option<Instant>| i.map(|i| i.saturating_duration_since(t0).as_secs_f64());
        let run = CpRun {
            placed,
            cached: if was_cached { None } else { since(cached) },
            disk: since(disk),
            qemu: since(qemu),
            active,
            delete: 0.0,
        };
        Ok((run, id))
    }

    /// Deletes a server and waits until the API says NOT_FOUND and its QEMU is gone; returns
    /// the seconds it took.
    async fn delete(&self, id: &str) -> Result<f64> {
        let t = Instant::now();
        ServerServiceClient::new(self.api.channel.clone())
            .delete_server(self.api.req(pb::DeleteServerRequest {
                request_id: request_id(),
                server: id.into(),
            }))
            .await
            .context("DeleteServer")?;
        let pid_file = self.daemons.pid_file(&format!("flotilla-{id}"));
        loop {
            match self.api.server(id).await {
                Err(e) if e.code() == Code::NotFound && !pid_file.exists() => {
                    return Ok(t.elapsed().as_secs_f64())
                }
                Err(e) if e.code() != Code::NotFound => {
                    return Err(e).context("GetServer while deleting")
                }
                _ => {}
            }
            if t.elapsed() > DEADLINE {
                bail!("server {id} not deleted within {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One run by hand on the same daemon; cleans up after itself.
    async fn by_hand(
        &self,
        n: usize,
        how: Virsh,
        template: &Template,
        base: &Path,
    ) -> Result<HandRun> {
        let tag = match how {
            Virsh::Separate => format!("{n}"),
            Virsh::OneSession => format!("{n}s"),
        };
        let dir = self.root.join("by-hand").join(&tag);
        fs::create_dir_all(&dir)?;
        let overlay = dir.join("root.qcow2");
        let name = format!("byhand-{tag}");
        let pid_file = self.daemons.pid_file(&name);
        let stop = Arc::new(AtomicBool::new(false));
        let watch = {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if pid_file.exists() {
                        return Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            })
        };
        let xml_path = dir.join("domain.xml");
        fs::write(&xml_path, template.render(&name, &overlay, &dir))?;
        let uri = self.daemons.uri();
        let (base_s, overlay_s, xml_s) = (
            base.display().to_string(),
            overlay.display().to_string(),
            xml_path.display().to_string(),
        );
        let t = Instant::now();
        let qemu_img = timed_tool(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base_s, &overlay_s, "1G",
            ],
        )
        .await?;
        let (define, start) = match how {
            Virsh::Separate => (
                timed_tool("virsh", &["-c", &uri, "define", &xml_s]).await?,
                timed_tool("virsh", &["-c", &uri, "start", &name]).await?,
            ),
            Virsh::OneSession => {
                let script = format!("define {xml_s}; start {name}");
                timed_tool("virsh", &["-c", &uri, &script]).await?;
                (f64::NAN, f64::NAN)
            }
        };
        let total = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let qemu = watch
            .await?
            .map(|i| i.saturating_duration_since(t).as_secs_f64());
        virsh(&uri, &["destroy", &name])?;
        virsh(&uri, &["undefine", &name])?;
        fs::remove_dir_all(&dir)?;
        let noop = timed_tool("virsh", &["-c", &uri, "version"]).await?;
        Ok(HandRun {
            qemu_img,
            define,
            start,
            qemu,
            total,
            noop,
        })
    }
}

/// File names in a directory (empty if it does not exist).
fn list(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a server directory not in `before` holds `<gen>/<file>`.
fn new_file_under(disks: &Path, before: &[String], file: &str) -> bool {
    list(disks)
        .into_iter()
        .filter(|s| !before.contains(s))
        .any(|s| {
            list(&disks.join(&s))
                .iter()
                .any(|g| disks.join(&s).join(g).join(file).exists())
        })
}

/// The domain XML the agent defined, to be rendered for a by-hand domain.
pub(crate) struct Template {
    xml: String,
    id: String,
    disk: String,
}

impl Template {
    /// Takes `virsh dumpxml --inactive` of the agent's domain for server `id`.
    pub(crate) fn from_agent(uri: &str, id: &str, disk: &Path) -> Result<Template> {
        let xml = virsh(uri, &["dumpxml", "--inactive", &format!("flotilla-{id}")])?;
        let disk = disk.display().to_string();
        if !xml.contains(&disk) {
            bail!("the agent's domain XML does not name the disk {disk}:\n{xml}");
        }
        Ok(Template {
            xml,
            id: id.to_owned(),
            disk,
        })
    }

    /// The same domain named `name`, a fresh uuid, on `overlay`, its console log in `dir`,
    /// without Flotilla's metadata.
    pub(crate) fn render(&self, name: &str, overlay: &Path, dir: &Path) -> String {
        self.render_as(name, uuid::Uuid::new_v4(), overlay, dir)
    }

    /// [`Self::render`] with a given uuid (a migrated domain keeps its uuid).
    pub(crate) fn render_as(
        &self,
        name: &str,
        uuid: uuid::Uuid,
        overlay: &Path,
        dir: &Path,
    ) -> String {
        let mut xml = self.xml.replace(&self.disk, &overlay.display().to_string());
        for tag in ["metadata", "uuid"] {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            if let (Some(a), Some(b)) = (xml.find(&open), xml.find(&close)) {
                if a < b {
                    let keep = if tag == "uuid" {
                        format!("<uuid>{uuid}</uuid>")
                    } else {
                        String::new()
                    };
                    xml.replace_range(a..b + close.len(), &keep);
                }
            }
        }
        // The console log file (and anything else named after the server) moves to `dir`.
        let xml = replace_log_paths(&xml, dir);
        xml.replace(&format!("flotilla-{}", self.id), name)
            .replace(&self.id, name)
    }
}

/// Points every `<log file='…'/>` at `dir/console.log`.
fn replace_log_paths(xml: &str, dir: &Path) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    let key = "<log file='";
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let end = rest.find('\'').unwrap_or(0);
        out.push_str(&dir.join("console.log").display().to_string());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The base image: a qcow2 of `mib` MiB virtual size holding `data_mib` MiB of incompressible
/// bytes (none: an empty qcow2), made by qemu-img.
pub(crate) fn make_image(dir: &Path, mib: u64, data_mib: u64) -> Result<Vec<u8>> {
    let path = dir.join("base.qcow2").display().to_string();
    if data_mib == 0 {
        run_tool(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &path, &format!("{mib}M")],
        )?;
    } else {
        let raw = dir.join("base.raw");
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let bytes: Vec<u8> = (0..data_mib << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(&raw, bytes)?;
        let raw = raw.display().to_string();
        run_tool(
            "qemu-img",
            &["convert", "-q", "-f", "raw", "-O", "qcow2", &raw, &path],
        )?;
        if mib > data_mib {
            run_tool(
                "qemu-img",
                &["resize", "-q", "-f", "qcow2", &path, &format!("{mib}M")],
            )?;
        }
        fs::remove_file(&raw)?;
    }
    Ok(fs::read(&path)?)
}

/// Builds the guest kernel + initramfs into `guest_dir` with `make_guest` unless they exist.
pub(crate) fn guest(guest_dir: &Path, make_guest: &Path) -> Result<(PathBuf, PathBuf)> {
    let (kernel, initrd) = (guest_dir.join("vmlinuz"), guest_dir.join("initrd.gz"));
    if kernel.is_file() && initrd.is_file() {
        return Ok((fs::canonicalize(kernel)?, fs::canonicalize(initrd)?));
    }
    eprintln!(
        "building the guest with {} (apt-get download of a kernel and busybox)",
        make_guest.display()
    );
    let tmp = guest_dir.with_extension(format!("part-{}", std::process::id()));
    run_tool(
        "bash",
        &[
            &make_guest.display().to_string(),
            &tmp.display().to_string(),
        ],
    )?;
    fs::rename(&tmp, guest_dir)?;
    Ok((fs::canonicalize(kernel)?, fs::canonicalize(initrd)?))
}

/// Fails unless a private libvirtd with the QEMU driver can run here.
pub(crate) fn check_prerequisites() -> Result<()> {
    match flotilla_agent::testbed::libvirt_missing_prerequisite() {
        Some(reason) => bail!("cannot run: {reason}"),
        None => Ok(()),
    }
}

pub(crate) async fn upload_image(api: &Api, content: Vec<u8>) -> Result<pb::Image> {
    let image = ImageServiceClient::new(api.channel.clone())
        .create_image(api.req(pb::CreateImageRequest {
            request_id: request_id(),
            name: "boot-bench".into(),
            disk_format: pb::ImageDiskFormat::Qcow2 as i32,
            ..Default::default()
        }))
        .await
        .context("CreateImage")?
        .into_inner();
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
    let up = ImageServiceClient::new(api.channel.clone())
        .upload_image(api.req(tokio_stream::iter(msgs)))
        .await
        .context("UploadImage")?
        .into_inner();
    if up.status() != pb::ImageStatus::Active {
        bail!("the image is {:?}: {}", up.status(), up.status_reason);
    }
    Ok(up)
}

/// Fails unless the controller and agent binaries exist.
pub(crate) fn check_binaries(controller_bin: &Path, agent_bin: &Path) -> Result<()> {
    for bin in [controller_bin, agent_bin] {
        if !bin.is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p flotilla-controller \
                 -p flotilla-agent`",
                bin.display()
            );
        }
    }
    Ok(())
}

/// Starts three controllers (default settings, data under `root`), logs in as the admin on the
/// leader and creates the benchmarks' flavor (1 vCPU, 128 MiB, 1 GiB, the guest kernel).
pub(crate) async fn start_controllers(
    controller_bin: &Path,
    root: &Path,
    port_base: u16,
    save_logs: Option<PathBuf>,
    quiet: bool,
) -> Result<(Cluster, Api)> {
    let mut cluster = Cluster::start(
        Kind::Flotilla,
        &StartOptions {
            flotilla_bin: controller_bin.to_owned(),
            etcd_bin: PathBuf::from("etcd"),
            data_root: root.to_owned(),
            flotilla_port_base: port_base,
            etcd_port_base: 0,
            etcd_election_timeout_ms: None,
            save_logs,
        },
    )?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let chan = channel(&cluster.members[leader].client_addr)?;
    let token = IdentityServiceClient::new(chan.clone())
        .login(pb::LoginRequest {
            user: "admin".into(),
            password: FLOTILLA_ADMIN_PASSWORD.into(),
            project: "admin".into(),
        })
        .await
        .context("Login to the admin project")?
        .into_inner()
        .token;
    let api = Api {
        channel: chan,
        auth: format!("Bearer {token}").parse()?,
    };
    if !quiet {
        eprintln!(
            "controllers (pids {:?}) ready, leader {}",
            cluster.pids(),
            cluster.members[leader].name
        );
    }
    FlavorServiceClient::new(api.channel.clone())
        .create_flavor(api.req(pb::CreateFlavorRequest {
            request_id: request_id(),
            name: FLAVOR.into(),
            vcpus: 1,
            ram_mib: 128,
            disk_gib: 1,
            extra_specs: HashMap::from([("flotilla:kernel".to_owned(), KERNEL.to_owned())]),
            ..Default::default()
        }))
        .await
        .context("CreateFlavor")?;
    Ok((cluster, api))
}

/// Waits until the API lists `host` as UP, calling `alive` (which fails when a process the
/// benchmark needs died) between polls.
pub(crate) async fn wait_host_up(
    api: &Api,
    host: &str,
    within: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let t = Instant::now();
    loop {
        alive()?;
        let hosts = pb::host_service_client::HostServiceClient::new(api.channel.clone())
            .list_hosts(api.req(pb::ListHostsRequest::default()))
            .await
            .context("ListHosts")?
            .into_inner()
            .hosts;
        if hosts
            .iter()
            .any(|h| h.hostname == host && h.state() == pb::HostState::Up)
        {
            return Ok(());
        }
        if t.elapsed() > within {
            bail!("host {host} is not up after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts everything: libvirtd, the controllers, the agent; seeds the flavor and the image.
async fn setup(a: BootArgs) -> Result<(Bench, tempfile::TempDir)> {
    check_prerequisites()?;
    check_binaries(&a.controller_bin, &a.agent_bin)?;
    let (kernel, initrd) = guest(&a.guest_dir, &a.make_guest)?;
    fs::create_dir_all(&a.data_root)?;
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-boot-")
        .tempdir_in(&a.data_root)?;
    let root = dir.path().to_owned();
    let mut daemons = Daemons::start(&root.join("libvirt"))?;
    let t = Instant::now();
    daemons.wait_ready()?;
    if !a.json {
        eprintln!(
            "libvirtd ready after {:.1} s at {}",
            t.elapsed().as_secs_f64(),
            daemons.uri()
        );
    }
    let (cluster, api) = start_controllers(
        &a.controller_bin,
        &root,
        a.flotilla_port_base,
        a.save_logs.clone(),
        a.json,
    )
    .await?;
    let images = root.join("images");
    fs::create_dir_all(&images)?;
    let image = upload_image(&api, make_image(&images, a.image_mib, a.image_data_mib)?).await?;

    let state = root.join("agent");
    let agent_config = root.join("agent.toml");
    AgentSpec {
        hostname: HOST,
        address: "127.0.0.1",
        controllers: &cluster,
        libvirt_uri: &daemons.uri(),
        state_dir: &state,
        kernel: &kernel,
        initrd: &initrd,
    }
    .write(&agent_config)?;
    let agent_log = root.join("agent.log");
    let agent = Agent::spawn(&a.agent_bin, &agent_config, &agent_log)?;
    let mut bench = Bench {
        a,
        root,
        daemons,
        cluster,
        agent,
        agent_log,
        api,
        state,
        image_id: image.id,
        image_sha: image.sha256,
    };
    let t = Instant::now();
    let up = wait_host_up(&bench.api, HOST, Duration::from_secs(60), || {
        bench.cluster.check_alive()?;
        if let Some(status) = bench.agent.0.try_wait()? {
            bail!("flotilla-agent exited ({status})");
        }
        Ok(())
    })
    .await;
    up.with_context(|| format!("see {}", bench.agent_log.display()))?;
    if !bench.a.json {
        eprintln!(
            "agent (pid {}) up after {:.1} s",
            bench.agent.0.id(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok((bench, dir))
}

pub async fn run(a: BootArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be positive");
    }
    let machine = machine_note(a.json);
    let (mut b, dir) = setup(a).await?;
    let result = measure(&mut b).await;
    if let Some(to) = &b.a.save_logs {
        fs::create_dir_all(to)?;
        let _ = fs::copy(&b.agent_log, to.join("agent.log"));
        let _ = fs::copy(
            b.daemons.root.join("log/libvirtd.log"),
            to.join("libvirtd.log"),
        );
    }
    report(&b.a, machine, &result?)?;
    drop(b);
    drop(dir);
    Ok(())
}

struct Measured {
    cold: CpRun,
    cp: Vec<CpRun>,
    hand: Vec<HandRun>,
    session: Vec<HandRun>,
}

async fn measure(b: &mut Bench) -> Result<Measured> {
    let uri = b.daemons.uri();
    b.settle().await;
    let (mut cold, id) = b.control_plane("boot-cold").await?;
    let disk = b.state.join(format!("disks/{id}/1/root.qcow2"));
    let template = Template::from_agent(&uri, &id, &disk)?;
    // By hand starts from a copy of the agent's cached image (the same bytes, warm in the
    // page cache), so the agent's cache management cannot interfere.
    let base = b.root.join("by-hand/base.qcow2");
    fs::create_dir_all(b.root.join("by-hand"))?;
    fs::copy(b.state.join("images").join(&b.image_sha), &base)?;
    cold.delete = b.delete(&id).await?;
    if !b.a.json {
        eprintln!("cold: {}", cp_line(&cold));
    }
    let (mut cp, mut hand, mut session) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=b.a.runs {
        b.settle().await;
        let (mut r, id) = b.control_plane(&format!("boot-{n}")).await?;
        r.delete = b.delete(&id).await?;
        if !b.a.json {
            eprintln!("run {n}: control plane: {}", cp_line(&r));
        }
        cp.push(r);
        for how in [Virsh::Separate, Virsh::OneSession] {
            b.settle().await;
            let h = b.by_hand(n, how, &template, &base).await?;
            if !b.a.json {
                eprintln!(
                    "run {n}: by hand ({how:?}): {:.3} s (qemu-img {:.3}, define {:.3}, start \
                     {:.3}, qemu spawned {}; virsh version alone {:.3})",
                    h.total,
                    h.qemu_img,
                    h.define,
                    h.start,
                    opt(h.qemu),
                    h.noop
                );
            }
            match how {
                Virsh::Separate => hand.push(h),
                Virsh::OneSession => session.push(h),
            }
        }
    }
    Ok(Measured {
        cold,
        cp,
        hand,
        session,
    })
}

fn opt(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into())
}

fn cp_line(r: &CpRun) -> String {
    format!(
        "ACTIVE after {:.3} s (placed {:.3}, image cached {}, disk {}, qemu spawned {}; delete \
         {:.2} s)",
        r.active,
        r.placed,
        opt(r.cached),
        opt(r.disk),
        opt(r.qemu),
        r.delete
    )
}

/// p50, p95 (nearest rank), min, max.
pub(crate) fn stats(v: &[f64]) -> [f64; 4] {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return [f64::NAN; 4];
    }
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    [rank(0.5), rank(0.95), s[0], s[s.len() - 1]]
}

fn report(a: &BootArgs, machine: Value, m: &Measured) -> Result<()> {
    let cp = |f: fn(&CpRun) -> Option<f64>| stats(&m.cp.iter().filter_map(f).collect::<Vec<_>>());
    let by = |v: &[HandRun], f: fn(&HandRun) -> Option<f64>| {
        stats(&v.iter().filter_map(f).collect::<Vec<_>>())
    };
    let rows: Vec<(&str, [f64; 4])> = vec![
        ("control plane: create → ACTIVE", cp(|r| Some(r.active))),
        ("  CreateServer answered (placed)", cp(|r| Some(r.placed))),
        ("  root disk overlay created", cp(|r| r.disk)),
        ("  QEMU spawned (libvirt pid file)", cp(|r| r.qemu)),
        (
            "  QEMU spawned → ACTIVE seen",
            cp(|r| r.qemu.map(|q| r.active - q)),
        ),
        (
            "by hand: qemu-img + virsh define + virsh start",
            by(&m.hand, |h| Some(h.total)),
        ),
        ("  qemu-img create", by(&m.hand, |h| Some(h.qemu_img))),
        ("  virsh define", by(&m.hand, |h| Some(h.define))),
        ("  virsh start", by(&m.hand, |h| Some(h.start))),
        ("  QEMU spawned (libvirt pid file)", by(&m.hand, |h| h.qemu)),
        (
            "  QEMU spawned → virsh start returned",
            by(&m.hand, |h| h.qemu.map(|q| h.total - q)),
        ),
        (
            "by hand, one virsh session: qemu-img + virsh \"define; start\"",
            by(&m.session, |h| Some(h.total)),
        ),
        (
            "  QEMU spawned → virsh returned",
            by(&m.session, |h| h.qemu.map(|q| h.total - q)),
        ),
        (
            "context: virsh version alone (process + connect)",
            by(&m.hand, |h| Some(h.noop)),
        ),
    ];
    let ratio = rows[0].1[0] / rows[5].1[0];
    let ratio_session = rows[0].1[0] / rows[11].1[0];
    if a.json {
        let cp_json = |r: &CpRun| {
            json!({"active_s": r.active, "placed_s": r.placed, "image_cached_s": r.cached,
                   "disk_s": r.disk, "qemu_spawned_s": r.qemu, "delete_s": r.delete})
        };
        let hand_json = |h: &HandRun| {
            json!({"total_s": h.total, "qemu_img_s": h.qemu_img,
                   "define_s": if h.define.is_nan() { Value::Null } else { json!(h.define) },
                   "start_s": if h.start.is_nan() { Value::Null } else { json!(h.start) },
                   "qemu_spawned_s": h.qemu, "virsh_version_s": h.noop})
        };
        let out = json!({
            "command": "boot-real", "machine": machine, "runs": a.runs,
            "image_mib": a.image_mib, "image_data_mib": a.image_data_mib,
            "cold": cp_json(&m.cold),
            "control_plane": m.cp.iter().map(cp_json).collect::<Vec<_>>(),
            "by_hand": m.hand.iter().map(hand_json).collect::<Vec<_>>(),
            "by_hand_one_session": m.session.iter().map(hand_json).collect::<Vec<_>>(),
            "summary": rows.iter().map(|(what, s)| json!({"what": what.trim(), "p50_s": s[0],
                "p95_s": s[1], "min_s": s[2], "max_s": s[3]})).collect::<Vec<_>>(),
            "ratio_of_medians": ratio,
            "ratio_of_medians_one_session": ratio_session,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "\ncold control-plane run (image of {} MiB data not yet in the agent's cache): {}\n",
        a.image_data_mib,
        cp_line(&m.cold)
    );
    println!(
        "{} steady-state runs of each, seconds (p95 = nearest rank)\n",
        a.runs
    );
    println!("| | p50 | p95 | min | max |");
    println!("|---|---|---|---|---|");
    for (what, s) in &rows {
        println!(
            "| {what} | {:.3} | {:.3} | {:.3} | {:.3} |",
            s[0], s[1], s[2], s[3]
        );
    }
    println!("\nratio of medians, control plane / by hand: {ratio:.2}");
    println!("ratio of medians, control plane / by hand in one virsh session: {ratio_session:.2}");
    Ok(())
}

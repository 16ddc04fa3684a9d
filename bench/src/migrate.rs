//! `flotilla-bench migrate-real`: a live migration through the whole control plane, next to
//! `virsh migrate` by hand between the same two libvirt daemons, on a guest of the same shape.
//!
//! Setup (everything in one temporary directory under `--data-root`, removed at the end):
//! - two compute hosts on this machine ([`flotilla_agent::testbed::TwoHosts`]: each a network
//!   namespace on a private bridge plus a private mount namespace, with its own `libvirtd
//!   --listen` on TCP and QEMU migrating on the host's 10.x address; torn down by pid);
//! - three `flotilla-controller` processes (plaintext gRPC on loopback, default settings) and two
//!   `flotilla-agent` processes in the root namespace, one per host: `address` = the host's
//!   namespace address (the migration target), `libvirt_uri` = its libvirtd's unix socket;
//! - one server (1 vCPU, 128 MiB, 1 GiB overlay on a small empty qcow2 image) booted on host A
//!   with the counter guest of `agent/tests/data/make-guest.sh`;
//! - a second guest defined by hand on host A (`virsh define` + `virsh start`), which Flotilla
//!   does not know about: the agent's domain XML with its name, uuid, disk and console paths
//!   replaced and the Flotilla metadata removed (the agents leave foreign domains alone). Its
//!   disk is an overlay on a copy of the same base image; each host has its own copy.
//!
//! Measured, alternating (control plane, by hand, control plane, …), a pause (`--pause-ms`)
//! before each, each guest ping-ponging between the hosts:
//! - control plane: `LiveMigrateServer` to the other host; time from just before the RPC until
//!   `GetOperation` (polled every `--poll-ms` on the leader) says SUCCEEDED. Meanwhile the
//!   operation's step changes, the destination's overlay and QEMU pid file and the source's
//!   QEMU pid file are watched (every 5 ms) to show where the time goes. Then (not timed) wait
//!   until the server is ACTIVE on the destination with no task.
//! - by hand: `qemu-img create -f qcow2 -F qcow2 -b <dest base> <dest overlay> 1G` and `virsh
//!   -c <source> migrate --live --p2p --persistent --undefinesource --copy-storage-inc --xml
//!   <dest xml> --persistent-xml <dest xml> <domain> qemu+tcp://<dest address>/system`, as
//!   processes; the time until virsh returns. Then the source's old overlay is removed.
//!
//! One unmeasured migration of each kind runs first (host B has not fetched the image yet:
//! the control plane's is reported on its own as the cold run). libvirt's downtime of every
//! run is read afterwards with `virsh domjobinfo --completed` on the destination.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_agent::testbed::{self, Host, TwoHosts};
use flotilla_proto::v1 as pb;
use pb::operation_service_client::OperationServiceClient;
use pb::server_service_client::ServerServiceClient;
use serde_json::{json, Value};

use crate::boot::{
    check_binaries, check_prerequisites, guest, make_image, request_id, start_controllers, stats,
    timed_tool, upload_image, virsh, Agent, AgentSpec, Api, Template, FLAVOR,
};
use crate::cluster::Cluster;
use crate::machine_note;

/// Longest wait for a boot, a migration or a server to settle.
const DEADLINE: Duration = Duration::from_secs(180);
/// The hand-made guest's domain name.
const BY_HAND: &str = "byhand-mig";

#[derive(Args)]
pub struct MigrateArgs {
    /// Measured migrations of each kind (after one unmeasured warm-up of each).
    #[arg(long, default_value_t = 6)]
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
    #[arg(long, default_value_t = 37500)]
    flotilla_port_base: u16,
    /// How often the benchmark asks for the operation, ms.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Pause before each measured run, ms.
    #[arg(long, default_value_t = 2000)]
    pause_ms: u64,
    /// Copy the controllers', agents' and libvirtds' logs here before the directory is removed.
    #[arg(long)]
    save_logs: Option<PathBuf>,
}

/// Seconds since a run started at which a watched thing happened.
#[derive(Debug, Clone, Default)]
struct Watched {
    /// The destination overlay appeared (control plane: the agent's prepare step).
    dest_disk: Option<f64>,
    /// The destination QEMU pid file appeared (libvirt's incoming migration started).
    dest_qemu: Option<f64>,
    /// libvirt's status file of the destination domain says running (the switchover: the
    /// guest runs on the destination from here on).
    dest_running: Option<f64>,
    /// The source QEMU pid file went away (libvirt's migration finished).
    source_gone: Option<f64>,
}

/// One control-plane migration.
#[derive(Debug, Clone)]
struct CpRun {
    from: String,
    to: String,
    /// `LiveMigrateServer` answered.
    answered: f64,
    /// Each step of the operation and when `GetOperation` first showed it.
    steps: Vec<(String, f64)>,
    watched: Watched,
    /// `GetOperation` said SUCCEEDED.
    succeeded: f64,
    /// libvirt's downtime, ms.
    downtime_ms: Option<f64>,
}

/// One migration by hand.
#[derive(Debug, Clone)]
struct HandRun {
    from: String,
    to: String,
    qemu_img: f64,
    virsh: f64,
    watched: Watched,
    total: f64,
    downtime_ms: Option<f64>,
}

/// Watches files (every 5 ms) until told to stop and the source's QEMU is gone.
struct Watcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Watched>,
}

impl Watcher {
    fn start(t0: Instant, dest_disk: PathBuf, dst: &Host, src: &Host, domain: &str) -> Self {
        let dest_qemu = qemu_run_file(dst, domain, "pid");
        let dest_status = qemu_run_file(dst, domain, "xml");
        let source_qemu = qemu_run_file(src, domain, "pid");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut w = Watched::default();
            let at = || Some(t0.elapsed().as_secs_f64());
            loop {
                if w.dest_disk.is_none() && dest_disk.exists() {
                    w.dest_disk = at();
                }
                if w.dest_qemu.is_none() && dest_qemu.exists() {
                    w.dest_qemu = at();
                }
                if w.dest_running.is_none() && status_running(&dest_status) {
                    w.dest_running = at();
                }
                if w.source_gone.is_none() && !source_qemu.exists() {
                    w.source_gone = at();
                }
                let done = w.source_gone.is_some() || t0.elapsed() > DEADLINE;
                if done && flag.load(Ordering::Relaxed) {
                    return w;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Watcher { stop, task }
    }

    /// What was seen, once the source's QEMU is gone.
    async fn finish(self) -> Result<Watched> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// A file libvirt keeps for a running domain in its QEMU run directory (`pid`, `xml`).
fn qemu_run_file(host: &Host, domain: &str, ext: &str) -> PathBuf {
    host.dir.join("run/qemu").join(format!("{domain}.{ext}"))
}

/// Whether libvirt's status file says the domain runs (`<domstatus state='running' …>`).
fn status_running(path: &Path) -> bool {
    let text = fs::read(path).unwrap_or_default();
    let head = String::from_utf8_lossy(&text[..text.len().min(1024)]).into_owned();
    head.find("<domstatus ")
        .is_some_and(|i| head[i..].starts_with("<domstatus state='running'"))
}

/// libvirt's downtime of the last completed job of `domain`, ms (None when not reported).
fn downtime_ms(host: &Host, domain: &str) -> Option<f64> {
    let out = virsh(&host.uri(), &["domjobinfo", "--completed", domain]).ok()?;
    let line = out.lines().find(|l| l.starts_with("Total downtime:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The first `<log file='…'/>` of a domain XML.
fn console_path(xml: &str) -> Option<PathBuf> {
    let key = "<log file='";
    let rest = &xml[xml.find(key)? + key.len()..];
    Some(PathBuf::from(&rest[..rest.find('\'')?]))
}

/// Waits until a console log shows the guest counting (`tick 3`).
async fn wait_counting(console: &Path) -> Result<()> {
    let t = Instant::now();
    while !fs::read_to_string(console)
        .unwrap_or_default()
        .contains("tick 3")
    {
        if t.elapsed() > DEADLINE {
            bail!("the guest did not count to 3 on {}", console.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Everything the benchmark started. Fields drop in order: agents, controllers, hosts.
struct Bench {
    agents: Vec<Agent>,
    cluster: Cluster,
    hosts: TwoHosts,
    a: MigrateArgs,
    root: PathBuf,
    api: Api,
    /// The Flotilla server and the host index it runs on, its placement generation.
    id: String,
    at: usize,
    generation: u64,
    /// The hand-made guest: the host index it runs on, its overlay there, the template.
    hand_at: usize,
    hand_disk: PathBuf,
    hand_uuid: uuid::Uuid,
    /// The agent's domain XML, rendered for the hand-made guest (set once the server runs).
    template: Option<Template>,
}

impl Bench {
    fn state(&self, host: usize) -> PathBuf {
        self.root
            .join(format!("agent-{}", self.hosts.hosts[host].name))
    }

    fn check_alive(&mut self) -> Result<()> {
        self.cluster.check_alive()?;
        for (agent, host) in self.agents.iter_mut().zip(&self.hosts.hosts) {
            if let Some(status) = agent.0.try_wait()? {
                bail!(
                    "the agent of {} exited ({status}); see {}",
                    host.name,
                    self.root.join(format!("agent-{}.log", host.name)).display()
                );
            }
        }
        Ok(())
    }

    async fn operation(&self, id: &str) -> Result<pb::Operation> {
        let op = OperationServiceClient::new(self.api.channel.clone())
            .get_operation(self.api.req(pb::GetOperationRequest {
                operation_id: id.into(),
                stale: false,
            }))
            .await
            .context("GetOperation")?
            .into_inner();
        Ok(op)
    }

    /// Waits until the server is ACTIVE, RUNNING, on `host`, with no task.
    async fn wait_settled(&self, host: &str) -> Result<()> {
        let t = Instant::now();
        loop {
            let s = self.api.server(&self.id).await.context("GetServer")?;
            if s.status() == pb::ServerStatus::Active
                && s.power_state() == pb::ServerPowerState::Running
                && s.task_state.is_empty()
                && s.host == host
            {
                return Ok(());
            }
            if s.status() == pb::ServerStatus::Error {
                bail!("server {} went to ERROR: {:?}", self.id, s.fault);
            }
            if t.elapsed() > DEADLINE {
                bail!("server {} not settled on {host}: {s:?}", self.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One live migration of the Flotilla server to the other host through the API.
    async fn control_plane(&mut self) -> Result<CpRun> {
        self.check_alive()?;
        let (from, to) = (self.at, 1 - self.at);
        let (src, dst) = (&self.hosts.hosts[from], &self.hosts.hosts[to]);
        let domain = format!("flotilla-{}", self.id);
        let dest_disk = self.state(to).join(format!(
            "disks/{}/{}/root.qcow2",
            self.id,
            self.generation + 1
        ));
        let t0 = Instant::now();
        let watcher = Watcher::start(t0, dest_disk, dst, src, &domain);
        let op_id = ServerServiceClient::new(self.api.channel.clone())
            .live_migrate_server(self.api.req(pb::LiveMigrateServerRequest {
                request_id: request_id(),
                server: self.id.clone(),
                host: dst.name.clone(),
                block_migration: None,
                timeout_seconds: 120,
            }))
            .await
            .context("LiveMigrateServer")?
            .into_inner()
            .operation_id;
        let answered = t0.elapsed().as_secs_f64();
        let poll = Duration::from_millis(self.a.poll_ms.max(1));
        let mut steps: Vec<(String, f64)> = Vec::new();
        let done = loop {
            let op = self.operation(&op_id).await?;
            let now = t0.elapsed().as_secs_f64();
            if !op.step.is_empty() && steps.last().map(|(s, _)| s) != Some(&op.step) {
                steps.push((op.step.clone(), now));
            }
            if op.finished_at_ms != 0 {
                break (op, now);
            }
            if t0.elapsed() > DEADLINE {
                bail!("live migration {op_id} not finished: {op:?}");
            }
            tokio::time::sleep(poll).await;
        };
        let watched = watcher.finish().await?;
        let (op, succeeded) = done;
        if op.state() != pb::OperationState::Succeeded {
            bail!(
                "live migration {op_id} ended {:?}: {}",
                op.state(),
                op.error
            );
        }
        let (from_name, to_name) = (src.name.clone(), dst.name.clone());
        let downtime_ms = downtime_ms(dst, &domain);
        self.wait_settled(&to_name).await?;
        self.at = to;
        self.generation += 1;
        Ok(CpRun {
            from: from_name,
            to: to_name,
            answered,
            steps,
            watched,
            succeeded,
            downtime_ms,
        })
    }

    /// One live migration of the hand-made guest to the other host with `virsh migrate`.
    async fn by_hand(&mut self, n: usize) -> Result<HandRun> {
        let (from, to) = (self.hand_at, 1 - self.hand_at);
        let (src, dst) = (&self.hosts.hosts[from], &self.hosts.hosts[to]);
        let dir = self
            .root
            .join("by-hand")
            .join(&dst.name)
            .join(n.to_string());
        fs::create_dir_all(&dir)?;
        let overlay = dir.join("root.qcow2");
        let xml = dir.join("domain.xml");
        let template = self.template.as_ref().context("no domain template yet")?;
        fs::write(
            &xml,
            template.render_as(BY_HAND, self.hand_uuid, &overlay, &dir),
        )?;
        let base = self.root.join("by-hand").join(&dst.name).join("base.qcow2");
        let (src_uri, dest_uri) = (src.uri(), dst.tcp_uri());
        let (base, overlay_s, xml) = (
            base.display().to_string(),
            overlay.display().to_string(),
            xml.display().to_string(),
        );
        let t0 = Instant::now();
        let watcher = Watcher::start(t0, overlay.clone(), dst, src, BY_HAND);
        let qemu_img = timed_tool(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &overlay_s, "1G",
            ],
        )
        .await?;
        let virsh_s = timed_tool(
            "virsh",
            &[
                "-c",
                &src_uri,
                "migrate",
                "--live",
                "--p2p",
                "--persistent",
                "--undefinesource",
                "--copy-storage-inc",
                "--xml",
                &xml,
                "--persistent-xml",
                &xml,
                BY_HAND,
                &dest_uri,
            ],
        )
        .await?;
        let total = t0.elapsed().as_secs_f64();
        let watched = watcher.finish().await?;
        let downtime_ms = downtime_ms(dst, BY_HAND);
        let run = HandRun {
            from: src.name.clone(),
            to: dst.name.clone(),
            qemu_img,
            virsh: virsh_s,
            watched,
            total,
            downtime_ms,
        };
        // The source's overlay (and its directory) is no longer used.
        if let Some(old) = self.hand_disk.parent() {
            fs::remove_dir_all(old)?;
        }
        self.hand_disk = overlay;
        self.hand_at = to;
        Ok(run)
    }
}

/// Starts everything and boots both guests on host A.
async fn setup(a: MigrateArgs, root: PathBuf) -> Result<Bench> {
    let hosts = tokio::task::block_in_place(|| {
        let mut hosts = TwoHosts::start(&root.join("hosts"));
        let _ = hosts.a().connect();
        let _ = hosts.b().connect();
        hosts
    });
    let quiet = a.json;
    if !quiet {
        eprintln!(
            "hosts up: {} at {}, {} at {} (bridge {})",
            hosts.hosts[0].name,
            hosts.hosts[0].address,
            hosts.hosts[1].name,
            hosts.hosts[1].address,
            hosts.bridge
        );
    }
    let (kernel, initrd) = guest(&a.guest_dir, &a.make_guest)?;
    let (cluster, api) = start_controllers(
        &a.controller_bin,
        &root,
        a.flotilla_port_base,
        a.save_logs.clone(),
        quiet,
    )
    .await?;
    let images = root.join("images");
    fs::create_dir_all(&images)?;
    let image = upload_image(&api, make_image(&images, 64, 0)?).await?;
    let mut agents = Vec::new();
    for h in &hosts.hosts {
        let config = root.join(format!("agent-{}.toml", h.name));
        AgentSpec {
            hostname: &h.name,
            address: &h.address,
            controllers: &cluster,
            libvirt_uri: &h.uri(),
            state_dir: &root.join(format!("agent-{}", h.name)),
            kernel: &kernel,
            initrd: &initrd,
        }
        .write(&config)?;
        let log = root.join(format!("agent-{}.log", h.name));
        agents.push(Agent::spawn(&a.agent_bin, &config, &log)?);
    }
    let mut b = Bench {
        agents,
        cluster,
        hosts,
        a,
        root,
        api,
        id: String::new(),
        at: 0,
        generation: 1,
        hand_at: 0,
        hand_disk: PathBuf::new(),
        hand_uuid: uuid::Uuid::new_v4(),
        template: None,
    };
    for i in 0..2 {
        let name = b.hosts.hosts[i].name.clone();
        let t = Instant::now();
        let (api, agents, cluster) = (&b.api, &mut b.agents, &mut b.cluster);
        let alive = || -> Result<()> {
            cluster.check_alive()?;
            for agent in agents.iter_mut() {
                if let Some(status) = agent.0.try_wait()? {
                    bail!("an agent exited ({status}); see agent-*.log");
                }
            }
            Ok(())
        };
        crate::boot::wait_host_up(api, &name, Duration::from_secs(60), alive).await?;
        if !quiet {
            eprintln!(
                "agent of {name} up after {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }

    // The Flotilla server on A.
    let host_a = b.hosts.hosts[0].name.clone();
    let created = ServerServiceClient::new(b.api.channel.clone())
        .create_server(b.api.req(pb::CreateServerRequest {
            request_id: request_id(),
            name: "mover".into(),
            flavor: FLAVOR.into(),
            image: image.id.clone(),
            host: host_a.clone(),
            ..Default::default()
        }))
        .await
        .context("CreateServer")?
        .into_inner();
    let Some(id) = created.servers.first().map(|s| s.id.clone()) else {
        bail!("CreateServer returned no server");
    };
    b.id = id.clone();
    b.wait_settled(&host_a).await?;
    let uri_a = b.hosts.hosts[0].uri();
    let disk = b.state(0).join(format!("disks/{id}/1/root.qcow2"));
    let template = Template::from_agent(&uri_a, &id, &disk)?;
    let console = console_path(&virsh(
        &uri_a,
        &["dumpxml", "--inactive", &format!("flotilla-{id}")],
    )?)
    .context("no console log in the agent's domain XML")?;

    // The hand-made guest on A: an overlay on a copy of the image each host holds.
    let cached = b.state(0).join("images").join(&image.sha256);
    for h in &b.hosts.hosts {
        let dir = b.root.join("by-hand").join(&h.name);
        fs::create_dir_all(&dir)?;
        fs::copy(&cached, dir.join("base.qcow2"))?;
    }
    let dir = b.root.join("by-hand").join(&host_a).join("0");
    fs::create_dir_all(&dir)?;
    let overlay = dir.join("root.qcow2");
    let base = b.root.join("by-hand").join(&host_a).join("base.qcow2");
    crate::boot::run_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &base.display().to_string(),
            &overlay.display().to_string(),
            "1G",
        ],
    )?;
    let xml = dir.join("domain.xml");
    fs::write(
        &xml,
        template.render_as(BY_HAND, b.hand_uuid, &overlay, &dir),
    )?;
    b.template = Some(template);
    virsh(&uri_a, &["define", &xml.display().to_string()])?;
    virsh(&uri_a, &["start", BY_HAND])?;
    b.hand_disk = overlay;
    wait_counting(&console).await?;
    wait_counting(&dir.join("console.log")).await?;
    if !quiet {
        eprintln!("server {id} and {BY_HAND} counting on {host_a}");
    }
    Ok(b)
}

pub async fn run(a: MigrateArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be positive");
    }
    check_prerequisites()?;
    if let Some(reason) = testbed::missing_prerequisite() {
        bail!("cannot run: {reason}");
    }
    check_binaries(&a.controller_bin, &a.agent_bin)?;
    let machine = machine_note(a.json);
    fs::create_dir_all(&a.data_root)?;
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-migrate-")
        .tempdir_in(&a.data_root)?;
    let mut b = setup(a, dir.path().to_owned()).await?;
    let result = measure(&mut b).await;
    if let Some(to) = &b.a.save_logs {
        fs::create_dir_all(to)?;
        for h in &b.hosts.hosts {
            let _ = fs::copy(
                b.root.join(format!("agent-{}.log", h.name)),
                to.join(format!("agent-{}.log", h.name)),
            );
            let _ = fs::copy(
                h.dir.join("log/libvirtd.log"),
                to.join(format!("libvirtd-{}.log", h.name)),
            );
        }
    }
    report(&b.a, machine, &result?)?;
    tokio::task::block_in_place(|| drop(b));
    drop(dir);
    Ok(())
}

struct Measured {
    cold: CpRun,
    warm_hand: HandRun,
    cp: Vec<CpRun>,
    hand: Vec<HandRun>,
}

async fn settle(b: &Bench) {
    tokio::time::sleep(Duration::from_millis(b.a.pause_ms)).await;
}

async fn measure(b: &mut Bench) -> Result<Measured> {
    let quiet = b.a.json;
    settle(b).await;
    let cold = b.control_plane().await?;
    if !quiet {
        eprintln!(
            "cold (B fetches the image): control plane {}",
            cp_line(&cold)
        );
    }
    settle(b).await;
    let warm_hand = b.by_hand(1).await?;
    if !quiet {
        eprintln!("warm-up: by hand {}", hand_line(&warm_hand));
    }
    let (mut cp, mut hand) = (Vec::new(), Vec::new());
    for n in 1..=b.a.runs {
        settle(b).await;
        let r = b.control_plane().await?;
        if !quiet {
            eprintln!("run {n}: control plane {}", cp_line(&r));
        }
        cp.push(r);
        settle(b).await;
        let h = b.by_hand(n + 1).await?;
        if !quiet {
            eprintln!("run {n}: by hand {}", hand_line(&h));
        }
        hand.push(h);
    }
    Ok(Measured {
        cold,
        warm_hand,
        cp,
        hand,
    })
}

fn opt(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into())
}

fn cp_line(r: &CpRun) -> String {
    let steps: Vec<String> = r.steps.iter().map(|(s, t)| format!("{s}@{t:.3}")).collect();
    format!(
        "{}→{}: SUCCEEDED after {:.3} s (answered {:.3}, dest disk {}, dest QEMU {}, dest \
         running {}, source QEMU gone {}; steps {}; downtime {} ms)",
        r.from,
        r.to,
        r.succeeded,
        r.answered,
        opt(r.watched.dest_disk),
        opt(r.watched.dest_qemu),
        opt(r.watched.dest_running),
        opt(r.watched.source_gone),
        steps.join(" "),
        r.downtime_ms.map_or("-".into(), |d| format!("{d:.0}"))
    )
}

fn hand_line(h: &HandRun) -> String {
    format!(
        "{}→{}: {:.3} s (qemu-img {:.3}, virsh migrate {:.3}, dest QEMU {}, dest running {}, \
         source QEMU gone {}; downtime {} ms)",
        h.from,
        h.to,
        h.total,
        h.qemu_img,
        h.virsh,
        opt(h.watched.dest_qemu),
        opt(h.watched.dest_running),
        opt(h.watched.source_gone),
        h.downtime_ms.map_or("-".into(), |d| format!("{d:.0}"))
    )
}

/// Median over runs of when each step was first seen, in the order of the first run.
fn step_rows(cp: &[CpRun]) -> Vec<(String, [f64; 4])> {
    let mut names: Vec<String> = Vec::new();
    for r in cp {
        for (s, _) in &r.steps {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let at: Vec<f64> = cp
                .iter()
                .filter_map(|r| r.steps.iter().find(|(s, _)| *s == name).map(|(_, t)| *t))
                .collect();
            (format!("  step `{name}` first seen"), stats(&at))
        })
        .collect()
}

fn report(a: &MigrateArgs, machine: Value, m: &Measured) -> Result<()> {
    let cp =
        |f: &dyn Fn(&CpRun) -> Option<f64>| stats(&m.cp.iter().filter_map(f).collect::<Vec<_>>());
    let hand = |f: &dyn Fn(&HandRun) -> Option<f64>| {
        stats(&m.hand.iter().filter_map(f).collect::<Vec<_>>())
    };
    let mut rows: Vec<(String, [f64; 4])> = vec![
        (
            "control plane: LiveMigrateServer → SUCCEEDED".into(),
            cp(&|r| Some(r.succeeded)),
        ),
        ("  RPC answered".into(), cp(&|r| Some(r.answered))),
    ];
    rows.extend(step_rows(&m.cp));
    rows.extend([
        (
            "  destination overlay created".into(),
            cp(&|r| r.watched.dest_disk),
        ),
        (
            "  destination QEMU started (incoming)".into(),
            cp(&|r| r.watched.dest_qemu),
        ),
        (
            "  destination running (switchover)".into(),
            cp(&|r| r.watched.dest_running),
        ),
        (
            "  source QEMU gone (libvirt done)".into(),
            cp(&|r| r.watched.source_gone),
        ),
        (
            "  destination running → SUCCEEDED seen".into(),
            cp(&|r| Some(r.succeeded - r.watched.dest_running?)),
        ),
        ("  downtime (libvirt), ms".into(), cp(&|r| r.downtime_ms)),
        (
            "by hand: qemu-img create + virsh migrate".into(),
            hand(&|h| Some(h.total)),
        ),
        ("  qemu-img create".into(), hand(&|h| Some(h.qemu_img))),
        ("  virsh migrate".into(), hand(&|h| Some(h.virsh))),
        (
            "  destination QEMU started (incoming)".into(),
            hand(&|h| h.watched.dest_qemu),
        ),
        (
            "  destination running (switchover)".into(),
            hand(&|h| h.watched.dest_running),
        ),
        (
            "  source QEMU gone (libvirt done)".into(),
            hand(&|h| h.watched.source_gone),
        ),
        (
            "  destination running → virsh returned".into(),
            hand(&|h| Some(h.total - h.watched.dest_running?)),
        ),
        ("  downtime (libvirt), ms".into(), hand(&|h| h.downtime_ms)),
    ]);
    let median = |kind: &str, what: &str| {
        let start = rows.iter().position(|(w, _)| w.starts_with(kind));
        start
            .and_then(|s| rows[s..].iter().find(|(w, _)| w.trim() == what))
            .map_or(f64::NAN, |(_, st)| st[0])
    };
    let ratio = rows[0].1[0] / median("by hand", "by hand: qemu-img create + virsh migrate");
    let ratio_switch = median("control plane", "destination running (switchover)")
        / median("by hand", "destination running (switchover)");
    let ratio_done = median("control plane", "source QEMU gone (libvirt done)")
        / median("by hand", "source QEMU gone (libvirt done)");
    if a.json {
        let cp_json = |r: &CpRun| {
            json!({"from": r.from, "to": r.to, "succeeded_s": r.succeeded,
                   "answered_s": r.answered, "steps": r.steps,
                   "dest_disk_s": r.watched.dest_disk, "dest_qemu_s": r.watched.dest_qemu,
                   "dest_running_s": r.watched.dest_running,
                   "source_gone_s": r.watched.source_gone, "downtime_ms": r.downtime_ms})
        };
        let hand_json = |h: &HandRun| {
            json!({"from": h.from, "to": h.to, "total_s": h.total, "qemu_img_s": h.qemu_img,
                   "virsh_s": h.virsh, "dest_qemu_s": h.watched.dest_qemu,
                   "dest_running_s": h.watched.dest_running,
                   "source_gone_s": h.watched.source_gone, "downtime_ms": h.downtime_ms})
        };
        let out = json!({
            "command": "migrate-real", "machine": machine, "runs": a.runs,
            "cold_control_plane": cp_json(&m.cold),
            "warm_up_by_hand": hand_json(&m.warm_hand),
            "control_plane": m.cp.iter().map(cp_json).collect::<Vec<_>>(),
            "by_hand": m.hand.iter().map(hand_json).collect::<Vec<_>>(),
            "summary": rows.iter().map(|(what, s)| json!({"what": what.trim(), "p50": s[0],
                "p95": s[1], "min": s[2], "max": s[3]})).collect::<Vec<_>>(),
            "ratio_of_medians": ratio,
            "ratio_of_medians_switchover": ratio_switch,
            "ratio_of_medians_source_gone": ratio_done,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("\ncold control-plane run: {}", cp_line(&m.cold));
    println!("warm-up by hand: {}\n", hand_line(&m.warm_hand));
    println!(
        "{} measured runs of each (ping-pong between the hosts), seconds from the start of the \
         run unless marked\n",
        a.runs
    );
    println!("| | p50 | min | max |");
    println!("|---|---|---|---|");
    for (what, s) in &rows {
        println!("| {what} | {:.3} | {:.3} | {:.3} |", s[0], s[2], s[3]);
    }
    println!(
        "\nratio of medians, control plane (SUCCEEDED) / by hand (virsh returned): {ratio:.2}"
    );
    println!("ratio of medians, destination running (switchover): {ratio_switch:.2}");
    println!("ratio of medians, source QEMU gone (libvirt done): {ratio_done:.2}");
    Ok(())
}

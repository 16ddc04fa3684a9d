//! Starting, inspecting and stopping the clusters under test: three Flotilla controllers, or
//! three etcd members, on loopback, each in its own data directory under one temporary
//! directory. Every process is a [`Child`] of the benchmark and is stopped by its own pid
//! (SIGKILL through `Child::kill`), never by name; the temporary directory is removed when the
//! [`Cluster`] is dropped.
use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_proto::v1 as fpb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::etcdpb;

/// The password of the `admin` user the benchmark's Flotilla cluster creates on its first
/// leader; the benchmark logs in as that user (see [`Cluster::wait_for_leader`]).
pub const FLOTILLA_ADMIN_PASSWORD: &str = "flotilla-bench-admin-password";
/// Deadline of one Login attempt. Login starts with a linearizable read, which a controller
/// without a leader holds until its proposal timeout (5 s): give up sooner, ask the next member.
const LOGIN_ATTEMPT: Duration = Duration::from_secs(1);
/// Pause after a refused Login (the leader may not have created `admin` yet). Refusals count
/// towards the controller's login throttle (5 per user name and minute, per controller).
const LOGIN_REFUSED_PAUSE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Flotilla,
    Etcd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Flotilla => "flotilla",
            Kind::Etcd => "etcd",
        }
    }
}

pub struct Member {
    pub name: String,
    /// `host:port` of the client API.
    pub client_addr: String,
    /// `host:port` of the peer listener (Raft; Flotilla agents connect here too).
    pub peer_addr: String,
    /// Flotilla: the configured Raft id. etcd: the member id it reports in response headers.
    pub raft_id: u64,
    pub child: Option<Child>,
    pub pid: u32,
    pub log: PathBuf,
}

pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Member>,
    /// Kept only for its `Drop`, which removes the data directories.
    dir: Option<tempfile::TempDir>,
    /// Where to copy member logs before the directory is removed (`--save-logs`).
    save_logs: Option<PathBuf>,
    /// Flotilla: `authorization: Bearer <token>` of the `admin` user, once logged in.
    flotilla_auth: Option<MetadataValue<Ascii>>,
}

pub struct StartOptions {
    pub flotilla_bin: PathBuf,
    pub etcd_bin: PathBuf,
    pub data_root: PathBuf,
    pub flotilla_port_base: u16,
    pub etcd_port_base: u16,
    pub etcd_election_timeout_ms: Option<u64>,
    pub save_logs: Option<PathBuf>,
}

fn check_free(addr: &str) -> Result<()> {
    TcpListener::bind(addr).map(drop).with_context(|| {
        format!("{addr} is in use; pick other ports with --flotilla-port-base / --etcd-port-base")
    })
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio)> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let g = f.try_clone()?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

pub fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Cluster {
    pub fn start(kind: Kind, opts: &StartOptions) -> Result<Cluster> {
        std::fs::create_dir_all(&opts.data_root)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("flotilla-bench-{}-", kind.name()))
            .tempdir_in(&opts.data_root)?;
        let mut cluster = Cluster {
            kind,
            members: Vec::new(),
            dir: None,
            save_logs: opts.save_logs.clone(),
            flotilla_auth: None,
        };
        let root = dir.path().to_owned();
        cluster.dir = Some(dir);
        match kind {
            Kind::Flotilla => cluster.spawn_flotilla(&root, opts)?,
            Kind::Etcd => cluster.spawn_etcd(&root, opts)?,
        }
        Ok(cluster)
    }

    fn spawn_flotilla(&mut self, root: &Path, opts: &StartOptions) -> Result<()> {
        if !opts.flotilla_bin.is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p flotilla-controller`",
                opts.flotilla_bin.display()
            );
        }
        let base = opts.flotilla_port_base;
        let members: Vec<(u64, String, String, String)> = (1..=3u16)
            .map(|i| {
                (
                    u64::from(i),
                    format!("n{i}"),
                    format!("127.0.0.1:{}", base + i),
                    format!("127.0.0.1:{}", base + 100 + i),
                )
            })
            .collect();
        for (_, _, c, p) in &members {
            check_free(c)?;
            check_free(p)?;
        }
        let mut list = String::new();
        for (id, name, c, p) in &members {
            write!(
                list,
                "\n[[initial_members]]\nid = {id}\nname = \"{name}\"\nclient_address = \"{c}\"\npeer_address = \"{p}\"\n"
            )?;
        }
        let password_file = root.join("admin.password");
        std::fs::write(&password_file, format!("{FLOTILLA_ADMIN_PASSWORD}\n"))?;
        for (id, name, c, p) in &members {
            let data = root.join(name);
            let cfg = format!(
                "id = {id}\nname = \"{name}\"\ndata_dir = \"{}\"\nclient_listen = \"{c}\"\npeer_listen = \"{p}\"\n\
                 bootstrap_admin_password_file = \"{}\"\n{list}",
                data.display(),
                password_file.display()
            );
            let cfg_path = root.join(format!("{name}.toml"));
            std::fs::write(&cfg_path, cfg)?;
            let log = root.join(format!("{name}.log"));
            let (out, err) = log_file(&log)?;
            let child = Command::new(&opts.flotilla_bin)
                .arg("run")
                .arg("--config")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting {}", opts.flotilla_bin.display()))?;
            self.members.push(Member {
                name: name.clone(),
                client_addr: c.clone(),
                peer_addr: p.clone(),
                raft_id: *id,
                pid: child.id(),
                child: Some(child),
                log,
            });
        }
        Ok(())
    }

    fn spawn_etcd(&mut self, root: &Path, opts: &StartOptions) -> Result<()> {
        let base = opts.etcd_port_base;
        let members: Vec<(String, String, String)> = (1..=3u16)
            .map(|i| {
                (
                    format!("e{i}"),
                    format!("127.0.0.1:{}", base + i),
                    format!("127.0.0.1:{}", base + 100 + i),
                )
            })
            .collect();
        for (_, c, p) in &members {
            check_free(c)?;
            check_free(p)?;
        }
        let initial: Vec<String> = members
            .iter()
            .map(|(n, _, p)| format!("{n}=http://{p}"))
            .collect();
        let initial = initial.join(",");
        let token = format!("flotilla-bench-{}", std::process::id());
        for (name, c, p) in &members {
            let log = root.join(format!("{name}.log"));
            let (out, err) = log_file(&log)?;
            // Default durability: the WAL is fsynced before a write is acknowledged (no
            // --unsafe-no-fsync), default heartbeat (100 ms) and election timeout (1000 ms).
            let mut cmd = Command::new(&opts.etcd_bin);
            if let Some(ms) = opts.etcd_election_timeout_ms {
                cmd.arg("--election-timeout").arg(ms.to_string());
            }
            let child = cmd
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(root.join(name))
                .arg("--listen-client-urls")
                .arg(format!("http://{c}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://{c}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://{p}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://{p}"))
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(&token)
                .arg("--logger")
                .arg("zap")
                .arg("--log-outputs")
                .arg("stderr")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (install it: apt-get install etcd-server)",
                        opts.etcd_bin.display()
                    )
                })?;
            self.members.push(Member {
                name: name.clone(),
                client_addr: c.clone(),
                peer_addr: p.clone(),
                raft_id: 0,
                pid: child.id(),
                child: Some(child),
                log,
            });
        }
        Ok(())
    }

    /// Indexes of members still running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .collect()
    }

    /// Fails if a member process has exited on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "{} {} exited: {status}; see its log {}",
                        self.kind.name(),
                        m.name,
                        m.log.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Flotilla: `authorization` metadata with the `admin` user's token. Fails before
    /// [`Cluster::wait_for_leader`] has logged in.
    pub fn flotilla_auth(&self) -> Result<MetadataValue<Ascii>> {
        self.flotilla_auth
            .clone()
            .context("not logged in to the Flotilla cluster yet (wait_for_leader logs in)")
    }

    /// Flotilla: logs in as `admin`, asking the live members in turn until `deadline`. Before a
    /// leader exists Login is UNAVAILABLE (or held: see [`LOGIN_ATTEMPT`]); after, it is
    /// UNAUTHENTICATED until the leader has created the user.
    async fn login_admin(&mut self, deadline: Instant) -> Result<()> {
        let mut next = 0;
        loop {
            self.check_alive()?;
            let live = self.live();
            if live.is_empty() {
                bail!("no Flotilla member runs; cannot log in");
            }
            let i = live[next % live.len()];
            next += 1;
            let mut c = fpb::identity_service_client::IdentityServiceClient::new(channel(
                &self.members[i].client_addr,
            )?);
            let mut req = tonic::Request::new(fpb::LoginRequest {
                user: "admin".into(),
                password: FLOTILLA_ADMIN_PASSWORD.into(),
                project: String::new(),
            });
            req.set_timeout(LOGIN_ATTEMPT);
            let (pause, seen) = match tokio::time::timeout(LOGIN_ATTEMPT, c.login(req)).await {
                Ok(Ok(t)) => {
                    self.flotilla_auth = Some(format!("Bearer {}", t.into_inner().token).parse()?);
                    return Ok(());
                }
                Ok(Err(e))
                    if matches!(
                        e.code(),
                        tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
                    ) =>
                {
                    (LOGIN_REFUSED_PAUSE, e.to_string())
                }
                Ok(Err(e)) => (Duration::from_millis(50), e.to_string()),
                Err(_) => (
                    Duration::ZERO,
                    format!("no answer within {LOGIN_ATTEMPT:?}"),
                ),
            };
            if Instant::now() >= deadline {
                bail!(
                    "could not log in as admin to the Flotilla cluster; last answer from {}: {seen}",
                    self.members[i].name
                );
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The member that is leader now, asking every live member for its own view.
    pub async fn leader(&mut self) -> Result<Option<usize>> {
        match self.kind {
            Kind::Flotilla => {
                let auth = self.flotilla_auth()?;
                for i in self.live() {
                    let mut c = fpb::cluster_service_client::ClusterServiceClient::new(channel(
                        &self.members[i].client_addr,
                    )?);
                    let mut req = tonic::Request::new(fpb::GetMemberStatusRequest {});
                    req.metadata_mut().insert("authorization", auth.clone());
                    req.set_timeout(Duration::from_millis(500));
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_millis(600), c.get_member_status(req))
                            .await
                    {
                        let s = s.into_inner();
                        if s.role == fpb::Role::Leader as i32 {
                            return Ok(self.members.iter().position(|m| m.raft_id == s.id));
                        }
                    }
                }
                Ok(None)
            }
            Kind::Etcd => {
                let mut leader = None;
                for i in self.live() {
                    let mut c = etcdpb::maintenance_client::MaintenanceClient::new(channel(
                        &self.members[i].client_addr,
                    )?);
                    let mut req = tonic::Request::new(etcdpb::StatusRequest {});
                    req.set_timeout(Duration::from_millis(500));
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_millis(600), c.status(req)).await
                    {
                        let s = s.into_inner();
                        if let Some(h) = &s.header {
                            self.members[i].raft_id = h.member_id;
                        }
                        if s.leader != 0 {
                            leader = Some(s.leader);
                        }
                    }
                }
                // A follower may still name a leader that was just killed: only a live one counts.
                Ok(leader.and_then(|l| {
                    self.members
                        .iter()
                        .position(|m| m.raft_id == l && m.child.is_some())
                }))
            }
        }
    }

    /// Waits until all members run and one of them is the leader. Flotilla: logs in as
    /// `admin` first (once), since the member status needs a cluster admin.
    pub async fn wait_for_leader(&mut self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        if self.kind == Kind::Flotilla && self.flotilla_auth.is_none() {
            self.login_admin(deadline).await?;
        }
        while Instant::now() < deadline {
            self.check_alive()?;
            if let Some(l) = self.leader().await? {
                if self.kind == Kind::Flotilla
                    || self
                        .members
                        .iter()
                        .all(|m| m.raft_id != 0 || m.child.is_none())
                {
                    return Ok(l);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the {} cluster elected no leader within {within:?}",
            self.kind.name()
        )
    }

    /// SIGKILLs one member (by its pid) and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill()
                .with_context(|| format!("killing pid {}", self.members[i].pid))?;
            c.wait()?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.pid)
            .collect()
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(to) = &self.save_logs {
            let _ = std::fs::create_dir_all(to);
            for m in &self.members {
                let _ = std::fs::copy(
                    &m.log,
                    to.join(format!("{}-{}.log", self.kind.name(), m.name)),
                );
            }
        }
        // The TempDir removes every data directory and log as it drops.
        self.dir.take();
    }
}

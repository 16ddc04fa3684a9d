//! Harness for process tests (test layer 3): real `flotilla-controller` processes on loopback.
//!
//! * [`Cluster`] owns a temporary directory (configs, data dirs, logs, TLS material) and the
//!   controller processes. Dropping it kills every process it started (by its `Child`, i.e. by
//!   pid) and then deletes the directory, so a failing test cleans up too. When the drop happens
//!   during a panic, the tail of every controller's log is printed first (libtest shows it with
//!   the failure).
//! * Every cluster is created with an `admin` password ([`ADMIN_PASSWORD`] by default): the
//!   first leader creates the `admin` user with it, and that user is the only way to act as
//!   cluster admin. [`Cluster::login_admin`] (also the first step of [`Cluster::wait_ready`])
//!   logs in as `admin`, retrying until the user exists, and keeps the token for the harness and
//!   its clients ([`Cluster::authed`], [`Client::authed`]).
//! * [`Client`] is what an SDK user would write: it knows every controller's address, sends the
//!   bearer token, bounds every attempt with a short deadline, follows the `x-flotilla-leader`
//!   hint on UNAVAILABLE and otherwise tries the next controller, with the SAME request (and so
//!   the same `request_id`) until an overall deadline.
//! * [`wait_for`] polls a condition until a deadline and fails with what it last saw; tests never
//!   sleep to synchronise.
//! * [`serial`] serialises the process tests of one test binary: they share 2 CI cores, and the
//!   failover bound is a timing assertion.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod agent;
pub mod compute;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

/// The controller binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla-controller");
/// The password of the bootstrap `admin` user, unless [`Options::admin_password`] says otherwise.
pub const ADMIN_PASSWORD: &str = "process-test-admin-password-42";
/// The user the first leader creates.
pub const ADMIN_USER: &str = "admin";
/// The project the first leader creates with the `admin` user (every cluster has it).
pub const ADMIN_PROJECT: &str = "admin";
/// How often [`wait_for`] re-checks its condition.
const POLL: Duration = Duration::from_millis(25);
/// Pause between two attempts of one client call (after UNAVAILABLE or a connection error).
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Deadline of one status RPC made by the harness itself.
const STATUS_RPC: Duration = Duration::from_secs(3);
/// Deadline of one Login attempt made by the harness. Login starts with a linearizable read,
/// which a controller that knows no leader yet holds until its proposal timeout (5 s): give up
/// sooner and ask the next node. Argon2 verification takes well under this (~0.1 s).
const LOGIN_RPC: Duration = Duration::from_secs(1);
/// Pause after a refused Login while the `admin` user may not exist yet. Each refusal counts
/// towards the controller's login throttle (5 per user name and minute); with this pause and
/// the attempts spread over the nodes, a 3-node cluster allows ~4 s between the first leader
/// answering and the user existing before every node throttles `admin`.
const LOGIN_RETRY: Duration = Duration::from_millis(300);

/// Serialises the process tests of a test binary (see the module doc). Hold the guard for the
/// whole test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Polls `probe` until it returns `Ok`, failing the test after `within`. `Err` carries a
/// description of what was seen, reported when the deadline passes.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last seen: {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `authorization: Bearer <token>` on a request.
pub fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("valid header"),
    );
    req
}

pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// How a [`Cluster`] is configured.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: u64,
    /// `[raft] snapshot_interval`; the controller's default when `None`.
    pub snapshot_interval: Option<u64>,
    /// `[raft] log_retention`; the controller's default when `None`.
    pub log_retention: Option<u64>,
    /// Issue certificates with `gen-certs` and configure `[tls]` on every node.
    pub tls: bool,
    /// Written to a file named by `bootstrap_admin_password_file` on every node, so the first
    /// leader creates the `admin` user with it.
    pub admin_password: String,
    /// Appended to every node's config (after the `[raft]` table), e.g. an `[images]` table.
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            snapshot_interval: None,
            log_retention: None,
            tls: false,
            admin_password: ADMIN_PASSWORD.to_owned(),
            extra_toml: String::new(),
        }
    }
}

/// TLS material issued by `gen-certs` for a cluster.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// A client TLS configuration trusting the cluster CA, optionally presenting the client
    /// certificate `name` (issued with `--client name`).
    pub fn client_config(&self, client_cert: Option<&str>) -> ClientTlsConfig {
        let ca = Certificate::from_pem(fs::read(&self.ca).expect("read ca.pem"));
        let mut cfg = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(name) = client_cert {
            let cert = fs::read(self.dir.join(format!("{name}.pem"))).expect("read client cert");
            let key = fs::read(self.dir.join(format!("{name}.key"))).expect("read client key");
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        cfg
    }
}

/// One controller: its configuration on disk and, while it runs, its process.
pub struct Node {
    pub id: u64,
    pub name: String,
    pub client_address: String,
    pub peer_address: String,
    pub data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    starts: AtomicUsize,
    channel: Channel,
}

impl Node {
    fn member_toml(&self) -> String {
        format!(
            "[[initial_members]]\nid = {}\nname = \"{}\"\nclient_address = \"{}\"\npeer_address = \"{}\"\n\n",
            self.id, self.name, self.client_address, self.peer_address
        )
    }

    fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// Fails the test if the process was started and has exited on its own.
    fn check_not_exited(&self) -> Result<(), String> {
        let mut child = self.child.lock().unwrap();
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                *child = None;
                return Err(format!(
                    "controller {} exited unexpectedly ({status}); log tail:\n{}",
                    self.name,
                    log_tail(&self.log, 60)
                ));
            }
        }
        Ok(())
    }
}

/// A set of controller processes and everything they use on disk.
pub struct Cluster {
    nodes: BTreeMap<u64, Arc<Node>>,
    opts: Options,
    tls: Option<TlsFiles>,
    /// The `admin` user's token, once [`Cluster::login_admin`] got it; shared with the clients.
    admin_token: Arc<OnceLock<String>>,
    /// Last field: deleted after `Drop::drop` has killed the processes.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Writes configs for `opts.nodes` initial members and starts them all. Does not wait for
    /// a leader (see [`Cluster::wait_ready`]).
    pub fn start(opts: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-process-")
            .tempdir()
            .expect("temp dir");
        let tls = opts.tls.then(|| {
            let tls_dir = dir.path().join("tls");
            let mut cmd = Command::new(BIN);
            cmd.arg("gen-certs")
                .arg("--dir")
                .arg(&tls_dir)
                .args(["--client", "admin"]);
            for id in 1..=opts.nodes + 2 {
                cmd.args(["--node", &format!("n{id}")]);
            }
            run_ok(&mut cmd);
            TlsFiles {
                ca: tls_dir.join("ca.pem"),
                dir: tls_dir,
            }
        });
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            opts: opts.clone(),
            tls,
            admin_token: Arc::default(),
            dir,
        };
        for id in 1..=opts.nodes {
            cluster.define_node(id);
        }
        let members: String = cluster.nodes.values().map(|n| n.member_toml()).collect();
        for n in cluster.nodes.values() {
            cluster.write_config(n, false, &members);
        }
        for id in 1..=opts.nodes {
            cluster.restart(id);
        }
        cluster
    }

    /// Defines a new node `id` that joins the cluster (`join = true`, empty data directory,
    /// the current members listed so it can reach them) and starts it. It becomes a member
    /// only once added with `AddMember`.
    pub fn start_joining_node(&mut self, id: u64) -> Arc<Node> {
        let members: String = self.nodes.values().map(|n| n.member_toml()).collect();
        let node = self.define_node(id);
        self.write_config(&node, true, &members);
        self.restart(id);
        node
    }

    fn define_node(&mut self, id: u64) -> Arc<Node> {
        assert!(!self.nodes.contains_key(&id), "node {id} defined twice");
        let (client_port, peer_port) = free_port_pair();
        let client_address = format!("127.0.0.1:{client_port}");
        let node = Arc::new(Node {
            id,
            name: format!("n{id}"),
            channel: self.channel_to(
                &client_address,
                self.tls.as_ref().map(|t| t.client_config(None)),
            ),
            client_address,
            peer_address: format!("127.0.0.1:{peer_port}"),
            data_dir: self.dir.path().join(format!("n{id}")).join("data"),
            config: self
                .dir
                .path()
                .join(format!("n{id}"))
                .join("controller.toml"),
            log: self
                .dir
                .path()
                .join(format!("n{id}"))
                .join("controller.log"),
            child: Mutex::new(None),
            starts: AtomicUsize::new(0),
        });
        fs::create_dir_all(node.config.parent().unwrap()).expect("node dir");
        self.nodes.insert(id, node.clone());
        node
    }

    fn write_config(&self, n: &Node, join: bool, members: &str) {
        let password_file = n.config.with_file_name("admin-password");
        fs::write(&password_file, format!("{}\n", self.opts.admin_password))
            .expect("write admin password file");
        let mut toml = format!(
            "id = {}\nname = \"{}\"\ndata_dir = \"{}\"\nclient_listen = \"{}\"\npeer_listen = \"{}\"\n\
             bootstrap_admin_password_file = \"{}\"\njoin = {join}\n\n",
            n.id,
            n.name,
            n.data_dir.display(),
            n.client_address,
            n.peer_address,
            password_file.display()
        );
        toml.push_str(members);
        if let Some(tls) = &self.tls {
            let _ = write!(
                toml,
                "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
                tls.ca.display(),
                tls.dir.join(format!("{}.pem", n.name)).display(),
                tls.dir.join(format!("{}.key", n.name)).display()
            );
        }
        toml.push_str("[raft]\n");
        if let Some(v) = self.opts.snapshot_interval {
            let _ = writeln!(toml, "snapshot_interval = {v}");
        }
        if let Some(v) = self.opts.log_retention {
            let _ = writeln!(toml, "log_retention = {v}");
        }
        toml.push('\n');
        toml.push_str(&self.opts.extra_toml);
        fs::write(&n.config, toml).expect("write controller config");
    }

    /// A lazily connecting channel (reconnects by itself after a controller restarts).
    fn channel_to(&self, address: &str, tls: Option<ClientTlsConfig>) -> Channel {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            ep = ep.tls_config(tls).expect("client tls config");
        }
        ep.connect_lazy()
    }

    pub fn node(&self, id: u64) -> &Arc<Node> {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Ids of the nodes whose process runs (as far as the harness knows).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Starts node `id` (again) with its config and data directory.
    pub fn restart(&self, id: u64) {
        let n = self.node(id);
        let mut child = n.child.lock().unwrap();
        assert!(child.is_none(), "{} is already running", n.name);
        let start = n.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("open log");
        writeln!(log, "===== harness: start #{start} of {} =====", n.name).expect("write log");
        let spawned = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&n.config)
            .env_remove("FLOTILLA_CONTROLLER_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        *child = Some(spawned);
    }

    /// SIGKILL, then reap. Returns when the process is gone.
    pub fn kill(&self, id: u64) {
        let n = self.node(id);
        let mut child = n
            .child
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| panic!("{} is not running", n.name));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then waits (up to `within`) for a clean exit. A controller that does not stop
    /// in time is killed and the test fails.
    pub async fn terminate(&self, id: u64, within: Duration) -> ExitStatus {
        let n = self.node(id);
        let mut child = n
            .child
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| panic!("{} is not running", n.name));
        let pid = child.id().to_string();
        run_ok(Command::new("kill").args(["-TERM", &pid]));
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {within:?} of SIGTERM; log tail:\n{}",
                    n.name,
                    log_tail(&n.log, 60)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A client that knows every node defined so far.
    pub fn client(&self) -> Client {
        self.client_of(&self.nodes.keys().copied().collect::<Vec<_>>())
    }

    /// A client that only talks to the given nodes.
    pub fn client_of(&self, ids: &[u64]) -> Client {
        Client {
            targets: Arc::new(
                ids.iter()
                    .map(|id| {
                        (
                            *id,
                            self.node(*id).client_address.clone(),
                            self.node(*id).channel.clone(),
                        )
                    })
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
            attempt_timeout: Duration::from_secs(2),
            admin_token: self.admin_token.clone(),
        }
    }

    /// A client with its own channels and TLS configuration (`None`: plaintext).
    pub fn client_with_tls(&self, tls: Option<ClientTlsConfig>) -> Client {
        Client {
            targets: Arc::new(
                self.nodes
                    .values()
                    .map(|n| {
                        (
                            n.id,
                            n.client_address.clone(),
                            self.channel_to(&n.client_address, tls.clone()),
                        )
                    })
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
            attempt_timeout: Duration::from_secs(2),
            admin_token: self.admin_token.clone(),
        }
    }

    /// Fails the test (at once, with the controller's log) if any started process has exited
    /// on its own.
    pub fn assert_alive(&self) {
        for n in self.nodes.values() {
            if let Err(e) = n.check_not_exited() {
                panic!("{e}");
            }
        }
    }

    /// This node's own status (GetMemberStatus), one attempt.
    pub async fn member_status(&self, id: u64) -> Result<pb::MemberStatus, Status> {
        let ch = self.node(id).channel.clone();
        let req = self.authed(pb::GetMemberStatusRequest {});
        deadline(STATUS_RPC, async move {
            ClusterServiceClient::new(ch).get_member_status(req).await
        })
        .await
        .map(Response::into_inner)
    }

    /// The cluster status as node `id` sees it (GetClusterStatus), one attempt.
    pub async fn cluster_status(&self, id: u64) -> Result<pb::ClusterStatus, Status> {
        let ch = self.node(id).channel.clone();
        let req = self.authed(pb::GetClusterStatusRequest {});
        deadline(STATUS_RPC, async move {
            ClusterServiceClient::new(ch).get_cluster_status(req).await
        })
        .await
        .map(Response::into_inner)
    }

    /// Logs in as `admin` at the nodes in `ids` (unless already logged in) and keeps the token
    /// for [`Cluster::authed`] and the clients. Retries until `within` while the nodes have no
    /// leader (UNAVAILABLE) or the leader has not created the user yet (UNAUTHENTICATED, paced
    /// by [`LOGIN_RETRY`] because those count towards the login throttle).
    pub async fn login_admin(&self, ids: &[u64], within: Duration) -> &str {
        if let Some(token) = self.admin_token.get() {
            return token;
        }
        let client = self.client_of(ids).with_attempt_timeout(LOGIN_RPC);
        let req = pb::LoginRequest {
            user: ADMIN_USER.to_owned(),
            password: self.opts.admin_password.clone(),
            project: String::new(),
        };
        let started = Instant::now();
        let deadline_at = started + within;
        let mut next = 0;
        let mut refused = 0;
        loop {
            self.assert_alive();
            let node = ids[next % ids.len()];
            next += 1;
            let req = req.clone();
            let seen = match client
                .once(node, |ch| async move {
                    IdentityServiceClient::new(ch).login(req).await
                })
                .await
            {
                Ok(token) => {
                    assert!(
                        token.roles.iter().any(|r| r == "admin"),
                        "the bootstrap user is a cluster admin: {token:?}"
                    );
                    println!(
                        "harness: logged in as {ADMIN_USER} at n{node} after {:?} ({refused} \
                         refused attempts)",
                        started.elapsed()
                    );
                    return self.admin_token.get_or_init(|| token.token);
                }
                Err(e) if retryable(&e) => (POLL, format!("n{node}: {e:?}")),
                Err(e) if matches!(e.code(), Code::Unauthenticated | Code::ResourceExhausted) => {
                    refused += 1;
                    (
                        LOGIN_RETRY,
                        format!("n{node}: {e:?} (the leader may not have created the user yet)"),
                    )
                }
                Err(e) => panic!("login as {ADMIN_USER} at n{node} failed: {e:?}"),
            };
            if Instant::now() >= deadline_at {
                panic!(
                    "timed out after {within:?} logging in as {ADMIN_USER}; last seen: {}",
                    seen.1
                );
            }
            tokio::time::sleep(seen.0).await;
        }
    }

    /// The `admin` user's token; [`Cluster::login_admin`] (or [`Cluster::wait_ready`]) must
    /// have run.
    pub fn admin_token(&self) -> &str {
        admin_token(&self.admin_token)
    }

    /// `msg` with the `admin` user's token.
    pub fn authed<T>(&self, msg: T) -> Request<T> {
        with_token(msg, self.admin_token())
    }

    /// Logs in as `admin` (see [`Cluster::login_admin`]), then waits until every node in `ids`
    /// runs, agrees on one leader, and lists exactly `ids` as members (so the bootstrap
    /// membership is applied everywhere). Returns the leader's id.
    pub async fn wait_ready(&self, ids: &[u64], within: Duration) -> u64 {
        self.login_admin(ids, within).await;
        let want: BTreeSet<u64> = ids.iter().copied().collect();
        wait_for(within, "one leader known to all members, every member reachable", || async {
            self.assert_alive();
            let mut leader = None;
            for id in &want {
                let s = self.cluster_status(*id).await.map_err(|e| format!("n{id}: {e}"))?;
                let got: BTreeSet<u64> = s.members.iter().map(|m| m.id).collect();
                let unreachable: Vec<_> =
                    s.members.iter().filter(|m| m.role == pb::Role::Unreachable as i32).map(|m| m.id).collect();
                if s.leader_id == 0 || got != want || !unreachable.is_empty() || leader.is_some_and(|l| l != s.leader_id) {
                    return Err(format!(
                        "n{id} sees leader {} (others: {leader:?}), members {got:?}, unreachable {unreachable:?}",
                        s.leader_id
                    ));
                }
                leader = Some(s.leader_id);
            }
            Ok(leader.expect("at least one node"))
        })
        .await
    }

    /// The leader as the running nodes see it: a node that says it leads, at the highest term
    /// seen, that every other answering node follows.
    pub async fn wait_leader(&self, ids: &[u64], within: Duration) -> u64 {
        wait_for(within, "a leader all given members agree on", || async {
            self.assert_alive();
            let mut seen = Vec::new();
            for id in ids {
                let s = self
                    .member_status(*id)
                    .await
                    .map_err(|e| format!("n{id}: {e}"))?;
                seen.push(s);
            }
            let leader = seen
                .iter()
                .find(|s| s.role == pb::Role::Leader as i32)
                .map(|s| s.id);
            match leader {
                Some(l) if seen.iter().all(|s| s.leader_id == l) => Ok(l),
                _ => Err(describe(&seen)),
            }
        })
        .await
    }

    /// Waits until every node in `ids` reports the same applied index and state checksum,
    /// with everything committed applied. Returns their statuses.
    pub async fn wait_converged(&self, ids: &[u64], within: Duration) -> Vec<pb::MemberStatus> {
        wait_for(
            within,
            "all given replicas at the same applied index and state checksum",
            || async {
                self.assert_alive();
                let mut seen = Vec::new();
                for id in ids {
                    seen.push(
                        self.member_status(*id)
                            .await
                            .map_err(|e| format!("n{id}: {e}"))?,
                    );
                }
                let first = &seen[0];
                let same = seen.iter().all(|s| {
                    s.applied_index == first.applied_index
                        && s.state_checksum == first.state_checksum
                        && s.commit_index == s.applied_index
                });
                if same {
                    Ok(seen)
                } else {
                    Err(describe(&seen))
                }
            },
        )
        .await
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        log_tail(&self.node(id).log, lines)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            if let Some(mut child) = n.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for n in self.nodes.values() {
                eprintln!(
                    "----- {} log (tail) -----\n{}",
                    n.name,
                    log_tail(&n.log, 80)
                );
            }
        }
        // `dir` (a TempDir) is deleted when the fields drop, after this.
    }
}

/// One line per member status, for failure messages.
pub fn describe(statuses: &[pb::MemberStatus]) -> String {
    statuses
        .iter()
        .map(|s| {
            format!(
                "[n{} role={:?} term={} leader={} commit={} applied={} checksum={} snapshot={} log={}..{}{}]",
                s.id,
                pb::Role::try_from(s.role).unwrap_or(pb::Role::Unspecified),
                s.term,
                s.leader_id,
                s.commit_index,
                s.applied_index,
                s.state_checksum,
                s.snapshot_index,
                s.first_log_index,
                s.last_log_index,
                if s.error.is_empty() { String::new() } else { format!(" error={}", s.error) }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A successful client call and when and where it succeeded.
#[derive(Debug, Clone)]
pub struct Acked<T> {
    pub value: T,
    /// The node that answered.
    pub node: u64,
    /// When the successful attempt was sent.
    pub attempt_sent: Instant,
    pub acked_at: Instant,
}

fn admin_token(token: &OnceLock<String>) -> &str {
    token
        .get()
        .expect("no admin token yet: call Cluster::wait_ready or Cluster::login_admin first")
}

/// A cluster client with the retry policy of an SDK user (see the module doc).
#[derive(Clone)]
pub struct Client {
    targets: Arc<Vec<(u64, String, Channel)>>,
    next: Arc<AtomicUsize>,
    attempt_timeout: Duration,
    /// The cluster's (see [`Cluster::login_admin`]).
    admin_token: Arc<OnceLock<String>>,
}

impl Client {
    /// Bounds every attempt (not the whole call) by `d`.
    pub fn with_attempt_timeout(mut self, d: Duration) -> Client {
        self.attempt_timeout = d;
        self
    }

    /// Starts the round robin at another node (spreads concurrent writers).
    pub fn starting_at(self, offset: usize) -> Client {
        Client {
            next: Arc::new(AtomicUsize::new(offset)),
            ..self
        }
    }

    /// The same client restricted to one node (retries stay on that node).
    pub fn only(&self, node: u64) -> Client {
        let targets: Vec<_> = self
            .targets
            .iter()
            .filter(|(id, _, _)| *id == node)
            .cloned()
            .collect();
        assert!(
            !targets.is_empty(),
            "node {node} is not known to this client"
        );
        Client {
            targets: Arc::new(targets),
            next: Arc::new(AtomicUsize::new(0)),
            attempt_timeout: self.attempt_timeout,
            admin_token: self.admin_token.clone(),
        }
    }

    /// `msg` with the `admin` user's token (the cluster must be logged in).
    pub fn authed<T>(&self, msg: T) -> Request<T> {
        with_token(msg, admin_token(&self.admin_token))
    }

    /// Runs `rpc` against the cluster until it succeeds, fails with a non-retryable status, or
    /// `within` has passed. Retries (UNAVAILABLE, an expired attempt, connection errors) go to
    /// the hinted leader if the answer named one, else to the next node.
    pub async fn call<T, F, Fut>(&self, within: Duration, mut rpc: F) -> Result<Acked<T>, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline_at = Instant::now() + within;
        let mut hinted: Option<usize> = None;
        loop {
            let i = hinted
                .take()
                .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len());
            let (id, _, channel) = &self.targets[i];
            let attempt_sent = Instant::now();
            match deadline(self.attempt_timeout, rpc(channel.clone())).await {
                Ok(r) => {
                    return Ok(Acked {
                        value: r.into_inner(),
                        node: *id,
                        attempt_sent,
                        acked_at: Instant::now(),
                    })
                }
                Err(status) if retryable(&status) => {
                    if Instant::now() >= deadline_at {
                        return Err(status);
                    }
                    hinted = status
                        .metadata()
                        .get(flotilla_proto::LEADER_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|addr| self.targets.iter().position(|(_, a, _)| a == addr));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// One attempt at one node, no retry.
    pub async fn once<T, F, Fut>(&self, node: u64, rpc: F) -> Result<T, Status>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let (_, _, channel) = self
            .targets
            .iter()
            .find(|(id, _, _)| *id == node)
            .expect("node known to the client");
        deadline(self.attempt_timeout, rpc(channel.clone()))
            .await
            .map(Response::into_inner)
    }

    pub async fn create_project(
        &self,
        request_id: &str,
        name: &str,
        within: Duration,
    ) -> Result<Acked<pb::Project>, Status> {
        let req = pb::CreateProjectRequest {
            request_id: request_id.to_owned(),
            name: name.to_owned(),
            description: format!("created by the process tests as {name}"),
            ..Default::default()
        };
        self.call(within, |ch| {
            let req = self.authed(req.clone());
            async move { IdentityServiceClient::new(ch).create_project(req).await }
        })
        .await
    }

    /// Every project, in id order, by following the pagination (linearizable reads).
    pub async fn list_projects(&self, within: Duration) -> Vec<pb::Project> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListProjectsRequest {
                page_size: 100,
                page_token: token.clone(),
                stale: false,
            };
            let page = self
                .call(within, |ch| {
                    let req = self.authed(req.clone());
                    async move { IdentityServiceClient::new(ch).list_projects(req).await }
                })
                .await
                .unwrap_or_else(|e| panic!("ListProjects failed: {e:?}"))
                .value;
            assert!(
                page.projects.len() <= 100,
                "a page holds at most page_size projects"
            );
            all.extend(page.projects);
            if page.next_page_token.is_empty() {
                return all;
            }
            token = page.next_page_token;
        }
    }
}

/// Statuses worth retrying with the same request: the controller said "not now", or the
/// attempt did not get an answer (connection refused or reset, attempt deadline).
pub fn retryable(s: &Status) -> bool {
    // A status made on the client side from a transport error carries that error as its source
    // (e.g. "h2 protocol error" when a killed controller's connection breaks mid-call); statuses
    // sent by a controller carry none.
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    ) || std::error::Error::source(s).is_some()
}

/// Bounds a call on the client side (the server might be gone and never answer).
pub async fn deadline<T>(
    d: Duration,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {d:?} (client-side deadline)"
        ))),
    }
}

/// Two loopback ports that are free right now. Ports come from a per-process window below the
/// kernel's ephemeral range (so outgoing connections never take them) and are probed by
/// binding; the window depends on the pid so concurrent test processes rarely probe the same
/// ports. A port taken between the probe and the controller's bind makes that controller exit,
/// which the harness reports with its log.
fn free_port_pair() -> (u16, u16) {
    const LOW: u32 = 15_000;
    const SPAN: u32 = 17_000; // up to 32000, below the usual ephemeral range (32768+)
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = (std::process::id() * 61) % SPAN;
    let pick = || loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        assert!(n < SPAN, "no free loopback port found");
        let port = (LOW + (base + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    };
    (pick(), pick())
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log_tail(path: &Path, lines: usize) -> String {
    match File::open(path).and_then(|mut f| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).map(|_| s)
    }) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

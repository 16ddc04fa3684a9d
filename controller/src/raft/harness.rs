//! In-process cluster harness: real nodes (real sled storage in temp dirs, real node threads)
//! joined by an in-memory network with fault hooks — drop rate, delay, partitions, and
//! crash/restart of nodes. Tests wait on conditions with deadlines, never bare sleeps.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft::prelude::{Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::node::{NodeHandle, NodeOptions};
use super::transport::{Inbox, Transport};
use super::{Node, Role};
use crate::config::RaftTuning;
use crate::state::Member;

/// Faults currently in force.
#[derive(Default)]
struct Faults {
    /// Percent of messages dropped.
    drop_percent: u32,
    /// Extra delivery delay, chosen uniformly in `0..=max_delay_ms`.
    max_delay_ms: u64,
    /// Node ids cut off from everyone else.
    isolated: HashSet<u64>,
}

struct Net {
    inboxes: HashMap<u64, Inbox>,
    handles: HashMap<u64, NodeHandle>,
    faults: Faults,
    rng: StdRng,
}

/// The shared in-memory network.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Mutex<Net>>,
    runtime: tokio::runtime::Handle,
}

struct NetTransport {
    from: u64,
    net: Network,
}

impl Transport for NetTransport {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            self.net.deliver(self.from, m);
        }
    }

    fn set_peers(&self, _peers: BTreeMap<u64, String>) {}
}

impl Network {
    fn deliver(&self, from: u64, msg: Message) {
        let to = msg.to;
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let mut net = self.inner.lock();
        let cut = net.faults.isolated.contains(&from) || net.faults.isolated.contains(&to);
        let dropped = cut || net.rng.gen_range(0..100) < net.faults.drop_percent;
        let target = net.inboxes.get(&to).cloned();
        let sender = net.handles.get(&from).cloned();
        let delay = match net.faults.max_delay_ms {
            0 => 0,
            max => net.rng.gen_range(0..=max),
        };
        drop(net);
        let Some(target) = target.filter(|_| !dropped) else {
            if let (true, Some(s)) = (is_snapshot, sender) {
                s.report_snapshot(to, false);
            }
            return;
        };
        let report = move || {
            if let (true, Some(s)) = (is_snapshot, sender) {
                s.report_snapshot(to, true);
            }
        };
        if delay == 0 {
            let _ = target.send(super::NodeMsg::Step(Box::new(msg)));
            report();
        } else {
            self.runtime.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = target.send(super::NodeMsg::Step(Box::new(msg)));
                report();
            });
        }
    }
}

struct Running {
    handle: NodeHandle,
    thread: std::thread::JoinHandle<()>,
}

pub struct Cluster {
    pub net: Network,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    tuning: RaftTuning,
    nodes: BTreeMap<u64, Running>,
}

/// A CreateProject command stamped like the API stamps it (real time: the dedup window is
/// measured in leader-stamped time), with id `id-<name>`.
pub fn create_project(request_id: &str, name: &str) -> crate::state::Envelope {
    crate::state::Envelope {
        request_id: request_id.into(),
        actor: "test".into(),
        time_ms: crate::server::now_ms(),
        command: crate::state::Command::CreateProject {
            id: format!("id-{name}"),
            name: name.into(),
            description: String::new(),
            enabled: true,
            properties: Default::default(),
        },
    }
}

/// Raft timing for tests: fast elections so fault schedules stay short.
pub fn fast_tuning() -> RaftTuning {
    RaftTuning {
        tick_ms: 10,
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_interval: 200,
        log_retention: 50,
        proposal_timeout_ms: 1_000,
        ..RaftTuning::default()
    }
}

fn member(id: u64) -> Member {
    Member {
        id,
        name: format!("n{id}"),
        client_address: format!("mem://{id}"),
        peer_address: format!("mem://{id}"),
    }
}

impl Cluster {
    /// Starts `n` nodes with ids 1..=n. Call from inside a tokio runtime.
    pub fn start(n: u64, seed: u64, tuning: RaftTuning) -> Cluster {
        let net = Network {
            inner: Arc::new(Mutex::new(Net {
                inboxes: HashMap::new(),
                handles: HashMap::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed),
            })),
            runtime: tokio::runtime::Handle::current(),
        };
        let mut cluster = Cluster {
            net,
            dir: tempfile::tempdir().expect("temp dir"),
            members: (1..=n).map(member).collect(),
            tuning,
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.boot(id, false);
        }
        cluster
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    fn boot(&mut self, id: u64, join: bool) {
        let (tx, rx) = std::sync::mpsc::channel();
        let transport = Arc::new(NetTransport {
            from: id,
            net: self.net.clone(),
        });
        let opts = NodeOptions {
            id,
            data_dir: self.data_dir(id),
            initial_members: self.members.clone(),
            join,
            tuning: self.tuning.clone(),
        };
        let (handle, thread) = Node::start(opts, transport, tx.clone(), rx).expect("node starts");
        let mut net = self.net.inner.lock();
        net.inboxes.insert(id, tx);
        net.handles.insert(id, handle.clone());
        drop(net);
        self.nodes.insert(id, Running { handle, thread });
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> Option<&NodeHandle> {
        self.nodes.get(&id).map(|r| &r.handle)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Stops a node's thread; its data directory stays for [`Cluster::restart`].
    pub fn crash(&mut self, id: u64) {
        let mut net = self.net.inner.lock();
        net.inboxes.remove(&id);
        net.handles.remove(&id);
        drop(net);
        if let Some(r) = self.nodes.remove(&id) {
            r.handle.stop();
            let _ = r.thread.join();
        }
    }

    pub fn restart(&mut self, id: u64) {
        assert!(!self.nodes.contains_key(&id), "node {id} is running");
        self.boot(id, false);
    }

    /// Starts a brand-new node that waits to be added (`join = true`).
    pub fn start_joining(&mut self, id: u64) -> Member {
        self.boot(id, true);
        member(id)
    }

    pub fn isolate(&self, id: u64) {
        self.net.inner.lock().faults.isolated.insert(id);
    }

    pub fn heal(&self) {
        let mut net = self.net.inner.lock();
        net.faults = Faults::default();
    }

    pub fn set_drop_percent(&self, p: u32) {
        self.net.inner.lock().faults.drop_percent = p;
    }

    pub fn set_max_delay_ms(&self, ms: u64) {
        self.net.inner.lock().faults.max_delay_ms = ms;
    }

    /// The leader as seen by a majority-agreeing running node, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .map(|r| r.handle.status())
            .find(|s| s.role == Role::Leader)
            .map(|s| s.id)
    }

    /// (term, leader id) for every running node that currently believes it leads.
    pub fn leaders_by_term(&self) -> Vec<(u64, u64)> {
        self.nodes
            .values()
            .map(|r| r.handle.status())
            .filter(|s| s.role == Role::Leader)
            .map(|s| (s.term, s.id))
            .collect()
    }

    /// Waits until `cond` holds, polling; panics with `what` after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// True when every running node has applied the same index and has the same checksum.
    pub fn converged(&self) -> bool {
        let views: Vec<(u64, String)> = self
            .nodes
            .values()
            .map(|r| {
                let st = r.handle.state();
                (st.applied_index(), st.checksum())
            })
            .collect();
        views.windows(2).all(|w| w[0] == w[1])
    }

    pub fn shutdown(mut self) {
        for id in self.ids() {
            self.crash(id);
        }
    }
}

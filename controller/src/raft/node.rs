//! The Raft node: one thread owns the raft-rs `RawNode`, the sled storage and the only write
//! access to the state machine.
//!
//! Protocol: everyone else talks to the node by sending a [`NodeMsg`] to its inbox —
//! `Propose` (a command; the reply is its [`Outcome`] once applied), `ChangeMembers`,
//! `ReadIndex` (reply once this replica has applied everything committed when the read began),
//! `TransferLeader`, `Step` (a message from a peer), `Unreachable`/`SnapshotStatus` (from the
//! transport), and `Stop`. The thread drains its inbox in batches, ticks on time, and then runs
//! one Ready cycle, so many concurrent proposals share one fsync.
//!
//! Readers take the state's read lock after a `ReadIndex` barrier (or without one for stale
//! reads); only this thread takes the write lock.
use std::collections::{BTreeMap, HashMap};
use std::error::Error as _;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::watch;

pub use super::handle::{MemberChange, NodeError, NodeHandle, NodeMsg, NodeStatus, Role};
use super::handle::{Reply, Shared};
use super::logger::raft_logger;
use super::storage::{SledStorage, StorageError};
use super::transport::{Inbox, Transport};
use crate::config::RaftTuning;
use crate::state::{Command, Envelope, Member, Outcome, State};

pub struct NodeOptions {
    pub id: u64,
    pub data_dir: PathBuf,
    pub initial_members: Vec<Member>,
    pub join: bool,
    pub tuning: RaftTuning,
}

struct PendingProposal {
    reply: Reply<Outcome>,
    deadline: Instant,
}

struct PendingRead {
    reply: Reply<()>,
    deadline: Instant,
}

pub struct Node {
    id: u64,
    raw: RawNode<SledStorage>,
    inbox: mpsc::Receiver<NodeMsg>,
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
    revision_tx: watch::Sender<u64>,
    tuning: RaftTuning,
    initial_members: Vec<Member>,
    join: bool,
    incarnation: u64,
    /// Our own inbox, for helper threads that report back (snapshot writer).
    self_inbox: Inbox,
    snapshot_writing: bool,
    next_seq: u64,
    proposals: HashMap<u64, PendingProposal>,
    reads: HashMap<u64, PendingRead>,
    /// Reads whose ReadIndex is known, waiting for `applied >= index`.
    reads_waiting_apply: Vec<(u64, Reply<()>)>,
    applied: u64,
    term: u64,
    role: StateRole,
    known_peers: BTreeMap<u64, String>,
}

/// Identifies a proposal in its entry's context: proposing node, that node's incarnation (random
/// per start, so entries proposed before a restart never match requests made after it), and a
/// sequence number.
fn tag(node: u64, incarnation: u64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&node.to_be_bytes());
    v.extend_from_slice(&incarnation.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

fn untag(ctx: &[u8]) -> Option<(u64, u64, u64)> {
    if ctx.len() != 24 {
        return None;
    }
    let word = |i: usize| {
        ctx[i * 8..(i + 1) * 8]
            .try_into()
            .ok()
            .map(u64::from_be_bytes)
    };
    Some((word(0)?, word(1)?, word(2)?))
}

/// ReadIndex context: incarnation and sequence number.
fn read_ctx(incarnation: u64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&incarnation.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

fn role_of(r: StateRole) -> Role {
    match r {
        StateRole::Follower => Role::Follower,
        StateRole::Candidate => Role::Candidate,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Leader => Role::Leader,
    }
}

/// The node thread stops the process on these: continuing could lose or fork acknowledged state.
fn fatal(what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!("fatal: {what}: {err}; stopping this controller to protect the data");
    eprintln!("flotilla-controller: fatal: {what}: {err}");
    std::process::exit(70)
}

impl Node {
    /// Opens storage, restores the state machine from the last snapshot and starts the node
    /// thread. `inbox` must be the receiving end of `inbox_tx`, which the transport may hold too.
    pub fn start(
        opts: NodeOptions,
        transport: Arc<dyn Transport>,
        inbox_tx: Inbox,
        inbox: mpsc::Receiver<NodeMsg>,
    ) -> Result<(NodeHandle, std::thread::JoinHandle<()>), StartError> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|source| StartError::DataDir {
            path: opts.data_dir.clone(),
            source,
        })?;
        let mut storage = SledStorage::open(&opts.data_dir.join("raft"))?;
        if storage.is_empty() && !opts.join {
            storage.bootstrap(opts.initial_members.iter().map(|m| m.id).collect())?;
        }
        let state = if storage.snapshot_data().is_empty() {
            State::new()
        } else {
            State::decode(storage.snapshot_data()).map_err(StartError::Snapshot)?
        };
        let applied = state.applied_index();
        let cfg = raft::Config {
            id: opts.id,
            election_tick: opts.tuning.election_ticks,
            heartbeat_tick: opts.tuning.heartbeat_ticks,
            applied,
            max_size_per_msg: opts.tuning.max_message_bytes,
            max_inflight_msgs: opts.tuning.max_inflight_messages,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate().map_err(StartError::Raft)?;
        let raw = RawNode::new(&cfg, storage, &raft_logger()).map_err(StartError::Raft)?;
        let (revision_tx, revision) = watch::channel(state.revision());
        let status = NodeStatus {
            id: opts.id,
            role: Role::Follower,
            term: raw.raft.term,
            leader_id: 0,
            commit_index: raw.raft.raft_log.committed,
            applied_index: applied,
            snapshot_index: raw.store().snapshot_metadata().index,
            first_log_index: raw.store().first(),
            last_log_index: raw.store().last(),
            voters: raw.store().conf_state().voters.clone(),
        };
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            status: Mutex::new(status),
        });
        let handle = NodeHandle {
            id: opts.id,
            inbox: inbox_tx,
            shared: shared.clone(),
            revision,
            timeout: Duration::from_millis(opts.tuning.proposal_timeout_ms),
        };
        let mut node = Node {
            id: opts.id,
            raw,
            inbox,
            transport,
            shared,
            revision_tx,
            tuning: opts.tuning,
            initial_members: opts.initial_members,
            join: opts.join,
            incarnation: rand::random(),
            self_inbox: handle.inbox.clone(),
            snapshot_writing: false,
            next_seq: 1,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            reads_waiting_apply: Vec::new(),
            applied,
            term: 0,
            role: StateRole::Follower,
            known_peers: BTreeMap::new(),
        };
        node.publish_peers();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", opts.id))
            .spawn(move || {
                // A panic here would leave a process that answers but never commits again.
                if let Err(panic) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run()))
                {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    fatal("the raft thread panicked", &what);
                }
            })
            .map_err(|source| StartError::Thread { source })?;
        Ok((handle, thread))
    }

    fn run(&mut self) {
        let tick = Duration::from_millis(self.tuning.tick_ms);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(NodeMsg::Stop) => return self.shutdown(),
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.shutdown(),
            }
            // Drain what else is queued so one Ready cycle (one fsync) covers all of it.
            for _ in 0..8192 {
                match self.inbox.try_recv() {
                    Ok(NodeMsg::Stop) => return self.shutdown(),
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + tick;
                self.expire(now);
            }
            self.on_ready();
        }
    }

    fn handle(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Propose { data, reply } => {
                let seq = self.next_seq();
                match self.raw.propose(tag(self.id, self.incarnation, seq), data) {
                    Ok(()) => {
                        let deadline = Instant::now() + self.proposal_timeout();
                        self.proposals
                            .insert(seq, PendingProposal { reply, deadline });
                    }
                    Err(_) => {
                        let _ = reply.send(Err(self.not_accepting()));
                    }
                }
            }
            NodeMsg::ChangeMembers { change, reply } => self.change_members(change, reply),
            NodeMsg::ReadIndex { reply } => {
                let seq = self.next_seq();
                self.raw.read_index(read_ctx(self.incarnation, seq));
                let deadline = Instant::now() + self.proposal_timeout();
                self.reads.insert(seq, PendingRead { reply, deadline });
            }
            NodeMsg::TransferLeader { target, reply } => {
                let _ = reply.send(self.transfer_leader(target));
            }
            NodeMsg::Step(m) => {
                // Messages from removed or unknown peers are refused by raft-rs itself.
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!("dropped a raft message: {e}");
                }
            }
            NodeMsg::Unreachable(peer) => self.raw.report_unreachable(peer),
            NodeMsg::SnapshotStatus { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            NodeMsg::SnapshotWritten { job, result } => {
                self.snapshot_writing = false;
                match result {
                    Ok(()) => {
                        let index = job.index();
                        let retention = self.tuning.log_retention;
                        if let Err(e) = self.raw.mut_store().finish_snapshot(*job, retention) {
                            fatal("recording a snapshot failed", &e);
                        }
                        tracing::debug!(index, "snapshot recorded, log compacted");
                    }
                    Err(e) => tracing::warn!("writing a snapshot failed, will retry: {e}"),
                }
            }
            NodeMsg::Stop => {}
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.tuning.proposal_timeout_ms)
    }

    fn not_accepting(&self) -> NodeError {
        match self.raw.raft.leader_id {
            0 => NodeError::NoLeader,
            leader => NodeError::NotLeader { leader },
        }
    }

    fn change_members(&mut self, change: MemberChange, reply: Reply<Outcome>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_accepting()));
            return;
        }
        let voters = self.raw.store().conf_state().voters.clone();
        let mut cc = ConfChange::default();
        match &change {
            MemberChange::Add(m) => {
                if voters.contains(&m.id) {
                    let _ = reply.send(Err(NodeError::MembershipRefused(format!(
                        "member {} is already part of the cluster",
                        m.id
                    ))));
                    return;
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = m.id;
                cc.context = bincode::serialize(m).expect("member serializes").into();
            }
            MemberChange::Remove(id) => {
                let refusal = if !voters.contains(id) {
                    Some(format!("member {id} is not part of the cluster"))
                } else if *id == self.id {
                    Some(format!(
                        "member {id} is the leader; transfer leadership first \
                         (flotilla cluster transfer-leader)"
                    ))
                } else if voters.len() <= 1 {
                    Some("cannot remove the last member".to_owned())
                } else {
                    None
                };
                if let Some(r) = refusal {
                    let _ = reply.send(Err(NodeError::MembershipRefused(r)));
                    return;
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
            }
        }
        if self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(NodeError::MembershipRefused(
                "another membership change is still in progress; retry when it finishes".into(),
            )));
            return;
        }
        let seq = self.next_seq();
        match self
            .raw
            .propose_conf_change(tag(self.id, self.incarnation, seq), cc)
        {
            Ok(()) => {
                let deadline = Instant::now() + self.proposal_timeout();
                self.proposals
                    .insert(seq, PendingProposal { reply, deadline });
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::MembershipRefused(e.to_string())));
            }
        }
    }

    fn transfer_leader(&mut self, target: u64) -> Result<u64, NodeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(self.not_accepting());
        }
        let target = if target == 0 {
            // The follower with the most of the log catches up fastest.
            self.raw
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != self.id)
                .max_by_key(|(_, pr)| pr.matched)
                .map(|(id, _)| *id)
                .ok_or_else(|| NodeError::MembershipRefused("there is no other member".into()))?
        } else {
            target
        };
        if target == self.id {
            return Ok(target);
        }
        if !self.raw.store().conf_state().voters.contains(&target) {
            return Err(NodeError::MembershipRefused(format!(
                "member {target} is not a voting member of the cluster"
            )));
        }
        self.raw.transfer_leader(target);
        Ok(target)
    }

    /// Fails requests that waited too long; clients retry with the same request id.
    fn expire(&mut self, now: Instant) {
        let timeout = self.proposal_timeout();
        for (_, p) in self.proposals.extract_if(|_, p| p.deadline <= now) {
            let _ = p.reply.send(Err(NodeError::Timeout(timeout)));
        }
        let no_leader = self.raw.raft.leader_id == 0;
        for (_, r) in self.reads.extract_if(|_, r| r.deadline <= now) {
            let err = if no_leader {
                NodeError::NoLeader
            } else {
                NodeError::Timeout(timeout)
            };
            let _ = r.reply.send(Err(err));
        }
    }

    /// One cycle of raft-rs' Ready protocol.
    fn on_ready(&mut self) {
        if !self.raw.has_ready() {
            return;
        }
        let mut ready = self.raw.ready();

        // 1. Messages that need nothing persisted first (a leader's appends and heartbeats)
        //    go out right away, in parallel with our own fsync.
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }

        // 2. A snapshot from the leader replaces the state machine.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(snap);
        }

        // 3. Apply newly committed entries; they are already durable on a quorum, including us.
        let committed = ready.take_committed_entries();
        self.apply_entries(committed);

        // 4. Persist new log entries and the hard state, then fsync once for the whole batch.
        let mut wrote = false;
        if !ready.entries().is_empty() {
            if let Err(e) = self.raw.mut_store().append(ready.entries()) {
                fatal("appending to the raft log failed", &e);
            }
            wrote = true;
        }
        if let Some(hs) = ready.hs() {
            if let Err(e) = self.raw.mut_store().set_hard_state(hs.clone()) {
                fatal("saving the raft hard state failed", &e);
            }
            wrote = true;
        }
        if wrote || ready.must_sync() {
            if let Err(e) = self.raw.store().persist() {
                fatal("flushing the raft log failed", &e);
            }
        }

        // 5. ReadIndex answers: each read may go ahead once its index is applied.
        for rs in ready.take_read_states() {
            if rs.request_ctx.len() != 16 || rs.request_ctx[..8] != self.incarnation.to_be_bytes() {
                continue;
            }
            let seq = u64::from_be_bytes(rs.request_ctx[8..].try_into().expect("8 bytes"));
            if let Some(r) = self.reads.remove(&seq) {
                self.reads_waiting_apply.push((rs.index, r.reply));
            }
        }

        // 6. Messages that promise persisted state (votes, append acks) only after the fsync.
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }

        // 7. Advance, then handle what the light ready carries.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            if let Err(e) = self.raw.mut_store().set_commit(commit) {
                fatal("saving the commit index failed", &e);
            }
        }
        self.transport.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed);
        self.raw.advance_apply();

        self.after_cycle();
    }

    fn install_snapshot(&mut self, snap: Snapshot) {
        let index = snap.get_metadata().index;
        let state = match State::decode(snap.get_data()) {
            Ok(s) => s,
            Err(e) => fatal("the leader's snapshot cannot be decoded", &e),
        };
        if let Err(e) = self.raw.mut_store().apply_snapshot(snap) {
            fatal("installing a snapshot failed", &e);
        }
        let revision = state.revision();
        *self.shared.state.write() = state;
        self.applied = index;
        let _ = self.revision_tx.send(revision);
        self.publish_peers();
        tracing::info!(index, "installed a snapshot from the leader");
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut replies: Vec<(u64, Outcome)> = Vec::new();
        let mut members_changed = false;
        {
            let shared = self.shared.clone();
            let mut state = shared.state.write();
            for e in entries {
                if e.index <= self.applied {
                    continue;
                }
                self.applied = e.index;
                let outcome = match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {
                        state.apply_noop(e.index);
                        None
                    }
                    EntryType::EntryNormal => {
                        let env = match Envelope::decode(&e.data) {
                            Ok(env) => env,
                            Err(err) => fatal(&format!("log entry {} is unusable", e.index), &err),
                        };
                        members_changed |= matches!(env.command, Command::Bootstrap { .. });
                        Some(state.apply(e.index, &env))
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        members_changed = true;
                        Some(self.apply_conf_change(&mut state, &e))
                    }
                };
                if let (Some(outcome), Some((node, incarnation, seq))) =
                    (outcome, untag(&e.context))
                {
                    if node == self.id && incarnation == self.incarnation {
                        replies.push((seq, outcome));
                    }
                }
            }
        }
        for (seq, outcome) in replies {
            if let Some(p) = self.proposals.remove(&seq) {
                let _ = p.reply.send(Ok(outcome));
            }
        }
        let revision = self.shared.state.read().revision();
        self.revision_tx
            .send_if_modified(|r| std::mem::replace(r, revision) != revision);
        if members_changed {
            self.publish_peers();
        }
    }

    fn apply_conf_change(&mut self, state: &mut State, e: &Entry) -> Outcome {
        let (applied, changes, member) = if e.get_entry_type() == EntryType::EntryConfChange {
            let cc = match ConfChange::parse_from_bytes(&e.data) {
                Ok(cc) => cc,
                Err(err) => fatal("a membership entry cannot be decoded", &err),
            };
            let member = bincode::deserialize::<Member>(&cc.context).ok();
            let changes = vec![(cc.get_change_type(), cc.node_id)];
            (self.raw.apply_conf_change(&cc), changes, member)
        } else {
            let cc = match ConfChangeV2::parse_from_bytes(&e.data) {
                Ok(cc) => cc,
                Err(err) => fatal("a membership entry cannot be decoded", &err),
            };
            let changes = cc
                .get_changes()
                .iter()
                .map(|c| (c.get_change_type(), c.node_id))
                .collect();
            (self.raw.apply_conf_change(&cc), changes, None)
        };
        let cs = match applied {
            Ok(cs) => cs,
            Err(err) => fatal("applying a membership change failed", &err),
        };
        self.shared.status.lock().voters = cs.voters.clone();
        if let Err(err) = self.raw.mut_store().set_conf_state(cs) {
            fatal("saving the membership failed", &err);
        }
        for (change, node_id) in changes {
            match change {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let m = member.clone().filter(|m| m.id == node_id);
                    tracing::info!(member = node_id, "member added");
                    state.apply_member_change(e.index, m, None);
                }
                ConfChangeType::RemoveNode => {
                    tracing::info!(member = node_id, "member removed");
                    state.apply_member_change(e.index, None, Some(node_id));
                }
            }
        }
        Outcome::Members(state.members().cloned().collect())
    }

    /// Bookkeeping after each Ready cycle: leadership changes, finished reads, snapshots, and
    /// the status other threads see.
    fn after_cycle(&mut self) {
        let raft = &self.raw.raft;
        if raft.term != self.term || raft.state != self.role {
            let became_leader = raft.state == StateRole::Leader && self.role != StateRole::Leader;
            let term_changed = raft.term != self.term;
            self.term = raft.term;
            self.role = raft.state;
            if term_changed {
                // Proposals forwarded to an old leader may be lost; let clients retry them.
                for (_, p) in self.proposals.drain() {
                    let _ = p.reply.send(Err(NodeError::LeaderChanged));
                }
            }
            if became_leader {
                tracing::info!(term = self.term, "this controller is now the leader");
                self.bootstrap_members_if_needed();
            }
        }
        let applied = self.applied;
        let (ready_reads, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_waiting_apply)
                .into_iter()
                .partition(|(i, _)| *i <= applied);
        self.reads_waiting_apply = waiting;
        for (_, reply) in ready_reads {
            let _ = reply.send(Ok(()));
        }
        let since_snapshot = applied.saturating_sub(self.raw.store().snapshot_metadata().index);
        if !self.snapshot_writing
            && (since_snapshot >= self.tuning.snapshot_interval
                || (self.raw.store().snapshot_wanted() && since_snapshot > 0))
        {
            self.take_snapshot();
        }
        if let Err(e) = self.raw.mut_store().sweep_compacted(2048) {
            tracing::warn!("removing compacted log entries failed (will retry): {e}");
        }
        let store = self.raw.store();
        *self.shared.status.lock() = NodeStatus {
            id: self.id,
            role: role_of(self.raw.raft.state),
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied,
            snapshot_index: store.snapshot_metadata().index,
            first_log_index: store.first(),
            last_log_index: store.last(),
            voters: store.conf_state().voters.clone(),
        };
    }

    /// The first leader of a new cluster records the initial members in replicated state.
    fn bootstrap_members_if_needed(&mut self) {
        if self.join || self.shared.state.read().members().next().is_some() {
            return;
        }
        let env = Envelope {
            request_id: String::new(),
            actor: "controller".into(),
            time_ms: crate::server::now_ms(),
            command: Command::Bootstrap {
                members: self.initial_members.clone(),
            },
        };
        if let Err(e) = self.raw.propose(Vec::new(), env.encode()) {
            tracing::warn!("could not propose the initial membership: {e}");
        }
    }

    /// Encodes the state here (it must be consistent with `applied`), then writes the file on a
    /// helper thread so the log keeps moving; `SnapshotWritten` finishes the job.
    fn take_snapshot(&mut self) {
        let started = Instant::now();
        let data = self.shared.state.read().encode();
        let size = data.len();
        let job = match self.raw.store().prepare_snapshot(self.applied, data) {
            Ok(job) => Box::new(job),
            Err(StorageError::SnapshotOutOfDate { .. }) => return,
            Err(e) => fatal("preparing a snapshot failed", &e),
        };
        let encode_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(
            index = job.index(),
            bytes = size,
            encode_ms,
            "snapshot encoded"
        );
        self.snapshot_writing = true;
        let inbox = self.self_inbox.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let result = job.write().map_err(|e| match e.source() {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                });
                let _ = inbox.send(NodeMsg::SnapshotWritten { job, result });
            });
        if let Err(e) = spawned {
            self.snapshot_writing = false;
            tracing::warn!("cannot start the snapshot writer: {e}");
        }
    }

    /// Tells the transport where peers are: replicated membership, else the configured list.
    fn publish_peers(&mut self) {
        let state = self.shared.state.read();
        let mut peers: BTreeMap<u64, String> = self
            .initial_members
            .iter()
            .map(|m| (m.id, m.peer_address.clone()))
            .collect();
        for m in state.members() {
            peers.insert(m.id, m.peer_address.clone());
        }
        drop(state);
        peers.remove(&self.id);
        if peers != self.known_peers {
            self.known_peers = peers.clone();
            self.transport.set_peers(peers);
        }
    }

    fn shutdown(&mut self) {
        if let Err(e) = self.raw.store().persist() {
            tracing::error!("final flush failed: {e}");
        }
        for (_, p) in self.proposals.drain() {
            let _ = p.reply.send(Err(NodeError::Stopped));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(NodeError::Stopped));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open raft storage")]
    Storage(#[from] StorageError),
    #[error("the stored snapshot cannot be decoded")]
    Snapshot(#[source] crate::state::DecodeError),
    #[error("raft refused to start")]
    Raft(#[source] raft::Error),
    #[error("cannot start the raft thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

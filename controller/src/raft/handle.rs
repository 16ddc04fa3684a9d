//! The node's public face: the messages it takes, the errors it answers with, its status, and
//! [`NodeHandle`], the cheap cloneable handle API handlers and the transport use.
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use raft::prelude::Message;
use tokio::sync::{oneshot, watch};

use super::transport::Inbox;
use crate::state::{Envelope, Member, Outcome, State};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("no controller leader is known right now; retry shortly")]
    NoLeader,
    #[error("this controller is not the leader; the leader is member {leader}")]
    NotLeader { leader: u64 },
    #[error("the leader changed before the request was applied; retry with the same request id")]
    LeaderChanged,
    #[error(
        "the request was not applied within {0:?}; it may still be applied, so retry with the \
         same request id"
    )]
    Timeout(Duration),
    #[error("this controller is shutting down")]
    Stopped,
    #[error("{0}")]
    MembershipRefused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

/// What the node looks like right now; refreshed after every cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub first_log_index: u64,
    pub last_log_index: u64,
    pub voters: Vec<u64>,
}

#[derive(Debug, Clone)]
pub enum MemberChange {
    Add(Member),
    Remove(u64),
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

pub enum NodeMsg {
    Propose {
        data: Vec<u8>,
        reply: Reply<Outcome>,
    },
    ChangeMembers {
        change: MemberChange,
        reply: Reply<Outcome>,
    },
    ReadIndex {
        reply: Reply<()>,
    },
    TransferLeader {
        target: u64,
        reply: Reply<u64>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
    /// A local snapshot file finished writing (on its helper thread).
    SnapshotWritten {
        job: Box<super::storage::SnapshotJob>,
        result: Result<(), String>,
    },
    Stop,
}

pub(super) struct Shared {
    pub(super) state: RwLock<State>,
    pub(super) status: Mutex<NodeStatus>,
}

/// A cheap, cloneable handle for API handlers and the transport.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) id: u64,
    pub(super) inbox: Inbox,
    pub(super) shared: Arc<Shared>,
    pub(super) revision: watch::Receiver<u64>,
    pub(super) timeout: Duration,
}

impl NodeHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes a command and waits until it is applied, returning its outcome.
    pub async fn propose(&self, env: &Envelope) -> Result<Outcome, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::Propose {
            data: env.encode(),
            reply,
        })?;
        self.wait(rx).await
    }

    pub async fn change_members(&self, change: MemberChange) -> Result<Outcome, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::ChangeMembers { change, reply })?;
        self.wait(rx).await
    }

    /// Waits until this replica has applied everything committed when the call began
    /// (ReadIndex), so a read that follows is linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::ReadIndex { reply })?;
        self.wait(rx).await
    }

    /// Asks the leader to hand leadership to `target` (0: the most up-to-date follower) and
    /// waits until a leader other than the old one is known.
    pub async fn transfer_leader(&self, target: u64) -> Result<u64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::TransferLeader { target, reply })?;
        let target = self.wait(rx).await?;
        let deadline = Instant::now() + self.timeout;
        let mut revision = self.revision.clone();
        loop {
            let s = self.status();
            if s.leader_id == target {
                return Ok(target);
            }
            if Instant::now() > deadline {
                return Err(NodeError::Timeout(self.timeout));
            }
            // Leadership changes produce an applied entry (the new leader's empty entry), but
            // poll on a short timer as well in case that entry is not applied here yet.
            let _ = tokio::time::timeout(Duration::from_millis(20), revision.changed()).await;
        }
    }

    /// Delivers a message from a peer.
    pub fn step(&self, msg: Message) {
        let _ = self.inbox.send(NodeMsg::Step(Box::new(msg)));
    }

    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.inbox.send(NodeMsg::Unreachable(peer));
    }

    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.inbox.send(NodeMsg::SnapshotStatus { to, ok });
    }

    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read()
    }

    pub fn status(&self) -> NodeStatus {
        self.shared.status.lock().clone()
    }

    /// A receiver that changes whenever the applied revision does (for event watchers).
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }

    pub fn stop(&self) {
        let _ = self.inbox.send(NodeMsg::Stop);
    }

    fn send(&self, msg: NodeMsg) -> Result<(), NodeError> {
        self.inbox.send(msg).map_err(|_| NodeError::Stopped)
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, NodeError>>) -> Result<T, NodeError> {
        // The node answers every request itself (including its own timeouts); this outer bound
        // only guards against a stuck node thread.
        match tokio::time::timeout(self.timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout(self.timeout * 2)),
        }
    }
}

//! How the node reaches its peers. The node hands messages to a [`Transport`] without waiting;
//! the transport reports failures back through the node's [`Inbox`].
use std::collections::BTreeMap;
use std::sync::mpsc;

use raft::prelude::Message;

use super::node::NodeMsg;

/// The sending side of a node's message queue.
pub type Inbox = mpsc::Sender<NodeMsg>;

pub trait Transport: Send + Sync + 'static {
    /// Queues messages for their recipients (`msg.to`). Must not block.
    fn send(&self, msgs: Vec<Message>);
    /// The current peer id → peer address map (from replicated membership).
    fn set_peers(&self, peers: BTreeMap<u64, String>);
}

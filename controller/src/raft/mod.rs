//! Raft: the node that owns the raft-rs `RawNode` (one thread), its sled storage, and the peer
//! transport (gRPC in production, in-memory with fault hooks in the test harness).
pub mod grpc;
mod handle;
mod logger;
pub mod node;
pub mod storage;
pub mod transport;

pub use node::{MemberChange, Node, NodeError, NodeHandle, NodeMsg, NodeStatus, Role};
pub use storage::{SledStorage, StorageError};
pub use transport::{Inbox, Transport};

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
pub mod harness;

//! The one place where controller errors become gRPC statuses.
use tonic::metadata::MetadataValue;
use tonic::Status;

use super::authz::Denied;
use super::token::TokenError;
use crate::raft::{NodeError, NodeHandle};
use crate::state::Rejection;

pub fn rejection(r: Rejection) -> Status {
    let msg = r.to_string();
    match r {
        Rejection::NotFound { .. } => Status::not_found(msg),
        Rejection::AlreadyExists { .. } | Rejection::Duplicate(_) => Status::already_exists(msg),
        Rejection::Invalid(_) | Rejection::RequestIdReused { .. } => Status::invalid_argument(msg),
        Rejection::FailedPrecondition(_) => Status::failed_precondition(msg),
        Rejection::QuotaExceeded(_) => Status::resource_exhausted(msg),
    }
}

pub fn denied(d: Denied) -> Status {
    Status::permission_denied(d.to_string())
}

pub fn token(e: TokenError) -> Status {
    Status::unauthenticated(e.to_string())
}

/// A user name that failed to log in too often on this controller.
pub fn throttled(user: &str, retry_after: std::time::Duration) -> Status {
    Status::resource_exhausted(format!(
        "too many failed logins for user {user:?}; retry in {} s",
        retry_after.as_secs().max(1)
    ))
}

/// Node errors are all "try again" except refused membership changes. UNAVAILABLE answers carry
/// the leader's client address when this controller knows it, so clients can go straight there.
pub fn node(e: NodeError, node: &NodeHandle) -> Status {
    let msg = e.to_string();
    match e {
        NodeError::MembershipRefused(_) => Status::failed_precondition(msg),
        NodeError::Timeout(_) => with_leader(Status::unavailable(msg), node),
        NodeError::Stopped => Status::unavailable(msg),
        NodeError::NoLeader | NodeError::NotLeader { .. } | NodeError::LeaderChanged => {
            with_leader(Status::unavailable(msg), node)
        }
    }
}

fn with_leader(mut status: Status, node: &NodeHandle) -> Status {
    let leader = node.status().leader_id;
    if leader == 0 || leader == node.id() {
        return status;
    }
    let address = node
        .state()
        .member(leader)
        .map(|m| m.client_address.clone());
    if let Some(addr) = address.and_then(|a| MetadataValue::try_from(a).ok()) {
        status
            .metadata_mut()
            .insert(flotilla_proto::LEADER_METADATA_KEY, addr);
    }
    status
}

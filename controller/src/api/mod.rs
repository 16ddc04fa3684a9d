//! The public gRPC API: tonic services over the node. Requests are authenticated in one place
//! ([`auth`]), errors are mapped to `Status` in one place ([`error`]), and proto↔domain
//! conversion lives in [`convert`].
pub mod agent_hub;
pub(crate) mod agents;
pub mod auth;
pub mod authz;
mod cluster;
pub mod compute_convert;
#[cfg(test)]
mod compute_sim_tests;
pub mod convert;
mod desired;
#[cfg(test)]
mod desired_tests;
pub mod error;
mod events;
mod flavor;
mod hosts;
mod identity;
mod image;
pub mod image_maintenance;
pub(crate) mod image_transfer;
mod move_duties;
mod network;
mod network_access;
mod network_convert;
mod operations;
pub mod password;
mod quota;
#[cfg(test)]
mod rbac_tests;
mod server_groups;
mod server_moves;
mod server_network;
#[cfg(test)]
mod server_network_tests;
mod servers;
#[cfg(test)]
mod test_fixtures;
pub mod token;
mod tokens;
pub mod unimplemented;
mod users;

use std::sync::Arc;

use parking_lot::RwLockReadGuard;
use tonic::Status;

pub use agents::{desired_state, AgentApi};
pub use cluster::{member_status, ClusterApi, PeerDirectory};
pub use events::EventApi;
pub use flavor::FlavorApi;
pub use hosts::HostApi;
pub use identity::IdentityApi;
pub use image::ImageApi;
pub use network::NetworkApi;
pub use operations::OperationApi;
pub use quota::QuotaApi;
pub use server_groups::ServerGroupApi;
pub use servers::ServerApi;
pub use tokens::bootstrap_admin_when_leader;

use crate::raft::NodeHandle;
use crate::state::{Command, Envelope, Outcome, Project, State};
use authz::{Action, Principal};

/// Everything a service needs: the node, how to reach peers for cluster status, and this
/// controller's failed-login throttle.
#[derive(Clone)]
pub struct Api {
    pub node: NodeHandle,
    pub peers: Arc<dyn cluster::PeerDirectory>,
    pub logins: Arc<password::LoginThrottle>,
}

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

impl Api {
    pub fn new(node: NodeHandle, peers: Arc<dyn cluster::PeerDirectory>) -> Api {
        Api {
            node,
            peers,
            logins: Arc::default(),
        }
    }

    /// Stamps time and actor into a command, proposes it and waits for its outcome. A business
    /// rejection comes back as an error status.
    pub async fn propose(
        &self,
        request_id: String,
        actor: String,
        command: Command,
    ) -> Result<Outcome, Status> {
        let env = Envelope {
            request_id,
            actor,
            time_ms: crate::server::now_ms(),
            command,
        };
        let outcome = self
            .node
            .propose(&env)
            .await
            .map_err(|e| error::node(e, &self.node))?;
        match outcome {
            Outcome::Rejected(r) => Err(error::rejection(r)),
            other => Ok(other),
        }
    }

    /// Read access to the state: linearizable (after a ReadIndex barrier) unless `stale`.
    pub async fn read(&self, stale: bool) -> Result<RwLockReadGuard<'_, State>, Status> {
        if !stale {
            self.node
                .read_barrier()
                .await
                .map_err(|e| error::node(e, &self.node))?;
        }
        Ok(self.node.state())
    }
}

/// Runs [`authz::authorize`] and maps a refusal to PERMISSION_DENIED.
pub fn allow(p: &Principal, action: Action<'_>, target: Option<&Project>) -> Result<(), Status> {
    authz::authorize(p, action, target).map_err(error::denied)
}

/// Page size from a request, defaulted and capped.
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Takes one page from an ordered iterator of items keyed by id; the token is the last id.
pub fn paginate<T, F: Fn(&T) -> String>(
    items: impl Iterator<Item = T>,
    size: usize,
    id: F,
) -> (Vec<T>, String) {
    let mut page: Vec<T> = items.take(size + 1).collect();
    let next = if page.len() > size {
        page.truncate(size);
        page.last().map(&id).unwrap_or_default()
    } else {
        String::new()
    };
    (page, next)
}

/// A fresh resource id, stamped by the proposing controller (never by `apply`).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Rejects obviously bad references before proposing.
pub fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

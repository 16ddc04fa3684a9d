//! What `apply` returns. A business rejection is a value (I2), never a panic or transport error.
use serde::{Deserialize, Serialize};

use super::hosts::Host;
use super::images::Image;
use super::model::{Flavor, Member, Project, RoleAssignment, User};
use super::quota::{Amounts, ProjectQuota};
use super::server_groups::ServerGroup;
use super::servers::Server;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Project(Project),
    Flavor(Flavor),
    Deleted,
    Members(Vec<Member>),
    /// The command changed nothing (e.g. a repeated bootstrap).
    Unchanged,
    Rejected(Rejection),
    User(User),
    RoleAssignment(RoleAssignment),
    Quota(ProjectQuota),
    DefaultQuota(Amounts),
    Image(Image),
    Host(Box<Host>),
    Server(Box<Server>),
    Servers(Vec<Server>),
    /// How many servers an agent's report changed.
    Observed {
        changed: usize,
    },
    ServerGroup(ServerGroup),
    Operation(Box<super::Operation>),
    /// A network, subnet, port, floating IP, security group or rule.
    Net(Box<super::NetOutcome>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{kind} {key:?} not found")]
    NotFound { kind: String, key: String },
    #[error("a {kind} named {name:?} already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(
        "request id {request_id:?} was already used for a different operation ({previous}); \
         use a fresh request id"
    )]
    RequestIdReused {
        request_id: String,
        previous: String,
    },
    #[error("{0}")]
    QuotaExceeded(String),
    /// Already there, said in words (not a named resource).
    #[error("{0}")]
    Duplicate(String),
}

impl Rejection {
    pub fn not_found(kind: &str, key: &str) -> Rejection {
        Rejection::NotFound {
            kind: kind.to_owned(),
            key: key.to_owned(),
        }
    }

    pub fn exists(kind: &str, name: &str) -> Rejection {
        Rejection::AlreadyExists {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }
}

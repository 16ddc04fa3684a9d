//! Authentication of API requests: turns the bearer token into a [`Principal`].
//!
//! * the bootstrap admin token from the controller's config (compared in constant time) is the
//!   cluster admin;
//! * a `flt1.` token is verified against the signing keys in replicated state (signature,
//!   expiry), then checked against the revocation list and the user's record, which must exist
//!   and be enabled; the user's roles are read from state here, on every request.
//!
//! These checks read this controller's applied state (no ReadIndex): a revocation or a disabled
//! user is seen by a follower as soon as it has applied the change.
//!
//! A request without credentials passes the interceptor with no principal, so `Login` works;
//! every other handler asks for the principal and answers UNAUTHENTICATED without one.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tonic::{Request, Status};

pub use super::authz::{Principal, TokenInfo};
use super::{error, token};
use crate::raft::NodeHandle;
use crate::state::{Role, State};

#[derive(Clone)]
pub struct Authenticator {
    admin_token: Arc<str>,
    node: NodeHandle,
}

impl Authenticator {
    pub fn new(admin_token: &str, node: NodeHandle) -> Self {
        Authenticator {
            admin_token: admin_token.into(),
            node,
        }
    }

    /// A tonic interceptor: checks `authorization: Bearer <token>` when present and attaches
    /// the principal.
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(header) = req.metadata().get("authorization") else {
            return Ok(req);
        };
        let header = header
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not valid text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?
            .trim();
        let principal = self.resolve(token)?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }

    fn resolve(&self, token: &str) -> Result<Principal, Status> {
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return Ok(Principal::bootstrap_admin());
        }
        if !token.starts_with(token::PREFIX) {
            return Err(Status::unauthenticated("the token is not valid"));
        }
        let state = self.node.state();
        user_principal(&state, token, crate::server::now_ms())
    }
}

/// Resolves a user token against `state` at `now_ms`.
pub fn user_principal(state: &State, token: &str, now_ms: i64) -> Result<Principal, Status> {
    let claims = token::verify(token, state.signing_keys(), now_ms).map_err(error::token)?;
    if state.is_revoked(&claims.tid) {
        return Err(Status::unauthenticated(
            "the token was revoked; log in again",
        ));
    }
    let user = state
        .user(&claims.uid)
        .ok_or_else(|| Status::unauthenticated("the token's user no longer exists"))?;
    if !user.enabled {
        return Err(Status::unauthenticated(format!(
            "user {:?} is disabled; ask an admin to enable it",
            user.name
        )));
    }
    let mut projects: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
    let mut admin = false;
    for a in state.role_assignments().filter(|a| a.user_id == user.id) {
        if a.role == Role::Admin {
            admin = true;
        } else {
            projects
                .entry(a.project_id.clone())
                .or_default()
                .insert(a.role);
        }
    }
    Ok(Principal {
        name: user.name.clone(),
        user_id: user.id.clone(),
        admin,
        projects,
        token: Some(TokenInfo {
            token_id: claims.tid,
            project_id: claims.pid,
            expires_at_ms: claims.exp,
        }),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The principal attached by [`Authenticator::intercept`].
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| {
        Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` (CLI: `flotilla login`, \
             --token or FLOTILLA_TOKEN)",
        )
    })
}

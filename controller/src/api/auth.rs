//! Authentication of API requests: turns the bearer token into a [`Principal`].
//!
//! The only credential is a user token (`flt1.`, issued by `Login`): it is verified against the
//! signing keys in replicated state (signature, expiry), then checked against the revocation
//! list and the user's record, which must exist and be enabled; the user's roles are read from
//! state here, on every request. There is no configured admin token: the cluster admin is the
//! `admin` user the leader creates on a new cluster (see [`super::bootstrap_admin_when_leader`]).
//!
//! These checks read this controller's applied state (no ReadIndex): a revocation or a disabled
//! user is seen by a follower as soon as it has applied the change. The other way round, a
//! controller that has not applied everything yet — just restarted and replaying its log, or
//! joining and not yet sent a snapshot — may not know a valid token's signing key or user: it
//! answers UNAVAILABLE then (retry, or ask another controller), not UNAUTHENTICATED.
//!
//! A request without credentials passes the interceptor with no principal, so `Login` works;
//! every other handler asks for the principal and answers UNAUTHENTICATED without one.
use std::collections::{BTreeMap, BTreeSet};

use tonic::{Request, Status};

pub use super::authz::{Principal, TokenInfo};
use super::token::TokenError;
use super::{error, token};
use crate::raft::NodeHandle;
use crate::state::{Role, State};

#[derive(Clone)]
pub struct Authenticator {
    node: NodeHandle,
}

impl Authenticator {
    pub fn new(node: NodeHandle) -> Self {
        Authenticator { node }
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
        if !token.starts_with(token::PREFIX) {
            // Most likely the configured bootstrap admin token of older releases.
            return Err(Status::unauthenticated(format!(
                "the token is not a Flotilla user token ({}…); log in with `flotilla login`",
                token::PREFIX
            )));
        }
        let state = self.node.state();
        check(&state, token, crate::server::now_ms()).map_err(|refusal| {
            let catching_up = state.signing_keys().is_empty()
                || self.node.status().commit_index > state.applied_index();
            if refusal.may_be_lag() && catching_up {
                Status::unavailable(
                    "this controller is still catching up with the cluster (it just started or \
                     is joining) and cannot check the token yet; retry, or ask another controller",
                )
            } else {
                refusal.into()
            }
        })
    }
}

/// Why a user token does not authenticate.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token was revoked; log in again")]
    Revoked,
    #[error("the token's user no longer exists")]
    UnknownUser,
    #[error("user {0:?} is disabled; ask an admin to enable it")]
    Disabled(String),
}

impl Refusal {
    /// Whether a controller that has not applied the latest changes could refuse a valid token
    /// this way (a new signing key or a new user it has not seen yet).
    fn may_be_lag(&self) -> bool {
        matches!(
            self,
            Refusal::Token(TokenError::UnknownKey) | Refusal::UnknownUser
        )
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::Token(e) => error::token(e),
            other => Status::unauthenticated(other.to_string()),
        }
    }
}

/// Resolves a user token against `state` at `now_ms`.
pub fn user_principal(state: &State, token: &str, now_ms: i64) -> Result<Principal, Status> {
    check(state, token, now_ms).map_err(Status::from)
}

fn check(state: &State, token: &str, now_ms: i64) -> Result<Principal, Refusal> {
    let claims = token::verify(token, state.signing_keys(), now_ms)?;
    if state.is_revoked(&claims.tid) {
        return Err(Refusal::Revoked);
    }
    let user = state.user(&claims.uid).ok_or(Refusal::UnknownUser)?;
    if !user.enabled {
        return Err(Refusal::Disabled(user.name.clone()));
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

/// The principal attached by [`Authenticator::intercept`].
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| {
        Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` (CLI: `flotilla login`, \
             --token or FLOTILLA_TOKEN)",
        )
    })
}

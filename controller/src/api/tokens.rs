//! Login, tokens and signing keys (IdentityService), and the bootstrap of the `admin` user.
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use rand::RngCore as _;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::{allow, auth::principal, error, new_id, password, token, Api};
use crate::raft::Role as RaftRole;
use crate::state::{Command, Envelope, Outcome, Role, State};

/// Fresh secret bytes for a signing key, from the proposing controller.
fn key_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    secret
}

/// Role names a principal holds in `project_id`, plus `admin` when cluster admin.
fn role_names(p: &Principal, project_id: &str) -> Vec<String> {
    let mut roles: Vec<String> = p
        .projects
        .get(project_id)
        .into_iter()
        .flatten()
        .map(|r| r.as_str().to_owned())
        .collect();
    if p.admin {
        roles.insert(0, Role::Admin.as_str().to_owned());
    }
    roles
}

struct LoginTarget {
    user_id: String,
    project_id: String,
}

/// Picks the token's project: the one asked for (the user must hold a role there, or be
/// admin), else the user's default project when they may use it, else none.
fn login_target(state: &State, user_id: &str, project: &str) -> Result<LoginTarget, Status> {
    let user = state
        .user(user_id)
        .ok_or_else(|| Status::unauthenticated("invalid user name or password"))?;
    if !user.enabled {
        return Err(Status::permission_denied(format!(
            "user {:?} is disabled; ask an admin to enable it",
            user.name
        )));
    }
    let admin = state.is_admin(&user.id);
    let holds = |pid: &str| {
        admin
            || state
                .role_assignments()
                .any(|a| a.user_id == user.id && a.project_id == pid)
    };
    let project_id = if project.is_empty() {
        let d = &user.default_project_id;
        let usable = !d.is_empty() && holds(d) && state.project(d).is_some_and(|p| p.enabled);
        if usable {
            d.clone()
        } else {
            String::new()
        }
    } else {
        let p = state
            .project(project)
            .ok_or_else(|| Status::not_found(format!("project {project:?} not found")))?;
        if !holds(&p.id) {
            return Err(Status::permission_denied(format!(
                "user {:?} holds no role in project {:?}; ask an admin for a role assignment",
                user.name, p.name
            )));
        }
        if !p.enabled {
            return Err(Status::permission_denied(format!(
                "project {:?} is disabled",
                p.name
            )));
        }
        p.id.clone()
    };
    Ok(LoginTarget {
        user_id: user.id.clone(),
        project_id,
    })
}

pub async fn login(
    api: &Api,
    req: Request<pb::LoginRequest>,
) -> Result<Response<pb::Token>, Status> {
    let r = req.into_inner();
    if r.user.is_empty() || r.password.is_empty() {
        return Err(Status::invalid_argument("user and password are required"));
    }
    api.logins
        .check(&r.user, Instant::now())
        .map_err(|wait| error::throttled(&r.user, wait))?;
    let hash = api
        .read(false)
        .await?
        .user(&r.user)
        .map(|u| u.password_hash.clone());
    if !password::verify_blocking(r.password, hash).await {
        api.logins.failed(&r.user, Instant::now());
        return Err(Status::unauthenticated("invalid user name or password"));
    }
    api.logins.succeeded(&r.user);
    let target = {
        let state = api.read(false).await?;
        login_target(&state, &r.user, &r.project)?
    };
    if api.node.state().active_signing_key().is_none() {
        let cmd = Command::AddSigningKey {
            key_id: new_id(),
            secret: key_secret(),
            only_if_none: true,
        };
        api.propose(String::new(), "controller".into(), cmd).await?;
    }
    let now = crate::server::now_ms();
    let (token, principal) = {
        let state = api.node.state();
        let key = state
            .active_signing_key()
            .ok_or_else(|| Status::unavailable("no signing key yet; retry"))?;
        let claims = token::Claims {
            tid: new_id(),
            uid: target.user_id.clone(),
            pid: target.project_id.clone(),
            iat: now,
            exp: now + token::DEFAULT_LIFETIME_MS,
            kid: key.id.clone(),
        };
        let text = token::sign(&claims, key);
        let principal = super::auth::user_principal(&state, &text, now)?;
        (text, principal)
    };
    let info = principal.token.clone().expect("a user token");
    Ok(Response::new(pb::Token {
        token,
        token_id: info.token_id,
        user_id: principal.user_id.clone(),
        project_id: info.project_id.clone(),
        expires_at_ms: info.expires_at_ms,
        roles: role_names(&principal, &info.project_id),
    }))
}

pub async fn revoke_token(
    api: &Api,
    req: Request<pb::RevokeTokenRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::RevokeToken, None)?;
    let r = req.into_inner();
    super::required("token_id", &r.token_id)?;
    // No token outlives the longest lifetime, so the entry can go after it.
    let expires_at_ms = match &p.token {
        Some(t) if t.token_id == r.token_id => t.expires_at_ms,
        _ => crate::server::now_ms() + token::DEFAULT_LIFETIME_MS,
    };
    let cmd = Command::RevokeToken {
        token_id: r.token_id,
        expires_at_ms,
    };
    api.propose(r.request_id, p.name, cmd).await?;
    Ok(Response::new(pb::Empty {}))
}

pub async fn who_am_i(
    _api: &Api,
    req: Request<pb::WhoAmIRequest>,
) -> Result<Response<pb::Identity>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::WhoAmI, None)?;
    let (project_id, expires_at_ms) = p
        .token
        .as_ref()
        .map(|t| (t.project_id.clone(), t.expires_at_ms))
        .unwrap_or_default();
    Ok(Response::new(pb::Identity {
        user_id: p.user_id.clone(),
        user_name: p.name.clone(),
        roles: role_names(&p, &project_id),
        project_id,
        expires_at_ms,
    }))
}

pub async fn rotate_signing_key(
    api: &Api,
    req: Request<pb::RotateSigningKeyRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::RotateKeys, None)?;
    let cmd = Command::AddSigningKey {
        key_id: new_id(),
        secret: key_secret(),
        only_if_none: false,
    };
    api.propose(req.into_inner().request_id, p.name, cmd)
        .await?;
    Ok(Response::new(pb::Empty {}))
}

/// On a new cluster, once this controller leads and the members are recorded, proposes the
/// `admin` user (cluster admin) and `admin` project with `password`. Returns when any user
/// exists, whoever created it; `apply` ignores the command once a user exists, so two
/// controllers racing through a leader change are harmless.
pub async fn bootstrap_admin_when_leader(api: Api, password: String) {
    let hash = match password::hash_blocking(password).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot hash the bootstrap admin password: {}", e.message());
            return;
        }
    };
    loop {
        let ready = {
            let state = api.node.state();
            if state.user_count() > 0 {
                return;
            }
            let has_members = state.members().next().is_some();
            has_members
        };
        if ready && api.node.status().role == RaftRole::Leader {
            let env = Envelope {
                request_id: String::new(),
                actor: "controller".into(),
                time_ms: crate::server::now_ms(),
                command: Command::BootstrapAdmin {
                    user_id: new_id(),
                    project_id: new_id(),
                    password_hash: hash.clone(),
                    key_id: new_id(),
                    key_secret: key_secret(),
                },
            };
            match api.node.propose(&env).await {
                Ok(Outcome::User(u)) => {
                    tracing::info!(user = %u.name, "created the bootstrap admin user");
                    return;
                }
                Ok(Outcome::Rejected(r)) => {
                    tracing::error!("the bootstrap admin user was refused: {r}");
                    return;
                }
                Ok(_) => return,
                Err(e) => tracing::debug!("bootstrap admin proposal: {e}; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

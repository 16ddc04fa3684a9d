//! Users and role assignments (IdentityService).
use std::time::Instant;

use flotilla_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::{
    allow, auth::principal, convert, error, new_id, page_size, paginate, password, required, Api,
};
use crate::state::{validate, Command, Outcome, Role, RoleAssignment, User};

fn user_of(outcome: Outcome) -> Result<Response<pb::User>, Status> {
    match outcome {
        Outcome::User(u) => Ok(Response::new(convert::user(&u))),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

fn parse_role(role: &str) -> Result<Role, Status> {
    Role::parse(role).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown role {role:?}: use admin (cluster-wide), member or reader"
        ))
    })
}

pub async fn create_user(
    api: &Api,
    req: Request<pb::CreateUserRequest>,
) -> Result<Response<pb::User>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::ManageUsers, None)?;
    let r = req.into_inner();
    validate::name("user", &r.name).map_err(Status::invalid_argument)?;
    let password_hash = if r.password.is_empty() {
        String::new()
    } else {
        password::check_new(&r.password)?;
        password::hash_blocking(r.password).await?
    };
    let cmd = Command::CreateUser {
        id: new_id(),
        name: r.name,
        email: r.email,
        enabled: r.enabled.unwrap_or(true),
        default_project: r.default_project,
        password_hash,
    };
    user_of(api.propose(r.request_id, p.name, cmd).await?)
}

pub async fn get_user(
    api: &Api,
    req: Request<pb::GetUserRequest>,
) -> Result<Response<pb::User>, Status> {
    let p = principal(&req)?;
    let r = req.into_inner();
    required("user", &r.user)?;
    let state = api.read(r.stale).await?;
    let u = state
        .user(&r.user)
        .ok_or_else(|| Status::not_found(format!("user {:?} not found", r.user)))?;
    allow(&p, Action::ReadUser { user_id: &u.id }, None)?;
    Ok(Response::new(convert::user(u)))
}

/// Admins list every user; others see only themselves.
pub async fn list_users(
    api: &Api,
    req: Request<pb::ListUsersRequest>,
) -> Result<Response<pb::ListUsersResponse>, Status> {
    let p = principal(&req)?;
    let r = req.into_inner();
    let state = api.read(r.stale).await?;
    let visible = state
        .users_after(&r.page_token)
        .filter(|u| allow(&p, Action::ReadUser { user_id: &u.id }, None).is_ok());
    let (page, next) = paginate(visible, page_size(r.page_size), |u: &&User| u.id.clone());
    Ok(Response::new(pb::ListUsersResponse {
        users: page.into_iter().map(convert::user).collect(),
        next_page_token: next,
    }))
}

pub async fn update_user(
    api: &Api,
    req: Request<pb::UpdateUserRequest>,
) -> Result<Response<pb::User>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::ManageUsers, None)?;
    let r = req.into_inner();
    required("user", &r.user)?;
    if let Some(n) = &r.name {
        validate::name("user", n).map_err(Status::invalid_argument)?;
    }
    let cmd = Command::UpdateUser {
        user: r.user,
        name: r.name,
        email: r.email,
        enabled: r.enabled,
        default_project: r.default_project,
    };
    user_of(api.propose(r.request_id, p.name, cmd).await?)
}

pub async fn delete_user(
    api: &Api,
    req: Request<pb::DeleteUserRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::ManageUsers, None)?;
    let r = req.into_inner();
    required("user", &r.user)?;
    api.propose(r.request_id, p.name, Command::DeleteUser { user: r.user })
        .await?;
    Ok(Response::new(pb::Empty {}))
}

/// Admins set anyone's password; a user changing their own must give the current one (failures
/// count towards the login throttle).
pub async fn set_password(
    api: &Api,
    req: Request<pb::SetPasswordRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let p = principal(&req)?;
    let r = req.into_inner();
    required("user", &r.user)?;
    password::check_new(&r.new_password)?;
    let (user_id, name, current_hash) = {
        let state = api.read(false).await?;
        let u = state
            .user(&r.user)
            .ok_or_else(|| Status::not_found(format!("user {:?} not found", r.user)))?;
        (u.id.clone(), u.name.clone(), u.password_hash.clone())
    };
    allow(&p, Action::ChangePassword { user_id: &user_id }, None)?;
    if p.user_id == user_id {
        api.logins
            .check(&name, Instant::now())
            .map_err(|wait| error::throttled(&name, wait))?;
        if !password::verify_blocking(r.current_password, Some(current_hash)).await {
            api.logins.failed(&name, Instant::now());
            return Err(Status::permission_denied(
                "the current password is wrong (needed to change your own password)",
            ));
        }
    }
    let cmd = Command::SetPassword {
        user: user_id,
        password_hash: password::hash_blocking(r.new_password).await?,
    };
    api.propose(r.request_id, p.name, cmd).await?;
    Ok(Response::new(pb::Empty {}))
}

pub async fn add_role_assignment(
    api: &Api,
    req: Request<pb::AddRoleAssignmentRequest>,
) -> Result<Response<pb::RoleAssignment>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::ManageUsers, None)?;
    let r = req.into_inner();
    required("user", &r.user)?;
    let cmd = Command::AddRoleAssignment {
        user: r.user,
        project: r.project,
        role: parse_role(&r.role)?,
    };
    match api.propose(r.request_id, p.name, cmd).await? {
        Outcome::RoleAssignment(a) => Ok(Response::new(convert::role_assignment(&a))),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

pub async fn remove_role_assignment(
    api: &Api,
    req: Request<pb::RemoveRoleAssignmentRequest>,
) -> Result<Response<pb::Empty>, Status> {
    let p = principal(&req)?;
    allow(&p, Action::ManageUsers, None)?;
    let r = req.into_inner();
    required("user", &r.user)?;
    let cmd = Command::RemoveRoleAssignment {
        user: r.user,
        project: r.project,
        role: parse_role(&r.role)?,
    };
    api.propose(r.request_id, p.name, cmd).await?;
    Ok(Response::new(pb::Empty {}))
}

/// Filters by user and project (ids or names); non-admins see only their own assignments.
/// The page token is `user_id/project_id/role` of the last assignment returned.
pub async fn list_role_assignments(
    api: &Api,
    req: Request<pb::ListRoleAssignmentsRequest>,
) -> Result<Response<pb::ListRoleAssignmentsResponse>, Status> {
    let p = principal(&req)?;
    let r = req.into_inner();
    let state = api.read(r.stale).await?;
    let user_id = match r.user.as_str() {
        "" => None,
        u => Some(
            state
                .user(u)
                .ok_or_else(|| Status::not_found(format!("user {u:?} not found")))?
                .id
                .clone(),
        ),
    };
    let project_id = match r.project.as_str() {
        "" => None,
        pr => Some(
            state
                .project(pr)
                .ok_or_else(|| Status::not_found(format!("project {pr:?} not found")))?
                .id
                .clone(),
        ),
    };
    let after = r.page_token.clone();
    let items = state
        .role_assignments()
        .filter(|a| user_id.as_ref().is_none_or(|u| &a.user_id == u))
        .filter(|a| project_id.as_ref().is_none_or(|pr| &a.project_id == pr))
        .filter(|a| {
            allow(
                &p,
                Action::ReadUser {
                    user_id: &a.user_id,
                },
                None,
            )
            .is_ok()
        })
        .filter(|a| after.is_empty() || page_key(a) > after);
    let (page, next) = paginate(items, page_size(r.page_size), |a| page_key(a));
    Ok(Response::new(pb::ListRoleAssignmentsResponse {
        assignments: page.into_iter().map(convert::role_assignment).collect(),
        next_page_token: next,
    }))
}

/// Assignments are stored ordered by (user id, project id, role); ids are UUIDs (fixed
/// length) and roles sort the same by name, so this key preserves the order.
fn page_key(a: &RoleAssignment) -> String {
    format!("{}/{}/{:?}", a.user_id, a.project_id, a.role)
}

//! IdentityService: projects here; users and role assignments in [`super::users`]; login,
//! tokens and signing keys in [`super::tokens`].
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::identity_service_server::IdentityService;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::{
    allow, auth::principal, convert, new_id, page_size, paginate, required, tokens, users, Api,
};
use crate::state::{validate, Command, Outcome, Project};

pub struct IdentityApi(pub Api);

fn project_of(outcome: Outcome) -> Result<Response<pb::Project>, Status> {
    match outcome {
        Outcome::Project(p) => Ok(Response::new(convert::project(&p))),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn create_project(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageProjects, None)?;
        let actor = p.name;
        let r = req.into_inner();
        validate::name("project", &r.name).map_err(Status::invalid_argument)?;
        validate::description("project", &r.description).map_err(Status::invalid_argument)?;
        let properties = r.properties.into_iter().collect();
        validate::properties("project", &properties).map_err(Status::invalid_argument)?;
        let cmd = Command::CreateProject {
            id: new_id(),
            name: r.name,
            description: r.description,
            enabled: r.enabled.unwrap_or(true),
            properties,
        };
        project_of(self.0.propose(r.request_id, actor, cmd).await?)
    }

    async fn get_project(
        &self,
        req: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        required("project", &r.project)?;
        let state = self.0.read(r.stale).await?;
        let p = state
            .project(&r.project)
            .ok_or_else(|| Status::not_found(format!("project {:?} not found", r.project)))?;
        allow(&who, Action::ReadProject, Some(p))?;
        Ok(Response::new(convert::project(p)))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        // Everyone sees the projects they may read: admins all, others where they hold a role.
        let who = principal(&req)?;
        let r = req.into_inner();
        let state = self.0.read(r.stale).await?;
        let visible = state
            .projects_after(&r.page_token)
            .filter(|p| allow(&who, Action::ReadProject, Some(p)).is_ok());
        let (page, next) = paginate(visible, page_size(r.page_size), |p: &&Project| p.id.clone());
        Ok(Response::new(pb::ListProjectsResponse {
            projects: page.into_iter().map(convert::project).collect(),
            next_page_token: next,
        }))
    }

    async fn update_project(
        &self,
        req: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageProjects, None)?;
        let actor = p.name;
        let r = req.into_inner();
        required("project", &r.project)?;
        if let Some(n) = &r.name {
            validate::name("project", n).map_err(Status::invalid_argument)?;
        }
        let cmd = Command::UpdateProject {
            project: r.project,
            name: r.name,
            description: r.description,
            enabled: r.enabled,
            set_properties: r.set_properties.into_iter().collect(),
            unset_properties: r.unset_properties,
        };
        project_of(self.0.propose(r.request_id, actor, cmd).await?)
    }

    async fn delete_project(
        &self,
        req: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageProjects, None)?;
        let actor = p.name;
        let r = req.into_inner();
        required("project", &r.project)?;
        self.0
            .propose(
                r.request_id,
                actor,
                Command::DeleteProject { project: r.project },
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        users::create_user(&self.0, req).await
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        users::get_user(&self.0, req).await
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        users::list_users(&self.0, req).await
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        users::update_user(&self.0, req).await
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        users::delete_user(&self.0, req).await
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        users::set_password(&self.0, req).await
    }

    async fn add_role_assignment(
        &self,
        req: Request<pb::AddRoleAssignmentRequest>,
    ) -> Result<Response<pb::RoleAssignment>, Status> {
        users::add_role_assignment(&self.0, req).await
    }

    async fn remove_role_assignment(
        &self,
        req: Request<pb::RemoveRoleAssignmentRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        users::remove_role_assignment(&self.0, req).await
    }

    async fn list_role_assignments(
        &self,
        req: Request<pb::ListRoleAssignmentsRequest>,
    ) -> Result<Response<pb::ListRoleAssignmentsResponse>, Status> {
        users::list_role_assignments(&self.0, req).await
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::Token>, Status> {
        tokens::login(&self.0, req).await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        tokens::revoke_token(&self.0, req).await
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        tokens::who_am_i(&self.0, req).await
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        tokens::rotate_signing_key(&self.0, req).await
    }
}

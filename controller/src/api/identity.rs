//! IdentityService: projects now; users, roles and tokens answer UNIMPLEMENTED until identity
//! lands (the generated default stubs).
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::identity_service_server::IdentityService;
use tonic::{Request, Response, Status};

use super::{auth::principal, convert, new_id, page_size, paginate, required, Api};
use crate::state::{validate, Command, Outcome};

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
        let actor = principal(&req)?;
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
        let r = req.into_inner();
        required("project", &r.project)?;
        let state = self.0.read(r.stale).await?;
        let p = state
            .project(&r.project)
            .ok_or_else(|| Status::not_found(format!("project {:?} not found", r.project)))?;
        Ok(Response::new(convert::project(p)))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let r = req.into_inner();
        let state = self.0.read(r.stale).await?;
        let (page, next) = paginate(
            state.projects_after(&r.page_token),
            page_size(r.page_size),
            |p| p.id.clone(),
        );
        Ok(Response::new(pb::ListProjectsResponse {
            projects: page.into_iter().map(convert::project).collect(),
            next_page_token: next,
        }))
    }

    async fn update_project(
        &self,
        req: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let actor = principal(&req)?;
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
        let actor = principal(&req)?;
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
}

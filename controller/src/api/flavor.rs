//! FlavorService.
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::flavor_service_server::FlavorService;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::{allow, auth::principal, convert, new_id, page_size, paginate, required, Api};
use crate::state::{validate, Command, Flavor, FlavorSpec, Outcome};

pub struct FlavorApi(pub Api);

fn flavor_of(outcome: Outcome) -> Result<Response<pb::Flavor>, Status> {
    match outcome {
        Outcome::Flavor(f) => Ok(Response::new(convert::flavor(&f))),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// A private flavor is visible to admins and to users with a role in one of its projects.
fn visible(p: &Principal, f: &Flavor) -> bool {
    p.admin || f.is_public || f.access_project_ids.iter().any(|id| p.in_project(id))
}

#[tonic::async_trait]
impl FlavorService for FlavorApi {
    async fn create_flavor(
        &self,
        req: Request<pb::CreateFlavorRequest>,
    ) -> Result<Response<pb::Flavor>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageFlavors, None)?;
        let actor = p.name;
        let r = req.into_inner();
        validate::name("flavor", &r.name).map_err(Status::invalid_argument)?;
        validate::flavor_sizes(r.vcpus, r.ram_mib, r.disk_gib, r.ephemeral_gib, r.swap_mib)
            .map_err(Status::invalid_argument)?;
        let extra_specs = r.extra_specs.into_iter().collect();
        validate::properties("flavor", &extra_specs).map_err(Status::invalid_argument)?;
        let spec = FlavorSpec {
            id: new_id(),
            name: r.name,
            vcpus: r.vcpus,
            ram_mib: r.ram_mib,
            disk_gib: r.disk_gib,
            ephemeral_gib: r.ephemeral_gib,
            swap_mib: r.swap_mib,
            is_public: r.is_public.unwrap_or(true),
            description: r.description,
            extra_specs,
        };
        flavor_of(
            self.0
                .propose(r.request_id, actor, Command::CreateFlavor(spec))
                .await?,
        )
    }

    async fn get_flavor(
        &self,
        req: Request<pb::GetFlavorRequest>,
    ) -> Result<Response<pb::Flavor>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ReadFlavors, None)?;
        let r = req.into_inner();
        required("flavor", &r.flavor)?;
        let state = self.0.read(r.stale).await?;
        let f = state
            .flavor(&r.flavor)
            .filter(|f| visible(&p, f))
            .ok_or_else(|| Status::not_found(format!("flavor {:?} not found", r.flavor)))?;
        Ok(Response::new(convert::flavor(f)))
    }

    async fn list_flavors(
        &self,
        req: Request<pb::ListFlavorsRequest>,
    ) -> Result<Response<pb::ListFlavorsResponse>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ReadFlavors, None)?;
        let r = req.into_inner();
        let state = self.0.read(r.stale).await?;
        let (page, next) = paginate(
            state
                .flavors_after(&r.page_token)
                .filter(|f| visible(&p, f)),
            page_size(r.page_size),
            |f| f.id.clone(),
        );
        Ok(Response::new(pb::ListFlavorsResponse {
            flavors: page.into_iter().map(convert::flavor).collect(),
            next_page_token: next,
        }))
    }

    async fn update_flavor(
        &self,
        req: Request<pb::UpdateFlavorRequest>,
    ) -> Result<Response<pb::Flavor>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageFlavors, None)?;
        let actor = p.name;
        let r = req.into_inner();
        required("flavor", &r.flavor)?;
        let cmd = Command::UpdateFlavor {
            flavor: r.flavor,
            description: r.description,
            is_public: r.is_public,
            set_extra_specs: r.set_extra_specs.into_iter().collect(),
            unset_extra_specs: r.unset_extra_specs,
        };
        flavor_of(self.0.propose(r.request_id, actor, cmd).await?)
    }

    async fn delete_flavor(
        &self,
        req: Request<pb::DeleteFlavorRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageFlavors, None)?;
        let actor = p.name;
        let r = req.into_inner();
        required("flavor", &r.flavor)?;
        self.0
            .propose(
                r.request_id,
                actor,
                Command::DeleteFlavor { flavor: r.flavor },
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn add_flavor_access(
        &self,
        req: Request<pb::FlavorAccessRequest>,
    ) -> Result<Response<pb::Flavor>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageFlavors, None)?;
        let actor = p.name;
        let r = req.into_inner();
        required("flavor", &r.flavor)?;
        required("project", &r.project)?;
        let cmd = Command::AddFlavorAccess {
            flavor: r.flavor,
            project: r.project,
        };
        flavor_of(self.0.propose(r.request_id, actor, cmd).await?)
    }

    async fn remove_flavor_access(
        &self,
        req: Request<pb::FlavorAccessRequest>,
    ) -> Result<Response<pb::Flavor>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageFlavors, None)?;
        let actor = p.name;
        let r = req.into_inner();
        required("flavor", &r.flavor)?;
        required("project", &r.project)?;
        let cmd = Command::RemoveFlavorAccess {
            flavor: r.flavor,
            project: r.project,
        };
        flavor_of(self.0.propose(r.request_id, actor, cmd).await?)
    }
}

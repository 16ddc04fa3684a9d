//! QuotaService: admins set project quotas and the defaults; a project's members and readers
//! read its quota; anyone authenticated reads the defaults.
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::quota_service_server::QuotaService;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::{allow, auth::principal, required, Api};
use crate::state::{validate_limits, Amounts, Command, Outcome, ProjectQuota, Resource};

pub struct QuotaApi(pub Api);

/// The set fields of a request, in [`Resource`] order.
fn changes(values: [Option<i64>; 13]) -> Result<Amounts, Status> {
    let changes: Amounts = Resource::ALL
        .into_iter()
        .zip(values)
        .filter_map(|(r, v)| v.map(|v| (r, v)))
        .collect();
    validate_limits(&changes).map_err(Status::invalid_argument)?;
    Ok(changes)
}

fn limits(a: &Amounts) -> pb::QuotaLimits {
    let get = |r: Resource| a.get(&r).copied().unwrap_or(r.builtin_default());
    pb::QuotaLimits {
        instances: get(Resource::Instances),
        vcpus: get(Resource::Vcpus),
        ram_mib: get(Resource::RamMib),
        disk_gib: get(Resource::DiskGib),
        networks: get(Resource::Networks),
        ports: get(Resource::Ports),
        floating_ips: get(Resource::FloatingIps),
        images: get(Resource::Images),
        image_storage_gib: get(Resource::ImageStorageGib),
        server_groups: get(Resource::ServerGroups),
        subnets: get(Resource::Subnets),
        security_groups: get(Resource::SecurityGroups),
        security_group_rules: get(Resource::SecurityGroupRules),
    }
}

fn quota(q: &ProjectQuota) -> pb::Quota {
    let item = |r: Resource| {
        q.items.get(&r).map(|i| pb::QuotaItem {
            limit: i.limit,
            in_use: i.in_use,
            from_default: i.from_default,
        })
    };
    pb::Quota {
        project_id: q.project_id.clone(),
        instances: item(Resource::Instances),
        vcpus: item(Resource::Vcpus),
        ram_mib: item(Resource::RamMib),
        disk_gib: item(Resource::DiskGib),
        networks: item(Resource::Networks),
        ports: item(Resource::Ports),
        floating_ips: item(Resource::FloatingIps),
        images: item(Resource::Images),
        image_storage_gib: item(Resource::ImageStorageGib),
        server_groups: item(Resource::ServerGroups),
        subnets: item(Resource::Subnets),
        security_groups: item(Resource::SecurityGroups),
        security_group_rules: item(Resource::SecurityGroupRules),
    }
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    async fn get_quota(
        &self,
        req: Request<pb::GetQuotaRequest>,
    ) -> Result<Response<pb::Quota>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let key = if r.project.is_empty() {
            p.token
                .as_ref()
                .map(|t| t.project_id.clone())
                .unwrap_or_default()
        } else {
            r.project
        };
        if key.is_empty() {
            return Err(Status::invalid_argument(
                "project is required (the token is not scoped to a project)",
            ));
        }
        let state = self.0.read(r.stale).await?;
        let project = state
            .project(&key)
            .ok_or_else(|| Status::not_found(format!("project {key:?} not found")))?;
        allow(&p, Action::ReadProject, Some(project))?;
        Ok(Response::new(quota(&state.project_quota(&project.id))))
    }

    async fn set_quota(
        &self,
        req: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::Quota>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageQuotas, None)?;
        let r = req.into_inner();
        required("project", &r.project)?;
        let reset_to_default = r
            .reset_to_default
            .iter()
            .map(|name| {
                Resource::parse(name).ok_or_else(|| {
                    let known: Vec<_> = Resource::ALL.iter().map(|r| r.as_str()).collect();
                    Status::invalid_argument(format!(
                        "unknown quota resource {name:?}; known: {}",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let changes = changes([
            r.instances,
            r.vcpus,
            r.ram_mib,
            r.disk_gib,
            r.networks,
            r.ports,
            r.floating_ips,
            r.images,
            r.image_storage_gib,
            r.server_groups,
            r.subnets,
            r.security_groups,
            r.security_group_rules,
        ])?;
        let cmd = Command::SetQuota {
            project: r.project,
            reset_to_default,
            changes,
        };
        match self.0.propose(r.request_id, p.name, cmd).await? {
            Outcome::Quota(q) => Ok(Response::new(quota(&q))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn get_default_quota(
        &self,
        req: Request<pb::GetDefaultQuotaRequest>,
    ) -> Result<Response<pb::QuotaLimits>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ReadDefaultQuota, None)?;
        let r = req.into_inner();
        let state = self.0.read(r.stale).await?;
        Ok(Response::new(limits(&state.default_quota())))
    }

    async fn set_default_quota(
        &self,
        req: Request<pb::SetDefaultQuotaRequest>,
    ) -> Result<Response<pb::QuotaLimits>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ManageQuotas, None)?;
        let r = req.into_inner();
        let changes = changes([
            r.instances,
            r.vcpus,
            r.ram_mib,
            r.disk_gib,
            r.networks,
            r.ports,
            r.floating_ips,
            r.images,
            r.image_storage_gib,
            r.server_groups,
            r.subnets,
            r.security_groups,
            r.security_group_rules,
        ])?;
        let cmd = Command::SetDefaultQuota { changes };
        match self.0.propose(r.request_id, p.name, cmd).await? {
            Outcome::DefaultQuota(d) => Ok(Response::new(limits(&d))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

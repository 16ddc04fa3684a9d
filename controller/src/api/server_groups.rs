//! ServerGroupService. Groups belong to a project like servers: members create and delete them,
//! readers read them, admins everything. Deleting a group with members is allowed (as in Nova):
//! the members keep running where they are and the policy no longer applies to them.
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::server_group_service_server::ServerGroupService;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::{allow, auth::principal, convert::meta, new_id, page_size, paginate, required, Api};
use crate::scheduler::GroupPolicy;
use crate::state::{validate, Command, Outcome, ServerGroup, ServerGroupSpec, State};

pub struct ServerGroupApi(pub Api);

fn visible(p: &Principal, g: &ServerGroup) -> bool {
    p.admin || p.in_project(&g.project_id)
}

fn token_project(p: &Principal) -> String {
    p.token
        .as_ref()
        .map(|t| t.project_id.clone())
        .unwrap_or_default()
}

/// A group of `project_id` by id, or by its name (unique within the project).
pub fn in_project<'s>(
    state: &'s State,
    project_id: &str,
    key: &str,
) -> Result<&'s ServerGroup, Status> {
    state
        .server_group_by_id(key)
        .filter(|g| g.project_id == project_id)
        .or_else(|| {
            state
                .server_groups_after("")
                .find(|g| g.project_id == project_id && g.name == key)
        })
        .ok_or_else(|| Status::not_found(format!("server group {key:?} not found")))
}

/// A group the caller can see: by id, or by name in the token's project (then, for admins, a
/// name unique among all groups).
fn resolve<'s>(state: &'s State, p: &Principal, key: &str) -> Result<&'s ServerGroup, Status> {
    required("server_group", key)?;
    if let Some(g) = state.server_group_by_id(key).filter(|g| visible(p, g)) {
        return Ok(g);
    }
    let scope = token_project(p);
    if let Ok(g) = in_project(state, &scope, key) {
        return Ok(g);
    }
    let mut named = state
        .server_groups_after("")
        .filter(|g| g.name == key && visible(p, g));
    match (named.next(), named.next()) {
        (Some(g), None) => Ok(g),
        (None, _) => Err(Status::not_found(format!("server group {key:?} not found"))),
        (Some(_), Some(_)) => Err(Status::failed_precondition(format!(
            "several server groups are named {key:?}; use the group id"
        ))),
    }
}

fn policy_to_pb(p: GroupPolicy) -> pb::ServerGroupPolicy {
    match p {
        GroupPolicy::Affinity => pb::ServerGroupPolicy::Affinity,
        GroupPolicy::AntiAffinity => pb::ServerGroupPolicy::AntiAffinity,
        GroupPolicy::SoftAffinity => pb::ServerGroupPolicy::SoftAffinity,
        GroupPolicy::SoftAntiAffinity => pb::ServerGroupPolicy::SoftAntiAffinity,
    }
}

fn policy_from_pb(v: i32) -> Result<GroupPolicy, Status> {
    match pb::ServerGroupPolicy::try_from(v) {
        Ok(pb::ServerGroupPolicy::Affinity) => Ok(GroupPolicy::Affinity),
        Ok(pb::ServerGroupPolicy::AntiAffinity) => Ok(GroupPolicy::AntiAffinity),
        Ok(pb::ServerGroupPolicy::SoftAffinity) => Ok(GroupPolicy::SoftAffinity),
        Ok(pb::ServerGroupPolicy::SoftAntiAffinity) => Ok(GroupPolicy::SoftAntiAffinity),
        _ => Err(Status::invalid_argument(
            "policy is required: affinity, anti-affinity, soft-affinity or soft-anti-affinity",
        )),
    }
}

pub fn server_group(g: &ServerGroup) -> pb::ServerGroup {
    pb::ServerGroup {
        id: g.id.clone(),
        name: g.name.clone(),
        project_id: g.project_id.clone(),
        user_id: g.user_id.clone(),
        policy: policy_to_pb(g.policy) as i32,
        rules: (g.policy == GroupPolicy::AntiAffinity).then_some(pb::ServerGroupRules {
            max_server_per_host: 1,
        }),
        member_ids: g.members.clone(),
        meta: Some(meta(&g.meta)),
    }
}

#[tonic::async_trait]
impl ServerGroupService for ServerGroupApi {
    async fn create_server_group(
        &self,
        req: Request<pb::CreateServerGroupRequest>,
    ) -> Result<Response<pb::ServerGroup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        validate::name("server group", &r.name).map_err(Status::invalid_argument)?;
        let policy = policy_from_pb(r.policy)?;
        let max = r.rules.map(|x| x.max_server_per_host).unwrap_or(0);
        if max > 1 {
            return Err(Status::unimplemented(
                "max_server_per_host above 1 is not implemented in this release of Flotilla yet",
            ));
        }
        if max == 1 && policy != GroupPolicy::AntiAffinity {
            return Err(Status::invalid_argument(
                "max_server_per_host applies to the anti-affinity policy only",
            ));
        }
        let project_id = {
            let state = self.0.read(false).await?;
            let project_id = Some(token_project(&p))
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "your token is not scoped to a project: log in with --project",
                    )
                })?;
            let project = state
                .project(&project_id)
                .ok_or_else(|| Status::not_found("your token's project no longer exists"))?;
            allow(&p, Action::WriteProject, Some(project))?;
            project_id
        };
        let spec = ServerGroupSpec {
            id: new_id(),
            name: r.name,
            project_id,
            user_id: p.user_id.clone(),
            policy,
        };
        match self
            .0
            .propose(r.request_id, p.name, Command::CreateServerGroup(spec))
            .await?
        {
            Outcome::ServerGroup(g) => {
                // A retry answers with the group as it is now.
                let state = self.0.node.state();
                let now = state.server_group_by_id(&g.id).unwrap_or(&g);
                Ok(Response::new(server_group(now)))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn get_server_group(
        &self,
        req: Request<pb::GetServerGroupRequest>,
    ) -> Result<Response<pb::ServerGroup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.0.read(r.stale).await?;
        let g = resolve(&state, &p, &r.server_group)?;
        Ok(Response::new(server_group(g)))
    }

    async fn list_server_groups(
        &self,
        req: Request<pb::ListServerGroupsRequest>,
    ) -> Result<Response<pb::ListServerGroupsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if (r.all_projects || !r.project.is_empty()) && !p.admin {
            return Err(Status::permission_denied(
                "permission denied: --all-projects and --project need the cluster admin role",
            ));
        }
        let state = self.0.read(r.stale).await?;
        let scope = token_project(&p);
        let project_filter = if !r.project.is_empty() {
            let pr = state
                .project(&r.project)
                .ok_or_else(|| Status::not_found(format!("project {:?} not found", r.project)))?;
            Some(pr.id.clone())
        } else if r.all_projects || scope.is_empty() {
            None
        } else {
            Some(scope)
        };
        let (page, next) = paginate(
            state.server_groups_after(&r.page_token).filter(|g| {
                visible(&p, g) && project_filter.as_ref().is_none_or(|id| &g.project_id == id)
            }),
            page_size(r.page_size),
            |g| g.id.clone(),
        );
        Ok(Response::new(pb::ListServerGroupsResponse {
            server_groups: page.into_iter().map(server_group).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_server_group(
        &self,
        req: Request<pb::DeleteServerGroupRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let group_id = {
            let state = self.0.read(false).await?;
            let g = resolve(&state, &p, &r.server_group)?;
            let project = state
                .project(&g.project_id)
                .ok_or_else(|| Status::internal("server group without project"))?;
            allow(&p, Action::WriteProject, Some(project))?;
            g.id.clone()
        };
        self.0
            .propose(
                r.request_id,
                p.name,
                Command::DeleteServerGroup { group_id },
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }
}

//! ServerService: create (scheduled here, admitted in apply), read, and the power and lock
//! actions; console log and diagnostics asked of the server's agent. Servers belong to a
//! project: members act on them, readers read them, admins everything. Non-admins cannot act on
//! a locked server (they may still unlock it).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::server_service_server::ServerService;
use tonic::{Request, Response, Status};

use super::agent_hub::AgentHub;
use super::authz::{Action, Principal};
use super::move_duties::Method;
use super::server_moves::MoveRequest;
use super::{
    allow, auth::principal, compute_convert as cc, new_id, page_size, paginate, required, Api,
};
use crate::scheduler::{self, AllocationRatios};
use crate::state::{
    validate, Command, FlavorSnapshot, ImageStatus, NewServer, Outcome, Server, ServerRequest,
    SnapshotSpec, State, DEFAULT_GROUP_IDS,
};

/// Largest user data passed to a guest.
pub const MAX_USER_DATA: usize = 64 << 10;
/// Most servers one create may ask for.
pub const MAX_COUNT: u32 = 100;
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct ServerApi {
    pub api: Api,
    pub hub: Arc<AgentHub>,
    pub ratios: AllocationRatios,
}

fn visible(p: &Principal, s: &Server) -> bool {
    p.admin || p.in_project(&s.project_id)
}

/// A server the caller can see, by id or by a name unique among those it can see.
pub(super) fn resolve<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s Server, Status> {
    required("server", key)?;
    if let Some(s) = state.server(key).filter(|s| visible(p, s)) {
        return Ok(s);
    }
    let mut named = state.servers().filter(|s| s.name == key && visible(p, s));
    match (named.next(), named.next()) {
        (Some(s), None) => Ok(s),
        (None, _) => Err(Status::not_found(format!("server {key:?} not found"))),
        (Some(_), Some(_)) => Err(Status::failed_precondition(format!(
            "several servers are named {key:?}; use the server id"
        ))),
    }
}

fn operation_ref(id: String) -> Response<pb::OperationRef> {
    Response::new(pb::OperationRef { operation_id: id })
}

impl ServerApi {
    /// Resolves a server the caller may act on with `request`, then proposes it.
    pub(super) async fn request(
        &self,
        p: Principal,
        request_id: String,
        key: &str,
        operation_id: String,
        request: ServerRequest,
    ) -> Result<(Option<Server>, String), Status> {
        let server_id = {
            let state = self.api.read(false).await?;
            let s = resolve(&state, &p, key)?;
            let project = state
                .project(&s.project_id)
                .ok_or_else(|| Status::internal("server without project"))?;
            allow(&p, Action::WriteProject, Some(project))?;
            if s.locked && !p.admin && !matches!(request, ServerRequest::Unlock) {
                return Err(Status::failed_precondition(format!(
                    "server {:?} is locked{}; unlock it first",
                    s.name,
                    if s.locked_reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", s.locked_reason)
                    }
                )));
            }
            s.id.clone()
        };
        let cmd = Command::ServerRequest {
            server_id,
            operation_id: operation_id.clone(),
            request,
        };
        match self.api.propose(request_id, p.name, cmd).await? {
            // A retried request (or a delete already under way) gets the operation of its
            // first attempt: the server's current one.
            Outcome::Server(s) => {
                let operation_id = s.current_operation_id.clone();
                Ok((Some(*s), operation_id))
            }
            // A delete that completed at once (nothing held the server) recorded this one.
            Outcome::Deleted => Ok((None, operation_id)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// [`Self::request`] for actions that leave the server in place.
    async fn act(
        &self,
        p: Principal,
        request_id: String,
        key: &str,
        operation_id: String,
        request: ServerRequest,
    ) -> Result<(Server, String), Status> {
        match self
            .request(p, request_id, key, operation_id, request)
            .await?
        {
            (Some(s), op) => Ok((s, op)),
            (None, _) => Err(Status::internal(
                "the server disappeared during the request",
            )),
        }
    }

    /// Where the server runs, for agent queries; the query must run on the leader.
    fn host_of(&self, p: &Principal, key: &str) -> Result<(String, String), Status> {
        let state = self.api.node.state();
        let s = resolve(&state, p, key)?;
        if s.host_id.is_empty() {
            return Err(Status::failed_precondition(format!(
                "server {:?} has no host",
                s.name
            )));
        }
        Ok((s.id.clone(), s.host_id.clone()))
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.api.node.status().leader_id == self.api.node.id() {
            return Ok(());
        }
        Err(super::error::node(
            crate::raft::NodeError::NotLeader {
                leader: self.api.node.status().leader_id,
            },
            &self.api.node,
        ))
    }
}

#[tonic::async_trait]
impl ServerService for ServerApi {
    async fn create_server(
        &self,
        req: Request<pb::CreateServerRequest>,
    ) -> Result<Response<pb::CreateServerResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        validate::name("server", &r.name).map_err(Status::invalid_argument)?;
        let metadata: BTreeMap<String, String> = r.metadata.into_iter().collect();
        validate::properties("server", &metadata).map_err(Status::invalid_argument)?;
        if r.user_data.len() > MAX_USER_DATA {
            return Err(Status::invalid_argument(format!(
                "user_data is {} bytes; at most {MAX_USER_DATA} are accepted",
                r.user_data.len()
            )));
        }
        let count = r.max_count.max(r.min_count).max(1);
        if count > MAX_COUNT {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_COUNT} servers per create"
            )));
        }
        if !r.host.is_empty() && !p.admin {
            return Err(Status::permission_denied(
                "permission denied: choosing the host needs the cluster admin role",
            ));
        }
        let (new, nics) = {
            let state = self.api.read(false).await?;
            let project_id = p
                .token
                .as_ref()
                .map(|t| t.project_id.clone())
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
            required("flavor", &r.flavor)?;
            let nics =
                super::server_network::nic_templates(&state, &p, &project_id, &r.networks, count)?;
            let flavor = state
                .flavor(&r.flavor)
                .filter(|f| p.admin || f.is_public || f.access_project_ids.contains(&project_id))
                .ok_or_else(|| Status::not_found(format!("flavor {:?} not found", r.flavor)))?;
            let image = super::image::resolve(&state, &p, &r.image)?;
            if image.status != ImageStatus::Active {
                return Err(Status::failed_precondition(format!(
                    "image {:?} is {}; servers boot from active images only",
                    image.name,
                    image.status.as_str()
                )));
            }
            let snapshot = FlavorSnapshot {
                id: flavor.id.clone(),
                name: flavor.name.clone(),
                vcpus: flavor.vcpus,
                ram_mib: flavor.ram_mib,
                disk_gib: flavor.disk_gib,
                ephemeral_gib: flavor.ephemeral_gib,
                swap_mib: flavor.swap_mib,
                extra_specs: flavor.extra_specs.clone(),
            };
            let mut request = crate::state::placement_request(&snapshot, image);
            request.count = count;
            request.availability_zone =
                (!r.availability_zone.is_empty()).then(|| r.availability_zone.clone());
            if !r.host.is_empty() {
                let host = state
                    .host(&r.host)
                    .ok_or_else(|| Status::not_found(format!("host {:?} not found", r.host)))?;
                request.forced_host = Some(host.id.clone());
            }
            let group_id = if r.server_group.is_empty() {
                String::new()
            } else {
                let g = super::server_groups::in_project(&state, &project_id, &r.server_group)?;
                request.group = Some(state.server_group_view(g));
                g.id.clone()
            };
            let hosts: Vec<_> = state.hosts().map(crate::state::host_view).collect();
            let placed = scheduler::place(&hosts, &self.ratios, &request).map_err(|e| match e {
                scheduler::ScheduleError::InvalidRequest(bad) => {
                    Status::invalid_argument(bad.to_string())
                }
                none @ scheduler::ScheduleError::NoValidHost(_) => {
                    Status::resource_exhausted(none.to_string())
                }
            })?;
            let placed = placed
                .into_iter()
                .enumerate()
                .map(|(i, host_id)| NewServer {
                    id: new_id(),
                    name: if count == 1 {
                        r.name.clone()
                    } else {
                        format!("{}-{}", r.name, i + 1)
                    },
                    project_id: project_id.clone(),
                    user_id: p.user_id.clone(),
                    flavor: snapshot.clone(),
                    image_id: image.id.clone(),
                    host_id,
                    availability_zone: r.availability_zone.clone(),
                    metadata: metadata.clone(),
                    user_data: r.user_data.clone(),
                    operation_id: new_id(),
                    group_id: group_id.clone(),
                })
                .collect::<Vec<_>>();
            (placed, nics)
        };
        let op_ids: Vec<String> = new.iter().map(|s| s.operation_id.clone()).collect();
        let cmd = if nics.is_empty() {
            Command::CreateServers {
                servers: new,
                ratios: self.ratios,
            }
        } else {
            Command::CreateServersWithNics {
                nics: new
                    .iter()
                    .map(|_| super::server_network::stamp(&nics))
                    .collect(),
                servers: new,
                ratios: self.ratios,
                default_group_ids: (0..DEFAULT_GROUP_IDS).map(|_| new_id()).collect(),
            }
        };
        let servers = match self.api.propose(r.request_id, p.name.clone(), cmd).await? {
            Outcome::Servers(v) => v,
            other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
        let state = self.api.node.state();
        Ok(Response::new(pb::CreateServerResponse {
            servers: servers.iter().map(|s| cc::server(&state, s)).collect(),
            operation_ids: op_ids,
        }))
    }

    async fn add_floating_ip(
        &self,
        req: Request<pb::AddFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let f = self.add_floating_ip_to(p, req.into_inner()).await?;
        Ok(Response::new(f))
    }

    async fn remove_floating_ip(
        &self,
        req: Request<pb::RemoveFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let f = self.remove_floating_ip_from(p, req.into_inner()).await?;
        Ok(Response::new(f))
    }

    async fn list_server_ports(
        &self,
        req: Request<pb::ListServerPortsRequest>,
    ) -> Result<Response<pb::ListPortsResponse>, Status> {
        let p = principal(&req)?;
        let ports = self.server_ports(p, req.into_inner()).await?;
        Ok(Response::new(ports))
    }

    async fn get_server(
        &self,
        req: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let s = resolve(&state, &p, &r.server)?;
        Ok(Response::new(cc::server(&state, s)))
    }

    async fn list_servers(
        &self,
        req: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if r.all_projects && !p.admin {
            return Err(Status::permission_denied(
                "permission denied: --all-projects needs the cluster admin role",
            ));
        }
        let state = self.api.read(r.stale).await?;
        let scope = p
            .token
            .as_ref()
            .map(|t| t.project_id.clone())
            .unwrap_or_default();
        if (!r.project.is_empty() || !r.host.is_empty()) && !p.admin {
            return Err(Status::permission_denied(
                "permission denied: filtering by project or host needs the cluster admin role",
            ));
        }
        let project_filter = if !r.project.is_empty() {
            let pr = state
                .project(&r.project)
                .ok_or_else(|| Status::not_found(format!("project {:?} not found", r.project)))?;
            Some(pr.id.clone())
        } else if r.all_projects {
            None
        } else if !scope.is_empty() {
            Some(scope)
        } else {
            None
        };
        let host_filter = if r.host.is_empty() {
            None
        } else {
            Some(
                state
                    .host(&r.host)
                    .map(|h| h.id.clone())
                    .unwrap_or_default(),
            )
        };
        let status_filter = pb::ServerStatus::try_from(r.status).unwrap_or_default();
        let (page, next) = paginate(
            state.servers_after(&r.page_token).filter(|s| {
                visible(&p, s)
                    && project_filter.as_ref().is_none_or(|id| &s.project_id == id)
                    && host_filter.as_ref().is_none_or(|h| &s.host_id == h)
                    && (r.name.is_empty() || s.name.contains(&r.name))
                    && (r.image.is_empty() || s.image.id == r.image)
                    && (r.flavor.is_empty() || s.flavor.id == r.flavor || s.flavor.name == r.flavor)
                    && (status_filter == pb::ServerStatus::Unspecified
                        || cc::status(s.status) == status_filter)
            }),
            page_size(r.page_size),
            |s| s.id.clone(),
        );
        Ok(Response::new(pb::ListServersResponse {
            servers: page.into_iter().map(|s| cc::server(&state, s)).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_server(
        &self,
        req: Request<pb::DeleteServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (_, op) = self
            .request(p, r.request_id, &r.server, new_id(), ServerRequest::Delete)
            .await?;
        Ok(operation_ref(op))
    }

    async fn start_server(
        &self,
        req: Request<pb::StartServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (_, op) = self
            .act(p, r.request_id, &r.server, new_id(), ServerRequest::Start)
            .await?;
        Ok(operation_ref(op))
    }

    async fn stop_server(
        &self,
        req: Request<pb::StopServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (_, op) = self
            .act(p, r.request_id, &r.server, new_id(), ServerRequest::Stop)
            .await?;
        Ok(operation_ref(op))
    }

    async fn reboot_server(
        &self,
        req: Request<pb::RebootServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let request = ServerRequest::Reboot { hard: r.hard };
        let (_, op) = self
            .act(p, r.request_id, &r.server, new_id(), request)
            .await?;
        Ok(operation_ref(op))
    }

    async fn lock_server(
        &self,
        req: Request<pb::LockServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let request = ServerRequest::Lock { reason: r.reason };
        let (s, _) = self
            .act(p, r.request_id, &r.server, new_id(), request)
            .await?;
        Ok(Response::new(cc::server(&self.api.node.state(), &s)))
    }

    async fn unlock_server(
        &self,
        req: Request<pb::UnlockServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (s, _) = self
            .act(p, r.request_id, &r.server, new_id(), ServerRequest::Unlock)
            .await?;
        Ok(Response::new(cc::server(&self.api.node.state(), &s)))
    }

    async fn rebuild_server(
        &self,
        req: Request<pb::RebuildServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if r.name.is_some() {
            return Err(Status::unimplemented(
                "renaming during a rebuild is not implemented yet; rename with UpdateServer",
            ));
        }
        let image_id = {
            let state = self.api.read(false).await?;
            if r.image.is_empty() {
                resolve(&state, &p, &r.server)?.image.id.clone()
            } else {
                super::image::resolve(&state, &p, &r.image)?.id.clone()
            }
        };
        let request = ServerRequest::Rebuild { image_id };
        let (_, op) = self
            .act(p, r.request_id, &r.server, new_id(), request)
            .await?;
        Ok(operation_ref(op))
    }

    async fn backup_server(
        &self,
        req: Request<pb::BackupServerRequest>,
    ) -> Result<Response<pb::ServerImageResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("backup_type", &r.backup_type)?;
        if r.rotation == 0 {
            return Err(Status::invalid_argument("rotation must be at least 1"));
        }
        let spec = SnapshotSpec {
            image_id: new_id(),
            name: r.name,
            properties: BTreeMap::new(),
            backup: Some((r.backup_type, r.rotation)),
        };
        self.snapshot(p, r.request_id, &r.server, spec).await
    }

    async fn create_server_image(
        &self,
        req: Request<pb::CreateServerImageRequest>,
    ) -> Result<Response<pb::ServerImageResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let spec = SnapshotSpec {
            image_id: new_id(),
            name: r.name,
            properties: r.metadata.into_iter().collect(),
            backup: None,
        };
        self.snapshot(p, r.request_id, &r.server, spec).await
    }

    async fn list_server_actions(
        &self,
        req: Request<pb::ListServerActionsRequest>,
    ) -> Result<Response<pb::ListServerActionsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let s = resolve(&state, &p, &r.server)?;
        let ops = s
            .operation_ids
            .iter()
            .rev()
            .filter_map(|id| state.operation(id))
            .skip_while(|o| !r.page_token.is_empty() && o.id != r.page_token)
            .skip(usize::from(!r.page_token.is_empty()));
        let (page, next) = paginate(ops, page_size(r.page_size), |o| o.id.clone());
        Ok(Response::new(pb::ListServerActionsResponse {
            actions: page.into_iter().map(cc::action).collect(),
            next_page_token: next,
        }))
    }

    async fn get_console_log(
        &self,
        req: Request<pb::GetConsoleLogRequest>,
    ) -> Result<Response<pb::ServerConsoleLog>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.require_leader()?;
        let (server_id, host_id) = self.host_of(&p, &r.server)?;
        let query = pb::agent_query::Query::ConsoleLog(pb::AgentConsoleLogQuery {
            server_id,
            lines: r.lines,
        });
        let answer = self
            .hub
            .query(&host_id, query, QUERY_TIMEOUT)
            .await
            .map_err(Status::unavailable)?;
        match answer.result {
            Some(pb::agent_query_result::Result::ConsoleLog(log)) => Ok(Response::new(log)),
            _ => Err(Status::unavailable(format!(
                "the agent could not read the console log: {}",
                answer.error
            ))),
        }
    }

    async fn get_diagnostics(
        &self,
        req: Request<pb::GetDiagnosticsRequest>,
    ) -> Result<Response<pb::ServerDiagnostics>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.require_leader()?;
        let (server_id, host_id) = self.host_of(&p, &r.server)?;
        let query = pb::agent_query::Query::Diagnostics(pb::AgentDiagnosticsQuery { server_id });
        let answer = self
            .hub
            .query(&host_id, query, QUERY_TIMEOUT)
            .await
            .map_err(Status::unavailable)?;
        match answer.result {
            Some(pb::agent_query_result::Result::Diagnostics(d)) => Ok(Response::new(d)),
            _ => Err(Status::unavailable(format!(
                "the agent could not collect diagnostics: {}",
                answer.error
            ))),
        }
    }

    async fn migrate_server(
        &self,
        req: Request<pb::MigrateServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let m = MoveRequest {
            request_id: r.request_id,
            server: &r.server,
            host: &r.host,
            method: Method::Cold,
            block_migration: None,
            timeout_seconds: 0,
            force: false,
        };
        Ok(Response::new(self.move_server(p, m).await?))
    }

    async fn live_migrate_server(
        &self,
        req: Request<pb::LiveMigrateServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let m = MoveRequest {
            request_id: r.request_id,
            server: &r.server,
            host: &r.host,
            method: Method::Live,
            block_migration: r.block_migration,
            timeout_seconds: r.timeout_seconds,
            force: false,
        };
        Ok(Response::new(self.move_server(p, m).await?))
    }

    async fn evacuate_server(
        &self,
        req: Request<pb::EvacuateServerRequest>,
    ) -> Result<Response<pb::OperationRef>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let m = MoveRequest {
            request_id: r.request_id,
            server: &r.server,
            host: &r.host,
            method: Method::Rebuild,
            block_migration: None,
            timeout_seconds: 0,
            force: r.force,
        };
        Ok(Response::new(self.move_server(p, m).await?))
    }
}

impl ServerApi {
    async fn snapshot(
        &self,
        p: Principal,
        request_id: String,
        server: &str,
        spec: SnapshotSpec,
    ) -> Result<Response<pb::ServerImageResponse>, Status> {
        validate::name("image", &spec.name).map_err(Status::invalid_argument)?;
        // The new image takes the operation's id, so a retried request finds both again.
        let op = spec.image_id.clone();
        let (_, op) = self
            .act(p, request_id, server, op, ServerRequest::Snapshot(spec))
            .await?;
        Ok(Response::new(pb::ServerImageResponse {
            operation_id: op.clone(),
            image_id: op,
        }))
    }
}

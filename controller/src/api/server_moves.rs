//! Moving one server (migrate, live migrate, evacuate) and whole hosts (evacuate, drain):
//! resolve, pick destinations with the scheduler when none is named, propose. Admin only, as in
//! Nova: where servers run is the operator's business.
use flotilla_proto::v1 as pb;
use tonic::Status;

use super::authz::{Action, Principal};
use super::move_duties::{plan, Method};
use super::{allow, new_id};
use crate::scheduler::AllocationRatios;
use crate::state::{
    Command, HostJob, MoveSpec, Outcome, ServerRequest, ServerStatus, State, DEFAULT_PARALLEL,
};

/// Live-migration deadline when the request gives none.
pub const DEFAULT_MIGRATION_TIMEOUT_SECS: u32 = 600;

/// What the caller asked for one server.
pub struct MoveRequest<'a> {
    pub request_id: String,
    pub server: &'a str,
    pub host: &'a str,
    pub method: Method,
    pub block_migration: Option<bool>,
    pub timeout_seconds: u32,
    pub force: bool,
}

impl super::servers::ServerApi {
    pub(super) async fn move_server(
        &self,
        p: Principal,
        m: MoveRequest<'_>,
    ) -> Result<pb::OperationRef, Status> {
        allow(&p, Action::ClusterAdmin, None)?;
        let host_id = {
            let state = self.api.read(false).await?;
            let s = super::servers::resolve(&state, &p, m.server)?;
            if m.host.is_empty() {
                if m.force {
                    return Err(Status::invalid_argument("--force needs --host"));
                }
                match plan(&state, &self.ratios, &[(s, m.method)], None).remove(0) {
                    Ok(h) => h,
                    Err(why) => {
                        return Err(Status::resource_exhausted(format!(
                            "no host can take server {:?}: {why}",
                            s.name
                        )))
                    }
                }
            } else {
                host_by_key(&state, m.host)?
            }
        };
        let spec = MoveSpec {
            host_id,
            live: m.method == Method::Live,
            block_migration: m.block_migration.unwrap_or(true),
            timeout_seconds: match m.timeout_seconds {
                0 => DEFAULT_MIGRATION_TIMEOUT_SECS,
                n => n,
            },
            force: m.force,
            parent_id: String::new(),
            ratios: self.ratios,
        };
        let request = match m.method {
            Method::Rebuild => ServerRequest::Evacuate(spec),
            _ => ServerRequest::Migrate(spec),
        };
        let (_, op) = self
            .request(p, m.request_id, m.server, new_id(), request)
            .await?;
        Ok(pb::OperationRef { operation_id: op })
    }
}

pub fn host_by_key(state: &State, key: &str) -> Result<String, Status> {
    state
        .host(key)
        .map(|h| h.id.clone())
        .ok_or_else(|| Status::not_found(format!("host {key:?} not found")))
}

/// What a host evacuation or drain asks for.
pub struct HostMove<'a> {
    pub request_id: String,
    pub host: &'a str,
    pub target_host: &'a str,
    pub live: bool,
    pub drain: bool,
    pub parallel: u32,
    pub dry_run: bool,
}

/// Plans (and unless a dry run, starts) a host evacuation or drain.
pub async fn move_host(
    api: &super::Api,
    ratios: &AllocationRatios,
    p: Principal,
    m: HostMove<'_>,
) -> Result<pb::EvacuateHostResponse, Status> {
    allow(&p, Action::ClusterAdmin, None)?;
    let job = HostJob {
        drain: m.drain,
        live: m.live,
        parallel: match m.parallel {
            0 => DEFAULT_PARALLEL,
            n => n,
        },
        target_host_id: String::new(),
        timeout_seconds: DEFAULT_MIGRATION_TIMEOUT_SECS,
        ratios: *ratios,
    };
    let (host_id, job, plan_entries) = {
        let state = api.read(false).await?;
        let host_id = host_by_key(&state, m.host)?;
        let target = match m.target_host {
            "" => None,
            key => Some(host_by_key(&state, key)?),
        };
        let servers: Vec<_> = state
            .servers_on(&host_id)
            .map(|s| {
                let method = Method::from_name(job.method(s.status));
                (s, method)
            })
            .collect();
        let destinations = plan(&state, ratios, &servers, target.as_deref());
        let entries: Vec<pb::HostPlanEntry> = servers
            .iter()
            .zip(destinations)
            .map(|((s, method), dest)| {
                let (destination, message) = match dest {
                    Ok(h) => (
                        state
                            .host(&h)
                            .map(|h| h.info.hostname.clone())
                            .unwrap_or_default(),
                        note(s.status),
                    ),
                    Err(why) => (String::new(), why),
                };
                pb::HostPlanEntry {
                    server_id: s.id.clone(),
                    server_name: s.name.clone(),
                    destination,
                    method: match method {
                        Method::Rebuild => "rebuild",
                        Method::Live => "live_migrate",
                        Method::Cold => "cold_migrate",
                    }
                    .into(),
                    message,
                }
            })
            .collect();
        let job = HostJob {
            target_host_id: target.unwrap_or_default(),
            ..job
        };
        (host_id, job, entries)
    };
    if m.dry_run {
        return Ok(pb::EvacuateHostResponse {
            operation_id: String::new(),
            plan: plan_entries,
        });
    }
    let cmd = Command::StartHostJob {
        operation_id: new_id(),
        host_id,
        job,
    };
    match api.propose(m.request_id, p.name, cmd).await? {
        Outcome::Operation(op) => Ok(pb::EvacuateHostResponse {
            operation_id: op.id.clone(),
            plan: plan_entries,
        }),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

fn note(status: ServerStatus) -> String {
    match status {
        ServerStatus::Error | ServerStatus::Build => {
            format!("the server is {}", status.as_str())
        }
        _ => String::new(),
    }
}

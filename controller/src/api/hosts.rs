//! HostService: hosts as their agents registered them, with up/down, enabled/disabled and
//! usage; admins enable, disable (with a reason) and force hosts down. Reading hosts is for
//! admins (host names and capacity are the operator's business, as in Nova).
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::host_service_server::HostService;
use tonic::{Request, Response, Status};

use super::agent_hub::AgentHub;
use super::authz::Action;
use super::server_moves::{move_host, HostMove};
use super::{allow, auth::principal, compute_convert as cc, page_size, paginate, required, Api};
use crate::state::{Command, Host, Outcome, State};

#[derive(Clone)]
pub struct HostApi {
    pub api: Api,
    pub hub: Arc<AgentHub>,
    pub ratios: crate::scheduler::AllocationRatios,
}

fn find<'s>(state: &'s State, key: &str) -> Result<&'s Host, Status> {
    required("host", key)?;
    state
        .host(key)
        .ok_or_else(|| Status::not_found(format!("host {key:?} not found")))
}

impl HostApi {
    fn view(&self, state: &State, h: &Host) -> pb::Host {
        let mut v = cc::host(state, h, crate::server::now_ms());
        if let Some(age) = self.hub.lease_age(&h.id).filter(|_| h.is_up()) {
            v.lease_age_ms = age.as_millis() as i64;
        }
        v
    }

    async fn change(
        &self,
        request_id: String,
        actor: String,
        cmd: Command,
    ) -> Result<Response<pb::Host>, Status> {
        match self.api.propose(request_id, actor, cmd).await? {
            Outcome::Host(h) => Ok(Response::new(self.view(&self.api.node.state(), &h))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl HostService for HostApi {
    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        let want = pb::HostState::try_from(r.state).unwrap_or_default();
        let state = self.api.read(r.stale).await?;
        let (page, next) = paginate(
            state.hosts_after(&r.page_token).filter(|h| {
                (want == pb::HostState::Unspecified || cc::host_state(h) == want)
                    && (r.availability_zone.is_empty()
                        || h.info.availability_zone == r.availability_zone)
                    && r.enabled.is_none_or(|e| h.enabled == e)
            }),
            page_size(r.page_size),
            |h| h.id.clone(),
        );
        Ok(Response::new(pb::ListHostsResponse {
            hosts: page.into_iter().map(|h| self.view(&state, h)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_host(
        &self,
        req: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let h = find(&state, &r.host)?;
        Ok(Response::new(self.view(&state, h)))
    }

    async fn enable_host(
        &self,
        req: Request<pb::EnableHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        required("host", &r.host)?;
        let cmd = Command::SetHostEnabled {
            host: r.host,
            enabled: true,
            reason: String::new(),
        };
        self.change(r.request_id, p.name, cmd).await
    }

    async fn disable_host(
        &self,
        req: Request<pb::DisableHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        required("host", &r.host)?;
        let cmd = Command::SetHostEnabled {
            host: r.host,
            enabled: false,
            reason: r.reason,
        };
        self.change(r.request_id, p.name, cmd).await
    }

    async fn set_host_force_down(
        &self,
        req: Request<pb::SetHostForceDownRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        required("host", &r.host)?;
        let cmd = Command::SetHostForcedDown {
            host: r.host,
            forced_down: r.forced_down,
        };
        self.change(r.request_id, p.name, cmd).await
    }

    async fn evacuate_host(
        &self,
        req: Request<pb::EvacuateHostRequest>,
    ) -> Result<Response<pb::EvacuateHostResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("host", &r.host)?;
        let m = HostMove {
            request_id: r.request_id,
            host: &r.host,
            target_host: &r.target_host,
            live: r.live,
            drain: false,
            parallel: r.parallel,
            dry_run: r.dry_run,
        };
        Ok(Response::new(
            move_host(&self.api, &self.ratios, p, m).await?,
        ))
    }

    async fn drain_host(
        &self,
        req: Request<pb::DrainHostRequest>,
    ) -> Result<Response<pb::EvacuateHostResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("host", &r.host)?;
        let m = HostMove {
            request_id: r.request_id,
            host: &r.host,
            target_host: "",
            live: r.live,
            drain: true,
            parallel: r.parallel,
            dry_run: r.dry_run,
        };
        Ok(Response::new(
            move_host(&self.api, &self.ratios, p, m).await?,
        ))
    }
}

//! AgentService on the peer listener: agent sessions (registration, heartbeats, desired state
//! pushed on every change, observed state and step results proposed as commands) and the image
//! stream agents fill their base image caches from.
use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_message::Msg as In;
use flotilla_proto::v1::agent_service_server::AgentService;
use flotilla_proto::v1::controller_message::Msg as Out;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use super::agent_hub::{AgentHub, LeaseSettings};
pub use super::desired::{desired_server, desired_state};
use super::{new_id, Api};
use crate::images::stream::read_chunks;
use crate::images::ImageRuntime;
use crate::state::{
    Command, HostRegistration, ImageStatus, ObservedServer, PowerState, Progress, AGENT_UPLOAD,
};

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ImageChunk, Status>> + Send>>;

#[derive(Clone)]
pub struct AgentApi {
    pub api: Api,
    pub images: Arc<ImageRuntime>,
    pub hub: Arc<AgentHub>,
    pub lease: LeaseSettings,
}

fn msg(m: Out) -> pb::ControllerMessage {
    pb::ControllerMessage { msg: Some(m) }
}

pub fn power_from_pb(p: i32) -> PowerState {
    match pb::ServerPowerState::try_from(p).unwrap_or_default() {
        pb::ServerPowerState::Running => PowerState::Running,
        pb::ServerPowerState::Paused | pb::ServerPowerState::Suspended => PowerState::Paused,
        pb::ServerPowerState::Shutdown => PowerState::Shutdown,
        pb::ServerPowerState::Crashed => PowerState::Crashed,
        pb::ServerPowerState::Unspecified => PowerState::NoState,
    }
}

/// The common name of a peer certificate (DER).
fn certificate_name(der: Option<&[u8]>) -> Result<String, Status> {
    let der = der.ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| Status::unauthenticated("the client certificate has no common name"))?;
    Ok(name.to_owned())
}

fn registration(r: &pb::AgentRegister) -> Result<HostRegistration, Status> {
    if r.hostname.trim().is_empty() {
        return Err(Status::invalid_argument("register: hostname is required"));
    }
    let c = r.capacity.unwrap_or_default();
    if c.vcpus == 0 || c.ram_mib == 0 {
        return Err(Status::invalid_argument(
            "register: capacity must have vcpus and ram_mib",
        ));
    }
    Ok(HostRegistration {
        hostname: r.hostname.clone(),
        address: r.address.clone(),
        tunnel_address: r.tunnel_address.clone(),
        availability_zone: if r.availability_zone.is_empty() {
            "nova".into()
        } else {
            r.availability_zone.clone()
        },
        hypervisor_type: r.hypervisor_type.clone(),
        hypervisor_version: r.hypervisor_version.clone(),
        cpu_model: r.cpu_model.clone(),
        agent_version: r.agent_version.clone(),
        capacity: crate::state::Capacity::new(u64::from(c.vcpus), c.ram_mib, c.disk_gib),
    })
}

impl AgentApi {
    /// Not the leader: UNAVAILABLE naming the leader's peer address when known.
    fn not_leader(&self) -> Status {
        let mut status = Status::unavailable("this controller is not the leader");
        let leader = self.api.node.status().leader_id;
        let addr = self
            .api
            .node
            .state()
            .member(leader)
            .map(|m| m.peer_address.clone());
        if let Some(v) = addr.and_then(|a| MetadataValue::try_from(a).ok()) {
            status
                .metadata_mut()
                .insert(flotilla_proto::LEADER_METADATA_KEY, v);
        }
        status
    }

    async fn inbound(
        self,
        host_id: String,
        lease_id: u64,
        tx: mpsc::Sender<pb::ControllerMessage>,
        mut stream: Streaming<pb::AgentMessage>,
    ) {
        let actor = format!("agent-{host_id}");
        // The wired ports last recorded in this session (proposed again only when they change).
        let mut wired: Option<Vec<String>> = None;
        while let Some(Ok(m)) = stream.next().await {
            match m.msg {
                Some(In::Heartbeat(hb)) => {
                    let fenced = self
                        .api
                        .node
                        .state()
                        .host(&host_id)
                        .is_some_and(|h| h.forced_down);
                    if fenced || hb.lease_id != lease_id || !self.hub.heartbeat(&host_id, lease_id)
                    {
                        let reason = if fenced {
                            "the host was forced down by an operator"
                        } else {
                            "the lease was superseded; register again"
                        };
                        let revoked = pb::LeaseRevoked {
                            reason: reason.into(),
                        };
                        let _ = tx.send(msg(Out::LeaseRevoked(revoked))).await;
                        break;
                    }
                    let renewed = pb::LeaseRenewed {
                        lease_id,
                        seq: hb.seq,
                    };
                    if tx.send(msg(Out::LeaseRenewed(renewed))).await.is_err() {
                        break;
                    }
                }
                Some(In::Observed(o)) => {
                    let servers = o
                        .servers
                        .iter()
                        .map(|s| ObservedServer {
                            id: s.id.clone(),
                            power: power_from_pb(s.state),
                            generation: s.placement_generation,
                            error: s.error.clone(),
                        })
                        .collect();
                    let cmd = Command::ServerObserved {
                        host_id: host_id.clone(),
                        lease_id,
                        servers,
                    };
                    if let Err(e) = self.api.propose(String::new(), actor.clone(), cmd).await {
                        tracing::debug!(host = %host_id, "an observed report was not applied: {}", e.message());
                    }
                    let mut ports = o.wired_ports;
                    ports.sort();
                    ports.dedup();
                    if wired.as_ref() != Some(&ports) {
                        let cmd = Command::PortsWired {
                            host_id: host_id.clone(),
                            lease_id,
                            port_ids: ports.clone(),
                        };
                        match self.api.propose(String::new(), actor.clone(), cmd).await {
                            Ok(_) => wired = Some(ports),
                            Err(e) => {
                                tracing::debug!(host = %host_id, "a wired-ports report was not applied: {}", e.message());
                            }
                        }
                    }
                }
                Some(In::StepResult(r)) if !r.finished => {
                    let Some(p) = r.progress else { continue };
                    let cmd = Command::OperationProgress {
                        operation_id: r.operation_id,
                        step: r.step,
                        progress: Progress {
                            phase: p.phase,
                            percent: p.percent.min(100),
                            bytes_done: p.bytes_done,
                            bytes_total: p.bytes_total,
                        },
                    };
                    if let Err(e) = self.api.propose(String::new(), actor.clone(), cmd).await {
                        tracing::debug!(host = %host_id, "a progress report was not applied: {}", e.message());
                    }
                }
                Some(In::StepResult(r)) => {
                    let cmd = if super::move_duties::is_migration_step(&r.step) {
                        Command::MigrationStep {
                            operation_id: r.operation_id,
                            step: r.step,
                            ok: r.ok,
                            message: r.message,
                        }
                    } else {
                        Command::OperationStepResult {
                            operation_id: r.operation_id,
                            ok: r.ok,
                            message: r.message,
                        }
                    };
                    if let Err(e) = self.api.propose(String::new(), actor.clone(), cmd).await {
                        tracing::debug!(host = %host_id, "a step result was not applied: {}", e.message());
                    }
                }
                Some(In::QueryResult(q)) => self.hub.answer(q),
                _ => {}
            }
        }
        self.hub.detach(&host_id, lease_id);
        tracing::info!(host = %host_id, "agent session ended");
    }

    /// Pushes the host's desired state whenever it changes.
    async fn push_desired(self, host_id: String, tx: mpsc::Sender<pb::ControllerMessage>) {
        let mut revisions = self.api.node.revisions();
        let mut last: Option<pb::DesiredState> = None;
        loop {
            let desired = desired_state(&self.api.node.state(), &host_id);
            // Sent again when anything but the revision differs (servers, their ports and
            // rules, networks, tunnel peers, floating IPs, remote ports).
            let same = last.as_ref().is_some_and(|l| {
                pb::DesiredState {
                    revision: l.revision,
                    ..desired.clone()
                } == *l
            });
            if !same {
                if tx
                    .send(msg(Out::DesiredState(desired.clone())))
                    .await
                    .is_err()
                {
                    return;
                }
                last = Some(desired);
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        if self.api.node.status().leader_id != self.api.node.id() {
            return Err(self.not_leader());
        }
        // With mutual TLS an agent may only register the host its certificate names.
        let cert_name = match req.peer_certs() {
            Some(certs) => Some(certificate_name(certs.first().map(|c| c.as_ref()))?),
            None => None,
        };
        let mut stream = req.into_inner();
        let register = match stream.next().await {
            Some(Ok(pb::AgentMessage {
                msg: Some(In::Register(r)),
            })) => r,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be `register`",
                ))
            }
        };
        let info = registration(&register)?;
        if let Some(name) = cert_name.filter(|n| *n != info.hostname) {
            return Err(Status::permission_denied(format!(
                "this agent's certificate names {name:?}, not {:?}: each host needs its own \
                 certificate (flotilla-controller gen-certs --node {})",
                info.hostname, info.hostname
            )));
        }
        let host_id = {
            let state = self.api.node.state();
            state
                .host(&info.hostname)
                .map(|h| h.id.clone())
                .unwrap_or_else(new_id)
        };
        let cmd = Command::RegisterHost {
            host_id: host_id.clone(),
            info,
        };
        let actor = format!("agent-{}", register.hostname);
        let host = match self.api.propose(String::new(), actor, cmd).await? {
            crate::state::Outcome::Host(h) => h,
            other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
        tracing::info!(host = %host.info.hostname, lease = host.lease_id, "agent registered");
        let (tx, rx) = mpsc::channel(64);
        let registered = pb::AgentRegistered {
            host_id: host.id.clone(),
            lease_id: host.lease_id,
            lease_ttl_ms: self.lease.ttl.as_millis() as u64,
            heartbeat_interval_ms: self.lease.heartbeat_interval.as_millis() as u64,
        };
        tx.send(msg(Out::Registered(registered)))
            .await
            .map_err(|_| Status::cancelled("the agent went away"))?;
        self.hub.attach(&host.id, host.lease_id, tx.clone());
        tokio::spawn(self.clone().push_desired(host.id.clone(), tx.clone()));
        tokio::spawn(
            self.clone()
                .inbound(host.id.clone(), host.lease_id, tx, stream),
        );
        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_image(
        &self,
        req: Request<pb::FetchImageRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = req.into_inner();
        let (image, members) = {
            let state = self.api.node.state();
            let image = state
                .image(&r.image_id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("image {:?} not found", r.image_id)))?;
            (image, state.members().cloned().collect::<Vec<_>>())
        };
        if image.status != ImageStatus::Active {
            return Err(Status::failed_precondition(format!(
                "image {} is {}",
                image.id,
                image.status.as_str()
            )));
        }
        if r.offset > image.size_bytes {
            return Err(Status::out_of_range("offset past the end of the image"));
        }
        self.images
            .ensure_local(self.api.node.id(), &members, &image.sha256)
            .await
            .map_err(Status::unavailable)?;
        let path = self
            .images
            .blobs
            .path_of(&image.sha256)
            .map_err(|e| Status::internal(e.to_string()))?;
        let (size, sha256) = (image.size_bytes, image.sha256.clone());
        let mut offset = r.offset;
        let mut first = true;
        let chunks = read_chunks(path, r.offset).map(move |c| {
            let data = c.map_err(|e| Status::internal(format!("reading the image: {e}")))?;
            let chunk = pb::ImageChunk {
                offset,
                size_bytes: if first { size } else { 0 },
                sha256: if first { sha256.clone() } else { String::new() },
                data,
            };
            first = false;
            offset += chunk.data.len() as u64;
            Ok(chunk)
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn upload_snapshot(
        &self,
        req: Request<Streaming<pb::UploadImageRequest>>,
    ) -> Result<Response<pb::Image>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.next().await.transpose()? {
            Some(pb::UploadImageRequest {
                data: Some(pb::upload_image_request::Data::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the header",
                ))
            }
        };
        let op_id = header.request_id.clone();
        let image = {
            let state = self.api.node.state();
            let image = state
                .image(&header.image)
                .filter(|i| {
                    i.upload
                        .as_ref()
                        .is_some_and(|u| u.id == op_id && u.controller_id == AGENT_UPLOAD)
                })
                .cloned();
            image.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "image {:?} is not waiting for the snapshot of operation {op_id:?}",
                    header.image
                ))
            })?
        };
        let images = super::ImageApi {
            api: self.api.clone(),
            runtime: self.images.clone(),
        };
        let (result, failure) =
            super::image_transfer::receive_started(&images, &image, &mut stream).await;
        let actor = format!("controller-{}", self.api.node.id());
        let finish = Command::FinishImageUpload {
            image_id: image.id.clone(),
            upload_id: op_id.clone(),
            result,
        };
        let finished = super::image_transfer::propose_persistently(
            &self.api,
            &format!("{op_id}:finish"),
            &actor,
            finish,
        )
        .await;
        let step = Command::OperationStepResult {
            operation_id: op_id.clone(),
            ok: failure.is_none() && finished.is_ok(),
            message: failure
                .as_ref()
                .map(|s| s.message().to_owned())
                .unwrap_or_default(),
        };
        super::image_transfer::propose_persistently(
            &self.api,
            &format!("{op_id}:step"),
            &actor,
            step,
        )
        .await?;
        if let Some(status) = failure {
            return Err(status);
        }
        match finished? {
            crate::state::Outcome::Image(i) => Ok(Response::new(super::convert::image(&i))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_name_is_its_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["compute-7".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "compute-7");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_name(Some(cert.der().as_ref())).unwrap(),
            "compute-7"
        );
        let err = certificate_name(Some(b"not a certificate")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(certificate_name(None).is_err());
    }
}

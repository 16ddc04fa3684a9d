//! An in-process fake controller serving `AgentService` on loopback, scripted by the tests: it
//! registers agents, pushes the desired state it is given, acknowledges heartbeats (or not),
//! records what agents report, streams images and takes snapshot uploads. Plus a deadline
//! poller; tests never sleep to synchronise.
#![allow(dead_code)] // Each test binary uses a different part.

pub mod e2e;
pub mod libvirtd;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_message::Msg as In;
use flotilla_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use flotilla_proto::v1::controller_message::Msg as Out;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// What the fake controller saw and is told to do.
#[derive(Default)]
pub struct Ctl {
    pub registrations: Vec<pb::AgentRegister>,
    /// Every observed report, in order.
    pub observed: Vec<pb::AgentObserved>,
    pub step_results: Vec<pb::AgentStepResult>,
    pub query_results: Vec<pb::AgentQueryResult>,
    pub heartbeats: u64,
    /// Acknowledge heartbeats (else the agent's lease runs out).
    pub ack_heartbeats: bool,
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub desired: Option<pb::DesiredState>,
    /// Images by id: content.
    pub images: HashMap<String, Vec<u8>>,
    pub fetches: Vec<(String, u64)>,
    /// Uploads: (header, content).
    pub uploads: Vec<(pb::UploadImageHeader, Vec<u8>)>,
    /// Act as a follower: refuse sessions with UNAVAILABLE naming this leader.
    pub leader: Option<String>,
    /// Sessions refused as a follower.
    pub refused: u32,
    session: Option<mpsc::Sender<pb::ControllerMessage>>,
    next_lease: u64,
}

#[derive(Clone)]
pub struct FakeController {
    pub ctl: Arc<Mutex<Ctl>>,
    pub address: String,
}

impl FakeController {
    /// Serves on 127.0.0.1 (a free port), acknowledging heartbeats with a 5 s lease.
    pub async fn start() -> FakeController {
        let ctl = Arc::new(Mutex::new(Ctl {
            ack_heartbeats: true,
            lease_ttl_ms: 5_000,
            heartbeat_interval_ms: 100,
            ..Ctl::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let svc = Svc { ctl: ctl.clone() };
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        FakeController {
            ctl,
            address: addr.to_string(),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Ctl) -> T) -> T {
        f(&mut self.ctl.lock().unwrap())
    }

    /// Adds an image; returns its sha256.
    pub fn add_image(&self, id: &str, content: Vec<u8>) -> String {
        let sha = hex::encode(Sha256::digest(&content));
        self.with(|c| c.images.insert(id.to_owned(), content));
        sha
    }

    /// Replaces the desired state and pushes it to the connected agent.
    pub async fn set_desired(&self, servers: Vec<pb::DesiredServer>) {
        let (msg, tx) = self.with(|c| {
            let revision = c.desired.as_ref().map_or(1, |d| d.revision + 1);
            let d = pb::DesiredState {
                revision,
                servers,
                ..Default::default()
            };
            c.desired = Some(d.clone());
            (d, c.session.clone())
        });
        if let Some(tx) = tx {
            let _ = tx
                .send(pb::ControllerMessage {
                    msg: Some(Out::DesiredState(msg)),
                })
                .await;
        }
    }

    /// Sends a message on the current session if one is open; whether it was.
    pub async fn try_send(&self, m: Out) -> bool {
        let Some(tx) = self.with(|c| c.session.clone()) else {
            return false;
        };
        tx.send(pb::ControllerMessage { msg: Some(m) })
            .await
            .is_ok()
    }

    /// Sends a message on the current session.
    pub async fn send(&self, m: Out) {
        let tx = self.with(|c| c.session.clone()).expect("an agent session");
        tx.send(pb::ControllerMessage { msg: Some(m) })
            .await
            .expect("session open");
    }

    /// The newest observed entry of `server_id`, if the newest report lists it.
    pub fn observed(&self, server_id: &str) -> Option<pb::ObservedServer> {
        self.with(|c| {
            c.observed
                .last()
                .and_then(|o| o.servers.iter().find(|s| s.id == server_id).cloned())
        })
    }

    /// Waits until `server_id` is reported RUNNING with `generation`.
    pub async fn wait_running(&self, server_id: &str, generation: u64) -> pb::ObservedServer {
        self.wait_state(server_id, generation, pb::ServerPowerState::Running)
            .await
    }

    pub async fn wait_state(
        &self,
        server_id: &str,
        generation: u64,
        state: pb::ServerPowerState,
    ) -> pb::ObservedServer {
        wait_for(Duration::from_secs(20), "the observed state", || async {
            match self.observed(server_id) {
                Some(o) if o.state() == state && o.placement_generation == generation => Ok(o),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// Waits for the step result of `operation_id` (the `n`-th, counting from 1).
    /// The `n`-th outcome (finished step result) of an operation; progress reports do not count.
    pub async fn wait_step(&self, operation_id: &str, n: usize) -> pb::AgentStepResult {
        wait_for(Duration::from_secs(20), "a step result", || async {
            let found: Vec<_> = self.with(|c| {
                c.step_results
                    .iter()
                    .filter(|r| r.operation_id == operation_id && r.finished)
                    .cloned()
                    .collect()
            });
            found
                .get(n - 1)
                .cloned()
                .ok_or(format!("{} results", found.len()))
        })
        .await
    }
}

struct Svc {
    ctl: Arc<Mutex<Ctl>>,
}

fn out(m: Out) -> pb::ControllerMessage {
    pb::ControllerMessage { msg: Some(m) }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Svc {
    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<BoxStream<pb::ControllerMessage>>, Status> {
        {
            let mut c = self.ctl.lock().unwrap();
            if let Some(leader) = c.leader.clone() {
                c.refused += 1;
                let mut status = Status::unavailable("this controller is not the leader");
                status
                    .metadata_mut()
                    .insert(flotilla_proto::LEADER_METADATA_KEY, leader.parse().unwrap());
                return Err(status);
            }
        }
        let mut stream = req.into_inner();
        let Some(Ok(pb::AgentMessage {
            msg: Some(In::Register(reg)),
        })) = stream.next().await
        else {
            return Err(Status::invalid_argument("register first"));
        };
        let (tx, rx) = mpsc::channel(64);
        let (lease_id, registered, desired) = {
            let mut c = self.ctl.lock().unwrap();
            c.next_lease += 1;
            c.registrations.push(reg);
            c.session = Some(tx.clone());
            let registered = pb::AgentRegistered {
                host_id: "host-1".into(),
                lease_id: c.next_lease,
                lease_ttl_ms: c.lease_ttl_ms,
                heartbeat_interval_ms: c.heartbeat_interval_ms,
            };
            (c.next_lease, registered, c.desired.clone())
        };
        tx.send(out(Out::Registered(registered))).await.unwrap();
        if let Some(d) = desired {
            tx.send(out(Out::DesiredState(d))).await.unwrap();
        }
        let ctl = self.ctl.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let reply = {
                    let mut c = ctl.lock().unwrap();
                    match m.msg {
                        Some(In::Heartbeat(hb)) => {
                            c.heartbeats += 1;
                            (c.ack_heartbeats && hb.lease_id == lease_id).then_some(
                                Out::LeaseRenewed(pb::LeaseRenewed {
                                    lease_id,
                                    seq: hb.seq,
                                }),
                            )
                        }
                        Some(In::Observed(o)) => {
                            c.observed.push(o);
                            None
                        }
                        Some(In::StepResult(r)) => {
                            c.step_results.push(r);
                            None
                        }
                        Some(In::QueryResult(q)) => {
                            c.query_results.push(q);
                            None
                        }
                        _ => None,
                    }
                };
                if let Some(r) = reply {
                    if tx.send(out(r)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }

    async fn fetch_image(
        &self,
        req: Request<pb::FetchImageRequest>,
    ) -> Result<Response<BoxStream<pb::ImageChunk>>, Status> {
        let r = req.into_inner();
        let content = {
            let mut c = self.ctl.lock().unwrap();
            c.fetches.push((r.image_id.clone(), r.offset));
            c.images.get(&r.image_id).cloned()
        }
        .ok_or_else(|| Status::not_found("no such image"))?;
        let size = content.len() as u64;
        let sha = hex::encode(Sha256::digest(&content));
        let chunks: Vec<Result<pb::ImageChunk, Status>> = content
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, data)| {
                Ok(pb::ImageChunk {
                    offset: (i * (64 << 10)) as u64,
                    data: data.to_vec(),
                    size_bytes: if i == 0 { size } else { 0 },
                    sha256: if i == 0 { sha.clone() } else { String::new() },
                })
            })
            .skip_while(|c| {
                c.as_ref()
                    .is_ok_and(|c| c.offset + c.data.len() as u64 <= r.offset)
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn upload_snapshot(
        &self,
        req: Request<Streaming<pb::UploadImageRequest>>,
    ) -> Result<Response<pb::Image>, Status> {
        let mut stream = req.into_inner();
        let Some(Ok(pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Header(header)),
        })) = stream.next().await
        else {
            return Err(Status::invalid_argument("header first"));
        };
        let mut content = Vec::new();
        while let Some(m) = stream.next().await {
            match m?.data {
                Some(pb::upload_image_request::Data::Chunk(c)) => content.extend(c),
                _ => return Err(Status::invalid_argument("chunks after the header")),
            }
        }
        let image = pb::Image {
            id: header.image.clone(),
            size_bytes: content.len() as u64,
            status: pb::ImageStatus::Active as i32,
            ..Default::default()
        };
        self.ctl.lock().unwrap().uploads.push((header, content));
        Ok(Response::new(image))
    }
}

/// Polls `probe` until it returns `Ok`, failing the test after `within` with what it last saw.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last seen: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

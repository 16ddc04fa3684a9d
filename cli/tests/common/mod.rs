//! Fake controllers on loopback ports: a scriptable IdentityService and an EventService that
//! breaks its first stream. Every call is recorded; tests wait on the records with deadlines.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_proto::v1::event_service_server::{EventService, EventServiceServer};
use flotilla_proto::v1::identity_service_server::{IdentityService, IdentityServiceServer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Upper bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How the fake answers every identity call.
#[derive(Debug, Clone)]
pub enum Mode {
    Answer,
    /// UNAVAILABLE, with `x-flotilla-leader` set when given.
    Unavailable {
        leader: Option<String>,
    },
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub request_id: String,
    pub authorization: Option<String>,
    pub from_revision: u64,
}

#[derive(Clone)]
pub struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    changed: Arc<watch::Sender<usize>>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            calls: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn record<T>(&self, method: &'static str, request: &Request<T>, request_id: &str, from: u64) {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut calls = self.calls.lock().unwrap();
        calls.push(Call {
            method,
            request_id: request_id.to_string(),
            authorization,
            from_revision: from,
        });
        self.changed.send_replace(calls.len());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (with [`DEADLINE`]) until at least `n` calls were recorded.
    pub async fn wait_for_calls(&self, n: usize) -> Vec<Call> {
        let mut rx = self.changed.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|len| *len >= n))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {n} calls: {:?}", self.calls()))
            .expect("recorder alive");
        self.calls()
    }
}

struct FakeIdentity {
    mode: Mode,
    rec: Recorder,
}

impl FakeIdentity {
    fn answer<T>(&self, value: T) -> Result<Response<T>, Status> {
        match &self.mode {
            Mode::Answer => Ok(Response::new(value)),
            Mode::NotFound => Err(Status::not_found("project \"x\" not found")),
            Mode::Unavailable { leader } => {
                let mut status = Status::unavailable("not the leader");
                if let Some(leader) = leader {
                    status.metadata_mut().insert(
                        flotilla_proto::LEADER_METADATA_KEY,
                        leader.parse().expect("ascii address"),
                    );
                }
                Err(status)
            }
        }
    }
}

fn project(name: &str) -> v1::Project {
    v1::Project {
        id: format!("id-{name}"),
        name: name.to_string(),
        enabled: true,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl IdentityService for FakeIdentity {
    async fn create_project(
        &self,
        request: Request<v1::CreateProjectRequest>,
    ) -> Result<Response<v1::Project>, Status> {
        let rid = request.get_ref().request_id.clone();
        self.rec.record("create_project", &request, &rid, 0);
        let r = request.into_inner();
        let mut p = project(&r.name);
        p.description = r.description;
        p.enabled = r.enabled.unwrap_or(true);
        p.properties = r.properties;
        self.answer(p)
    }

    async fn get_project(
        &self,
        request: Request<v1::GetProjectRequest>,
    ) -> Result<Response<v1::Project>, Status> {
        self.rec.record("get_project", &request, "", 0);
        self.answer(project(&request.into_inner().project))
    }

    /// Three pages: "" → p1 p2, "t1" → p3, "t2" → p4.
    async fn list_projects(
        &self,
        request: Request<v1::ListProjectsRequest>,
    ) -> Result<Response<v1::ListProjectsResponse>, Status> {
        self.rec.record("list_projects", &request, "", 0);
        let (names, next): (&[&str], &str) = match request.get_ref().page_token.as_str() {
            "" => (&["p1", "p2"], "t1"),
            "t1" => (&["p3"], "t2"),
            "t2" => (&["p4"], ""),
            other => return Err(Status::invalid_argument(format!("bad token {other}"))),
        };
        self.answer(v1::ListProjectsResponse {
            projects: names.iter().map(|n| project(n)).collect(),
            next_page_token: next.to_string(),
        })
    }

    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::Token>, Status> {
        self.rec.record("login", &request, "", 0);
        let r = request.into_inner();
        if r.password != "s3cret-pass" {
            return Err(Status::unauthenticated("invalid user name or password"));
        }
        self.answer(v1::Token {
            token: format!("flt1.{}.sig", r.user),
            token_id: "tid-1".into(),
            user_id: format!("id-{}", r.user),
            project_id: r.project,
            expires_at_ms: 1_700_000_000_000,
            roles: vec!["member".into()],
        })
    }

    async fn delete_project(
        &self,
        request: Request<v1::DeleteProjectRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let rid = request.get_ref().request_id.clone();
        self.rec.record("delete_project", &request, &rid, 0);
        if request.get_ref().project == "missing" {
            return Err(Status::not_found("project \"missing\" not found"));
        }
        self.answer(v1::Empty {})
    }
}

/// First stream: events 1 and 2, then UNAVAILABLE. Later streams: the next event, then nothing
/// (the stream stays open).
struct FakeEvents {
    rec: Recorder,
}

fn event(revision: u64) -> v1::Event {
    v1::Event {
        revision,
        time_ms: 1_714_564_800_000 + revision as i64,
        resource_type: "project".into(),
        resource_id: format!("id-{revision}"),
        resource_name: format!("p{revision}"),
        action: v1::EventAction::Created as i32,
        ..Default::default()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for FakeEvents {
    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let from = request.get_ref().from_revision;
        let first = self.rec.calls().is_empty();
        self.rec.record("watch_events", &request, "", from);
        let stream: EventStream = if first {
            Box::pin(tokio_stream::iter(vec![
                Ok(event(from + 1)),
                Ok(event(from + 2)),
                Err(Status::unavailable("controller shutting down")),
            ]))
        } else {
            Box::pin(tokio_stream::iter(vec![Ok(event(from + 1))]).chain(tokio_stream::pending()))
        };
        Ok(Response::new(stream))
    }
}

/// A fake controller on a loopback port; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub rec: Recorder,
    _stop: oneshot::Sender<()>,
}

impl FakeServer {
    pub async fn start(mode: Mode) -> FakeServer {
        Self::start_with(mode, None).await
    }

    /// Serves TLS with `identity`; with `client_ca`, clients must present a certificate it
    /// signed.
    pub async fn start_tls(
        mode: Mode,
        identity: tonic::transport::Identity,
        client_ca: Option<tonic::transport::Certificate>,
    ) -> FakeServer {
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(ca);
        }
        Self::start_with(mode, Some(tls)).await
    }

    async fn start_with(mode: Mode, tls: Option<tonic::transport::ServerTlsConfig>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rec = Recorder::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let identity = FakeIdentity {
            mode,
            rec: rec.clone(),
        };
        let events = FakeEvents { rec: rec.clone() };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("server TLS config");
        }
        tokio::spawn(
            builder
                .add_service(IdentityServiceServer::new(identity))
                .add_service(EventServiceServer::new(events))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        FakeServer {
            addr,
            rec,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

/// A loopback address where nothing listens (connections are refused).
pub async fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

//! The load generator shared by both targets: N closed-loop clients, each writing one small
//! value at a time and waiting for the acknowledgement before the next. A failed attempt is
//! retried (Flotilla: same request id; etcd: the same key and value, which a Put makes
//! idempotent), on the leader named by `x-flotilla-leader` when given, else on the next member.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_proto::v1 as fpb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cluster::{channel, Cluster, Kind};
use crate::etcdpb;

/// Where clients send their writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connect {
    /// Every client starts on the current leader.
    Leader,
    /// Client i starts on member i mod 3 (followers forward to the leader).
    All,
}

impl Connect {
    pub fn name(self) -> &'static str {
        match self {
            Connect::Leader => "leader",
            Connect::All => "all",
        }
    }
}

#[derive(Clone)]
enum Stubs {
    Flotilla {
        /// `[member][connection]`
        clients: Vec<Vec<fpb::identity_service_client::IdentityServiceClient<Channel>>>,
        auth: MetadataValue<Ascii>,
    },
    Etcd {
        clients: Vec<Vec<etcdpb::kv_client::KvClient<Channel>>>,
    },
}

/// Connections to every member (a few HTTP/2 connections per member, shared by the clients).
#[derive(Clone)]
pub struct Api {
    stubs: Stubs,
    addrs: Arc<Vec<String>>,
    conns: usize,
}

pub struct Failure {
    pub leader_hint: Option<usize>,
    /// gRPC code and message (for the error tally).
    pub what: String,
    /// False for answers a retry cannot change (the write is abandoned).
    pub retryable: bool,
}

fn retryable(code: tonic::Code) -> bool {
    !matches!(
        code,
        tonic::Code::AlreadyExists
            | tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unimplemented
    )
}

impl Api {
    pub fn new(cluster: &Cluster, conns: usize) -> Result<Api> {
        let addrs: Vec<String> = cluster
            .members
            .iter()
            .map(|m| m.client_addr.clone())
            .collect();
        let conns = conns.max(1);
        let mut chans = Vec::new();
        for a in &addrs {
            let mut v = Vec::new();
            for _ in 0..conns {
                v.push(channel(a)?);
            }
            chans.push(v);
        }
        let stubs = match cluster.kind {
            Kind::Flotilla => Stubs::Flotilla {
                clients: chans
                    .into_iter()
                    .map(|v| {
                        v.into_iter()
                            .map(fpb::identity_service_client::IdentityServiceClient::new)
                            .collect()
                    })
                    .collect(),
                auth: cluster.flotilla_auth()?,
            },
            Kind::Etcd => Stubs::Etcd {
                clients: chans
                    .into_iter()
                    .map(|v| {
                        v.into_iter()
                            .map(etcdpb::kv_client::KvClient::new)
                            .collect()
                    })
                    .collect(),
            },
        };
        Ok(Api {
            stubs,
            addrs: Arc::new(addrs),
            conns,
        })
    }

    pub fn members(&self) -> usize {
        self.addrs.len()
    }

    /// One attempt of one write. `key` is the etcd key and the Flotilla project name; `value`
    /// is the etcd value and the project description.
    pub async fn write(
        &self,
        member: usize,
        conn: usize,
        key: &str,
        request_id: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let conn = conn % self.conns;
        match &self.stubs {
            Stubs::Flotilla { clients, auth } => {
                let mut c = clients[member][conn].clone();
                let mut req = tonic::Request::new(fpb::CreateProjectRequest {
                    request_id: request_id.to_owned(),
                    name: key.to_owned(),
                    description: value.to_owned(),
                    enabled: None,
                    properties: Default::default(),
                });
                req.metadata_mut().insert("authorization", auth.clone());
                req.set_timeout(timeout);
                match tokio::time::timeout(timeout, c.create_project(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => {
                        let hint = status
                            .metadata()
                            .get(flotilla_proto::LEADER_METADATA_KEY)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|a| self.addrs.iter().position(|x| x == a));
                        Err(Failure {
                            leader_hint: hint,
                            what: format!("{:?}: {}", status.code(), status.message()),
                            retryable: retryable(status.code()),
                        })
                    }
                    Err(_) => Err(Failure {
                        leader_hint: None,
                        what: "client deadline".into(),
                        retryable: true,
                    }),
                }
            }
            Stubs::Etcd { clients } => {
                let mut c = clients[member][conn].clone();
                let mut req = tonic::Request::new(etcdpb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                });
                req.set_timeout(timeout);
                match tokio::time::timeout(timeout, c.put(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(Failure {
                        leader_hint: None,
                        what: format!("{:?}: {}", status.code(), status.message()),
                        retryable: retryable(status.code()),
                    }),
                    Err(_) => Err(Failure {
                        leader_hint: None,
                        what: "client deadline".into(),
                        retryable: true,
                    }),
                }
            }
        }
    }
}

/// One acknowledged write.
#[derive(Clone, Copy)]
pub struct Ack {
    /// When its first attempt was sent.
    pub first_sent: Instant,
    /// When its successful attempt was sent.
    pub last_sent: Instant,
    pub acked: Instant,
}

#[derive(Default)]
pub struct ClientLog {
    pub acks: Vec<Ack>,
    /// When each failed attempt failed.
    pub errors: Vec<Instant>,
    /// Writes abandoned after `max_attempts` failures.
    pub abandoned: u64,
    /// Failed attempts by kind (first 120 characters of code and message).
    pub kinds: std::collections::BTreeMap<String, u64>,
}

pub struct LoadSpec {
    pub clients: usize,
    pub connect: Connect,
    /// The member clients start on in `Connect::Leader` mode.
    pub leader: usize,
    /// Clients send no new write after this instant.
    pub stop_at: Instant,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub value: Arc<str>,
    /// Makes keys unique across runs on the same cluster.
    pub tag: String,
}

/// Runs the clients until `stop_at` and returns what each observed.
pub async fn run(api: &Api, spec: &LoadSpec) -> Vec<ClientLog> {
    let mut tasks = Vec::with_capacity(spec.clients);
    for client in 0..spec.clients {
        let api = api.clone();
        let value = spec.value.clone();
        let tag = spec.tag.clone();
        let (stop_at, timeout, max_attempts) =
            (spec.stop_at, spec.request_timeout, spec.max_attempts);
        let members = api.members();
        let mut member = match spec.connect {
            Connect::Leader => spec.leader,
            Connect::All => client % members,
        };
        tasks.push(tokio::spawn(async move {
            let mut log = ClientLog::default();
            let mut n: u64 = 0;
            // Bounded: a client stops at `stop_at`; each write at `max_attempts`.
            while Instant::now() < stop_at {
                n += 1;
                let key = format!("b-{tag}-{client}-{n}");
                let request_id = uuid::Uuid::new_v4().to_string();
                let first_sent = Instant::now();
                let mut done = false;
                let give_up_at = stop_at + Duration::from_secs(5);
                for _ in 0..max_attempts {
                    let sent = Instant::now();
                    if sent > give_up_at {
                        break;
                    }
                    match api
                        .write(member, client, &key, &request_id, &value, timeout)
                        .await
                    {
                        Ok(()) => {
                            log.acks.push(Ack {
                                first_sent,
                                last_sent: sent,
                                acked: Instant::now(),
                            });
                            done = true;
                            break;
                        }
                        Err(f) => {
                            log.errors.push(Instant::now());
                            let what: String = f.what.chars().take(120).collect();
                            *log.kinds.entry(what).or_default() += 1;
                            if !f.retryable {
                                break;
                            }
                            member = f.leader_hint.unwrap_or((member + 1) % members);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                if !done {
                    log.abandoned += 1;
                }
            }
            log
        }));
    }
    let mut logs = Vec::with_capacity(tasks.len());
    for t in tasks {
        logs.push(t.await.unwrap_or_default());
    }
    logs
}

/// Failed attempts of all clients by kind, most frequent first.
pub fn error_kinds(logs: &[ClientLog]) -> Vec<(String, u64)> {
    let mut all: std::collections::BTreeMap<String, u64> = Default::default();
    for l in logs {
        for (k, n) in &l.kinds {
            *all.entry(k.clone()).or_default() += n;
        }
    }
    let mut v: Vec<(String, u64)> = all.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

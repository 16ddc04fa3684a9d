//! `flotilla-bench placement`: scheduling throughput with many hosts. Starts the 3-controller
//! cluster, connects N simulated agents (real AgentService sessions over gRPC: register,
//! heartbeats, desired state in, observed state out — they "boot" what they are given at once),
//! then creates servers one per request from C concurrent clients and measures placements
//! committed per second and request-to-placed latency (CreateServer returns once the placement
//! and the quota admission are committed).
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_message::Msg as In;
use flotilla_proto::v1::controller_message::Msg as Out;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cluster::{channel, Cluster};

pub struct PlacementSpec {
    pub hosts: usize,
    pub servers: usize,
    pub clients: usize,
}

pub struct PlacementReport {
    pub hosts: usize,
    pub servers: usize,
    pub clients: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub registration_seconds: f64,
    pub failures: u64,
    pub first_failure: String,
}

pub(crate) fn authed<T>(msg: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

/// One simulated agent with the capacity of a big compute host.
async fn agent(name: String, peers: Vec<String>, registered: mpsc::Sender<()>) {
    sim_agent(name, peers, registered, 64).await
}

/// One simulated agent: registers, heartbeats, and reports every desired server as running
/// (a server being migrated in is left to the migration, as a real agent does).
pub(crate) async fn sim_agent(
    name: String,
    peers: Vec<String>,
    registered: mpsc::Sender<()>,
    vcpus: u32,
) {
    let mut next = 0usize;
    let mut told = false;
    loop {
        let address = peers[next % peers.len()].clone();
        next += 1;
        let (tx, rx) = mpsc::channel(8);
        let register = pb::AgentMessage {
            msg: Some(In::Register(pb::AgentRegister {
                hostname: name.clone(),
                address: "127.0.0.1".into(),
                capacity: Some(pb::HostCapacity {
                    vcpus,
                    ram_mib: 4096 * vcpus as u64,
                    disk_gib: 32 * vcpus as u64,
                }),
                hypervisor_type: "qemu".into(),
                hypervisor_version: "bench".into(),
                availability_zone: "nova".into(),
                agent_version: "bench".into(),
                ..Default::default()
            })),
        };
        if tx.send(register).await.is_err() {
            continue;
        }
        let Ok(ch) = channel(&address) else { continue };
        let mut client = pb::agent_service_client::AgentServiceClient::new(ch);
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut lease = 0;
        let mut seq = 0;
        let mut beat = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                m = inbound.next() => {
                    let Some(Ok(m)) = m else { break };
                    match m.msg {
                        Some(Out::Registered(r)) => {
                            lease = r.lease_id;
                            let period = Duration::from_millis(r.heartbeat_interval_ms.max(100));
                            beat = tokio::time::interval(period);
                            if !told {
                                told = true;
                                let _ = registered.send(()).await;
                            }
                        }
                        Some(Out::DesiredState(d)) => {
                            let servers = d.servers.iter().filter(|s| !s.incoming_migration).map(|s| pb::ObservedServer {
                                id: s.id.clone(),
                                state: s.power_state,
                                placement_generation: s.placement_generation,
                                ..Default::default()
                            }).collect();
                            let o = pb::AgentObserved {
                                desired_revision: d.revision,
                                servers,
                                wired_ports: Vec::new(),
                            };
                            if tx.send(pb::AgentMessage { msg: Some(In::Observed(o)) }).await.is_err() { break; }
                        }
                        _ => {}
                    }
                }
                _ = beat.tick() => {
                    if lease == 0 { continue; }
                    seq += 1;
                    let hb = pb::AgentHeartbeat { lease_id: lease, seq };
                    if tx.send(pb::AgentMessage { msg: Some(In::Heartbeat(hb)) }).await.is_err() { break; }
                }
            }
        }
    }
}

/// A project-scoped admin token, a flavor, an image and unlimited quota for the `admin` project.
pub(crate) async fn prepare(cluster: &Cluster, ch: Channel) -> Result<MetadataValue<Ascii>> {
    let admin = cluster.flotilla_auth()?;
    let login = pb::LoginRequest {
        user: "admin".into(),
        password: crate::cluster::FLOTILLA_ADMIN_PASSWORD.into(),
        project: "admin".into(),
    };
    let token = pb::identity_service_client::IdentityServiceClient::new(ch.clone())
        .login(login)
        .await
        .context("project-scoped login")?
        .into_inner()
        .token;
    let auth: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    let quota = pb::SetQuotaRequest {
        project: "admin".into(),
        instances: Some(-1),
        vcpus: Some(-1),
        ram_mib: Some(-1),
        disk_gib: Some(-1),
        ..Default::default()
    };
    pb::quota_service_client::QuotaServiceClient::new(ch.clone())
        .set_quota(authed(quota, &admin))
        .await
        .context("quota")?;
    let flavor = pb::CreateFlavorRequest {
        name: "bench".into(),
        vcpus: 1,
        ram_mib: 512,
        disk_gib: 1,
        ..Default::default()
    };
    pb::flavor_service_client::FlavorServiceClient::new(ch.clone())
        .create_flavor(authed(flavor, &admin))
        .await
        .context("flavor")?;
    let mut images = pb::image_service_client::ImageServiceClient::new(ch);
    let image = images
        .create_image(authed(
            pb::CreateImageRequest {
                name: "bench".into(),
                disk_format: pb::ImageDiskFormat::Raw as i32,
                ..Default::default()
            },
            &auth,
        ))
        .await
        .context("image")?
        .into_inner();
    let content: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    let msgs = vec![
        pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Header(
                pb::UploadImageHeader {
                    image: image.id,
                    size_bytes: content.len() as u64,
                    ..Default::default()
                },
            )),
        },
        pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Chunk(content)),
        },
    ];
    images
        .upload_image(authed(tokio_stream::iter(msgs), &auth))
        .await
        .context("upload")?;
    Ok(auth)
}

pub async fn run(
    cluster: &mut Cluster,
    peers: Vec<String>,
    spec: &PlacementSpec,
) -> Result<PlacementReport> {
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("leader")?;
    let ch = channel(&cluster.members[leader].client_addr)?;
    let auth = prepare(cluster, ch.clone()).await?;

    let started = Instant::now();
    let (reg_tx, mut reg_rx) = mpsc::channel(spec.hosts);
    for i in 0..spec.hosts {
        tokio::spawn(agent(
            format!("bench-host-{i:04}"),
            peers.clone(),
            reg_tx.clone(),
        ));
    }
    for _ in 0..spec.hosts {
        tokio::time::timeout(Duration::from_secs(120), reg_rx.recv())
            .await
            .context("agents registering")?;
    }
    let registration_seconds = started.elapsed().as_secs_f64();

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.clients {
        let (ch, auth, next) = (ch.clone(), auth.clone(), next.clone());
        let total = spec.servers;
        tasks.push(tokio::spawn(async move {
            let mut client = pb::server_service_client::ServerServiceClient::new(ch);
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut failures = (0u64, String::new());
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let req = pb::CreateServerRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    name: format!("vm-{i}"),
                    flavor: "bench".into(),
                    image: "bench".into(),
                    ..Default::default()
                };
                let sent = Instant::now();
                match client.create_server(authed(req, &auth)).await {
                    Ok(_) => hist
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("record"),
                    Err(e) => {
                        failures.0 += 1;
                        if failures.1.is_empty() {
                            failures.1 = e.to_string();
                        }
                    }
                }
            }
            (hist, failures)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut failures = 0;
    let mut first_failure = String::new();
    for t in tasks {
        let (h, (n, msg)) = t.await?;
        all.add(h)?;
        failures += n;
        if first_failure.is_empty() {
            first_failure = msg;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    if all.is_empty() {
        bail!("no server was placed: {first_failure}");
    }
    Ok(PlacementReport {
        hosts: spec.hosts,
        servers: spec.servers,
        clients: spec.clients,
        seconds,
        per_second: all.len() as f64 / seconds,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: all.max() as f64 / 1000.0,
        registration_seconds,
        failures,
        first_failure,
    })
}

#[derive(clap::Args)]
pub struct PlacementArgs {
    #[command(flatten)]
    cluster: crate::FlotillaArgs,
    /// Simulated agent hosts.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Servers to create, one per request.
    #[arg(long, default_value_t = 10_000)]
    servers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
}

pub async fn main(a: PlacementArgs) -> Result<()> {
    let o = a.cluster.clone();
    let (mut c, _) = o.start().await?;
    let peers: Vec<String> = (1..=3u16)
        .map(|i| format!("127.0.0.1:{}", o.flotilla_port_base + 100 + i))
        .collect();
    let spec = PlacementSpec {
        hosts: a.hosts,
        servers: a.servers,
        clients: a.clients,
    };
    let r = run(&mut c, peers, &spec).await?;
    let report = serde_json::json!({
        "hosts": r.hosts, "servers": r.servers, "clients": r.clients,
        "seconds": r.seconds, "placements_per_second": r.per_second,
        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
        "registration_seconds": r.registration_seconds,
        "failures": r.failures, "first_failure": r.first_failure,
    });
    if o.json {
        println!("{report}");
    } else {
        println!(
            "{} hosts registered in {:.1} s; {} servers by {} clients in {:.1} s: {:.0} placements/s, \
             request-to-placed p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} failures{}",
            r.hosts, r.registration_seconds, r.servers, r.clients, r.seconds, r.per_second,
            r.p50_ms, r.p99_ms, r.max_ms, r.failures,
            if r.first_failure.is_empty() { String::new() } else { format!(" (first: {})", r.first_failure) }
        );
    }
    Ok(())
}

//! `auth`: what authentication costs. Login latency and rate (IdentityService/Login with the
//! `admin` user's password: argon2id verification, expensive on purpose, plus two linearizable
//! reads and signing a token), and the latency and rate of token-authorized reads
//! (IdentityService/GetProject of the `admin` project and ImageService/ListImages), each
//! linearizable (a ReadIndex round with the leader) and with `stale: true` (the local state).
//!
//! The clients send to the leader, to one follower (whose linearizable reads wait for a
//! ReadIndex round with the leader) or spread over all members (`--connect`). For each client
//! count and each kind of request, C closed-loop clients share a fixed number of requests:
//! first a warm-up tenth (not counted), then `--requests` (`--login-requests` for logins)
//! measured. Latency is per request, into an HDR histogram in µs; the rate is the measured
//! requests that succeeded divided by the wall time of the measured part. Only
//! successful logins are sent, so the per-controller throttle (5 failures per user and minute)
//! never triggers. With `--busy-retries N`, a measurement during which other processes used
//! more than `--max-other` cores is thrown away and taken again (at most N times; the table
//! says which attempt it shows).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use flotilla_proto::v1 as fpb;
use fpb::identity_service_client::IdentityServiceClient;
use fpb::image_service_client::ImageServiceClient;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cluster::{channel, Cluster, FLOTILLA_ADMIN_PASSWORD};
use crate::{cpu, machine_note, ms, FlotillaArgs};

#[derive(Args)]
pub struct AuthArgs {
    #[command(flatten)]
    cluster: FlotillaArgs,
    /// Measured requests per kind of read and client count (plus a tenth of warm-up).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Measured logins per client count (plus a tenth of warm-up).
    #[arg(long, default_value_t = 400)]
    login_requests: usize,
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    clients: Vec<usize>,
    /// Which controller(s) the clients send to.
    #[arg(long, value_enum, default_value = "leader")]
    connect: Connect,
    /// HTTP/2 connections per member, shared by the clients (client i uses connection i mod N).
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Images (metadata only, QUEUED) created in the `admin` project, so that ListImages
    /// returns that many.
    #[arg(long, default_value_t = 20)]
    images: usize,
    /// Measure a row again (at most --busy-retries times) when processes other than the
    /// cluster and the benchmark used more than this many cores during it.
    #[arg(long, default_value_t = 0.25)]
    max_other: f64,
    #[arg(long, default_value_t = 0)]
    busy_retries: usize,
    /// Deadline of one request, ms.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Connect {
    /// Every client sends to the leader.
    Leader,
    /// Every client sends to the same follower (the member after the leader).
    Follower,
    /// Client i sends to member i mod 3.
    All,
}

impl Connect {
    fn name(self) -> &'static str {
        match self {
            Connect::Leader => "leader",
            Connect::Follower => "follower",
            Connect::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Login,
    GetProject { stale: bool },
    ListImages { stale: bool },
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Login,
        Op::GetProject { stale: false },
        Op::GetProject { stale: true },
        Op::ListImages { stale: false },
        Op::ListImages { stale: true },
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Login => "Login",
            Op::GetProject { stale: false } => "GetProject (linearizable)",
            Op::GetProject { stale: true } => "GetProject (stale)",
            Op::ListImages { stale: false } => "ListImages (linearizable)",
            Op::ListImages { stale: true } => "ListImages (stale)",
        }
    }
}

fn with_auth<T>(msg: T, auth: &MetadataValue<Ascii>, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", auth.clone());
    req.set_timeout(timeout);
    req
}

/// One request of kind `op`.
async fn call(
    op: Op,
    chan: Channel,
    auth: &MetadataValue<Ascii>,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    match op {
        Op::Login => {
            let mut req = tonic::Request::new(fpb::LoginRequest {
                user: "admin".into(),
                password: FLOTILLA_ADMIN_PASSWORD.into(),
                project: String::new(),
            });
            req.set_timeout(timeout);
            IdentityServiceClient::new(chan).login(req).await?;
        }
        Op::GetProject { stale } => {
            let r = fpb::GetProjectRequest {
                project: "admin".into(),
                stale,
            };
            IdentityServiceClient::new(chan)
                .get_project(with_auth(r, auth, timeout))
                .await?;
        }
        Op::ListImages { stale } => {
            let r = fpb::ListImagesRequest {
                stale,
                ..Default::default()
            };
            ImageServiceClient::new(chan)
                .list_images(with_auth(r, auth, timeout))
                .await?;
        }
    }
    Ok(())
}

struct Measured {
    clients: usize,
    op: Op,
    ok: u64,
    secs: f64,
    hist: Histogram<u64>,
    errors: Vec<String>,
    usage: cpu::Usage,
    /// 1 + the measurements thrown away because other processes were busy.
    attempt: usize,
}

/// C closed-loop clients send `count` requests in all; returns the latencies of the successful
/// ones, the errors and the wall time.
async fn drive(
    op: Op,
    chans: &[Channel],
    auth: &MetadataValue<Ascii>,
    count: usize,
    timeout: Duration,
) -> Result<(Histogram<u64>, Vec<String>, f64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for chan in chans {
        let (chan, auth, next) = (chan.clone(), auth.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                match call(op, chan.clone(), &auth, timeout).await {
                    Ok(()) => hist.saturating_record((t.elapsed().as_micros() as u64).max(1)),
                    Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut errors = Vec::new();
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(h)?;
        errors.extend(e);
    }
    Ok((hist, errors, t0.elapsed().as_secs_f64()))
}

/// The channel of each client: member by `connect`, connection i mod `conns` of that member.
fn client_channels(
    c: &Cluster,
    leader: usize,
    a: &AuthArgs,
    clients: usize,
) -> Result<Vec<Channel>> {
    let conns = a.conns.clamp(1, clients);
    let mut per_member = Vec::new();
    for m in &c.members {
        let v: Result<Vec<Channel>> = (0..conns).map(|_| channel(&m.client_addr)).collect();
        per_member.push(v?);
    }
    Ok((0..clients)
        .map(|i| {
            let n = c.members.len();
            let (member, k) = match a.connect {
                Connect::Leader => (leader, i),
                Connect::Follower => ((leader + 1) % n, i),
                Connect::All => (i % n, i / n),
            };
            per_member[member][k % conns].clone()
        })
        .collect())
}

/// Creates `n` QUEUED images in the `admin` project (after lifting its image count quota).
async fn create_images(chan: Channel, auth: &MetadataValue<Ascii>, n: usize) -> Result<()> {
    let t = Duration::from_secs(10);
    let q = fpb::SetQuotaRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        project: "admin".into(),
        images: Some(-1),
        ..Default::default()
    };
    fpb::quota_service_client::QuotaServiceClient::new(chan.clone())
        .set_quota(with_auth(q, auth, t))
        .await?;
    for i in 0..n {
        let r = fpb::CreateImageRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            name: format!("bench-auth-{i}"),
            disk_format: fpb::ImageDiskFormat::Raw as i32,
            owner: "admin".into(),
            ..Default::default()
        };
        ImageServiceClient::new(chan.clone())
            .create_image(with_auth(r, auth, t))
            .await?;
    }
    Ok(())
}

pub async fn run(a: AuthArgs) -> Result<()> {
    let o = a.cluster.clone();
    if a.clients.contains(&0) || a.requests == 0 || a.login_requests == 0 {
        bail!("--clients, --requests and --login-requests must be positive");
    }
    let machine = machine_note(o.json);
    let (mut c, leader) = o.start().await?;
    let mut leaders = vec![c.members[leader].name.clone()];
    let auth = c.flotilla_auth()?;
    create_images(channel(&c.members[leader].client_addr)?, &auth, a.images).await?;
    let timeout = Duration::from_millis(a.request_timeout_ms);
    let mut results = Vec::new();
    for &clients in &a.clients {
        for op in Op::ALL {
            c.check_alive()?;
            let leader = c.wait_for_leader(Duration::from_secs(10)).await?;
            if !leaders.contains(&c.members[leader].name) {
                leaders.push(c.members[leader].name.clone());
            }
            let chans = client_channels(&c, leader, &a, clients)?;
            let count = match op {
                Op::Login => a.login_requests,
                _ => a.requests,
            };
            // Warm-up: connections, caches, the first signing key (made by the first Login).
            let (_, errors, _) =
                drive(op, &chans, &auth, (count / 10).max(clients), timeout).await?;
            if let Some(e) = errors.first() {
                bail!("{} failed during the warm-up: {e}", op.name());
            }
            let mut attempt = 1;
            let m = loop {
                o.settle(&c).await;
                let pids = c.pids();
                let s0 = cpu::sample(&pids);
                let (hist, errors, secs) = drive(op, &chans, &auth, count, timeout).await?;
                let usage = cpu::usage(&s0, &cpu::sample(&pids));
                if usage.other > a.max_other && attempt <= a.busy_retries {
                    eprintln!(
                        "clients={clients} {}: other processes used {:.2} cores; measuring again",
                        op.name(),
                        usage.other
                    );
                    attempt += 1;
                    continue;
                }
                break Measured {
                    clients,
                    op,
                    ok: hist.len(),
                    secs,
                    hist,
                    errors,
                    usage,
                    attempt,
                };
            };
            if !o.json {
                eprintln!(
                    "clients={clients:<3} {:<26} {:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                    op.name(),
                    m.ok as f64 / m.secs,
                    ms(m.hist.value_at_quantile(0.5)),
                    ms(m.hist.value_at_quantile(0.99)),
                    m.errors.len()
                );
                for e in m.errors.iter().take(3) {
                    eprintln!("  error: {e}");
                }
            }
            results.push(m);
        }
    }
    drop(c);
    report(&a, machine, &leaders, &results)
}

fn report(a: &AuthArgs, machine: Value, leaders: &[String], results: &[Measured]) -> Result<()> {
    let per_req_us = |m: &Measured| {
        if m.ok > 0 {
            m.usage.server_seconds * 1e6 / m.ok as f64
        } else {
            0.0
        }
    };
    if a.cluster.json {
        let rows: Vec<Value> = results
            .iter()
            .map(|m| {
                json!({
                    "clients": m.clients, "request": m.op.name(), "ok": m.ok, "seconds": m.secs,
                    "per_s": m.ok as f64 / m.secs,
                    "p50_ms": ms(m.hist.value_at_quantile(0.5)),
                    "p90_ms": ms(m.hist.value_at_quantile(0.9)),
                    "p99_ms": ms(m.hist.value_at_quantile(0.99)),
                    "max_ms": ms(m.hist.max()), "errors": m.errors.len(),
                    "server_cpu_cores": m.usage.servers, "server_cpu_us_per_request": per_req_us(m),
                    "bench_cpu_cores": m.usage.bench, "other_cpu_cores": m.usage.other,
                    "attempt": m.attempt,
                })
            })
            .collect();
        let out = json!({
            "command": "auth", "machine": machine, "connect": a.connect.name(), "leaders": leaders,
            "conns_per_member": a.conns, "images": a.images, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "\nclients connect to: {} (leader: {}), {} connection(s) per member, {} images listed\n",
        a.connect.name(),
        leaders.join(" then "),
        a.conns,
        a.images
    );
    println!("| clients | request | measured | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU (cores) | server CPU µs/request | bench CPU (cores) | other CPU (cores) | attempt |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in results {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
            m.clients,
            m.op.name(),
            m.ok,
            m.ok as f64 / m.secs,
            ms(m.hist.value_at_quantile(0.5)),
            ms(m.hist.value_at_quantile(0.9)),
            ms(m.hist.value_at_quantile(0.99)),
            ms(m.hist.max()),
            m.errors.len(),
            m.usage.servers,
            per_req_us(m),
            m.usage.bench,
            m.usage.other,
            m.attempt,
        );
    }
    Ok(())
}

//! `flotilla-bench evacuate`: from a host's death to all of its servers running elsewhere.
//! Starts the 3-controller cluster with the default lease settings, connects simulated agents
//! (one victim big enough for every server, plus the hosts they go to), places N servers on the
//! victim and waits for them to be ACTIVE, then stops the victim's agent (its session ends, no
//! more heartbeats) and measures: death → host declared DOWN (lease TTL + grace), and
//! `host evacuate` → every server ACTIVE on another host with a new generation.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cluster::channel;
use crate::placement::{authed, prepare, sim_agent};

#[derive(clap::Args)]
pub struct EvacuateArgs {
    #[command(flatten)]
    cluster: crate::FlotillaArgs,
    /// Servers on the host that dies.
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    /// Healthy hosts the servers go to.
    #[arg(long, default_value_t = 20)]
    hosts: usize,
    /// Servers moved at the same time (0 = the controller's default).
    #[arg(long, default_value_t = 0)]
    parallel: u32,
}

async fn servers(ch: &Channel, auth: &MetadataValue<Ascii>) -> Result<Vec<pb::Server>> {
    let mut client = pb::server_service_client::ServerServiceClient::new(ch.clone());
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListServersRequest {
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let page = client.list_servers(authed(req, auth)).await?.into_inner();
        all.extend(page.servers);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Waits until `done` holds for the server list, polling every 100 ms.
async fn wait_servers(
    ch: &Channel,
    auth: &MetadataValue<Ascii>,
    within: Duration,
    what: &str,
    done: impl Fn(&[pb::Server]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let list = servers(ch, auth).await?;
        if done(&list) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let active = list
                .iter()
                .filter(|s| s.status() == pb::ServerStatus::Active)
                .count();
            bail!(
                "{what}: not reached within {within:?} ({active} of {} ACTIVE)",
                list.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn main(a: EvacuateArgs) -> Result<()> {
    let o = a.cluster.clone();
    let (mut cluster, _) = o.start().await?;
    let peers: Vec<String> = (1..=3u16)
        .map(|i| format!("127.0.0.1:{}", o.flotilla_port_base + 100 + i))
        .collect();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("leader")?;
    let ch = channel(&cluster.members[leader].client_addr)?;
    let auth = prepare(&cluster, ch.clone()).await?;
    let admin = cluster.flotilla_auth()?;

    let (reg_tx, mut reg_rx) = mpsc::channel(a.hosts + 1);
    let victim = tokio::spawn(sim_agent(
        "victim".into(),
        peers.clone(),
        reg_tx.clone(),
        a.servers as u32,
    ));
    for i in 0..a.hosts {
        tokio::spawn(sim_agent(
            format!("bench-host-{i:04}"),
            peers.clone(),
            reg_tx.clone(),
            64,
        ));
    }
    for _ in 0..=a.hosts {
        tokio::time::timeout(Duration::from_secs(120), reg_rx.recv())
            .await
            .context("agents registering")?;
    }

    // N servers on the victim, 16 requests at a time.
    let started = Instant::now();
    let mut tasks = Vec::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let (ch, auth, next, total) = (ch.clone(), auth.clone(), next.clone(), a.servers);
        tasks.push(tokio::spawn(async move {
            let mut client = pb::server_service_client::ServerServiceClient::new(ch);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, tonic::Status>(());
                }
                let req = pb::CreateServerRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    name: format!("vm-{i}"),
                    flavor: "bench".into(),
                    image: "bench".into(),
                    host: "victim".into(),
                    ..Default::default()
                };
                client.create_server(authed(req, &auth)).await?;
            }
        }));
    }
    for t in tasks {
        t.await?.context("creating servers")?;
    }
    let n = a.servers;
    wait_servers(&ch, &auth, Duration::from_secs(300), "all ACTIVE", |l| {
        l.len() == n && l.iter().all(|s| s.status() == pb::ServerStatus::Active)
    })
    .await?;
    let setup_seconds = started.elapsed().as_secs_f64();

    // The victim dies: its session ends and no heartbeat follows.
    victim.abort();
    let death = Instant::now();
    let mut hosts = pb::host_service_client::HostServiceClient::new(ch.clone());
    loop {
        let h = hosts
            .get_host(authed(
                pb::GetHostRequest {
                    host: "victim".into(),
                    stale: false,
                },
                &admin,
            ))
            .await?
            .into_inner();
        if h.state() == pb::HostState::Down {
            break;
        }
        if death.elapsed() > Duration::from_secs(120) {
            bail!("the victim was not declared down within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detect_seconds = death.elapsed().as_secs_f64();

    let evac_started = Instant::now();
    let resp = hosts
        .evacuate_host(authed(
            pb::EvacuateHostRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                host: "victim".into(),
                parallel: a.parallel,
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner();
    wait_servers(
        &ch,
        &auth,
        Duration::from_secs(600),
        "all ACTIVE elsewhere",
        |l| {
            l.iter().all(|s| {
                s.status() == pb::ServerStatus::Active
                    && s.host != "victim"
                    && s.placement_generation == 2
            })
        },
    )
    .await?;
    let evacuate_seconds = evac_started.elapsed().as_secs_f64();
    let op = pb::operation_service_client::OperationServiceClient::new(ch.clone())
        .get_operation(authed(
            pb::GetOperationRequest {
                operation_id: resp.operation_id.clone(),
                stale: false,
            },
            &admin,
        ))
        .await?
        .into_inner();
    let report = serde_json::json!({
        "servers": n, "healthy_hosts": a.hosts, "parallel": a.parallel,
        "setup_seconds": setup_seconds,
        "death_to_down_seconds": detect_seconds,
        "evacuate_to_all_active_seconds": evacuate_seconds,
        "death_to_all_active_seconds": detect_seconds + evacuate_seconds,
        "operation_state": format!("{:?}", op.state()), "operation_message": op.message,
    });
    if o.json {
        println!("{report}");
    } else {
        println!(
            "{n} servers on the dead host, {} healthy hosts: declared down {:.1} s after death; \
             evacuate → all ACTIVE elsewhere in {:.2} s ({:.0} servers/s); death → all running \
             {:.1} s; operation {:?}: {}",
            a.hosts,
            detect_seconds,
            evacuate_seconds,
            n as f64 / evacuate_seconds,
            detect_seconds + evacuate_seconds,
            op.state(),
            op.message
        );
    }
    Ok(())
}

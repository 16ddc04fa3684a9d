//! `flotilla-bench`: acknowledged small writes on a 3-node Flotilla cluster, side by side with
//! a 3-member etcd cluster driven by the same load generator; image transfer throughput and
//! login / authorized-read latency of a Flotilla cluster alone. See docs/benchmarks.md.
//!
//! The benchmark starts the clusters itself on loopback (Flotilla from
//! `target/release/flotilla-controller`, etcd from PATH), each member in a temporary data
//! directory, and stops them by pid and removes the directories when it ends.
mod auth;
mod boot;
mod cluster;
mod cpu;
mod evacuate;
mod images;
mod load;
mod migrate;
mod net;
mod placement;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use cluster::{Cluster, Kind, StartOptions};
use load::{Api, ClientLog, Connect, LoadSpec};

pub mod etcdpb {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("etcdserverpb");
}

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    about = "Benchmarks of a Flotilla cluster: writes side by side with etcd, images, logins"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Acknowledged writes/s and latency at several client counts.
    Writes(WritesArgs),
    /// Steady write load; SIGKILL the leader mid-run; report the longest gap between
    /// acknowledged writes.
    LeaderKill(KillArgs),
    /// Image upload and download throughput (Flotilla only), next to a file copy.
    Images(images::ImagesArgs),
    /// Login and token-authorized read latency and rate (Flotilla only).
    Auth(auth::AuthArgs),
    /// Placements committed per second and request-to-placed latency with many simulated
    /// agent hosts (Flotilla only).
    Placement(placement::PlacementArgs),
    /// From a host's death to all of its servers running elsewhere (simulated agents, default
    /// lease settings): detection and `host evacuate` timed separately.
    Evacuate(evacuate::EvacuateArgs),
    /// Create-to-running on real libvirt + QEMU through the control plane, next to
    /// `qemu-img create` + `virsh define` + `virsh start` by hand (Flotilla only).
    BootReal(boot::BootArgs),
    /// Live migration between two real libvirt hosts (namespaces) through the control plane,
    /// next to `virsh migrate` by hand on a guest of the same shape (Flotilla only).
    MigrateReal(migrate::MigrateArgs),
    /// The agent's network reconcile on a real Open vSwitch: port-to-wired time and Open
    /// vSwitch operations per host change, with many ports already on the host.
    NetReal(net::NetArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Flotilla,
    Etcd,
    Both,
}

impl Target {
    fn kinds(self) -> Vec<Kind> {
        match self {
            Target::Flotilla => vec![Kind::Flotilla],
            Target::Etcd => vec![Kind::Etcd],
            Target::Both => vec![Kind::Flotilla, Kind::Etcd],
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// Which cluster(s) to benchmark.
    #[arg(long, value_enum, default_value = "both")]
    target: Target,
    /// Bytes of each written value (etcd value; Flotilla project description).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// `leader`: all clients start on the leader; `all`: client i starts on member i mod 3.
    #[arg(long, value_enum, default_value = "leader")]
    connect: Connect,
    /// HTTP/2 connections per member, shared by the clients (client i uses connection i mod N).
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// The Flotilla controller binary.
    #[arg(long, default_value = "target/release/flotilla-controller")]
    controller_bin: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Where the temporary data directories go (must be a real disk for fsync to mean
    /// anything; not tmpfs).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
    /// Flotilla uses BASE+1..3 (clients) and BASE+101..103 (peers).
    #[arg(long, default_value_t = 37000)]
    flotilla_port_base: u16,
    /// etcd uses BASE+1..3 (clients) and BASE+101..103 (peers).
    #[arg(long, default_value_t = 38000)]
    etcd_port_base: u16,
    /// etcd's --election-timeout in ms (default: etcd's own, 1000). Flotilla's election
    /// timeout is 10 ticks of 50 ms (500 ms, randomized up to 1000 ms).
    #[arg(long)]
    etcd_election_timeout_ms: Option<u64>,
    /// Before each measurement, wait up to this many seconds for other processes on the
    /// machine to use less than --quiet-below cores (0: don't wait).
    #[arg(long, default_value_t = 0)]
    quiet_wait: u64,
    #[arg(long, default_value_t = 0.2)]
    quiet_below: f64,
    /// Copy the members' logs to this directory before the data directories are removed.
    #[arg(long)]
    save_logs: Option<PathBuf>,
}

impl Common {
    fn start_options(&self) -> StartOptions {
        StartOptions {
            flotilla_bin: self.controller_bin.clone(),
            etcd_bin: self.etcd_bin.clone(),
            data_root: self.data_root.clone(),
            flotilla_port_base: self.flotilla_port_base,
            etcd_port_base: self.etcd_port_base,
            etcd_election_timeout_ms: self.etcd_election_timeout_ms,
            save_logs: self.save_logs.clone(),
        }
    }

    fn value(&self) -> Arc<str> {
        // Printable, not trivially compressible, the same bytes for both targets.
        let mut x: u32 = 0x9e37_79b9;
        let s: String = (0..self.value_size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        s.into()
    }
}

/// Options of the Flotilla-only benchmarks (`images`, `auth`).
#[derive(Args, Clone)]
struct FlotillaArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// The Flotilla controller binary.
    #[arg(long, default_value = "target/release/flotilla-controller")]
    controller_bin: PathBuf,
    /// Where the temporary data directories (and generated files) go; a real disk, not tmpfs.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
    /// Flotilla uses BASE+1..3 (clients) and BASE+101..103 (peers).
    #[arg(long, default_value_t = 37000)]
    flotilla_port_base: u16,
    /// Before each measurement, wait up to this many seconds until the cluster and the other
    /// processes on the machine together use less than --quiet-below cores (0: don't wait).
    #[arg(long, default_value_t = 0)]
    quiet_wait: u64,
    #[arg(long, default_value_t = 0.2)]
    quiet_below: f64,
    /// Copy the members' logs to this directory before the data directories are removed.
    #[arg(long)]
    save_logs: Option<PathBuf>,
}

impl FlotillaArgs {
    /// Starts the cluster and logs in as `admin`; returns it with its leader's index.
    async fn start(&self) -> Result<(Cluster, usize)> {
        let opts = StartOptions {
            flotilla_bin: self.controller_bin.clone(),
            etcd_bin: PathBuf::from("etcd"),
            data_root: self.data_root.clone(),
            flotilla_port_base: self.flotilla_port_base,
            etcd_port_base: 0,
            etcd_election_timeout_ms: None,
            save_logs: self.save_logs.clone(),
        };
        let mut c = Cluster::start(Kind::Flotilla, &opts)?;
        if !self.json {
            eprintln!(
                "started flotilla members (pids {:?}) in {}",
                c.pids(),
                c.dir().map(|d| d.display().to_string()).unwrap_or_default()
            );
        }
        let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
        if !self.json {
            eprintln!("flotilla: leader is {}", c.members[leader].name);
        }
        Ok((c, leader))
    }

    /// Waits (see --quiet-wait) until the machine, the cluster included, is nearly idle;
    /// returns the cores in use at the end.
    async fn settle(&self, cluster: &Cluster) -> f64 {
        if self.quiet_wait == 0 {
            return f64::NAN;
        }
        let busy = cpu::wait_idle(&cluster.pids(), self.quiet_below, self.quiet_wait).await;
        if busy >= self.quiet_below && !self.json {
            eprintln!(
                "warning: still {busy:.2} cores busy after waiting {} s",
                self.quiet_wait
            );
        }
        busy
    }
}

#[derive(Args)]
struct WritesArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Seconds measured per client count.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before each measurement, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Deadline of one write attempt, ms.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Repeat the whole sweep this many times (on the same clusters).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Args)]
struct KillArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load before the leader is killed.
    #[arg(long, default_value_t = 5)]
    before: u64,
    /// Seconds of load after the kill.
    #[arg(long, default_value_t = 10)]
    after: u64,
    /// Deadline of one write attempt, ms; a failed attempt is retried after 10 ms.
    #[arg(long, default_value_t = 250)]
    request_timeout_ms: u64,
    /// Repeat with a fresh cluster this many times per target.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => {
                // Dropping `run` drops the clusters: members are killed by pid, dirs removed.
                bail!("interrupted")
            }
        }
    })
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Writes(a) => writes(a).await,
        Cmd::LeaderKill(a) => leader_kill(a).await,
        Cmd::Images(a) => images::run(a).await,
        Cmd::Auth(a) => auth::run(a).await,
        Cmd::Placement(a) => placement::main(a).await,
        Cmd::Evacuate(a) => evacuate::main(a).await,
        Cmd::BootReal(a) => boot::run(a).await,
        Cmd::MigrateReal(a) => migrate::run(a).await,
        Cmd::NetReal(a) => net::run(a).await,
    }
}

fn machine_note(json: bool) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    if !json {
        eprintln!("machine: {cores} cores ({cpu})");
    }
    json!({ "cores": cores, "cpu": cpu })
}

async fn warn_if_busy(json: bool) -> f64 {
    let busy = cpu::background(1000).await;
    if !json {
        eprintln!("background CPU before the run: {busy:.2} cores busy");
    }
    if busy > 0.15 {
        eprintln!("warning: the machine is busy ({busy:.2} cores used by other processes); figures will be noisy");
    }
    busy
}

async fn start(kind: Kind, common: &Common) -> Result<Cluster> {
    let mut c = Cluster::start(kind, &common.start_options())?;
    if !common.json {
        eprintln!(
            "started {} members (pids {:?}) in {}",
            kind.name(),
            c.pids(),
            c.dir().map(|d| d.display().to_string()).unwrap_or_default()
        );
    }
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    // One acknowledged write proves the whole path before measuring.
    let api = Api::new(&c, 1)?;
    let spec = LoadSpec {
        clients: 1,
        connect: Connect::Leader,
        leader,
        stop_at: Instant::now() + Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        max_attempts: 200,
        value: common.value(),
        tag: "probe".into(),
    };
    let logs = load::run(&api, &spec).await;
    if logs.iter().all(|l| l.acks.is_empty()) {
        c.check_alive()?;
        bail!("the {} cluster acknowledged no write", kind.name());
    }
    if !common.json {
        eprintln!("{}: leader is {}", kind.name(), c.members[leader].name);
    }
    Ok(c)
}

struct LevelResult {
    kind: Kind,
    round: usize,
    clients: usize,
    acked: u64,
    writes_per_s: f64,
    hist: Histogram<u64>,
    errors: usize,
    abandoned: u64,
    usage: cpu::Usage,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn writes(a: WritesArgs) -> Result<()> {
    let common = a.common.clone();
    let machine = machine_note(common.json);
    let background = warn_if_busy(common.json).await;
    let mut clusters = Vec::new();
    for kind in common.target.kinds() {
        clusters.push(start(kind, &common).await?);
    }
    let value = common.value();
    let clusters_pids: Vec<u32> = clusters.iter().flat_map(|c| c.pids()).collect();
    let mut results: Vec<LevelResult> = Vec::new();
    for round in 1..=a.rounds {
        for (level, &clients) in a.clients.iter().enumerate() {
            if clients == 0 {
                bail!("--clients values must be positive");
            }
            // Targets alternate at each level so background noise hits both alike.
            for c in clusters.iter_mut() {
                c.check_alive()?;
                let leader = c.wait_for_leader(Duration::from_secs(10)).await?;
                let api = Api::new(c, common.conns.min(clients))?;
                if common.quiet_wait > 0 {
                    let all: Vec<u32> = clusters_pids.clone();
                    let other = cpu::wait_quiet(&all, common.quiet_below, common.quiet_wait).await;
                    if !common.json {
                        eprintln!("other processes use {other:.2} cores");
                    }
                }
                let t0 = Instant::now();
                let measure_from = t0 + Duration::from_secs(a.warmup);
                let stop_at = measure_from + Duration::from_secs(a.duration);
                let spec = LoadSpec {
                    clients,
                    connect: common.connect,
                    leader,
                    stop_at,
                    request_timeout: Duration::from_millis(a.request_timeout_ms),
                    max_attempts: 100,
                    value: value.clone(),
                    tag: format!("r{round}l{level}c{clients}"),
                };
                let pids = c.pids();
                let monitor = tokio::spawn(async move {
                    tokio::time::sleep_until(measure_from.into()).await;
                    let s0 = cpu::sample(&pids);
                    tokio::time::sleep_until(stop_at.into()).await;
                    let s1 = cpu::sample(&pids);
                    cpu::usage(&s0, &s1)
                });
                let logs = load::run(&api, &spec).await;
                let usage = monitor.await.unwrap_or_default();
                let r =
                    summarize_level(c.kind, round, clients, &logs, measure_from, stop_at, usage)?;
                report_errors(c.kind, &logs);
                if !common.json {
                    eprintln!(
                        "{:>8} clients={:<4} {:>9.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                        c.kind.name(),
                        clients,
                        r.writes_per_s,
                        ms(r.hist.value_at_quantile(0.5)),
                        ms(r.hist.value_at_quantile(0.99)),
                        r.errors
                    );
                }
                results.push(r);
            }
        }
    }
    drop(clusters);
    if common.json {
        let rows: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "target": r.kind.name(), "round": r.round, "clients": r.clients,
                    "acked": r.acked, "writes_per_s": r.writes_per_s,
                    "p50_ms": ms(r.hist.value_at_quantile(0.5)),
                    "p90_ms": ms(r.hist.value_at_quantile(0.9)),
                    "p99_ms": ms(r.hist.value_at_quantile(0.99)),
                    "max_ms": ms(r.hist.max()),
                    "errors": r.errors, "abandoned": r.abandoned,
                    "server_cpu_cores": r.usage.servers, "bench_cpu_cores": r.usage.bench,
                    "other_cpu_cores": r.usage.other,
                    "server_cpu_us_per_write": if r.acked > 0 { r.usage.server_seconds * 1e6 / r.acked as f64 } else { 0.0 },
                })
            })
            .collect();
        let out = json!({
            "command": "writes", "machine": machine, "background_cpu_cores": background,
            "value_size": common.value_size, "connect": common.connect.name(), "conns_per_member": common.conns,
            "duration_s": a.duration, "warmup_s": a.warmup, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "\nvalue {} B, clients connect to: {}, {} connection(s) per member, {} s measured after {} s warm-up\n",
            common.value_size,
            common.connect.name(),
            common.conns,
            a.duration,
            a.warmup
        );
        println!(
            "| target | round | clients | writes/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU (cores) | server CPU µs/write | bench CPU (cores) | other CPU (cores) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &results {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
                r.kind.name(),
                r.round,
                r.clients,
                r.writes_per_s,
                ms(r.hist.value_at_quantile(0.5)),
                ms(r.hist.value_at_quantile(0.9)),
                ms(r.hist.value_at_quantile(0.99)),
                ms(r.hist.max()),
                r.errors + r.abandoned as usize,
                r.usage.servers,
                if r.acked > 0 { r.usage.server_seconds * 1e6 / r.acked as f64 } else { 0.0 },
                r.usage.bench,
                r.usage.other,
            );
        }
    }
    Ok(())
}

/// Failed attempts by kind on stderr (the tables only count them).
fn report_errors(kind: Kind, logs: &[ClientLog]) {
    for (what, n) in load::error_kinds(logs).into_iter().take(5) {
        eprintln!("  {} failed attempts: {n} x {what}", kind.name());
    }
}

fn summarize_level(
    kind: Kind,
    round: usize,
    clients: usize,
    logs: &[ClientLog],
    from: Instant,
    to: Instant,
    usage: cpu::Usage,
) -> Result<LevelResult> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut acked = 0u64;
    let mut errors = 0usize;
    let mut abandoned = 0u64;
    for l in logs {
        for a in &l.acks {
            if a.acked >= from && a.acked <= to {
                acked += 1;
                let us = a.acked.duration_since(a.first_sent).as_micros() as u64;
                hist.saturating_record(us.max(1));
            }
        }
        errors += l.errors.iter().filter(|e| **e >= from && **e <= to).count();
        abandoned += l.abandoned;
    }
    let secs = to.duration_since(from).as_secs_f64();
    Ok(LevelResult {
        kind,
        round,
        clients,
        acked,
        writes_per_s: acked as f64 / secs,
        hist,
        errors,
        abandoned,
        usage,
    })
}

struct KillResult {
    kind: Kind,
    round: usize,
    killed: String,
    new_leader: String,
    new_leader_seen_ms: f64,
    longest_gap_ms: f64,
    longest_gap_start_ms: f64,
    longest_gap_before_kill_ms: f64,
    first_ack_after_kill_ms: Option<f64>,
    first_ack_of_retry_ms: Option<f64>,
    worst_write_ms: f64,
    before_per_s: f64,
    after_per_s: f64,
    failed_attempts_after_kill: usize,
    abandoned: u64,
}

async fn leader_kill(a: KillArgs) -> Result<()> {
    let common = a.common.clone();
    let machine = machine_note(common.json);
    let background = warn_if_busy(common.json).await;
    let value = common.value();
    let mut results = Vec::new();
    for round in 1..=a.rounds {
        for kind in common.target.kinds() {
            let mut c = start(kind, &common).await?;
            let leader = c.wait_for_leader(Duration::from_secs(10)).await?;
            let api = Api::new(&c, common.conns.min(a.clients))?;
            if common.quiet_wait > 0 {
                let other = cpu::wait_quiet(&c.pids(), common.quiet_below, common.quiet_wait).await;
                if !common.json {
                    eprintln!("other processes use {other:.2} cores");
                }
            }
            let t0 = Instant::now();
            let kill_at = t0 + Duration::from_secs(a.before);
            let stop_at = kill_at + Duration::from_secs(a.after);
            let spec = LoadSpec {
                clients: a.clients,
                connect: common.connect,
                leader,
                stop_at,
                request_timeout: Duration::from_millis(a.request_timeout_ms),
                max_attempts: 10_000,
                value: value.clone(),
                tag: format!("k{round}"),
            };
            let load = tokio::spawn(async move { load::run(&api, &spec).await });
            tokio::time::sleep_until(kill_at.into()).await;
            let killed = c.members[leader].name.clone();
            let t_kill = Instant::now();
            c.kill(leader)?;
            if !common.json {
                eprintln!("{}: killed leader {killed} (SIGKILL)", kind.name());
            }
            // Watch for the new leader (coarse: one poll every 50 ms).
            let mut new_leader = (String::from("-"), f64::NAN);
            while Instant::now() < stop_at {
                if let Some(l) = c.leader().await? {
                    new_leader = (
                        c.members[l].name.clone(),
                        t_kill.elapsed().as_secs_f64() * 1000.0,
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let logs = load.await?;
            report_errors(kind, &logs);
            let r = summarize_kill(kind, round, killed, new_leader, &logs, t0, t_kill, stop_at);
            if !common.json {
                eprintln!(
                    "{}: longest write gap {:.0} ms; first ack after kill {} ms",
                    kind.name(),
                    r.longest_gap_ms,
                    r.first_ack_of_retry_ms
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or("-".into())
                );
            }
            results.push(r);
            drop(c);
        }
    }
    let opt = |v: Option<f64>| v.map(|x| json!(x)).unwrap_or(Value::Null);
    if common.json {
        let rows: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "target": r.kind.name(), "round": r.round, "killed": r.killed,
                    "new_leader": r.new_leader, "new_leader_seen_ms": r.new_leader_seen_ms,
                    "longest_gap_ms": r.longest_gap_ms, "longest_gap_start_ms_after_kill": r.longest_gap_start_ms,
                    "longest_gap_before_kill_ms": r.longest_gap_before_kill_ms,
                    "first_ack_after_kill_ms": opt(r.first_ack_after_kill_ms),
                    "first_ack_sent_after_kill_ms": opt(r.first_ack_of_retry_ms),
                    "worst_write_latency_ms": r.worst_write_ms,
                    "writes_per_s_before": r.before_per_s, "writes_per_s_after": r.after_per_s,
                    "failed_attempts_after_kill": r.failed_attempts_after_kill, "abandoned": r.abandoned,
                })
            })
            .collect();
        let out = json!({
            "command": "leader-kill", "machine": machine, "background_cpu_cores": background,
            "value_size": common.value_size, "connect": common.connect.name(), "conns_per_member": common.conns,
            "clients": a.clients, "before_s": a.before, "after_s": a.after,
            "request_timeout_ms": a.request_timeout_ms, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
        println!(
            "\n{} clients, value {} B, clients connect to: {}, attempt deadline {} ms, kill after {} s, {} s after\n",
            a.clients, common.value_size, common.connect.name(), a.request_timeout_ms, a.before, a.after
        );
        println!("| target | round | killed | new leader (seen after ms) | write gap ms | gap starts (ms after kill) | first ack sent after kill, ms | worst write ms | longest gap before kill ms | writes/s before | writes/s after | failed attempts | abandoned |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &results {
            println!(
                "| {} | {} | {} | {} ({:.0}) | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                r.kind.name(),
                r.round,
                r.killed,
                r.new_leader,
                r.new_leader_seen_ms,
                r.longest_gap_ms,
                r.longest_gap_start_ms,
                f(r.first_ack_of_retry_ms),
                r.worst_write_ms,
                r.longest_gap_before_kill_ms,
                r.before_per_s,
                r.after_per_s,
                r.failed_attempts_after_kill,
                r.abandoned,
            );
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summarize_kill(
    kind: Kind,
    round: usize,
    killed: String,
    new_leader: (String, f64),
    logs: &[ClientLog],
    t0: Instant,
    t_kill: Instant,
    stop_at: Instant,
) -> KillResult {
    let signed_ms = |t: Instant| {
        if t >= t_kill {
            t.duration_since(t_kill).as_secs_f64() * 1000.0
        } else {
            -(t_kill.duration_since(t).as_secs_f64() * 1000.0)
        }
    };
    let mut acks: Vec<load::Ack> = logs.iter().flat_map(|l| l.acks.iter().copied()).collect();
    acks.sort_by_key(|a| a.acked);
    // Ignore the first second (connections being set up).
    let settled = t0 + Duration::from_secs(1);
    let times: Vec<Instant> = acks
        .iter()
        .map(|a| a.acked)
        .filter(|t| *t >= settled && *t <= stop_at)
        .collect();
    let mut longest = (0.0f64, 0.0f64);
    let mut longest_before = 0.0f64;
    // The kill opens a gap from the last ack before it, so count it from the kill itself if
    // no write was acknowledged after the kill at all.
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]).as_secs_f64() * 1000.0;
        if gap > longest.0 {
            longest = (gap, signed_ms(w[0]));
        }
        if w[1] < t_kill && gap > longest_before {
            longest_before = gap;
        }
    }
    if let Some(last) = times.last() {
        let tail = stop_at.saturating_duration_since(*last).as_secs_f64() * 1000.0;
        if tail > longest.0 {
            longest = (tail, signed_ms(*last));
        }
    }
    let first_ack_after_kill = acks
        .iter()
        .find(|a| a.acked > t_kill)
        .map(|a| signed_ms(a.acked));
    let first_ack_of_retry = acks
        .iter()
        .filter(|a| a.last_sent >= t_kill)
        .map(|a| a.acked)
        .min()
        .map(signed_ms);
    let worst = acks
        .iter()
        .filter(|a| a.acked >= settled)
        .map(|a| a.acked.duration_since(a.first_sent).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let before_n = times.iter().filter(|t| **t < t_kill).count();
    let before_s = t_kill
        .saturating_duration_since(settled)
        .as_secs_f64()
        .max(1e-9);
    // Steady state after recovery: the second half of the time after the kill.
    let half = t_kill + stop_at.duration_since(t_kill) / 2;
    let after_n = times.iter().filter(|t| **t >= half).count();
    let after_s = stop_at.duration_since(half).as_secs_f64().max(1e-9);
    let failed = logs
        .iter()
        .map(|l| l.errors.iter().filter(|e| **e >= t_kill).count())
        .sum();
    KillResult {
        kind,
        round,
        killed,
        new_leader: new_leader.0,
        new_leader_seen_ms: new_leader.1,
        longest_gap_ms: longest.0,
        longest_gap_start_ms: longest.1,
        longest_gap_before_kill_ms: longest_before,
        first_ack_after_kill_ms: first_ack_after_kill,
        first_ack_of_retry_ms: first_ack_of_retry,
        worst_write_ms: worst,
        before_per_s: before_n as f64 / before_s,
        after_per_s: after_n as f64 / after_s,
        failed_attempts_after_kill: failed,
        abandoned: logs.iter().map(|l| l.abandoned).sum(),
    }
}

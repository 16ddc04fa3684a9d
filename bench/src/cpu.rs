//! CPU accounting from /proc: the time the cluster's processes and the benchmark itself used
//! during a measurement, and what the whole machine used (so background load shows up).
use std::time::Instant;

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks (0 if it is gone).
fn process_ticks(pid: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// (busy, total) ticks of all CPUs together.
fn machine_ticks() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub struct Sample {
    at: Instant,
    servers: u64,
    bench: u64,
    machine_busy: u64,
}

pub fn sample(pids: &[u32]) -> Sample {
    let busy = machine_ticks().0;
    Sample {
        at: Instant::now(),
        servers: pids.iter().map(|p| process_ticks(&p.to_string())).sum(),
        bench: process_ticks("self"),
        machine_busy: busy,
    }
}

/// CPU used between two samples, in cores (1.0 = one core fully busy).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub servers: f64,
    pub bench: f64,
    /// Everything else on the machine.
    pub other: f64,
    /// CPU seconds the servers used in the interval.
    pub server_seconds: f64,
}

pub fn usage(a: &Sample, b: &Sample) -> Usage {
    let hz = clock_ticks_per_sec();
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let servers = b.servers.saturating_sub(a.servers) as f64 / hz;
    let bench = b.bench.saturating_sub(a.bench) as f64 / hz;
    let busy = b.machine_busy.saturating_sub(a.machine_busy) as f64 / hz;
    Usage {
        servers: servers / secs,
        bench: bench / secs,
        other: ((busy - servers - bench) / secs).max(0.0),
        server_seconds: servers,
    }
}

/// How busy the machine is without us, measured over `ms` milliseconds (in cores).
pub async fn background(ms: u64) -> f64 {
    let a = sample(&[]);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    let b = sample(&[]);
    let u = usage(&a, &b);
    u.other + u.bench
}

/// Waits (up to `max_s` seconds, in 1 s steps) until processes other than `ours` and the
/// benchmark use less than `below` cores. Returns the last measured figure.
pub async fn wait_quiet(ours: &[u32], below: f64, max_s: u64) -> f64 {
    let mut last = f64::NAN;
    for _ in 0..max_s {
        let a = sample(ours);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let b = sample(ours);
        last = usage(&a, &b).other;
        if last < below {
            break;
        }
    }
    last
}

/// Waits (up to `max_s` seconds, in 1 s steps) until the processes `ours` and every other
/// process except the benchmark together use less than `below` cores: the cluster itself must
/// be idle too (e.g. done copying an image blob in the background). Returns the last figure.
pub async fn wait_idle(ours: &[u32], below: f64, max_s: u64) -> f64 {
    let mut last = f64::NAN;
    for _ in 0..max_s {
        let a = sample(ours);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let b = sample(ours);
        let u = usage(&a, &b);
        last = u.servers + u.other;
        if last < below {
            break;
        }
    }
    last
}

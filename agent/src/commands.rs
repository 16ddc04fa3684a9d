//! Operation commands (reboot, rebuild, snapshot, and the migration commands in
//! [`migration`]) and read-only queries (console log, diagnostics) from the controller.
//!
//! Commands are idempotent per `(operation_id, step)`: the controller resends a command after a
//! reconnect or a leader change, and the agent answers one it finished with the same outcome,
//! and one still running not at all (its result follows when it ends). While a command works on
//! a server, the server is held: the executor's planner leaves it alone and no executor step
//! runs on it. After a command the executor is kicked to converge the server again.
//!
//! - **Reboot**: soft (ACPI power button, then destroy after the shutdown timeout, then start)
//!   or hard (destroy, start). Needs a valid lease, since it starts the domain.
//! - **Rebuild**: destroy the domain, delete the root disk, recreate it on the new base (fetched
//!   into the cache first), define the domain again, and start it when the server should run.
//! - **Snapshot**: a cold snapshot like Nova's fallback — a running guest is shut down (ACPI,
//!   then destroyed after the timeout), the root disk is converted to a standalone file, the
//!   guest is started again, and the file is uploaded with `UploadSnapshot` in 1 MiB chunks.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_command::Payload;
use flotilla_proto::v1::agent_message::Msg as In;
use flotilla_proto::v1::agent_query::Query;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use uuid::Uuid;

#[path = "commands_migration.rs"]
pub mod migration;

use crate::config::Migration;
use crate::desired;
use crate::driver::disks::DiskRef;
use crate::driver::{RebootMode, ShutdownOutcome};
use crate::executor::{error_chain, power_to_pb, Host};
use crate::render::domain::{domain_name, render_domain};
use crate::session::{Inbound, Link, Outgoing};
use crate::transfer::{self, Controllers};

/// Finished commands remembered for answering repeats.
const REMEMBERED: usize = 1024;
/// How long the scan after a command may delay its result.
const REFRESH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Console output returned at most.
const CONSOLE_MAX_BYTES: usize = 1 << 20;

/// Where a command stands.
#[derive(Debug, Clone)]
enum State {
    Running,
    Done { ok: bool, message: String },
}

/// Command states by `(operation_id, step)`, and the finished ones oldest first.
type Remembered = (HashMap<(String, String), State>, VecDeque<(String, String)>);

/// Runs commands and answers queries. See the module doc.
pub struct Dispatcher {
    pub host: Arc<Host>,
    pub link: Arc<Link>,
    pub controllers: Arc<Controllers>,
    pub hostname: String,
    /// `[migration]` of the agent's configuration.
    pub migration: Migration,
    commands: Mutex<Remembered>,
    migrations: Arc<migration::Running>,
}

impl Dispatcher {
    pub fn new(
        host: Arc<Host>,
        link: Arc<Link>,
        controllers: Arc<Controllers>,
        hostname: String,
        migration: Migration,
    ) -> Dispatcher {
        Dispatcher {
            host,
            link,
            controllers,
            hostname,
            migration,
            commands: Mutex::new((HashMap::new(), VecDeque::new())),
            migrations: Arc::default(),
        }
    }

    /// Handles what the session passes on, forever.
    pub async fn run(self: Arc<Self>, mut inbound: mpsc::UnboundedReceiver<Inbound>) {
        while let Some(item) = inbound.recv().await {
            match item {
                Inbound::Command(c) => self.command(*c),
                Inbound::Query { session, query } => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let result = me.query(query).await;
                        me.link.send(Outgoing {
                            session: Some(session),
                            msg: In::QueryResult(result),
                        });
                    });
                }
            }
        }
    }

    fn command(self: &Arc<Self>, c: pb::AgentCommand) {
        let key = (c.operation_id.clone(), c.step.clone());
        {
            let mut commands = self.commands.lock();
            match commands.0.get(&key) {
                Some(State::Running) => return,
                Some(State::Done { ok, message }) => {
                    let (ok, message) = (*ok, message.clone());
                    drop(commands);
                    self.answer(&c, ok, message);
                    return;
                }
                None => {}
            }
            commands.0.insert(key.clone(), State::Running);
        }
        // A migration is registered (cancellable) right away, in the order commands arrive, so
        // an AbortMigration right behind it always finds it.
        let registered = match &c.payload {
            Some(Payload::LiveMigrate(m)) => Some(self.migrations.register(&m.server_id)),
            Some(Payload::Migrate(m)) => Some(self.migrations.register(&m.server_id)),
            _ => None,
        };
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.execute(&c, registered).await;
            let (ok, message) = match result {
                Ok(note) => (true, note),
                Err(e) => {
                    let command = c.payload.as_ref().map_or("empty", payload_name);
                    tracing::error!(operation = %c.operation_id, step = %c.step, command, "{e}");
                    (false, e)
                }
            };
            {
                let mut commands = me.commands.lock();
                commands.0.insert(
                    key.clone(),
                    State::Done {
                        ok,
                        message: message.clone(),
                    },
                );
                commands.1.push_back(key);
                while commands.1.len() > REMEMBERED {
                    if let Some(old) = commands.1.pop_front() {
                        commands.0.remove(&old);
                    }
                }
            }
            if let Some(server_id) = command_server(&c) {
                me.host.forget_active(server_id);
            }
            // The host as the command left it goes out before the result, so the controller
            // never reads a state seen halfway through the command after it. Bounded: libvirt
            // can hold a scan for as long as a broken migration holds the domain's job, and
            // the result must not wait for that (the executor reports the host later).
            if tokio::time::timeout(REFRESH_LIMIT, me.host.refresh(&me.link))
                .await
                .is_err()
            {
                tracing::warn!(operation = %c.operation_id, step = %c.step, "could not read the host within {REFRESH_LIMIT:?} after the command; answering without");
            }
            me.answer(&c, ok, message);
            me.link.kick();
        });
    }

    fn answer(&self, c: &pb::AgentCommand, ok: bool, message: String) {
        self.link.send(Outgoing {
            session: None,
            msg: In::StepResult(pb::AgentStepResult {
                operation_id: c.operation_id.clone(),
                step: c.step.clone(),
                finished: true,
                ok,
                message,
                progress: None,
            }),
        });
    }

    async fn execute(
        &self,
        c: &pb::AgentCommand,
        registered: Option<migration::Registered>,
    ) -> Result<String, String> {
        match &c.payload {
            Some(Payload::Reboot(r)) => self.reboot(r).await,
            Some(Payload::Rebuild(r)) => self.rebuild(r).await,
            Some(Payload::Snapshot(s)) => self.snapshot(&c.operation_id, &c.step, s).await,
            Some(Payload::PrepareMigration(p)) => self.prepare_migration(p).await,
            Some(Payload::LiveMigrate(m)) => {
                let r = registered.unwrap_or_else(|| self.migrations.register(&m.server_id));
                self.live_migrate(c, m, r).await
            }
            Some(Payload::Migrate(m)) => {
                let r = registered.unwrap_or_else(|| self.migrations.register(&m.server_id));
                self.cold_migrate(c, m, r).await
            }
            Some(Payload::AbortMigration(a)) => self.abort_migration(a).await,
            Some(Payload::DestroyStale(d)) => self.destroy_stale(d).await,
            None => Err("the command has no payload".into()),
        }
    }

    fn require_lease(&self, action: &str) -> Result<(), String> {
        if self.link.lease.is_valid() {
            Ok(())
        } else {
            Err(format!(
                "cannot {action}: the host holds no valid lease (it may not start anything)"
            ))
        }
    }

    /// The server as the newest desired state has it on this host.
    fn desired_server(&self, server_id: &str) -> Result<pb::DesiredServer, String> {
        self.link
            .desired()
            .and_then(|d| d.servers.iter().find(|s| s.id == server_id).cloned())
            .ok_or_else(|| format!("server {server_id} is not placed on this host"))
    }

    async fn reboot(&self, r: &pb::RebootCommand) -> Result<String, String> {
        let _hold = self.host.hold(&r.server_id).await;
        self.require_lease("reboot")?;
        let name = domain_name(&r.server_id);
        let mode = if r.hard {
            RebootMode::Hard
        } else {
            RebootMode::Soft {
                timeout: self.host.shutdown_timeout,
            }
        };
        let outcome = self
            .host
            .blocking(move |hv, _| hv.reboot(&name, mode).map_err(|e| error_chain(&e)))
            .await?;
        Ok(match outcome {
            ShutdownOutcome::Destroyed { waited } if !r.hard => format!(
                "the guest did not shut down within {} s and was powered off",
                waited.as_secs()
            ),
            _ => String::new(),
        })
    }

    async fn rebuild(&self, r: &pb::RebuildCommand) -> Result<String, String> {
        let _hold = self.host.hold(&r.server_id).await;
        let server = self.desired_server(&r.server_id)?;
        let image = desired::image(
            &r.image_id,
            &r.image_sha256,
            r.image_size_bytes,
            r.image_disk_format,
        )?;
        // The domain as the desired state has it (its disks do not name the image).
        let target = self.host.mapping.target(&server)?;
        let generation = target.generation();
        let disk = DiskRef::root(
            Uuid::parse_str(&r.server_id).map_err(|_| "bad server id".to_owned())?,
            generation,
        );
        self.require_lease("rebuild")?;
        let base = self.host.ensure_base(&image).await?;
        let size_bytes = target.domain.spec().disks.root.size_bytes;
        let xml = render_domain(&target.domain);
        let console = target.domain.spec().console_log.clone();
        let name = target.domain.domain_name();
        let format = image.format;
        self.host
            .blocking(move |hv, disks| {
                match hv.destroy(&name) {
                    Err(e) if !e.is_not_found() => return Err(error_chain(&e)),
                    _ => {}
                }
                disks.delete_disk(disk).map_err(|e| error_chain(&e))?;
                disks
                    .create_overlay(disk, &base, format, size_bytes.div_ceil(1 << 30))
                    .map_err(|e| error_chain(&e))?;
                if let Some(dir) = console.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                hv.define(&xml).map_err(|e| error_chain(&e))?;
                Ok(())
            })
            .await?;
        if target.power == crate::reconcile::Power::Running {
            self.require_lease("start the rebuilt server")?;
            let name = target.domain.domain_name();
            self.host
                .blocking(move |hv, _| hv.start(&name).map_err(|e| error_chain(&e)))
                .await?;
        }
        Ok(String::new())
    }

    async fn snapshot(
        &self,
        operation_id: &str,
        step: &str,
        s: &pb::SnapshotCommand,
    ) -> Result<String, String> {
        let format = desired::disk_format(s.disk_format)
            .ok_or_else(|| "the snapshot has no disk format".to_owned())?;
        let file = {
            let _hold = self.host.hold(&s.server_id).await;
            let server = self.desired_server(&s.server_id)?;
            let disk = DiskRef::root(
                Uuid::parse_str(&s.server_id).map_err(|_| "bad server id".to_owned())?,
                server.placement_generation,
            );
            let name = domain_name(&s.server_id);
            let timeout = self.host.shutdown_timeout;
            let was_running = self
                .host
                .blocking({
                    let name = name.clone();
                    move |hv, _| match hv.info(&name) {
                        Ok(info) => Ok(info.power.is_active()),
                        Err(e) if e.is_not_found() => Ok(false),
                        Err(e) => Err(error_chain(&e)),
                    }
                })
                .await?;
            if was_running {
                let name = name.clone();
                self.host
                    .blocking(move |hv, _| {
                        hv.shutdown(&name, timeout)
                            .map(drop)
                            .map_err(|e| error_chain(&e))
                    })
                    .await?;
            }
            send_progress(&self.link, operation_id, step, "saving the disk", 0, 0);
            let snapshot_id = Uuid::new_v4();
            let saved = self
                .host
                .blocking(move |_, disks| {
                    disks
                        .snapshot(disk, snapshot_id, format)
                        .map_err(|e| error_chain(&e))
                })
                .await;
            // Running again before the upload, whether or not the copy worked.
            if was_running && self.link.lease.is_valid() {
                let restarted = self
                    .host
                    .blocking(move |hv, _| hv.start(&name).map_err(|e| error_chain(&e)))
                    .await;
                if let Err(e) = restarted {
                    tracing::error!(server = %s.server_id, "could not start the server again after saving its disk: {e}");
                }
            }
            saved?
        };
        // The upload can take minutes for a big disk: its bytes go to the operation's progress.
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reporter = {
            let (link, sent, op, step) = (
                self.link.clone(),
                sent.clone(),
                operation_id.to_owned(),
                step.to_owned(),
            );
            let total = file.size;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let done = sent.load(std::sync::atomic::Ordering::Relaxed).min(total);
                    send_progress(&link, &op, &step, "uploading", done, total);
                }
            })
        };
        let uploaded = transfer::upload_snapshot(
            &self.controllers,
            operation_id,
            &s.image_id,
            &file.path,
            file.size,
            &file.sha256,
            &sent,
        )
        .await;
        reporter.abort();
        let disks = self.host.disks.clone();
        let id = file
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| Uuid::parse_str(n).ok());
        if let Some(id) = id {
            let _ = tokio::task::spawn_blocking(move || disks.delete_snapshot(id)).await;
        }
        let image = uploaded.map_err(|e| format!("uploading the saved disk failed: {e}"))?;
        Ok(format!(
            "saved {} bytes into image {} ({})",
            file.size,
            image.id,
            pb::ImageStatus::try_from(image.status)
                .map(|s| s.as_str_name())
                .unwrap_or("unknown status")
        ))
    }

    async fn query(&self, q: pb::AgentQuery) -> pb::AgentQueryResult {
        let mut result = pb::AgentQueryResult {
            query_id: q.query_id,
            ..Default::default()
        };
        let answer = match q.query {
            Some(Query::ConsoleLog(c)) => self
                .console_log(&c.server_id, c.lines)
                .await
                .map(pb::agent_query_result::Result::ConsoleLog),
            Some(Query::Diagnostics(d)) => self
                .diagnostics(&d.server_id)
                .await
                .map(pb::agent_query_result::Result::Diagnostics),
            None => Err("the query asks nothing".into()),
        };
        match answer {
            Ok(r) => result.result = Some(r),
            Err(e) => result.error = e,
        }
        result
    }

    async fn console_log(
        &self,
        server_id: &str,
        lines: u32,
    ) -> Result<pb::ServerConsoleLog, String> {
        let name = domain_name(server_id);
        let log = self
            .host
            .blocking(move |hv, _| {
                hv.console_log(&name, CONSOLE_MAX_BYTES)
                    .map_err(|e| error_chain(&e))
            })
            .await?;
        Ok(tail_lines(&log.bytes, lines, log.truncated))
    }

    async fn diagnostics(&self, server_id: &str) -> Result<pb::ServerDiagnostics, String> {
        let name = domain_name(server_id);
        let (info, stats, sizes) = self
            .host
            .blocking(move |hv, disks| {
                let info = hv.info(&name).map_err(|e| error_chain(&e))?;
                let stats = if info.power.is_active() {
                    Some(hv.stats(&name).map_err(|e| error_chain(&e))?)
                } else {
                    None
                };
                // Virtual and allocated size of each disk file, when it is one of ours.
                let mut sizes = HashMap::new();
                for d in stats.iter().flat_map(|s| &s.disks) {
                    let Some(path) = &d.path else { continue };
                    let Some((id, generation, role)) = disks.layout().parse(path) else {
                        continue;
                    };
                    let Ok(server) = Uuid::parse_str(&id) else {
                        continue;
                    };
                    if let Ok(i) = disks.disk_info(DiskRef::new(server, generation, role)) {
                        sizes.insert(d.device.clone(), (i.virtual_size, i.actual_size));
                    }
                }
                Ok((info, stats, sizes))
            })
            .await?;
        let stats = stats.unwrap_or_default();
        let collected_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(pb::ServerDiagnostics {
            server_id: server_id.to_owned(),
            host: self.hostname.clone(),
            power_state: power_to_pb(info.power) as i32,
            driver: "libvirt".into(),
            uptime_seconds: 0,
            cpu: Some(pb::ServerCpuDiagnostics {
                vcpus: info.vcpus,
                cpu_time_ns: info.cpu_time_ns,
                vcpu_time_ns: Vec::new(),
            }),
            memory: Some(pb::ServerMemoryDiagnostics {
                maximum_kib: info.max_memory_kib,
                actual_kib: stats.memory.actual_kib.unwrap_or(info.memory_kib),
                rss_kib: stats.memory.rss_kib.unwrap_or(0),
                available_kib: 0,
                unused_kib: stats.memory.unused_kib.unwrap_or(0),
            }),
            disks: stats
                .disks
                .iter()
                .map(|d| {
                    let (capacity, allocation) = sizes.get(&d.device).copied().unwrap_or((0, None));
                    pb::ServerDiskDiagnostics {
                        device: d.device.clone(),
                        read_bytes: d.read_bytes,
                        read_requests: d.read_reqs,
                        write_bytes: d.write_bytes,
                        write_requests: d.write_reqs,
                        errors: 0,
                        capacity_bytes: capacity,
                        allocation_bytes: allocation.unwrap_or(0),
                    }
                })
                .collect(),
            nics: stats
                .nics
                .iter()
                .map(|n| pb::ServerNicDiagnostics {
                    mac_address: n.mac.clone().unwrap_or_default(),
                    rx_bytes: n.rx_bytes,
                    rx_packets: n.rx_packets,
                    tx_bytes: n.tx_bytes,
                    tx_packets: n.tx_packets,
                    ..Default::default()
                })
                .collect(),
            collected_at_ms,
        })
    }
}

/// The server a command acts on.
fn command_server(c: &pb::AgentCommand) -> Option<&str> {
    Some(match c.payload.as_ref()? {
        Payload::Reboot(r) => &r.server_id,
        Payload::Rebuild(r) => &r.server_id,
        Payload::Snapshot(s) => &s.server_id,
        Payload::PrepareMigration(p) => &p.server.as_ref()?.id,
        Payload::Migrate(m) => &m.server_id,
        Payload::LiveMigrate(m) => &m.server_id,
        Payload::AbortMigration(m) => &m.server_id,
        Payload::DestroyStale(d) => &d.server_id,
    })
}

fn payload_name(p: &Payload) -> &'static str {
    match p {
        Payload::Reboot(_) => "reboot",
        Payload::Rebuild(_) => "rebuild",
        Payload::PrepareMigration(_) => "prepare-migration",
        Payload::Migrate(_) => "migrate",
        Payload::LiveMigrate(_) => "live-migrate",
        Payload::AbortMigration(_) => "abort-migration",
        Payload::DestroyStale(_) => "destroy-stale",
        Payload::Snapshot(_) => "snapshot",
    }
}

/// The last `lines` lines of `bytes` (all when 0), invalid UTF-8 replaced.
pub fn tail_lines(bytes: &[u8], lines: u32, truncated: bool) -> pb::ServerConsoleLog {
    let text = String::from_utf8_lossy(bytes);
    if lines == 0 {
        return pb::ServerConsoleLog {
            output: text.into_owned(),
            truncated,
        };
    }
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut start = 0;
    let mut seen = 0;
    for (i, _) in body.rmatch_indices('\n') {
        seen += 1;
        if seen == lines {
            start = i + 1;
            break;
        }
    }
    pb::ServerConsoleLog {
        output: text[start..].to_owned(),
        truncated: truncated || start > 0,
    }
}

/// Tells the controller how far a running command step is (an unfinished step result).
fn send_progress(link: &Link, operation_id: &str, step: &str, phase: &str, done: u64, total: u64) {
    let percent = match total {
        0 => 0,
        t => (done.saturating_mul(100) / t).min(100) as u32,
    };
    link.send(Outgoing {
        session: None,
        msg: In::StepResult(pb::AgentStepResult {
            operation_id: operation_id.to_owned(),
            step: step.to_owned(),
            finished: false,
            ok: false,
            message: String::new(),
            progress: Some(pb::OperationProgress {
                phase: phase.to_owned(),
                percent,
                bytes_done: done,
                bytes_total: total,
            }),
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tails_count_lines_from_the_end() {
        let log = b"one\ntwo\nthree\n";
        assert_eq!(tail_lines(log, 0, false).output, "one\ntwo\nthree\n");
        let two = tail_lines(log, 2, false);
        assert_eq!((two.output.as_str(), two.truncated), ("two\nthree\n", true));
        let all = tail_lines(log, 5, false);
        assert_eq!(
            (all.output.as_str(), all.truncated),
            ("one\ntwo\nthree\n", false)
        );
        assert_eq!(tail_lines(b"a\nb", 1, false).output, "b");
        assert_eq!(tail_lines(b"", 3, false).output, "");
        assert!(
            tail_lines(b"x\n", 3, true).truncated,
            "the driver's truncation stays"
        );
        assert_eq!(tail_lines(b"\xffok\n", 1, false).output, "\u{fffd}ok\n");
    }
}

//! Migration commands (live and cold) and the clean-up of a copy that lost its placement.
//!
//! - **PrepareMigration** (destination): the base image into the cache (verified sha256, the
//!   executor's path), the empty disks of the new generation on that base (the same
//!   [`crate::reconcile::DiskLayout`] paths a normal boot uses), and the domain XML rendered
//!   exactly as a normal define would (new generation in its metadata, this host's disk paths).
//!   Nothing is defined or started. The step's `message` on success is that XML; a resent
//!   command renders the same XML again. The controller lists the server with
//!   `incoming_migration` meanwhile, which holds it ([`crate::desired`]).
//! - **LiveMigrate** (source, needs the lease): the server is held while libvirt migrates the
//!   running domain peer to peer to the destination's libvirt (`[migration] uri_template`),
//!   with the destination XML, copying the disks when `block_migration`. See
//!   [`Dispatcher::run_migration`] for progress, deadline and abort.
//! - **Migrate** (cold, source, needs the lease): the domain is shut down (ACPI, then destroyed
//!   after the shutdown timeout), started paused (its vCPUs never run here) and migrated
//!   without `LIVE`, disks copied; it arrives paused and the destination's planner resumes it
//!   (cold boot from the copied disks) or destroys it once ownership moves. On failure the
//!   paused source domain is destroyed again: the source is back to shut off.
//! - **AbortMigration** (source): aborts the running migration of the server (the migrate step
//!   then fails saying it was cancelled); ok also when none runs.
//! - **DestroyStale**: destroys and undefines the local domain and deletes its disks unless
//!   they hold `current_generation` (used on the destination after a failed migration).
//!
//! After a successful migration the source keeps the server held while the desired state still
//! lists it at the generation that left ([`Host::mark_departed`]): the domain is gone, but its
//! disks are still here, and the planner must not define and start a second copy from them
//! before ownership moves. The departure is kept in `<state_dir>/departed/<server id>` too, so
//! an agent restarted in that window holds the server as well. A LiveMigrate or Migrate command
//! for the generation that left (resent after an agent restart or a leader change) is answered
//! ok ("already migrated to <destination>") rather than failing on the missing domain, which
//! would make the controller roll back a migration that succeeded.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_message::Msg as In;
use tokio::sync::Notify;
use uuid::Uuid;

use super::Dispatcher;
use crate::driver::disks::DiskRef;
use crate::driver::domain_xml;
use crate::driver::{HypervisorError, MigrationRequest, PowerState};
use crate::executor::{error_chain, Departure, HoldGuard, Host};
use crate::render::domain::{domain_name, render_domain, DiskRole};
use crate::session::{Link, Outgoing};

/// How long a migration call may keep running after it was aborted before the step is
/// answered anyway (libvirt can take minutes to notice a dead peer); the server stays held
/// until the call returns.
const ABORT_GRACE: Duration = Duration::from_secs(10);
/// How often an abort is repeated while the migration call has not returned.
const ABORT_RETRY: Duration = Duration::from_secs(3);
const GIB: u64 = 1 << 30;

/// Migrations on this host (running, or waiting for their server), by server id: how to
/// cancel each.
#[derive(Default)]
pub struct Running {
    by_server: parking_lot::Mutex<HashMap<String, Vec<Arc<Cancel>>>>,
}

/// A cancellation request for one migration.
#[derive(Default)]
struct Cancel {
    requested: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Cancel {
    fn request(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn is_requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Running {
    /// Registers a migration of `server_id` until the returned guard drops.
    pub(super) fn register(self: &Arc<Self>, server_id: &str) -> Registered {
        let cancel = Arc::new(Cancel::default());
        self.by_server
            .lock()
            .entry(server_id.to_owned())
            .or_default()
            .push(cancel.clone());
        Registered {
            running: self.clone(),
            server_id: server_id.to_owned(),
            cancel,
        }
    }
}

/// A registered migration; removed from [`Running`] when it ends.
pub struct Registered {
    running: Arc<Running>,
    server_id: String,
    cancel: Arc<Cancel>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut map = self.running.by_server.lock();
        if let Some(list) = map.get_mut(&self.server_id) {
            list.retain(|c| !Arc::ptr_eq(c, &self.cancel));
            if list.is_empty() {
                map.remove(&self.server_id);
            }
        }
    }
}

/// Why a migration was stopped by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Deadline,
    Cancelled,
}

/// Migration or cold migration, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Live,
    Cold,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Live => "live migration",
            Kind::Cold => "cold migration",
        }
    }
}

fn hv_err(e: HypervisorError) -> String {
    error_chain(&e)
}

/// Checks the destination XML names this server and the generation the controller gave.
fn check_dest_xml(xml: &str, server_id: &str, generation: u64) -> Result<(), String> {
    let parsed = domain_xml::parse(xml)
        .map_err(|e| format!("the destination domain XML cannot be read: {e}"))?;
    let meta = parsed.server.ok_or_else(|| {
        "the destination domain XML carries no Flotilla metadata (render it with \
         PrepareMigration on the destination)"
            .to_owned()
    })?;
    if meta.server_id.to_string() != server_id || meta.generation != generation {
        return Err(format!(
            "the destination domain XML is for server {} generation {}, not {server_id} \
             generation {generation}",
            meta.server_id, meta.generation
        ));
    }
    Ok(())
}

impl Dispatcher {
    pub(super) async fn prepare_migration(
        &self,
        p: &pb::PrepareMigrationCommand,
    ) -> Result<String, String> {
        let server = p
            .server
            .as_ref()
            .ok_or_else(|| "the command names no server".to_owned())?;
        let _hold = self.host.hold(&server.id).await;
        self.require_lease("prepare an incoming migration")?;
        let target = self.host.mapping.target(server)?;
        let id = Uuid::parse_str(&server.id).map_err(|_| "bad server id".to_owned())?;
        let generation = target.generation();
        // The executor's path: fetch (or find) the base, verified by its sha256.
        let base = self.host.ensure_base(&target.image).await?;
        let format = target.image.format;
        let spec = target.domain.spec();
        let disks: Vec<(DiskRole, u64)> = spec
            .disks
            .iter()
            .map(|(role, d)| (role, d.size_bytes))
            .collect();
        let console = spec.console_log.clone();
        self.host
            .blocking(move |_, d| {
                for (role, size_bytes) in disks {
                    let disk = DiskRef::new(id, generation, role);
                    let made = match role {
                        DiskRole::Root => {
                            d.create_overlay(disk, &base, format, size_bytes.div_ceil(GIB))
                        }
                        DiskRole::Ephemeral | DiskRole::Swap => d.create_blank(disk, size_bytes),
                    };
                    made.map_err(|e| error_chain(&e))?;
                }
                if let Some(dir) = console.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                Ok(())
            })
            .await?;
        tracing::info!(server = %server.id, generation, source = %p.source_host, "prepared an incoming migration");
        Ok(render_domain(&target.domain))
    }

    pub(super) async fn live_migrate(
        &self,
        c: &pb::AgentCommand,
        m: &pb::LiveMigrateCommand,
        registered: Registered,
    ) -> Result<String, String> {
        let hold = self.host.hold(&m.server_id).await;
        if let Some(done) = self.already_migrated(c, &m.server_id, m.destination_generation) {
            return Ok(done);
        }
        self.require_lease("live-migrate")?;
        check_dest_xml(
            &m.destination_domain_xml,
            &m.server_id,
            m.destination_generation,
        )?;
        let name = domain_name(&m.server_id);
        let info = self.domain_info(&name).await?.ok_or_else(|| {
            format!(
                "server {} has no domain on {}; nothing to migrate",
                m.server_id, self.hostname
            )
        })?;
        if !info.power.is_active() {
            return Err(format!(
                "server {} is {} on {}; live migration needs a running server (use a cold \
                 migration)",
                m.server_id, info.power, self.hostname
            ));
        }
        let request = MigrationRequest {
            dest_uri: self.migration.dest_uri(&m.destination_address),
            dest_xml: m.destination_domain_xml.clone(),
            live: true,
            copy_storage: m.block_migration,
        };
        let result = self
            .run_migration(
                c,
                hold,
                &registered.cancel,
                Kind::Live,
                &m.server_id,
                request,
                m.timeout_seconds,
                &m.destination_host,
                m.destination_generation,
            )
            .await;
        if result.is_err() {
            // The source keeps the server: running as it was (libvirt resumes it after a failed
            // live migration; make sure).
            let name = name.clone();
            let lease = self.link.lease.is_valid();
            let state = self
                .host
                .blocking(move |hv, _| match hv.info(&name) {
                    Ok(i) if i.power == PowerState::Paused && info.power != PowerState::Paused => {
                        if lease {
                            hv.resume(&name).map_err(hv_err)?;
                        }
                        Ok(Some(hv.info(&name).map_err(hv_err)?.power))
                    }
                    Ok(i) => Ok(Some(i.power)),
                    Err(e) if e.is_not_found() => Ok(None),
                    Err(e) => Err(hv_err(e)),
                })
                .await;
            if !matches!(state, Ok(Some(p)) if p.is_active()) {
                tracing::error!(server = %m.server_id, "after the failed live migration the domain is {state:?} here");
            }
        }
        result
    }

    pub(super) async fn cold_migrate(
        &self,
        c: &pb::AgentCommand,
        m: &pb::MigrateCommand,
        registered: Registered,
    ) -> Result<String, String> {
        let hold = self.host.hold(&m.server_id).await;
        if let Some(done) = self.already_migrated(c, &m.server_id, m.destination_generation) {
            return Ok(done);
        }
        self.require_lease("migrate")?;
        if registered.cancel.is_requested() {
            return Err(format!(
                "cold migration of {} was cancelled before it started",
                m.server_id
            ));
        }
        check_dest_xml(
            &m.destination_domain_xml,
            &m.server_id,
            m.destination_generation,
        )?;
        let name = domain_name(&m.server_id);
        let info = self.domain_info(&name).await?.ok_or_else(|| {
            format!(
                "server {} has no domain on {}; nothing to migrate",
                m.server_id, self.hostname
            )
        })?;
        // Shut off, then started paused: the CPUs never run again here.
        let timeout = self.host.shutdown_timeout;
        let power = info.power;
        let prepared = name.clone();
        self.host
            .blocking(move |hv, _| {
                match power {
                    PowerState::ShutOff => {}
                    PowerState::Paused | PowerState::Crashed | PowerState::Suspended => {
                        hv.destroy(&prepared).map_err(hv_err)?
                    }
                    _ => drop(hv.shutdown(&prepared, timeout).map_err(hv_err)?),
                }
                hv.start_paused(&prepared).map_err(hv_err)
            })
            .await?;
        let request = MigrationRequest {
            dest_uri: self.migration.dest_uri(&m.destination_address),
            dest_xml: m.destination_domain_xml.clone(),
            live: false,
            copy_storage: true,
        };
        let result = self
            .run_migration(
                c,
                hold,
                &registered.cancel,
                Kind::Cold,
                &m.server_id,
                request,
                m.timeout_seconds,
                &m.destination_host,
                m.destination_generation,
            )
            .await;
        if result.is_err() {
            let name = name.clone();
            let destroyed = self
                .host
                .blocking(move |hv, _| match hv.destroy(&name) {
                    Err(e) if !e.is_not_found() => Err(hv_err(e)),
                    _ => Ok(()),
                })
                .await;
            if let Err(e) = destroyed {
                tracing::error!(server = %m.server_id, "could not power off the paused domain after the failed cold migration: {e}");
            }
        }
        result
    }

    pub(super) async fn abort_migration(
        &self,
        a: &pb::AbortMigrationCommand,
    ) -> Result<String, String> {
        let cancels = self
            .migrations
            .by_server
            .lock()
            .get(&a.server_id)
            .cloned()
            .unwrap_or_default();
        if !cancels.is_empty() {
            for cancel in cancels {
                cancel.request();
            }
            return Ok(format!("aborting the migration of {}", a.server_id));
        }
        // No migration of ours (e.g. one a previous agent process started): abort libvirt's
        // job if there is one. No hold: the migration holds the server.
        let name = domain_name(&a.server_id);
        let aborted = self
            .host
            .blocking(move |hv, _| match hv.abort_job(&name) {
                Ok(aborted) => Ok(aborted),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(hv_err(e)),
            })
            .await?;
        Ok(if aborted {
            format!("aborted the running job of {}", a.server_id)
        } else {
            format!("no migration of {} is running here", a.server_id)
        })
    }

    pub(super) async fn destroy_stale(
        &self,
        d: &pb::DestroyStaleCommand,
    ) -> Result<String, String> {
        let _hold = self.host.hold(&d.server_id).await;
        let id = Uuid::parse_str(&d.server_id).map_err(|_| "bad server id".to_owned())?;
        let keep = d.current_generation;
        let name = domain_name(&d.server_id);
        self.host
            .blocking(move |hv, disks| {
                let mut done = Vec::new();
                match hv.info(&name) {
                    Ok(info) if info.server.map(|m| m.generation) == Some(keep) => {}
                    Ok(info) => {
                        hv.destroy(&name).map_err(hv_err)?;
                        match hv.undefine(&name) {
                            Err(e) if !e.is_not_found() => return Err(hv_err(e)),
                            _ => {}
                        }
                        done.push(format!(
                            "removed the domain (generation {})",
                            info.server.map_or(0, |m| m.generation)
                        ));
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(hv_err(e)),
                }
                let mut generations: Vec<u64> = disks
                    .list_disks()
                    .map_err(|e| error_chain(&e))?
                    .into_iter()
                    .filter(|r| r.server == id && r.generation != keep)
                    .map(|r| r.generation)
                    .collect();
                generations.dedup();
                for g in generations {
                    disks
                        .delete_generation(id, g)
                        .map_err(|e| error_chain(&e))?;
                    done.push(format!("deleted the disks of generation {g}"));
                }
                Ok(if done.is_empty() {
                    "nothing stale here".to_owned()
                } else {
                    done.join("; ")
                })
            })
            .await
    }

    /// The answer to a migrate command for a migration to `destination_generation` that already
    /// succeeded (the command resent after an agent restart or a leader change): the domain is
    /// gone from here, and failing would make the controller roll back a server that runs at
    /// its destination.
    fn already_migrated(
        &self,
        c: &pb::AgentCommand,
        server_id: &str,
        destination_generation: u64,
    ) -> Option<String> {
        let departed = self
            .host
            .departure(server_id)
            .filter(|d| d.generation == destination_generation)?;
        let to = if departed.destination.is_empty() {
            format!("generation {destination_generation}")
        } else {
            departed.destination.clone()
        };
        tracing::info!(
            server = server_id,
            operation = %c.operation_id,
            migrated_by = %departed.operation_id,
            "migrate command for a migration that already succeeded; answering ok"
        );
        Some(format!("already migrated to {to}"))
    }

    async fn domain_info(&self, name: &str) -> Result<Option<crate::driver::DomainInfo>, String> {
        let name = name.to_owned();
        self.host
            .blocking(move |hv, _| match hv.info(&name) {
                Ok(i) => Ok(Some(i)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(hv_err(e)),
            })
            .await
    }

    /// Runs `hv.migrate` on a blocking thread and watches it: progress to the controller every
    /// `progress_interval` (from the job statistics), our own deadline (`timeout_seconds`, 0 =
    /// the configured default) and AbortMigration, both of which abort libvirt's job. The step
    /// is answered when the call returns, or [`ABORT_GRACE`] after an abort if libvirt is slow
    /// to give up (a dead network): the server then stays held until the call returns.
    #[allow(clippy::too_many_arguments)]
    async fn run_migration(
        &self,
        c: &pb::AgentCommand,
        hold: HoldGuard,
        cancel: &Cancel,
        kind: Kind,
        server_id: &str,
        request: MigrationRequest,
        timeout_seconds: u32,
        destination: &str,
        destination_generation: u64,
    ) -> Result<String, String> {
        let timeout = match timeout_seconds {
            0 => self.migration.default_timeout,
            s => Duration::from_secs(s.into()),
        };
        if cancel.is_requested() {
            return Err(format!(
                "{} of {server_id} was cancelled before it started",
                kind.as_str()
            ));
        }
        let name = domain_name(server_id);
        let started = Instant::now();
        tracing::info!(server = server_id, %destination, uri = %request.dest_uri, "{} started", kind.as_str());
        let mut call = {
            let (hv, name) = (self.host.hv.clone(), name.clone());
            tokio::task::spawn_blocking(move || hv.migrate(&name, &request))
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut give_up = tokio::time::Instant::now() + timeout + ABORT_GRACE;
        let mut retry = give_up;
        // Progress in a task of its own: reading job statistics waits for libvirt's job lock,
        // which a stuck migration can hold for long; the deadline must not wait for it.
        let reporter = {
            let (link, host, name) = (self.link.clone(), self.host.clone(), name.clone());
            let (operation_id, step) = (c.operation_id.clone(), c.step.clone());
            let every = self.migration.progress_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    report_progress(&link, &host, &operation_id, &step, &name).await;
                }
            })
        };
        let mut stop: Option<Stop> = None;
        let outcome = loop {
            tokio::select! {
                r = &mut call => {
                    break Some(r.unwrap_or_else(|e| Err(HypervisorError::Libvirt {
                        action: "migrate",
                        name: name.clone(),
                        message: format!("the migration call panicked: {e}"),
                    })));
                }
                _ = tokio::time::sleep_until(deadline), if stop.is_none() => {
                    stop = Some(Stop::Deadline);
                    give_up = tokio::time::Instant::now() + ABORT_GRACE;
                    retry = tokio::time::Instant::now() + ABORT_RETRY;
                    self.abort_in_background(&name);
                }
                _ = cancel.notify.notified(), if stop.is_none() => {
                    stop = Some(Stop::Cancelled);
                    give_up = tokio::time::Instant::now() + ABORT_GRACE;
                    retry = tokio::time::Instant::now() + ABORT_RETRY;
                    self.abort_in_background(&name);
                }
                // An abort that came before libvirt had started its job finds none: again.
                _ = tokio::time::sleep_until(retry), if stop.is_some() => {
                    retry = tokio::time::Instant::now() + ABORT_RETRY;
                    self.abort_in_background(&name);
                }
                _ = tokio::time::sleep_until(give_up), if stop.is_some() => break None,
            }
        };
        reporter.abort();
        let elapsed = started.elapsed();
        let source = &self.hostname;
        if outcome.is_none() {
            // libvirt has not given up yet: keep the server held until it does.
            let server_id = server_id.to_owned();
            let link = self.link.clone();
            let host = self.host.clone();
            tokio::spawn(async move {
                let late = call.await;
                tracing::info!(server = %server_id, "the aborted migration call returned: {late:?}");
                // libvirt may leave the source paused after a broken migration: running again.
                let resume = kind == Kind::Live && link.lease.is_valid();
                let resumed = host
                    .blocking(move |hv, _| match hv.info(&name) {
                        Ok(i) if resume && i.power == PowerState::Paused => {
                            hv.resume(&name).map_err(hv_err)
                        }
                        _ => Ok(()),
                    })
                    .await;
                if let Err(e) = resumed {
                    tracing::error!(server = %server_id, "could not resume the domain after the aborted migration: {e}");
                }
                drop(hold);
                link.kick();
            });
        }
        match (outcome, stop) {
            (Some(Ok(())), _) => {
                self.host.mark_departed(
                    server_id,
                    Departure {
                        generation: destination_generation,
                        operation_id: c.operation_id.clone(),
                        destination: destination.to_owned(),
                    },
                );
                tracing::info!(server = server_id, %destination, "{} done in {elapsed:.1?}", kind.as_str());
                Ok(format!(
                    "{} to {destination} done in {:.1} s",
                    kind.as_str(),
                    elapsed.as_secs_f64()
                ))
            }
            (_, Some(Stop::Deadline)) => Err(format!(
                "{} did not finish within {} s; aborted, the server keeps {} on {source}",
                kind.as_str(),
                timeout.as_secs(),
                if kind == Kind::Live {
                    "running"
                } else {
                    "its disks"
                }
            )),
            (_, Some(Stop::Cancelled)) => Err(format!(
                "{} to {destination} was cancelled (aborted on request); the server stays on \
                 {source}",
                kind.as_str()
            )),
            (Some(Err(e)), None) => Err(format!(
                "{} to {destination} failed: {}; the server stays on {source}",
                kind.as_str(),
                hv_err(e)
            )),
            (None, None) => unreachable!("the loop gives up only after a stop"),
        }
    }

    fn abort_in_background(&self, name: &str) {
        let (hv, name) = (self.host.hv.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || match hv.abort_job(&name) {
            Ok(aborted) => {
                tracing::info!(domain = %name, aborted, "asked libvirt to abort the migration")
            }
            Err(e) => {
                tracing::error!(domain = %name, "could not abort the migration: {}", error_chain(&e))
            }
        });
    }
}

/// Sends the migration's progress (from libvirt's job statistics) as an unfinished step result.
async fn report_progress(link: &Link, host: &Host, operation_id: &str, step: &str, name: &str) {
    let name = name.to_owned();
    let progress = host
        .blocking(move |hv, _| hv.job_progress(&name).map_err(hv_err))
        .await;
    let Ok(Some(p)) = progress else { return };
    link.send(Outgoing {
        session: None,
        msg: In::StepResult(pb::AgentStepResult {
            operation_id: operation_id.to_owned(),
            step: step.to_owned(),
            finished: false,
            ok: false,
            message: String::new(),
            progress: Some(pb::OperationProgress {
                phase: p.phase.as_str().to_owned(),
                percent: p.percent(),
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
            }),
        }),
    });
}

//! The executor: converges the host to the controller's desired state (I6, I7).
//!
//! A *round* runs on every new desired state, every `reconcile_interval`, and whenever the
//! session or an operation command kicks it (lease granted, a command finished). Each pass of a
//! round scans the host (libvirt domains, disk files, cached bases), maps the desired state
//! ([`crate::desired`]), asks the pure planner ([`plan`]) for steps and executes them in order
//! through the drivers (blocking calls in `spawn_blocking`). Before each step it checks that
//! the desired state did not change, that no command took the server over, and — for steps
//! that need it ([`Step::needs_lease`]) — that the lease is still valid; otherwise it re-plans.
//!
//! The first failing step ends the pass: its server (for a failed base fetch, every server on
//! that image) is left alone for the rest of the round and the failure is reported in that
//! server's `ObservedServer.error` (the controller reschedules a boot that failed). The next
//! pass plans the other servers. A server's error is cleared once a pass needs no step for it.
//!
//! After every pass the host's full observed state is published; the session sends it when it
//! changed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use parking_lot::Mutex;
use uuid::Uuid;

use crate::desired::Mapping;
use crate::driver::disks::{BaseImage as DiskBase, DiskRef, Disks, ImageSource};
use crate::driver::{self, DomainInfo, Hypervisor};
use crate::reconcile::{
    plan, BaseImage, Desired, Observed, ObservedDomain, PowerState, Step, Wanted,
};
use crate::render::domain::{domain_name, is_canonical_uuid, render_domain};
use crate::session::Link;

/// Passes per round before waiting for the next trigger (a step that keeps "succeeding"
/// without effect cannot spin).
const MAX_PASSES: usize = 8;
const GIB: u64 = 1 << 30;
/// A cached base no disk uses is kept this long after it was last asked for.
pub const BASE_IDLE: Duration = Duration::from_secs(3600);
const EVICT_EVERY: Duration = Duration::from_secs(600);

/// Opens the byte stream of an image (a controller's `FetchImage`).
pub trait Fetcher: Send + Sync {
    fn source(&self, image_id: &str) -> Box<dyn ImageSource + Send>;
}

/// Why a server cannot converge, as reported to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerError {
    generation: u64,
    message: String,
    /// From mapping the desired state (recomputed every pass) rather than from a step.
    mapping: bool,
}

/// What a scan of the host found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Order in which scans started; a report is published only if it is newer than the last
    /// one published (see [`Host::publish`]).
    pub seq: u64,
    pub observed: Observed,
    /// Flotilla domains by server id.
    pub domains: BTreeMap<String, DomainInfo>,
}

/// The host: drivers and what the executor and the command dispatcher share.
pub struct Host {
    pub hv: Arc<dyn Hypervisor>,
    pub disks: Arc<dyn Disks>,
    pub fetcher: Arc<dyn Fetcher>,
    pub mapping: Mapping,
    pub shutdown_timeout: Duration,
    /// Servers an operation command works on: the planner leaves them alone.
    held: Mutex<BTreeSet<String>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    errors: Mutex<BTreeMap<String, ServerError>>,
    scans: std::sync::atomic::AtomicU64,
    published: Mutex<u64>,
    /// Ports the network reconcile wired (sorted), sent with every observed state.
    wired_ports: Mutex<Vec<String>>,
    /// Server id → revision of the desired state in force when its domain was last seen
    /// active (see [`Host::stopped_by_themselves`]).
    seen_active: Mutex<HashMap<String, u64>>,
    /// Server id → where a successful migration took it (see [`Host::mark_departed`]).
    departed: Mutex<HashMap<String, Departure>>,
}

/// A successful migration away from this host ([`Host::mark_departed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The generation the server has at its destination.
    pub generation: u64,
    /// The operation that moved it (empty when not known).
    pub operation_id: String,
    /// The destination host (empty when not known).
    pub destination: String,
}

impl Departure {
    /// The marker file's text: the generation, the operation id and the destination, one a
    /// line (a file of only the generation is read too).
    fn to_file(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.generation, self.operation_id, self.destination
        )
    }

    fn from_file(text: &str) -> Option<Departure> {
        let mut lines = text.lines().map(str::trim);
        let generation = lines.next()?.parse().ok()?;
        let mut field = || lines.next().unwrap_or_default().to_owned();
        Some(Departure {
            generation,
            operation_id: field(),
            destination: field(),
        })
    }
}

/// Keeps a server held while it lives (see [`Host::hold`]).
pub struct HoldGuard {
    host: Arc<Host>,
    server_id: String,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.host.held.lock().remove(&self.server_id);
    }
}

/// How executing a plan ended.
enum Executed {
    Done,
    /// Something changed under the plan (desired state, lease, a command took a server).
    Interrupted,
    Failed {
        servers: Vec<String>,
        message: String,
    },
}

impl Host {
    pub fn new(
        hv: Arc<dyn Hypervisor>,
        disks: Arc<dyn Disks>,
        fetcher: Arc<dyn Fetcher>,
        mapping: Mapping,
        shutdown_timeout: Duration,
    ) -> Host {
        Host {
            hv,
            disks,
            fetcher,
            mapping,
            shutdown_timeout,
            held: Mutex::new(BTreeSet::new()),
            locks: Mutex::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            scans: std::sync::atomic::AtomicU64::new(0),
            published: Mutex::new(0),
            wired_ports: Mutex::new(Vec::new()),
            seen_active: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashMap::new()),
        }
        .load_departed()
    }

    /// Where departures are remembered across agent restarts: `<state_dir>/departed/<server
    /// id>` holding the generation the server left for.
    fn departed_dir(&self) -> std::path::PathBuf {
        self.mapping.state_dir.join("departed")
    }

    fn load_departed(self) -> Host {
        if let Ok(entries) = std::fs::read_dir(self.departed_dir()) {
            let mut departed = self.departed.lock();
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let departure = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|text| Departure::from_file(&text));
                if let (true, Some(departure)) = (is_canonical_uuid(&id), departure) {
                    departed.insert(id, departure);
                }
            }
        }
        self
    }

    /// The server migrated away to a copy of `generation`: while the desired state still lists
    /// it here at an older generation (ownership has not moved yet), the planner leaves it
    /// alone, or it would define and start a second copy from the disks left here. Once the
    /// desired state no longer lists it at an older generation, it is planned as usual again
    /// (its leftovers removed as stale).
    /// Remembered on disk too: an agent restarted before ownership moves must not boot the
    /// server from its leftovers either, and answers a resent migrate command for the same
    /// generation as done ([`Host::departure`]).
    pub fn mark_departed(&self, server_id: &str, departure: Departure) {
        let text = departure.to_file();
        self.departed.lock().insert(server_id.to_owned(), departure);
        if !is_canonical_uuid(server_id) {
            return;
        }
        let dir = self.departed_dir();
        let written =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(server_id), text));
        if let Err(e) = written {
            tracing::error!(
                server = server_id,
                "cannot record the departure in {}: {e}",
                dir.display()
            );
        }
    }

    /// Departed servers the desired state still lists at an older generation; forgets the
    /// others.
    fn still_departing(&self, desired: &pb::DesiredState) -> Vec<String> {
        let mut departed = self.departed.lock();
        let dir = self.departed_dir();
        departed.retain(|id, moved| {
            let departing = desired
                .servers
                .iter()
                .any(|s| s.id == *id && s.placement_generation < moved.generation);
            if !departing {
                let _ = std::fs::remove_file(dir.join(id));
            }
            departing
        });
        departed.keys().cloned().collect()
    }

    /// Where a successful migration took `server_id`, while it is remembered (until ownership
    /// moves).
    pub fn departure(&self, server_id: &str) -> Option<Departure> {
        self.departed.lock().get(server_id).cloned()
    }

    fn lock_of(&self, server_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock();
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(server_id.to_owned()).or_default().clone()
    }

    /// Takes `server_id` away from the planner until the guard drops, and waits until no step
    /// of the executor runs on it.
    pub async fn hold(self: &Arc<Self>, server_id: &str) -> HoldGuard {
        self.held.lock().insert(server_id.to_owned());
        let lock = self.lock_of(server_id).lock_owned().await;
        HoldGuard {
            host: self.clone(),
            server_id: server_id.to_owned(),
            _lock: lock,
        }
    }

    fn is_held(&self, server_id: &str) -> bool {
        self.held.lock().contains(server_id)
    }

    /// Runs a blocking driver call off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor, &dyn Disks) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let (hv, disks) = (self.hv.clone(), self.disks.clone());
        tokio::task::spawn_blocking(move || f(hv.as_ref(), disks.as_ref()))
            .await
            .unwrap_or_else(|e| Err(format!("a driver call panicked: {e}")))
    }

    /// Servers whose guest powered off (or crashed) by itself: seen active under this very
    /// desired state, and now shut off or crashed. Like Nova's power-state sync, the controller
    /// decides what happens next (it records the server as stopped and sends a new desired
    /// state), so the executor does not start them again meanwhile — else every `poweroff` in a
    /// guest would be followed by a restart and another shutdown.
    fn stopped_by_themselves(&self, scan: &Scan, desired: &pb::DesiredState) -> Vec<String> {
        let to_run: BTreeSet<&str> = desired
            .servers
            .iter()
            .filter(|s| s.power_state == pb::ServerPowerState::Running as i32)
            .map(|s| s.id.as_str())
            .collect();
        let mut seen = self.seen_active.lock();
        seen.retain(|id, _| scan.observed.servers.contains_key(id));
        let mut out = Vec::new();
        for (id, s) in &scan.observed.servers {
            let Some(domain) = s.domain else { continue };
            match domain.power {
                PowerState::Running | PowerState::Paused => {
                    seen.insert(id.clone(), desired.revision);
                }
                PowerState::ShutOff | PowerState::Crashed => {
                    if seen.get(id) == Some(&desired.revision) && to_run.contains(id.as_str()) {
                        out.push(id.clone());
                    }
                }
            }
        }
        out
    }

    /// The server's power state was changed by an operation command, not by its guest.
    pub fn forget_active(&self, server_id: &str) {
        self.seen_active.lock().remove(server_id);
    }

    /// What the host holds now.
    pub async fn scan(&self) -> Result<Scan, String> {
        let seq = self.scans.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut scan = self.blocking(|hv, disks| scan(hv, disks)).await?;
        scan.seq = seq;
        Ok(scan)
    }

    /// Publishes the report of `scan` for the session, unless a scan that started later was
    /// published already: reports reach the controller in the order their scans started, so
    /// a state seen in the middle of a command never follows the command's result.
    pub fn publish(&self, link: &Link, scan: &Scan, desired: Option<&pb::DesiredState>) {
        let mut published = self.published.lock();
        if scan.seq <= *published {
            return;
        }
        *published = scan.seq;
        link.publish_observed(pb::AgentObserved {
            desired_revision: desired.map_or(0, |d| d.revision),
            servers: self.report(scan, desired),
            wired_ports: self.wired_ports.lock().clone(),
        });
    }

    /// Records the ports the network reconcile has wired and republishes the observed state
    /// when they changed.
    pub fn publish_wired(&self, link: &Link, wired: Vec<String>) {
        let _published = self.published.lock();
        let mut current = self.wired_ports.lock();
        if *current == wired {
            return;
        }
        current.clone_from(&wired);
        if let Some(mut observed) = link.observed() {
            observed.wired_ports = wired;
            link.publish_observed(observed);
        }
    }

    /// Scans and publishes now; returns the servers reported (empty when the host cannot be
    /// read).
    pub async fn refresh(&self, link: &Link) -> Vec<pb::ObservedServer> {
        let desired = link.desired();
        match self.scan().await {
            Ok(scan) => {
                self.publish(link, &scan, desired.as_deref());
                self.report(&scan, desired.as_deref())
            }
            Err(e) => {
                tracing::error!("cannot read the host's state: {e}");
                Vec::new()
            }
        }
    }

    /// The host's full observed state for the controller, from a scan and the errors known.
    pub fn report(
        &self,
        scan: &Scan,
        desired: Option<&pb::DesiredState>,
    ) -> Vec<pb::ObservedServer> {
        let errors = self.errors.lock().clone();
        report(scan, &errors, desired)
    }

    /// Fetches `image` into the cache unless it is there; returns its path.
    pub async fn ensure_base(&self, image: &BaseImage) -> Result<std::path::PathBuf, String> {
        let base = DiskBase {
            sha256: image.sha256.clone(),
            format: image.format,
            size: image.size_bytes,
        };
        let mut source = self.fetcher.source(&image.image_id);
        self.blocking(move |_, disks| {
            disks
                .ensure_base(&base, &mut *source)
                .map_err(|e| error_chain(&e))
        })
        .await
    }
}

/// Runs rounds forever (see the module doc), and now and then removes cached bases no disk
/// uses that nobody asked for within [`BASE_IDLE`] (and temp files a crash left behind).
pub async fn run(host: Arc<Host>, link: Arc<Link>, interval: Duration) {
    let mut desired_rx = link.watch_desired();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut evict = tokio::time::interval(EVICT_EVERY);
    evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = desired_rx.changed() => {}
            _ = tick.tick() => {}
            _ = link.kicked() => {}
            _ = evict.tick() => {
                let evicted = host
                    .blocking(|_, disks| disks.evict_unused(BASE_IDLE).map_err(|e| error_chain(&e)))
                    .await;
                match evicted {
                    Ok(gone) if !gone.is_empty() => {
                        let bytes: u64 = gone.iter().map(|b| b.bytes).sum();
                        tracing::info!(count = gone.len(), bytes, "removed unused base images");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("could not clean the image cache: {e}"),
                }
                continue;
            }
        }
        desired_rx.borrow_and_update();
        round(&host, &link).await;
    }
}

/// One round: plan and execute until converged, the passes run out, or nothing is left to try.
pub async fn round(host: &Arc<Host>, link: &Link) {
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for _ in 0..MAX_PASSES {
        let scan = match host.scan().await {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!("cannot read the host's state: {e}");
                return;
            }
        };
        let Some(desired) = link.desired() else {
            // Nothing to converge to before the controller says what it wants.
            host.publish(link, &scan, None);
            return;
        };
        let mut held = host.held.lock().clone();
        held.extend(failed.iter().cloned());
        held.extend(host.stopped_by_themselves(&scan, &desired));
        held.extend(host.still_departing(&desired));
        let mapped = host.mapping.desired(&desired, &held);
        let steps = plan(&mapped.desired, &scan.observed, link.lease.is_valid());
        note_errors(host, &desired, &mapped.errors, &steps, &failed);
        host.publish(link, &scan, Some(&desired));
        if steps.is_empty() {
            return;
        }
        match execute(host, link, &desired, &mapped.desired, &steps).await {
            Executed::Done | Executed::Interrupted => {}
            Executed::Failed { servers, message } => {
                tracing::error!("{message}");
                let mut errors = host.errors.lock();
                for id in servers {
                    let generation = match mapped.desired.get(&id) {
                        Some(Wanted::Keep(t)) => t.generation(),
                        _ => scan
                            .observed
                            .servers
                            .get(&id)
                            .and_then(|s| s.domain.and_then(|d| d.generation))
                            .unwrap_or(0),
                    };
                    errors.insert(
                        id.clone(),
                        ServerError {
                            generation,
                            message: message.clone(),
                            mapping: false,
                        },
                    );
                    failed.insert(id);
                }
            }
        }
    }
    if let Ok(scan) = host.scan().await {
        host.publish(link, &scan, link.desired().as_deref());
    }
}

/// Updates the error memory after planning: mapping errors as found; step errors dropped once
/// their server converged (no step left for it), or when it is no longer wanted at that
/// generation.
fn note_errors(
    host: &Host,
    desired: &pb::DesiredState,
    mapping: &BTreeMap<String, (u64, String)>,
    steps: &[Step],
    failed: &BTreeSet<String>,
) {
    let generations: BTreeMap<&str, u64> = desired
        .servers
        .iter()
        .map(|s| (s.id.as_str(), s.placement_generation))
        .collect();
    let busy: BTreeSet<&str> = steps.iter().filter_map(Step::server_id).collect();
    let mut errors = host.errors.lock();
    errors.retain(|id, e| {
        let wanted = generations.get(id.as_str()) == Some(&e.generation);
        wanted && !e.mapping && (failed.contains(id) || busy.contains(id.as_str()))
    });
    for (id, (generation, message)) in mapping {
        errors.insert(
            id.clone(),
            ServerError {
                generation: *generation,
                message: message.clone(),
                mapping: true,
            },
        );
    }
}

/// Runs `steps` in order; see the module doc for when it stops early.
async fn execute(
    host: &Arc<Host>,
    link: &Link,
    desired_state: &Arc<pb::DesiredState>,
    desired: &Desired,
    steps: &[Step],
) -> Executed {
    for step in steps {
        let current = link.desired();
        if !current.is_some_and(|d| Arc::ptr_eq(&d, desired_state)) {
            return Executed::Interrupted;
        }
        let _lock = match step.server_id() {
            Some(id) => {
                // Busy: a command holds the server (or is about to). Whatever it does makes
                // this plan's view of the server stale, so re-plan from a fresh scan rather
                // than wait and then act on it (e.g. resume a domain that has migrated away).
                let Ok(lock) = host.lock_of(id).try_lock_owned() else {
                    return Executed::Interrupted;
                };
                if host.is_held(id) || host.departed.lock().contains_key(id) {
                    return Executed::Interrupted;
                }
                Some(lock)
            }
            None => None,
        };
        if step.needs_lease() && !link.lease.is_valid() {
            tracing::info!("the lease is not valid: not starting anything");
            return Executed::Interrupted;
        }
        tracing::debug!("{step}");
        if let Err(e) = run_step(host, desired, step).await {
            let servers = match step {
                Step::FetchBase { image } => desired
                    .iter()
                    .filter_map(|(id, w)| match w {
                        Wanted::Keep(t) if t.image.sha256 == image.sha256 => Some(id.to_owned()),
                        _ => None,
                    })
                    .collect(),
                other => other.server_id().map(str::to_owned).into_iter().collect(),
            };
            return Executed::Failed {
                servers,
                message: format!("{step}: {e}"),
            };
        }
    }
    Executed::Done
}

fn uuid(server_id: &str) -> Result<Uuid, String> {
    Uuid::parse_str(server_id).map_err(|_| format!("{server_id:?} is not a server id"))
}

/// The generation `desired` keeps for `server_id`, if any.
fn kept_generation(desired: &Desired, server_id: &str) -> Option<u64> {
    match desired.get(server_id) {
        Some(Wanted::Keep(t)) => Some(t.generation()),
        _ => None,
    }
}

async fn run_step(host: &Host, desired: &Desired, step: &Step) -> Result<(), String> {
    let hv_err = |e: driver::HypervisorError| error_chain(&e);
    let timeout = host.shutdown_timeout;
    match step.clone() {
        Step::DestroyStale { server_id, .. } | Step::UndefineStale { server_id, .. } => {
            let destroy = matches!(step, Step::DestroyStale { .. });
            let keep = kept_generation(desired, &server_id);
            host.blocking(move |hv, _| {
                let name = domain_name(&server_id);
                // Read the generation again: skip a copy that became the desired one.
                let info = match hv.info(&name) {
                    Ok(info) => info,
                    Err(e) if e.is_not_found() => return Ok(()),
                    Err(e) => return Err(hv_err(e)),
                };
                if keep.is_some() && info.server.map(|m| m.generation) == keep {
                    return Ok(());
                }
                if destroy {
                    hv.destroy(&name).map_err(hv_err)
                } else {
                    ignore_missing(hv.undefine(&name)).map_err(hv_err)
                }
            })
            .await
        }
        Step::Shutdown { server_id } => {
            host.blocking(move |hv, _| {
                hv.shutdown(&domain_name(&server_id), timeout)
                    .map(drop)
                    .map_err(hv_err)
            })
            .await
        }
        Step::Destroy { server_id } => {
            host.blocking(move |hv, _| hv.destroy(&domain_name(&server_id)).map_err(hv_err))
                .await
        }
        Step::Undefine { server_id } => {
            host.blocking(move |hv, _| {
                ignore_missing(hv.undefine(&domain_name(&server_id))).map_err(hv_err)
            })
            .await
        }
        Step::Start { server_id } => {
            host.blocking(move |hv, _| hv.start(&domain_name(&server_id)).map_err(hv_err))
                .await
        }
        Step::Resume { server_id } => {
            host.blocking(move |hv, _| hv.resume(&domain_name(&server_id)).map_err(hv_err))
                .await
        }
        Step::DeleteDisks {
            server_id,
            generation,
        } => {
            let server = uuid(&server_id)?;
            host.blocking(move |_, disks| {
                disks
                    .delete_generation(server, generation)
                    .map(drop)
                    .map_err(|e| error_chain(&e))
            })
            .await
        }
        Step::FetchBase { image } => host.ensure_base(&image).await.map(drop),
        Step::CreateOverlay {
            server_id,
            generation,
            base,
            path,
            size_bytes,
        } => {
            let disk = DiskRef::root(uuid(&server_id)?, generation);
            check_path(host.disks.as_ref(), disk, &path)?;
            // A cache hit: the base was fetched by an earlier step (or is fetched again if it
            // vanished since).
            let base_path = host.ensure_base(&base).await?;
            host.blocking(move |_, disks| {
                disks
                    .create_overlay(disk, &base_path, base.format, size_bytes.div_ceil(GIB))
                    .map(drop)
                    .map_err(|e| error_chain(&e))
            })
            .await
        }
        Step::CreateBlankDisk {
            server_id,
            generation,
            role,
            path,
            size_bytes,
        } => {
            let disk = DiskRef::new(uuid(&server_id)?, generation, role);
            check_path(host.disks.as_ref(), disk, &path)?;
            host.blocking(move |_, disks| {
                disks
                    .create_blank(disk, size_bytes)
                    .map(drop)
                    .map_err(|e| error_chain(&e))
            })
            .await
        }
        Step::Define { domain, .. } => {
            let console = domain.spec().console_log.clone();
            let xml = render_domain(&domain);
            host.blocking(move |hv, _| {
                if let Some(dir) = console.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        format!(
                            "cannot create the console log directory {}: {e}",
                            dir.display()
                        )
                    })?;
                }
                hv.define(&xml).map(drop).map_err(hv_err)
            })
            .await
        }
    }
}

/// The planner's path must be the driver's: both follow the same layout.
fn check_path(disks: &dyn Disks, disk: DiskRef, planned: &std::path::Path) -> Result<(), String> {
    let actual = disks.disk_path(disk);
    if actual != planned {
        return Err(format!(
            "the planned disk path {} is not the disks driver's {} (state_dir mismatch)",
            planned.display(),
            actual.display()
        ));
    }
    Ok(())
}

fn ignore_missing(r: Result<(), driver::HypervisorError>) -> Result<(), driver::HypervisorError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// An error with its causes, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The planner's view of a libvirt power state.
fn power(p: driver::PowerState) -> PowerState {
    use driver::PowerState as P;
    match p {
        P::Running | P::Blocked | P::ShuttingDown | P::Unknown => PowerState::Running,
        P::Paused | P::Suspended => PowerState::Paused,
        P::ShutOff => PowerState::ShutOff,
        P::Crashed => PowerState::Crashed,
    }
}

/// The wire power state of a domain.
pub fn power_to_pb(p: driver::PowerState) -> pb::ServerPowerState {
    use driver::PowerState as P;
    match p {
        P::Running | P::Blocked | P::ShuttingDown | P::Unknown => pb::ServerPowerState::Running,
        P::Paused => pb::ServerPowerState::Paused,
        P::Suspended => pb::ServerPowerState::Suspended,
        P::ShutOff => pb::ServerPowerState::Shutdown,
        P::Crashed => pb::ServerPowerState::Crashed,
    }
}

/// Reads the host: Flotilla domains (by their metadata), disk files, cached bases.
pub fn scan(hv: &dyn Hypervisor, disks: &dyn Disks) -> Result<Scan, String> {
    let mut out = Scan::default();
    for info in hv.list().map_err(|e| error_chain(&e))? {
        let Some(meta) = info.server else { continue };
        let id = meta.server_id.to_string();
        if info.name != domain_name(&id) {
            tracing::warn!(
                domain = %info.name,
                "domain carries Flotilla metadata for {id} under another name; ignoring it"
            );
            continue;
        }
        out.observed.servers.entry(id.clone()).or_default().domain = Some(ObservedDomain {
            power: power(info.power),
            generation: Some(meta.generation),
        });
        out.domains.insert(id, info);
    }
    for d in disks.list_disks().map_err(|e| error_chain(&e))? {
        out.observed
            .servers
            .entry(d.server.to_string())
            .or_default()
            .disks
            .entry(d.generation)
            .or_default()
            .insert(d.role);
    }
    out.observed.cached_bases = disks
        .list_bases()
        .map_err(|e| error_chain(&e))?
        .into_iter()
        .map(|b| b.sha256)
        .collect();
    Ok(out)
}

/// One entry per server with a domain, a disk or an error on this host, in id order. A server
/// with only disks reports the generation of those disks (the desired one when present), so the
/// controller does not consider it gone before its disks are.
fn report(
    scan: &Scan,
    errors: &BTreeMap<String, ServerError>,
    desired: Option<&pb::DesiredState>,
) -> Vec<pb::ObservedServer> {
    let wanted: BTreeMap<&str, u64> = desired
        .map(|d| {
            d.servers
                .iter()
                .map(|s| (s.id.as_str(), s.placement_generation))
                .collect()
        })
        .unwrap_or_default();
    let ids: BTreeSet<&String> = scan.observed.servers.keys().chain(errors.keys()).collect();
    let mut out = Vec::new();
    for id in ids {
        let error = errors.get(id);
        let mut entry = pb::ObservedServer {
            id: id.clone(),
            ..Default::default()
        };
        match scan.domains.get(id) {
            Some(info)
                if error
                    .is_none_or(|e| Some(e.generation) == info.server.map(|m| m.generation)) =>
            {
                entry.state = power_to_pb(info.power) as i32;
                entry.placement_generation = info.server.map_or(0, |m| m.generation);
                entry.domain_state = info.state.clone();
            }
            _ => {
                let disks = scan.observed.servers.get(id).map(|s| &s.disks);
                let desired_generation = wanted.get(id.as_str()).copied();
                entry.placement_generation = match (error, disks) {
                    (Some(e), _) => e.generation,
                    (None, Some(d)) if desired_generation.is_some_and(|g| d.contains_key(&g)) => {
                        desired_generation.unwrap_or_default()
                    }
                    (None, Some(d)) => d.keys().next_back().copied().unwrap_or(0),
                    (None, None) => 0,
                };
            }
        }
        if let Some(e) = error.filter(|e| e.generation == entry.placement_generation) {
            entry.error = e.message.clone();
        }
        out.push(entry);
    }
    out
}

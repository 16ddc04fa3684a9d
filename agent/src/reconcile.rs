//! The reconcile planner: what this host must do to converge to the controller's desired state
//! (I6) without ever letting a stale copy run (I7).
//!
//! [`plan`] is a pure function of three values: the [`Desired`] state (from the controller's
//! newest `DesiredState`, converted), the [`Observed`] state (what libvirt and the disk directory
//! show right now) and whether the agent's lease is valid. It returns the [`Step`]s to execute,
//! in order. The executor runs them one by one, re-observes and plans again — after every change
//! of either input and periodically, so a restarted agent repairs drift and adopts what is its
//! own. Tests assert on the steps; a tiny simulator in the tests applies them to an `Observed`
//! and checks that planning again yields nothing.
//!
//! # Rules
//! - **Generations.** A local copy (domain or disks) belongs to the placement generation it was
//!   created for. Only a copy holding the desired generation is kept; any other copy, and every
//!   copy of a server the desired state does not list, is stale: destroyed, undefined and its
//!   disks deleted. A domain whose generation cannot be read counts as stale.
//! - **Adoption.** A domain holding the desired generation is kept as it is (never redefined);
//!   only its power state is converged.
//! - **Order.** Steps come in phases, each phase for all servers in id order: (1) stop and remove
//!   domains — stale copies first of all, so a returning host destroys them before it starts
//!   anything; (2) delete disks; (3) fetch base images; (4) create disks and define domains;
//!   (5) start and resume.
//! - **Lease.** Without a valid lease the plan only stops and removes domains (phase 1). It
//!   starts, resumes, defines, creates and fetches nothing, and deletes no disks either: that is
//!   irreversible and not needed for safety, so it waits until the controller confirms the host
//!   is still in the cluster. The lease can run out while a plan executes, so the executor checks
//!   it again before every step for which [`Step::needs_lease`] is true.
//! - **Held servers.** A server an operation command is working on right now (live migration in
//!   or out, rebuild, snapshot) is [`Desired::hold`]: the planner emits nothing for it, since an
//!   incoming migration would otherwise look like an unknown domain.
//!
//! The executor runs the steps in order and abandons the rest of the plan when one fails (a
//! failed stale-copy destroy must not be followed by a start); it observes again and re-plans.
//!
//! Plan only against a desired state the controller actually sent, never an empty placeholder:
//! every server the desired state does not list is removed from the host.
//!
//! # Disk layout
//! Disks are tracked per generation, so the observer must be able to tell a disk's generation.
//! [`DiskLayout`] puts it in the path: `<dir>/<server id>/<generation>/<role>.qcow2`; the
//! DomainSpec's disk paths should come from it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::render::domain::{is_canonical_uuid, DiskRole, ValidDomainSpec};
use crate::render::qemu_img::DiskFormat;

/// A base image the host caches, identified by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseImage {
    /// Image id, to fetch it from a controller (`AgentService.FetchImage`).
    pub image_id: String,
    /// Lowercase hex sha256 of the image; the cache verifies it before use (I9) and is keyed by it.
    pub sha256: String,
    /// Pinned as the overlay's backing format (`qemu-img create -F`, I9).
    pub format: DiskFormat,
    /// Size of the image file.
    pub size_bytes: u64,
}

/// Power state the controller wants for a server it places here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Power {
    Running,
    ShutOff,
}

/// A server this host should hold: one copy, of the generation in its domain spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub power: Power,
    /// Base of the root overlay.
    pub image: BaseImage,
    /// Domain to define; carries the server id, the placement generation and the disk paths
    /// and sizes.
    pub domain: ValidDomainSpec,
}

impl Target {
    pub fn server_id(&self) -> &str {
        self.domain.server_id()
    }

    pub fn generation(&self) -> u64 {
        self.domain.generation()
    }
}

/// What the controller wants for one server on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// Keep the copy of this placement, powered as the target says.
    Keep(Box<Target>),
    /// Remove every local copy: domain and disks.
    Delete,
}

/// Everything this host should hold, by server id. Servers it does not list are removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    servers: BTreeMap<String, Wanted>,
    held: BTreeSet<String>,
}

impl Desired {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wants `target` on this host (replacing what was wanted for its server).
    pub fn keep(&mut self, target: Target) -> &mut Self {
        self.servers.insert(
            target.server_id().to_owned(),
            Wanted::Keep(Box::new(target)),
        );
        self
    }

    /// Wants every local copy of `server_id` removed.
    pub fn delete(&mut self, server_id: impl Into<String>) -> &mut Self {
        self.servers.insert(server_id.into(), Wanted::Delete);
        self
    }

    /// Leaves `server_id` alone whatever is wanted or observed: an operation owns it for now.
    pub fn hold(&mut self, server_id: impl Into<String>) -> &mut Self {
        self.held.insert(server_id.into());
        self
    }

    pub fn get(&self, server_id: &str) -> Option<&Wanted> {
        self.servers.get(server_id)
    }

    pub fn is_held(&self, server_id: &str) -> bool {
        self.held.contains(server_id)
    }

    /// Servers with a wish, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Wanted)> {
        self.servers
            .iter()
            .map(|(id, wanted)| (id.as_str(), wanted))
    }
}

/// Power state of a defined domain, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Running, blocked, or shutting down.
    Running,
    /// Paused or suspended to memory.
    Paused,
    /// Defined but not running.
    ShutOff,
    /// Crashed and still holding resources.
    Crashed,
}

/// A Flotilla domain found on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedDomain {
    pub power: PowerState,
    /// Placement generation from the domain's metadata; `None` when it is missing or unreadable.
    pub generation: Option<u64>,
}

/// Traces of one server on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedServer {
    /// The defined domain, if any.
    pub domain: Option<ObservedDomain>,
    /// Disk files present, by the generation they were created for.
    pub disks: BTreeMap<u64, BTreeSet<DiskRole>>,
}

/// What the host shows: every server with a domain or a disk on it, and the base cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub servers: BTreeMap<String, ObservedServer>,
    /// sha256 of each verified base image in the cache.
    pub cached_bases: BTreeSet<String>,
}

/// One idempotent action for the executor: repeating it after it succeeded changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Power off (hard) a copy that may not run (I7). Before acting, the executor should read
    /// the domain's generation again and skip it if it became the desired one.
    DestroyStale {
        server_id: String,
        found_generation: Option<u64>,
    },
    /// Undefine a stale, shut-off copy.
    UndefineStale {
        server_id: String,
        found_generation: Option<u64>,
    },
    /// Graceful shutdown of the current copy (ACPI, then destroy after the driver's timeout).
    Shutdown { server_id: String },
    /// Power off the current copy (hard): paused or crashed while it should be off, crashed
    /// while it should run, or deleted.
    Destroy { server_id: String },
    /// Undefine the current copy of a deleted server.
    Undefine { server_id: String },
    /// Delete every disk of the server created for `generation` (its generation directory).
    DeleteDisks { server_id: String, generation: u64 },
    /// Fetch the base image into the cache and verify its sha256 (I9).
    FetchBase { image: BaseImage },
    /// `qemu-img create -f qcow2 -F <base format> -b <cached base> <path> [<size>]` (size 0:
    /// the base's size). The base is in the cache when this step runs.
    CreateOverlay {
        server_id: String,
        generation: u64,
        base: BaseImage,
        path: PathBuf,
        size_bytes: u64,
    },
    /// Create a blank qcow2 disk (ephemeral or swap).
    CreateBlankDisk {
        server_id: String,
        generation: u64,
        role: DiskRole,
        path: PathBuf,
        size_bytes: u64,
    },
    /// Define the domain rendered from this spec (`render::domain::render_domain`).
    Define {
        server_id: String,
        domain: Box<ValidDomainSpec>,
    },
    /// Start the defined, shut-off domain.
    Start { server_id: String },
    /// Resume the paused domain.
    Resume { server_id: String },
}

impl Step {
    /// The server the step acts on (`None` for fetching a base image).
    pub fn server_id(&self) -> Option<&str> {
        match self {
            Step::DestroyStale { server_id, .. }
            | Step::UndefineStale { server_id, .. }
            | Step::Shutdown { server_id }
            | Step::Destroy { server_id }
            | Step::Undefine { server_id }
            | Step::DeleteDisks { server_id, .. }
            | Step::CreateOverlay { server_id, .. }
            | Step::CreateBlankDisk { server_id, .. }
            | Step::Define { server_id, .. }
            | Step::Start { server_id }
            | Step::Resume { server_id } => Some(server_id),
            Step::FetchBase { .. } => None,
        }
    }

    /// Whether the step may only run while the lease is valid: everything but stopping and
    /// removing domains.
    pub fn needs_lease(&self) -> bool {
        !matches!(
            self,
            Step::DestroyStale { .. }
                | Step::UndefineStale { .. }
                | Step::Shutdown { .. }
                | Step::Destroy { .. }
                | Step::Undefine { .. }
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generation = |g: &Option<u64>| match g {
            Some(g) => format!("generation {g}"),
            None => "unknown generation".to_owned(),
        };
        match self {
            Step::DestroyStale {
                server_id,
                found_generation,
            } => {
                write!(
                    f,
                    "destroy stale copy of {server_id} ({})",
                    generation(found_generation)
                )
            }
            Step::UndefineStale {
                server_id,
                found_generation,
            } => {
                write!(
                    f,
                    "undefine stale copy of {server_id} ({})",
                    generation(found_generation)
                )
            }
            Step::Shutdown { server_id } => write!(f, "shut down {server_id}"),
            Step::Destroy { server_id } => write!(f, "destroy {server_id}"),
            Step::Undefine { server_id } => write!(f, "undefine {server_id}"),
            Step::DeleteDisks {
                server_id,
                generation,
            } => {
                write!(f, "delete disks of {server_id} generation {generation}")
            }
            Step::FetchBase { image } => write!(f, "fetch base image sha256:{}", image.sha256),
            Step::CreateOverlay {
                server_id, path, ..
            } => {
                write!(
                    f,
                    "create root overlay of {server_id} at {}",
                    path.display()
                )
            }
            Step::CreateBlankDisk {
                server_id,
                role,
                path,
                ..
            } => {
                write!(
                    f,
                    "create {} disk of {server_id} at {}",
                    role.as_str(),
                    path.display()
                )
            }
            Step::Define { server_id, domain } => {
                write!(f, "define {server_id} (generation {})", domain.generation())
            }
            Step::Start { server_id } => write!(f, "start {server_id}"),
            Step::Resume { server_id } => write!(f, "resume {server_id}"),
        }
    }
}

/// The steps that converge `observed` to `desired`, in execution order (see the module docs for
/// the rules). Deterministic; an empty plan means the host has converged.
pub fn plan(desired: &Desired, observed: &Observed, lease_valid: bool) -> Vec<Step> {
    let mut phases = Phases::default();
    let mut fetching = BTreeSet::new();
    let nothing = ObservedServer::default();
    let ids: BTreeSet<&str> = desired
        .servers
        .keys()
        .chain(observed.servers.keys())
        .map(String::as_str)
        .collect();
    for id in ids {
        if desired.is_held(id) {
            continue;
        }
        let seen = observed.servers.get(id).unwrap_or(&nothing);
        let wanted = desired.get(id);
        let target = match wanted {
            Some(Wanted::Keep(target)) => Some(&**target),
            Some(Wanted::Delete) | None => None,
        };
        let generation = target.map(Target::generation);

        // Phase 1: the domain. `kept` is the power state of the copy that stays, if one does.
        let kept = match seen.domain {
            Some(domain) if generation.is_some() && domain.generation == generation => {
                Some(domain.power)
            }
            Some(domain) => {
                let server_id = id.to_owned();
                if matches!(wanted, Some(Wanted::Delete)) {
                    if domain.power != PowerState::ShutOff {
                        phases.stop.push(Step::Destroy {
                            server_id: server_id.clone(),
                        });
                    }
                    phases.stop.push(Step::Undefine { server_id });
                } else {
                    let found_generation = domain.generation;
                    if domain.power != PowerState::ShutOff {
                        phases.stop.push(Step::DestroyStale {
                            server_id: server_id.clone(),
                            found_generation,
                        });
                    }
                    phases.stop.push(Step::UndefineStale {
                        server_id,
                        found_generation,
                    });
                }
                None
            }
            None => None,
        };
        if let (Some(target), Some(power)) = (target, kept) {
            let server_id = id.to_owned();
            match (target.power, power) {
                (Power::Running, PowerState::Crashed) => {
                    phases.stop.push(Step::Destroy {
                        server_id: server_id.clone(),
                    });
                    phases.start.push(Step::Start { server_id });
                }
                (Power::Running, PowerState::ShutOff) => {
                    phases.start.push(Step::Start { server_id });
                }
                (Power::Running, PowerState::Paused) => {
                    phases.start.push(Step::Resume { server_id });
                }
                (Power::ShutOff, PowerState::Running) => {
                    phases.stop.push(Step::Shutdown { server_id });
                }
                (Power::ShutOff, PowerState::Paused | PowerState::Crashed) => {
                    phases.stop.push(Step::Destroy { server_id });
                }
                (Power::Running, PowerState::Running) | (Power::ShutOff, PowerState::ShutOff) => {}
            }
        }
        if !lease_valid {
            continue;
        }

        // Phase 2: disks of any other generation.
        for &disk_generation in seen.disks.keys() {
            if Some(disk_generation) != generation {
                phases.delete.push(Step::DeleteDisks {
                    server_id: id.to_owned(),
                    generation: disk_generation,
                });
            }
        }

        let Some(target) = target else { continue };
        let generation = target.generation();
        // Phase 3: the base stays cached while a server of this host is built on it.
        if !observed.cached_bases.contains(&target.image.sha256)
            && fetching.insert(target.image.sha256.as_str())
        {
            phases.fetch.push(Step::FetchBase {
                image: target.image.clone(),
            });
        }
        // Phase 4: missing disks, then the domain. A disk that vanished under a kept domain is
        // recreated from the base (its data is gone already), but only once phase 1 left that
        // domain stopped: never under a guest that has the old file open.
        let stays_active = target.power == Power::Running
            && matches!(kept, Some(PowerState::Running | PowerState::Paused));
        if !stays_active {
            let present = seen.disks.get(&generation);
            for (role, disk) in target.domain.spec().disks.iter() {
                if present.is_some_and(|roles| roles.contains(&role)) {
                    continue;
                }
                let server_id = id.to_owned();
                let path = disk.path.clone();
                let size_bytes = disk.size_bytes;
                phases.build.push(match role {
                    DiskRole::Root => Step::CreateOverlay {
                        server_id,
                        generation,
                        base: target.image.clone(),
                        path,
                        size_bytes,
                    },
                    DiskRole::Ephemeral | DiskRole::Swap => Step::CreateBlankDisk {
                        server_id,
                        generation,
                        role,
                        path,
                        size_bytes,
                    },
                });
            }
        }
        if kept.is_none() {
            phases.build.push(Step::Define {
                server_id: id.to_owned(),
                domain: Box::new(target.domain.clone()),
            });
            // Phase 5.
            if target.power == Power::Running {
                phases.start.push(Step::Start {
                    server_id: id.to_owned(),
                });
            }
        }
    }
    phases.into_steps(lease_valid)
}

/// The plan's phases, concatenated in this order.
#[derive(Default)]
struct Phases {
    stop: Vec<Step>,
    delete: Vec<Step>,
    fetch: Vec<Step>,
    build: Vec<Step>,
    start: Vec<Step>,
}

impl Phases {
    fn into_steps(self, lease_valid: bool) -> Vec<Step> {
        let mut steps = self.stop;
        if lease_valid {
            steps.extend(self.delete);
            steps.extend(self.fetch);
            steps.extend(self.build);
            steps.extend(self.start);
        }
        steps
    }
}

/// Where a server's disks live: `<dir>/<server id>/<generation>/<role>.qcow2`. The generation in
/// the path is what lets the observer fill [`ObservedServer::disks`] and lets
/// [`Step::DeleteDisks`] remove one generation's files as a whole directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    dir: PathBuf,
}

impl DiskLayout {
    /// Disks under `dir` (absolute; the agent's disk directory).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory holding every generation of a server.
    pub fn server_dir(&self, server_id: &str) -> PathBuf {
        self.dir.join(server_id)
    }

    /// The directory holding one generation's disks; [`Step::DeleteDisks`] removes it.
    pub fn generation_dir(&self, server_id: &str, generation: u64) -> PathBuf {
        self.server_dir(server_id).join(generation.to_string())
    }

    /// The file of one disk.
    pub fn disk_path(&self, server_id: &str, generation: u64, role: DiskRole) -> PathBuf {
        self.generation_dir(server_id, generation)
            .join(format!("{}.qcow2", role.as_str()))
    }

    /// The server, generation and role of a disk file under this layout; `None` for any other
    /// path (unexpected files are left alone, never deleted by guesswork).
    pub fn parse(&self, path: &Path) -> Option<(String, u64, DiskRole)> {
        let rest = path.strip_prefix(&self.dir).ok()?;
        let mut parts = rest.iter().map(|p| p.to_str());
        let (Some(Some(id)), Some(Some(generation)), Some(Some(file)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if !is_canonical_uuid(id) || (generation.starts_with(['+', '0']) && generation != "0") {
            return None;
        }
        let generation = generation.parse().ok()?;
        let role = DiskRole::ALL
            .into_iter()
            .find(|r| file == format!("{}.qcow2", r.as_str()))?;
        Some((id.to_owned(), generation, role))
    }
}

#[cfg(test)]
mod tests;

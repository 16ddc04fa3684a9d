//! Drivers: the agent's only contact with the host. Each is a trait with a real implementation
//! and an in-memory fake, and one conformance suite ([`conformance`]) runs against both.
//!
//! - [`Hypervisor`]: domains through libvirt ([`libvirt::LibvirtHypervisor`], fake
//!   [`fake::FakeHypervisor`]).
//! - [`disks::Disks`]: the base-image cache and per-server qcow2 overlays through `qemu-img`
//!   ([`disks::QemuImgDisks`], fake [`disks_fake::FakeDisks`]).
//! - [`ovs::VSwitch`]: Open vSwitch bridges, ports, VXLAN tunnels and flows through `ovs-vsctl`
//!   and `ovs-ofctl` ([`ovs::OvsVsctl`], fake [`ovs_fake::FakeVSwitch`]; suite
//!   [`conformance_ovs`]).
//!
//! The traits are synchronous: libvirt and qemu-img calls block. The agent (tokio) calls them
//! through `spawn_blocking`, with the driver behind an `Arc<dyn Hypervisor>` / `Arc<dyn Disks>`.
//!
//! # Which domains are Flotilla's
//! A Flotilla domain is named `flotilla-<server uuid>` and carries, in its `<metadata>`, the
//! element [`domain_xml::METADATA_NS`] `server` with the server id and placement generation
//! (rendered by `render::domain`). [`Hypervisor::list`] reports every domain on the host, with
//! [`DomainInfo::server`] `None` for domains without that metadata; the drivers refuse to change
//! such domains ([`HypervisorError::Foreign`]), so an operator's own VMs on a compute host are
//! never started, stopped or removed by Flotilla.
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub mod conformance;
pub mod conformance_ovs;
pub mod disks;
pub mod disks_fake;
pub mod disks_qemu;
pub mod domain_xml;
pub mod fake;
pub mod libvirt;
pub mod ovs;
pub mod ovs_fake;
mod ovs_vsctl;
pub(crate) mod process;

pub use domain_xml::ServerMeta;

/// Power state of a domain, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    Running,
    /// libvirt's "blocked" (the vCPUs wait on a resource); the domain is running.
    Blocked,
    Paused,
    /// The guest is shutting down (libvirt's "in shutdown").
    ShuttingDown,
    ShutOff,
    Crashed,
    /// Suspended by guest power management (S3/S4).
    Suspended,
    /// libvirt reported no state.
    Unknown,
}

impl PowerState {
    /// Whether the domain has a running QEMU process (everything but shut off).
    pub fn is_active(self) -> bool {
        !matches!(self, PowerState::ShutOff)
    }

    /// The words libvirt (virsh) uses for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "running",
            PowerState::Blocked => "idle",
            PowerState::Paused => "paused",
            PowerState::ShuttingDown => "in shutdown",
            PowerState::ShutOff => "shut off",
            PowerState::Crashed => "crashed",
            PowerState::Suspended => "pmsuspended",
            PowerState::Unknown => "no state",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Hypervisor::info`] and [`Hypervisor::list`] report about one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    /// Flotilla's metadata; `None` for domains that are not Flotilla's.
    pub server: Option<ServerMeta>,
    pub power: PowerState,
    /// State and reason as virsh prints them: `running (booted)`, `shut off (destroyed)`.
    pub state: String,
    pub vcpus: u32,
    /// Current memory in KiB.
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    /// CPU time used since the domain started, in nanoseconds (0 when shut off).
    pub cpu_time_ns: u64,
    /// Defined (persistent) rather than transient.
    pub persistent: bool,
}

/// How [`Hypervisor::shutdown`] (and a soft [`Hypervisor::reboot`]) stopped the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The domain was not running; nothing was done.
    AlreadyOff,
    /// The guest honoured the ACPI power button and powered off after this long.
    Graceful { after: Duration },
    /// The guest was still running when the timeout expired and was destroyed (powered off).
    Destroyed { waited: Duration },
}

/// How to reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    /// ACPI shutdown, at most `timeout` for the guest to power off (then destroy), then start
    /// again (Nova's soft reboot). The new QEMU process picks up the current definition.
    Soft { timeout: Duration },
    /// Power off immediately (destroy) and start again.
    Hard,
}

/// Resource usage of a running domain ([`Hypervisor::stats`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainStats {
    pub cpu_time_ns: u64,
    pub vcpus: u32,
    pub memory: MemoryStats,
    /// One entry per disk in the domain definition, in definition order.
    pub disks: Vec<DiskStats>,
    /// One entry per network interface in the domain definition, in definition order.
    pub nics: Vec<NicStats>,
    /// What could not be collected, and why (e.g. the hypervisor driver lacks balloon stats).
    pub unavailable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Memory currently assigned to the domain, KiB.
    pub current_kib: u64,
    /// Balloon size as the guest sees it, KiB (`actual`), when reported.
    pub actual_kib: Option<u64>,
    /// Resident set size of the QEMU process on the host, KiB, when reported.
    pub rss_kib: Option<u64>,
    /// Memory the guest reports unused, KiB (needs a balloon driver in the guest).
    pub unused_kib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskStats {
    /// Target device in the guest (`vda`).
    pub device: String,
    /// Source file on the host, when the disk is file-backed.
    pub path: Option<PathBuf>,
    pub read_bytes: u64,
    pub read_reqs: u64,
    pub write_bytes: u64,
    pub write_reqs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NicStats {
    /// Host-side device (`vnet0`, a tap) or, when it has none, the MAC address.
    pub device: String,
    pub mac: Option<String>,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// The end of a domain's serial console log ([`Hypervisor::console_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLog {
    /// The log file named in the domain definition.
    pub path: PathBuf,
    /// The last bytes of the file (raw: the guest may write anything).
    pub bytes: Vec<u8>,
    /// The file holds more than `bytes` (older output was left out).
    pub truncated: bool,
}

/// Domain operations on one host. Every method blocks; call through `spawn_blocking`.
///
/// Common rules, checked by [`conformance::hypervisor`]:
/// - A name that matches no domain gives [`HypervisorError::NotFound`].
/// - Mutations of domains without Flotilla metadata give [`HypervisorError::Foreign`] and
///   change nothing.
/// - Steps are idempotent where that is unambiguous: starting a running domain, destroying a
///   stopped one and shutting down a stopped one succeed without doing anything.
pub trait Hypervisor: Send + Sync {
    /// Defines (or redefines, replacing the persistent configuration of) the domain described
    /// by `xml`; returns its name. The definition must carry Flotilla metadata and be named
    /// `flotilla-<server id>`. A redefinition of a running domain applies at its next start.
    fn define(&self, xml: &str) -> Result<String, HypervisorError>;

    /// Starts a defined domain (no-op when it is already running).
    fn start(&self, name: &str) -> Result<(), HypervisorError>;

    /// Presses the ACPI power button, waits up to `timeout` for the guest to power off, then
    /// destroys it. Reports which of these happened.
    fn shutdown(&self, name: &str, timeout: Duration) -> Result<ShutdownOutcome, HypervisorError>;

    /// Reboots a running domain (stop as `mode` says, then start). Returns how it was stopped;
    /// a hard reboot reports [`ShutdownOutcome::Destroyed`] with no wait. A domain that is not
    /// running gives [`HypervisorError::InvalidState`].
    fn reboot(&self, name: &str, mode: RebootMode) -> Result<ShutdownOutcome, HypervisorError>;

    /// Resumes a paused (or guest-suspended) domain; no-op when it runs. A shut-off domain
    /// gives [`HypervisorError::InvalidState`].
    fn resume(&self, name: &str) -> Result<(), HypervisorError>;

    /// Pauses a running domain's vCPUs (`virsh suspend`); no-op when it is paused already. The
    /// QEMU process and the guest's memory stay: [`Hypervisor::resume`] continues it. A
    /// shut-off domain gives [`HypervisorError::InvalidState`].
    fn suspend(&self, name: &str) -> Result<(), HypervisorError>;

    /// Powers the domain off immediately (no-op when it is not running).
    fn destroy(&self, name: &str) -> Result<(), HypervisorError>;

    /// Removes the domain's definition, with its managed save image, snapshot and checkpoint
    /// metadata and NVRAM file. The domain must be shut off.
    fn undefine(&self, name: &str) -> Result<(), HypervisorError>;

    /// State and size of one domain.
    fn info(&self, name: &str) -> Result<DomainInfo, HypervisorError>;

    /// Every domain on the host (running or defined), Flotilla's and others, sorted by name.
    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError>;

    /// CPU, memory, per-disk and per-NIC counters of a running domain.
    fn stats(&self, name: &str) -> Result<DomainStats, HypervisorError>;

    /// The last `max_bytes` of the serial console log file named in the domain definition
    /// (`<serial><log file='…'/></serial>`); empty when the guest has not written it yet.
    fn console_log(&self, name: &str, max_bytes: usize) -> Result<ConsoleLog, HypervisorError>;

    /// Starts a defined, shut-off domain with its vCPUs paused (`VIR_DOMAIN_START_PAUSED`): the
    /// guest never runs a single instruction here. No-op when it is paused already; a running
    /// domain gives [`HypervisorError::InvalidState`].
    fn start_paused(&self, name: &str) -> Result<(), HypervisorError>;

    /// Migrates the active (running or paused) domain to the hypervisor at
    /// [`MigrationRequest::dest_uri`], peer to peer, and blocks until it is done. The domain is
    /// defined there from [`MigrationRequest::dest_xml`] (persistent) and undefined here: on
    /// success it no longer exists on this host, and it arrives in the power state it left in
    /// (paused stays paused). On failure (including [`Hypervisor::abort_job`], which gives
    /// [`HypervisorError::MigrationAborted`]) the domain is still here, in the state it had. The
    /// call can block for minutes when the network to the destination breaks: run it on its own
    /// thread and watch it with [`Hypervisor::job_progress`] and [`Hypervisor::abort_job`].
    fn migrate(&self, name: &str, request: &MigrationRequest) -> Result<(), HypervisorError>;

    /// Progress of the domain's running background job (a migration); `None` when no job runs.
    fn job_progress(&self, name: &str) -> Result<Option<JobProgress>, HypervisorError>;

    /// Aborts the domain's running background job (a migration, which then fails); returns
    /// whether one was running.
    fn abort_job(&self, name: &str) -> Result<bool, HypervisorError>;
}

/// Where and how [`Hypervisor::migrate`] moves a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRequest {
    /// The destination hypervisor's libvirt URI, e.g. `qemu+tcp://10.0.0.22/system`.
    pub dest_uri: String,
    /// The domain definition the destination uses (its disk paths, its metadata).
    pub dest_xml: String,
    /// Live: memory follows while the guest keeps running (`VIR_MIGRATE_LIVE`). Otherwise the
    /// domain stays paused for the whole copy (cold migration of a domain started paused).
    pub live: bool,
    /// Copy local disks into the pre-created destination overlays (`VIR_MIGRATE_NON_SHARED_INC`:
    /// only the overlays' own data; the destination has the same base).
    pub copy_storage: bool,
}

/// What a migration is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Copying disk data (storage migration, before memory).
    CopyingDisk,
    /// Copying memory.
    CopyingMemory,
}

impl JobPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::CopyingDisk => "copying disk",
            JobPhase::CopyingMemory => "copying memory",
        }
    }
}

/// Progress of a running job ([`Hypervisor::job_progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProgress {
    pub phase: JobPhase,
    /// Bytes copied so far (memory and disk).
    pub bytes_done: u64,
    /// Bytes to copy as known now (grows when the guest dirties memory again); 0 when unknown.
    pub bytes_total: u64,
    pub disk_done: u64,
    pub disk_total: u64,
    pub memory_done: u64,
    pub memory_total: u64,
    pub elapsed: Duration,
}

impl JobProgress {
    /// Whole percent of `bytes_total` done (0 when the total is unknown), at most 100.
    pub fn percent(&self) -> u32 {
        if self.bytes_total == 0 {
            return 0;
        }
        (self.bytes_done.min(self.bytes_total) * 100 / self.bytes_total) as u32
    }
}

/// Everything a [`Hypervisor`] can fail with. Messages say what to do where there is a choice.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("no domain named {name} is defined on this host")]
    NotFound { name: String },
    #[error(
        "domain {name} is not managed by Flotilla (it has no Flotilla metadata); Flotilla never \
         changes it: remove or rename it by hand if its name is in the way"
    )]
    Foreign { name: String },
    #[error("cannot {action} domain {name}: it is {state}{hint}")]
    InvalidState {
        name: String,
        action: &'static str,
        state: PowerState,
        /// Starts with "; " when present.
        hint: &'static str,
    },
    #[error("the domain definition was rejected: {message}")]
    InvalidDefinition { message: String },
    #[error("domain {name} conflicts with an existing domain: {message}")]
    Conflict { name: String, message: String },
    #[error(
        "domain {name} has no serial console log file (<serial type='pty'><log file='…'/></serial>) \
         in its definition"
    )]
    NoConsoleLog { name: String },
    #[error("could not read the console log {} of domain {name}", path.display())]
    ConsoleLog {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "could not connect to libvirt at {uri}: {message} (is libvirtd running, and may this \
         user use its socket?)"
    )]
    Connect { uri: String, message: String },
    #[error("the libvirt driver cannot {action}: {message}")]
    Unsupported {
        action: &'static str,
        message: String,
    },
    #[error("the migration of domain {name} was aborted: {message}")]
    MigrationAborted { name: String, message: String },
    #[error("libvirt could not {action} domain {name}: {message}")]
    Libvirt {
        action: &'static str,
        name: String,
        message: String,
    },
}

impl HypervisorError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, HypervisorError::NotFound { .. })
    }
}

/// The virsh words for a state and its libvirt reason code (`virDomain*Reason`).
pub fn state_string(power: PowerState, reason: i32) -> String {
    let reason = match power {
        PowerState::Running => match reason {
            1 => "booted",
            2 => "migrated",
            3 => "restored",
            4 => "from snapshot",
            5 => "unpaused",
            6 => "migration canceled",
            7 => "save canceled",
            8 => "event wakeup",
            9 => "crashed",
            10 => "post-copy",
            11 => "post-copy failed",
            _ => "unknown",
        },
        PowerState::Paused => match reason {
            1 => "user",
            2 => "migrating",
            3 => "saving",
            4 => "dumping",
            5 => "I/O error",
            6 => "watchdog",
            7 => "from snapshot",
            8 => "shutting down",
            9 => "creating snapshot",
            10 => "crashed",
            11 => "starting up",
            12 => "post-copy",
            13 => "post-copy failed",
            14 => "api error",
            _ => "unknown",
        },
        PowerState::ShuttingDown => match reason {
            1 => "user",
            _ => "unknown",
        },
        PowerState::ShutOff => match reason {
            1 => "shutdown",
            2 => "destroyed",
            3 => "crashed",
            4 => "migrated",
            5 => "saved",
            6 => "failed",
            7 => "from snapshot",
            8 => "daemon",
            _ => "unknown",
        },
        PowerState::Crashed => match reason {
            1 => "panicked",
            _ => "unknown",
        },
        PowerState::Blocked | PowerState::Suspended | PowerState::Unknown => "unknown",
    };
    format!("{} ({reason})", power.as_str())
}

/// libvirt reason codes the fake reports (`virDomain*Reason` values).
pub mod reason {
    pub const UNKNOWN: i32 = 0;
    pub const RUNNING_BOOTED: i32 = 1;
    pub const RUNNING_MIGRATED: i32 = 2;
    pub const RUNNING_UNPAUSED: i32 = 5;
    pub const PAUSED_USER: i32 = 1;
    pub const PAUSED_MIGRATION: i32 = 2;
    pub const PAUSED_STARTING_UP: i32 = 11;
    pub const SHUTOFF_SHUTDOWN: i32 = 1;
    pub const SHUTOFF_DESTROYED: i32 = 2;
}

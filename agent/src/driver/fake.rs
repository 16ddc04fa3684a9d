//! An in-memory [`Hypervisor`]: a state machine of domains that behaves like libvirt as far as
//! the conformance suite can tell, plus hooks for tests.
//!
//! Scripting:
//! - [`FakeHypervisor::fail_next`]: the next `op` on a domain fails with a given error (queued
//!   per operation and name, consumed in order); [`FakeHypervisor::clear_failures`] drops the
//!   rest.
//! - [`FakeHypervisor::set_acpi`]: how the guest answers the ACPI power button — power off after
//!   a delay, or ignore it (so [`Hypervisor::shutdown`] runs into its timeout and destroys).
//! - [`FakeHypervisor::insert_foreign`]: a domain that is not Flotilla's.
//! - [`FakeHypervisor::set_power`]: something outside the agent changed the state (the guest
//!   powered itself off, QEMU crashed).
//! - [`FakeHypervisor::write_console`]: the guest writes to its serial console (appended to the
//!   log file named in the definition, which the fake reads like the real driver).
//! - [`FakeHypervisor::calls`]: every call made, in order, for assertions.
//! - Migration: fakes made with [`FakeHypervisor::on_fabric`] share a [`Fabric`] and migrate
//!   domains to each other by URI ([`Hypervisor::migrate`] with
//!   [`super::MigrationRequest::dest_uri`] naming the other fake). A migration reports
//!   progress through [`Hypervisor::job_progress`] while it runs and can be aborted with
//!   [`Hypervisor::abort_job`]; [`FakeHypervisor::script_migration`] sets how the next
//!   migration of a domain goes (how many progress steps, how long each, and whether it then
//!   succeeds, fails with a message, or hangs until aborted).
//!
//! Like the real driver, a redefinition of a running domain takes effect at its next start,
//! while [`Hypervisor::info`] reports the metadata of the persistent definition.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::domain_xml::{self, DomainXml};
use super::libvirt::read_console_log;
use super::{
    reason, state_string, ConsoleLog, DiskStats, DomainInfo, DomainStats, Hypervisor,
    HypervisorError, JobPhase, JobProgress, MemoryStats, MigrationRequest, NicStats, PowerState,
    RebootMode, ShutdownOutcome,
};

/// The operations failures can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Define,
    Start,
    Shutdown,
    Reboot,
    Resume,
    Suspend,
    Destroy,
    Undefine,
    Info,
    Stats,
    ConsoleLog,
    StartPaused,
    Migrate,
    JobProgress,
    AbortJob,
}

/// Fake hypervisors that reach each other by URI (see the module doc).
#[derive(Debug, Default)]
pub struct Fabric {
    hosts: Mutex<HashMap<String, Weak<Mutex<State>>>>,
}

impl Fabric {
    pub fn new() -> Arc<Fabric> {
        Arc::default()
    }

    fn find(&self, uri: &str) -> Option<Arc<Mutex<State>>> {
        self.hosts.lock().get(uri).and_then(Weak::upgrade)
    }
}

/// How the next migration of a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationScript {
    /// Progress steps reported before the outcome.
    pub steps: u32,
    /// How long each step takes.
    pub step: Duration,
    pub outcome: MigrationOutcome,
}

impl Default for MigrationScript {
    fn default() -> Self {
        MigrationScript {
            steps: 2,
            step: Duration::from_millis(10),
            outcome: MigrationOutcome::Succeed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationOutcome {
    Succeed,
    /// Fails with this libvirt message after the steps; the domain stays at the source.
    Fail(String),
    /// Keeps running (reporting the last step's progress) until aborted.
    HangUntilAborted,
}

/// Bytes the fake pretends to copy per step.
const FAKE_STEP_BYTES: u64 = 64 << 20;

#[derive(Debug)]
struct FakeJob {
    progress: JobProgress,
    aborted: bool,
}

/// How a guest answers the ACPI power button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acpi {
    /// Powers off this long after the button is pressed.
    PowerOffAfter(Duration),
    /// Ignores it.
    Ignore,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub name: String,
}

#[derive(Debug)]
struct FakeDomain {
    uuid: String,
    /// Persistent definition.
    config: DomainXml,
    /// Definition the running instance was started with.
    live: Option<DomainXml>,
    power: PowerState,
    reason: i32,
    acpi: Acpi,
    started: Option<Instant>,
    /// Counts starts, so stats differ between boots.
    boots: u64,
    /// The migration running, if any.
    job: Option<FakeJob>,
}

#[derive(Debug, Default)]
struct State {
    domains: BTreeMap<String, FakeDomain>,
    failures: HashMap<(Op, String), VecDeque<HypervisorError>>,
    calls: Vec<Call>,
    next_uuid: u64,
    migrations: HashMap<String, MigrationScript>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct FakeHypervisor {
    state: Arc<Mutex<State>>,
    fabric: Option<Arc<Fabric>>,
}

impl FakeHypervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake reachable on `fabric` as `uri` (the `dest_uri` other fakes migrate to).
    pub fn on_fabric(fabric: &Arc<Fabric>, uri: &str) -> Self {
        let hv = FakeHypervisor {
            state: Arc::default(),
            fabric: Some(fabric.clone()),
        };
        fabric
            .hosts
            .lock()
            .insert(uri.to_string(), Arc::downgrade(&hv.state));
        hv
    }

    /// How the next migration of `name` goes (default: [`MigrationScript::default`]).
    pub fn script_migration(&self, name: &str, script: MigrationScript) {
        self.state
            .lock()
            .migrations
            .insert(name.to_string(), script);
    }

    /// Updates the running job of `name`; whether it was aborted (the job is then gone).
    fn job_step(&self, name: &str, progress: JobProgress) -> bool {
        let mut state = self.state.lock();
        let Some(d) = state.domains.get_mut(name) else {
            return true;
        };
        match &mut d.job {
            Some(job) if job.aborted => {
                d.job = None;
                true
            }
            Some(job) => {
                job.progress = progress;
                false
            }
            None => true,
        }
    }

    fn end_job(&self, name: &str) {
        if let Some(d) = self.state.lock().domains.get_mut(name) {
            d.job = None;
        }
    }

    /// The next `op` on `name` fails with `error` (after the domain lookup, before any change).
    pub fn fail_next(&self, op: Op, name: &str, error: HypervisorError) {
        self.state
            .lock()
            .failures
            .entry((op, name.to_string()))
            .or_default()
            .push_back(error);
    }

    /// Drops every failure injected and not yet consumed.
    pub fn clear_failures(&self) {
        self.state.lock().failures.clear();
    }

    /// How the guest of `name` answers ACPI shutdown from now on.
    pub fn set_acpi(&self, name: &str, acpi: Acpi) -> Result<(), HypervisorError> {
        self.with_domain(name, |d| d.acpi = acpi)
    }

    /// Sets the state as if something outside the agent changed it.
    pub fn set_power(
        &self,
        name: &str,
        power: PowerState,
        reason: i32,
    ) -> Result<(), HypervisorError> {
        self.with_domain(name, |d| {
            if !power.is_active() {
                d.live = None;
                d.started = None;
            } else if d.live.is_none() {
                d.live = Some(d.config.clone());
                d.started = Some(Instant::now());
            }
            d.power = power;
            d.reason = reason;
        })
    }

    /// Adds a domain without Flotilla metadata (an operator's own VM).
    pub fn insert_foreign(&self, name: &str, power: PowerState) {
        let mut state = self.state.lock();
        let uuid = next_uuid(&mut state);
        let config = DomainXml {
            name: name.to_string(),
            uuid: Some(uuid.clone()),
            vcpus: Some(1),
            memory_kib: Some(65536),
            ..DomainXml::default()
        };
        state.domains.insert(
            name.to_string(),
            FakeDomain {
                uuid,
                live: power.is_active().then(|| config.clone()),
                config,
                power,
                reason: reason::UNKNOWN,
                acpi: Acpi::PowerOffAfter(Duration::ZERO),
                started: power.is_active().then(Instant::now),
                boots: 0,
                job: None,
            },
        );
    }

    /// Appends `bytes` to the console log file of `name`, as its guest would.
    pub fn write_console(&self, name: &str, bytes: &[u8]) -> Result<(), HypervisorError> {
        let path = self.with_domain(name, |d| {
            d.live.as_ref().unwrap_or(&d.config).console_log.clone()
        })?;
        let path = path.ok_or_else(|| HypervisorError::NoConsoleLog {
            name: name.to_string(),
        })?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|source| HypervisorError::ConsoleLog {
                name: name.to_string(),
                path,
                source,
            })
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    fn with_domain<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut FakeDomain) -> T,
    ) -> Result<T, HypervisorError> {
        let mut state = self.state.lock();
        let d = state.domains.get_mut(name).ok_or_else(|| not_found(name))?;
        Ok(f(d))
    }

    /// Records the call, finds the domain, applies an injected failure, and checks ownership
    /// when `mutating`.
    fn enter<'s>(
        state: &'s mut State,
        op: Op,
        name: &str,
        mutating: bool,
    ) -> Result<&'s mut FakeDomain, HypervisorError> {
        state.calls.push(Call {
            op,
            name: name.to_string(),
        });
        if !state.domains.contains_key(name) {
            return Err(not_found(name));
        }
        if let Some(e) = injected(state, op, name) {
            return Err(e);
        }
        let d = state.domains.get_mut(name).expect("checked above");
        if mutating && d.config.server.is_none() {
            return Err(HypervisorError::Foreign {
                name: name.to_string(),
            });
        }
        Ok(d)
    }

    /// Presses the ACPI button of a running domain and lets its guest answer as scripted, the
    /// lock released while "waiting".
    fn press_power_button(
        &self,
        name: &str,
        acpi: Acpi,
        timeout: Duration,
    ) -> Result<ShutdownOutcome, HypervisorError> {
        let outcome = match acpi {
            Acpi::PowerOffAfter(after) if after <= timeout => {
                std::thread::sleep(after);
                ShutdownOutcome::Graceful { after }
            }
            _ => {
                std::thread::sleep(timeout);
                ShutdownOutcome::Destroyed { waited: timeout }
            }
        };
        let reason = match outcome {
            ShutdownOutcome::Graceful { .. } => reason::SHUTOFF_SHUTDOWN,
            _ => reason::SHUTOFF_DESTROYED,
        };
        self.with_domain(name, |d| power_off(d, reason))?;
        Ok(outcome)
    }
}

fn not_found(name: &str) -> HypervisorError {
    HypervisorError::NotFound {
        name: name.to_string(),
    }
}

fn injected(state: &mut State, op: Op, name: &str) -> Option<HypervisorError> {
    state
        .failures
        .get_mut(&(op, name.to_string()))
        .and_then(VecDeque::pop_front)
}

fn next_uuid(state: &mut State) -> String {
    state.next_uuid += 1;
    format!("00000000-0000-4000-8000-{:012x}", state.next_uuid)
}

fn power_off(d: &mut FakeDomain, why: i32) {
    d.power = PowerState::ShutOff;
    d.reason = why;
    d.live = None;
    d.started = None;
}

fn power_on(d: &mut FakeDomain) {
    d.power = PowerState::Running;
    d.reason = reason::RUNNING_BOOTED;
    d.live = Some(d.config.clone());
    d.started = Some(Instant::now());
    d.boots += 1;
}

fn info_of(name: &str, d: &FakeDomain) -> DomainInfo {
    let live = d.live.as_ref().unwrap_or(&d.config);
    let max = d.config.memory_kib.unwrap_or(0);
    DomainInfo {
        name: name.to_string(),
        uuid: d.uuid.clone(),
        server: d.config.server,
        power: d.power,
        state: state_string(d.power, d.reason),
        vcpus: live.vcpus.unwrap_or(1),
        memory_kib: live.current_memory_kib.or(live.memory_kib).unwrap_or(0),
        max_memory_kib: max,
        cpu_time_ns: cpu_time(d),
        persistent: true,
    }
}

fn cpu_time(d: &FakeDomain) -> u64 {
    d.started.map_or(0, |t| t.elapsed().as_nanos() as u64 + 1)
}

impl Hypervisor for FakeHypervisor {
    fn define(&self, xml: &str) -> Result<String, HypervisorError> {
        let parsed = domain_xml::parse(xml)
            .map_err(|message| HypervisorError::InvalidDefinition { message })?;
        let name = parsed.name.clone();
        let mut state = self.state.lock();
        state.calls.push(Call {
            op: Op::Define,
            name: name.clone(),
        });
        if let Some(e) = injected(&mut state, Op::Define, &name) {
            return Err(e);
        }
        if parsed.server.is_none() {
            return Err(HypervisorError::InvalidDefinition {
                message: parsed.metadata_problem.map_or_else(
                    || format!("{name} has no Flotilla metadata; the agent defines only Flotilla's domains"),
                    |p| format!("{name}: {p}"),
                ),
            });
        }
        if let Some(uuid) = &parsed.uuid {
            if let Some((other, _)) = state
                .domains
                .iter()
                .find(|(n, d)| **n != name && d.uuid == *uuid)
            {
                return Err(HypervisorError::Conflict {
                    name: name.clone(),
                    message: format!("domain '{other}' already exists with uuid {uuid}"),
                });
            }
        }
        if let Some(existing) = state.domains.get_mut(&name) {
            if existing.config.server.is_none() {
                return Err(HypervisorError::Foreign { name });
            }
            if parsed.uuid.as_deref() != Some(existing.uuid.as_str()) {
                return Err(HypervisorError::Conflict {
                    name: name.clone(),
                    message: format!("domain '{name}' already exists with uuid {}", existing.uuid),
                });
            }
            existing.config = parsed;
            return Ok(name);
        }
        let uuid = match &parsed.uuid {
            Some(u) => u.clone(),
            None => next_uuid(&mut state),
        };
        state.domains.insert(
            name.clone(),
            FakeDomain {
                uuid,
                config: parsed,
                live: None,
                power: PowerState::ShutOff,
                reason: reason::UNKNOWN,
                acpi: Acpi::PowerOffAfter(Duration::ZERO),
                started: None,
                boots: 0,
                job: None,
            },
        );
        Ok(name)
    }

    fn start(&self, name: &str) -> Result<(), HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Start, name, true)?;
        if !d.power.is_active() {
            power_on(d);
        }
        Ok(())
    }

    fn shutdown(&self, name: &str, timeout: Duration) -> Result<ShutdownOutcome, HypervisorError> {
        let acpi = {
            let mut state = self.state.lock();
            let d = Self::enter(&mut state, Op::Shutdown, name, true)?;
            if !d.power.is_active() {
                return Ok(ShutdownOutcome::AlreadyOff);
            }
            d.acpi
        };
        self.press_power_button(name, acpi, timeout)
    }

    fn reboot(&self, name: &str, mode: RebootMode) -> Result<ShutdownOutcome, HypervisorError> {
        let acpi = {
            let mut state = self.state.lock();
            let d = Self::enter(&mut state, Op::Reboot, name, true)?;
            if !d.power.is_active() {
                return Err(HypervisorError::InvalidState {
                    name: name.to_string(),
                    action: "reboot",
                    state: d.power,
                    hint: "; start it instead",
                });
            }
            d.acpi
        };
        let outcome = match mode {
            RebootMode::Soft { timeout } => self.press_power_button(name, acpi, timeout)?,
            RebootMode::Hard => {
                self.with_domain(name, |d| power_off(d, reason::SHUTOFF_DESTROYED))?;
                ShutdownOutcome::Destroyed {
                    waited: Duration::ZERO,
                }
            }
        };
        self.with_domain(name, power_on)?;
        Ok(outcome)
    }

    fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Resume, name, true)?;
        match d.power {
            PowerState::ShutOff => Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "resume",
                state: d.power,
                hint: "; start it instead",
            }),
            PowerState::Paused | PowerState::Suspended => {
                d.power = PowerState::Running;
                d.reason = reason::RUNNING_UNPAUSED;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn suspend(&self, name: &str) -> Result<(), HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Suspend, name, true)?;
        match d.power {
            PowerState::ShutOff | PowerState::Crashed => Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "suspend",
                state: d.power,
                hint: "",
            }),
            PowerState::Paused => Ok(()),
            _ => {
                d.power = PowerState::Paused;
                d.reason = reason::PAUSED_USER;
                Ok(())
            }
        }
    }

    fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Destroy, name, true)?;
        if d.power.is_active() {
            power_off(d, reason::SHUTOFF_DESTROYED);
        }
        Ok(())
    }

    fn undefine(&self, name: &str) -> Result<(), HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Undefine, name, true)?;
        if d.power.is_active() {
            return Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "undefine",
                state: d.power,
                hint: "; shut it down or destroy it first",
            });
        }
        state.domains.remove(name);
        Ok(())
    }

    fn info(&self, name: &str) -> Result<DomainInfo, HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Info, name, false)?;
        Ok(info_of(name, d))
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let state = self.state.lock();
        Ok(state
            .domains
            .iter()
            .map(|(name, d)| info_of(name, d))
            .collect())
    }

    fn stats(&self, name: &str) -> Result<DomainStats, HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::Stats, name, false)?;
        let Some(live) = d.live.as_ref().filter(|_| d.power.is_active()) else {
            return Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "read statistics of",
                state: d.power,
                hint: "; statistics exist only while it runs",
            });
        };
        let info = info_of(name, d);
        // Synthetic counters that grow with uptime and differ per device, like the test driver.
        let up = cpu_time(d) / 1_000 + d.boots;
        Ok(DomainStats {
            cpu_time_ns: info.cpu_time_ns,
            vcpus: info.vcpus,
            memory: MemoryStats {
                current_kib: info.memory_kib,
                actual_kib: Some(info.memory_kib),
                rss_kib: Some(info.memory_kib / 2),
                unused_kib: None,
            },
            disks: live
                .disks
                .iter()
                .zip(1u64..)
                .map(|(disk, i)| DiskStats {
                    device: disk.target.clone(),
                    path: disk.source.clone(),
                    read_bytes: up * 512 * i,
                    read_reqs: up * i,
                    write_bytes: up * 256 * i,
                    write_reqs: up * i / 2,
                })
                .collect(),
            nics: live
                .nics
                .iter()
                .zip(1u64..)
                .filter_map(|(nic, i)| {
                    let device = nic.target.clone().or_else(|| nic.mac.clone())?;
                    Some(NicStats {
                        device,
                        mac: nic.mac.clone(),
                        rx_bytes: up * 100 * i,
                        rx_packets: up * i,
                        tx_bytes: up * 50 * i,
                        tx_packets: up * i / 2,
                    })
                })
                .collect(),
            unavailable: live
                .nics
                .iter()
                .filter(|n| n.target.is_none() && n.mac.is_none())
                .map(|_| "an interface without host device or MAC address".to_string())
                .collect(),
        })
    }

    fn console_log(&self, name: &str, max_bytes: usize) -> Result<ConsoleLog, HypervisorError> {
        let xml = {
            let mut state = self.state.lock();
            let d = Self::enter(&mut state, Op::ConsoleLog, name, false)?;
            d.live.clone().unwrap_or_else(|| d.config.clone())
        };
        read_console_log(name, &xml, max_bytes)
    }

    fn start_paused(&self, name: &str) -> Result<(), HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::StartPaused, name, true)?;
        match d.power {
            PowerState::Paused => Ok(()),
            PowerState::ShutOff => {
                power_on(d);
                d.power = PowerState::Paused;
                d.reason = reason::PAUSED_USER;
                Ok(())
            }
            state => Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "start (paused)",
                state,
                hint: "; it runs already",
            }),
        }
    }

    fn migrate(&self, name: &str, request: &MigrationRequest) -> Result<(), HypervisorError> {
        let config = domain_xml::parse(&request.dest_xml)
            .map_err(|message| HypervisorError::InvalidDefinition { message })?;
        let started = Instant::now();
        let script = {
            let mut state = self.state.lock();
            let d = Self::enter(&mut state, Op::Migrate, name, true)?;
            if !d.power.is_active() {
                return Err(HypervisorError::InvalidState {
                    name: name.to_string(),
                    action: "migrate",
                    state: d.power,
                    hint: "; only an active (running or paused) domain migrates",
                });
            }
            if d.job.is_some() {
                return Err(HypervisorError::Libvirt {
                    action: "migrate",
                    name: name.to_string(),
                    message: "another migration job is already running".into(),
                });
            }
            if config.name != name || config.uuid.as_deref().is_some_and(|u| u != d.uuid) {
                return Err(HypervisorError::InvalidDefinition {
                    message: format!(
                        "target domain name/uuid {}/{:?} does not match source {name}/{}",
                        config.name, config.uuid, d.uuid
                    ),
                });
            }
            if config.server.is_none() {
                return Err(HypervisorError::InvalidDefinition {
                    message: format!(
                        "the destination definition of {name} has no Flotilla metadata"
                    ),
                });
            }
            let script = state.migrations.remove(name).unwrap_or_default();
            let d = state.domains.get_mut(name).expect("entered above");
            d.job = Some(FakeJob {
                progress: fake_progress(&script, 0, request.copy_storage, started),
                aborted: false,
            });
            script
        };
        let dest = self.fabric.as_ref().and_then(|f| f.find(&request.dest_uri));
        let Some(dest) = dest else {
            self.end_job(name);
            return Err(HypervisorError::Connect {
                uri: request.dest_uri.clone(),
                message: "no fake hypervisor at this URI on the fabric".into(),
            });
        };
        if dest
            .lock()
            .domains
            .get(name)
            .is_some_and(|d| d.power.is_active())
        {
            self.end_job(name);
            return Err(HypervisorError::Libvirt {
                action: "migrate",
                name: name.to_string(),
                message: format!("domain '{name}' is already active at the destination"),
            });
        }
        for step in 1..=script.steps {
            std::thread::sleep(script.step);
            let progress = fake_progress(&script, step, request.copy_storage, started);
            if self.job_step(name, progress) {
                return Err(Self::aborted(name));
            }
        }
        match &script.outcome {
            MigrationOutcome::Succeed => {}
            MigrationOutcome::Fail(message) => {
                self.end_job(name);
                return Err(HypervisorError::Libvirt {
                    action: "migrate",
                    name: name.to_string(),
                    message: message.clone(),
                });
            }
            MigrationOutcome::HangUntilAborted => loop {
                std::thread::sleep(Duration::from_millis(5));
                let progress = fake_progress(&script, script.steps, request.copy_storage, started);
                if self.job_step(name, progress) {
                    return Err(Self::aborted(name));
                }
            },
        }
        self.hand_over(name, &dest, config)
    }

    fn job_progress(&self, name: &str) -> Result<Option<JobProgress>, HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::JobProgress, name, false)?;
        Ok(d.job.as_ref().map(|j| j.progress.clone()))
    }

    fn abort_job(&self, name: &str) -> Result<bool, HypervisorError> {
        let mut state = self.state.lock();
        let d = Self::enter(&mut state, Op::AbortJob, name, true)?;
        Ok(match &mut d.job {
            Some(job) if !job.aborted => {
                job.aborted = true;
                true
            }
            _ => false,
        })
    }
}

fn fake_progress(
    script: &MigrationScript,
    step: u32,
    copy_storage: bool,
    started: Instant,
) -> JobProgress {
    let total_steps = u64::from(script.steps.max(1));
    let done_steps = u64::from(step.min(script.steps));
    let disk_steps = if copy_storage { total_steps / 2 } else { 0 };
    let disk_total = disk_steps * FAKE_STEP_BYTES;
    let memory_total = (total_steps - disk_steps) * FAKE_STEP_BYTES;
    let disk_done = done_steps.min(disk_steps) * FAKE_STEP_BYTES;
    let memory_done = done_steps.saturating_sub(disk_steps) * FAKE_STEP_BYTES;
    JobProgress {
        phase: if disk_done < disk_total {
            JobPhase::CopyingDisk
        } else {
            JobPhase::CopyingMemory
        },
        bytes_done: disk_done + memory_done,
        bytes_total: disk_total + memory_total,
        disk_done,
        disk_total,
        memory_done,
        memory_total,
        elapsed: started.elapsed(),
    }
}

impl FakeHypervisor {
    fn aborted(name: &str) -> HypervisorError {
        HypervisorError::MigrationAborted {
            name: name.to_string(),
            message: "operation aborted: migration out: canceled by client".into(),
        }
    }

    /// Moves the domain to `dest` once the copy is done; fails if it was aborted meanwhile.
    fn hand_over(
        &self,
        name: &str,
        dest: &Mutex<State>,
        config: DomainXml,
    ) -> Result<(), HypervisorError> {
        let moved = {
            let mut state = self.state.lock();
            let d = state.domains.get_mut(name).ok_or_else(|| not_found(name))?;
            if d.job.as_ref().is_none_or(|j| j.aborted) {
                d.job = None;
                return Err(Self::aborted(name));
            }
            state.domains.remove(name).expect("checked above")
        };
        let (power, why) = match moved.power {
            PowerState::Paused => (PowerState::Paused, reason::PAUSED_MIGRATION),
            _ => (PowerState::Running, reason::RUNNING_MIGRATED),
        };
        dest.lock().domains.insert(
            name.to_string(),
            FakeDomain {
                uuid: moved.uuid,
                live: Some(config.clone()),
                config,
                power,
                reason: why,
                acpi: moved.acpi,
                started: Some(Instant::now()),
                boots: moved.boots,
                job: None,
            },
        );
        Ok(())
    }
}

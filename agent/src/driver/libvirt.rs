//! [`Hypervisor`] through libvirt (the `virt` crate).
//!
//! URIs: `qemu:///system` (or `qemu+unix:///system?socket=…` for a libvirtd with its own
//! socket) on compute hosts; `test:///default` for tests and the local dev cluster. The test
//! driver keeps its domains in the connection (a new connection starts from its stock domain
//! `test` again), its domains do not really run (no console output; shutdown is instant), and
//! its statistics are synthetic; it has no balloon statistics and refuses
//! `VIR_DOMAIN_UNDEFINE_NVRAM` (so that flag is only passed for domains with an `<nvram>`).
//!
//! One connection is shared by all calls (libvirt connections are thread-safe); when it dies
//! (libvirtd restarted) the next call opens a new one.
//!
//! Migration: [`Hypervisor::migrate`] is `virDomainMigrateToURI3` peer to peer
//! (`PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE`, plus `LIVE` and `NON_SHARED_INC` as asked) with
//! the destination XML as both `DEST_XML` and `PERSIST_XML`. The call blocks while the
//! migration runs (for minutes when the network to the destination breaks), and it runs on a
//! connection of its own: libvirt 9.0 was seen holding every other call on the connection a
//! migration runs on until it ended, which would stall job progress, abort and the executor's
//! scans. [`Hypervisor::job_progress`] is `virDomainGetJobInfo`. The `virt` crate (0.5) has no binding for `virDomainAbortJob` and the workspace
//! forbids unsafe code, so [`Hypervisor::abort_job`] runs `virsh -c <uri> domjobabort <name>`:
//! its own connection, which a busy one cannot block.
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateReason};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

use super::domain_xml::{self, DomainXml};
use super::process::{self, RunError};
use super::{
    state_string, ConsoleLog, DiskStats, DomainInfo, DomainStats, Hypervisor, HypervisorError,
    JobPhase, JobProgress, MemoryStats, MigrationRequest, NicStats, PowerState, RebootMode,
    ShutdownOutcome,
};

/// How long `virsh domjobabort` may take.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a waiting shutdown looks at the domain's state.
const POLL: Duration = Duration::from_millis(50);

/// The libvirt driver. See the module doc for URIs.
pub struct LibvirtHypervisor {
    uri: String,
    conn: Mutex<Option<Arc<Connect>>>,
}

impl std::fmt::Debug for LibvirtHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtHypervisor")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl LibvirtHypervisor {
    /// Connects to `uri` (failing now if libvirt cannot be reached).
    pub fn connect(uri: &str) -> Result<Self, HypervisorError> {
        // libvirt prints every error to stderr by default; ours are returned as values.
        virt::error::clear_error_callback();
        let hv = LibvirtHypervisor {
            uri: uri.to_string(),
            conn: Mutex::new(None),
        };
        hv.conn()?;
        Ok(hv)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The hypervisor's version as libvirt reports it (`major*1_000_000 + minor*1000 + rel`).
    pub fn hypervisor_version(&self) -> Result<u32, HypervisorError> {
        self.conn()?
            .hyp_version()
            .map_err(|e| self.connect_error(&e))
    }

    /// The connection, reopened when the previous one died.
    fn conn(&self) -> Result<Arc<Connect>, HypervisorError> {
        let mut slot = self.conn.lock();
        if let Some(conn) = slot.as_ref() {
            if conn.is_alive().unwrap_or(false) {
                return Ok(conn.clone());
            }
            tracing::info!(uri = %self.uri, "libvirt connection lost; reconnecting");
        }
        let conn = Arc::new(Connect::open(Some(&self.uri)).map_err(|e| self.connect_error(&e))?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn connect_error(&self, e: &virt::error::Error) -> HypervisorError {
        HypervisorError::Connect {
            uri: self.uri.clone(),
            message: e.message().to_string(),
        }
    }

    /// Maps a libvirt error from `action` on domain `name`.
    fn error(&self, e: virt::error::Error, action: &'static str, name: &str) -> HypervisorError {
        let message = e.message().to_string();
        match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => HypervisorError::NotFound {
                name: name.to_string(),
            },
            Enum::Known(ErrorNumber::NoSupport | ErrorNumber::ArgumentUnsupported) => {
                HypervisorError::Unsupported { action, message }
            }
            Enum::Known(
                ErrorNumber::NoConnect
                | ErrorNumber::InvalidConn
                | ErrorNumber::Rpc
                | ErrorNumber::AuthFailed,
            ) => HypervisorError::Connect {
                uri: self.uri.clone(),
                message,
            },
            _ => HypervisorError::Libvirt {
                action,
                name: name.to_string(),
                message,
            },
        }
    }

    fn lookup(&self, name: &str, action: &'static str) -> Result<Domain, HypervisorError> {
        self.conn()?
            .lookup_domain_by_name(name)
            .map_err(|e| self.error(e, action, name))
    }

    /// The definition: the persistent one (`config`: what the agent defined last, whose
    /// metadata is authoritative) or the one the running instance uses (devices as they are).
    fn xml(
        &self,
        dom: &Domain,
        name: &str,
        action: &'static str,
        config: bool,
    ) -> Result<DomainXml, HypervisorError> {
        let flags = if config {
            virt::sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        let xml = dom
            .xml_desc(flags)
            .map_err(|e| self.error(e, action, name))?;
        domain_xml::parse(&xml).map_err(|message| HypervisorError::Libvirt {
            action,
            name: name.to_string(),
            message: format!("libvirt returned a definition the agent cannot read: {message}"),
        })
    }

    /// Looks the domain up and checks it is Flotilla's before `action` changes it.
    fn ours(
        &self,
        name: &str,
        action: &'static str,
    ) -> Result<(Domain, DomainXml), HypervisorError> {
        let dom = self.lookup(name, action)?;
        let xml = self.xml(&dom, name, action, true)?;
        if xml.server.is_none() {
            return Err(HypervisorError::Foreign {
                name: name.to_string(),
            });
        }
        Ok((dom, xml))
    }

    fn power(
        &self,
        dom: &Domain,
        name: &str,
        action: &'static str,
    ) -> Result<PowerState, HypervisorError> {
        let info = dom.info().map_err(|e| self.error(e, action, name))?;
        Ok(power_state(info.state))
    }

    fn domain_info(&self, dom: &Domain, name: &str) -> Result<DomainInfo, HypervisorError> {
        const ACTION: &str = "read the state of";
        let xml = self.xml(dom, name, ACTION, true)?;
        let info = dom.info().map_err(|e| self.error(e, ACTION, name))?;
        let power = power_state(info.state);
        // virDomainGetState's own failure is not reported by the crate; the reason is then 0.
        let reason = dom.state().map(|(_, r)| reason_code(r)).unwrap_or(0);
        if let Some(problem) = &xml.metadata_problem {
            tracing::warn!(
                domain = name,
                "{problem}; treating the domain as not Flotilla's"
            );
        }
        Ok(DomainInfo {
            name: name.to_string(),
            uuid: dom.uuid_string().map_err(|e| self.error(e, ACTION, name))?,
            server: xml.server,
            power,
            state: state_string(power, reason),
            vcpus: info.nr_virt_cpu,
            memory_kib: info.memory,
            max_memory_kib: info.max_mem,
            cpu_time_ns: if power.is_active() { info.cpu_time } else { 0 },
            persistent: dom.is_persistent().unwrap_or(true),
        })
    }

    /// ACPI power button, then wait up to `timeout`, then destroy.
    fn stop(
        &self,
        dom: &Domain,
        name: &str,
        timeout: Duration,
    ) -> Result<ShutdownOutcome, HypervisorError> {
        const ACTION: &str = "shut down";
        if !self.power(dom, name, ACTION)?.is_active() {
            return Ok(ShutdownOutcome::AlreadyOff);
        }
        let started = Instant::now();
        if let Err(e) = dom.shutdown() {
            // It may have stopped on its own since we looked.
            if !self.power(dom, name, ACTION)?.is_active() {
                return Ok(ShutdownOutcome::Graceful {
                    after: started.elapsed(),
                });
            }
            return Err(self.error(e, ACTION, name));
        }
        let deadline = started + timeout;
        loop {
            if !self.power(dom, name, ACTION)?.is_active() {
                return Ok(ShutdownOutcome::Graceful {
                    after: started.elapsed(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
        let waited = started.elapsed();
        tracing::debug!(
            domain = name,
            ?waited,
            "guest ignored ACPI shutdown; destroying"
        );
        if let Err(e) = dom.destroy() {
            if !self.power(dom, name, ACTION)?.is_active() {
                return Ok(ShutdownOutcome::Graceful { after: waited });
            }
            return Err(self.error(e, "destroy", name));
        }
        Ok(ShutdownOutcome::Destroyed { waited })
    }

    fn destroy_domain(&self, dom: &Domain, name: &str) -> Result<(), HypervisorError> {
        if !self.power(dom, name, "destroy")?.is_active() {
            return Ok(());
        }
        match dom.destroy() {
            Ok(()) => Ok(()),
            Err(_) if !self.power(dom, name, "destroy")?.is_active() => Ok(()),
            Err(e) => Err(self.error(e, "destroy", name)),
        }
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn define(&self, xml: &str) -> Result<String, HypervisorError> {
        let parsed = domain_xml::parse(xml)
            .map_err(|message| HypervisorError::InvalidDefinition { message })?;
        let name = parsed.name.clone();
        if parsed.server.is_none() {
            return Err(HypervisorError::InvalidDefinition {
                message: parsed.metadata_problem.map_or_else(
                    || format!("{name} has no Flotilla metadata; the agent defines only Flotilla's domains"),
                    |p| format!("{name}: {p}"),
                ),
            });
        }
        match self.lookup(&name, "define") {
            Ok(existing) => {
                if self.xml(&existing, &name, "define", true)?.server.is_none() {
                    return Err(HypervisorError::Foreign { name });
                }
            }
            Err(HypervisorError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let conn = self.conn()?;
        let dom = conn.define_domain_xml(xml).map_err(|e| {
            let message = e.message().to_string();
            match e.code() {
                Enum::Known(
                    ErrorNumber::XmlError
                    | ErrorNumber::XmlDetail
                    | ErrorNumber::XmlInvalidSchema
                    | ErrorNumber::ConfigUnsupported
                    | ErrorNumber::InvalidArg
                    | ErrorNumber::NoSource
                    | ErrorNumber::NoTarget
                    | ErrorNumber::NoOs,
                ) => HypervisorError::InvalidDefinition { message },
                Enum::Known(ErrorNumber::DomExist) => HypervisorError::Conflict {
                    name: name.clone(),
                    message,
                },
                Enum::Known(ErrorNumber::OperationFailed)
                    if message.contains("already exists")
                        || message.contains("already defined") =>
                {
                    HypervisorError::Conflict {
                        name: name.clone(),
                        message,
                    }
                }
                _ => self.error(e, "define", &name),
            }
        })?;
        dom.name().map_err(|e| self.error(e, "define", &name))
    }

    fn start(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.ours(name, "start")?;
        if self.power(&dom, name, "start")?.is_active() {
            return Ok(());
        }
        match dom.create() {
            Ok(()) => Ok(()),
            Err(e)
                if e.code() == Enum::Known(ErrorNumber::OperationInvalid)
                    && self.power(&dom, name, "start")?.is_active() =>
            {
                Ok(())
            }
            Err(e) => Err(self.error(e, "start", name)),
        }
    }

    fn shutdown(&self, name: &str, timeout: Duration) -> Result<ShutdownOutcome, HypervisorError> {
        let (dom, _) = self.ours(name, "shut down")?;
        self.stop(&dom, name, timeout)
    }

    fn reboot(&self, name: &str, mode: RebootMode) -> Result<ShutdownOutcome, HypervisorError> {
        let (dom, _) = self.ours(name, "reboot")?;
        let power = self.power(&dom, name, "reboot")?;
        if !power.is_active() {
            return Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "reboot",
                state: power,
                hint: "; start it instead",
            });
        }
        let outcome = match mode {
            RebootMode::Soft { timeout } => self.stop(&dom, name, timeout)?,
            RebootMode::Hard => {
                self.destroy_domain(&dom, name)?;
                ShutdownOutcome::Destroyed {
                    waited: Duration::ZERO,
                }
            }
        };
        dom.create().map_err(|e| self.error(e, "start", name))?;
        Ok(outcome)
    }

    fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.ours(name, "resume")?;
        let power = self.power(&dom, name, "resume")?;
        match power {
            PowerState::ShutOff => Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "resume",
                state: power,
                hint: "; start it instead",
            }),
            PowerState::Paused => dom.resume().map_err(|e| self.error(e, "resume", name)),
            PowerState::Suspended => dom.pm_wakeup(0).map_err(|e| self.error(e, "resume", name)),
            _ => Ok(()),
        }
    }

    fn suspend(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.ours(name, "suspend")?;
        let power = self.power(&dom, name, "suspend")?;
        match power {
            PowerState::ShutOff | PowerState::Crashed => Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "suspend",
                state: power,
                hint: "",
            }),
            PowerState::Paused => Ok(()),
            _ => dom.suspend().map_err(|e| self.error(e, "suspend", name)),
        }
    }

    fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.ours(name, "destroy")?;
        self.destroy_domain(&dom, name)
    }

    fn undefine(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, xml) = self.ours(name, "undefine")?;
        let power = self.power(&dom, name, "undefine")?;
        if power.is_active() {
            return Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "undefine",
                state: power,
                hint: "; shut it down or destroy it first",
            });
        }
        let mut flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
        if xml.has_nvram {
            flags |= virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        }
        match dom.undefine_flags(flags) {
            // Drivers without checkpoints (the test driver) refuse that flag; they have none.
            Err(e)
                if e.code() == Enum::Known(ErrorNumber::InvalidArg)
                    && e.message().contains("unsupported flags") =>
            {
                dom.undefine_flags(flags & !virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            }
            other => other,
        }
        .map_err(|e| self.error(e, "undefine", name))
    }

    fn info(&self, name: &str) -> Result<DomainInfo, HypervisorError> {
        let dom = self.lookup(name, "read the state of")?;
        self.domain_info(&dom, name)
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let conn = self.conn()?;
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| self.connect_error(&e))?;
        let mut out = Vec::with_capacity(domains.len());
        for dom in domains {
            let Ok(name) = dom.name() else { continue };
            match self.domain_info(&dom, &name) {
                Ok(info) => out.push(info),
                // Undefined while we were listing.
                Err(HypervisorError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stats(&self, name: &str) -> Result<DomainStats, HypervisorError> {
        const ACTION: &str = "read statistics of";
        let dom = self.lookup(name, ACTION)?;
        let info = dom.info().map_err(|e| self.error(e, ACTION, name))?;
        let power = power_state(info.state);
        if !power.is_active() {
            return Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: "read statistics of",
                state: power,
                hint: "; statistics exist only while it runs",
            });
        }
        let xml = self.xml(&dom, name, ACTION, false)?;
        let mut stats = DomainStats {
            cpu_time_ns: info.cpu_time,
            vcpus: info.nr_virt_cpu,
            memory: MemoryStats {
                current_kib: info.memory,
                ..MemoryStats::default()
            },
            ..DomainStats::default()
        };
        match dom.memory_stats(0) {
            Ok(list) => {
                for s in list {
                    match s.tag {
                        virt::sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON => {
                            stats.memory.actual_kib = Some(s.val)
                        }
                        virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS => stats.memory.rss_kib = Some(s.val),
                        virt::sys::VIR_DOMAIN_MEMORY_STAT_UNUSED => {
                            stats.memory.unused_kib = Some(s.val)
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => stats
                .unavailable
                .push(format!("memory statistics: {}", e.message())),
        }
        for disk in &xml.disks {
            match dom.block_stats(&disk.target) {
                Ok(b) => stats.disks.push(DiskStats {
                    device: disk.target.clone(),
                    path: disk.source.clone(),
                    read_bytes: counter(b.rd_bytes),
                    read_reqs: counter(b.rd_req),
                    write_bytes: counter(b.wr_bytes),
                    write_reqs: counter(b.wr_req),
                }),
                Err(e) => stats
                    .unavailable
                    .push(format!("disk {}: {}", disk.target, e.message())),
            }
        }
        for nic in &xml.nics {
            let Some(device) = nic.target.clone().or_else(|| nic.mac.clone()) else {
                stats
                    .unavailable
                    .push("an interface without host device or MAC address".to_string());
                continue;
            };
            match dom.interface_stats(&device) {
                Ok(n) => stats.nics.push(NicStats {
                    device,
                    mac: nic.mac.clone(),
                    rx_bytes: counter(n.rx_bytes),
                    rx_packets: counter(n.rx_packets),
                    tx_bytes: counter(n.tx_bytes),
                    tx_packets: counter(n.tx_packets),
                }),
                Err(e) => stats
                    .unavailable
                    .push(format!("interface {device}: {}", e.message())),
            }
        }
        Ok(stats)
    }

    fn console_log(&self, name: &str, max_bytes: usize) -> Result<ConsoleLog, HypervisorError> {
        let dom = self.lookup(name, "read the console of")?;
        let xml = self.xml(&dom, name, "read the console of", false)?;
        read_console_log(name, &xml, max_bytes)
    }

    fn start_paused(&self, name: &str) -> Result<(), HypervisorError> {
        const ACTION: &str = "start (paused)";
        let (dom, _) = self.ours(name, ACTION)?;
        match self.power(&dom, name, ACTION)? {
            PowerState::Paused => return Ok(()),
            PowerState::ShutOff => {}
            state => {
                return Err(HypervisorError::InvalidState {
                    name: name.to_string(),
                    action: ACTION,
                    state,
                    hint: "; it runs already",
                })
            }
        }
        dom.create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
            .map_err(|e| self.error(e, ACTION, name))
    }

    fn migrate(&self, name: &str, request: &MigrationRequest) -> Result<(), HypervisorError> {
        const ACTION: &str = "migrate";
        let (dom, _) = self.ours(name, ACTION)?;
        let state = self.power(&dom, name, ACTION)?;
        if !state.is_active() {
            return Err(HypervisorError::InvalidState {
                name: name.to_string(),
                action: ACTION,
                state,
                hint: "; only an active (running or paused) domain migrates",
            });
        }
        let mut flags = virt::sys::VIR_MIGRATE_PEER2PEER
            | virt::sys::VIR_MIGRATE_PERSIST_DEST
            | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if request.live {
            flags |= virt::sys::VIR_MIGRATE_LIVE;
        }
        if request.copy_storage {
            flags |= virt::sys::VIR_MIGRATE_NON_SHARED_INC;
        }
        // The destination XML for the running domain and for its persistent definition too:
        // without PERSIST_XML, PERSIST_DEST would define the source's persistent definition
        // there (the source's disk paths and generation).
        let params = virt::domain::MigrateParameters {
            dest_xml: Some(request.dest_xml.clone()),
            persist_xml: Some(request.dest_xml.clone()),
            ..Default::default()
        };
        // Its own connection (see the module doc), closed when the call returns.
        let own = Connect::open(Some(&self.uri)).map_err(|e| self.connect_error(&e))?;
        let dom = own
            .lookup_domain_by_name(name)
            .map_err(|e| self.error(e, ACTION, name))?;
        dom.migrate_to_uri3(Some(&request.dest_uri), params, flags)
            .map_err(|e| match e.code() {
                Enum::Known(ErrorNumber::OperationAborted) => HypervisorError::MigrationAborted {
                    name: name.to_string(),
                    message: e.message().to_string(),
                },
                _ => self.error(e, ACTION, name),
            })
    }

    fn job_progress(&self, name: &str) -> Result<Option<JobProgress>, HypervisorError> {
        const ACTION: &str = "read the job of";
        let dom = self.lookup(name, ACTION)?;
        // virDomainGetJobInfo rather than the crate's job_stats, which builds a Vec from a
        // null pointer when no job runs (undefined behaviour; a panic in debug builds).
        let stats = dom.job_info().map_err(|e| self.error(e, ACTION, name))?;
        if stats.r#type == virt::sys::VIR_DOMAIN_JOB_NONE as i32 {
            return Ok(None);
        }
        let disk_total = stats.disk_total.unwrap_or(0);
        let disk_done = stats.disk_processed.unwrap_or(0);
        let memory_total = stats.mem_total.unwrap_or(0);
        let memory_done = stats.mem_processed.unwrap_or(0);
        let bytes_total = stats.data_total.unwrap_or(disk_total + memory_total);
        let bytes_done = stats.data_processed.unwrap_or(disk_done + memory_done);
        // Storage is copied first; memory once the disks are mirrored.
        let phase = if disk_total > 0 && disk_done < disk_total && memory_done == 0 {
            JobPhase::CopyingDisk
        } else {
            JobPhase::CopyingMemory
        };
        Ok(Some(JobProgress {
            phase,
            bytes_done,
            bytes_total,
            disk_done,
            disk_total,
            memory_done,
            memory_total,
            elapsed: Duration::from_millis(stats.time_elapsed.unwrap_or(0)),
        }))
    }

    fn abort_job(&self, name: &str) -> Result<bool, HypervisorError> {
        const ACTION: &str = "abort the job of";
        // Straight to virsh: reading the job first would wait for the job lock a stuck
        // migration holds. `ours` reads only the persistent definition, which needs no job.
        self.ours(name, ACTION)?;
        let argv = ["-c", &self.uri, "domjobabort", name].map(Into::into);
        match process::run(std::path::Path::new("virsh"), &argv, ABORT_TIMEOUT) {
            Ok(_) => Ok(true),
            Err(RunError::Failed { stderr, .. }) if stderr.contains("no job is active") => {
                Ok(false)
            }
            Err(RunError::Failed { stderr, .. }) => Err(HypervisorError::Libvirt {
                action: ACTION,
                name: name.to_string(),
                message: format!("virsh domjobabort failed: {stderr}"),
            }),
            Err(RunError::Timeout) => Err(HypervisorError::Libvirt {
                action: ACTION,
                name: name.to_string(),
                message: format!(
                    "virsh domjobabort did not return within {} s",
                    ABORT_TIMEOUT.as_secs()
                ),
            }),
            Err(RunError::Spawn(e)) => Err(HypervisorError::Libvirt {
                action: ACTION,
                name: name.to_string(),
                message: format!("cannot run virsh (libvirt-clients): {e}"),
            }),
        }
    }
}

/// Reads the tail of the console log file named in `xml` (shared with the fake).
pub(crate) fn read_console_log(
    name: &str,
    xml: &DomainXml,
    max_bytes: usize,
) -> Result<ConsoleLog, HypervisorError> {
    let path = xml
        .console_log
        .clone()
        .ok_or_else(|| HypervisorError::NoConsoleLog {
            name: name.to_string(),
        })?;
    let io_err = |source| HypervisorError::ConsoleLog {
        name: name.to_string(),
        path: path.clone(),
        source,
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleLog {
                path,
                bytes: Vec::new(),
                truncated: false,
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let len = file.metadata().map_err(io_err)?.len();
    let start = len.saturating_sub(max_bytes as u64);
    file.seek(SeekFrom::Start(start)).map_err(io_err)?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(max_bytes as u64)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    Ok(ConsoleLog {
        path,
        bytes,
        truncated: start > 0,
    })
}

/// libvirt reports unsupported counters as -1.
fn counter(v: i64) -> u64 {
    v.max(0) as u64
}

fn power_state(state: virt::domain::DomainStateEnum) -> PowerState {
    match state {
        Enum::Known(DomainState::Running) => PowerState::Running,
        Enum::Known(DomainState::Blocked) => PowerState::Blocked,
        Enum::Known(DomainState::Paused) => PowerState::Paused,
        Enum::Known(DomainState::Shutdown) => PowerState::ShuttingDown,
        Enum::Known(DomainState::Shutoff) => PowerState::ShutOff,
        Enum::Known(DomainState::Crashed) => PowerState::Crashed,
        Enum::Known(DomainState::PMSuspended) => PowerState::Suspended,
        Enum::Known(DomainState::NoState) | Enum::Unknown(_) => PowerState::Unknown,
    }
}

fn reason_code(reason: virt::domain::DomainStateReasonEnum) -> i32 {
    let raw = match reason {
        Enum::Known(DomainStateReason::NoState(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::Running(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::Blocked(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::Paused(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::Shutdown(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::Shutoff(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::Crashed(r)) => r.to_raw(),
        Enum::Known(DomainStateReason::PMSuspended(r)) => r.to_raw(),
        Enum::Unknown(r) => return r,
    };
    raw as i32
}

//! Typed agent configuration: a TOML file read into [`AgentConfig`] (unknown keys refused),
//! checked once by [`AgentConfig::validate`], after which only a [`ValidConfig`] exists. What
//! the file leaves out is taken from the host ([`HostFacts`]): its hostname, CPUs, memory, the
//! size of the filesystem holding `state_dir`, and whether `/dev/kvm` exists.
//!
//! ```toml
//! address = "10.0.0.21"                 # how other hosts reach this one
//! controllers = ["10.0.0.11:7002", "10.0.0.12:7002", "10.0.0.13:7002"]   # peer listeners
//! [tls]
//! ca = "/etc/flotilla/tls/ca.pem"
//! cert = "/etc/flotilla/tls/compute-1.pem"
//! key = "/etc/flotilla/tls/compute-1.key"
//! ```
//!
//! Direct kernel boot: `[kernels.NAME]` names a kernel (and initrd and command line) on this
//! host; a flavor with the extra spec `flotilla:kernel = "NAME"` boots its servers with it, the
//! image attached as the first disk (`vda`). Only paths from this file ever reach QEMU, never
//! anything a user can set.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::render::domain::{DiskCache, DomainType};

/// Everything reading or checking the configuration can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The file as an operator writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The host's name in the cluster; the system hostname when unset. Must match the name in
    /// the host's TLS certificate.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Address other hosts reach this one at (tunnel endpoint, migration target).
    pub address: String,
    #[serde(default = "default_zone")]
    pub availability_zone: String,
    /// The controllers' peer listeners, `host:port`; the agent follows the leader among them.
    pub controllers: Vec<String>,
    /// Mutual TLS towards the controllers (required when they run with TLS).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// `qemu:///system` on compute hosts; `test:///default` for the local dev cluster (nothing
    /// really runs); `qemu+unix:///system?socket=…` for a libvirtd with its own socket.
    #[serde(default = "default_libvirt_uri")]
    pub libvirt_uri: String,
    /// Domain type: `kvm` or `qemu` (software emulation). Default: `kvm` when `/dev/kvm`
    /// exists and the URI is not the test driver's, else `qemu` (also what the test driver
    /// accepts).
    #[serde(default)]
    pub domain_type: Option<DomainTypeName>,
    /// Base image cache (`images/`), server disks (`disks/`), snapshots being uploaded
    /// (`snapshots/`) and serial console logs (`console/`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Resources offered to servers; each one left out is detected.
    #[serde(default)]
    pub capacity: CapacityConfig,
    /// Converge at least this often even when nothing changed (drift repair, I6).
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval_secs: u64,
    /// How long a guest gets to power off after the ACPI power button before it is destroyed
    /// (stop, soft reboot, snapshot).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// Host page cache for server disks: `none` (O_DIRECT; the filesystem must support it) or
    /// `writeback`.
    #[serde(default)]
    pub disk_cache: DiskCacheName,
    /// Kernels for direct kernel boot, by the name flavors use (`flotilla:kernel`).
    #[serde(default)]
    pub kernels: BTreeMap<String, KernelConfig>,
    /// The qemu-img binary.
    #[serde(default = "default_qemu_img")]
    pub qemu_img: PathBuf,
    /// Live and cold migration out of this host.
    #[serde(default)]
    pub migration: MigrationConfig,
    /// What the agent does when it loses its lease.
    #[serde(default)]
    pub lease: LeaseConfig,
    /// Tenant networking on this host; without it no ports are wired.
    #[serde(default)]
    pub network: Option<crate::net::config::NetworkConfig>,
}

/// `[lease]`: what happens when the lease runs out (I7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Pause every running guest once the host holds no valid lease (see [`crate::fence`]),
    /// so a partitioned host never runs a server the controllers rebuilt elsewhere. Off: guests
    /// keep running without a lease (availability over split-brain safety).
    #[serde(default = "default_true")]
    pub fence_on_loss: bool,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            fence_on_loss: default_true(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `[migration]`: how this host migrates servers out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// libvirt URI of a destination host; `{address}` is replaced by the address the
    /// destination registered with. The destination's libvirtd must listen there.
    #[serde(default = "default_migration_uri")]
    pub uri_template: String,
    /// Deadline of a migration whose command sets none (timeout_seconds = 0); after it the
    /// migration is aborted and the server keeps running here.
    #[serde(default = "default_migration_timeout")]
    pub default_timeout_secs: u64,
    /// How often a running migration reports its progress to the controller.
    #[serde(default = "default_migration_progress")]
    pub progress_interval_ms: u64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            uri_template: default_migration_uri(),
            default_timeout_secs: default_migration_timeout(),
            progress_interval_ms: default_migration_progress(),
        }
    }
}

fn default_migration_uri() -> String {
    "qemu+tcp://{address}/system".into()
}
fn default_migration_timeout() -> u64 {
    600
}
fn default_migration_progress() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the cluster CA.
    pub ca: PathBuf,
    /// PEM certificate of this host, signed by the cluster CA.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainTypeName {
    Qemu,
    Kvm,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskCacheName {
    #[default]
    None,
    Writeback,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    pub vcpus: Option<u32>,
    pub ram_mib: Option<u64>,
    pub disk_gib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Absolute path of the kernel image.
    pub kernel: PathBuf,
    /// Absolute path of the initrd, if any.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

fn default_zone() -> String {
    "nova".into()
}
fn default_libvirt_uri() -> String {
    "qemu:///system".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/flotilla-agent")
}
fn default_reconcile_interval() -> u64 {
    10
}
fn default_shutdown_timeout() -> u64 {
    60
}
fn default_qemu_img() -> PathBuf {
    PathBuf::from("qemu-img")
}
fn default_cmdline() -> String {
    "console=ttyS0".into()
}

/// What the host itself says, for the settings the file leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub vcpus: u32,
    pub ram_mib: u64,
    /// Size of the filesystem holding the state directory.
    pub disk_gib: u64,
    pub has_kvm: bool,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
}

impl HostFacts {
    /// Reads `/proc` and the filesystem of `state_dir` (or of its nearest existing ancestor).
    pub fn detect(state_dir: &Path) -> HostFacts {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let vcpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let ram_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let disk_gib = state_dir
            .ancestors()
            .find_map(|dir| rustix::fs::statvfs(dir).ok())
            .map_or(0, |st| st.f_blocks.saturating_mul(st.f_frsize) >> 30);
        HostFacts {
            hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
            vcpus,
            ram_mib: ram_kib / 1024,
            disk_gib,
            has_kvm: Path::new("/dev/kvm").exists(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// The PEM contents of the TLS files, read once at startup.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

/// Resources this host offers to servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
}

/// A checked configuration with everything resolved.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub hostname: String,
    pub address: String,
    pub availability_zone: String,
    pub controllers: Vec<String>,
    pub tls: Option<TlsMaterial>,
    pub libvirt_uri: String,
    pub domain_type: DomainType,
    /// Absolute.
    pub state_dir: PathBuf,
    pub capacity: Capacity,
    pub cpu_model: String,
    pub reconcile_interval: Duration,
    pub shutdown_timeout: Duration,
    pub disk_cache: DiskCache,
    pub kernels: BTreeMap<String, KernelConfig>,
    pub qemu_img: PathBuf,
    pub migration: Migration,
    /// Pause running guests while the host holds no valid lease (`[lease] fence_on_loss`).
    pub fence_on_loss: bool,
    /// `[network]`, checked; `None`: this host wires no ports.
    pub network: Option<crate::net::config::NetworkConfig>,
}

/// The checked `[migration]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Contains `{address}` exactly once.
    pub uri_template: String,
    pub default_timeout: Duration,
    pub progress_interval: Duration,
}

impl Migration {
    /// The libvirt URI of the destination host at `address`.
    pub fn dest_uri(&self, address: &str) -> String {
        self.uri_template.replace("{address}", address)
    }
}

impl Default for Migration {
    fn default() -> Self {
        let c = MigrationConfig::default();
        Migration {
            uri_template: c.uri_template,
            default_timeout: Duration::from_secs(c.default_timeout_secs),
            progress_interval: Duration::from_millis(c.progress_interval_ms),
        }
    }
}

impl ValidConfig {
    /// Where serial console logs go.
    pub fn console_dir(&self) -> PathBuf {
        self.state_dir.join("console")
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "config file",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<AgentConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks the file against the host it runs on (see [`HostFacts::detect`]) and reads the
    /// TLS files.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let facts = HostFacts::detect(&self.state_dir);
        self.validate_with(&facts)
    }

    /// [`AgentConfig::validate`] with the host's facts given.
    pub fn validate_with(self, facts: &HostFacts) -> Result<ValidConfig, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let hostname = self.hostname.unwrap_or_else(|| facts.hostname.clone());
        if hostname.trim().is_empty() || hostname.chars().any(char::is_whitespace) {
            return invalid(format!(
                "hostname {hostname:?} is empty or has spaces; set `hostname`"
            ));
        }
        if self.address.trim().is_empty() {
            return invalid("`address` is required: how other hosts reach this one".into());
        }
        if let Some(network) = &self.network {
            network.validate().map_err(ConfigError::Invalid)?;
        }
        if self.controllers.is_empty() {
            return invalid("`controllers` must list at least one peer address".into());
        }
        for c in &self.controllers {
            let port = c.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if c.contains("://") || !matches!(port, Some(Ok(p)) if p > 0) {
                return invalid(format!(
                    "controller address {c:?} is not host:port (a controller's peer listener)"
                ));
            }
        }
        if !self.state_dir.is_absolute() {
            return invalid(format!(
                "state_dir {} must be an absolute path (disk paths are written into domain \
                 definitions)",
                self.state_dir.display()
            ));
        }
        if self.reconcile_interval_secs == 0 {
            return invalid("reconcile_interval_secs must be at least 1".into());
        }
        let test_driver = self.libvirt_uri.starts_with("test:");
        let domain_type = match self.domain_type {
            Some(DomainTypeName::Kvm) if test_driver => {
                return invalid(
                    "domain_type kvm does not work with the libvirt test driver; use qemu".into(),
                )
            }
            Some(DomainTypeName::Kvm) => DomainType::Kvm,
            Some(DomainTypeName::Qemu) => DomainType::Qemu,
            None if facts.has_kvm && !test_driver => DomainType::Kvm,
            None => DomainType::Qemu,
        };
        for (name, k) in &self.kernels {
            if name.is_empty() {
                return invalid("a kernel needs a name ([kernels.NAME])".into());
            }
            let paths = std::iter::once(&k.kernel).chain(k.initrd.as_ref());
            for path in paths {
                if !path.is_absolute() {
                    return invalid(format!(
                        "kernels.{name}: {} must be an absolute path",
                        path.display()
                    ));
                }
            }
            if k.cmdline.chars().any(char::is_control) {
                return invalid(format!(
                    "kernels.{name}: the command line has control characters"
                ));
            }
        }
        let capacity = Capacity {
            vcpus: self.capacity.vcpus.unwrap_or(facts.vcpus),
            ram_mib: self.capacity.ram_mib.unwrap_or(facts.ram_mib),
            disk_gib: self.capacity.disk_gib.unwrap_or(facts.disk_gib),
        };
        if capacity.vcpus == 0 || capacity.ram_mib == 0 {
            return invalid(format!(
                "the host offers no {} to servers; set [capacity]",
                if capacity.vcpus == 0 {
                    "vCPUs"
                } else {
                    "memory"
                }
            ));
        }
        let m = &self.migration;
        if m.uri_template.matches("{address}").count() != 1 || !m.uri_template.contains("://") {
            return invalid(format!(
                "migration.uri_template {:?} must be a libvirt URI with `{{address}}` once, e.g. \
                 \"qemu+tcp://{{address}}/system\"",
                m.uri_template
            ));
        }
        if m.default_timeout_secs == 0 || m.progress_interval_ms == 0 {
            return invalid(
                "migration.default_timeout_secs and migration.progress_interval_ms must be at \
                 least 1"
                    .into(),
            );
        }
        let tls = match &self.tls {
            None => None,
            Some(files) => {
                let read = |what: &'static str, path: &Path| {
                    std::fs::read(path).map_err(|source| ConfigError::Read {
                        what,
                        path: path.to_owned(),
                        source,
                    })
                };
                Some(TlsMaterial {
                    ca: read("TLS CA file", &files.ca)?,
                    cert: read("TLS certificate", &files.cert)?,
                    key: read("TLS key", &files.key)?,
                })
            }
        };
        Ok(ValidConfig {
            hostname,
            address: self.address,
            availability_zone: self.availability_zone,
            controllers: self.controllers,
            tls,
            libvirt_uri: self.libvirt_uri,
            domain_type,
            state_dir: self.state_dir,
            capacity,
            cpu_model: facts.cpu_model.clone(),
            reconcile_interval: Duration::from_secs(self.reconcile_interval_secs),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            disk_cache: match self.disk_cache {
                DiskCacheName::None => DiskCache::None,
                DiskCacheName::Writeback => DiskCache::Writeback,
            },
            kernels: self.kernels,
            qemu_img: self.qemu_img,
            migration: Migration {
                uri_template: self.migration.uri_template,
                default_timeout: Duration::from_secs(self.migration.default_timeout_secs),
                progress_interval: Duration::from_millis(self.migration.progress_interval_ms),
            },
            fence_on_loss: self.lease.fence_on_loss,
            network: self.network,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "compute-7".into(),
            vcpus: 16,
            ram_mib: 64 * 1024,
            disk_gib: 900,
            has_kvm: true,
            cpu_model: "Test CPU".into(),
        }
    }

    fn minimal() -> &'static str {
        "address = \"10.0.0.21\"\ncontrollers = [\"10.0.0.11:7002\"]\n"
    }

    #[test]
    fn a_minimal_file_takes_the_rest_from_the_host() {
        let c = AgentConfig::parse(minimal())
            .unwrap()
            .validate_with(&facts())
            .unwrap();
        assert_eq!(c.hostname, "compute-7");
        assert_eq!(c.availability_zone, "nova");
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert_eq!(c.domain_type, DomainType::Kvm, "/dev/kvm exists");
        assert_eq!(
            c.capacity,
            Capacity {
                vcpus: 16,
                ram_mib: 65536,
                disk_gib: 900
            }
        );
        assert_eq!(c.state_dir, Path::new("/var/lib/flotilla-agent"));
        assert_eq!(c.reconcile_interval, Duration::from_secs(10));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
        assert_eq!(c.disk_cache, DiskCache::None);
        assert!(c.tls.is_none() && c.kernels.is_empty());
        assert_eq!(c.cpu_model, "Test CPU");
        assert_eq!(c.migration, Migration::default());
        assert_eq!(
            c.migration.dest_uri("10.0.0.22"),
            "qemu+tcp://10.0.0.22/system"
        );
        assert_eq!(c.migration.default_timeout, Duration::from_secs(600));
        assert_eq!(c.migration.progress_interval, Duration::from_secs(1));
        assert!(c.fence_on_loss, "self-fencing is on by default");
    }

    #[test]
    fn every_setting_can_be_given() {
        let text = r#"
            hostname = "dev-a"
            address = "127.0.0.1"
            availability_zone = "zone-2"
            controllers = ["127.0.0.1:7101", "127.0.0.1:7102"]
            libvirt_uri = "test:///default"
            domain_type = "qemu"
            state_dir = "/tmp/agent-a"
            reconcile_interval_secs = 3
            shutdown_timeout_secs = 5
            disk_cache = "writeback"
            qemu_img = "/opt/qemu/bin/qemu-img"
            [capacity]
            vcpus = 4
            ram_mib = 8192
            disk_gib = 50
            [kernels.tiny]
            kernel = "/srv/vmlinuz"
            initrd = "/srv/initrd.gz"
            cmdline = "console=ttyS0 quiet"
            [migration]
            uri_template = "qemu+tls://{address}:16514/system"
            default_timeout_secs = 120
            progress_interval_ms = 250
            [lease]
            fence_on_loss = false
        "#;
        let c = AgentConfig::parse(text)
            .unwrap()
            .validate_with(&facts())
            .unwrap();
        assert_eq!(
            (c.hostname.as_str(), c.availability_zone.as_str()),
            ("dev-a", "zone-2")
        );
        assert_eq!(c.controllers.len(), 2);
        assert_eq!(c.domain_type, DomainType::Qemu);
        assert_eq!(
            c.capacity,
            Capacity {
                vcpus: 4,
                ram_mib: 8192,
                disk_gib: 50
            }
        );
        assert_eq!(c.reconcile_interval, Duration::from_secs(3));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.disk_cache, DiskCache::Writeback);
        assert!(!c.fence_on_loss);
        assert_eq!(c.console_dir(), Path::new("/tmp/agent-a/console"));
        assert_eq!(
            c.migration,
            Migration {
                uri_template: "qemu+tls://{address}:16514/system".into(),
                default_timeout: Duration::from_secs(120),
                progress_interval: Duration::from_millis(250),
            }
        );
        assert_eq!(
            c.migration.dest_uri("10.1.2.3"),
            "qemu+tls://10.1.2.3:16514/system"
        );
        assert_eq!(
            c.kernels["tiny"],
            KernelConfig {
                kernel: "/srv/vmlinuz".into(),
                initrd: Some("/srv/initrd.gz".into()),
                cmdline: "console=ttyS0 quiet".into()
            }
        );
    }

    #[test]
    fn the_test_driver_gets_qemu_domains_even_with_kvm() {
        let text = format!("{}libvirt_uri = \"test:///default\"\n", minimal());
        let c = AgentConfig::parse(&text)
            .unwrap()
            .validate_with(&facts())
            .unwrap();
        assert_eq!(c.domain_type, DomainType::Qemu);
        let kvm = format!("{text}domain_type = \"kvm\"\n");
        let err = AgentConfig::parse(&kvm)
            .unwrap()
            .validate_with(&facts())
            .unwrap_err();
        assert!(err.to_string().contains("test driver"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for bad in [
            format!("{}colour = \"blue\"\n", minimal()),
            format!("{}domain_type = \"xen\"\n", minimal()),
            format!("{}[capacity]\ncpus = 3\n", minimal()),
            "controllers = [\"a:1\"]\n".to_owned(),
        ] {
            assert!(AgentConfig::parse(&bad).is_err(), "{bad}");
        }
        let cases = [
            ("controllers = []", "at least one"),
            ("controllers = [\"http://a:7002\"]", "host:port"),
            ("controllers = [\"a\"]", "host:port"),
            ("state_dir = \"var/lib\"", "absolute"),
            ("reconcile_interval_secs = 0", "at least 1"),
            ("hostname = \"two words\"", "spaces"),
            ("[kernels.k]\nkernel = \"vmlinuz\"", "absolute"),
            ("[capacity]\nvcpus = 0", "vCPUs"),
            (
                "[migration]\nuri_template = \"qemu+tcp://host/system\"",
                "{address}",
            ),
            ("[migration]\ndefault_timeout_secs = 0", "at least 1"),
            (
                "[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/c\"\nkey = \"/k\"",
                "ca.pem",
            ),
        ];
        for (line, needle) in cases {
            let base = if line.starts_with("controllers") {
                "address = \"10.0.0.21\"\n".to_owned()
            } else {
                minimal().to_owned()
            };
            let text = format!("{base}{line}\n");
            let err = AgentConfig::parse(&text)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .validate_with(&facts())
                .unwrap_err();
            let message = format!("{err}: {:?}", std::error::Error::source(&err));
            assert!(message.contains(needle), "{line}: {message}");
        }
    }

    #[test]
    fn detected_facts_are_plausible() {
        let f = HostFacts::detect(Path::new("/nonexistent/state"));
        assert!(f.vcpus >= 1 && f.ram_mib > 0 && f.disk_gib > 0, "{f:?}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../deploy/examples/agent.toml");
        let c = AgentConfig::parse(text).expect("parses");
        assert!(c.tls.is_some());
        let mut c = c;
        c.tls = None;
        c.validate_with(&facts()).expect("valid");
    }
}

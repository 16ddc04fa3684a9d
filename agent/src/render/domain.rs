//! Libvirt domain XML for one server.
//!
//! A [`DomainSpec`] says everything the domain needs: hypervisor type, the server's id, name and
//! placement generation, flavor sizes, how it boots, its disks, NICs and console log. The
//! consuming [`DomainSpec::validate`] checks it and returns a [`ValidDomainSpec`], the only thing
//! [`render_domain`] accepts, so rendering itself cannot fail.
//!
//! # Escaping
//! Every string that reaches the document — the user-chosen server name above all, but also
//! paths, bridge and network names and the kernel command line — is written through one escaping
//! function (`&`, `<`, `>`, `"`, `'` become entities). Characters XML 1.0 cannot carry at all are
//! stripped from the server name during validation (it is user input and must not make a server
//! unbootable) and rejected everywhere else (they come from our own configuration, so they are a
//! bug). Element and attribute names are constants of this file, never input.
//!
//! # Metadata contract
//! The libvirt driver identifies Flotilla domains by their name, [`domain_name`], and reads the
//! placement generation (I7) back from this element, rendered exactly as
//!
//! ```text
//! <metadata><flotilla:server xmlns:flotilla="https://flotilla.dev/xmlns/server/1"><flotilla:id>SERVER-UUID</flotilla:id><flotilla:generation>N</flotilla:generation></flotilla:server></metadata>
//! ```
//!
//! libvirt re-indents metadata when it formats a domain, so readers must parse it as XML (by
//! [`METADATA_NAMESPACE`], e.g. `virDomainGetMetadata(ELEMENT, METADATA_NAMESPACE)`), never
//! compare text.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// Every Flotilla domain is named this prefix followed by its server's id.
pub const DOMAIN_NAME_PREFIX: &str = "flotilla-";
/// Namespace URI of the `<flotilla:server>` metadata element.
pub const METADATA_NAMESPACE: &str = "https://flotilla.dev/xmlns/server/1";
/// Namespace prefix used for the metadata element (libvirt requires one).
pub const METADATA_PREFIX: &str = "flotilla";

/// Name of the domain that holds `server_id`: `flotilla-<server id>`.
pub fn domain_name(server_id: &str) -> String {
    format!("{DOMAIN_NAME_PREFIX}{server_id}")
}

/// The server id in a Flotilla domain name, or `None` for a domain that is not Flotilla's (the
/// prefix is missing or the rest is not a canonical UUID).
pub fn server_id_from_domain_name(name: &str) -> Option<&str> {
    name.strip_prefix(DOMAIN_NAME_PREFIX)
        .filter(|id| is_canonical_uuid(id))
}

/// libvirt domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainType {
    /// Software emulation (TCG): hosts without `/dev/kvm`.
    Qemu,
    /// Hardware virtualization.
    Kvm,
}

impl DomainType {
    /// The value of `<domain type=…>`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Qemu => "qemu",
            DomainType::Kvm => "kvm",
        }
    }
}

/// Guest CPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuMode {
    /// `<cpu mode='host-model'/>`: the host CPU's features, migratable between alike hosts.
    /// Needs [`DomainType::Kvm`].
    HostModel,
    /// The generic `qemu64` model: the same guest CPU on every host, works under TCG.
    Qemu64,
    /// No `<cpu>` element: whatever the hypervisor picks.
    HypervisorDefault,
}

impl CpuMode {
    /// The usual choice: host-model for KVM, `qemu64` for TCG.
    pub fn default_for(domain_type: DomainType) -> CpuMode {
        match domain_type {
            DomainType::Kvm => CpuMode::HostModel,
            DomainType::Qemu => CpuMode::Qemu64,
        }
    }
}

/// Host page-cache mode of the server's disks (`<driver cache=…>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskCache {
    /// O_DIRECT, the production choice; the filesystem must support it (tmpfs does not).
    None,
    /// Through the host page cache; for test hosts and filesystems without O_DIRECT.
    Writeback,
}

impl DiskCache {
    fn as_str(self) -> &'static str {
        match self {
            DiskCache::None => "none",
            DiskCache::Writeback => "writeback",
        }
    }
}

/// Which of a server's disks a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskRole {
    /// The qcow2 overlay on the image's base; always present, always the first disk (`vda`).
    Root,
    /// Blank scratch disk from the flavor's ephemeral size.
    Ephemeral,
    /// Blank disk from the flavor's swap size (the guest formats it).
    Swap,
}

impl DiskRole {
    /// Every role, in attachment order.
    pub const ALL: [DiskRole; 3] = [DiskRole::Root, DiskRole::Ephemeral, DiskRole::Swap];

    /// Lowercase name, e.g. for file names and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskRole::Root => "root",
            DiskRole::Ephemeral => "ephemeral",
            DiskRole::Swap => "swap",
        }
    }
}

/// One qcow2 disk file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Absolute path of the qcow2 file.
    pub path: PathBuf,
    /// Virtual size the disk is created with. Not part of the XML; the planner uses it to create
    /// the file. For the root disk 0 means "the size of the base image"; other disks need a size.
    pub size_bytes: u64,
}

/// The server's disks, attached as `vda`, `vdb`, `vdc` in this order (absent ones skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disks {
    /// Overlay on the image's base.
    pub root: DiskSpec,
    pub ephemeral: Option<DiskSpec>,
    pub swap: Option<DiskSpec>,
    pub cache: DiskCache,
}

impl Disks {
    /// The present disks with their roles, in attachment order.
    pub fn iter(&self) -> impl Iterator<Item = (DiskRole, &DiskSpec)> {
        [
            Some((DiskRole::Root, &self.root)),
            self.ephemeral.as_ref().map(|d| (DiskRole::Ephemeral, d)),
            self.swap.as_ref().map(|d| (DiskRole::Swap, d)),
        ]
        .into_iter()
        .flatten()
    }
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// From the root disk (firmware, then the image's boot loader).
    Disk,
    /// Direct kernel boot, for test guests: QEMU loads the kernel and initrd itself.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        /// Kernel command line, e.g. `console=ttyS0`.
        cmdline: String,
    },
}

/// One network interface; the model is always virtio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// A libvirt-managed network (`<interface type='network'>`), for test and dev hosts.
    Network {
        network: String,
        /// `None` lets libvirt choose one (it then changes on every define).
        mac: Option<String>,
        mtu: Option<u32>,
    },
    /// A port on an Open vSwitch bridge (normally `br-int`): libvirt adds the port with
    /// `external_ids:iface-id=<port_id>`.
    OvsBridge {
        bridge: String,
        /// Flotilla port id (canonical UUID).
        port_id: String,
        mac: String,
        mtu: Option<u32>,
    },
}

/// Everything the domain XML of one server is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub domain_type: DomainType,
    /// See [`CpuMode::default_for`].
    pub cpu: CpuMode,
    /// Server id: a canonical lowercase UUID; also the domain's UUID.
    pub server_id: String,
    /// The user-chosen server name, shown as the domain's title. Anything.
    pub name: String,
    /// Placement generation this copy belongs to (recorded in the metadata).
    pub generation: u64,
    /// Flavor RAM in MiB.
    pub ram_mib: u64,
    pub vcpus: u32,
    pub boot: Boot,
    pub disks: Disks,
    pub nics: Vec<Nic>,
    /// Absolute path the serial console is logged to (appended across restarts).
    pub console_log: PathBuf,
}

/// Why a [`DomainSpec`] cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainSpecError {
    #[error("server id {0:?} is not a canonical lowercase UUID")]
    InvalidServerId(String),
    #[error("a server needs some memory (0 MiB requested)")]
    ZeroMemory,
    #[error("{ram_mib} MiB of memory is more than libvirt can express")]
    MemoryTooLarge { ram_mib: u64 },
    #[error("a server needs at least one vCPU")]
    ZeroVcpus,
    #[error("CPU mode host-model needs domain type kvm")]
    HostModelNeedsKvm,
    #[error("{what} {path:?} is not an absolute path without `..`")]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} {path:?} is not valid UTF-8")]
    NonUtf8Path { what: &'static str, path: PathBuf },
    #[error("{what} {value:?} contains a character XML cannot carry")]
    ControlCharacter { what: &'static str, value: String },
    #[error("the {} disk has no size", .0.as_str())]
    EmptyDisk(DiskRole),
    #[error("{path:?} is used for more than one file of the server")]
    DuplicatePath { path: PathBuf },
    #[error("MAC address {0:?} is not six colon-separated hex octets")]
    InvalidMac(String),
    #[error("MAC address {0} is a multicast address")]
    MulticastMac(String),
    #[error("MAC address {0} is used by more than one NIC")]
    DuplicateMac(String),
    #[error("port id {0:?} is not a canonical lowercase UUID")]
    InvalidPortId(String),
    #[error("{what} {name:?} is not a usable name")]
    InvalidName { what: &'static str, name: String },
    #[error("MTU {0} is outside 68..=65535")]
    InvalidMtu(u32),
}

/// A [`DomainSpec`] that passed [`DomainSpec::validate`]: renderable as is. MAC addresses are
/// lowercase and the server name holds only characters a domain title can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDomainSpec(DomainSpec);

impl ValidDomainSpec {
    /// The checked spec.
    pub fn spec(&self) -> &DomainSpec {
        &self.0
    }

    pub fn into_inner(self) -> DomainSpec {
        self.0
    }

    pub fn server_id(&self) -> &str {
        &self.0.server_id
    }

    pub fn generation(&self) -> u64 {
        self.0.generation
    }

    /// `flotilla-<server id>`.
    pub fn domain_name(&self) -> String {
        domain_name(&self.0.server_id)
    }
}

impl DomainSpec {
    /// Checks the spec and makes the server name safe for a title: characters XML 1.0 forbids
    /// (and other control characters) are dropped, tabs and line breaks become spaces (libvirt
    /// refuses titles with newlines).
    pub fn validate(mut self) -> Result<ValidDomainSpec, DomainSpecError> {
        if !is_canonical_uuid(&self.server_id) {
            return Err(DomainSpecError::InvalidServerId(self.server_id));
        }
        self.name = sanitize_title(&self.name);
        if self.ram_mib == 0 {
            return Err(DomainSpecError::ZeroMemory);
        }
        memory_kib(self.ram_mib)?;
        if self.vcpus == 0 {
            return Err(DomainSpecError::ZeroVcpus);
        }
        if self.cpu == CpuMode::HostModel && self.domain_type != DomainType::Kvm {
            return Err(DomainSpecError::HostModelNeedsKvm);
        }

        let mut paths = BTreeSet::new();
        let mut claim = |what: &'static str, path: &Path| -> Result<(), DomainSpecError> {
            check_path(what, path)?;
            if !paths.insert(path.to_path_buf()) {
                return Err(DomainSpecError::DuplicatePath {
                    path: path.to_path_buf(),
                });
            }
            Ok(())
        };
        for (role, disk) in self.disks.iter() {
            claim(disk_path_label(role), &disk.path)?;
            if role != DiskRole::Root && disk.size_bytes == 0 {
                return Err(DomainSpecError::EmptyDisk(role));
            }
        }
        claim("console log path", &self.console_log)?;
        if let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &self.boot
        {
            check_path("kernel path", kernel)?;
            if let Some(initrd) = initrd {
                check_path("initrd path", initrd)?;
            }
            check_no_control("kernel command line", cmdline)?;
        }

        let mut macs = BTreeSet::new();
        for nic in &mut self.nics {
            let (mac, mtu) = match nic {
                Nic::Network { network, mac, mtu } => {
                    check_network_name(network)?;
                    (mac.as_mut(), *mtu)
                }
                Nic::OvsBridge {
                    bridge,
                    port_id,
                    mac,
                    mtu,
                } => {
                    check_bridge_name(bridge)?;
                    if !is_canonical_uuid(port_id) {
                        return Err(DomainSpecError::InvalidPortId(port_id.clone()));
                    }
                    (Some(mac), *mtu)
                }
            };
            if let Some(mtu) = mtu {
                if !(68..=65535).contains(&mtu) {
                    return Err(DomainSpecError::InvalidMtu(mtu));
                }
            }
            if let Some(mac) = mac {
                *mac = normalize_mac(mac)?;
                if !macs.insert(mac.clone()) {
                    return Err(DomainSpecError::DuplicateMac(mac.clone()));
                }
            }
        }
        Ok(ValidDomainSpec(self))
    }
}

/// Renders the libvirt domain XML of a checked spec. Deterministic: the same spec always gives
/// the same bytes (the golden tests rely on it).
pub fn render_domain(valid: &ValidDomainSpec) -> String {
    let spec = &valid.0;
    let mut x = Xml::default();
    x.open("domain", &[("type", spec.domain_type.as_str())]);
    x.text("name", &[], &valid.domain_name());
    x.text("uuid", &[], &spec.server_id);
    if !spec.name.is_empty() {
        x.text("title", &[], &spec.name);
    }
    let description = if spec.name.is_empty() {
        "Flotilla server".to_owned()
    } else {
        format!("Flotilla server {}", spec.name)
    };
    x.text("description", &[], &description);
    // The metadata contract, on one line exactly as documented at the top of this file. The id
    // is a checked UUID, so nothing in this line needs escaping.
    x.line(&format!(
        "<metadata><{p}:server xmlns:{p}=\"{METADATA_NAMESPACE}\"><{p}:id>{id}</{p}:id>\
         <{p}:generation>{generation}</{p}:generation></{p}:server></metadata>",
        p = METADATA_PREFIX,
        id = spec.server_id,
        generation = spec.generation,
    ));
    // Checked by validate().
    let kib = memory_kib(spec.ram_mib).unwrap_or(u64::MAX).to_string();
    x.text("memory", &[("unit", "KiB")], &kib);
    x.text("currentMemory", &[("unit", "KiB")], &kib);
    x.text("vcpu", &[("placement", "static")], &spec.vcpus.to_string());

    x.open("os", &[]);
    x.text("type", &[], "hvm");
    match &spec.boot {
        Boot::Disk => x.empty("boot", &[("dev", "hd")]),
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            x.text("kernel", &[], path_str(kernel));
            if let Some(initrd) = initrd {
                x.text("initrd", &[], path_str(initrd));
            }
            x.text("cmdline", &[], cmdline);
        }
    }
    x.close("os");

    x.open("features", &[]);
    x.empty("acpi", &[]);
    x.empty("apic", &[]);
    x.close("features");
    match spec.cpu {
        CpuMode::HostModel => x.empty("cpu", &[("mode", "host-model"), ("check", "partial")]),
        CpuMode::Qemu64 => {
            x.open(
                "cpu",
                &[("mode", "custom"), ("match", "exact"), ("check", "none")],
            );
            x.text("model", &[("fallback", "forbid")], "qemu64");
            x.close("cpu");
        }
        CpuMode::HypervisorDefault => {}
    }
    x.open("clock", &[("offset", "utc")]);
    x.empty("timer", &[("name", "rtc"), ("tickpolicy", "catchup")]);
    x.empty("timer", &[("name", "pit"), ("tickpolicy", "delay")]);
    x.empty("timer", &[("name", "hpet"), ("present", "no")]);
    x.close("clock");
    x.text("on_poweroff", &[], "destroy");
    x.text("on_reboot", &[], "restart");
    x.text("on_crash", &[], "destroy");

    x.open("devices", &[]);
    for ((_, disk), dev) in spec.disks.iter().zip(["vda", "vdb", "vdc"]) {
        x.open("disk", &[("type", "file"), ("device", "disk")]);
        x.empty(
            "driver",
            &[
                ("name", "qemu"),
                ("type", "qcow2"),
                ("cache", spec.disks.cache.as_str()),
                ("discard", "unmap"),
            ],
        );
        x.empty("source", &[("file", path_str(&disk.path))]);
        x.empty("target", &[("dev", dev), ("bus", "virtio")]);
        x.close("disk");
    }
    for nic in &spec.nics {
        render_nic(&mut x, nic);
    }
    x.open("serial", &[("type", "pty")]);
    x.empty(
        "log",
        &[("file", path_str(&spec.console_log)), ("append", "on")],
    );
    x.empty("target", &[("port", "0")]);
    x.close("serial");
    x.open("console", &[("type", "pty")]);
    x.empty("target", &[("type", "serial"), ("port", "0")]);
    x.close("console");
    // Balloon statistics feed `server diagnostics` (dommemstat).
    x.open("memballoon", &[("model", "virtio")]);
    x.empty("stats", &[("period", "10")]);
    x.close("memballoon");
    x.open("rng", &[("model", "virtio")]);
    x.text("backend", &[("model", "random")], "/dev/urandom");
    x.close("rng");
    x.close("devices");
    x.close("domain");
    x.out
}

fn render_nic(x: &mut Xml, nic: &Nic) {
    let (kind, mac, mtu) = match nic {
        Nic::Network { mac, mtu, .. } => ("network", mac.as_deref(), mtu),
        Nic::OvsBridge { mac, mtu, .. } => ("bridge", Some(mac.as_str()), mtu),
    };
    x.open("interface", &[("type", kind)]);
    if let Some(mac) = mac {
        x.empty("mac", &[("address", mac)]);
    }
    match nic {
        Nic::Network { network, .. } => x.empty("source", &[("network", network)]),
        Nic::OvsBridge {
            bridge, port_id, ..
        } => {
            x.empty("source", &[("bridge", bridge)]);
            x.open("virtualport", &[("type", "openvswitch")]);
            x.empty("parameters", &[("interfaceid", port_id)]);
            x.close("virtualport");
        }
    }
    x.empty("model", &[("type", "virtio")]);
    if matches!(nic, Nic::OvsBridge { .. }) {
        // Open vSwitch's userspace datapath reads taps with raw sockets and does not complete
        // checksums a guest leaves to the "hardware", nor split its large segments: the guest
        // computes every checksum itself and sends MTU-sized frames.
        let off = |names: &[&'static str]| -> Vec<(&'static str, &'static str)> {
            names.iter().map(|n| (*n, "off")).collect()
        };
        x.open("driver", &[]);
        x.empty("host", &off(&["csum", "gso", "tso4", "tso6", "ecn", "ufo"]));
        x.empty("guest", &off(&["csum", "tso4", "tso6", "ecn", "ufo"]));
        x.close("driver");
    }
    if let Some(mtu) = mtu {
        x.empty("mtu", &[("size", &mtu.to_string())]);
    }
    x.close("interface");
}

/// Escapes text for XML content and for attribute values in either kind of quotes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Whether XML 1.0 can carry `c` at all (its `Char` production; Rust strings hold no
/// surrogates).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// The server name as a one-line title: control characters (C0, DEL, C1) and the non-characters
/// XML forbids are dropped, tab/CR/LF become spaces.
fn sanitize_title(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            '\t' | '\n' | '\r' => Some(' '),
            c if c.is_control() || !is_xml_char(c) => None,
            c => Some(c),
        })
        .collect()
}

fn check_no_control(what: &'static str, value: &str) -> Result<(), DomainSpecError> {
    if value.chars().any(|c| c.is_control() || !is_xml_char(c)) {
        return Err(DomainSpecError::ControlCharacter {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn check_path(what: &'static str, path: &Path) -> Result<(), DomainSpecError> {
    let Some(text) = path.to_str() else {
        return Err(DomainSpecError::NonUtf8Path {
            what,
            path: path.to_path_buf(),
        });
    };
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(DomainSpecError::NotAbsolute {
            what,
            path: path.to_path_buf(),
        });
    }
    check_no_control(what, text)
}

/// A libvirt network name: anything printable but `/`.
fn check_network_name(name: &str) -> Result<(), DomainSpecError> {
    let what = "network name";
    check_no_control(what, name)?;
    if name.is_empty() || name.contains('/') {
        return Err(DomainSpecError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A Linux interface name (at most 15 bytes) in the characters libvirt's schema allows for a
/// bridge, minus `/`, `\` and space, which Linux or ovs-vsctl would refuse.
fn check_bridge_name(name: &str) -> Result<(), DomainSpecError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    if name.is_empty() || name.len() > 15 || !name.chars().all(allowed) {
        let what = "bridge name";
        return Err(DomainSpecError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn disk_path_label(role: DiskRole) -> &'static str {
    match role {
        DiskRole::Root => "root disk path",
        DiskRole::Ephemeral => "ephemeral disk path",
        DiskRole::Swap => "swap disk path",
    }
}

/// Paths are checked to be UTF-8 by validate().
fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn memory_kib(ram_mib: u64) -> Result<u64, DomainSpecError> {
    ram_mib
        .checked_mul(1024)
        .ok_or(DomainSpecError::MemoryTooLarge { ram_mib })
}

/// `xx:xx:xx:xx:xx:xx` in lowercase, unicast.
fn normalize_mac(mac: &str) -> Result<String, DomainSpecError> {
    let octets: Vec<&str> = mac.split(':').collect();
    let valid = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(DomainSpecError::InvalidMac(mac.to_owned()));
    }
    let lower = mac.to_ascii_lowercase();
    let first = u8::from_str_radix(octets[0], 16)
        .map_err(|_| DomainSpecError::InvalidMac(lower.clone()))?;
    if first & 1 == 1 {
        return Err(DomainSpecError::MulticastMac(lower));
    }
    Ok(lower)
}

/// Whether `id` is a canonical UUID: `8-4-4-4-12` lowercase hex digits, as `uuid`'s hyphenated
/// form prints it. Server and port ids are always in this form.
pub fn is_canonical_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => matches!(c, '0'..='9' | 'a'..='f'),
        })
}

/// A small indenting XML writer. Tag and attribute names are `&'static str` constants of this
/// file; attribute values and text always go through [`escape_into`].
#[derive(Default)]
struct Xml {
    out: String,
    depth: usize,
}

impl Xml {
    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn start_tag(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(tag);
        for (name, value) in attrs {
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push_str("='");
            escape_into(&mut self.out, value);
            self.out.push('\'');
        }
    }

    fn open(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.start_tag(tag, attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    fn close(&mut self, tag: &'static str) {
        self.depth -= 1;
        self.indent();
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push_str(">\n");
    }

    fn empty(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.start_tag(tag, attrs);
        self.out.push_str("/>\n");
    }

    fn text(&mut self, tag: &'static str, attrs: &[(&'static str, &str)], text: &str) {
        self.start_tag(tag, attrs);
        self.out.push('>');
        escape_into(&mut self.out, text);
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push_str(">\n");
    }

    /// A line of markup written by this file, not input.
    fn line(&mut self, markup: &str) {
        self.indent();
        self.out.push_str(markup);
        self.out.push('\n');
    }
}

#[cfg(test)]
mod tests;

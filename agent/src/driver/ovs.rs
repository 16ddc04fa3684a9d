//! [`VSwitch`]: the host's Open vSwitch — bridges, ports, VXLAN tunnel ports and OpenFlow
//! flows. [`OvsVsctl`] (`ovs_vsctl.rs`) implements it with `ovs-vsctl` and `ovs-ofctl`;
//! [`super::ovs_fake::FakeVSwitch`] in memory; [`super::conformance_ovs`] holds both to one
//! contract.
//!
//! # Model
//! - A **bridge** (`br-int`, `br-tun`) has a datapath type (`netdev`, userspace, unless the
//!   driver is configured otherwise), a fail mode (`secure`: only our flows forward; `standalone`:
//!   a learning switch) and `external_ids`.
//! - A **port** is an OVS port with one interface of the same name: its `tag` (the local VLAN of
//!   the port's network on `br-int`) is on the Port row, its `external_ids` (`iface-id` = the
//!   Flotilla port id, `attached-mac`, our `flotilla-*` keys) on the Interface row, where libvirt's
//!   `<virtualport type='openvswitch'>` puts them too.
//! - A **tunnel** is a port whose interface has `type=vxlan` and `options:remote_ip`,
//!   `options:key` (`flow`, or a fixed VNI) and optionally `options:local_ip`.
//! - A **flow** is identified, as in OpenFlow, by table, priority and match; Flotilla's flows
//!   carry a cookie so that a reconcile lists, compares and deletes only its own
//!   ([`CookieMatch`], [`VSwitch::sync_flows`]).
//!
//! # Rules (checked by the conformance suite)
//! - Every `ensure_*` is idempotent and converges an existing object to the spec; every
//!   `delete_*` returns whether something was there.
//! - Every name, MAC, address, VNI, tag and `external_ids` entry is validated before any command
//!   runs ([`OvsError::Invalid`]); nothing reaches a shell.
//! - `external_ids` in a spec are the *managed* keys (`iface-id`, `attached-mac`, `flotilla-*`):
//!   an ensure makes the managed keys exactly the spec's and leaves other keys (libvirt's
//!   `vm-uuid`, `iface-status`) alone.
//! - Flows are compared as text in the form `ovs-ofctl dump-flows` prints (OpenFlow 1.0 with
//!   Nicira extensions): a desired flow written in another form (other field order, `ip` versus
//!   `dl_type=0x0800`) is correct but is rewritten on every [`VSwitch::sync_flows`].
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use super::ovs_vsctl::{OvsConfig, OvsVsctl};

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1); bridges and ports become devices.
pub const MAX_NAME_LEN: usize = 15;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Largest usable 802.1Q VLAN id.
pub const MAX_VLAN: u16 = 4094;
/// Prefix of the `external_ids` keys Flotilla owns.
pub const FLOTILLA_KEY_PREFIX: &str = "flotilla-";
/// Well-known `external_ids` keys Flotilla manages besides `flotilla-*`.
pub const MANAGED_KEYS: &[&str] = &["iface-id", "attached-mac"];

/// `secure`: without flows nothing is forwarded. `standalone`: OVS acts as a learning switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailMode {
    Secure,
    Standalone,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Secure => "secure",
            FailMode::Standalone => "standalone",
        }
    }
}

/// A bridge as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub fail_mode: FailMode,
    /// Managed keys only (`flotilla-*`).
    pub external_ids: BTreeMap<String, String>,
}

impl BridgeSpec {
    pub fn new(name: &str, fail_mode: FailMode) -> Self {
        BridgeSpec {
            name: name.to_string(),
            fail_mode,
            external_ids: BTreeMap::new(),
        }
    }
}

/// A bridge as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    pub name: String,
    /// `netdev`, `system`; empty when unset (OVS then means `system`).
    pub datapath_type: String,
    /// `None` when unset (OVS then behaves as `standalone`).
    pub fail_mode: Option<FailMode>,
    /// Every key, managed or not.
    pub external_ids: BTreeMap<String, String>,
}

/// What kind of interface a port has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// An existing network device (a guest's tap): interface type empty.
    System,
    /// A device OVS creates (`type=internal`), e.g. for a DHCP server.
    Internal,
}

impl PortKind {
    /// The Interface `type` column.
    pub fn ovs_type(self) -> &'static str {
        match self {
            PortKind::System => "",
            PortKind::Internal => "internal",
        }
    }
}

/// A (non-tunnel) port as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub kind: PortKind,
    /// Local VLAN (access port); `None` for a trunk.
    pub tag: Option<VlanTag>,
    /// Managed keys only (`iface-id`, `attached-mac`, `flotilla-*`).
    pub external_ids: BTreeMap<String, String>,
}

impl PortSpec {
    /// A port for Flotilla port `port_id` with MAC `mac` on local VLAN `tag`.
    pub fn vif(name: &str, kind: PortKind, port_id: &str, mac: Mac, tag: VlanTag) -> Self {
        PortSpec {
            name: name.to_string(),
            kind,
            tag: Some(tag),
            external_ids: BTreeMap::from([
                ("iface-id".to_string(), port_id.to_string()),
                ("attached-mac".to_string(), mac.to_string()),
            ]),
        }
    }
}

/// A (non-tunnel) port as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    /// The Interface `type` column (`""`, `internal`, …).
    pub ovs_type: String,
    pub tag: Option<VlanTag>,
    /// Every key of the interface, managed or not.
    pub external_ids: BTreeMap<String, String>,
    /// The OpenFlow port number, once OVS assigned one (`None` for -1: the device is missing).
    pub ofport: Option<u32>,
}

/// The VXLAN key of a tunnel: `flow` (flows set `tun_id`) or one fixed VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKey {
    Flow,
    Vni(Vni),
}

impl fmt::Display for TunnelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelKey::Flow => f.write_str("flow"),
            TunnelKey::Vni(v) => write!(f, "{}", v.get()),
        }
    }
}

/// A VXLAN tunnel port as it should be (and, from [`VSwitch::list_tunnels`], as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub name: String,
    pub remote_ip: IpAddr,
    pub local_ip: Option<IpAddr>,
    pub key: TunnelKey,
    /// Managed keys (`flotilla-*`, e.g. the remote host's id); listing reports every key.
    pub external_ids: BTreeMap<String, String>,
}

/// A tunnel as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    pub spec: TunnelSpec,
    pub ofport: Option<u32>,
}

/// A VXLAN network identifier, 1..=2^24-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vni(u32);

impl Vni {
    pub fn new(v: u32) -> Result<Self, OvsError> {
        if (1..=MAX_VNI).contains(&v) {
            Ok(Vni(v))
        } else {
            Err(invalid("VNI", v, "must be 1..=16777215"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// An 802.1Q VLAN id, 1..=4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VlanTag(u16);

impl VlanTag {
    pub fn new(v: u16) -> Result<Self, OvsError> {
        if (1..=MAX_VLAN).contains(&v) {
            Ok(VlanTag(v))
        } else {
            Err(invalid("VLAN tag", v, "must be 1..=4094"))
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A unicast or multicast Ethernet address, printed lowercase with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for Mac {
    type Err = OvsError;

    fn from_str(s: &str) -> Result<Self, OvsError> {
        let bad = || invalid("MAC address", s, "must be six hex octets separated by ':'");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

/// Which cookies a flow listing or deletion covers: `cookie & mask == value & mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CookieMatch {
    pub value: u64,
    pub mask: u64,
}

impl CookieMatch {
    /// Exactly this cookie.
    pub fn exact(value: u64) -> Self {
        CookieMatch {
            value,
            mask: u64::MAX,
        }
    }

    pub fn matches(self, cookie: u64) -> bool {
        cookie & self.mask == self.value & self.mask
    }

    /// `cookie=0x…/0x…` as ovs-ofctl takes it.
    pub fn to_ofctl(self) -> String {
        format!("cookie={:#x}/{:#x}", self.value & self.mask, self.mask)
    }
}

/// An OpenFlow flow: identified by `table`, `priority` and `match_`; `cookie` and `actions` are
/// its payload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    /// ovs-ofctl match fields, comma-separated, in dump-flows form (`in_port=1,dl_vlan=5`);
    /// empty matches everything.
    pub match_: String,
    pub cookie: u64,
    /// ovs-ofctl actions (`strip_vlan,output:1`).
    pub actions: String,
}

impl Flow {
    pub fn new(cookie: u64, table: u8, priority: u16, match_: &str, actions: &str) -> Self {
        Flow {
            table,
            priority,
            match_: match_.to_string(),
            cookie,
            actions: actions.to_string(),
        }
    }

    /// What identifies the flow in a table.
    pub fn key(&self) -> (u8, u16, &str) {
        (self.table, self.priority, &self.match_)
    }

    /// The flow as `ovs-ofctl add-flow` takes it.
    pub fn to_add(&self) -> String {
        format!(
            "cookie={:#x},table={},priority={}{}{},actions={}",
            self.cookie,
            self.table,
            self.priority,
            if self.match_.is_empty() { "" } else { "," },
            self.match_,
            self.actions
        )
    }

    /// The flow's identity as `ovs-ofctl --strict del-flows` takes it, restricted to `cookie`.
    pub fn to_strict_delete(&self) -> String {
        format!(
            "cookie={:#x}/{:#x},table={},priority={}{}{}",
            self.cookie,
            u64::MAX,
            self.table,
            self.priority,
            if self.match_.is_empty() { "" } else { "," },
            self.match_
        )
    }
}

/// What [`VSwitch::sync_flows`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSync {
    /// Flows added or rewritten (new actions or cookie).
    pub added: Vec<Flow>,
    /// Flows deleted (not desired).
    pub deleted: Vec<Flow>,
}

impl FlowSync {
    pub fn is_noop(&self) -> bool {
        self.added.is_empty() && self.deleted.is_empty()
    }
}

/// The host's Open vSwitch. Every method blocks; call through `spawn_blocking`.
/// [`super::conformance_ovs::run_ovs_suite`] checks the contract (see the module doc).
pub trait VSwitch: Send + Sync {
    /// Creates the bridge or converges it: datapath type, fail mode, managed `external_ids`.
    fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), OvsError>;

    /// Deletes the bridge with its ports and flows; `false` when there was none.
    fn delete_bridge(&self, name: &str) -> Result<bool, OvsError>;

    /// Every bridge, sorted by name.
    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, OvsError>;

    /// Adds the port to `bridge` or converges it (interface type, tag, managed `external_ids`).
    /// A port of that name on another bridge gives [`OvsError::Conflict`].
    fn ensure_port(&self, bridge: &str, spec: &PortSpec) -> Result<(), OvsError>;

    /// Deletes a port (tunnel or not) from `bridge`; `false` when there was none. A port of that
    /// name on another bridge gives [`OvsError::Conflict`].
    fn delete_port(&self, bridge: &str, name: &str) -> Result<bool, OvsError>;

    /// The ports of `bridge` but its own local port and tunnels, sorted by name.
    fn list_ports(&self, bridge: &str) -> Result<Vec<PortInfo>, OvsError>;

    /// Adds the VXLAN port to `bridge` or converges it (options, managed `external_ids`). A
    /// non-tunnel port of that name gives [`OvsError::Conflict`].
    fn ensure_tunnel(&self, bridge: &str, spec: &TunnelSpec) -> Result<(), OvsError>;

    /// Deletes a VXLAN port; `false` when there was none. A non-tunnel port of that name gives
    /// [`OvsError::Conflict`] (a tunnel reconcile never removes a guest's port).
    fn delete_tunnel(&self, bridge: &str, name: &str) -> Result<bool, OvsError>;

    /// The VXLAN ports of `bridge`, sorted by name.
    fn list_tunnels(&self, bridge: &str) -> Result<Vec<TunnelInfo>, OvsError>;

    /// Adds (or, for an existing table/priority/match, replaces) the flows.
    fn add_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), OvsError>;

    /// Deletes exactly these flows (table, priority, match and cookie must all agree); absent
    /// ones are ignored.
    fn delete_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), OvsError>;

    /// Deletes every flow whose cookie `cookies` matches; returns how many there were.
    fn delete_flows_by_cookie(&self, bridge: &str, cookies: CookieMatch)
        -> Result<usize, OvsError>;

    /// The flows whose cookie `cookies` matches, sorted (table, priority, match).
    fn list_flows(&self, bridge: &str, cookies: CookieMatch) -> Result<Vec<Flow>, OvsError>;

    /// Makes the flows matching `cookies` exactly `desired` (each desired cookie must match
    /// `cookies`): deletes the others, adds what is missing or differs. Flows with other
    /// cookies (another owner's) are left alone.
    fn sync_flows(
        &self,
        bridge: &str,
        cookies: CookieMatch,
        desired: &[Flow],
    ) -> Result<FlowSync, OvsError> {
        check_desired_flows(cookies, desired)?;
        let actual = self.list_flows(bridge, cookies)?;
        let sync = plan_flow_sync(&actual, desired);
        if !sync.deleted.is_empty() {
            self.delete_flows(bridge, &sync.deleted)?;
        }
        if !sync.added.is_empty() {
            self.add_flows(bridge, &sync.added)?;
        }
        Ok(sync)
    }
}

/// Checks the flows [`VSwitch::sync_flows`] is given: valid, and all in the synced cookie
/// space.
pub fn check_desired_flows(cookies: CookieMatch, desired: &[Flow]) -> Result<(), OvsError> {
    for f in desired {
        if !cookies.matches(f.cookie) {
            return Err(invalid(
                "flow cookie",
                format!("{:#x}", f.cookie),
                "must match the cookie mask being synced",
            ));
        }
        check_flow(f)?;
    }
    Ok(())
}

/// What turns `actual` into `desired` (pure): actual flows whose table/priority/match no
/// desired flow has are deleted; desired flows not present exactly (same cookie and actions)
/// are added, which replaces a flow with the same identity. Both lists sorted.
pub fn plan_flow_sync(actual: &[Flow], desired: &[Flow]) -> FlowSync {
    let want: BTreeMap<_, _> = desired.iter().map(|f| (f.key(), f)).collect();
    let have: BTreeSet<&Flow> = actual.iter().collect();
    let mut deleted: Vec<Flow> = actual
        .iter()
        .filter(|f| !want.contains_key(&f.key()))
        .cloned()
        .collect();
    let mut added: Vec<Flow> = want
        .values()
        .filter(|f| !have.contains(**f))
        .map(|f| (*f).clone())
        .collect();
    deleted.sort();
    added.sort();
    FlowSync { added, deleted }
}

/// Everything a [`VSwitch`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("{what} {value:?} is invalid: it {rule}")]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("there is no bridge named {bridge}")]
    NoSuchBridge { bridge: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("could not run {} (is openvswitch-switch installed? run deploy/install-deps.sh)", binary.display())]
    Missing {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{tool} {action} did not finish within {} s and was killed (are ovsdb-server and \
         ovs-vswitchd running?)", timeout.as_secs_f64()
    )]
    Timeout {
        tool: &'static str,
        action: &'static str,
        timeout: Duration,
    },
    #[error("{tool} {action} failed: {message}")]
    Failed {
        tool: &'static str,
        action: &'static str,
        message: String,
    },
    #[error("could not understand the output of {tool} {action}: {message}")]
    Parse {
        tool: &'static str,
        action: &'static str,
        message: String,
    },
}

pub(crate) fn invalid(
    what: &'static str,
    value: impl fmt::Display,
    rule: &'static str,
) -> OvsError {
    OvsError::Invalid {
        what,
        value: value.to_string(),
        rule,
    }
}

/// Bridge, port and tunnel names: 1..=15 of `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
pub fn check_name(what: &'static str, name: &str) -> Result<(), OvsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            name,
            "must be 1 to 15 of A-Z a-z 0-9 _ . - and not start with - or .",
        ))
    }
}

fn is_managed_key(key: &str) -> bool {
    MANAGED_KEYS.contains(&key)
        || key
            .strip_prefix(FLOTILLA_KEY_PREFIX)
            .is_some_and(|rest| !rest.is_empty())
}

/// Whether `key` is one Flotilla manages (`iface-id`, `attached-mac`, `flotilla-*`).
pub fn managed_key(key: &str) -> bool {
    is_managed_key(key)
}

/// Managed keys only; values 1..=128 of `[A-Za-z0-9._:/@+-]`; `attached-mac` a MAC.
pub fn check_external_ids(ids: &BTreeMap<String, String>) -> Result<(), OvsError> {
    for (k, v) in ids {
        let key_ok = is_managed_key(k)
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !key_ok {
            return Err(invalid(
                "external_ids key",
                k,
                "must be iface-id, attached-mac or flotilla-<lowercase letters, digits, ->",
            ));
        }
        let value_ok = !v.is_empty()
            && v.len() <= 128
            && v.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'_' | b':' | b'/' | b'@' | b'+' | b'-')
            });
        if !value_ok {
            return Err(invalid(
                "external_ids value",
                v,
                "must be 1 to 128 of A-Z a-z 0-9 . _ : / @ + -",
            ));
        }
        if k == "attached-mac" {
            v.parse::<Mac>()?;
        }
    }
    Ok(())
}

pub fn check_bridge(spec: &BridgeSpec) -> Result<(), OvsError> {
    check_name("bridge name", &spec.name)?;
    check_external_ids(&spec.external_ids)
}

pub fn check_port(spec: &PortSpec) -> Result<(), OvsError> {
    check_name("port name", &spec.name)?;
    if let Some(t) = spec.tag {
        VlanTag::new(t.get())?;
    }
    check_external_ids(&spec.external_ids)
}

pub fn check_tunnel(spec: &TunnelSpec) -> Result<(), OvsError> {
    check_name("tunnel name", &spec.name)?;
    let usable = |ip: &IpAddr| !(ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip));
    if !usable(&spec.remote_ip) {
        return Err(invalid(
            "tunnel remote_ip",
            spec.remote_ip,
            "must be a unicast address",
        ));
    }
    if let Some(local) = &spec.local_ip {
        if !usable(local) {
            return Err(invalid(
                "tunnel local_ip",
                local,
                "must be a unicast address",
            ));
        }
        if local.is_ipv4() != spec.remote_ip.is_ipv4() {
            return Err(invalid(
                "tunnel local_ip",
                local,
                "must be of the same family as remote_ip",
            ));
        }
    }
    if let TunnelKey::Vni(v) = spec.key {
        Vni::new(v.get())?;
    }
    check_external_ids(&spec.external_ids)
}

fn is_broadcast(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Match and actions: printable ASCII without spaces, quotes, backslashes or `;` (ovs-ofctl
/// parses them; they never reach a shell, but a space would split a flow in a flow file).
pub fn check_flow(flow: &Flow) -> Result<(), OvsError> {
    let ok = |s: &str| {
        s.len() <= 4096
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b';'))
    };
    if !ok(&flow.match_) || flow.match_.contains("actions") || flow.match_.contains("cookie") {
        return Err(invalid(
            "flow match",
            &flow.match_,
            "must be ovs-ofctl match fields without spaces, quotes, cookie or actions",
        ));
    }
    if flow.actions.is_empty() || !ok(&flow.actions) {
        return Err(invalid(
            "flow actions",
            &flow.actions,
            "must be non-empty ovs-ofctl actions without spaces or quotes",
        ));
    }
    Ok(())
}

/// Fields `ovs-ofctl dump-flows` prints that are not part of a flow's match.
const NOT_MATCH: &[&str] = &[
    "duration",
    "n_packets",
    "n_bytes",
    "idle_age",
    "hard_age",
    "reset_counts",
    "send_flow_rem",
    "check_overlap",
    "no_packet_counts",
    "no_byte_counts",
    "importance",
    "idle_timeout",
    "hard_timeout",
];

/// Parses the flow lines of `ovs-ofctl dump-flows` (the reply header and blank lines are
/// skipped). Priority defaults to 32768 and table to 0, as OpenFlow's.
pub fn parse_dump_flows(text: &str) -> Result<Vec<Flow>, String> {
    let mut flows = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.contains(" reply ") || line.ends_with("reply:") {
            continue;
        }
        let (head, actions) = line
            .split_once(" actions=")
            .or_else(|| line.strip_prefix("actions=").map(|a| ("", a)))
            .ok_or_else(|| format!("no actions in {line:?}"))?;
        let mut flow = Flow::new(0, 0, 32768, "", actions.trim());
        let mut matches = Vec::new();
        // Fields are separated by ", " or ","; flags by a space ("reset_counts priority=10").
        for field in head
            .split([',', ' '])
            .map(str::trim)
            .filter(|f| !f.is_empty())
        {
            let (name, value) = field.split_once('=').unwrap_or((field, ""));
            let num = |v: &str| -> Result<u64, String> {
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.map_err(|_| format!("bad {name} in {line:?}"))
            };
            match name {
                "cookie" => flow.cookie = num(value)?,
                "table" => {
                    flow.table =
                        u8::try_from(num(value)?).map_err(|_| format!("bad table in {line:?}"))?
                }
                "priority" => {
                    flow.priority = u16::try_from(num(value)?)
                        .map_err(|_| format!("bad priority in {line:?}"))?
                }
                n if NOT_MATCH.contains(&n) => {}
                _ => matches.push(field),
            }
        }
        flow.match_ = matches.join(",");
        flows.push(flow);
    }
    flows.sort();
    Ok(flows)
}

#[cfg(test)]
#[path = "ovs_tests.rs"]
mod tests;

//! [`OvsVsctl`]: the [`VSwitch`] driver with `ovs-vsctl` (the OVSDB, `--format=json` for
//! reading) and `ovs-ofctl` (flows), against the ovsdb-server socket and bridge management
//! sockets of one OVS run directory. Every run has an argv (never a shell) and a deadline.
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::ovs::{
    check_bridge, check_desired_flows, check_flow, check_name, check_port, check_tunnel, invalid,
    managed_key, parse_dump_flows, plan_flow_sync, BridgeInfo, BridgeSpec, CookieMatch, FailMode,
    Flow, FlowSync, OvsError, PortInfo, PortSpec, TunnelInfo, TunnelKey, TunnelSpec, VSwitch,
    VlanTag, Vni,
};
use super::process::{self, RunError};

/// Where OVS runs and how to call it.
#[derive(Debug, Clone)]
pub struct OvsConfig {
    /// OVS's run directory: `db.sock` (ovsdb-server) and `<bridge>.mgmt` (ovs-vswitchd).
    pub rundir: PathBuf,
    pub ovs_vsctl: PathBuf,
    pub ovs_ofctl: PathBuf,
    /// `datapath_type` of every bridge: `netdev` (userspace) or `system` (kernel module).
    pub datapath_type: String,
    /// Limit for one command; ovs-vsctl also waits this long for ovs-vswitchd to apply a change.
    pub timeout: Duration,
}

impl Default for OvsConfig {
    /// The system OVS (`/run/openvswitch`), userspace datapath, 10 s per command.
    fn default() -> Self {
        OvsConfig {
            rundir: PathBuf::from("/run/openvswitch"),
            ovs_vsctl: PathBuf::from("ovs-vsctl"),
            ovs_ofctl: PathBuf::from("ovs-ofctl"),
            datapath_type: "netdev".to_string(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl OvsConfig {
    /// The defaults with another run directory (a test's own OVS).
    pub fn with_rundir(rundir: &Path) -> Self {
        OvsConfig {
            rundir: rundir.to_path_buf(),
            ..OvsConfig::default()
        }
    }

    pub fn db_socket(&self) -> PathBuf {
        self.rundir.join("db.sock")
    }
}

/// [`VSwitch`] with ovs-vsctl and ovs-ofctl. See the module doc.
#[derive(Debug)]
pub struct OvsVsctl {
    config: OvsConfig,
}

const VSCTL: &str = "ovs-vsctl";
const OFCTL: &str = "ovs-ofctl";

impl OvsVsctl {
    pub fn new(config: OvsConfig) -> Result<Self, OvsError> {
        if !matches!(config.datapath_type.as_str(), "netdev" | "system") {
            return Err(invalid(
                "datapath_type",
                &config.datapath_type,
                "must be netdev or system",
            ));
        }
        if config.timeout < Duration::from_secs(1) {
            return Err(invalid(
                "OVS command timeout",
                format!("{:?}", config.timeout),
                "must be at least 1 s",
            ));
        }
        Ok(OvsVsctl { config })
    }

    pub fn config(&self) -> &OvsConfig {
        &self.config
    }

    fn run(
        &self,
        tool: &'static str,
        action: &'static str,
        argv: Vec<OsString>,
    ) -> Result<Vec<u8>, OvsError> {
        let binary = match tool {
            VSCTL => &self.config.ovs_vsctl,
            _ => &self.config.ovs_ofctl,
        };
        // The tools' own --timeout fires first; ours only catches a tool that hangs anyway.
        let limit = self.config.timeout + Duration::from_secs(5);
        process::run(binary, &argv, limit).map_err(|e| match e {
            RunError::Spawn(source) => OvsError::Missing {
                binary: binary.clone(),
                source,
            },
            RunError::Timeout => OvsError::Timeout {
                tool,
                action,
                timeout: limit,
            },
            RunError::Failed { status, stderr } => {
                let message = if stderr.is_empty() {
                    status.to_string()
                } else {
                    stderr
                };
                // ovs-vsctl's --timeout ends with SIGALRM ("killed by signal 14").
                if status.code().is_none() || message.contains("timeout") {
                    OvsError::Timeout {
                        tool,
                        action,
                        timeout: self.config.timeout,
                    }
                } else {
                    OvsError::Failed {
                        tool,
                        action,
                        message,
                    }
                }
            }
        })
    }

    /// ovs-vsctl with the database socket, the timeout and `args`.
    fn vsctl(&self, action: &'static str, args: Vec<String>) -> Result<Vec<u8>, OvsError> {
        let mut argv: Vec<OsString> = vec![
            format!("--db=unix:{}", self.config.db_socket().display()).into(),
            format!("--timeout={}", self.config.timeout.as_secs()).into(),
        ];
        argv.extend(args.into_iter().map(OsString::from));
        self.run(VSCTL, action, argv).map_err(classify)
    }

    /// ovs-vsctl reads in JSON: one table per command.
    fn vsctl_json(&self, action: &'static str, args: Vec<String>) -> Result<Vec<Table>, OvsError> {
        let mut all = vec!["--format=json".to_string()];
        all.extend(args);
        let out = self.vsctl(action, all)?;
        parse_tables(&out).map_err(|message| OvsError::Parse {
            tool: VSCTL,
            action,
            message,
        })
    }

    fn bridge_exists(&self, name: &str) -> Result<bool, OvsError> {
        match self.vsctl("br-exists", vec!["br-exists".into(), name.into()]) {
            Ok(_) => Ok(true),
            Err(OvsError::Failed { ref message, .. }) if message.contains("exit status: 2") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// ovs-ofctl against the bridge's management socket.
    fn ofctl(
        &self,
        action: &'static str,
        bridge: &str,
        mut args: Vec<String>,
    ) -> Result<Vec<u8>, OvsError> {
        check_name("bridge name", bridge)?;
        let target = format!(
            "unix:{}",
            self.config.rundir.join(format!("{bridge}.mgmt")).display()
        );
        let mut argv: Vec<OsString> =
            vec![format!("--timeout={}", self.config.timeout.as_secs()).into()];
        // Subcommand first, then options that precede the target, then the target.
        let sub = args.remove(0);
        let (opts, rest): (Vec<String>, Vec<String>) =
            args.into_iter().partition(|a| a.starts_with("--"));
        argv.extend(opts.into_iter().map(OsString::from));
        argv.push(sub.into());
        argv.push(target.into());
        argv.extend(rest.into_iter().map(OsString::from));
        match self.run(OFCTL, action, argv) {
            Ok(out) => Ok(out),
            Err(e @ OvsError::Failed { .. }) => {
                if self.bridge_exists(bridge)? {
                    Err(e)
                } else {
                    Err(OvsError::NoSuchBridge {
                        bridge: bridge.to_string(),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `ovs-ofctl --bundle add-flows <bridge> <file>` with one `add …` or `delete_strict …` per
    /// line: one OpenFlow bundle, so the switch applies all lines or none.
    fn flow_file(
        &self,
        action: &'static str,
        bridge: &str,
        lines: &[String],
    ) -> Result<(), OvsError> {
        let io_err = |e: std::io::Error| OvsError::Failed {
            tool: OFCTL,
            action,
            message: format!("could not write the flow file: {e}"),
        };
        let mut file = tempfile::NamedTempFile::new().map_err(io_err)?;
        for line in lines {
            writeln!(file, "{line}").map_err(io_err)?;
        }
        file.flush().map_err(io_err)?;
        self.ofctl(
            action,
            bridge,
            vec![
                "add-flows".into(),
                "--bundle".into(),
                file.path().display().to_string(),
            ],
        )?;
        Ok(())
    }

    /// The interface named `name` (type and external_ids), if any.
    fn interface(&self, name: &str) -> Result<Option<Row>, OvsError> {
        let tables = self.vsctl_json(
            "find interface",
            vec![
                "--columns=name,type,external_ids".into(),
                "find".into(),
                "interface".into(),
                format!("name={name}"),
            ],
        )?;
        Ok(tables
            .into_iter()
            .next()
            .and_then(|t| t.rows.into_iter().next()))
    }

    /// The bridge's ports and their interfaces, joined by the port's interface.
    fn ports_of(&self, bridge: &str) -> Result<Vec<(Row, Row)>, OvsError> {
        check_name("bridge name", bridge)?;
        let tables = self.vsctl_json(
            "list ports",
            vec![
                "--".into(),
                "--columns=name,ports".into(),
                "list".into(),
                "bridge".into(),
                bridge.into(),
                "--".into(),
                "--columns=_uuid,name,tag,interfaces".into(),
                "list".into(),
                "port".into(),
                "--".into(),
                "--columns=_uuid,name,type,options,external_ids,ofport".into(),
                "list".into(),
                "interface".into(),
            ],
        )?;
        let parse_err = |m: &str| OvsError::Parse {
            tool: VSCTL,
            action: "list ports",
            message: m.to_string(),
        };
        let [br, ports, ifaces]: [Table; 3] = tables
            .try_into()
            .map_err(|_| parse_err("expected three tables"))?;
        let br = br
            .rows
            .into_iter()
            .next()
            .ok_or_else(|| OvsError::NoSuchBridge {
                bridge: bridge.to_string(),
            })?;
        let port_ids = br.set("ports");
        let ifaces: HashMap<String, Row> = ifaces
            .rows
            .into_iter()
            .map(|r| (r.str("_uuid"), r))
            .collect();
        let mut out = Vec::new();
        for port in ports.rows {
            if !port_ids.contains(&port.str("_uuid")) || port.str("name") == bridge {
                continue;
            }
            let iface = port
                .set("interfaces")
                .into_iter()
                .find_map(|id| ifaces.get(&id).cloned())
                .ok_or_else(|| parse_err("a port without an interface"))?;
            out.push((port, iface));
        }
        out.sort_by_key(|(p, _)| p.str("name"));
        Ok(out)
    }

    /// Arguments that make the row's managed external_ids exactly `desired`: `set` pairs for
    /// the desired ones, `remove` commands for managed keys no longer wanted.
    fn external_ids_args(
        table: &str,
        name: &str,
        current: &BTreeMap<String, String>,
        desired: &BTreeMap<String, String>,
    ) -> (Vec<String>, Vec<String>) {
        let sets = desired
            .iter()
            .map(|(k, v)| format!("external_ids:{k}={v}"))
            .collect();
        let mut removes = Vec::new();
        for k in current.keys() {
            if managed_key(k) && !desired.contains_key(k) {
                removes.extend([
                    "--".into(),
                    "remove".into(),
                    table.into(),
                    name.into(),
                    "external_ids".into(),
                    k.clone(),
                ]);
            }
        }
        (sets, removes)
    }

    fn delete_port_checked(
        &self,
        bridge: &str,
        name: &str,
        want_tunnel: bool,
    ) -> Result<bool, OvsError> {
        check_name("bridge name", bridge)?;
        check_name("port name", name)?;
        if !self.bridge_exists(bridge)? {
            return Err(OvsError::NoSuchBridge {
                bridge: bridge.to_string(),
            });
        }
        let Some(iface) = self.interface(name)? else {
            return Ok(false);
        };
        let is_tunnel = iface.str("type") == "vxlan";
        if want_tunnel && !is_tunnel {
            return Err(OvsError::Conflict {
                message: format!("port {name} is not a VXLAN tunnel; refusing to delete it"),
            });
        }
        self.vsctl(
            "del-port",
            vec!["del-port".into(), bridge.into(), name.into()],
        )?;
        Ok(true)
    }
}

/// Maps ovs-vsctl's messages to the typed errors.
fn classify(e: OvsError) -> OvsError {
    match e {
        OvsError::Failed {
            tool: VSCTL,
            ref message,
            ..
        } => {
            if let Some(rest) = message.split("no bridge named ").nth(1).or_else(|| {
                message
                    .split("no row \"")
                    .nth(1)
                    .filter(|r| r.contains("table Bridge"))
            }) {
                let bridge = rest
                    .split(|c: char| c == '"' || c.is_whitespace())
                    .next()
                    .unwrap_or_default();
                return OvsError::NoSuchBridge {
                    bridge: bridge.to_string(),
                };
            }
            if message.contains("is actually attached to bridge")
                || message.contains("does not have a port")
                || message.contains("because a port named")
            {
                return OvsError::Conflict {
                    message: message.trim_start_matches("ovs-vsctl: ").to_string(),
                };
            }
            e
        }
        e => e,
    }
}

impl VSwitch for OvsVsctl {
    fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), OvsError> {
        check_bridge(spec)?;
        let current = self
            .vsctl_json(
                "find bridge",
                vec![
                    "--columns=external_ids".into(),
                    "find".into(),
                    "bridge".into(),
                    format!("name={}", spec.name),
                ],
            )?
            .into_iter()
            .next()
            .and_then(|t| t.rows.into_iter().next())
            .map(|r| r.map("external_ids"))
            .unwrap_or_default();
        let (sets, removes) =
            Self::external_ids_args("bridge", &spec.name, &current, &spec.external_ids);
        let mut args: Vec<String> = vec![
            "--".into(),
            "--may-exist".into(),
            "add-br".into(),
            spec.name.clone(),
            "--".into(),
            "set".into(),
            "bridge".into(),
            spec.name.clone(),
            format!("datapath_type={}", self.config.datapath_type),
            format!("fail_mode={}", spec.fail_mode.as_str()),
        ];
        args.extend(sets);
        args.extend(removes);
        self.vsctl("add-br", args)?;
        Ok(())
    }

    fn delete_bridge(&self, name: &str) -> Result<bool, OvsError> {
        check_name("bridge name", name)?;
        if !self.bridge_exists(name)? {
            return Ok(false);
        }
        self.vsctl(
            "del-br",
            vec!["--if-exists".into(), "del-br".into(), name.into()],
        )?;
        Ok(true)
    }

    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, OvsError> {
        let tables = self.vsctl_json(
            "list bridges",
            vec![
                "--columns=name,datapath_type,fail_mode,external_ids".into(),
                "list".into(),
                "bridge".into(),
            ],
        )?;
        let mut out: Vec<BridgeInfo> = tables
            .into_iter()
            .flat_map(|t| t.rows)
            .map(|r| BridgeInfo {
                name: r.str("name"),
                datapath_type: r.str("datapath_type"),
                fail_mode: match r.set("fail_mode").first().map(String::as_str) {
                    Some("secure") => Some(FailMode::Secure),
                    Some("standalone") => Some(FailMode::Standalone),
                    _ => None,
                },
                external_ids: r.map("external_ids"),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn ensure_port(&self, bridge: &str, spec: &PortSpec) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        check_port(spec)?;
        let current = self.interface(&spec.name)?;
        if current.as_ref().is_some_and(|r| r.str("type") == "vxlan") {
            return Err(OvsError::Conflict {
                message: format!("port {} is a VXLAN tunnel, not a plain port", spec.name),
            });
        }
        let current_ids = current.map(|r| r.map("external_ids")).unwrap_or_default();
        let (sets, removes) =
            Self::external_ids_args("interface", &spec.name, &current_ids, &spec.external_ids);
        let mut args: Vec<String> = vec![
            "--".into(),
            "--may-exist".into(),
            "add-port".into(),
            bridge.into(),
            spec.name.clone(),
            "--".into(),
            "set".into(),
            "interface".into(),
            spec.name.clone(),
            format!("type=\"{}\"", spec.kind.ovs_type()),
        ];
        args.extend(sets);
        args.extend(removes);
        match spec.tag {
            Some(tag) => args.extend([
                "--".into(),
                "set".into(),
                "port".into(),
                spec.name.clone(),
                format!("tag={}", tag.get()),
            ]),
            None => args.extend([
                "--".into(),
                "clear".into(),
                "port".into(),
                spec.name.clone(),
                "tag".into(),
            ]),
        }
        match self.vsctl("add-port", args) {
            Ok(_) => Ok(()),
            // A system port whose device does not exist (yet) is recorded anyway: libvirt
            // creates the tap later, and OVS picks it up then.
            Err(OvsError::Failed { message, .. })
                if spec.kind == super::ovs::PortKind::System
                    && message.contains("could not open network device") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn delete_port(&self, bridge: &str, name: &str) -> Result<bool, OvsError> {
        self.delete_port_checked(bridge, name, false)
    }

    fn list_ports(&self, bridge: &str) -> Result<Vec<PortInfo>, OvsError> {
        let mut out = Vec::new();
        for (port, iface) in self.ports_of(bridge)? {
            let ovs_type = iface.str("type");
            if ovs_type == "vxlan" {
                continue;
            }
            out.push(PortInfo {
                name: port.str("name"),
                ovs_type,
                tag: port
                    .int("tag")
                    .and_then(|t| u16::try_from(t).ok())
                    .and_then(|t| VlanTag::new(t).ok()),
                external_ids: iface.map("external_ids"),
                ofport: iface.ofport(),
            });
        }
        Ok(out)
    }

    fn ensure_tunnel(&self, bridge: &str, spec: &TunnelSpec) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        check_tunnel(spec)?;
        let current = self.interface(&spec.name)?;
        if current.as_ref().is_some_and(|r| r.str("type") != "vxlan") {
            return Err(OvsError::Conflict {
                message: format!("port {} exists and is not a VXLAN tunnel", spec.name),
            });
        }
        let current_ids = current.map(|r| r.map("external_ids")).unwrap_or_default();
        let (sets, removes) =
            Self::external_ids_args("interface", &spec.name, &current_ids, &spec.external_ids);
        // The options map is replaced whole, so a dropped local_ip goes too.
        let mut options = format!(
            "options={{remote_ip=\"{}\",key=\"{}\"",
            spec.remote_ip, spec.key
        );
        if let Some(local) = spec.local_ip {
            options += &format!(",local_ip=\"{local}\"");
        }
        options.push('}');
        let mut args: Vec<String> = vec![
            "--".into(),
            "--may-exist".into(),
            "add-port".into(),
            bridge.into(),
            spec.name.clone(),
            "--".into(),
            "set".into(),
            "interface".into(),
            spec.name.clone(),
            "type=vxlan".into(),
            options,
        ];
        args.extend(sets);
        args.extend(removes);
        self.vsctl("add-port", args)?;
        Ok(())
    }

    fn delete_tunnel(&self, bridge: &str, name: &str) -> Result<bool, OvsError> {
        self.delete_port_checked(bridge, name, true)
    }

    fn list_tunnels(&self, bridge: &str) -> Result<Vec<TunnelInfo>, OvsError> {
        let mut out = Vec::new();
        for (port, iface) in self.ports_of(bridge)? {
            if iface.str("type") != "vxlan" {
                continue;
            }
            let name = port.str("name");
            let options = iface.map("options");
            let parse_err = |what: &str| OvsError::Parse {
                tool: VSCTL,
                action: "list tunnels",
                message: format!("tunnel {name}: {what}"),
            };
            let remote_ip = options
                .get("remote_ip")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| parse_err("no usable options:remote_ip"))?;
            let local_ip = match options.get("local_ip") {
                Some(v) => Some(v.parse().map_err(|_| parse_err("bad options:local_ip"))?),
                None => None,
            };
            let key = match options.get("key").map(String::as_str) {
                Some("flow") => TunnelKey::Flow,
                Some(v) => TunnelKey::Vni(
                    v.parse::<u32>()
                        .ok()
                        .and_then(|v| Vni::new(v).ok())
                        .ok_or_else(|| parse_err("bad options:key"))?,
                ),
                // OVS's default key is 0: not one of ours, report it as such.
                None => return Err(parse_err("no options:key")),
            };
            out.push(TunnelInfo {
                spec: TunnelSpec {
                    name: name.clone(),
                    remote_ip,
                    local_ip,
                    key,
                    external_ids: iface.map("external_ids"),
                },
                ofport: iface.ofport(),
            });
        }
        Ok(out)
    }

    fn add_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        for f in flows {
            check_flow(f)?;
        }
        if flows.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = flows
            .iter()
            .map(|f| format!("add {}", f.to_add()))
            .collect();
        self.flow_file("add-flows", bridge, &lines)
    }

    fn delete_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        for f in flows {
            check_flow(f)?;
        }
        if flows.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = flows
            .iter()
            .map(|f| format!("delete_strict {}", f.to_strict_delete()))
            .collect();
        self.flow_file("del-flows", bridge, &lines)
    }

    /// One bundle: the deletions and additions apply together or not at all, so a flow that
    /// changes identity is never missing in between.
    fn sync_flows(
        &self,
        bridge: &str,
        cookies: CookieMatch,
        desired: &[Flow],
    ) -> Result<FlowSync, OvsError> {
        check_desired_flows(cookies, desired)?;
        let actual = self.list_flows(bridge, cookies)?;
        let sync = plan_flow_sync(&actual, desired);
        if sync.is_noop() {
            return Ok(sync);
        }
        let lines: Vec<String> = sync
            .deleted
            .iter()
            .map(|f| format!("delete_strict {}", f.to_strict_delete()))
            .chain(sync.added.iter().map(|f| format!("add {}", f.to_add())))
            .collect();
        self.flow_file("sync-flows", bridge, &lines)?;
        Ok(sync)
    }

    fn delete_flows_by_cookie(
        &self,
        bridge: &str,
        cookies: CookieMatch,
    ) -> Result<usize, OvsError> {
        let n = self.list_flows(bridge, cookies)?.len();
        if n > 0 {
            self.ofctl(
                "del-flows",
                bridge,
                vec!["del-flows".into(), cookies.to_ofctl()],
            )?;
        }
        Ok(n)
    }

    fn list_flows(&self, bridge: &str, cookies: CookieMatch) -> Result<Vec<Flow>, OvsError> {
        let out = self.ofctl(
            "dump-flows",
            bridge,
            vec![
                "dump-flows".into(),
                "--no-stats".into(),
                // Port numbers, not names, wherever ovs-ofctl's output goes.
                "--no-names".into(),
                cookies.to_ofctl(),
            ],
        )?;
        parse_dump_flows(&String::from_utf8_lossy(&out)).map_err(|message| OvsError::Parse {
            tool: OFCTL,
            action: "dump-flows",
            message,
        })
    }
}

/// One command's output of `ovs-vsctl --format=json`.
#[derive(Debug)]
struct Table {
    rows: Vec<Row>,
}

/// One row: column name to OVSDB JSON value.
#[derive(Debug, Clone)]
struct Row(HashMap<String, Value>);

impl Row {
    /// A string or uuid atom (empty when absent).
    fn str(&self, col: &str) -> String {
        match self.0.get(col) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 2 && a[0] == "uuid" => {
                a[1].as_str().unwrap_or_default().to_string()
            }
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    /// An integer atom or a one-element set of one; `None` for an empty set.
    fn int(&self, col: &str) -> Option<i64> {
        match self.0.get(col) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::Array(a)) if a.len() == 2 && a[0] == "set" => a[1]
                .as_array()
                .and_then(|s| s.first())
                .and_then(Value::as_i64),
            _ => None,
        }
    }

    fn ofport(&self) -> Option<u32> {
        self.int("ofport").and_then(|p| u32::try_from(p).ok())
    }

    /// A set (or a single atom) as strings; uuids as their text.
    fn set(&self, col: &str) -> Vec<String> {
        let atom = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) if a.len() == 2 && a[0] == "uuid" => a[1].as_str().map(String::from),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match self.0.get(col) {
            Some(Value::Array(a)) if a.len() == 2 && a[0] == "set" => a[1]
                .as_array()
                .map(|s| s.iter().filter_map(atom).collect())
                .unwrap_or_default(),
            Some(v) => atom(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    fn map(&self, col: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(Value::Array(a)) = self.0.get(col) {
            if a.len() == 2 && a[0] == "map" {
                for pair in a[1].as_array().into_iter().flatten() {
                    if let (Some(k), Some(v)) = (pair.get(0).and_then(Value::as_str), pair.get(1)) {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        out.insert(k.to_string(), v);
                    }
                }
            }
        }
        out
    }
}

/// The JSON documents `ovs-vsctl --format=json` prints, one per command that outputs a table.
fn parse_tables(out: &[u8]) -> Result<Vec<Table>, String> {
    let mut tables = Vec::new();
    for doc in serde_json::Deserializer::from_slice(out).into_iter::<Value>() {
        let doc = doc.map_err(|e| e.to_string())?;
        let headings: Vec<String> = doc
            .get("headings")
            .and_then(Value::as_array)
            .ok_or("no headings")?
            .iter()
            .map(|h| h.as_str().unwrap_or_default().to_string())
            .collect();
        let rows = doc
            .get("data")
            .and_then(Value::as_array)
            .ok_or("no data")?
            .iter()
            .map(|r| {
                let cells = r.as_array().ok_or("a row is not an array")?;
                Ok(Row(headings
                    .iter()
                    .cloned()
                    .zip(cells.iter().cloned())
                    .collect()))
            })
            .collect::<Result<Vec<Row>, &str>>()?;
        tables.push(Table { rows });
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsctl_json_tables_decode_atoms_sets_maps_and_uuids() {
        let out = br#"{"data":[["fxa",["set",[["uuid","6a08"],["uuid","9ac7"]]]]],"headings":["name","ports"]}
{"data":[[["uuid","6a08"],"q1",5,["uuid","6424"]],[["uuid","9ac7"],"fxa",["set",[]],["uuid","edcd"]]],"headings":["_uuid","name","tag","interfaces"]}
{"data":[[["uuid","6424"],"vx1","vxlan",["map",[["key","flow"],["remote_ip","192.0.2.1"]]],["map",[]],-1]],"headings":["_uuid","name","type","options","external_ids","ofport"]}
"#;
        let t = parse_tables(out).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].rows[0].set("ports"), vec!["6a08", "9ac7"]);
        assert_eq!(t[1].rows[0].int("tag"), Some(5));
        assert_eq!(t[1].rows[1].int("tag"), None);
        assert_eq!(t[1].rows[0].str("_uuid"), "6a08");
        let iface = &t[2].rows[0];
        assert_eq!(iface.map("options")["remote_ip"], "192.0.2.1");
        assert!(iface.map("external_ids").is_empty());
        assert_eq!(iface.ofport(), None, "ofport -1: no device");
        assert!(parse_tables(b"{\"data\":[]}").is_err());
    }

    #[test]
    fn unmanaged_keys_are_never_removed() {
        let current = BTreeMap::from([
            ("vm-uuid".to_string(), "x".to_string()),
            ("iface-id".to_string(), "old".to_string()),
            ("flotilla-net".to_string(), "a".to_string()),
        ]);
        let desired = BTreeMap::from([("iface-id".to_string(), "new".to_string())]);
        let (sets, removes) = OvsVsctl::external_ids_args("interface", "p", &current, &desired);
        assert_eq!(sets, vec!["external_ids:iface-id=new"]);
        assert_eq!(
            removes,
            vec![
                "--",
                "remove",
                "interface",
                "p",
                "external_ids",
                "flotilla-net"
            ]
        );
    }
}

//! The router driver: [`RouterDriver`] observes the host's router namespaces and applies one
//! [`Step`] at a time. [`IpRouterDriver`] does it with `ip`, `nft`, `sysctl` and `arping`;
//! [`super::router_fake::FakeRouterDriver`] in memory; [`super::conformance_router`] holds both
//! to one contract. [`RouterReconciler`] is the loop the agent calls every reconcile round.
//!
//! # Contract (checked by the conformance suite)
//! - [`RouterDriver::observe`] reports only what the agent can use: namespaces of ours that are
//!   mounted in the agent's mount namespace (a file in `/run/netns` that is not — a stale one,
//!   or another mount namespace's, as when several test hosts share `/run` — is left alone,
//!   and adding a namespace of that name fails with [`RouterError::ForeignNamespaceFile`]).
//! - Adds and sets are idempotent (`ip addr replace`, `ip route replace`); deleting something
//!   absent, or a veth whose name is taken, is [`RouterError::Failed`]. Deleting a device also
//!   deletes its veth peer; deleting a device's last address drops its routes (as the kernel
//!   does).
//! - Names, keys and values are checked before any command runs ([`RouterError::Invalid`]); every
//!   command has an argv (never a shell) and a deadline.
//! - Works when the agent itself runs in a network namespace with a private mount namespace:
//!   `ip netns add` then mounts in that mount namespace's `/run/netns`.
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::router::{
    is_router_namespace, peer_short, plan, Announcements, NamespacePlan, ObservedHost,
    ObservedNamespace, RouteSpec, RouterSpec, Step, NFT_TABLE, SYSCTLS,
};

/// Where `ip netns` keeps its namespaces (fixed in iproute2).
pub const NETNS_DIR: &str = "/run/netns";

/// One error enum for the router driver.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error(
        "{} could not be run (deploy/install-deps.sh installs iproute2, nftables, procps, \
         iputils-arping and ethtool)", binary.display()
    )]
    Missing {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("could not understand the output of `{command}`: {message}")]
    Parse { command: String, message: String },
    #[error(
        "{} exists but is not a network namespace mounted in the agent's mount namespace (a \
         stale file, or another mount namespace's router: give each agent its own /run/netns)",
        path.display()
    )]
    ForeignNamespaceFile { path: PathBuf },
    #[error("could not read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The host's router namespaces. Every method blocks; call through `spawn_blocking`.
pub trait RouterDriver: Send + Sync {
    /// Our namespaces (with their devices but `lo`, routes, sysctls, nft table) and the
    /// `tr-`/`tg-` devices of the agent's namespace.
    fn observe(&self) -> Result<ObservedHost, RouterError>;

    /// Carries out one step (see the module doc for the contract).
    fn apply(&self, step: &Step) -> Result<(), RouterError>;
}

/// A step that failed; the rest of its namespace's plan was skipped.
#[derive(Debug)]
pub struct StepFailure {
    pub namespace: String,
    pub step: Step,
    pub error: RouterError,
}

/// What one [`RouterReconciler::converge`] round did.
#[derive(Debug, Default)]
pub struct ConvergeReport {
    /// Steps that succeeded, in order.
    pub executed: Vec<Step>,
    pub failures: Vec<StepFailure>,
}

impl ConvergeReport {
    /// How many executed steps changed the host (announcements do not).
    pub fn mutations(&self) -> usize {
        self.executed.iter().filter(|s| s.is_mutation()).count()
    }
}

/// The convergence loop: observe, [`plan`], apply namespace by namespace, announce. Holds only
/// the announcements still to repeat; everything else is read back from the host each round.
#[derive(Debug, Default)]
pub struct RouterReconciler {
    announcements: Announcements,
}

impl RouterReconciler {
    pub fn new() -> Self {
        RouterReconciler::default()
    }

    /// Makes the host's router namespaces exactly `desired` (from
    /// [`super::router::routers_from_desired`]). A failed observation fails the round; a failed
    /// step skips the rest of its namespace and is reported, the other namespaces go on.
    pub fn converge(
        &mut self,
        driver: &dyn RouterDriver,
        desired: &[RouterSpec],
    ) -> Result<ConvergeReport, RouterError> {
        let observed = driver.observe()?;
        let plans = plan(desired, &observed);
        let mut report = ConvergeReport::default();
        execute(driver, &plans, &mut report);
        self.announcements.record(&report.executed);
        let repeats = self.announcements.due(desired, &plans);
        let repeats: Vec<NamespacePlan> = repeats
            .into_iter()
            .map(|s| NamespacePlan {
                namespace: step_namespace(&s),
                steps: vec![s],
            })
            .collect();
        execute(driver, &repeats, &mut report);
        Ok(report)
    }

    /// Announces the floating IPs of `spec` again in the next rounds (call it after plugging
    /// the external peer into its bridge, if that happened after the router was made).
    pub fn announce_again(&mut self, spec: &RouterSpec) {
        self.announcements.request(spec);
    }
}

fn step_namespace(step: &Step) -> String {
    match step {
        Step::Announce { namespace, .. } => namespace.clone(),
        _ => String::new(),
    }
}

fn execute(driver: &dyn RouterDriver, plans: &[NamespacePlan], report: &mut ConvergeReport) {
    for p in plans {
        for step in &p.steps {
            match driver.apply(step) {
                Ok(()) => report.executed.push(step.clone()),
                Err(error) => {
                    tracing::warn!(namespace = %p.namespace, ?step, %error, "router step failed");
                    report.failures.push(StepFailure {
                        namespace: p.namespace.clone(),
                        step: step.clone(),
                        error,
                    });
                    break;
                }
            }
        }
    }
}

fn invalid(what: &'static str, value: impl ToString, rule: &'static str) -> RouterError {
    RouterError::Invalid {
        what,
        value: value.to_string(),
        rule,
    }
}

fn check_namespace(name: &str) -> Result<(), RouterError> {
    if is_router_namespace(name) {
        Ok(())
    } else {
        Err(invalid(
            "router namespace",
            name,
            "must be flr- and 8 lowercase hex digits",
        ))
    }
}

fn check_dev(name: &str) -> Result<(), RouterError> {
    crate::driver::ovs::check_name("device name", name).map_err(|_| {
        invalid(
            "device name",
            name,
            "must be 1 to 15 of A-Z a-z 0-9 _ . - not starting with - or .",
        )
    })
}

fn check_peer(name: &str) -> Result<(), RouterError> {
    match peer_short(name) {
        Some(_) => Ok(()),
        None => Err(invalid(
            "router peer",
            name,
            "must be tr- or tg- and 8 lowercase hex digits",
        )),
    }
}

/// Checks every name, key and value of a step (both drivers call it before anything else).
pub fn check_step(step: &Step) -> Result<(), RouterError> {
    match step {
        Step::AddNamespace { namespace } | Step::DeleteNamespace { namespace } => {
            check_namespace(namespace)
        }
        Step::DeletePeer { name } | Step::SetPeerUp { name } => check_peer(name),
        Step::AddVeth { namespace, veth } => {
            check_namespace(namespace)?;
            check_dev(&veth.inside)?;
            check_peer(&veth.peer)
        }
        Step::DeleteLink { namespace, dev }
        | Step::SetMac { namespace, dev, .. }
        | Step::SetUp { namespace, dev }
        | Step::AddAddress { namespace, dev, .. }
        | Step::DeleteAddress { namespace, dev, .. }
        | Step::Announce { namespace, dev, .. } => {
            check_namespace(namespace)?;
            check_dev(dev)
        }
        Step::AddRoute { namespace, route } | Step::DeleteRoute { namespace, route } => {
            check_namespace(namespace)?;
            check_dev(&route.dev)
        }
        Step::SetSysctl {
            namespace,
            key,
            value,
        } => {
            check_namespace(namespace)?;
            let key_ok = !key.is_empty()
                && !key.starts_with('-')
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !key_ok {
                return Err(invalid("sysctl key", key, "must be of A-Z a-z 0-9 . _ -"));
            }
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("sysctl value", value, "must be a number"));
            }
            Ok(())
        }
        Step::LoadNft { namespace, ruleset } => {
            check_namespace(namespace)?;
            if ruleset.trim().is_empty() {
                return Err(invalid("nft ruleset", "", "must not be empty"));
            }
            Ok(())
        }
    }
}

/// Which tools the real driver runs and how long one may take.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub ip: PathBuf,
    pub nft: PathBuf,
    pub sysctl: PathBuf,
    pub arping: PathBuf,
    pub ethtool: PathBuf,
    pub timeout: Duration,
}

fn locate(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| PathBuf::from(name))
}

impl Default for RouterConfig {
    /// The tools found on `PATH` (or in /usr/sbin, /usr/bin, /sbin, /bin), 10 s per command.
    fn default() -> Self {
        RouterConfig {
            ip: locate("ip"),
            nft: locate("nft"),
            sysctl: locate("sysctl"),
            arping: locate("arping"),
            ethtool: locate("ethtool"),
            timeout: Duration::from_secs(10),
        }
    }
}

/// How many commands the real driver ran, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandCounts {
    pub reads: u64,
    pub mutations: u64,
    pub announcements: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Mutation,
    Announcement,
}

/// [`RouterDriver`] with `ip`, `nft`, `sysctl` and `arping`. See the module doc.
#[derive(Debug)]
pub struct IpRouterDriver {
    config: RouterConfig,
    reads: AtomicU64,
    mutations: AtomicU64,
    announcements: AtomicU64,
}

impl IpRouterDriver {
    pub fn new(config: RouterConfig) -> Self {
        IpRouterDriver {
            config,
            reads: AtomicU64::new(0),
            mutations: AtomicU64::new(0),
            announcements: AtomicU64::new(0),
        }
    }

    /// Commands run so far (each `ip netns exec … tool` counts once).
    pub fn counts(&self) -> CommandCounts {
        CommandCounts {
            reads: self.reads.load(Ordering::Relaxed),
            mutations: self.mutations.load(Ordering::Relaxed),
            announcements: self.announcements.load(Ordering::Relaxed),
        }
    }

    fn run(&self, kind: Kind, binary: &Path, args: Vec<OsString>) -> Result<Vec<u8>, RouterError> {
        let counter = match kind {
            Kind::Read => &self.reads,
            Kind::Mutation => &self.mutations,
            Kind::Announcement => &self.announcements,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let command = std::iter::once(binary.as_os_str().to_string_lossy().into_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        run_command(binary, &args, self.config.timeout).map_err(|e| match e {
            RunError::Spawn(source) => RouterError::Missing {
                binary: binary.to_path_buf(),
                source,
            },
            RunError::Timeout => RouterError::Timeout {
                command,
                timeout: self.config.timeout,
            },
            RunError::Failed(message) => RouterError::Failed { command, message },
        })
    }

    /// `ip [-n ns] args…`
    fn ip(&self, kind: Kind, ns: Option<&str>, args: &[&str]) -> Result<Vec<u8>, RouterError> {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = ns {
            argv.extend(["-n".into(), ns.into()]);
        }
        argv.extend(args.iter().map(OsString::from));
        self.run(kind, &self.config.ip, argv)
    }

    /// `ip netns exec ns tool args…`
    fn exec(
        &self,
        kind: Kind,
        ns: &str,
        tool: &Path,
        args: &[&str],
    ) -> Result<Vec<u8>, RouterError> {
        let mut argv: Vec<OsString> = vec!["netns".into(), "exec".into(), ns.into(), tool.into()];
        argv.extend(args.iter().map(OsString::from));
        self.run(kind, &self.config.ip, argv)
    }

    fn json(&self, out: Vec<u8>, what: &str) -> Result<Value, RouterError> {
        serde_json::from_slice(&out).map_err(|e| RouterError::Parse {
            command: what.to_string(),
            message: e.to_string(),
        })
    }

    fn observe_namespace(&self, ns: &str) -> Result<ObservedNamespace, RouterError> {
        fn parse<T>(ns: &str, what: &str, r: Result<T, String>) -> Result<T, RouterError> {
            r.map_err(|message| RouterError::Parse {
                command: format!("{what} in {ns}"),
                message,
            })
        }
        let addrs = self.ip(Kind::Read, Some(ns), &["-d", "-j", "addr", "show"])?;
        let links = parse(
            ns,
            "ip addr show",
            parse_links(&self.json(addrs, "ip addr show")?),
        )?;
        let routes = self.ip(
            Kind::Read,
            Some(ns),
            &["-j", "route", "show", "table", "main"],
        )?;
        let routes = parse(
            ns,
            "ip route show",
            parse_routes(&self.json(routes, "ip route show")?),
        )?;
        let keys: Vec<&str> = SYSCTLS.iter().map(|(k, _)| *k).collect();
        let mut args = vec!["-n"];
        args.extend(&keys);
        let values = self.exec(Kind::Read, ns, &self.config.sysctl, &args)?;
        let values = String::from_utf8_lossy(&values);
        let sysctls = keys
            .iter()
            .zip(values.lines())
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let nft_args = ["-j", "list", "table", "ip", NFT_TABLE];
        let nft = match self.exec(Kind::Read, ns, &self.config.nft, &nft_args) {
            Ok(out) => Some(parse(
                ns,
                "nft list table",
                parse_nft(&self.json(out, "nft -j list table")?),
            )?),
            Err(RouterError::Failed { message, .. })
                if message.contains("No such file or directory") =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        Ok(ObservedNamespace {
            links: links.into_iter().filter(|(n, _)| n != "lo").collect(),
            routes,
            sysctls,
            nft,
        })
    }
}

/// Whether `path` is a network namespace mounted here (an nsfs file, as `/proc/self/ns/net`).
fn is_mounted_namespace(path: &Path) -> Result<bool, RouterError> {
    let nsfs = std::fs::metadata("/proc/self/ns/net").map_err(|source| RouterError::Io {
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    Ok(std::fs::metadata(path).is_ok_and(|m| m.dev() == nsfs.dev()))
}

impl RouterDriver for IpRouterDriver {
    fn observe(&self) -> Result<ObservedHost, RouterError> {
        let mut host = ObservedHost::default();
        let out = self.ip(Kind::Read, None, &["-d", "-j", "link", "show"])?;
        let links = parse_links(&self.json(out, "ip link show")?).map_err(|message| {
            RouterError::Parse {
                command: "ip -d -j link show".into(),
                message,
            }
        })?;
        host.peers = links
            .into_iter()
            .filter(|(n, _)| peer_short(n).is_some())
            .collect();
        let entries = match std::fs::read_dir(NETNS_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(host),
            Err(source) => {
                return Err(RouterError::Io {
                    path: NETNS_DIR.into(),
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| RouterError::Io {
                path: NETNS_DIR.into(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_router_namespace(&name) && is_mounted_namespace(&entry.path())? {
                let ns = self.observe_namespace(&name)?;
                host.namespaces.insert(name, ns);
            }
        }
        Ok(host)
    }

    fn apply(&self, step: &Step) -> Result<(), RouterError> {
        check_step(step)?;
        let m = Kind::Mutation;
        match step {
            Step::AddNamespace { namespace } => {
                let path = Path::new(NETNS_DIR).join(namespace);
                if is_mounted_namespace(&path)? {
                    return Ok(());
                }
                if path.exists() {
                    return Err(RouterError::ForeignNamespaceFile { path });
                }
                self.ip(m, None, &["netns", "add", namespace])?;
            }
            Step::DeleteNamespace { namespace } => {
                self.ip(m, None, &["netns", "delete", namespace])?;
            }
            Step::DeletePeer { name } => {
                self.ip(m, None, &["link", "delete", "dev", name])?;
            }
            Step::DeleteLink { namespace, dev } => {
                self.ip(m, Some(namespace), &["link", "delete", "dev", dev])?;
            }
            Step::AddVeth { namespace, veth } => {
                let mac = veth.mac.to_string();
                let args = [
                    "link",
                    "add",
                    "name",
                    &veth.peer,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &veth.inside,
                    "address",
                    &mac,
                    "netns",
                    namespace,
                ];
                self.ip(m, None, &args)?;
                self.ip(m, None, &["link", "set", "dev", &veth.peer, "up"])?;
                self.ip(
                    m,
                    Some(namespace),
                    &["link", "set", "dev", &veth.inside, "up"],
                )?;
                // Open vSwitch's userspace datapath reads the peer with a raw socket and does not
                // complete checksums the kernel left to the "hardware": TCP and UDP from the
                // router would reach guests (and the outside) with bad checksums.
                let ethtool = self.config.ethtool.clone();
                self.exec(m, namespace, &ethtool, &["-K", &veth.inside, "tx", "off"])?;
            }
            Step::SetMac {
                namespace,
                dev,
                mac,
            } => {
                let mac = mac.to_string();
                self.ip(
                    m,
                    Some(namespace),
                    &["link", "set", "dev", dev, "address", &mac],
                )?;
            }
            Step::SetUp { namespace, dev } => {
                self.ip(m, Some(namespace), &["link", "set", "dev", dev, "up"])?;
            }
            Step::SetPeerUp { name } => {
                self.ip(m, None, &["link", "set", "dev", name, "up"])?;
            }
            Step::AddAddress {
                namespace,
                dev,
                cidr,
            } => {
                let cidr = cidr.to_string();
                self.ip(m, Some(namespace), &["addr", "replace", &cidr, "dev", dev])?;
            }
            Step::DeleteAddress {
                namespace,
                dev,
                cidr,
            } => {
                let cidr = cidr.to_string();
                self.ip(m, Some(namespace), &["addr", "delete", &cidr, "dev", dev])?;
            }
            Step::AddRoute { namespace, route } => {
                let mut args = vec!["route", "replace"];
                let spec = route_args(route);
                args.extend(spec.iter().map(String::as_str));
                args.extend(["proto", "static"]);
                self.ip(m, Some(namespace), &args)?;
            }
            Step::DeleteRoute { namespace, route } => {
                let mut args = vec!["route", "delete"];
                let spec = route_args(route);
                args.extend(spec.iter().map(String::as_str));
                self.ip(m, Some(namespace), &args)?;
            }
            Step::SetSysctl {
                namespace,
                key,
                value,
            } => {
                let kv = format!("{key}={value}");
                self.exec(m, namespace, &self.config.sysctl, &["-q", "-w", &kv])?;
            }
            Step::LoadNft { namespace, ruleset } => {
                let mut file = tempfile::Builder::new()
                    .prefix("flotilla-nft-")
                    .tempfile()
                    .map_err(|source| RouterError::Io {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                io::Write::write_all(&mut file, ruleset.as_bytes()).map_err(|source| {
                    RouterError::Io {
                        path: file.path().to_path_buf(),
                        source,
                    }
                })?;
                let path = file.path().to_string_lossy().into_owned();
                self.exec(m, namespace, &self.config.nft, &["-f", &path])?;
            }
            Step::Announce {
                namespace,
                dev,
                address,
            } => {
                let addr = address.to_string();
                let args = ["-q", "-U", "-c", "1", "-I", dev, &addr];
                self.exec(Kind::Announcement, namespace, &self.config.arping, &args)?;
            }
        }
        Ok(())
    }
}

fn route_args(route: &RouteSpec) -> Vec<String> {
    let mut args = vec![match route.dst {
        Some(d) => d.to_string(),
        None => "default".to_string(),
    }];
    if let Some(v) = route.via {
        args.extend(["via".to_string(), v.to_string()]);
    }
    args.extend(["dev".to_string(), route.dev.clone()]);
    args
}

#[path = "router_listing.rs"]
mod listing;
pub use listing::{parse_links, parse_nft, parse_routes};
use listing::{run_command, RunError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_into_observations() {
        let links: Value = serde_json::from_str(
            r#"[{"ifname":"lo","flags":["LOOPBACK","UP"],"address":"00:00:00:00:00:00",
                 "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifname":"qg-1","flags":["BROADCAST","UP"],"address":"fa:16:3f:01:02:03",
                 "linkinfo":{"info_kind":"veth"},
                 "addr_info":[{"family":"inet","local":"10.92.0.10","prefixlen":32},
                              {"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#,
        )
        .unwrap();
        let links = parse_links(&links).unwrap();
        assert_eq!(links[1].0, "qg-1");
        assert_eq!(links[1].1.kind, "veth");
        assert!(links[1].1.up);
        assert_eq!(links[1].1.mac.unwrap().to_string(), "fa:16:3f:01:02:03");
        assert_eq!(links[1].1.addresses.len(), 1);
        let routes: Value = serde_json::from_str(
            r#"[{"dst":"default","gateway":"10.92.0.1","dev":"qg-1","protocol":"static"},
                {"dst":"10.92.0.0/24","dev":"qg-1","protocol":"static","scope":"link"},
                {"dst":"10.91.0.0/24","dev":"qr-1","protocol":"kernel","scope":"link"},
                {"type":"unreachable","dst":"10.1.0.0/16","protocol":"static"}]"#,
        )
        .unwrap();
        let routes = parse_routes(&routes).unwrap();
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().any(|r| r.dst.is_none() && r.via.is_some()));
        let nft: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},{"table":{"family":"ip","name":"flotilla"}},
              {"chain":{"name":"forward","type":"filter","hook":"forward","prio":0,"policy":"drop"}},
              {"rule":{"chain":"forward","comment":"fl:0123456789ab","expr":[]}},
              {"rule":{"chain":"forward","expr":[]}}]}"#,
        )
        .unwrap();
        let nft = parse_nft(&nft).unwrap();
        assert_eq!(nft["forward"].policy, "drop");
        assert_eq!(
            nft["forward"].rules,
            vec![Some("fl:0123456789ab".into()), None]
        );
    }

    #[test]
    fn bad_names_are_refused_before_any_command() {
        let driver = IpRouterDriver::new(RouterConfig {
            ip: "/nonexistent/ip".into(),
            ..RouterConfig::default()
        });
        for step in [
            Step::AddNamespace {
                namespace: "-flr".into(),
            },
            Step::DeletePeer {
                name: "eth0".into(),
            },
            Step::SetUp {
                namespace: "flr-0123abcd".into(),
                dev: "--help".into(),
            },
        ] {
            let err = driver.apply(&step).unwrap_err();
            assert!(matches!(err, RouterError::Invalid { .. }), "{err}");
        }
        assert_eq!(driver.counts(), CommandCounts::default());
    }
}

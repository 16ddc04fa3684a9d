//! Floating IPs by NAT in per-network router namespaces, as they should be (pure: values in,
//! values out; the commands live in [`super::router_linux`]).
//!
//! # Model (DVR-like: on the host where the server runs)
//! For each tenant network with a floating IP on this host, a network namespace
//! `flr-<8 hex of the network id>` ([`RouterSpec`]) holds:
//! - `qr-<8hex>`, a veth whose peer `tr-<8hex>` stays in the agent's namespace (plugged into the
//!   integration bridge by the OVS reconcile). It carries `gateway/prefix` of every IPv4 subnet
//!   of the network that has a gateway, and MAC `fa:16:3f:` + 3 bytes of sha256("gw:" + network
//!   id): the same on every host, so a guest's ARP entry for its gateway survives a migration.
//! - `qg-<8hex>`, a veth whose peer `tg-<8hex>` is plugged into the external network's bridge,
//!   MAC derived from "ext:" + network id, carrying each floating IP as /32, an on-link route to
//!   each external subnet in use and a default route via the external gateway (if any).
//! - `table ip flotilla` ([`render_nft`]): DNAT floating → fixed for what arrives on qg, SNAT
//!   fixed → floating for what leaves through qg, and a forward filter that passes only NATed
//!   traffic (a guest without a floating IP never leaks its private address outside).
//! - sysctls [`SYSCTLS`]: forwarding on; ARP answered only for the receiving interface's own
//!   addresses.
//!
//! # Convergence
//! [`plan`] compares the routers that should exist with what [`ObservedHost`] says exists and
//! returns [`NamespacePlan`]s of [`Step`]s, one per namespace (a failure stops only its own
//! namespace). Anything of ours that is missing or different is repaired, anything extra with
//! our prefix removed; an empty plan means nothing to do. Each floating IP (re)added is
//! announced with a gratuitous ARP, and again on the next [`ANNOUNCE_REPEATS`] rounds
//! ([`Announcements`]): the first announcement may go out before the external peer is plugged.
//!
//! The nft table is compared by rule identity: every rule carries `comment "fl:<hash of chain
//! and rule text>"`, so a missing, extra, reordered or foreign rule, or a changed chain, is seen
//! without depending on how an nft version prints rules.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use flotilla_proto::v1 as pb;
use sha2::{Digest, Sha256};

/// Every router namespace's name starts with this.
pub const NAMESPACE_PREFIX: &str = "flr-";
/// Internal veth (in the namespace) and its peer (in the agent's namespace).
pub const INTERNAL_PREFIX: &str = "qr-";
pub const INTERNAL_PEER_PREFIX: &str = "tr-";
/// External veth (in the namespace) and its peer (in the agent's namespace).
pub const EXTERNAL_PREFIX: &str = "qg-";
pub const EXTERNAL_PEER_PREFIX: &str = "tg-";
/// The nft table (family `ip`) of a router namespace.
pub const NFT_TABLE: &str = "flotilla";
/// Prefix of the comment identifying each of our nft rules.
pub const RULE_COMMENT_PREFIX: &str = "fl:";
/// Sysctls of every router namespace.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.arp_ignore", "1"),
];
/// Rounds after the first in which a newly added floating IP is announced again.
pub const ANNOUNCE_REPEATS: u8 = 2;

/// An IPv4 address with a prefix length (the address may have host bits set: `10.0.0.1/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Ipv4Cidr { addr, prefix })
    }

    pub fn host(addr: Ipv4Addr) -> Self {
        Ipv4Cidr { addr, prefix: 32 }
    }

    pub fn addr(self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The network itself (host bits cleared).
    pub fn network(self) -> Self {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR"))?;
        let prefix = p
            .parse()
            .ok()
            .and_then(|p| Ipv4Cidr::new(addr, p))
            .ok_or_else(|| format!("{s:?} has a bad prefix length"))?;
        Ok(prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub use crate::driver::ovs::Mac;

/// The first 8 hex digits of an id, lowercase (`None` when it has fewer).
pub fn short_id(id: &str) -> Option<String> {
    let s: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    (s.len() == 8).then_some(s)
}

/// `fa:16:3f:` + 3 bytes of sha256(`salt` + `id`): locally administered unicast.
pub fn derived_mac(salt: &str, id: &str) -> Mac {
    let d = Sha256::digest(format!("{salt}{id}").as_bytes());
    Mac([0xfa, 0x16, 0x3f, d[0], d[1], d[2]])
}

/// The gateway MAC of a network (the router's `qr-` side), the same on every host.
pub fn gateway_mac(network_id: &str) -> Mac {
    derived_mac("gw:", network_id)
}

/// The MAC of a network's router on the external network (its `qg-` side).
pub fn external_mac(network_id: &str) -> Mac {
    derived_mac("ext:", network_id)
}

/// One side of a router: a veth with one end in the namespace and its peer outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// In the router namespace (`qr-…`, `qg-…`).
    pub inside: String,
    /// In the agent's namespace (`tr-…`, `tg-…`), plugged by the caller.
    pub peer: String,
    pub mac: Mac,
    /// Addresses of `inside`, sorted.
    pub addresses: Vec<Ipv4Cidr>,
}

/// A route of the router namespace: `dst` (`None` = default) via `via` (or on-link) on `dev`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub dst: Option<Ipv4Cidr>,
    pub via: Option<Ipv4Addr>,
    pub dev: String,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dst {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        write!(f, " dev {}", self.dev)
    }
}

/// One floating IP: DNAT `floating_ip` → `fixed_ip`, SNAT back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatPair {
    pub floating_ip: Ipv4Addr,
    pub fixed_ip: Ipv4Addr,
    pub port_id: String,
}

/// A router namespace as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    /// The tenant network.
    pub network_id: String,
    /// `flr-<8hex>`.
    pub namespace: String,
    /// `qr-` in the namespace, peer `tr-` for the integration bridge (the network's local VLAN).
    pub internal: VethSpec,
    /// `qg-` in the namespace, peer `tg-` for the external network's bridge.
    pub external: VethSpec,
    /// The network whose bridge `tg-…` belongs on.
    pub external_network_id: String,
    /// Routes of the namespace, in the order they are added (on-link before default).
    pub routes: Vec<RouteSpec>,
    /// Sorted by floating IP.
    pub nat: Vec<NatPair>,
}

impl RouterSpec {
    /// The agent-side end of the internal veth (`tr-…`).
    pub fn internal_peer(&self) -> &str {
        &self.internal.peer
    }

    /// The agent-side end of the external veth (`tg-…`).
    pub fn external_peer(&self) -> &str {
        &self.external.peer
    }
}

/// Why a floating IP gets no NAT on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("floating IP {floating_ip} (port {port_id}) is not set up: {problem}")]
pub struct FloatingIpError {
    pub floating_ip: String,
    pub port_id: String,
    pub problem: String,
}

/// What [`routers_from_desired`] derived: routers for every floating IP that resolved, and one
/// error per floating IP that did not (they do not block the others).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DerivedRouters {
    /// Sorted by namespace.
    pub routers: Vec<RouterSpec>,
    pub errors: Vec<FloatingIpError>,
}

struct Builder<'a> {
    tenant: &'a pb::DesiredNetwork,
    external: &'a pb::DesiredNetwork,
    nat: Vec<NatPair>,
    /// Indexes into `external.subnets` of the subnets holding our floating IPs.
    ext_subnets: BTreeSet<usize>,
}

fn ipv4_subnets(net: &pb::DesiredNetwork) -> impl Iterator<Item = (usize, Ipv4Cidr, &pb::Subnet)> {
    net.subnets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.cidr.parse::<Ipv4Cidr>().ok().map(|c| (i, c.network(), s)))
}

fn gateway(cidr: Ipv4Cidr, subnet: &pb::Subnet) -> Option<Ipv4Addr> {
    subnet
        .gateway_ip
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|g| cidr.contains(*g))
}

/// The routers this host needs for `desired.floating_ips` (IPv4 only). A floating IP's port
/// must be on one of `desired.servers`, and both its port's network and its external network
/// must be in `desired.networks` with their subnets.
pub fn routers_from_desired(desired: &pb::DesiredState) -> DerivedRouters {
    let networks: BTreeMap<&str, &pb::DesiredNetwork> = desired
        .networks
        .iter()
        .map(|n| (n.network_id.as_str(), n))
        .collect();
    let port_network: BTreeMap<&str, &str> = desired
        .servers
        .iter()
        .flat_map(|s| &s.ports)
        .map(|p| (p.port_id.as_str(), p.network_id.as_str()))
        .collect();
    let mut errors = Vec::new();
    let mut builders: BTreeMap<&str, Builder<'_>> = BTreeMap::new();
    let mut floating_seen = BTreeSet::new();
    let mut fips: Vec<&pb::DesiredFloatingIp> = desired.floating_ips.iter().collect();
    fips.sort_by(|a, b| a.floating_ip_address.cmp(&b.floating_ip_address));
    for f in fips {
        let fail = |problem: String| FloatingIpError {
            floating_ip: f.floating_ip_address.clone(),
            port_id: f.port_id.clone(),
            problem,
        };
        let resolved = (|| {
            let floating: Ipv4Addr = f
                .floating_ip_address
                .parse()
                .map_err(|_| "the floating address is not IPv4".to_string())?;
            let fixed: Ipv4Addr = f
                .fixed_ip_address
                .parse()
                .map_err(|_| format!("fixed address {:?} is not IPv4", f.fixed_ip_address))?;
            let net_id = *port_network
                .get(f.port_id.as_str())
                .ok_or("its port is not on a server of this host")?;
            let tenant = *networks.get(net_id).ok_or_else(|| {
                format!("its port's network {net_id} is not in the desired state")
            })?;
            if !ipv4_subnets(tenant).any(|(_, c, s)| c.contains(fixed) && gateway(c, s).is_some()) {
                return Err(format!(
                    "no subnet of network {net_id} with a gateway contains fixed address {fixed}"
                ));
            }
            let external = *networks
                .get(f.floating_network_id.as_str())
                .ok_or_else(|| {
                    format!(
                        "external network {} is not in the desired state",
                        f.floating_network_id
                    )
                })?;
            let (ext_index, ext_cidr, ext_subnet) = ipv4_subnets(external)
                .find(|(_, c, _)| c.contains(floating))
                .ok_or_else(|| {
                    format!(
                        "no subnet of external network {} contains it",
                        external.network_id
                    )
                })?;
            if gateway(ext_cidr, ext_subnet) == Some(floating) || ext_cidr.addr() == floating {
                return Err(format!(
                    "it is an address of external subnet {ext_cidr} itself"
                ));
            }
            if !floating_seen.insert(floating) {
                return Err("it is listed twice".to_string());
            }
            Ok((net_id, tenant, external, ext_index, floating, fixed))
        })();
        let (net_id, tenant, external, ext_index, floating, fixed) = match resolved {
            Ok(r) => r,
            Err(problem) => {
                errors.push(fail(problem));
                continue;
            }
        };
        let b = builders.entry(net_id).or_insert_with(|| Builder {
            tenant,
            external,
            nat: Vec::new(),
            ext_subnets: BTreeSet::new(),
        });
        if b.external.network_id != external.network_id {
            errors.push(fail(format!(
                "network {net_id} already reaches external network {} on this host",
                b.external.network_id
            )));
        } else if b.nat.iter().any(|p| p.fixed_ip == fixed) {
            errors.push(fail(format!(
                "fixed address {fixed} already has a floating IP"
            )));
        } else {
            b.ext_subnets.insert(ext_index);
            b.nat.push(NatPair {
                floating_ip: floating,
                fixed_ip: fixed,
                port_id: f.port_id.clone(),
            });
        }
    }
    let mut routers: BTreeMap<String, RouterSpec> = BTreeMap::new();
    for (net_id, b) in builders {
        let Some(short) = short_id(net_id) else {
            for p in &b.nat {
                errors.push(FloatingIpError {
                    floating_ip: p.floating_ip.to_string(),
                    port_id: p.port_id.clone(),
                    problem: format!("network id {net_id:?} has fewer than 8 hex digits"),
                });
            }
            continue;
        };
        let namespace = format!("{NAMESPACE_PREFIX}{short}");
        if let Some(other) = routers.get(&namespace) {
            for p in &b.nat {
                errors.push(FloatingIpError {
                    floating_ip: p.floating_ip.to_string(),
                    port_id: p.port_id.clone(),
                    problem: format!(
                        "network {net_id} and network {} share router name {namespace}",
                        other.network_id
                    ),
                });
            }
            continue;
        }
        routers.insert(namespace.clone(), build(net_id, short, namespace, b));
    }
    DerivedRouters {
        routers: routers.into_values().collect(),
        errors,
    }
}

fn build(net_id: &str, short: String, namespace: String, mut b: Builder<'_>) -> RouterSpec {
    let qg = format!("{EXTERNAL_PREFIX}{short}");
    let mut internal_addrs: Vec<Ipv4Cidr> = ipv4_subnets(b.tenant)
        .filter_map(|(_, c, s)| gateway(c, s).and_then(|g| Ipv4Cidr::new(g, c.prefix())))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    internal_addrs.dedup();
    b.nat.sort();
    let mut routes = Vec::new();
    let mut default = None;
    for (i, cidr, subnet) in ipv4_subnets(b.external) {
        if b.ext_subnets.contains(&i) {
            routes.push(RouteSpec {
                dst: Some(cidr),
                via: None,
                dev: qg.clone(),
            });
            default = default.or(gateway(cidr, subnet));
        }
    }
    routes.dedup();
    if let Some(gw) = default {
        routes.push(RouteSpec {
            dst: None,
            via: Some(gw),
            dev: qg.clone(),
        });
    }
    RouterSpec {
        network_id: net_id.to_string(),
        namespace,
        internal: VethSpec {
            inside: format!("{INTERNAL_PREFIX}{short}"),
            peer: format!("{INTERNAL_PEER_PREFIX}{short}"),
            mac: gateway_mac(net_id),
            addresses: internal_addrs,
        },
        external: VethSpec {
            inside: qg,
            peer: format!("{EXTERNAL_PEER_PREFIX}{short}"),
            mac: external_mac(net_id),
            addresses: b
                .nat
                .iter()
                .map(|p| Ipv4Cidr::host(p.floating_ip))
                .collect(),
        },
        external_network_id: b.external.network_id.clone(),
        routes,
        nat: b.nat,
    }
}

/// A chain of our nft table as it should be (rule texts without their comments).
struct ChainDef {
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    priority: &'static str,
    policy: &'static str,
    rules: Vec<String>,
}

fn chains(spec: &RouterSpec) -> Vec<ChainDef> {
    let (qr, qg) = (&spec.internal.inside, &spec.external.inside);
    let mut pre = Vec::new();
    let mut post = Vec::new();
    let mut fwd = vec!["ct state established,related accept".to_string()];
    for p in &spec.nat {
        let (fip, fixed) = (p.floating_ip, p.fixed_ip);
        pre.push(format!("iifname \"{qg}\" ip daddr {fip} dnat to {fixed}"));
        post.push(format!("oifname \"{qg}\" ip saddr {fixed} snat to {fip}"));
        fwd.push(format!(
            "iifname \"{qg}\" oifname \"{qr}\" ip daddr {fixed} accept"
        ));
        fwd.push(format!(
            "iifname \"{qr}\" oifname \"{qg}\" ip saddr {fixed} accept"
        ));
    }
    vec![
        ChainDef {
            name: "prerouting",
            kind: "nat",
            hook: "prerouting",
            priority: "dstnat",
            policy: "accept",
            rules: pre,
        },
        ChainDef {
            name: "postrouting",
            kind: "nat",
            hook: "postrouting",
            priority: "srcnat",
            policy: "accept",
            rules: post,
        },
        ChainDef {
            name: "forward",
            kind: "filter",
            hook: "forward",
            priority: "filter",
            policy: "drop",
            rules: fwd,
        },
    ]
}

/// The comment naming a rule: `fl:` + 12 hex digits of sha256(chain + "\n" + rule).
pub fn rule_id(chain: &str, rule: &str) -> String {
    let d = Sha256::digest(format!("{chain}\n{rule}").as_bytes());
    format!("{RULE_COMMENT_PREFIX}{}", hex::encode(&d[..6]))
}

/// The router's nft table as an `nft -f` file that replaces it atomically (declare, delete,
/// define: one transaction).
pub fn render_nft(spec: &RouterSpec) -> String {
    let mut out = format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
    out += &format!("table ip {NFT_TABLE} {{\n");
    for c in chains(spec) {
        out += &format!(
            "\tchain {} {{\n\t\ttype {} hook {} priority {}; policy {};\n",
            c.name, c.kind, c.hook, c.priority, c.policy
        );
        for r in &c.rules {
            out += &format!("\t\t{r} comment \"{}\"\n", rule_id(c.name, r));
        }
        out += "\t}\n";
    }
    out += "}\n";
    out
}

/// A chain of our nft table as observed: its type, hook and policy, and its rules' ids in
/// order (`None` for a rule without our comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub kind: String,
    pub hook: String,
    pub policy: String,
    pub rules: Vec<Option<String>>,
}

/// Our nft table as observed, by chain name.
pub type NftState = BTreeMap<String, NftChain>;

/// What [`render_nft`]'s table looks like when listed.
pub fn expected_nft(spec: &RouterSpec) -> NftState {
    chains(spec)
        .into_iter()
        .map(|c| {
            let rules = c.rules.iter().map(|r| Some(rule_id(c.name, r))).collect();
            let chain = NftChain {
                kind: c.kind.to_string(),
                hook: c.hook.to_string(),
                policy: c.policy.to_string(),
                rules,
            };
            (c.name.to_string(), chain)
        })
        .collect()
}

#[path = "router_plan.rs"]
mod planner;
pub use planner::*;

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;

//! An in-memory [`RouterDriver`]: the same contract (checked by [`super::conformance_router`]),
//! plus [`FakeRouterDriver::fail_next`] to script failures, [`FakeRouterDriver::calls`] to see
//! what was applied, and [`FakeRouterDriver::add_foreign_namespace_file`] to play another mount
//! namespace's router sharing `/run/netns`.
//!
//! It keeps the kernel's rules the real driver meets: deleting a device deletes its veth peer
//! and its routes, deleting a device's last address drops its routes, a gateway must be on-link,
//! arping needs the address on the device. The nft table is read back from the ruleset text
//! (the form [`super::router::render_nft`] writes).
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;

use parking_lot::Mutex;

use super::router::{
    Ipv4Cidr, Mac, NftChain, NftState, ObservedHost, ObservedLink, ObservedNamespace, RouteSpec,
    Step, NFT_TABLE, RULE_COMMENT_PREFIX, SYSCTLS,
};
use super::router_linux::{check_step, RouterDriver, RouterError, NETNS_DIR};

#[derive(Debug, Clone)]
struct Link {
    mac: Mac,
    up: bool,
    addresses: BTreeSet<Ipv4Cidr>,
}

#[derive(Debug, Clone, Default)]
struct Namespace {
    links: BTreeMap<String, Link>,
    routes: BTreeSet<RouteSpec>,
    sysctls: BTreeMap<String, String>,
    nft: Option<NftState>,
}

#[derive(Debug, Default)]
struct State {
    namespaces: BTreeMap<String, Namespace>,
    /// Agent-side veth ends → (namespace, inside name).
    peers: BTreeMap<String, (Link, String, String)>,
    foreign: BTreeSet<String>,
    failures: HashMap<&'static str, VecDeque<RouterError>>,
    calls: Vec<Step>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct FakeRouterDriver {
    state: Mutex<State>,
}

/// The name of a step's operation, for [`FakeRouterDriver::fail_next`] (`observe` for
/// observation).
pub fn op_name(step: &Step) -> &'static str {
    match step {
        Step::AddNamespace { .. } => "add_namespace",
        Step::DeleteNamespace { .. } => "delete_namespace",
        Step::DeletePeer { .. } => "delete_peer",
        Step::DeleteLink { .. } => "delete_link",
        Step::AddVeth { .. } => "add_veth",
        Step::SetMac { .. } => "set_mac",
        Step::SetUp { .. } => "set_up",
        Step::SetPeerUp { .. } => "set_peer_up",
        Step::AddAddress { .. } => "add_address",
        Step::DeleteAddress { .. } => "delete_address",
        Step::AddRoute { .. } => "add_route",
        Step::DeleteRoute { .. } => "delete_route",
        Step::SetSysctl { .. } => "set_sysctl",
        Step::LoadNft { .. } => "load_nft",
        Step::Announce { .. } => "announce",
    }
}

fn failed(command: &str, message: &str) -> RouterError {
    RouterError::Failed {
        command: format!("fake {command}"),
        message: message.to_string(),
    }
}

fn mac_of(name: &str) -> Mac {
    let mut m = [0x02, 0, 0, 0, 0, 0];
    for (i, b) in name.bytes().enumerate() {
        m[1 + i % 5] ^= b;
    }
    Mac(m)
}

impl FakeRouterDriver {
    pub fn new() -> Self {
        FakeRouterDriver::default()
    }

    /// The next call of operation `op` ([`op_name`], or `observe`) fails with `error`.
    pub fn fail_next(&self, op: &'static str, error: RouterError) {
        self.state
            .lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// Every step applied successfully, in order.
    pub fn calls(&self) -> Vec<Step> {
        self.state.lock().calls.clone()
    }

    /// A file `/run/netns/<name>` that is not a namespace of the agent's mount namespace.
    pub fn add_foreign_namespace_file(&self, name: &str) {
        self.state.lock().foreign.insert(name.to_string());
    }

    fn scripted(&self, op: &'static str) -> Result<(), RouterError> {
        match self
            .state
            .lock()
            .failures
            .get_mut(op)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl State {
    fn ns(&mut self, name: &str) -> Result<&mut Namespace, RouterError> {
        self.namespaces.get_mut(name).ok_or_else(|| {
            failed(
                "ip -n",
                &format!("Cannot open network namespace \"{name}\""),
            )
        })
    }

    fn link(&mut self, ns: &str, dev: &str) -> Result<&mut Link, RouterError> {
        self.ns(ns)?
            .links
            .get_mut(dev)
            .ok_or_else(|| failed("ip link", &format!("Cannot find device \"{dev}\"")))
    }

    /// Deletes a device in a namespace with its peer and routes.
    fn delete_inside(&mut self, ns: &str, dev: &str) -> Result<(), RouterError> {
        let n = self.ns(ns)?;
        if n.links.remove(dev).is_none() {
            return Err(failed(
                "ip link delete",
                &format!("Cannot find device \"{dev}\""),
            ));
        }
        n.routes.retain(|r| r.dev != dev);
        self.peers
            .retain(|_, (_, pns, inside)| !(pns == ns && inside == dev));
        Ok(())
    }
}

fn parse_ruleset(text: &str, current: Option<NftState>) -> Result<Option<NftState>, RouterError> {
    let table = format!("table ip {NFT_TABLE}");
    let mut state = current;
    let mut chain: Option<String> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == table {
            state.get_or_insert_with(NftState::new);
        } else if line == format!("delete {table}") {
            state = None;
        } else if line == format!("{table} {{") {
            state.get_or_insert_with(NftState::new);
        } else if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            let s = state.get_or_insert_with(NftState::new);
            s.entry(name.to_string()).or_insert(NftChain {
                kind: String::new(),
                hook: String::new(),
                policy: String::new(),
                rules: Vec::new(),
            });
            chain = Some(name.to_string());
        } else if line == "}" {
            chain = None;
        } else {
            let (Some(s), Some(c)) = (state.as_mut(), chain.as_ref()) else {
                return Err(failed(
                    "nft -f",
                    &format!("Error: syntax error near {line:?}"),
                ));
            };
            let c = s.get_mut(c).expect("chain made above");
            if let Some(t) = line.strip_prefix("type ") {
                let words: Vec<&str> = t.split([' ', ';']).filter(|w| !w.is_empty()).collect();
                let after = |k: &str| {
                    let i = words.iter().position(|w| *w == k)?;
                    words.get(i + 1).map(|w| w.to_string())
                };
                c.kind = words.first().map(|w| w.to_string()).unwrap_or_default();
                c.hook = after("hook").unwrap_or_default();
                c.policy = after("policy").unwrap_or_else(|| "accept".into());
            } else {
                let id = line
                    .split_once("comment \"")
                    .map(|(_, c)| c.trim_end_matches('"').to_string())
                    .filter(|c| c.starts_with(RULE_COMMENT_PREFIX));
                c.rules.push(id);
            }
        }
    }
    Ok(state)
}

impl RouterDriver for FakeRouterDriver {
    fn observe(&self) -> Result<ObservedHost, RouterError> {
        self.scripted("observe")?;
        let st = self.state.lock();
        let mut host = ObservedHost::default();
        for (name, (l, _, _)) in &st.peers {
            host.peers.insert(
                name.clone(),
                ObservedLink {
                    kind: "veth".into(),
                    mac: Some(l.mac),
                    up: l.up,
                    addresses: l.addresses.clone(),
                },
            );
        }
        for (name, n) in &st.namespaces {
            let links = n
                .links
                .iter()
                .map(|(d, l)| {
                    let o = ObservedLink {
                        kind: "veth".into(),
                        mac: Some(l.mac),
                        up: l.up,
                        addresses: l.addresses.clone(),
                    };
                    (d.clone(), o)
                })
                .collect();
            host.namespaces.insert(
                name.clone(),
                ObservedNamespace {
                    links,
                    routes: n.routes.clone(),
                    sysctls: n.sysctls.clone(),
                    nft: n.nft.clone(),
                },
            );
        }
        Ok(host)
    }

    fn apply(&self, step: &Step) -> Result<(), RouterError> {
        check_step(step)?;
        self.scripted(op_name(step))?;
        let mut st = self.state.lock();
        match step {
            Step::AddNamespace { namespace } => {
                if st.foreign.contains(namespace) {
                    return Err(RouterError::ForeignNamespaceFile {
                        path: Path::new(NETNS_DIR).join(namespace),
                    });
                }
                st.namespaces
                    .entry(namespace.clone())
                    .or_insert_with(|| Namespace {
                        sysctls: SYSCTLS
                            .iter()
                            .map(|(k, _)| (k.to_string(), "0".into()))
                            .collect(),
                        ..Namespace::default()
                    });
            }
            Step::DeleteNamespace { namespace } => {
                if st.namespaces.remove(namespace).is_none() {
                    return Err(failed("ip netns delete", "No such file or directory"));
                }
                st.peers.retain(|_, (_, ns, _)| ns != namespace);
            }
            Step::DeletePeer { name } => {
                let Some((_, ns, inside)) = st.peers.remove(name) else {
                    return Err(failed(
                        "ip link delete",
                        &format!("Cannot find device \"{name}\""),
                    ));
                };
                if let Some(n) = st.namespaces.get_mut(&ns) {
                    n.links.remove(&inside);
                    n.routes.retain(|r| r.dev != inside);
                }
            }
            Step::DeleteLink { namespace, dev } => st.delete_inside(namespace, dev)?,
            Step::AddVeth { namespace, veth } => {
                let taken = st.peers.contains_key(&veth.peer)
                    || st.ns(namespace)?.links.contains_key(&veth.inside);
                if taken {
                    return Err(failed("ip link add", "RTNETLINK answers: File exists"));
                }
                let link = |mac| Link {
                    mac,
                    up: true,
                    addresses: BTreeSet::new(),
                };
                st.ns(namespace)?
                    .links
                    .insert(veth.inside.clone(), link(veth.mac));
                let peer = (
                    link(mac_of(&veth.peer)),
                    namespace.clone(),
                    veth.inside.clone(),
                );
                st.peers.insert(veth.peer.clone(), peer);
            }
            Step::SetMac {
                namespace,
                dev,
                mac,
            } => st.link(namespace, dev)?.mac = *mac,
            Step::SetUp { namespace, dev } => st.link(namespace, dev)?.up = true,
            Step::SetPeerUp { name } => {
                st.peers
                    .get_mut(name)
                    .ok_or_else(|| {
                        failed("ip link set", &format!("Cannot find device \"{name}\""))
                    })?
                    .0
                    .up = true;
            }
            Step::AddAddress {
                namespace,
                dev,
                cidr,
            } => {
                st.link(namespace, dev)?.addresses.insert(*cidr);
            }
            Step::DeleteAddress {
                namespace,
                dev,
                cidr,
            } => {
                let link = st.link(namespace, dev)?;
                if !link.addresses.remove(cidr) {
                    return Err(failed("ip addr delete", "Cannot assign requested address"));
                }
                if link.addresses.is_empty() {
                    st.ns(namespace)?.routes.retain(|r| &r.dev != dev);
                }
            }
            Step::AddRoute { namespace, route } => {
                st.link(namespace, &route.dev)?;
                let n = st.ns(namespace)?;
                if let Some(via) = route.via {
                    let by_route = n.routes.iter().any(|r| {
                        r.dev == route.dev
                            && r.via.is_none()
                            && r.dst.is_some_and(|d| d.contains(via))
                    });
                    let by_address = n.links[&route.dev]
                        .addresses
                        .iter()
                        .any(|a| a.prefix() < 32 && a.contains(via));
                    if !by_route && !by_address {
                        return Err(failed(
                            "ip route replace",
                            "Error: Nexthop has invalid gateway.",
                        ));
                    }
                }
                n.routes.retain(|r| r.dst != route.dst);
                n.routes.insert(route.clone());
            }
            Step::DeleteRoute { namespace, route } => {
                if !st.ns(namespace)?.routes.remove(route) {
                    return Err(failed(
                        "ip route delete",
                        "RTNETLINK answers: No such process",
                    ));
                }
            }
            Step::SetSysctl {
                namespace,
                key,
                value,
            } => {
                st.ns(namespace)?.sysctls.insert(key.clone(), value.clone());
            }
            Step::LoadNft { namespace, ruleset } => {
                let n = st.ns(namespace)?;
                n.nft = parse_ruleset(ruleset, n.nft.take())?;
            }
            Step::Announce {
                namespace,
                dev,
                address,
            } => {
                if !st
                    .link(namespace, dev)?
                    .addresses
                    .iter()
                    .any(|a| a.addr() == *address)
                {
                    return Err(failed("arping", "bind: Cannot assign requested address"));
                }
            }
        }
        st.calls.push(step.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conformance_router::{run_router_suite, RouterFixture};

    #[test]
    fn the_fake_passes_the_router_conformance_suite() {
        let driver = FakeRouterDriver::new();
        run_router_suite(&RouterFixture {
            driver: &driver,
            seed: 0x5eed,
        });
    }

    #[test]
    fn a_scripted_failure_stops_only_its_namespace() {
        use crate::net::router_linux::RouterReconciler;
        let driver = FakeRouterDriver::new();
        let routers = crate::net::conformance_router::two_routers(7);
        driver.fail_next("add_veth", failed("ip link add", "scripted"));
        let mut r = RouterReconciler::new();
        let report = r.converge(&driver, &routers).unwrap();
        assert_eq!(report.failures.len(), 1);
        let host = driver.observe().unwrap();
        assert_eq!(host.namespaces.len(), 2);
        let report = r.converge(&driver, &routers).unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(report.mutations() > 0);
        assert_eq!(r.converge(&driver, &routers).unwrap().mutations(), 0);
        driver.fail_next("observe", failed("ip link show", "scripted"));
        assert!(r.converge(&driver, &routers).is_err());
    }

    #[test]
    fn a_foreign_namespace_file_is_reported_not_taken_over() {
        let driver = FakeRouterDriver::new();
        let routers = crate::net::conformance_router::two_routers(9);
        driver.add_foreign_namespace_file(&routers[0].namespace);
        let report = crate::net::router_linux::RouterReconciler::new()
            .converge(&driver, &routers)
            .unwrap();
        assert_eq!(report.failures.len(), 1);
        let err = &report.failures[0].error;
        assert!(
            matches!(err, RouterError::ForeignNamespaceFile { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("its own /run/netns"));
    }
}

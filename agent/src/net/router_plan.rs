//! The planner of [`super`]: what is observed, the steps, the plan, the repeated
//! announcements (pure; re-exported by `router`).
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{
    expected_nft, render_nft, Ipv4Cidr, Mac, NftState, RouteSpec, RouterSpec, VethSpec,
    ANNOUNCE_REPEATS, EXTERNAL_PEER_PREFIX, INTERNAL_PEER_PREFIX, NAMESPACE_PREFIX, SYSCTLS,
};

/// A network device as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLink {
    /// `veth`, `bridge`, …; empty for a plain device (`lo`).
    pub kind: String,
    pub mac: Option<Mac>,
    /// Administratively up.
    pub up: bool,
    /// IPv4 addresses.
    pub addresses: BTreeSet<Ipv4Cidr>,
}

/// One router namespace as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedNamespace {
    /// Every device but `lo`.
    pub links: BTreeMap<String, ObservedLink>,
    /// Routes of the main table not made by the kernel for an address.
    pub routes: BTreeSet<RouteSpec>,
    /// The values of [`SYSCTLS`]' keys.
    pub sysctls: BTreeMap<String, String>,
    /// `None` when the table does not exist.
    pub nft: Option<NftState>,
}

/// What the host has of ours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedHost {
    /// Router namespaces (names with [`NAMESPACE_PREFIX`]) usable from here.
    pub namespaces: BTreeMap<String, ObservedNamespace>,
    /// Devices of the agent's namespace named `tr-…` or `tg-…`.
    pub peers: BTreeMap<String, ObservedLink>,
}

/// One change. Adds and sets are idempotent; deleting something absent is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddNamespace {
        namespace: String,
    },
    /// Deletes the namespace (delete its devices first: that also removes their peers at once).
    DeleteNamespace {
        namespace: String,
    },
    /// Deletes a `tr-`/`tg-` device of the agent's namespace.
    DeletePeer {
        name: String,
    },
    DeleteLink {
        namespace: String,
        dev: String,
    },
    /// Creates `inside` in the namespace with `mac` and `peer` in the agent's namespace, both up.
    AddVeth {
        namespace: String,
        veth: VethSpec,
    },
    SetMac {
        namespace: String,
        dev: String,
        mac: Mac,
    },
    SetUp {
        namespace: String,
        dev: String,
    },
    SetPeerUp {
        name: String,
    },
    AddAddress {
        namespace: String,
        dev: String,
        cidr: Ipv4Cidr,
    },
    DeleteAddress {
        namespace: String,
        dev: String,
        cidr: Ipv4Cidr,
    },
    AddRoute {
        namespace: String,
        route: RouteSpec,
    },
    DeleteRoute {
        namespace: String,
        route: RouteSpec,
    },
    SetSysctl {
        namespace: String,
        key: String,
        value: String,
    },
    /// Replaces the nft table with `ruleset` (an `nft -f` file from [`render_nft`]).
    LoadNft {
        namespace: String,
        ruleset: String,
    },
    /// Gratuitous ARP for `address` from `dev` (changes nothing on the host).
    Announce {
        namespace: String,
        dev: String,
        address: Ipv4Addr,
    },
}

impl Step {
    /// Whether the step changes the host (everything but [`Step::Announce`]).
    pub fn is_mutation(&self) -> bool {
        !matches!(self, Step::Announce { .. })
    }
}

/// The steps of one namespace, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    pub namespace: String,
    pub steps: Vec<Step>,
}

/// Whether `name` is a router namespace's name of ours.
pub fn is_router_namespace(name: &str) -> bool {
    name.strip_prefix(NAMESPACE_PREFIX).is_some_and(is_short)
}

/// Whether `name` is a `tr-`/`tg-` peer name of ours; its short id then.
pub fn peer_short(name: &str) -> Option<&str> {
    [INTERNAL_PEER_PREFIX, EXTERNAL_PEER_PREFIX]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .filter(|s| is_short(s))
}

fn is_short(s: &str) -> bool {
    s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The steps that turn `observed` into `desired` (empty when they agree). Namespaces to delete
/// come first, so their names and devices are free again.
pub fn plan(desired: &[RouterSpec], observed: &ObservedHost) -> Vec<NamespacePlan> {
    let wanted: BTreeSet<&str> = desired.iter().map(|r| r.namespace.as_str()).collect();
    let mut plans = Vec::new();
    for (name, ns) in &observed.namespaces {
        if !wanted.contains(name.as_str()) {
            let mut steps: Vec<Step> = ns
                .links
                .keys()
                .map(|dev| Step::DeleteLink {
                    namespace: name.clone(),
                    dev: dev.clone(),
                })
                .collect();
            steps.push(Step::DeleteNamespace {
                namespace: name.clone(),
            });
            plans.push(NamespacePlan {
                namespace: name.clone(),
                steps,
            });
        }
    }
    // Peers of no router we want (left by an interrupted setup, or their namespace's devices
    // just went): deleted with the namespace they name.
    let mut stray: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for name in observed.peers.keys() {
        let Some(short) = peer_short(name) else {
            continue;
        };
        let ns = format!("{NAMESPACE_PREFIX}{short}");
        let inside_ok = observed.namespaces.get(&ns).is_some_and(|o| {
            let inside = format!("q{}", &name[1..]);
            o.links.get(&inside).is_some_and(|l| l.kind == "veth")
        });
        if !wanted.contains(ns.as_str()) && !inside_ok {
            stray
                .entry(ns)
                .or_default()
                .push(Step::DeletePeer { name: name.clone() });
        }
    }
    for (namespace, steps) in stray {
        match plans.iter_mut().find(|p| p.namespace == namespace) {
            Some(p) => p.steps.extend(steps),
            None => plans.push(NamespacePlan { namespace, steps }),
        }
    }
    for spec in desired {
        let steps = plan_router(spec, observed);
        if !steps.is_empty() {
            plans.push(NamespacePlan {
                namespace: spec.namespace.clone(),
                steps,
            });
        }
    }
    plans
}

fn plan_router(spec: &RouterSpec, observed: &ObservedHost) -> Vec<Step> {
    let ns_name = &spec.namespace;
    let empty = ObservedNamespace::default();
    let mut steps = Vec::new();
    let ns = match observed.namespaces.get(ns_name) {
        Some(ns) => ns,
        None => {
            steps.push(Step::AddNamespace {
                namespace: ns_name.clone(),
            });
            &empty
        }
    };
    let namespace = || ns_name.clone();
    for (key, value) in SYSCTLS {
        if ns.sysctls.get(*key).map(String::as_str) != Some(*value) {
            steps.push(Step::SetSysctl {
                namespace: namespace(),
                key: key.to_string(),
                value: value.to_string(),
            });
        }
    }
    // Devices that are not ours go first (a name may be taken by something else).
    for dev in ns.links.keys() {
        if *dev != spec.internal.inside && *dev != spec.external.inside {
            steps.push(Step::DeleteLink {
                namespace: namespace(),
                dev: dev.clone(),
            });
        }
    }
    // Devices (re)created now start without addresses or routes.
    let mut fresh = BTreeSet::new();
    let mut adds = Vec::new();
    let mut deletes = Vec::new();
    let mut announce = Vec::new();
    for veth in [&spec.internal, &spec.external] {
        let inside = ns.links.get(&veth.inside).filter(|l| l.kind == "veth");
        let peer = observed.peers.get(&veth.peer).filter(|l| l.kind == "veth");
        let current = match (inside, peer) {
            (Some(i), Some(p)) => {
                if i.mac != Some(veth.mac) {
                    steps.push(Step::SetMac {
                        namespace: namespace(),
                        dev: veth.inside.clone(),
                        mac: veth.mac,
                    });
                }
                if !i.up {
                    steps.push(Step::SetUp {
                        namespace: namespace(),
                        dev: veth.inside.clone(),
                    });
                }
                if !p.up {
                    steps.push(Step::SetPeerUp {
                        name: veth.peer.clone(),
                    });
                }
                &i.addresses
            }
            _ => {
                if ns.links.contains_key(&veth.inside) {
                    steps.push(Step::DeleteLink {
                        namespace: namespace(),
                        dev: veth.inside.clone(),
                    });
                }
                if observed.peers.contains_key(&veth.peer) {
                    steps.push(Step::DeletePeer {
                        name: veth.peer.clone(),
                    });
                }
                steps.push(Step::AddVeth {
                    namespace: namespace(),
                    veth: veth.clone(),
                });
                fresh.insert(veth.inside.as_str());
                &BTreeSet::new()
            }
        };
        let want: BTreeSet<Ipv4Cidr> = veth.addresses.iter().copied().collect();
        for cidr in want.difference(current) {
            adds.push(Step::AddAddress {
                namespace: namespace(),
                dev: veth.inside.clone(),
                cidr: *cidr,
            });
            if veth.inside == spec.external.inside {
                announce.push(Step::Announce {
                    namespace: namespace(),
                    dev: veth.inside.clone(),
                    address: cidr.addr(),
                });
            }
        }
        for cidr in current.difference(&want) {
            deletes.push(Step::DeleteAddress {
                namespace: namespace(),
                dev: veth.inside.clone(),
                cidr: *cidr,
            });
        }
    }
    // Adds before deletes: removing a device's last address flushes its routes.
    steps.extend(adds);
    steps.extend(deletes);
    let routes: BTreeSet<&RouteSpec> = ns
        .routes
        .iter()
        .filter(|r| {
            let ours = r.dev == spec.internal.inside || r.dev == spec.external.inside;
            ours && !fresh.contains(r.dev.as_str())
        })
        .collect();
    for r in &routes {
        if !spec.routes.contains(r) {
            steps.push(Step::DeleteRoute {
                namespace: namespace(),
                route: (*r).clone(),
            });
        }
    }
    for r in &spec.routes {
        if !routes.contains(r) {
            steps.push(Step::AddRoute {
                namespace: namespace(),
                route: r.clone(),
            });
        }
    }
    if ns.nft.as_ref() != Some(&expected_nft(spec)) {
        steps.push(Step::LoadNft {
            namespace: namespace(),
            ruleset: render_nft(spec),
        });
    }
    steps.extend(announce);
    steps
}

/// Repeated announcements: a floating IP announced in one round is announced again in the next
/// [`ANNOUNCE_REPEATS`] rounds while its router still wants it.
#[derive(Debug, Clone, Default)]
pub struct Announcements {
    due: BTreeMap<(String, Ipv4Addr), u8>,
}

impl Announcements {
    /// Notes the announcements that went out this round.
    pub fn record(&mut self, done: &[Step]) {
        for s in done {
            if let Step::Announce {
                namespace, address, ..
            } = s
            {
                self.due
                    .insert((namespace.clone(), *address), ANNOUNCE_REPEATS);
            }
        }
    }

    /// Announces every floating IP of `spec` again in the next rounds (e.g. once the external
    /// peer has been plugged).
    pub fn request(&mut self, spec: &RouterSpec) {
        for p in &spec.nat {
            self.due.insert(
                (spec.namespace.clone(), p.floating_ip),
                ANNOUNCE_REPEATS + 1,
            );
        }
    }

    /// The repeats due this round (not already in `planned`), counting them down; forgets what
    /// `desired` no longer has.
    pub fn due(&mut self, desired: &[RouterSpec], planned: &[NamespacePlan]) -> Vec<Step> {
        let mut out = Vec::new();
        self.due.retain(|(ns, ip), left| {
            let Some(spec) = desired.iter().find(|r| &r.namespace == ns) else {
                return false;
            };
            if !spec.nat.iter().any(|p| p.floating_ip == *ip) || *left == 0 {
                return false;
            }
            let step = Step::Announce {
                namespace: ns.clone(),
                dev: spec.external.inside.clone(),
                address: *ip,
            };
            if !planned.iter().any(|p| p.steps.contains(&step)) {
                out.push(step);
                *left -= 1;
            }
            *left > 0
        });
        out
    }
}

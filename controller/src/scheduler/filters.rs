//! Host filters: whether one host can take the next server(s) of a request, and if not, why.
//! Shared by [`super::place`] and [`super::fits`], so the proposal and `apply`'s re-check use the
//! same rules and the same capacity arithmetic.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    AllocationRatios, GroupPolicy, HostId, HostView, PlacementRequest, Resources, ServerGroupView,
};

/// A scheduled resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    Vcpus,
    Ram,
    Disk,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Vcpus, Resource::Ram, Resource::Disk];

    pub fn label(self) -> &'static str {
        match self {
            Resource::Vcpus => "vCPUs",
            Resource::Ram => "RAM",
            Resource::Disk => "disk",
        }
    }

    /// An amount with its unit: `4 vCPUs`, `4096 MiB`, `20 GiB`.
    pub fn amount(self, value: u64) -> String {
        match self {
            Resource::Vcpus if value == 1 => "1 vCPU".to_string(),
            Resource::Vcpus => format!("{value} vCPUs"),
            Resource::Ram => format!("{value} MiB"),
            Resource::Disk => format!("{value} GiB"),
        }
    }
}

/// A resource a host lacks for the server(s) it was asked to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    pub resource: Resource,
    pub needed: u64,
    /// The limit minus what is used (0 if usage is already above the limit).
    pub free: u64,
    /// `floor(capacity × allocation ratio)`.
    pub limit: u64,
}

/// Why a host cannot take a server. Displayed as a predicate of the host: "node-1 {reason}".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The request names another host (`--host`).
    NotRequestedHost {
        requested: HostId,
    },
    Down,
    Disabled {
        reason: String,
    },
    /// In the request's exclude list: an earlier boot attempt failed there.
    Excluded,
    OtherZone {
        zone: String,
        wanted: String,
    },
    OtherHypervisor {
        hypervisor_type: String,
        wanted: String,
    },
    /// Hard affinity: the group's members run elsewhere (`member_hosts` are names where the
    /// scheduler knows them, ids otherwise).
    AffinityElsewhere {
        group: String,
        member_hosts: Vec<String>,
    },
    /// Hard anti-affinity: the host already runs `members` of the group.
    AntiAffinity {
        group: String,
        members: u32,
    },
    /// Not enough of one or more resources for `servers` servers (more than 1 only for the
    /// first server of a hard-affinity group, which must fit the whole request).
    Insufficient {
        servers: u32,
        shortfalls: Vec<Shortfall>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotRequestedHost { requested } => {
                write!(f, "is not the requested host {requested}")
            }
            Reason::Down => write!(f, "is down (its agent holds no valid lease)"),
            Reason::Disabled { reason } if reason.is_empty() => {
                write!(f, "is disabled (no reason given)")
            }
            Reason::Disabled { reason } => write!(f, "is disabled ({reason})"),
            Reason::Excluded => write!(
                f,
                "is excluded (an earlier boot attempt of this server failed there)"
            ),
            Reason::OtherZone { zone, wanted } if zone.is_empty() => {
                write!(f, "has no availability zone, not {wanted}")
            }
            Reason::OtherZone { zone, wanted } => {
                write!(f, "is in availability zone {zone}, not {wanted}")
            }
            Reason::OtherHypervisor {
                hypervisor_type,
                wanted,
            } => write!(f, "runs hypervisor {hypervisor_type}, not {wanted}"),
            Reason::AffinityElsewhere {
                group,
                member_hosts,
            } => write!(
                f,
                "is not where affinity group {group} runs ({})",
                member_hosts.join(", ")
            ),
            Reason::AntiAffinity { group, members: 1 } => {
                write!(f, "already runs a member of anti-affinity group {group}")
            }
            Reason::AntiAffinity { group, members } => {
                write!(
                    f,
                    "already runs {members} members of anti-affinity group {group}"
                )
            }
            Reason::Insufficient {
                servers,
                shortfalls,
            } => write!(
                f,
                "lacks {}: {}",
                lacking_label(shortfalls),
                shortfall_detail(*servers, shortfalls)
            ),
        }
    }
}

/// `RAM`, `vCPUs and RAM`, `vCPUs, RAM and disk`.
pub(super) fn lacking_label(shortfalls: &[Shortfall]) -> String {
    join_and(shortfalls.iter().map(|s| s.resource.label().to_string()))
}

/// `needs 4096 MiB, free 2048 MiB`; several resources: `needs 8 vCPUs and 4096 MiB, free
/// 4 vCPUs and 2048 MiB`; for a whole affinity request: `needs 12288 MiB for 3 servers, …`.
pub(super) fn shortfall_detail(servers: u32, shortfalls: &[Shortfall]) -> String {
    let needed = join_and(shortfalls.iter().map(|s| s.resource.amount(s.needed)));
    let free = join_and(shortfalls.iter().map(|s| s.resource.amount(s.free)));
    if servers > 1 {
        format!("needs {needed} for {servers} servers, free {free}")
    } else {
        format!("needs {needed}, free {free}")
    }
}

fn join_and(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The request's server group with its member hosts as the placement goes: existing members plus
/// the servers of this request placed so far.
pub(crate) struct GroupState<'a> {
    group: Option<&'a ServerGroupView>,
    members: BTreeMap<&'a str, u32>,
}

impl<'a> GroupState<'a> {
    pub(crate) fn new(group: Option<&'a ServerGroupView>) -> GroupState<'a> {
        let mut state = GroupState {
            group,
            members: BTreeMap::new(),
        };
        for host in group.iter().flat_map(|g| g.member_hosts.iter()) {
            state.add(host);
        }
        state
    }

    pub(crate) fn policy(&self) -> Option<GroupPolicy> {
        self.group.map(|g| g.policy)
    }

    /// No member has a host yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members of the group on `host`.
    pub(crate) fn on(&self, host: &str) -> u32 {
        self.members.get(host).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, host: &'a str) {
        if self.group.is_some() {
            *self.members.entry(host).or_insert(0) += 1;
        }
    }

    fn label(&self) -> String {
        match self.group {
            Some(g) if !g.name.is_empty() => g.name.clone(),
            Some(g) => g.id.clone(),
            None => String::new(),
        }
    }
}

/// Whether `host`, with `used` claimed so far, can take `servers` servers of `request`.
pub(crate) fn check(
    host: &HostView,
    used: Resources,
    ratios: &AllocationRatios,
    request: &PlacementRequest,
    group: &GroupState<'_>,
    servers: u32,
) -> Result<(), Reason> {
    let forced = match &request.forced_host {
        Some(requested) if *requested != host.id => {
            return Err(Reason::NotRequestedHost {
                requested: requested.clone(),
            })
        }
        Some(_) => true,
        None => false,
    };
    if !host.up {
        return Err(Reason::Down);
    }
    if !host.enabled && !forced {
        return Err(Reason::Disabled {
            reason: host.disabled_reason.clone(),
        });
    }
    if request.exclude_hosts.contains(&host.id) {
        return Err(Reason::Excluded);
    }
    if let Some(wanted) = &request.availability_zone {
        if host.availability_zone != *wanted {
            return Err(Reason::OtherZone {
                zone: host.availability_zone.clone(),
                wanted: wanted.clone(),
            });
        }
    }
    if let Some(wanted) = &request.hypervisor_type {
        if !host.hypervisor_type.eq_ignore_ascii_case(wanted) {
            return Err(Reason::OtherHypervisor {
                hypervisor_type: host.hypervisor_type.clone(),
                wanted: wanted.clone(),
            });
        }
    }
    match group.policy() {
        Some(GroupPolicy::Affinity) if !group.is_empty() && group.on(&host.id) == 0 => {
            return Err(Reason::AffinityElsewhere {
                group: group.label(),
                member_hosts: group.members.keys().map(|h| h.to_string()).collect(),
            });
        }
        Some(GroupPolicy::AntiAffinity) if group.on(&host.id) > 0 => {
            return Err(Reason::AntiAffinity {
                group: group.label(),
                members: group.on(&host.id),
            });
        }
        _ => {}
    }
    let shortfalls = shortfalls(host.capacity, used, ratios, request.claim().times(servers));
    if !shortfalls.is_empty() {
        return Err(Reason::Insufficient {
            servers,
            shortfalls,
        });
    }
    Ok(())
}

/// The resources a host with `capacity` and `used` lacks for `need`: the one capacity rule.
pub(crate) fn shortfalls(
    capacity: Resources,
    used: Resources,
    ratios: &AllocationRatios,
    need: Resources,
) -> Vec<Shortfall> {
    let limits = ratios.limits(capacity);
    Resource::ALL
        .into_iter()
        .filter_map(|resource| {
            let limit = limits.get(resource);
            let free = limit.saturating_sub(used.get(resource));
            let needed = need.get(resource);
            (needed > free).then_some(Shortfall {
                resource,
                needed,
                free,
                limit,
            })
        })
        .collect()
}

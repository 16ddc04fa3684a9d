//! [`NoValidHost`]: why no host could take a server, grouped by cause with the numbers an
//! operator needs, e.g. "no valid host among 3 hosts: 1 down (node-1), 1 disabled (node-2:
//! maintenance), 1 lacks RAM (node-3: needs 4096 MiB, free 2048 MiB)".
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::filters::{lacking_label, shortfall_detail};
use super::{HostId, HostView, Reason, Resource};

/// Hosts named per cause before the rest are only counted.
const MAX_LISTED: usize = 3;

/// One host and why it was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub host_id: HostId,
    pub host_name: String,
    pub reason: Reason,
}

/// No host could take one of the requested servers; nothing was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoValidHost {
    /// Servers requested.
    pub count: u32,
    /// Servers that had found a host (in the working copy) before one did not.
    pub placed: u32,
    /// Only the admin's requested host was considered.
    pub forced_host: bool,
    /// Every host considered, by name, as it stood for server `placed + 1`.
    pub rejections: Vec<Rejected>,
}

impl std::error::Error for NoValidHost {}

impl fmt::Display for NoValidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no valid host")?;
        match (self.count, self.placed) {
            (1, _) => {}
            (count, 0) => write!(f, " for any of the {count} servers")?,
            (count, placed) => write!(f, " for server {} of {count}", placed + 1)?,
        }
        if self.forced_host {
            if let [only] = self.rejections.as_slice() {
                write!(f, " on the requested host")?;
                self.write_after_placed(f)?;
                return write!(f, ": {} {}", only.host_name, only.reason);
            }
        }
        match self.rejections.len() {
            0 => return write!(f, ": no hosts are registered"),
            1 => write!(f, " among 1 host")?,
            n => write!(f, " among {n} hosts")?,
        }
        self.write_after_placed(f)?;
        let mut groups: BTreeMap<Category, Vec<&Rejected>> = BTreeMap::new();
        for rejected in &self.rejections {
            groups
                .entry(Category::of(&rejected.reason))
                .or_default()
                .push(rejected);
        }
        write!(f, ": ")?;
        for (i, (category, hosts)) in groups.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write_group(f, category, hosts)?;
        }
        Ok(())
    }
}

impl NoValidHost {
    fn write_after_placed(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.placed {
            0 => Ok(()),
            1 => write!(
                f,
                ", once the first was placed (all or nothing: none was placed)"
            ),
            n => write!(
                f,
                ", once the first {n} were placed (all or nothing: none was placed)"
            ),
        }
    }
}

/// Rejections grouped for the summary, in filter order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    NotRequested,
    Down,
    Disabled,
    Excluded,
    OtherZone(String),
    OtherHypervisor(String),
    AffinityElsewhere,
    AntiAffinity,
    Lacks(Vec<Resource>),
}

impl Category {
    fn of(reason: &Reason) -> Category {
        match reason {
            Reason::NotRequestedHost { .. } => Category::NotRequested,
            Reason::Down => Category::Down,
            Reason::Disabled { .. } => Category::Disabled,
            Reason::Excluded => Category::Excluded,
            Reason::OtherZone { wanted, .. } => Category::OtherZone(wanted.clone()),
            Reason::OtherHypervisor { wanted, .. } => Category::OtherHypervisor(wanted.clone()),
            Reason::AffinityElsewhere { .. } => Category::AffinityElsewhere,
            Reason::AntiAffinity { .. } => Category::AntiAffinity,
            Reason::Insufficient { shortfalls, .. } => {
                Category::Lacks(shortfalls.iter().map(|s| s.resource).collect())
            }
        }
    }
}

/// `2 lack RAM (node-3: needs 4096 MiB, free 2048 MiB; node-4: …)`.
fn write_group(
    f: &mut fmt::Formatter<'_>,
    category: &Category,
    hosts: &[&Rejected],
) -> fmt::Result {
    let n = hosts.len();
    let one = n == 1;
    let names = || list(hosts.iter().map(|r| r.host_name.clone()), ", ");
    match category {
        Category::NotRequested => write!(f, "{n} not the requested host ({})", names()),
        Category::Down => write!(f, "{n} down ({})", names()),
        Category::Disabled => {
            let details = hosts.iter().map(|r| match &r.reason {
                Reason::Disabled { reason } if !reason.is_empty() => {
                    format!("{}: {reason}", r.host_name)
                }
                _ => format!("{}: no reason given", r.host_name),
            });
            write!(f, "{n} disabled ({})", list(details, "; "))
        }
        Category::Excluded => write!(f, "{n} excluded after a failed boot attempt ({})", names()),
        Category::OtherZone(wanted) => {
            let details = hosts.iter().map(|r| match &r.reason {
                Reason::OtherZone { zone, .. } if !zone.is_empty() => {
                    format!("{}: {zone}", r.host_name)
                }
                _ => format!("{}: none", r.host_name),
            });
            write!(
                f,
                "{n} not in availability zone {wanted} ({})",
                list(details, ", ")
            )
        }
        Category::OtherHypervisor(wanted) => {
            let details = hosts.iter().map(|r| match &r.reason {
                Reason::OtherHypervisor {
                    hypervisor_type, ..
                } => format!("{}: {hypervisor_type}", r.host_name),
                _ => r.host_name.clone(),
            });
            write!(f, "{n} not running {wanted} ({})", list(details, ", "))
        }
        Category::AffinityElsewhere => match hosts.first().map(|r| &r.reason) {
            Some(Reason::AffinityElsewhere {
                group,
                member_hosts,
            }) => write!(
                f,
                "{n} not where affinity group {group} runs ({})",
                member_hosts.join(", ")
            ),
            _ => write!(f, "{n} not where the affinity group runs"),
        },
        Category::AntiAffinity => {
            let group = match hosts.first().map(|r| &r.reason) {
                Some(Reason::AntiAffinity { group, .. }) => group.as_str(),
                _ => "",
            };
            let verb = if one { "runs" } else { "run" };
            write!(
                f,
                "{n} already {verb} a member of anti-affinity group {group} ({})",
                names()
            )
        }
        Category::Lacks(_) => {
            let label = match hosts.first().map(|r| &r.reason) {
                Some(Reason::Insufficient { shortfalls, .. }) => lacking_label(shortfalls),
                _ => String::new(),
            };
            let details = hosts.iter().map(|r| match &r.reason {
                Reason::Insufficient {
                    servers,
                    shortfalls,
                } => format!(
                    "{}: {}",
                    r.host_name,
                    shortfall_detail(*servers, shortfalls)
                ),
                _ => r.host_name.clone(),
            });
            let verb = if one { "lacks" } else { "lack" };
            write!(f, "{n} {verb} {label} ({})", list(details, "; "))
        }
    }
}

/// The first [`MAX_LISTED`] items joined by `sep`, then how many more there are.
fn list(items: impl ExactSizeIterator<Item = String>, sep: &str) -> String {
    let total = items.len();
    let mut out: Vec<String> = items.take(MAX_LISTED).collect();
    if total > MAX_LISTED {
        out.push(format!("and {} more", total - MAX_LISTED));
    }
    out.join(sep)
}

/// Replaces host ids by names in a reason that mentions other hosts.
pub(super) fn with_host_names(reason: Reason, hosts: &[HostView]) -> Reason {
    match reason {
        Reason::AffinityElsewhere {
            group,
            member_hosts,
        } => Reason::AffinityElsewhere {
            group,
            member_hosts: member_hosts
                .into_iter()
                .map(|id| match hosts.iter().find(|h| h.id == id) {
                    Some(h) => h.name.clone(),
                    None => id,
                })
                .collect(),
        },
        other => other,
    }
}

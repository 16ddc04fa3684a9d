//! Weighers: which of the hosts that passed the filters takes the next server. A strict order
//! (soft group policy, then spread or pack, then name, then id), compared exactly.
use std::cmp::Ordering;

use super::filters::GroupState;
use super::{
    AllocationRatios, GroupPolicy, HostView, PlacementRequest, Resource, Resources, Weigher,
};

/// How one host ranks for the next server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Score {
    /// Lower is better: members of a soft anti-affinity group on the host, or the complement of
    /// the members of a soft affinity group; 0 without a soft policy.
    group_rank: u32,
    /// The host's dominant utilization once the server is placed.
    utilization: Share,
}

/// A fraction `num / den` with `den > 0`, ordered exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Share {
    num: u128,
    den: u128,
}

impl Share {
    /// `used / limit`; a zero limit counts as full unless nothing is used.
    fn new(used: u64, limit: u64) -> Share {
        Share {
            num: u128::from(used),
            den: u128::from(limit.max(1)),
        }
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Share) -> Ordering {
        // Both sides fit in u128: each factor is at most u64::MAX.
        (self.num * other.den).cmp(&(other.num * self.den))
    }
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Share) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub(crate) fn score(
    host: &HostView,
    used: Resources,
    claim: Resources,
    ratios: &AllocationRatios,
    request: &PlacementRequest,
    group: &GroupState<'_>,
) -> Score {
    let limits = ratios.limits(host.capacity);
    let after = used.saturating_add(claim);
    let utilization = Resource::ALL
        .into_iter()
        .map(|r| Share::new(after.get(r), limits.get(r)))
        .max()
        .unwrap_or(Share { num: 0, den: 1 });
    let members = group.on(&host.id);
    let group_rank = match request.group.as_ref().map(|g| g.policy) {
        Some(GroupPolicy::SoftAntiAffinity) => members,
        Some(GroupPolicy::SoftAffinity) => u32::MAX - members,
        _ => 0,
    };
    Score {
        group_rank,
        utilization,
    }
}

/// `Less` when host `a` should take the server rather than host `b`.
pub(crate) fn compare(
    weigher: Weigher,
    a_host: &HostView,
    a: &Score,
    b_host: &HostView,
    b: &Score,
) -> Ordering {
    let by_weigher = match weigher {
        Weigher::Spread => a.utilization.cmp(&b.utilization),
        Weigher::Pack => b.utilization.cmp(&a.utilization),
    };
    a.group_rank
        .cmp(&b.group_rank)
        .then(by_weigher)
        .then_with(|| a_host.name.cmp(&b_host.name))
        .then_with(|| a_host.id.cmp(&b_host.id))
}

//! The scheduler: a pure function from a read-only view of the hosts and one request to a
//! placement (ARCHITECTURE.md I3, STYLE.md 1, 2 and 6). No I/O, no clock, no randomness; the same
//! view and request always give the same answer.
//!
//! # Pipeline
//! 1. [`validate_request`]: problems with the request itself (zero count, a flavor smaller than
//!    the image needs) are an [`InvalidRequest`], never a host problem.
//! 2. Candidates: every host, or only the admin's forced host (`--host`); sorted by name, then
//!    id, so the input order never matters.
//! 3. For each of the `count` servers, in turn: the filters (below) keep the hosts that can take
//!    it, the weighers pick the best one, and the choice consumes that host's capacity in a
//!    working copy and joins the server group's member hosts. So the N servers of one
//!    `server create --count N` never overbook a host, and hard anti-affinity holds among them as
//!    well as against the group's existing members.
//! 4. All or nothing: if any server finds no host, nothing is placed and [`NoValidHost`] explains,
//!    host by host, why each was rejected at that point.
//!
//! # Filters (first failure wins, in this order)
//! forced host (only in [`fits`]), up (valid agent lease), enabled (skipped for the forced
//! host: the admin targets it on purpose), not excluded (a previous boot attempt failed there),
//! availability zone, hypervisor type, hard server-group policy, then vCPU/RAM/disk capacity.
//! With hard affinity and no member placed yet, the first host must fit all `count` servers, so
//! the whole request lands together.
//!
//! # Weighers
//! A strict order, best first: the soft group policy (soft anti-affinity: fewest members of the
//! group on the host; soft affinity: most), then [`Weigher::Spread`] (lowest dominant
//! utilization after placing the server, the largest of its vCPU, RAM and disk shares of the
//! allocatable limits) or [`Weigher::Pack`] (highest), then host name, then id. Soft policies
//! therefore only ever order hosts, never remove them: honoured whenever some host allows it.
//! Utilization shares are compared as exact fractions, not floats.
//!
//! # Capacity and allocation ratios
//! A host may hold `floor(capacity × ratio)` of each resource ([`AllocationRatios::limits`]);
//! ratios are applied in fixed point (millionths), so `100 × 1.15` is exactly 115. `used` is what
//! placed servers claim (flavor sizes, not measured load) and may exceed the limit after an
//! operator lowers a ratio: such a host simply has nothing free. What one server claims is
//! [`PlacementRequest::claim`]: the flavor's vCPUs and RAM, and disk = root + ephemeral + swap
//! rounded up to whole GiB (as Nova counts `DISK_GB`). A flavor with a 0 GiB root disk takes its
//! root size from the image, so it claims the larger of the image's `min_disk` and virtual size.
//!
//! # Atomic admission (I3)
//! [`place`] runs on the leader against a snapshot; its result is a proposal. The command's
//! `apply` re-checks each server with [`fits`] against the usage and group membership current at
//! that index — in placement order, adding each admitted server's [`PlacementRequest::claim`] to
//! its host and its host to the group before checking the next — and rejects the command if any
//! check fails. Both use the same filter and capacity code, so a placement that `apply` admits
//! can never overbook a host or break a hard group policy, however many requests raced. The
//! re-checked request must carry the proposal's constraints (zone, hypervisor type, forced host,
//! exclusions, and the group with its member hosts as they are now), or `fits` cannot see them.
mod explain;
mod filters;
mod weighers;

#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use explain::{NoValidHost, Rejected};
pub use filters::{Reason, Resource, Shortfall};

use filters::GroupState;

/// Hosts are identified by their id (a string, like every id in the state machine).
pub type HostId = String;

const GIB: u64 = 1 << 30;
const MIB_PER_GIB: u64 = 1024;
/// Allocation ratios are applied in millionths.
const RATIO_SCALE: f64 = 1_000_000.0;

/// An amount of each scheduled resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: u64,
    pub ram_mib: u64,
    pub disk_gib: u64,
}

impl Resources {
    pub fn new(vcpus: u64, ram_mib: u64, disk_gib: u64) -> Resources {
        Resources {
            vcpus,
            ram_mib,
            disk_gib,
        }
    }

    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            ram_mib: self.ram_mib.saturating_add(other.ram_mib),
            disk_gib: self.disk_gib.saturating_add(other.disk_gib),
        }
    }

    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            ram_mib: self.ram_mib.saturating_sub(other.ram_mib),
            disk_gib: self.disk_gib.saturating_sub(other.disk_gib),
        }
    }

    /// `n` servers' worth of this amount.
    pub fn times(self, n: u32) -> Resources {
        let n = u64::from(n);
        Resources {
            vcpus: self.vcpus.saturating_mul(n),
            ram_mib: self.ram_mib.saturating_mul(n),
            disk_gib: self.disk_gib.saturating_mul(n),
        }
    }

    pub fn get(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Vcpus => self.vcpus,
            Resource::Ram => self.ram_mib,
            Resource::Disk => self.disk_gib,
        }
    }
}

/// How far each resource may be overcommitted. The defaults are Nova's initial ratios
/// (`initial_cpu_allocation_ratio` 16.0, `initial_ram_allocation_ratio` 1.5,
/// `initial_disk_allocation_ratio` 1.0), which operators already know. RAM overcommit relies on
/// host swap or KSM; on hosts without either, set `ram = 1.0`. Disk stays 1.0 because qcow2
/// overlays grow towards their full size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllocationRatios {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
}

impl Default for AllocationRatios {
    fn default() -> AllocationRatios {
        AllocationRatios {
            cpu: 16.0,
            ram: 1.5,
            disk: 1.0,
        }
    }
}

/// Largest accepted allocation ratio; beyond it "capacity" stops meaning anything.
pub const MAX_ALLOCATION_RATIO: f64 = 1000.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {name} allocation ratio must be a number from 0.000001 to {MAX_ALLOCATION_RATIO}, not {value}")]
pub struct InvalidRatio {
    pub name: &'static str,
    pub value: f64,
}

impl AllocationRatios {
    /// Only valid ratios leave here (STYLE.md 11).
    pub fn validate(self) -> Result<AllocationRatios, InvalidRatio> {
        for (name, value) in [("cpu", self.cpu), ("ram", self.ram), ("disk", self.disk)] {
            if !(value.is_finite() && value * RATIO_SCALE >= 1.0 && value <= MAX_ALLOCATION_RATIO) {
                return Err(InvalidRatio { name, value });
            }
        }
        Ok(self)
    }

    /// What a host with `capacity` may hold in total: `floor(capacity × ratio)` per resource.
    /// An invalid (non-finite or negative) ratio allows nothing.
    pub fn limits(&self, capacity: Resources) -> Resources {
        Resources {
            vcpus: scale(capacity.vcpus, self.cpu),
            ram_mib: scale(capacity.ram_mib, self.ram),
            disk_gib: scale(capacity.disk_gib, self.disk),
        }
    }
}

/// `floor(value × ratio)` with the ratio rounded to millionths, in integers. Float-to-integer
/// casts saturate (NaN becomes 0), so this is total and the same on every replica.
fn scale(value: u64, ratio: f64) -> u64 {
    let millionths = (ratio * RATIO_SCALE).round() as u64;
    let scaled = u128::from(value) * u128::from(millionths) / 1_000_000;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// A compute host as the scheduler sees it: a read-only snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub id: HostId,
    pub name: String,
    /// The host's agent holds a valid lease.
    pub up: bool,
    pub enabled: bool,
    /// Why an operator disabled it (`host disable --reason`); empty when none was given.
    pub disabled_reason: String,
    pub availability_zone: String,
    /// What the host offers guests, before allocation ratios.
    pub capacity: Resources,
    /// What the servers placed on it claim.
    pub used: Resources,
    /// As the agent reports it, e.g. `qemu` or `kvm`; compared ignoring ASCII case.
    pub hypervisor_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    /// All members on one host; a filter.
    Affinity,
    /// Every member on a different host; a filter.
    AntiAffinity,
    /// Members together where possible; a weigher.
    SoftAffinity,
    /// Members apart where possible; a weigher.
    SoftAntiAffinity,
}

impl GroupPolicy {
    /// The name operators use (Nova's): `affinity`, `anti-affinity`, `soft-affinity`,
    /// `soft-anti-affinity`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupPolicy::Affinity => "affinity",
            GroupPolicy::AntiAffinity => "anti-affinity",
            GroupPolicy::SoftAffinity => "soft-affinity",
            GroupPolicy::SoftAntiAffinity => "soft-anti-affinity",
        }
    }

    pub fn parse(s: &str) -> Option<GroupPolicy> {
        [
            GroupPolicy::Affinity,
            GroupPolicy::AntiAffinity,
            GroupPolicy::SoftAffinity,
            GroupPolicy::SoftAntiAffinity,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// The server group a request joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroupView {
    pub id: String,
    pub name: String,
    pub policy: GroupPolicy,
    /// The host of each current member, one entry per member (a host appears once per member
    /// it runs). Members without a host yet are left out.
    pub member_hosts: Vec<HostId>,
}

/// How to choose among the hosts that pass the filters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weigher {
    /// Least utilized host first: spreads load and failure domains.
    #[default]
    Spread,
    /// Most utilized host that still fits: keeps whole hosts free.
    Pack,
}

impl Weigher {
    pub fn as_str(self) -> &'static str {
        match self {
            Weigher::Spread => "spread",
            Weigher::Pack => "pack",
        }
    }

    pub fn parse(s: &str) -> Option<Weigher> {
        match s {
            "spread" => Some(Weigher::Spread),
            "pack" => Some(Weigher::Pack),
            _ => None,
        }
    }
}

/// A flavor's sizes, as the scheduler needs them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorSize {
    pub vcpus: u32,
    pub ram_mib: u64,
    /// 0: sized from the image (see [`PlacementRequest::claim`]).
    pub root_gib: u64,
    pub ephemeral_gib: u64,
    pub swap_mib: u64,
}

/// What the image asks of the flavor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRequirements {
    pub min_disk_gib: u64,
    pub min_ram_mib: u64,
    /// The guest disk size inside the image (`qemu-img info`'s `virtual-size`).
    pub virtual_size_bytes: u64,
}

/// One `server create` (or a reschedule of one server): `count` identical servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub count: u32,
    pub flavor: FlavorSize,
    pub image: ImageRequirements,
    pub availability_zone: Option<String>,
    /// Only hosts running this hypervisor type (compared ignoring ASCII case).
    pub hypervisor_type: Option<String>,
    pub group: Option<ServerGroupView>,
    pub weigher: Weigher,
    /// Hosts not to use: where earlier boot attempts of this server failed.
    pub exclude_hosts: BTreeSet<HostId>,
    /// The admin's `--host`: only this host is considered, even if disabled.
    pub forced_host: Option<HostId>,
}

impl PlacementRequest {
    /// One server of `flavor` with no other constraints.
    pub fn new(flavor: FlavorSize) -> PlacementRequest {
        PlacementRequest {
            count: 1,
            flavor,
            image: ImageRequirements::default(),
            availability_zone: None,
            hypervisor_type: None,
            group: None,
            weigher: Weigher::default(),
            exclude_hosts: BTreeSet::new(),
            forced_host: None,
        }
    }

    /// What one server claims on its host: the number `apply` adds to the host's usage.
    pub fn claim(&self) -> Resources {
        let f = &self.flavor;
        let root_gib = if f.root_gib > 0 {
            f.root_gib
        } else {
            self.image
                .min_disk_gib
                .max(self.image.virtual_size_bytes.div_ceil(GIB))
        };
        Resources {
            vcpus: u64::from(f.vcpus),
            ram_mib: f.ram_mib,
            disk_gib: root_gib
                .saturating_add(f.ephemeral_gib)
                .saturating_add(f.swap_mib.div_ceil(MIB_PER_GIB)),
        }
    }
}

/// A request that no host could ever satisfy, whatever their state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidRequest {
    #[error("the number of servers must be at least 1")]
    ZeroCount,
    #[error(
        "flavor disk {flavor_gib} GiB is smaller than the image's min_disk {min_disk_gib} GiB"
    )]
    DiskBelowImageMinDisk { flavor_gib: u64, min_disk_gib: u64 },
    #[error(
        "flavor disk {flavor_gib} GiB is smaller than the image's virtual size {} GiB \
         ({virtual_size_bytes} bytes)", gib_hundredths(*virtual_size_bytes)
    )]
    DiskBelowImageSize {
        flavor_gib: u64,
        virtual_size_bytes: u64,
    },
    #[error("flavor RAM {flavor_mib} MiB is smaller than the image's min_ram {min_ram_mib} MiB")]
    RamBelowImageMinRam { flavor_mib: u64, min_ram_mib: u64 },
    #[error("the requested host {0} does not exist")]
    UnknownHost(HostId),
}

/// `bytes` in GiB with two decimals, rounded up (so it never looks smaller than it is).
fn gib_hundredths(bytes: u64) -> String {
    let hundredths = (u128::from(bytes) * 100).div_ceil(u128::from(GIB));
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

/// Why [`place`] found no placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    #[error(transparent)]
    NoValidHost(#[from] NoValidHost),
}

/// Checks the request on its own: a flavor too small for the image, or nothing to place.
pub fn validate_request(request: &PlacementRequest) -> Result<(), InvalidRequest> {
    if request.count == 0 {
        return Err(InvalidRequest::ZeroCount);
    }
    let (flavor, image) = (&request.flavor, &request.image);
    if flavor.root_gib > 0 {
        if flavor.root_gib < image.min_disk_gib {
            return Err(InvalidRequest::DiskBelowImageMinDisk {
                flavor_gib: flavor.root_gib,
                min_disk_gib: image.min_disk_gib,
            });
        }
        if flavor.root_gib.saturating_mul(GIB) < image.virtual_size_bytes {
            return Err(InvalidRequest::DiskBelowImageSize {
                flavor_gib: flavor.root_gib,
                virtual_size_bytes: image.virtual_size_bytes,
            });
        }
    }
    if flavor.ram_mib < image.min_ram_mib {
        return Err(InvalidRequest::RamBelowImageMinRam {
            flavor_mib: flavor.ram_mib,
            min_ram_mib: image.min_ram_mib,
        });
    }
    Ok(())
}

/// Places all `request.count` servers at once, or none: the host of each, in order.
pub fn place(
    hosts: &[HostView],
    ratios: &AllocationRatios,
    request: &PlacementRequest,
) -> Result<Vec<HostId>, ScheduleError> {
    validate_request(request)?;
    let mut candidates: Vec<&HostView> = match &request.forced_host {
        Some(id) => vec![hosts
            .iter()
            .find(|h| &h.id == id)
            .ok_or_else(|| InvalidRequest::UnknownHost(id.clone()))?],
        None => hosts.iter().collect(),
    };
    candidates.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));

    let claim = request.claim();
    let hard_affinity = request
        .group
        .as_ref()
        .is_some_and(|g| g.policy == GroupPolicy::Affinity);
    let mut used: Vec<Resources> = candidates.iter().map(|h| h.used).collect();
    let mut group = GroupState::new(request.group.as_ref());
    let mut placed: Vec<HostId> = Vec::with_capacity(request.count as usize);

    for k in 0..request.count {
        // With hard affinity and no member yet, this host receives every remaining server.
        let servers = if hard_affinity && group.is_empty() {
            request.count - k
        } else {
            1
        };
        let mut best: Option<(usize, weighers::Score)> = None;
        for (i, host) in candidates.iter().enumerate() {
            if filters::check(host, used[i], ratios, request, &group, servers).is_err() {
                continue;
            }
            let score = weighers::score(host, used[i], claim, ratios, request, &group);
            let better = match &best {
                None => true,
                Some((j, current)) => {
                    weighers::compare(request.weigher, host, &score, candidates[*j], current)
                        .is_lt()
                }
            };
            if better {
                best = Some((i, score));
            }
        }
        let Some((i, _)) = best else {
            let rejections = candidates
                .iter()
                .enumerate()
                .filter_map(|(i, host)| {
                    filters::check(host, used[i], ratios, request, &group, servers)
                        .err()
                        .map(|reason| Rejected {
                            host_id: host.id.clone(),
                            host_name: host.name.clone(),
                            reason: explain::with_host_names(reason, hosts),
                        })
                })
                .collect();
            return Err(NoValidHost {
                count: request.count,
                placed: k,
                forced_host: request.forced_host.is_some(),
                rejections,
            }
            .into());
        };
        used[i] = used[i].saturating_add(claim);
        group.add(&candidates[i].id);
        placed.push(candidates[i].id.clone());
    }
    Ok(placed)
}

/// Whether one server of `request` may be placed on `host` as it is now (its `used` and the
/// group's current `member_hosts`); `request.count` is ignored. This is the re-check `apply`
/// makes for each server of a proposed placement (I3): the same filters and arithmetic as
/// [`place`]. It does not repeat [`validate_request`], which depends on the request alone.
pub fn fits(
    host: &HostView,
    ratios: &AllocationRatios,
    request: &PlacementRequest,
) -> Result<(), Reason> {
    let group = GroupState::new(request.group.as_ref());
    filters::check(host, host.used, ratios, request, &group, 1)
}

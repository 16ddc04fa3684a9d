//! Seeded randomized checks of the scheduler's promises: no placement exceeds capacity × ratio,
//! hard filters and group policies always hold, `apply`'s re-check with `fits` accepts every
//! proposal, greedy placement of identical servers finds as many as the hosts can hold, and the
//! answer never depends on the input order.
use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

const CASES: usize = 1000;

/// Allocation ratios as exact fractions, so the test computes limits its own way.
const RATIOS: [(u64, u64); 6] = [(1, 1), (3, 2), (2, 1), (16, 1), (9, 10), (23, 20)];

struct Case {
    hosts: Vec<HostView>,
    ratios: [(u64, u64); 3],
    request: PlacementRequest,
}

impl Case {
    fn allocation_ratios(&self) -> AllocationRatios {
        let f = |(n, d): (u64, u64)| n as f64 / d as f64;
        AllocationRatios {
            cpu: f(self.ratios[0]),
            ram: f(self.ratios[1]),
            disk: f(self.ratios[2]),
        }
    }

    /// Passes every filter except capacity and group policy.
    fn eligible(&self, h: &HostView) -> bool {
        let r = &self.request;
        let forced = r.forced_host.as_ref() == Some(&h.id);
        (r.forced_host.is_none() || forced)
            && h.up
            && (h.enabled || forced)
            && !r.exclude_hosts.contains(&h.id)
            && r.availability_zone
                .as_ref()
                .is_none_or(|z| *z == h.availability_zone)
            && r.hypervisor_type
                .as_ref()
                .is_none_or(|t| t.eq_ignore_ascii_case(&h.hypervisor_type))
    }

    /// `used` within `floor(capacity × n / d)` for each resource, in integers.
    fn within_limits(&self, h: &HostView, used: Resources) -> bool {
        Resource::ALL.iter().zip(self.ratios).all(|(r, (n, d))| {
            u128::from(used.get(*r)) * u128::from(d)
                <= u128::from(h.capacity.get(*r)) * u128::from(n)
        })
    }

    /// How many more servers of the request `h` can hold, from capacity alone.
    fn room(&self, h: &HostView) -> u64 {
        let claim = self.request.claim();
        Resource::ALL
            .iter()
            .zip(self.ratios)
            .map(|(r, (n, d))| {
                let limit = h.capacity.get(*r) * n / d;
                let free = limit.saturating_sub(h.used.get(*r));
                free.checked_div(claim.get(*r)).unwrap_or(u64::MAX)
            })
            .min()
            .unwrap_or(0)
    }
}

fn random_case(rng: &mut StdRng) -> Case {
    let ratios = [(); 3].map(|()| *RATIOS.choose(rng).unwrap());
    let n_hosts = rng.gen_range(0..10);
    let mut hosts: Vec<HostView> = (0..n_hosts)
        .map(|i| {
            let capacity = Resources::new(
                rng.gen_range(1..=32),
                rng.gen_range(2..=128) * 512,
                rng.gen_range(10..=500),
            );
            let used = Resources::new(
                rng.gen_range(0..=capacity.vcpus * 17),
                rng.gen_range(0..=capacity.ram_mib * 2),
                rng.gen_range(0..=capacity.disk_gib * 2),
            );
            // Mostly lightly used hosts, some full or over their limit.
            let used = if rng.gen_bool(0.85) {
                Resources::new(used.vcpus / 8, used.ram_mib / 8, used.disk_gib / 8)
            } else {
                used
            };
            HostView {
                id: format!("id-{i}"),
                name: format!("host-{}", rng.gen_range(0..5)),
                up: rng.gen_bool(0.9),
                enabled: rng.gen_bool(0.85),
                disabled_reason: String::new(),
                availability_zone: ["az-1", "az-2"].choose(rng).unwrap().to_string(),
                capacity,
                used,
                hypervisor_type: ["kvm", "qemu"].choose(rng).unwrap().to_string(),
            }
        })
        .collect();
    hosts.shuffle(rng);

    let root_gib = rng.gen_range(0..=40);
    let mut request = PlacementRequest::new(FlavorSize {
        vcpus: rng.gen_range(1..=8),
        ram_mib: rng.gen_range(1..=32) * 256,
        root_gib,
        ephemeral_gib: rng.gen_range(0..=5),
        swap_mib: rng.gen_range(0..=2048),
    });
    request.count = rng.gen_range(1..=4);
    let disk_bound = if root_gib > 0 { root_gib } else { 5 };
    request.image = ImageRequirements {
        min_disk_gib: rng.gen_range(0..=disk_bound),
        min_ram_mib: rng.gen_range(0..=request.flavor.ram_mib),
        virtual_size_bytes: rng.gen_range(0..=disk_bound * GIB),
    };
    let id = |rng: &mut StdRng| format!("id-{}", rng.gen_range(0..n_hosts.max(1) + 1));
    if rng.gen_bool(0.3) {
        request.availability_zone = Some(["az-1", "az-2"].choose(rng).unwrap().to_string());
    }
    if rng.gen_bool(0.2) {
        request.hypervisor_type = Some("KVM".to_string());
    }
    if rng.gen_bool(0.6) {
        let policy = *[
            GroupPolicy::Affinity,
            GroupPolicy::AntiAffinity,
            GroupPolicy::SoftAffinity,
            GroupPolicy::SoftAntiAffinity,
        ]
        .choose(rng)
        .unwrap();
        let members = match policy {
            // Hard affinity groups normally live on one host.
            GroupPolicy::Affinity => vec![id(rng); rng.gen_range(0..=2)],
            _ => (0..rng.gen_range(0..=3)).map(|_| id(rng)).collect(),
        };
        request.group = Some(ServerGroupView {
            id: "g".into(),
            name: "g".into(),
            policy,
            member_hosts: members,
        });
    }
    request.weigher = *[Weigher::Spread, Weigher::Pack].choose(rng).unwrap();
    for _ in 0..rng.gen_range(0..=2) {
        request.exclude_hosts.insert(id(rng));
    }
    if n_hosts > 0 && rng.gen_bool(0.1) {
        request.forced_host = Some(hosts.choose(rng).unwrap().id.clone());
    }
    Case {
        hosts,
        ratios,
        request,
    }
}

#[test]
fn random_placements_respect_capacity_filters_and_groups() {
    let mut rng = StdRng::seed_from_u64(0x5c4e_d01e);
    let (mut placed, mut refused) = (0, 0);
    for case_no in 0..CASES {
        let case = random_case(&mut rng);
        let ratios = case.allocation_ratios();
        let request = &case.request;
        assert_eq!(validate_request(request), Ok(()), "case {case_no}");
        let result = place(&case.hosts, &ratios, request);

        // Deterministic, whatever the input order.
        let mut reversed = case.hosts.clone();
        reversed.reverse();
        assert_eq!(place(&reversed, &ratios, request), result, "case {case_no}");

        let group = request.group.as_ref();
        let members: BTreeSet<&HostId> = group.iter().flat_map(|g| &g.member_hosts).collect();
        let policy = group.map(|g| g.policy);
        match result {
            Ok(placement) => {
                placed += 1;
                assert_eq!(placement.len(), request.count as usize, "case {case_no}");
                let mut used: BTreeMap<&HostId, Resources> = BTreeMap::new();
                for id in &placement {
                    let h = case.hosts.iter().find(|h| &h.id == id).unwrap();
                    assert!(case.eligible(h), "case {case_no}: {id} is not eligible");
                    let u = used.entry(&h.id).or_insert(h.used);
                    *u = u.saturating_add(request.claim());
                    assert!(case.within_limits(h, *u), "case {case_no}: {id} overbooked");
                }
                match policy {
                    Some(GroupPolicy::AntiAffinity) => {
                        let distinct: BTreeSet<&HostId> = placement.iter().collect();
                        assert_eq!(distinct.len(), placement.len(), "case {case_no}");
                        assert!(distinct.is_disjoint(&members), "case {case_no}");
                    }
                    Some(GroupPolicy::Affinity) => {
                        assert!(
                            placement.iter().all(|h| *h == placement[0]),
                            "case {case_no}"
                        );
                        assert!(
                            members.is_empty() || members.contains(&placement[0]),
                            "case {case_no}"
                        );
                    }
                    _ => {}
                }
                // apply's re-check (I3) accepts the proposal server by server.
                let mut hosts = case.hosts.clone();
                let mut r = request.clone();
                for id in &placement {
                    let h = hosts.iter_mut().find(|h| &h.id == id).unwrap();
                    assert_eq!(fits(h, &ratios, &r), Ok(()), "case {case_no}");
                    h.used = h.used.saturating_add(r.claim());
                    if let Some(g) = r.group.as_mut() {
                        g.member_hosts.push(id.clone());
                    }
                }
            }
            Err(ScheduleError::NoValidHost(e)) => {
                refused += 1;
                let considered = match &request.forced_host {
                    Some(_) => 1,
                    None => case.hosts.len(),
                };
                assert_eq!(e.rejections.len(), considered, "case {case_no}");
                assert!(e.placed < request.count, "case {case_no}");
                if e.placed == 0 && request.count == 1 {
                    // Nothing fits: `fits` agrees for every host.
                    assert!(
                        case.hosts
                            .iter()
                            .all(|h| fits(h, &ratios, request).is_err()),
                        "case {case_no}"
                    );
                }
                if policy.is_none()
                    || matches!(
                        policy,
                        Some(GroupPolicy::SoftAffinity | GroupPolicy::SoftAntiAffinity)
                    )
                {
                    // Identical servers without hard constraints: greedy placement stops only
                    // when the eligible hosts are full.
                    let room: u64 = case
                        .hosts
                        .iter()
                        .filter(|h| case.eligible(h))
                        .map(|h| case.room(h))
                        .sum();
                    assert_eq!(room, u64::from(e.placed), "case {case_no}: {e}");
                }
            }
            Err(ScheduleError::InvalidRequest(e)) => panic!("case {case_no}: {e}"),
        }
    }
    // The generator exercises both outcomes.
    assert!(
        placed > CASES / 5 && refused > CASES / 5,
        "placed {placed}, refused {refused}"
    );
}

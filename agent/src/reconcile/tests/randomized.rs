//! Seeded randomized hosts: whatever mix of wanted, held, stale, crashed and half-built servers
//! and leftover disks, one plan converges, planning again yields nothing, no step that needs the
//! lease is planned without one, and nothing starts or survives stale while fenced.

use super::*;

#[test]
fn randomized_hosts_converge_without_breaking_fencing() {
    let ids = [A, B, C, D];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..2000 {
        let mut desired = Desired::new();
        let mut host = Host::default();
        for id in ids {
            match rng.below(5) {
                0 => {}
                1 => {
                    desired.delete(id);
                }
                n => {
                    let power = if n == 2 {
                        Power::ShutOff
                    } else {
                        Power::Running
                    };
                    desired.keep(target_with(id, 1 + rng.below(3), power, rng.below(2) == 0));
                }
            }
            if rng.below(10) == 0 {
                desired.hold(id);
            }
            if rng.below(3) != 0 {
                let power = [Running, Paused, ShutOff, Crashed][rng.below(4) as usize];
                let generation = [None, Some(1), Some(2), Some(3)][rng.below(4) as usize];
                host = host.domain(id, power, generation);
            }
            for generation in 1..=3 {
                for role in DiskRole::ALL {
                    if rng.below(4) == 0 {
                        host = host.disks(id, generation, &[role]);
                    }
                }
            }
        }
        if rng.below(2) == 0 {
            host = host.base(1);
        }
        let initial = host.0.clone();
        let mut observed = host.0;
        let lease_valid = rng.below(3) != 0;
        converge(&desired, &mut observed, lease_valid);
        if !lease_valid {
            // Fenced: nothing new runs, nothing stale survives as a domain.
            for (id, server) in &observed.servers {
                if desired.is_held(id) {
                    continue;
                }
                let Some(domain) = server.domain else {
                    continue;
                };
                let was = initial.servers.get(id).and_then(|s| s.domain);
                let was =
                    was.unwrap_or_else(|| panic!("round {round}: {id} defined without a lease"));
                assert_eq!(domain.generation, was.generation, "round {round}");
                match desired.get(id) {
                    Some(Wanted::Keep(t)) => assert_eq!(domain.generation, Some(t.generation())),
                    _ => panic!("round {round}: stale or deleted {id} survived"),
                }
                if matches!(domain.power, Running | Paused) {
                    assert_eq!(
                        domain.power, was.power,
                        "round {round}: {id} started without a lease"
                    );
                }
            }
            converge(&desired, &mut observed, true);
        }
        check_final_state(&desired, &initial, &observed, round);
    }
}

/// After converging with a valid lease: held servers untouched, wanted ones in their generation
/// and power state with no other generation left, everything else gone.
fn check_final_state(desired: &Desired, initial: &Observed, observed: &Observed, round: u32) {
    for id in [A, B, C, D] {
        let now = observed.servers.get(id);
        if desired.is_held(id) {
            assert_eq!(
                now,
                initial.servers.get(id),
                "round {round}: held {id} was touched"
            );
            continue;
        }
        match desired.get(id) {
            Some(Wanted::Keep(target)) => {
                let now = now.expect("wanted server present");
                let domain = now.domain.expect("wanted server defined");
                assert_eq!(
                    domain.generation,
                    Some(target.generation()),
                    "round {round}"
                );
                let power = match target.power {
                    Power::Running => Running,
                    Power::ShutOff => ShutOff,
                };
                assert_eq!(domain.power, power, "round {round}");
                assert!(
                    now.disks.keys().all(|g| *g == target.generation()),
                    "round {round}"
                );
            }
            Some(Wanted::Delete) | None => {
                assert_eq!(now, None, "round {round}: {id} should be gone");
            }
        }
    }
}

/// A tiny deterministic generator for the randomized test (no dependency needed).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

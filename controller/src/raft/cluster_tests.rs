//! Cluster tests over the in-process harness: seeded randomized fault schedules that check the
//! Raft invariants, plus targeted partition, membership and leader-transfer scenarios.
//!
//! Reproduce one schedule with `FLOTILLA_HARNESS_SEED=<seed> cargo test -p flotilla-controller
//! randomized`; run more with `FLOTILLA_HARNESS_SEEDS=<count>`.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::harness::{create_project as create, fast_tuning, Cluster};
use super::node::{MemberChange, NodeHandle};
use crate::state::Outcome;

const CONVERGE: Duration = Duration::from_secs(30);

/// Proposes through any running node until applied, retrying with the same request id.
async fn write(
    nodes: &Mutex<Vec<NodeHandle>>,
    rng: &Mutex<StdRng>,
    rid: &str,
    name: &str,
) -> Option<Outcome> {
    for _ in 0..40 {
        let node = {
            let nodes = nodes.lock();
            if nodes.is_empty() {
                None
            } else {
                let i = rng.lock().gen_range(0..nodes.len());
                Some(nodes[i].clone())
            }
        };
        if let Some(node) = node {
            if let Ok(outcome) = node.propose(&create(rid, name)).await {
                return Some(outcome);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn running_handles(c: &Cluster) -> Vec<NodeHandle> {
    c.ids()
        .into_iter()
        .filter_map(|id| c.node(id).cloned())
        .collect()
}

/// Records (term → leader) from every status sample; two leaders in one term is a violation.
fn check_leaders(c: &Cluster, seen: &mut BTreeMap<u64, u64>, seed: u64) {
    for (term, id) in c.leaders_by_term() {
        let first = *seen.entry(term).or_insert(id);
        assert_eq!(
            first, id,
            "seed {seed}: two leaders ({first} and {id}) in term {term}"
        );
    }
}

async fn run_schedule(seed: u64) {
    let size = if seed.is_multiple_of(3) { 5 } else { 3 };
    let minority = (size - 1) / 2;
    let mut cluster = Cluster::start(size, seed, fast_tuning());
    cluster
        .wait_until(CONVERGE, "a first leader", |c| c.leader().is_some())
        .await;

    let handles = Arc::new(Mutex::new(running_handles(&cluster)));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (handles, acked, stop) = (handles.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let rng = Mutex::new(StdRng::seed_from_u64(seed * 100 + w));
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let name = format!("s{seed}-w{w}-{k}");
                match write(&handles, &rng, &format!("rid-{name}"), &name).await {
                    Some(Outcome::Project(p)) => {
                        assert_eq!(p.name, name, "seed {seed}: outcome for another request");
                        acked.lock().push(name);
                    }
                    Some(other) => panic!("seed {seed}: write {name} rejected: {other:?}"),
                    None => {} // never acknowledged: may or may not exist, both are fine
                }
            }
        }));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut leaders = BTreeMap::new();
    let mut down: BTreeSet<u64> = BTreeSet::new();
    for _step in 0..25 {
        match rng.gen_range(0..7) {
            0 if down.len() < minority as usize || (down.is_empty() && minority > 0) => {
                let victim = rng.gen_range(1..=size);
                if !down.contains(&victim) {
                    cluster.crash(victim);
                    down.insert(victim);
                }
            }
            1 => {
                if let Some(&id) = down.iter().next() {
                    cluster.restart(id);
                    down.remove(&id);
                }
            }
            2 => cluster.isolate(rng.gen_range(1..=size)),
            3 => cluster.heal(),
            4 => cluster.set_drop_percent(rng.gen_range(0..=30)),
            5 => cluster.set_max_delay_ms(rng.gen_range(0..=15)),
            _ => {
                // Kill the leader specifically: the most interesting fault.
                if let Some(l) = cluster.leader() {
                    if down.len() < minority as usize {
                        cluster.crash(l);
                        down.insert(l);
                    }
                }
            }
        }
        *handles.lock() = running_handles(&cluster);
        for _ in 0..8 {
            check_leaders(&cluster, &mut leaders, seed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    cluster.heal();
    for id in std::mem::take(&mut down) {
        cluster.restart(id);
    }
    *handles.lock() = running_handles(&cluster);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }
    cluster
        .wait_until(CONVERGE, "a leader after healing", |c| c.leader().is_some())
        .await;
    // One more write through the healed cluster commits everything before it in every log.
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    let last = write(
        &handles,
        &rng,
        &format!("final-{seed}"),
        &format!("final-{seed}"),
    )
    .await;
    assert!(
        matches!(last, Some(Outcome::Project(_))),
        "seed {seed}: healed cluster did not accept a write"
    );
    cluster
        .wait_until(CONVERGE, "replicas converge to one checksum", |c| {
            c.converged()
        })
        .await;
    check_leaders(&cluster, &mut leaders, seed);

    let acked = acked.lock().clone();
    assert!(
        !acked.is_empty(),
        "seed {seed}: no write was acknowledged at all"
    );
    for id in cluster.ids() {
        let node = cluster.node(id).expect("running");
        let state = node.state();
        for name in &acked {
            assert!(
                state.project(name).is_some(),
                "seed {seed}: acknowledged {name} missing on node {id}"
            );
        }
    }
    cluster.shutdown();
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("FLOTILLA_HARNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("FLOTILLA_HARNESS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    (1..=count).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_fault_schedules_lose_no_acknowledged_write_and_converge() {
    for seed in seeds() {
        run_schedule(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_its_minority_side_acknowledges_nothing() {
    let cluster = Cluster::start(3, 7, fast_tuning());
    cluster
        .wait_until(CONVERGE, "a leader", |c| c.leader().is_some())
        .await;
    let old = cluster.leader().expect("leader");
    cluster.isolate(old);
    let old_handle = cluster.node(old).expect("running").clone();
    // The isolated leader cannot commit: the write must fail, not be acknowledged.
    let r = old_handle
        .propose(&create("minority", "minority-write"))
        .await;
    assert!(
        r.is_err(),
        "a partitioned leader acknowledged a write: {r:?}"
    );
    cluster
        .wait_until(CONVERGE, "a new leader on the majority side", |c| {
            c.leaders_by_term().iter().any(|(_, id)| *id != old)
        })
        .await;
    let new = cluster
        .leaders_by_term()
        .into_iter()
        .find(|(_, id)| *id != old)
        .expect("new leader")
        .1;
    let out = cluster
        .node(new)
        .expect("running")
        .propose(&create("majority", "majority-write"))
        .await;
    assert!(matches!(out, Ok(Outcome::Project(_))), "{out:?}");
    cluster.heal();
    cluster
        .wait_until(CONVERGE, "convergence after healing", |c| c.converged())
        .await;
    let state = old_handle.state();
    assert!(state.project("majority-write").is_some());
    drop(state);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_from_a_snapshot_and_members_can_be_removed() {
    let mut tuning = fast_tuning();
    tuning.snapshot_interval = 20;
    tuning.log_retention = 5;
    let mut cluster = Cluster::start(3, 11, tuning);
    cluster
        .wait_until(CONVERGE, "a leader", |c| c.leader().is_some())
        .await;
    let leader = cluster
        .node(cluster.leader().expect("leader"))
        .expect("running")
        .clone();
    for i in 0..60 {
        let out = leader
            .propose(&create(&format!("r{i}"), &format!("p{i}")))
            .await;
        assert!(matches!(out, Ok(Outcome::Project(_))), "{out:?}");
    }
    assert!(leader.status().first_log_index > 1, "the log was compacted");

    let joining = cluster.start_joining(4);
    let out = leader
        .change_members(MemberChange::Add(joining.clone()))
        .await;
    assert!(matches!(out, Ok(Outcome::Members(_))), "{out:?}");
    cluster
        .wait_until(CONVERGE, "node 4 catches up", |c| c.converged())
        .await;
    let n4 = cluster.node(4).expect("running").clone();
    assert!(n4.state().project("p59").is_some());
    assert!(
        n4.state().member(4).is_some(),
        "the new member is in replicated membership"
    );

    // A follower (not the leader) leaves; the cluster keeps committing with the rest.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader.id() && *id != 4)
        .expect("a follower");
    let out = leader.change_members(MemberChange::Remove(follower)).await;
    assert!(matches!(out, Ok(Outcome::Members(_))), "{out:?}");
    cluster.crash(follower);
    let out = leader
        .propose(&create("after-remove", "after-remove"))
        .await;
    assert!(matches!(out, Ok(Outcome::Project(_))), "{out:?}");
    assert!(!leader.status().voters.contains(&follower));

    // Removing the leader itself is refused with advice.
    let refused = leader
        .change_members(MemberChange::Remove(leader.id()))
        .await;
    assert!(
        matches!(refused, Err(super::NodeError::MembershipRefused(_))),
        "{refused:?}"
    );
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_requested_member() {
    let cluster = Cluster::start(3, 5, fast_tuning());
    cluster
        .wait_until(CONVERGE, "a leader", |c| c.leader().is_some())
        .await;
    let leader = cluster.leader().expect("leader");
    let target = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("another member");
    let handle = cluster.node(leader).expect("running").clone();
    let moved = handle.transfer_leader(target).await;
    assert_eq!(moved, Ok(target));
    cluster
        .wait_until(CONVERGE, "the target leads", |c| c.leader() == Some(target))
        .await;
    // A follower asked to transfer says who leads instead.
    let follower = cluster.node(leader).expect("running").clone();
    assert!(matches!(
        follower.transfer_leader(leader).await,
        Err(super::NodeError::NotLeader { .. })
    ));
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_its_state_from_disk() {
    let mut tuning = fast_tuning();
    tuning.snapshot_interval = 15;
    let mut cluster = Cluster::start(3, 3, tuning);
    cluster
        .wait_until(CONVERGE, "a leader", |c| c.leader().is_some())
        .await;
    let leader = cluster
        .node(cluster.leader().expect("leader"))
        .expect("running")
        .clone();
    for i in 0..40 {
        leader
            .propose(&create(&format!("r{i}"), &format!("p{i}")))
            .await
            .expect("write");
    }
    cluster
        .wait_until(CONVERGE, "convergence", |c| c.converged())
        .await;
    let before = leader.state().checksum();
    for id in cluster.ids() {
        cluster.crash(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster
        .wait_until(CONVERGE, "a leader after a full restart", |c| {
            c.leader().is_some()
        })
        .await;
    cluster
        .wait_until(CONVERGE, "convergence after restart", |c| c.converged())
        .await;
    let node = cluster.node(1).expect("running").clone();
    assert!(node.state().project("p39").is_some());
    assert_eq!(node.state().project_count(), 40);
    assert_ne!(node.state().checksum(), "", "{before}");
    cluster.shutdown();
}

//! Process tests (test layer 3): real `flotilla-controller` binaries on loopback, killed with
//! SIGKILL, stopped with SIGTERM, restarted on the same data, joined and removed live, with and
//! without TLS. Each test starts its own cluster in its own temporary directory; the harness
//! (`support`) kills every process it started and deletes the directory, also when a test fails.
//!
//! Timing: convergence waits have generous deadlines (they only cost time when something is
//! wrong); the one timing assertion is the 2 s leader failover bound, measured from just before
//! the SIGKILL to the acknowledgement of the first write *sent* after it.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_proto::v1::flavor_service_client::FlavorServiceClient;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use futures::StreamExt as _;
use support::{request_id, wait_for, with_token, Client, Cluster, Options, ADMIN_PROJECT};
use tonic::Code;

/// Start-up: processes start, elect a leader, apply the bootstrap membership.
const READY: Duration = Duration::from_secs(20);
/// Replicas catching up (including a streamed snapshot).
const CONVERGE: Duration = Duration::from_secs(20);
/// One client call, all retries included.
const CALL: Duration = Duration::from_secs(20);
/// The leader failover bound under test.
const FAILOVER_BOUND: Duration = Duration::from_secs(2);

/// Creates `n` projects named `{prefix}-{i}`, `parallel` at a time; panics on any failure.
async fn create_projects(
    client: &Client,
    prefix: &str,
    n: usize,
    parallel: usize,
) -> Vec<pb::Project> {
    let mut created: Vec<pb::Project> = futures::stream::iter(0..n)
        .map(|i| async move {
            let name = format!("{prefix}-{i:04}");
            let acked = client
                .create_project(&request_id(), &name, CALL)
                .await
                .unwrap_or_else(|e| panic!("creating project {name} failed: {e:?}"));
            assert_eq!(
                acked.value.name, name,
                "the answer describes the project that was asked for"
            );
            acked.value
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    created.sort_by(|a, b| a.name.cmp(&b.name));
    created
}

fn by_name(projects: &[pb::Project]) -> BTreeMap<String, pb::Project> {
    let mut map = BTreeMap::new();
    for p in projects {
        assert!(
            map.insert(p.name.clone(), p.clone()).is_none(),
            "project name {:?} listed twice",
            p.name
        );
    }
    map
}

/// One acknowledged write of the load generator.
#[derive(Debug, Clone)]
struct Ack {
    name: String,
    id: String,
    node: u64,
    attempt_sent: Instant,
    acked_at: Instant,
}

#[derive(Default)]
struct Ledger {
    attempted: BTreeSet<String>,
    acked: Vec<Ack>,
    failures: Vec<String>,
}

/// Concurrent writers creating uniquely named projects until stopped, recording every
/// acknowledged name. A write whose outcome is unknown is retried with the same request id.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Cluster, writers: usize, attempt_timeout: Duration) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let client = cluster
                    .client()
                    .with_attempt_timeout(attempt_timeout)
                    .starting_at(w);
                let (ledger, stop) = (ledger.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let name = format!("load-w{w}-{i:05}");
                        ledger.lock().unwrap().attempted.insert(name.clone());
                        match client.create_project(&request_id(), &name, CALL).await {
                            Ok(a) if a.value.name == name => {
                                ledger.lock().unwrap().acked.push(Ack {
                                    name,
                                    id: a.value.id,
                                    node: a.node,
                                    attempt_sent: a.attempt_sent,
                                    acked_at: a.acked_at,
                                })
                            }
                            Ok(a) => ledger.lock().unwrap().failures.push(format!(
                                "creating {name} was answered by n{} with another project: {:?}",
                                a.node, a.value
                            )),
                            Err(e) => {
                                ledger
                                    .lock()
                                    .unwrap()
                                    .failures
                                    .push(format!("creating {name} failed: {e:?}"));
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            writers,
        }
    }

    fn acked_count(&self, pred: impl Fn(&Ack) -> bool) -> usize {
        self.ledger
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|a| pred(a))
            .count()
    }

    fn assert_no_failures(&self) {
        let l = self.ledger.lock().unwrap();
        assert!(l.failures.is_empty(), "writers failed: {:?}", l.failures);
    }

    /// Waits until `n` acknowledgements satisfy `pred`.
    async fn wait_acks(&self, n: usize, what: &str, pred: impl Fn(&Ack) -> bool) {
        wait_for(CONVERGE, what, || async {
            self.assert_no_failures();
            let got = self.acked_count(&pred);
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} of {n} acknowledgements"))
            }
        })
        .await
    }

    async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers {
            tokio::time::timeout(CALL + Duration::from_secs(5), w)
                .await
                .expect("a writer stops within its call deadline")
                .expect("writer task");
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .expect("writers are gone")
            .into_inner()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_write_load_loses_no_acknowledged_write_and_fails_over_within_2s()
{
    let _serial = support::serial().await;
    let cluster = Cluster::start(Options::default());
    let all = [1, 2, 3];
    let old_leader = cluster.wait_ready(&all, READY).await;
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != old_leader).collect();

    // Short attempt deadlines: a request stuck on the dead leader is abandoned and retried.
    let load = Load::start(&cluster, 4, Duration::from_millis(750));
    load.wait_acks(40, "write load established", |_| true).await;

    let killed_at = Instant::now();
    cluster.kill(old_leader);
    load.wait_acks(1, "a write sent after the kill to be acknowledged", |a| {
        a.attempt_sent >= killed_at
    })
    .await;
    let new_leader = cluster.wait_leader(&survivors, READY).await;
    assert_ne!(new_leader, old_leader);

    // Keep writing a bit on two nodes, then restart the old leader on its data, under load.
    load.wait_acks(60, "writes on the surviving pair", |a| {
        a.attempt_sent >= killed_at
    })
    .await;
    cluster.restart(old_leader);
    let restarted_at = Instant::now();
    load.wait_acks(40, "writes after the old leader restarted", |a| {
        a.attempt_sent >= restarted_at
    })
    .await;
    let ledger = load.stop().await;
    assert!(
        ledger.failures.is_empty(),
        "writers failed: {:?}",
        ledger.failures
    );

    let first_after_kill = ledger
        .acked
        .iter()
        .filter(|a| a.attempt_sent >= killed_at)
        .min_by_key(|a| a.acked_at)
        .expect("acknowledged writes after the kill");
    let failover = first_after_kill.acked_at - killed_at;
    assert!(
        survivors.contains(&first_after_kill.node),
        "the first write after the kill was acknowledged by a surviving node"
    );

    // Every acknowledged write is there, exactly once, with the id the client was given; nothing
    // appears that nobody asked for.
    let statuses = cluster.wait_converged(&all, CONVERGE).await;
    let listed = by_name(&cluster.client().list_projects(CALL).await);
    for a in &ledger.acked {
        let p = listed.get(&a.name).unwrap_or_else(|| {
            panic!(
                "acknowledged project {} (acked by n{}) is missing",
                a.name, a.node
            )
        });
        assert_eq!(
            p.id, a.id,
            "project {} has the id its acknowledgement carried",
            a.name
        );
    }
    for name in listed.keys().filter(|n| *n != ADMIN_PROJECT) {
        assert!(
            ledger.attempted.contains(name),
            "project {name} was never asked for"
        );
    }
    println!(
        "leader n{old_leader} killed; n{new_leader} leads; first write sent after the kill acknowledged \
         after {failover:?}; {} writes acknowledged, {} projects stored; replicas at {}",
        ledger.acked.len(),
        listed.len(),
        support::describe(&statuses)
    );
    assert!(
        failover < FAILOVER_BOUND,
        "the first write sent after killing the leader was acknowledged {failover:?} after the kill \
         (bound {FAILOVER_BOUND:?})"
    );
}

#[derive(Debug, Clone, Copy)]
enum StopHow {
    /// SIGTERM, and the controller must exit cleanly.
    Terminate,
    /// SIGKILL.
    Kill,
}

/// Writes projects and a flavor, stops every controller, starts them again on the same data, and
/// checks that the data, the revision and replica agreement survived and that writes work.
async fn restart_all_recovers(opts: Options, how: StopHow) {
    let _serial = support::serial().await;
    let compacting = opts.snapshot_interval.is_some();
    let cluster = Cluster::start(opts);
    let all = [1, 2, 3];
    cluster.wait_ready(&all, READY).await;
    let client = cluster.client();

    let created = create_projects(&client, "keep", 150, 8).await;
    let flavor_req = pb::CreateFlavorRequest {
        request_id: request_id(),
        name: "m1.small".into(),
        vcpus: 2,
        ram_mib: 2048,
        disk_gib: 20,
        description: "survives restarts".into(),
        ..Default::default()
    };
    let flavor = client
        .call(CALL, |ch| {
            let r = cluster.authed(flavor_req.clone());
            async move { FlavorServiceClient::new(ch).create_flavor(r).await }
        })
        .await
        .expect("create flavor")
        .value;

    let mut before = cluster.wait_converged(&all, CONVERGE).await;
    if compacting {
        // Make sure recovery needs both the snapshot and a log tail after it.
        let mut extra = 0;
        while before.iter().any(|s| s.applied_index <= s.snapshot_index) {
            extra += 1;
            assert!(
                extra < 5,
                "applied index keeps equal to the snapshot index: {}",
                support::describe(&before)
            );
            create_projects(&client, &format!("tail{extra}"), 1, 1).await;
            before = cluster.wait_converged(&all, CONVERGE).await;
        }
        for s in &before {
            assert!(
                s.snapshot_index > 0 && s.first_log_index > 1,
                "n{} took a snapshot and compacted its log: {}",
                s.id,
                support::describe(&before)
            );
        }
    }
    let projects_before = client.list_projects(CALL).await;
    assert!(projects_before.len() >= created.len());
    let names_before = by_name(&projects_before);
    for p in &created {
        assert_eq!(
            names_before.get(&p.name),
            Some(p),
            "project {} as created",
            p.name
        );
    }

    for id in all {
        match how {
            StopHow::Kill => cluster.kill(id),
            StopHow::Terminate => {
                let status = cluster.terminate(id, Duration::from_secs(10)).await;
                assert!(
                    status.success(),
                    "n{id} exits cleanly on SIGTERM, got {status}"
                );
            }
        }
    }
    for id in all {
        cluster.restart(id);
    }
    cluster.wait_ready(&all, READY).await;
    let after = cluster.wait_converged(&all, CONVERGE).await;

    for s in &after {
        assert_eq!(
            s.revision, before[0].revision,
            "n{} recovered the revision",
            s.id
        );
        assert!(
            s.applied_index >= before[0].applied_index,
            "n{} recovered the applied index",
            s.id
        );
        if compacting {
            assert!(
                s.snapshot_index > 0 && s.first_log_index > 1,
                "n{} recovered from its snapshot (its log starts after index 1): {}",
                s.id,
                support::describe(&after)
            );
        }
    }
    assert_eq!(
        client.list_projects(CALL).await,
        projects_before,
        "projects after restarting every controller"
    );
    let flavor_after = client
        .call(CALL, |ch| {
            let r = pb::GetFlavorRequest {
                flavor: "m1.small".into(),
                stale: false,
            };
            let r = cluster.authed(r);
            async move { FlavorServiceClient::new(ch).get_flavor(r).await }
        })
        .await
        .expect("get flavor")
        .value;
    assert_eq!(
        flavor_after, flavor,
        "flavor after restarting every controller"
    );

    // Writes work again, on every replica.
    create_projects(&client, "after-restart", 5, 5).await;
    cluster.wait_converged(&all, CONVERGE).await;
    assert_eq!(
        client.list_projects(CALL).await.len(),
        projects_before.len() + 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_controller_recovers_state_by_replaying_the_log() {
    restart_all_recovers(Options::default(), StopHow::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_controller_after_sigkill_recovers_state_from_snapshot_and_log_tail() {
    let opts = Options {
        snapshot_interval: Some(40),
        log_retention: Some(10),
        ..Options::default()
    };
    restart_all_recovers(opts, StopHow::Kill).await;
}

/// The leader's client address from an UNAVAILABLE answer.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(flotilla_proto::LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn member_ids_listed_by(client: &Client, node: u64) -> BTreeSet<u64> {
    client
        .only(node)
        .call(CALL, |ch| {
            let r = client.authed(pb::ListMembersRequest { stale: false });
            async move { ClusterServiceClient::new(ch).list_members(r).await }
        })
        .await
        .unwrap_or_else(|e| panic!("ListMembers on n{node}: {e:?}"))
        .value
        .members
        .iter()
        .map(|m| m.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_from_a_streamed_snapshot_a_follower_is_removed_and_leadership_moves() {
    let _serial = support::serial().await;
    let mut cluster = Cluster::start(Options {
        snapshot_interval: Some(30),
        log_retention: Some(5),
        ..Options::default()
    });
    let leader = cluster.wait_ready(&[1, 2, 3], READY).await;
    let client = cluster.client_of(&[1, 2, 3]);
    create_projects(&client, "before-join", 100, 8).await;
    let before = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for s in &before {
        assert!(
            s.first_log_index > 1,
            "n{} compacted its log, so a new member needs a snapshot: {}",
            s.id,
            support::describe(&before)
        );
    }

    // n4 starts empty with join = true and waits to be added.
    let n4 = cluster.start_joining_node(4);
    // It starts empty: it knows no signing key yet, so it cannot check the admin's token and
    // says so with UNAVAILABLE (clients retry elsewhere) rather than UNAUTHENTICATED.
    let refused = wait_for(READY, "n4 answering while not yet a member", || async {
        cluster.assert_alive();
        match cluster.member_status(4).await {
            Err(e) if e.code() == Code::Unavailable && e.message().contains("catching up") => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("n4 before it is added: {refused:?}");

    let add = pb::AddMemberRequest {
        request_id: request_id(),
        id: 4,
        name: n4.name.clone(),
        client_address: n4.client_address.clone(),
        peer_address: n4.peer_address.clone(),
    };
    // A follower refuses membership changes and names the leader.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let refused = client
        .once(follower, |ch| {
            let r = cluster.authed(add.clone());
            async move { ClusterServiceClient::new(ch).add_member(r).await }
        })
        .await
        .expect_err("a follower does not change membership");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        leader_hint(&refused).as_deref(),
        Some(cluster.node(leader).client_address.as_str()),
        "{refused:?}"
    );

    // The leader adds n4 (the client follows the hint); n4 catches up from a snapshot.
    let members = client
        .call(CALL, |ch| {
            let r = cluster.authed(add.clone());
            async move { ClusterServiceClient::new(ch).add_member(r).await }
        })
        .await
        .expect("add n4")
        .value;
    let caught_up = cluster.wait_converged(&[1, 2, 3, 4], CONVERGE).await;
    let s4 = caught_up.iter().find(|s| s.id == 4).unwrap();
    assert!(
        s4.snapshot_index > 0,
        "n4 installed a snapshot from the leader: {}",
        support::describe(&caught_up)
    );
    for id in [1, 2, 3, 4] {
        let listed = cluster
            .client()
            .only(id)
            .call(CALL, |ch| {
                let r = cluster.authed(pb::ListMembersRequest { stale: false });
                async move { ClusterServiceClient::new(ch).list_members(r).await }
            })
            .await
            .unwrap_or_else(|e| panic!("ListMembers on n{id}: {e:?}"))
            .value;
        let voters: BTreeSet<u64> = listed
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        assert_eq!(
            voters,
            BTreeSet::from([1, 2, 3, 4]),
            "voters listed by n{id}"
        );
    }
    // The answer to AddMember describes the membership after the change.
    assert!(
        members.members.iter().any(|m| m.id == 4 && m.voter),
        "the AddMember answer lists n4 as a voting member: {members:?}"
    );

    // Writes through the new member, then everyone agrees again.
    create_projects(&cluster.client_of(&[4]), "via-n4", 20, 4).await;
    cluster.wait_converged(&[1, 2, 3, 4], CONVERGE).await;

    // Remove a follower that is not n4; the cluster keeps three members and keeps writing.
    let leader = cluster.wait_leader(&[1, 2, 3, 4], READY).await;
    let removed = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let rm = pb::RemoveMemberRequest {
        request_id: request_id(),
        id: removed,
    };
    let members = client
        .call(CALL, |ch| {
            let r = cluster.authed(rm.clone());
            async move { ClusterServiceClient::new(ch).remove_member(r).await }
        })
        .await
        .expect("remove a follower")
        .value;
    assert!(
        !members.members.iter().any(|m| m.id == removed),
        "n{removed} is no longer listed: {members:?}"
    );
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .collect();
    let client = cluster.client_of(&remaining);
    create_projects(&client, "after-remove", 20, 4).await;
    // The removed controller still runs here: it must not disturb the others.
    cluster.wait_ready(&remaining, READY).await;
    for id in &remaining {
        assert_eq!(
            member_ids_listed_by(&client, *id).await,
            remaining.iter().copied().collect::<BTreeSet<_>>(),
            "ListMembers on n{id}"
        );
    }
    cluster.wait_converged(&remaining, CONVERGE).await;
    cluster.kill(removed);

    // Move leadership to a chosen follower (the newcomer if it is not leading already).
    let leader = cluster.wait_leader(&remaining, READY).await;
    let target = if leader != 4 { 4 } else { remaining[0] };
    client
        .call(CALL, |ch| {
            let r = cluster.authed(pb::TransferLeaderRequest { target_id: target });
            async move { ClusterServiceClient::new(ch).transfer_leader(r).await }
        })
        .await
        .expect("transfer leadership");
    let now_leading = cluster.wait_leader(&remaining, READY).await;
    assert_eq!(now_leading, target, "leadership moved to n{target}");
    create_projects(&client, "after-transfer", 10, 4).await;
    cluster.wait_converged(&remaining, CONVERGE).await;
    let listed = client.list_projects(CALL).await;
    assert_eq!(
        listed.len(),
        1 + 100 + 20 + 20 + 10,
        "the admin project and ours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_a_client_trusting_the_cluster_ca_writes_and_plaintext_or_foreign_ca_clients_are_refused(
) {
    let _serial = support::serial().await;
    let cluster = Cluster::start(Options {
        tls: true,
        ..Options::default()
    });
    let all = [1, 2, 3];
    // Peers reach each other over mutual TLS, or no leader would be elected and agreed on.
    cluster.wait_ready(&all, READY).await;
    let tls = cluster.tls().expect("tls material").clone();

    let ca_only = cluster.client_with_tls(Some(tls.client_config(None)));
    ca_only
        .create_project(&request_id(), "tls-ca-only", CALL)
        .await
        .expect("write with a CA-trusting client");
    let with_cert = cluster.client_with_tls(Some(tls.client_config(Some("admin"))));
    with_cert
        .create_project(&request_id(), "tls-client-cert", CALL)
        .await
        .expect("write with a client certificate");
    cluster.wait_converged(&all, CONVERGE).await;

    // A plaintext client gets no answer from a TLS listener.
    let plain = cluster.client_with_tls(None);
    for id in all {
        let err = plain
            .once(id, |ch| {
                let r = cluster.authed(pb::CreateProjectRequest {
                    request_id: request_id(),
                    name: "tls-plaintext".into(),
                    ..Default::default()
                });
                async move { IdentityServiceClient::new(ch).create_project(r).await }
            })
            .await
            .expect_err("a plaintext client is refused");
        assert_ne!(err.code(), Code::Ok);
        println!("plaintext client to n{id}: {err:?}");
    }

    // A client trusting another CA refuses the controllers' certificates.
    let other_dir = tls.dir.parent().unwrap().join("other-ca");
    let out = std::process::Command::new(support::BIN)
        .arg("gen-certs")
        .arg("--dir")
        .arg(&other_dir)
        .args(["--client", "stranger"])
        .output()
        .expect("gen-certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign = support::TlsFiles {
        ca: other_dir.join("ca.pem"),
        dir: other_dir,
    };
    let err = cluster
        .client_with_tls(Some(foreign.client_config(Some("stranger"))))
        .once(1, |ch| {
            let r = cluster.authed(pb::CreateProjectRequest {
                request_id: request_id(),
                name: "tls-foreign-ca".into(),
                ..Default::default()
            });
            async move { IdentityServiceClient::new(ch).create_project(r).await }
        })
        .await
        .expect_err("a client trusting another CA is refused");
    println!("foreign-CA client: {err:?}");

    let names: BTreeSet<String> = ca_only
        .list_projects(CALL)
        .await
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(
        names,
        [ADMIN_PROJECT, "tls-ca-only", "tls-client-cert"]
            .into_iter()
            .map(String::from)
            .collect(),
        "only the TLS clients' writes happened (next to the bootstrap admin project)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_have_the_right_codes_and_a_retried_request_id_returns_the_original_result() {
    let _serial = support::serial().await;
    let cluster = Cluster::start(Options::default());
    let all = [1, 2, 3];
    let leader = cluster.wait_ready(&all, READY).await;
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let client = cluster.client();
    let create = |rid: &str, name: &str| pb::CreateProjectRequest {
        request_id: rid.to_owned(),
        name: name.to_owned(),
        ..Default::default()
    };

    // Credentials: only user tokens from Login authenticate; a static admin token like the
    // retired `bootstrap_admin_token` is refused with a pointer to `flotilla login`.
    for (what, token, says) in [
        (
            "a static token",
            Some("process-test-admin-token-0123456789"),
            "flotilla login",
        ),
        ("a forged user token", Some("flt1.forged.token"), ""),
        ("no token", None, "flotilla login"),
    ] {
        let req = create(&request_id(), "never-created");
        let err = client
            .once(followers[0], |ch| async move {
                let req = match token {
                    Some(t) => with_token(req, t),
                    None => tonic::Request::new(req),
                };
                IdentityServiceClient::new(ch).create_project(req).await
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {err:?}");
        let err = client
            .once(leader, |ch| async move {
                let req = pb::ListProjectsRequest::default();
                let req = match token {
                    Some(t) => with_token(req, t),
                    None => tonic::Request::new(req),
                };
                IdentityServiceClient::new(ch).list_projects(req).await
            })
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{what} on a read: {err:?}"
        );
    }

    // Validation, with a message a person can act on.
    let err = client
        .create_project(&request_id(), "", CALL)
        .await
        .expect_err("empty name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("name") && err.message().contains("empty"),
        "readable message: {err:?}"
    );

    // A name taken is ALREADY_EXISTS, naming the name.
    let original = client
        .create_project(&request_id(), "dup", CALL)
        .await
        .expect("create dup")
        .value;
    let err = client
        .create_project(&request_id(), "dup", CALL)
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("dup"), "{err:?}");

    // A retried request id returns the original result from every controller, even when the
    // retry differs, and creates nothing twice.
    let rid = request_id();
    let first = client
        .only(followers[0])
        .call(CALL, |ch| {
            let r = cluster.authed(create(&rid, "retried"));
            async move { IdentityServiceClient::new(ch).create_project(r).await }
        })
        .await
        .expect("first attempt")
        .value;
    for node in [leader, followers[1], followers[0]] {
        let again = client
            .only(node)
            .call(CALL, |ch| {
                let r = cluster.authed(create(&rid, "retried"));
                async move { IdentityServiceClient::new(ch).create_project(r).await }
            })
            .await
            .unwrap_or_else(|e| panic!("retry on n{node}: {e:?}"))
            .value;
        assert_eq!(
            again, first,
            "a retry on n{node} returns the original project"
        );
    }
    let changed = client
        .only(leader)
        .call(CALL, |ch| {
            let r = cluster.authed(create(&rid, "retried-with-another-name"));
            async move { IdentityServiceClient::new(ch).create_project(r).await }
        })
        .await
        .expect("retry with a changed body")
        .value;
    assert_eq!(changed, first, "the request id decides, not the body");
    // The outcome of a rejected request is remembered too.
    let rejected_rid = request_id();
    for _ in 0..2 {
        let err = client
            .create_project(&rejected_rid, "dup", CALL)
            .await
            .expect_err("duplicate");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }
    // Reusing a request id for another kind of operation is refused.
    let err = client
        .call(CALL, |ch| {
            let r = pb::CreateFlavorRequest {
                request_id: rid.clone(),
                name: "tiny".into(),
                vcpus: 1,
                ram_mib: 512,
                ..Default::default()
            };
            let r = cluster.authed(r);
            async move { FlavorServiceClient::new(ch).create_flavor(r).await }
        })
        .await
        .expect_err("request id reused for a flavor");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("request id"), "{err:?}");

    cluster.wait_converged(&all, CONVERGE).await;
    let listed = client.list_projects(CALL).await;
    let names: Vec<&str> = listed
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| *n != ADMIN_PROJECT)
        .collect();
    assert_eq!(
        names.len(),
        2,
        "exactly the two created projects besides the admin project: {names:?}"
    );
    let listed = by_name(&listed);
    assert_eq!(listed["dup"], original);
    assert_eq!(listed["retried"], first);
    let flavors = client
        .call(CALL, |ch| {
            let r = cluster.authed(pb::ListFlavorsRequest::default());
            async move { FlavorServiceClient::new(ch).list_flavors(r).await }
        })
        .await
        .expect("list flavors")
        .value;
    assert!(
        flavors.flavors.is_empty(),
        "no flavor was created: {flavors:?}"
    );
}

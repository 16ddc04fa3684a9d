//! Process tests of identity across controllers: real `flotilla-controller` binaries on
//! loopback with a bootstrap `admin` user. A token issued by one controller is verified by every
//! controller against replicated state (signing keys, revocations, users, role assignments), so
//! revoking a token, disabling a user or removing a role must take effect on all of them.
//!
//! Every test starts its own cluster (the harness kills the processes and deletes the directory
//! on drop, also when the test fails) and waits with deadlines, never with bare sleeps.
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::flavor_service_client::FlavorServiceClient;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use flotilla_proto::v1::quota_service_client::QuotaServiceClient;
use support::{request_id, wait_for, with_token, Client, Cluster, Options};
use tonic::{Code, Status};

/// Start-up: processes start, elect a leader, apply the bootstrap membership.
const READY: Duration = Duration::from_secs(20);
/// The bootstrap `admin` user exists and can log in.
const BOOTSTRAP: Duration = Duration::from_secs(20);
/// One client call, all retries included.
const CALL: Duration = Duration::from_secs(20);
/// A revocation, a disabled user or a removed role reaching every controller.
const PROPAGATE: Duration = Duration::from_secs(10);
/// Replicas catching up after the setup writes.
const CONVERGE: Duration = Duration::from_secs(20);

const ALICE_PASSWORD: &str = "alice-password-1234";
const BOB_PASSWORD: &str = "bob-password-5678";
const ALL: [u64; 3] = [1, 2, 3];

/// A running 3-node cluster with projects `team-a` and `team-b`, alice (member of team-a) and
/// bob (reader of team-b), applied on every controller.
struct Fixture {
    cluster: Cluster,
    client: Client,
    /// The `admin` user's token (from Login on node 1).
    admin: String,
    team_a: pb::Project,
    team_b: pb::Project,
    alice: pb::User,
    bob: pb::User,
}

/// Login at one controller, one attempt (a retry would count twice towards the throttle).
async fn login(
    client: &Client,
    node: u64,
    user: &str,
    password: &str,
) -> Result<pb::Token, Status> {
    let req = pb::LoginRequest {
        user: user.to_owned(),
        password: password.to_owned(),
        project: String::new(),
    };
    client
        .once(node, |ch| async move {
            IdentityServiceClient::new(ch).login(req).await
        })
        .await
}

/// Login at one controller, retrying only while it is unavailable; panics on failure.
async fn login_ok(client: &Client, node: u64, user: &str, password: &str) -> pb::Token {
    wait_for(CALL, &format!("{user} logged in at n{node}"), || async {
        match login(client, node, user, password).await {
            Ok(t) => Ok(t),
            Err(e) if e.code() == Code::Unavailable => Err(format!("{e:?}")),
            Err(e) => panic!("login of {user} at n{node} failed: {e:?}"),
        }
    })
    .await
}

async fn create_project(client: &Client, admin: &str, name: &str) -> pb::Project {
    let req = pb::CreateProjectRequest {
        request_id: request_id(),
        name: name.to_owned(),
        description: format!("{name} of the identity process tests"),
        ..Default::default()
    };
    client
        .call(CALL, |ch| {
            let req = with_token(req.clone(), admin);
            async move { IdentityServiceClient::new(ch).create_project(req).await }
        })
        .await
        .unwrap_or_else(|e| panic!("creating project {name} failed: {e:?}"))
        .value
}

async fn create_user(
    client: &Client,
    admin: &str,
    name: &str,
    password: &str,
    project: &pb::Project,
    role: &str,
) -> pb::User {
    let req = pb::CreateUserRequest {
        request_id: request_id(),
        name: name.to_owned(),
        email: format!("{name}@example.test"),
        password: password.to_owned(),
        enabled: None,
        default_project: project.name.clone(),
    };
    let user = client
        .call(CALL, |ch| {
            let req = with_token(req.clone(), admin);
            async move { IdentityServiceClient::new(ch).create_user(req).await }
        })
        .await
        .unwrap_or_else(|e| panic!("creating user {name} failed: {e:?}"))
        .value;
    let req = pb::AddRoleAssignmentRequest {
        request_id: request_id(),
        user: name.to_owned(),
        project: project.name.clone(),
        role: role.to_owned(),
    };
    client
        .call(CALL, |ch| {
            let req = with_token(req.clone(), admin);
            async move {
                IdentityServiceClient::new(ch)
                    .add_role_assignment(req)
                    .await
            }
        })
        .await
        .unwrap_or_else(|e| panic!("giving {name} the {role} role failed: {e:?}"));
    user
}

async fn setup() -> Fixture {
    let cluster = Cluster::start(Options::default());
    // The first leader creates `admin` once it leads and the members are recorded; the harness
    // logs in as `admin` (retrying until then) before it waits for the cluster to be ready.
    cluster.login_admin(&ALL, BOOTSTRAP).await;
    cluster.wait_ready(&ALL, READY).await;
    let client = cluster.client();
    let admin = cluster.admin_token().to_owned();
    let team_a = create_project(&client, &admin, "team-a").await;
    let team_b = create_project(&client, &admin, "team-b").await;
    let alice = create_user(&client, &admin, "alice", ALICE_PASSWORD, &team_a, "member").await;
    let bob = create_user(&client, &admin, "bob", BOB_PASSWORD, &team_b, "reader").await;
    // Tokens are checked against each controller's applied state: let every replica apply the
    // setup before tokens are used on followers.
    cluster.wait_converged(&ALL, CONVERGE).await;
    for node in ALL {
        let me = who_am_i(&client, node, &admin)
            .await
            .unwrap_or_else(|e| panic!("WhoAmI as admin at n{node}: {e:?}"));
        assert_eq!(me.user_name, "admin", "at n{node}");
        assert_eq!(
            me.roles.first().map(String::as_str),
            Some("admin"),
            "the bootstrap user is cluster admin at n{node}: {me:?}"
        );
    }
    Fixture {
        cluster,
        client,
        admin,
        team_a,
        team_b,
        alice,
        bob,
    }
}

async fn get_project(
    client: &Client,
    node: u64,
    token: &str,
    project: &str,
) -> Result<pb::Project, Status> {
    let req = with_token(
        pb::GetProjectRequest {
            project: project.to_owned(),
            stale: false,
        },
        token,
    );
    client
        .once(node, |ch| async move {
            IdentityServiceClient::new(ch).get_project(req).await
        })
        .await
}

async fn list_project_names(client: &Client, node: u64, token: &str) -> Vec<String> {
    let req = with_token(pb::ListProjectsRequest::default(), token);
    let page = client
        .once(node, |ch| async move {
            IdentityServiceClient::new(ch).list_projects(req).await
        })
        .await
        .unwrap_or_else(|e| panic!("ListProjects at n{node} failed: {e:?}"));
    assert!(page.next_page_token.is_empty(), "one page: {page:?}");
    page.projects.into_iter().map(|p| p.name).collect()
}

async fn who_am_i(client: &Client, node: u64, token: &str) -> Result<pb::Identity, Status> {
    let req = with_token(pb::WhoAmIRequest {}, token);
    client
        .once(node, |ch| async move {
            IdentityServiceClient::new(ch).who_am_i(req).await
        })
        .await
}

async fn list_flavor_names(client: &Client, node: u64, token: &str) -> BTreeSet<String> {
    let req = with_token(pb::ListFlavorsRequest::default(), token);
    let page = client
        .once(node, |ch| async move {
            FlavorServiceClient::new(ch).list_flavors(req).await
        })
        .await
        .unwrap_or_else(|e| panic!("ListFlavors at n{node} failed: {e:?}"));
    assert!(page.next_page_token.is_empty(), "one page: {page:?}");
    page.flavors.into_iter().map(|f| f.name).collect()
}

async fn get_quota(
    client: &Client,
    node: u64,
    token: &str,
    project: &str,
) -> Result<pb::Quota, Status> {
    let req = with_token(
        pb::GetQuotaRequest {
            project: project.to_owned(),
            stale: false,
        },
        token,
    );
    client
        .once(node, |ch| async move {
            QuotaServiceClient::new(ch).get_quota(req).await
        })
        .await
}

async fn set_quota_instances(
    client: &Client,
    token: &str,
    project: &str,
    instances: i64,
) -> Result<pb::Quota, Status> {
    let req = pb::SetQuotaRequest {
        request_id: request_id(),
        project: project.to_owned(),
        instances: Some(instances),
        ..Default::default()
    };
    client
        .call(CALL, |ch| {
            let req = with_token(req.clone(), token);
            async move { QuotaServiceClient::new(ch).set_quota(req).await }
        })
        .await
        .map(|a| a.value)
}

async fn update_user_enabled(client: &Client, node: u64, admin: &str, user: &str, enabled: bool) {
    let req = pb::UpdateUserRequest {
        request_id: request_id(),
        user: user.to_owned(),
        enabled: Some(enabled),
        ..Default::default()
    };
    let u = client
        .only(node)
        .call(CALL, |ch| {
            let req = with_token(req.clone(), admin);
            async move { IdentityServiceClient::new(ch).update_user(req).await }
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateUser {user} enabled={enabled} at n{node}: {e:?}"))
        .value;
    assert_eq!(u.enabled, enabled, "{u:?}");
}

/// Polls every controller until `check` accepts its answer (each within `PROPAGATE`).
async fn on_every_node<T, F, Fut>(
    what: &str,
    mut probe: F,
    check: impl Fn(&Result<T, Status>) -> bool,
) where
    T: std::fmt::Debug,
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    for node in ALL {
        wait_for(PROPAGATE, &format!("{what} at n{node}"), || {
            let fut = probe(node);
            let check = &check;
            async move {
                let got = fut.await;
                if check(&got) {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            }
        })
        .await;
    }
}

fn is_code<T>(code: Code) -> impl Fn(&Result<T, Status>) -> bool {
    move |r| matches!(r, Err(e) if e.code() == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_one_controller_works_on_every_controller_and_revocation_reaches_all() {
    let _serial = support::serial().await;
    let f = setup().await;
    let c = &f.client;

    let alice = login_ok(c, 2, "alice", ALICE_PASSWORD).await;
    assert_eq!(alice.user_id, f.alice.id);
    assert_eq!(
        alice.project_id, f.team_a.id,
        "scoped to the default project"
    );
    assert_eq!(alice.roles, vec!["member".to_string()]);
    let tok = alice.token.as_str();

    // Issued by n2, used on n3.
    let me = who_am_i(c, 3, tok).await.expect("WhoAmI at n3");
    assert_eq!(
        (me.user_name.as_str(), me.user_id.as_str()),
        ("alice", f.alice.id.as_str())
    );
    let a = get_project(c, 3, tok, "team-a")
        .await
        .expect("alice reads team-a at n3");
    assert_eq!(a.id, f.team_a.id);
    assert_eq!(
        list_project_names(c, 3, tok).await,
        vec!["team-a".to_string()]
    );
    let err = get_project(c, 3, tok, "team-b")
        .await
        .expect_err("alice must not read team-b");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = get_project(c, 3, tok, &f.team_b.id)
        .await
        .expect_err("alice must not read team-b by id either");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let req = with_token(
        pb::CreateFlavorRequest {
            request_id: request_id(),
            name: "alice-flavor".into(),
            vcpus: 1,
            ram_mib: 512,
            disk_gib: 1,
            ..Default::default()
        },
        tok,
    );
    let err = c
        .once(3, |ch| async move {
            FlavorServiceClient::new(ch).create_flavor(req).await
        })
        .await
        .expect_err("a member must not create flavors");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Every controller accepts the token before the revocation.
    for node in ALL {
        who_am_i(c, node, tok)
            .await
            .unwrap_or_else(|e| panic!("alice's token at n{node}: {e:?}"));
    }

    let req = pb::RevokeTokenRequest {
        request_id: request_id(),
        token_id: alice.token_id.clone(),
    };
    c.only(1)
        .call(CALL, |ch| {
            let req = with_token(req.clone(), &f.admin);
            async move { IdentityServiceClient::new(ch).revoke_token(req).await }
        })
        .await
        .expect("RevokeToken at n1");
    on_every_node(
        "alice's revoked token refused",
        |n| who_am_i(c, n, tok),
        is_code(Code::Unauthenticated),
    )
    .await;
    on_every_node(
        "alice's revoked token refused for project reads",
        |n| get_project(c, n, tok, "team-a"),
        is_code(Code::Unauthenticated),
    )
    .await;
    // Only that token: a fresh login works.
    let again = login_ok(c, 3, "alice", ALICE_PASSWORD).await;
    assert_ne!(again.token_id, alice.token_id);
    get_project(c, 1, &again.token, "team-a")
        .await
        .expect("a new token of alice works");
    f.cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_or_removing_a_role_takes_effect_on_every_controller() {
    let _serial = support::serial().await;
    let f = setup().await;
    let c = &f.client;
    let bob = login_ok(c, 1, "bob", BOB_PASSWORD).await.token;
    let alice = login_ok(c, 3, "alice", ALICE_PASSWORD).await.token;
    for node in ALL {
        get_project(c, node, &bob, "team-b")
            .await
            .unwrap_or_else(|e| panic!("bob reads team-b at n{node}: {e:?}"));
        get_project(c, node, &alice, "team-a")
            .await
            .unwrap_or_else(|e| panic!("alice reads team-a at n{node}: {e:?}"));
    }

    // Disabled: bob's existing token stops authenticating everywhere, and he cannot log in.
    update_user_enabled(c, 2, &f.admin, "bob", false).await;
    on_every_node(
        "the token of disabled bob refused",
        |n| who_am_i(c, n, &bob),
        is_code(Code::Unauthenticated),
    )
    .await;
    on_every_node(
        "the token of disabled bob refused for project reads",
        |n| get_project(c, n, &bob, "team-b"),
        is_code(Code::Unauthenticated),
    )
    .await;
    let err = login(c, 2, "bob", BOB_PASSWORD)
        .await
        .expect_err("a disabled user cannot log in");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("disabled"), "{err:?}");

    // Enabled again: the same token works again (it was never revoked), everywhere.
    update_user_enabled(c, 2, &f.admin, "bob", true).await;
    on_every_node(
        "the token of re-enabled bob accepted",
        |n| get_project(c, n, &bob, "team-b"),
        |r| matches!(r, Ok(p) if p.id == f.team_b.id),
    )
    .await;
    login_ok(c, 2, "bob", BOB_PASSWORD).await;

    // Role removed: alice still authenticates but can no longer read team-a anywhere.
    let req = pb::RemoveRoleAssignmentRequest {
        request_id: request_id(),
        user: f.alice.id.clone(),
        project: f.team_a.id.clone(),
        role: "member".into(),
    };
    c.only(2)
        .call(CALL, |ch| {
            let req = with_token(req.clone(), &f.admin);
            async move {
                IdentityServiceClient::new(ch)
                    .remove_role_assignment(req)
                    .await
            }
        })
        .await
        .expect("RemoveRoleAssignment at n2");
    on_every_node(
        "alice without a role refused team-a",
        |n| get_project(c, n, &alice, "team-a"),
        is_code(Code::PermissionDenied),
    )
    .await;
    for node in ALL {
        let me = who_am_i(c, node, &alice)
            .await
            .unwrap_or_else(|e| panic!("alice still authenticates at n{node}: {e:?}"));
        assert!(me.roles.is_empty(), "no roles left at n{node}: {me:?}");
        assert!(
            list_project_names(c, node, &alice).await.is_empty(),
            "alice sees no project at n{node}"
        );
    }
    f.cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation_for_private_flavors_and_quotas() {
    let _serial = support::serial().await;
    let f = setup().await;
    let c = &f.client;

    let create = |name: &'static str, public: bool| {
        let req = pb::CreateFlavorRequest {
            request_id: request_id(),
            name: name.into(),
            vcpus: 2,
            ram_mib: 2048,
            disk_gib: 20,
            is_public: Some(public),
            ..Default::default()
        };
        let admin = f.admin.clone();
        async move {
            c.call(CALL, |ch| {
                let req = with_token(req.clone(), &admin);
                async move { FlavorServiceClient::new(ch).create_flavor(req).await }
            })
            .await
            .unwrap_or_else(|e| panic!("creating flavor {name} failed: {e:?}"))
            .value
        }
    };
    create("public-small", true).await;
    let private = create("team-a-gold", false).await;
    assert!(!private.is_public);
    let req = pb::FlavorAccessRequest {
        request_id: request_id(),
        flavor: private.id.clone(),
        project: "team-a".into(),
    };
    let private = c
        .call(CALL, |ch| {
            let req = with_token(req.clone(), &f.admin);
            async move { FlavorServiceClient::new(ch).add_flavor_access(req).await }
        })
        .await
        .expect("AddFlavorAccess")
        .value;
    assert_eq!(private.access_project_ids, vec![f.team_a.id.clone()]);

    let alice = login_ok(c, 1, "alice", ALICE_PASSWORD).await.token;
    let bob = login_ok(c, 2, "bob", BOB_PASSWORD).await;
    assert_eq!(
        (bob.user_id.as_str(), bob.project_id.as_str()),
        (f.bob.id.as_str(), f.team_b.id.as_str())
    );
    let bob = bob.token;
    let both: BTreeSet<String> = ["public-small", "team-a-gold"].map(String::from).into();
    let public: BTreeSet<String> = ["public-small"].map(String::from).into();
    for node in ALL {
        assert_eq!(
            list_flavor_names(c, node, &f.admin).await,
            both,
            "admin at n{node}"
        );
        assert_eq!(
            list_flavor_names(c, node, &alice).await,
            both,
            "alice at n{node}"
        );
        assert_eq!(
            list_flavor_names(c, node, &bob).await,
            public,
            "bob at n{node}"
        );
        for key in [private.id.as_str(), private.name.as_str()] {
            let get = |token: &str| {
                let req = with_token(
                    pb::GetFlavorRequest {
                        flavor: key.to_owned(),
                        stale: false,
                    },
                    token,
                );
                c.once(node, |ch| async move {
                    FlavorServiceClient::new(ch).get_flavor(req).await
                })
            };
            let got = get(&alice)
                .await
                .unwrap_or_else(|e| panic!("alice gets {key} at n{node}: {e:?}"));
            assert_eq!(got.id, private.id);
            // The flavor is hidden from bob rather than refused: he cannot learn it exists.
            let err = get(&bob)
                .await
                .expect_err("bob must not get the private flavor");
            assert_eq!(
                err.code(),
                Code::NotFound,
                "bob gets {key} at n{node}: {err:?}"
            );
        }
    }

    // Quotas: a project's roles read it; only admins set it.
    let q = get_quota(c, 3, &alice, "team-a")
        .await
        .expect("alice reads team-a's quota");
    assert_eq!(q.project_id, f.team_a.id);
    let q = get_quota(c, 3, &alice, "")
        .await
        .expect("alice reads her token's project quota");
    assert_eq!(q.project_id, f.team_a.id);
    let err = get_quota(c, 3, &alice, "team-b")
        .await
        .expect_err("alice must not read team-b's quota");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    get_quota(c, 3, &bob, "team-b")
        .await
        .expect("bob (reader) reads team-b's quota");
    for (who, token, project) in [("alice", &alice, "team-a"), ("bob", &bob, "team-b")] {
        let err = set_quota_instances(c, token, project, 3)
            .await
            .expect_err("only admins set quotas");
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
    }
    let set = set_quota_instances(c, &f.admin, "team-a", 7)
        .await
        .expect("admin sets team-a's quota");
    let limit = |q: &pb::Quota| q.instances.as_ref().map(|i| (i.limit, i.from_default));
    assert_eq!(limit(&set), Some((7, false)), "{set:?}");
    for node in ALL {
        let q = get_quota(c, node, &alice, "team-a")
            .await
            .unwrap_or_else(|e| panic!("alice reads team-a's quota at n{node}: {e:?}"));
        assert_eq!(limit(&q), Some((7, false)), "n{node}: {q:?}");
    }
    f.cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttling_refuses_after_repeated_failures() {
    let _serial = support::serial().await;
    let f = setup().await;
    // Argon2 verification takes a while; one attempt must not be cut short (and retried).
    let c = &f
        .client
        .clone()
        .with_attempt_timeout(Duration::from_secs(10));
    for i in 1..=5 {
        let err = login(c, 1, "alice", "not-alices-password")
            .await
            .expect_err("a wrong password is refused");
        assert_eq!(err.code(), Code::Unauthenticated, "failure {i}: {err:?}");
    }
    let err = login(c, 1, "alice", ALICE_PASSWORD)
        .await
        .expect_err("the 6th attempt is throttled, even with the right password");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let secs: u64 = err
        .message()
        .split("retry in ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the refusal says when to retry: {:?}", err.message()));
    assert!((1..=60).contains(&secs), "{:?}", err.message());
    // The throttle is per controller: another one still accepts the right password.
    let t = login_ok(c, 2, "alice", ALICE_PASSWORD).await;
    assert_eq!(t.user_id, f.alice.id);
    // And n1 keeps refusing alice (a success elsewhere does not reset it), but not others.
    let err = login(c, 1, "alice", ALICE_PASSWORD)
        .await
        .expect_err("still throttled at n1");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    login_ok(c, 1, "bob", BOB_PASSWORD).await;
    f.cluster.assert_alive();
}

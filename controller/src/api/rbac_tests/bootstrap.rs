//! The first leader creates the admin user, the only cluster admin there is.
use std::time::Duration;

use flotilla_proto::v1 as pb;
use pb::identity_service_server::IdentityService;
use tonic::Code;

use super::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_leader_creates_the_admin_user_who_can_log_in_and_act() {
    let w = World::start().await;
    let api = w.leader_api();
    tokio::time::timeout(
        Duration::from_secs(20),
        crate::api::bootstrap_admin_when_leader(api.clone(), "admin-password".into()),
    )
    .await
    .expect("bootstrap finishes");
    // A second run (e.g. after a leader change) changes nothing.
    crate::api::bootstrap_admin_when_leader(api.clone(), "other-password".into()).await;
    assert_eq!(api.node.state().user_count(), 1);
    let r = w
        .req(
            None,
            pb::LoginRequest {
                user: "admin".into(),
                password: "admin-password".into(),
                project: String::new(),
            },
        )
        .unwrap();
    let token = w.identity.login(r).await.unwrap().into_inner();
    assert_eq!(token.roles, ["admin"]);
    let admin_project = api.node.state().project("admin").unwrap().id.clone();
    assert_eq!(
        token.project_id, admin_project,
        "scoped to the admin project"
    );
    let r = w
        .req(
            Some(&token.token),
            pb::CreateProjectRequest {
                name: "made-by-admin".into(),
                ..Default::default()
            },
        )
        .unwrap();
    w.identity.create_project(r).await.expect("the admin acts");
    w.cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_such_as_the_retired_bootstrap_admin_token_is_refused() {
    let w = World::start().await;
    for token in ["bootstrap-token-for-tests-0123456789", "0123456789abcdef"] {
        let err = w.req(Some(token), ()).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(
            err.message().contains("flotilla login"),
            "says how to get a token: {err:?}"
        );
    }
    w.cluster.shutdown();
}

/// Bootstraps the `admin` user in `w` and logs in as it.
async fn admin_token(w: &World) -> String {
    let api = w.leader_api();
    tokio::time::timeout(
        Duration::from_secs(20),
        crate::api::bootstrap_admin_when_leader(api, "admin-password".into()),
    )
    .await
    .expect("bootstrap finishes");
    let r = w
        .req(
            None,
            pb::LoginRequest {
                user: "admin".into(),
                password: "admin-password".into(),
                project: String::new(),
            },
        )
        .unwrap();
    w.identity.login(r).await.unwrap().into_inner().token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_without_the_signing_keys_answers_unavailable_and_one_caught_up_unauthenticated(
) {
    // `other` stands for the cluster that issued the token; `w` for a controller that has not
    // received any signing key yet (joining, or replaying its log after a restart).
    let other = World::start().await;
    let w = World::start().await;
    let token = admin_token(&other).await;
    let err = w.req(Some(&token), ()).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("catching up"), "{err:?}");
    // Once it has keys and has applied everything it knows, an unknown key is final.
    admin_token(&w).await;
    let err = w.req(Some(&token), ()).unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("log in again"), "{err:?}");
    other.cluster.shutdown();
    w.cluster.shutdown();
}

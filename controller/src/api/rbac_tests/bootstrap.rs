//! The first leader creates the admin user.
use std::time::Duration;

use flotilla_proto::v1 as pb;
use pb::identity_service_server::IdentityService;

use super::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_leader_creates_the_admin_user_who_can_log_in_and_act() {
    let w = World::start().await;
    let api = w.identity.0.clone();
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

//! Server groups while members move (I3 for groups): a member's migration destination counts as
//! one of the group's hosts from the moment it is claimed, so two members of an anti-affinity
//! group can never be moved onto the same host at the same time.
use super::*;

fn spec(host: &str) -> MoveSpec {
    MoveSpec {
        host_id: host.into(),
        live: true,
        block_migration: true,
        timeout_seconds: 60,
        force: false,
        parent_id: String::new(),
        ratios: AllocationRatios::default(),
    }
}

#[test]
fn two_anti_affinity_members_cannot_both_migrate_to_one_host() {
    let mut log = setup();
    log.ok(register("node3", "h3", 4, 4096));
    log.ok(create_group("g1", "web", GroupPolicy::AntiAffinity));
    log.ok(create(vec![
        in_group("a", "h1", "g1"),
        in_group("b", "h2", "g1"),
    ]));
    log.report("h1", &[("a", PowerState::Running, 1, "")]);
    log.report("h2", &[("b", PowerState::Running, 1, "")]);

    log.ok(request("a", "mig-a", ServerRequest::Migrate(spec("h3"))));
    let out = log.apply(request("b", "mig-b", ServerRequest::Migrate(spec("h3"))));
    assert!(
        matches!(&out, Outcome::Rejected(Rejection::FailedPrecondition(m)) if m.contains("h3") || m.contains("node3")),
        "b would end up on a's destination: {out:?}"
    );
    // The scheduler's view agrees: h3 already counts as a member host of the group.
    let view = log.state.server_group_view_for(log.server("b")).unwrap();
    assert!(view.member_hosts.iter().any(|h| h == "h3"), "{view:?}");
    // Once a's migration rolls back, h3 is free for b again.
    log.ok(Command::MigrationStep {
        operation_id: "mig-a".into(),
        step: "prepare_destination".into(),
        ok: false,
        message: "no room".into(),
    });
    log.ok(request("b", "mig-b2", ServerRequest::Migrate(spec("h3"))));
}

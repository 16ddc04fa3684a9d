use std::collections::BTreeMap;

use super::*;

fn env(request_id: &str, time_ms: i64, command: Command) -> Envelope {
    Envelope {
        request_id: request_id.into(),
        actor: "tester".into(),
        time_ms,
        command,
    }
}

fn create_project(id: &str, name: &str) -> Command {
    Command::CreateProject {
        id: id.into(),
        name: name.into(),
        description: String::new(),
        enabled: true,
        properties: BTreeMap::new(),
    }
}

fn flavor_spec(id: &str, name: &str) -> FlavorSpec {
    FlavorSpec {
        id: id.into(),
        name: name.into(),
        vcpus: 2,
        ram_mib: 2048,
        disk_gib: 20,
        ephemeral_gib: 0,
        swap_mib: 0,
        is_public: true,
        description: String::new(),
        extra_specs: BTreeMap::new(),
    }
}

#[test]
fn creating_a_project_assigns_the_next_revision_and_emits_an_event() {
    let mut s = State::new();
    let out = s.apply(1, &env("r1", 10, create_project("p1", "alpha")));
    let Outcome::Project(p) = out else {
        panic!("unexpected {out:?}")
    };
    assert_eq!((p.id.as_str(), p.meta.create_revision), ("p1", 1));
    assert_eq!(s.revision(), 1);
    assert_eq!(s.applied_index(), 1);
    let events: Vec<_> = s.events_after(0).unwrap().collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, EventAction::Created);
    assert_eq!(s.project("alpha").unwrap().id, "p1");
}

#[test]
fn duplicate_project_names_are_rejected_as_values() {
    let mut s = State::new();
    s.apply(1, &env("", 1, create_project("p1", "alpha")));
    let out = s.apply(2, &env("", 2, create_project("p2", "alpha")));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::AlreadyExists { .. })),
        "{out:?}"
    );
    assert_eq!(s.revision(), 1, "a rejection makes no revision");
    assert_eq!(s.project_count(), 1);
}

#[test]
fn a_retried_request_id_returns_the_original_outcome_without_applying_twice() {
    let mut s = State::new();
    let first = s.apply(1, &env("same", 1, create_project("p1", "alpha")));
    // The retry was stamped again by a new leader: new id, same request id.
    let retry = s.apply(2, &env("same", 2, create_project("p9", "alpha")));
    assert_eq!(first, retry);
    assert_eq!(s.project_count(), 1);
    assert_eq!(s.revision(), 1);
}

#[test]
fn a_request_id_reused_for_another_operation_is_rejected() {
    let mut s = State::new();
    s.apply(1, &env("same", 1, create_project("p1", "alpha")));
    let out = s.apply(
        2,
        &env(
            "same",
            2,
            Command::DeleteProject {
                project: "p1".into(),
            },
        ),
    );
    assert!(
        matches!(out, Outcome::Rejected(Rejection::RequestIdReused { .. })),
        "{out:?}"
    );
    assert!(s.project("p1").is_some());
}

#[test]
fn request_ids_are_forgotten_after_the_window() {
    let mut s = State::new();
    s.apply(1, &env("old", 0, create_project("p1", "alpha")));
    s.apply(
        2,
        &env("other", DEDUP_WINDOW_MS + 1, create_project("p2", "beta")),
    );
    // Same request id far later is a new request now.
    let out = s.apply(
        3,
        &env("old", DEDUP_WINDOW_MS + 2, create_project("p3", "alpha")),
    );
    assert!(
        matches!(out, Outcome::Rejected(Rejection::AlreadyExists { .. })),
        "{out:?}"
    );
}

#[test]
fn update_changes_only_given_fields_and_renames_keep_lookups_right() {
    let mut s = State::new();
    s.apply(1, &env("", 1, create_project("p1", "alpha")));
    let out = s.apply(
        2,
        &env(
            "",
            5,
            Command::UpdateProject {
                project: "alpha".into(),
                name: Some("beta".into()),
                description: None,
                enabled: Some(false),
                set_properties: [("k".to_string(), "v".to_string())].into(),
                unset_properties: vec![],
            },
        ),
    );
    let Outcome::Project(p) = out else { panic!() };
    assert_eq!(
        (p.name.as_str(), p.enabled, p.meta.updated_at_ms),
        ("beta", false, 5)
    );
    assert!(s.project("alpha").is_none());
    assert_eq!(s.project("beta").unwrap().properties["k"], "v");
}

#[test]
fn an_update_that_changes_nothing_makes_no_revision() {
    let mut s = State::new();
    s.apply(1, &env("", 1, create_project("p1", "alpha")));
    s.apply(
        2,
        &env(
            "",
            2,
            Command::UpdateProject {
                project: "p1".into(),
                name: Some("alpha".into()),
                description: None,
                enabled: Some(true),
                set_properties: BTreeMap::new(),
                unset_properties: vec![],
            },
        ),
    );
    assert_eq!(s.revision(), 1);
}

#[test]
fn invalid_names_and_sizes_are_rejected() {
    let mut s = State::new();
    for bad in ["", " x", "a\nb", "123e4567-e89b-12d3-a456-426614174000"] {
        let out = s.apply(1, &env("", 1, create_project("p", bad)));
        assert!(
            matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
            "{bad:?}: {out:?}"
        );
    }
    let mut spec = flavor_spec("f1", "small");
    spec.vcpus = 0;
    let out = s.apply(2, &env("", 1, Command::CreateFlavor(spec)));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
        "{out:?}"
    );
}

#[test]
fn private_flavor_access_needs_an_existing_project_and_is_dropped_with_it() {
    let mut s = State::new();
    s.apply(1, &env("", 1, create_project("p1", "alpha")));
    let mut spec = flavor_spec("f1", "small");
    spec.is_public = false;
    s.apply(2, &env("", 1, Command::CreateFlavor(spec)));
    let missing = s.apply(
        3,
        &env(
            "",
            1,
            Command::AddFlavorAccess {
                flavor: "small".into(),
                project: "nope".into(),
            },
        ),
    );
    assert!(matches!(
        missing,
        Outcome::Rejected(Rejection::NotFound { .. })
    ));
    s.apply(
        4,
        &env(
            "",
            1,
            Command::AddFlavorAccess {
                flavor: "small".into(),
                project: "alpha".into(),
            },
        ),
    );
    assert!(s.flavor("f1").unwrap().access_project_ids.contains("p1"));
    s.apply(
        5,
        &env(
            "",
            1,
            Command::DeleteProject {
                project: "p1".into(),
            },
        ),
    );
    assert!(s.flavor("f1").unwrap().access_project_ids.is_empty());
}

#[test]
fn public_flavors_refuse_project_access_lists() {
    let mut s = State::new();
    s.apply(1, &env("", 1, create_project("p1", "alpha")));
    s.apply(
        2,
        &env("", 1, Command::CreateFlavor(flavor_spec("f1", "small"))),
    );
    let out = s.apply(
        3,
        &env(
            "",
            1,
            Command::AddFlavorAccess {
                flavor: "f1".into(),
                project: "p1".into(),
            },
        ),
    );
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(_))),
        "{out:?}"
    );
}

#[test]
fn replicas_applying_the_same_entries_have_the_same_checksum_and_snapshots_round_trip() {
    let entries: Vec<Envelope> = (0..50)
        .map(|i| {
            env(
                &format!("r{i}"),
                i,
                create_project(&format!("p{i}"), &format!("n{}", i % 40)),
            )
        })
        .collect();
    let mut a = State::new();
    let mut b = State::new();
    for (i, e) in entries.iter().enumerate() {
        a.apply(i as u64 + 1, e);
        b.apply(i as u64 + 1, &Envelope::decode(&e.encode()).unwrap());
    }
    assert_eq!(a.checksum(), b.checksum());
    let restored = State::decode(&a.encode()).unwrap();
    assert_eq!(restored.checksum(), a.checksum());
    assert_eq!(
        restored.project("n3").unwrap().id,
        "p3",
        "name index rebuilt after decode"
    );
    b.apply(51, &env("x", 60, create_project("px", "extra")));
    assert_ne!(a.checksum(), b.checksum());
}

#[test]
fn events_resume_from_a_revision_and_report_compaction() {
    let mut s = State::new();
    for i in 0..(EVENT_RETENTION as u64 + 10) {
        s.apply(
            i + 1,
            &env("", 1, create_project(&format!("p{i}"), &format!("n{i}"))),
        );
    }
    match s.events_after(1) {
        Err(oldest) => assert_eq!(oldest, 11),
        Ok(_) => panic!("events before the retention window must be reported as compacted"),
    }
    let tail: Vec<u64> = s
        .events_after(s.revision() - 3)
        .unwrap()
        .map(|e| e.revision)
        .collect();
    assert_eq!(tail.len(), 3);
    assert_eq!(*tail.last().unwrap(), s.revision());
}

#[test]
fn entries_from_a_newer_format_are_refused_not_skipped() {
    let mut data = env("", 1, create_project("p", "n")).encode();
    data[0] = FORMAT_VERSION + 1;
    assert!(matches!(
        Envelope::decode(&data),
        Err(DecodeError::NewerVersion(_))
    ));
    assert!(matches!(
        Envelope::decode(&[FORMAT_VERSION, 200, 1, 2]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn removed_member_ids_are_remembered_so_they_are_never_reused() {
    let mut s = State::new();
    let m = |id: u64| Member {
        id,
        name: format!("n{id}"),
        client_address: format!("c{id}"),
        peer_address: format!("p{id}"),
    };
    s.apply(
        1,
        &env(
            "",
            1,
            Command::Bootstrap {
                members: vec![m(1), m(2), m(3)],
            },
        ),
    );
    s.apply_member_change(2, None, Some(3));
    assert!(s.member(3).is_none());
    assert!(s.was_removed(3));
    assert!(!s.was_removed(2));
    let restored = State::decode(&s.encode()).unwrap();
    assert!(restored.was_removed(3), "survives snapshots");
}

#[test]
fn a_retry_sees_the_resource_as_it_is_now_or_learns_it_was_deleted() {
    let mut s = State::new();
    s.apply(1, &env("create", 1, create_project("p1", "alpha")));
    s.apply(
        2,
        &env(
            "",
            2,
            Command::UpdateProject {
                project: "p1".into(),
                name: Some("beta".into()),
                description: None,
                enabled: None,
                set_properties: BTreeMap::new(),
                unset_properties: vec![],
            },
        ),
    );
    let retry = s.apply(3, &env("create", 3, create_project("p9", "alpha")));
    let Outcome::Project(p) = retry else {
        panic!("{retry:?}")
    };
    assert_eq!((p.id.as_str(), p.name.as_str()), ("p1", "beta"));
    s.apply(
        4,
        &env(
            "",
            4,
            Command::DeleteProject {
                project: "p1".into(),
            },
        ),
    );
    let retry = s.apply(5, &env("create", 5, create_project("p9", "alpha")));
    assert!(
        matches!(retry, Outcome::Rejected(Rejection::FailedPrecondition(_))),
        "{retry:?}"
    );
    assert_eq!(s.project_count(), 0, "the retry created nothing");
}

#[test]
fn snapshots_from_another_state_format_are_refused_with_advice() {
    let mut data = State::new().encode();
    data[0] = STATE_FORMAT_VERSION - 1;
    assert!(matches!(
        State::decode(&data),
        Err(DecodeError::OlderSnapshot { .. })
    ));
    data[0] = STATE_FORMAT_VERSION + 1;
    assert!(matches!(
        State::decode(&data),
        Err(DecodeError::NewerSnapshot(_))
    ));
}

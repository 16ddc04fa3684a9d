//! State tests of identity: users, role assignment rules, signing keys, revocations.
use std::collections::BTreeMap;

use super::*;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";

fn env(request_id: &str, time_ms: i64, command: Command) -> Envelope {
    Envelope {
        request_id: request_id.into(),
        actor: "tester".into(),
        time_ms,
        command,
    }
}

fn create_user(id: &str, name: &str) -> Command {
    Command::CreateUser {
        id: id.into(),
        name: name.into(),
        email: format!("{name}@example.org"),
        enabled: true,
        default_project: String::new(),
        password_hash: HASH.into(),
    }
}

fn role(user: &str, project: &str, role: Role) -> Command {
    Command::AddRoleAssignment {
        user: user.into(),
        project: project.into(),
        role,
    }
}

fn key(id: &str) -> Command {
    Command::AddSigningKey {
        key_id: id.into(),
        secret: vec![7; 32],
        only_if_none: false,
    }
}

/// A state with project p1 "alpha" and users u1 "alice", u2 "bob".
fn setup() -> State {
    let mut s = State::new();
    let cmds = [
        Command::CreateProject {
            id: "p1".into(),
            name: "alpha".into(),
            description: String::new(),
            enabled: true,
            properties: BTreeMap::new(),
        },
        create_user("u1", "alice"),
        create_user("u2", "bob"),
    ];
    for (i, c) in cmds.into_iter().enumerate() {
        let out = s.apply(i as u64 + 1, &env("", 1, c));
        assert!(!matches!(out, Outcome::Rejected(_)), "{out:?}");
    }
    s
}

#[test]
fn a_user_is_stored_with_the_given_hash_and_found_by_id_or_name() {
    let s = setup();
    let u = s.user("alice").unwrap();
    assert_eq!((u.id.as_str(), u.password_hash.as_str()), ("u1", HASH));
    assert_eq!(s.user("u1").unwrap().name, "alice");
    assert_eq!(s.user_count(), 2);
}

#[test]
fn user_names_are_unique_and_hashes_must_be_argon2id() {
    let mut s = setup();
    let dup = s.apply(10, &env("", 2, create_user("u3", "alice")));
    assert!(
        matches!(dup, Outcome::Rejected(Rejection::AlreadyExists { .. })),
        "{dup:?}"
    );
    let mut bad = create_user("u4", "carol");
    if let Command::CreateUser { password_hash, .. } = &mut bad {
        *password_hash = "plaintext".into();
    }
    let out = s.apply(11, &env("", 2, bad));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
        "{out:?}"
    );
}

#[test]
fn a_retried_create_user_returns_the_first_outcome() {
    let mut s = setup();
    let first = s.apply(10, &env("r", 2, create_user("u3", "carol")));
    let retry = s.apply(11, &env("r", 3, create_user("u9", "carol")));
    assert_eq!(first, retry);
    assert_eq!(s.user_count(), 3);
}

#[test]
fn the_admin_role_is_cluster_wide_and_project_roles_need_a_project() {
    let mut s = setup();
    let out = s.apply(10, &env("", 2, role("alice", "alpha", Role::Admin)));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
        "{out:?}"
    );
    let out = s.apply(11, &env("", 2, role("alice", "", Role::Member)));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
        "{out:?}"
    );
    let out = s.apply(12, &env("", 2, role("alice", "nowhere", Role::Reader)));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::NotFound { .. })),
        "{out:?}"
    );
    let out = s.apply(13, &env("", 2, role("alice", "alpha", Role::Member)));
    let Outcome::RoleAssignment(a) = out else {
        panic!("{out:?}")
    };
    assert_eq!((a.user_id.as_str(), a.project_id.as_str()), ("u1", "p1"));
    let revision = s.revision();
    let again = s.apply(14, &env("", 2, role("u1", "p1", Role::Member)));
    assert_eq!(again, Outcome::RoleAssignment(a));
    assert_eq!(
        s.revision(),
        revision,
        "adding an existing assignment changes nothing"
    );
}

#[test]
fn the_last_enabled_admin_cannot_be_removed_disabled_or_deleted() {
    let mut s = setup();
    s.apply(10, &env("", 2, role("alice", "", Role::Admin)));
    assert!(s.is_admin("u1"));
    let remove = Command::RemoveRoleAssignment {
        user: "alice".into(),
        project: String::new(),
        role: Role::Admin,
    };
    let disable = Command::UpdateUser {
        user: "alice".into(),
        name: None,
        email: None,
        enabled: Some(false),
        default_project: None,
    };
    for c in [
        remove.clone(),
        disable,
        Command::DeleteUser {
            user: "alice".into(),
        },
    ] {
        let out = s.apply(11, &env("", 3, c));
        assert!(
            matches!(&out, Outcome::Rejected(Rejection::FailedPrecondition(m)) if m.contains("last enabled cluster admin")),
            "{out:?}"
        );
    }
    s.apply(12, &env("", 4, role("bob", "", Role::Admin)));
    assert_eq!(s.apply(13, &env("", 5, remove)), Outcome::Deleted);
    assert!(!s.is_admin("u1"));
}

#[test]
fn deleting_a_user_or_project_removes_their_role_assignments() {
    let mut s = setup();
    s.apply(10, &env("", 2, role("alice", "alpha", Role::Member)));
    s.apply(11, &env("", 2, role("bob", "alpha", Role::Reader)));
    s.apply(12, &env("", 2, Command::DeleteUser { user: "bob".into() }));
    assert_eq!(s.role_assignments().count(), 1);
    s.apply(
        13,
        &env(
            "",
            2,
            Command::DeleteProject {
                project: "alpha".into(),
            },
        ),
    );
    assert_eq!(s.role_assignments().count(), 0);
}

#[test]
fn a_rotation_keeps_old_keys_verifying_until_every_token_they_signed_expired() {
    let mut s = setup();
    s.apply(10, &env("", 1_000, key("k1")));
    s.apply(11, &env("", 2_000, key("k2")));
    assert_eq!(s.active_signing_key().unwrap().id, "k2");
    assert_eq!(s.signing_key("k1").unwrap().retired_at_ms, Some(2_000));
    let only_if_none = Command::AddSigningKey {
        key_id: "k3".into(),
        secret: vec![1; 32],
        only_if_none: true,
    };
    assert_eq!(
        s.apply(12, &env("", 3_000, only_if_none)),
        Outcome::Unchanged
    );
    assert_eq!(s.active_signing_key().unwrap().id, "k2");
    // Any later entry prunes k1 once no token it signed can still be valid.
    s.apply(
        13,
        &env(
            "",
            2_000 + MAX_TOKEN_LIFETIME_MS - 1,
            Command::DeleteUser { user: "bob".into() },
        ),
    );
    assert!(s.signing_key("k1").is_some());
    s.apply(
        14,
        &env(
            "",
            2_000 + MAX_TOKEN_LIFETIME_MS,
            Command::DeleteUser { user: "x".into() },
        ),
    );
    assert!(s.signing_key("k1").is_none());
    assert_eq!(
        s.active_signing_key().unwrap().id,
        "k2",
        "the active key is never pruned"
    );
}

#[test]
fn short_or_repeated_keys_are_rejected_and_at_most_the_cap_is_kept() {
    let mut s = setup();
    let short = Command::AddSigningKey {
        key_id: "k".into(),
        secret: vec![1; 8],
        only_if_none: false,
    };
    assert!(matches!(
        s.apply(10, &env("", 1, short)),
        Outcome::Rejected(_)
    ));
    s.apply(11, &env("", 1, key("k1")));
    assert!(matches!(
        s.apply(12, &env("", 1, key("k1"))),
        Outcome::Rejected(_)
    ));
    for i in 0..MAX_SIGNING_KEYS + 3 {
        s.apply(20 + i as u64, &env("", 2, key(&format!("n{i}"))));
    }
    assert_eq!(s.signing_keys().len(), MAX_SIGNING_KEYS);
}

#[test]
fn revocations_are_pruned_deterministically_after_the_token_expires() {
    let mut s = setup();
    let revoke = |tid: &str, exp: i64| Command::RevokeToken {
        token_id: tid.into(),
        expires_at_ms: exp,
    };
    s.apply(10, &env("", 100, revoke("t1", 500)));
    s.apply(11, &env("", 100, revoke("t2", 900)));
    s.apply(12, &env("", 100, revoke("t0", 50)));
    assert!(s.is_revoked("t1") && s.is_revoked("t2"));
    assert!(
        !s.is_revoked("t0"),
        "an already expired token needs no entry"
    );
    let mut replica = State::decode(&s.encode()).unwrap();
    for st in [&mut s, &mut replica] {
        st.apply(13, &env("", 600, Command::DeleteUser { user: "x".into() }));
    }
    assert!(!s.is_revoked("t1") && s.is_revoked("t2"));
    assert_eq!(s.revoked_count(), 1);
    assert_eq!(s.checksum(), replica.checksum());
}

#[test]
fn bootstrap_admin_creates_user_project_role_and_key_once() {
    let mut s = State::new();
    let boot = |uid: &str| Command::BootstrapAdmin {
        user_id: uid.into(),
        project_id: "padmin".into(),
        password_hash: HASH.into(),
        key_id: "k1".into(),
        key_secret: vec![9; 32],
    };
    let out = s.apply(1, &env("", 1, boot("u1")));
    assert!(
        matches!(&out, Outcome::User(u) if u.name == "admin"),
        "{out:?}"
    );
    let admin = s.user("admin").unwrap();
    assert_eq!(admin.default_project_id, "padmin");
    assert!(s.is_admin(&admin.id));
    assert_eq!(s.project("admin").unwrap().id, "padmin");
    assert!(s.active_signing_key().is_some());
    assert_eq!(s.apply(2, &env("", 2, boot("u2"))), Outcome::Unchanged);
    assert_eq!(s.user_count(), 1);
    let restored = State::decode(&s.encode()).unwrap();
    assert_eq!(
        restored.user("admin").unwrap().id,
        "u1",
        "names rebuilt after decode"
    );
}

#[test]
fn a_disabled_default_project_can_be_cleared_and_unknown_ones_are_refused() {
    let mut s = setup();
    let set = |p: &str| Command::UpdateUser {
        user: "alice".into(),
        name: None,
        email: None,
        enabled: None,
        default_project: Some(p.into()),
    };
    let out = s.apply(10, &env("", 2, set("alpha")));
    assert!(
        matches!(&out, Outcome::User(u) if u.default_project_id == "p1"),
        "{out:?}"
    );
    let out = s.apply(11, &env("", 2, set("nope")));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::NotFound { .. })),
        "{out:?}"
    );
    let out = s.apply(12, &env("", 2, set("")));
    assert!(
        matches!(&out, Outcome::User(u) if u.default_project_id.is_empty()),
        "{out:?}"
    );
}

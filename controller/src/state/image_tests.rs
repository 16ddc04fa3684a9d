//! State tests of images: the upload state machine, quota charged and released in the same
//! apply (I3), sharing, deletion rules, dedup and snapshots.
use std::collections::BTreeMap;

use super::*;

const GIB: u64 = 1 << 30;

struct Log {
    state: State,
    index: u64,
}

impl Log {
    fn new() -> Log {
        let mut log = Log {
            state: State::new(),
            index: 0,
        };
        for (id, name) in [("p1", "alpha"), ("p2", "beta")] {
            log.ok(Command::CreateProject {
                id: id.into(),
                name: name.into(),
                description: String::new(),
                enabled: true,
                properties: BTreeMap::new(),
            });
        }
        log
    }

    fn apply_with(&mut self, request_id: &str, command: Command) -> Outcome {
        self.index += 1;
        let env = Envelope {
            request_id: request_id.into(),
            actor: "tester".into(),
            time_ms: 1000 + self.index as i64,
            command,
        };
        self.state.apply(self.index, &env)
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.apply_with("", command)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let out = self.apply(command);
        assert!(!matches!(out, Outcome::Rejected(_)), "{out:?}");
        out
    }

    fn image(&self, id: &str) -> &Image {
        self.state.image(id).expect("image exists")
    }

    fn usage(&self, project: &str, r: Resource) -> i64 {
        self.state.project_quota(project).items[&r].in_use
    }
}

fn spec(id: &str, owner: &str) -> ImageSpec {
    ImageSpec {
        id: id.into(),
        name: format!("img-{id}"),
        owner_project_id: owner.into(),
        disk_format: DiskFormat::Qcow2,
        container_format: ContainerFormat::Bare,
        visibility: Visibility::Private,
        min_disk_gib: 1,
        min_ram_mib: 64,
        protected: false,
        properties: BTreeMap::new(),
    }
}

fn begin(image: &str, upload: &str, size_hint: u64) -> Command {
    Command::BeginImageUpload {
        image_id: image.into(),
        upload_id: upload.into(),
        controller_id: 1,
        size_hint,
    }
}

fn finish(image: &str, upload: &str, result: UploadResult) -> Command {
    Command::FinishImageUpload {
        image_id: image.into(),
        upload_id: upload.into(),
        result,
    }
}

fn stored(size: u64) -> UploadResult {
    UploadResult::Stored {
        size_bytes: size,
        virtual_size_bytes: 10 * GIB,
        sha256: "AB".repeat(32),
        md5: "cd".repeat(16),
    }
}

fn set_quota(project: &str, r: Resource, limit: i64) -> Command {
    Command::SetQuota {
        project: project.into(),
        reset_to_default: vec![],
        changes: [(r, limit)].into_iter().collect(),
    }
}

#[test]
fn an_upload_goes_queued_saving_active_and_charges_storage_rounded_up() {
    let mut log = Log::new();
    log.ok(Command::CreateImage(spec("i1", "p1")));
    assert_eq!(log.image("i1").status, ImageStatus::Queued);
    assert_eq!(log.usage("p1", Resource::Images), 1);
    log.ok(begin("i1", "u1", 0));
    let img = log.image("i1");
    assert_eq!(img.status, ImageStatus::Saving);
    assert_eq!(img.upload.as_ref().map(|u| u.controller_id), Some(1));
    log.ok(finish("i1", "u1", stored(GIB + 1)));
    let img = log.image("i1");
    assert_eq!(img.status, ImageStatus::Active);
    assert_eq!(img.sha256, "ab".repeat(32), "digests are stored lowercase");
    assert!(img.upload.is_none());
    assert_eq!(log.usage("p1", Resource::ImageStorageGib), 2);
}

#[test]
fn refused_content_kills_the_image_and_an_interrupted_upload_returns_it_to_queued() {
    let mut log = Log::new();
    log.ok(Command::CreateImage(spec("i1", "p1")));
    log.ok(begin("i1", "u1", 0));
    let reason = "image refused: the image has a backing file (/etc/passwd)";
    log.ok(finish(
        "i1",
        "u1",
        UploadResult::Refused {
            reason: reason.into(),
        },
    ));
    assert_eq!(log.image("i1").status, ImageStatus::Killed);
    assert_eq!(log.image("i1").status_reason, reason);
    let out = log.apply(begin("i1", "u2", 0));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("killed")),
        "{out:?}"
    );

    log.ok(Command::CreateImage(spec("i2", "p1")));
    log.ok(begin("i2", "u3", 0));
    log.ok(finish(
        "i2",
        "u3",
        UploadResult::Interrupted {
            reason: "client went away".into(),
        },
    ));
    assert_eq!(log.image("i2").status, ImageStatus::Queued);
    log.ok(begin("i2", "u4", 0));
    assert_eq!(log.usage("p1", Resource::ImageStorageGib), 0);
}

#[test]
fn a_second_upload_is_refused_while_one_runs_and_a_stale_finish_changes_nothing() {
    let mut log = Log::new();
    log.ok(Command::CreateImage(spec("i1", "p1")));
    log.ok(begin("i1", "u1", 0));
    let out = log.apply(begin("i1", "u2", 0));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("another upload")),
        "{out:?}"
    );
    log.ok(finish(
        "i1",
        "u1",
        UploadResult::Interrupted { reason: "x".into() },
    ));
    log.ok(begin("i1", "u3", 0));
    // The first upload's late finish must not make the image active with its bytes.
    let out = log.apply(finish("i1", "u1", stored(5)));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(_))),
        "{out:?}"
    );
    assert_eq!(log.image("i1").status, ImageStatus::Saving);
}

#[test]
fn image_count_quota_admits_exactly_the_limit_in_log_order() {
    let mut log = Log::new();
    log.ok(set_quota("p1", Resource::Images, 10));
    let mut admitted = 0;
    for i in 0..50 {
        match log.apply(Command::CreateImage(spec(&format!("i{i}"), "p1"))) {
            Outcome::Image(_) => admitted += 1,
            Outcome::Rejected(Rejection::QuotaExceeded(m)) => {
                assert!(
                    m.contains("quota exceeded for images: limit 10, in use 10"),
                    "{m}"
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(log.usage("p1", Resource::Images), 10);
    // Another project is not affected, and a delete frees one slot.
    log.ok(Command::CreateImage(spec("other", "p2")));
    log.ok(Command::DeleteImage {
        image_id: "i3".into(),
    });
    assert_eq!(log.usage("p1", Resource::Images), 9);
    log.ok(Command::CreateImage(spec("again", "p1")));
}

#[test]
fn storage_quota_refuses_early_by_hint_and_exactly_at_finish() {
    let mut log = Log::new();
    log.ok(set_quota("p1", Resource::ImageStorageGib, 2));
    log.ok(Command::CreateImage(spec("i1", "p1")));
    let out = log.apply(begin("i1", "u1", 3 * GIB));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::QuotaExceeded(ref m)) if m.contains("image_storage_gib")),
        "{out:?}"
    );
    assert_eq!(log.image("i1").status, ImageStatus::Queued);
    // Without a hint the upload starts; the exact size is checked when it finishes, and an
    // image over quota goes back to queued with the reason, holding nothing.
    log.ok(begin("i1", "u2", 0));
    log.ok(finish("i1", "u2", stored(2 * GIB + 1)));
    let img = log.image("i1");
    assert_eq!(img.status, ImageStatus::Queued);
    assert!(
        img.status_reason.contains("image_storage_gib"),
        "{}",
        img.status_reason
    );
    assert!(img.sha256.is_empty() && img.size_bytes == 0);
    assert_eq!(log.usage("p1", Resource::ImageStorageGib), 0);
    log.ok(begin("i1", "u3", 0));
    log.ok(finish("i1", "u3", stored(2 * GIB)));
    assert_eq!(log.usage("p1", Resource::ImageStorageGib), 2);
    log.ok(Command::DeleteImage {
        image_id: "i1".into(),
    });
    assert_eq!(log.usage("p1", Resource::ImageStorageGib), 0);
    assert_eq!(log.usage("p1", Resource::Images), 0);
}

#[test]
fn protected_images_cannot_be_deleted_until_unprotected() {
    let mut log = Log::new();
    let mut s = spec("i1", "p1");
    s.protected = true;
    log.ok(Command::CreateImage(s));
    let out = log.apply(Command::DeleteImage {
        image_id: "i1".into(),
    });
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("protected")),
        "{out:?}"
    );
    log.ok(Command::UpdateImage {
        image_id: "i1".into(),
        changes: ImageChanges {
            protected: Some(false),
            ..Default::default()
        },
    });
    log.ok(Command::DeleteImage {
        image_id: "i1".into(),
    });
    assert!(log.state.image("i1").is_none());
}

#[test]
fn members_need_a_shared_image_and_projects_owning_images_cannot_be_deleted() {
    let mut log = Log::new();
    log.ok(Command::CreateImage(spec("i1", "p1")));
    let add = |project: &str| Command::AddImageMember {
        image_id: "i1".into(),
        project: project.into(),
    };
    let out = log.apply(add("beta"));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("not shared")),
        "{out:?}"
    );
    log.ok(Command::UpdateImage {
        image_id: "i1".into(),
        changes: ImageChanges {
            visibility: Some(Visibility::Shared),
            ..Default::default()
        },
    });
    log.ok(add("beta"));
    assert!(log.image("i1").usable_by("p2"));
    let out = log.apply(add("alpha"));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
        "{out:?}"
    );

    // Deleting a member project removes it from the member list; deleting the owner is refused.
    log.ok(Command::DeleteProject {
        project: "beta".into(),
    });
    assert!(log.image("i1").members.is_empty());
    let out = log.apply(Command::DeleteProject {
        project: "alpha".into(),
    });
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("owns 1 image")),
        "{out:?}"
    );
}

#[test]
fn a_retried_create_returns_the_same_image_and_charges_once_and_replicas_agree() {
    let mut log = Log::new();
    let first = log.apply_with("req-1", Command::CreateImage(spec("i1", "p1")));
    let retry = log.apply_with("req-1", Command::CreateImage(spec("i1-other-id", "p1")));
    assert_eq!(first, retry);
    assert_eq!(log.usage("p1", Resource::Images), 1);
    log.ok(begin("i1", "u1", 0));
    log.ok(finish("i1", "u1", stored(7)));
    let decoded = State::decode(&log.state.encode()).unwrap();
    assert_eq!(decoded.checksum(), log.state.checksum());
    assert_eq!(decoded.image("i1"), log.state.image("i1"));
}

#[test]
fn bad_names_and_unknown_or_disabled_owners_are_rejected_without_charging() {
    let mut log = Log::new();
    let mut bad = spec("i1", "p1");
    bad.name = " padded".into();
    assert!(matches!(
        log.apply(Command::CreateImage(bad)),
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    assert!(matches!(
        log.apply(Command::CreateImage(spec("i2", "nope"))),
        Outcome::Rejected(Rejection::NotFound { .. })
    ));
    log.ok(Command::UpdateProject {
        project: "p1".into(),
        name: None,
        description: None,
        enabled: Some(false),
        set_properties: BTreeMap::new(),
        unset_properties: vec![],
    });
    assert!(matches!(
        log.apply(Command::CreateImage(spec("i3", "p1"))),
        Outcome::Rejected(Rejection::FailedPrecondition(_))
    ));
    assert_eq!(log.usage("p1", Resource::Images), 0);
}

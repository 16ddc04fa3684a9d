//! State tests of hosts, servers and their operations: admission re-checks (I3), reports from
//! agents moving servers and operations forward, fencing by lease and generation (I7).
use std::collections::BTreeMap;

use super::*;
use crate::scheduler::{AllocationRatios, GroupPolicy};

struct Log {
    state: State,
    index: u64,
}

const GIB: u64 = 1 << 30;

impl Log {
    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        let env = Envelope {
            request_id: String::new(),
            actor: "tester".into(),
            time_ms: 1_000 + self.index as i64,
            command,
        };
        self.state.apply(self.index, &env)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let out = self.apply(command);
        assert!(!matches!(out, Outcome::Rejected(_)), "{out:?}");
        out
    }

    fn server(&self, id: &str) -> &Server {
        self.state.server(id).expect("server exists")
    }

    fn host(&self, id: &str) -> &Host {
        self.state.host(id).expect("host exists")
    }

    fn op(&self, id: &str) -> &Operation {
        self.state.operation(id).expect("operation exists")
    }

    fn lease(&self, host: &str) -> u64 {
        self.host(host).lease_id
    }

    fn report(&mut self, host: &str, servers: &[(&str, PowerState, u64, &str)]) -> Outcome {
        let lease_id = self.lease(host);
        self.apply(Command::ServerObserved {
            host_id: host.into(),
            lease_id,
            servers: servers
                .iter()
                .map(|(id, power, generation, error)| ObservedServer {
                    id: (*id).into(),
                    power: *power,
                    generation: *generation,
                    error: (*error).into(),
                })
                .collect(),
        })
    }

    fn request(&mut self, server: &str, op: &str, request: ServerRequest) -> Outcome {
        self.apply(Command::ServerRequest {
            server_id: server.into(),
            operation_id: op.into(),
            request,
        })
    }

    fn usage(&self, r: Resource) -> i64 {
        self.state.project_quota("p1").items[&r].in_use
    }
}

fn register(hostname: &str, id: &str, vcpus: u64, ram_mib: u64) -> Command {
    Command::RegisterHost {
        host_id: id.into(),
        info: HostRegistration {
            hostname: hostname.into(),
            address: "10.0.0.1".into(),
            tunnel_address: String::new(),
            availability_zone: "nova".into(),
            hypervisor_type: "qemu".into(),
            hypervisor_version: "7.2.0".into(),
            cpu_model: "qemu64".into(),
            agent_version: "0.1.0".into(),
            capacity: Capacity::new(vcpus, ram_mib, 100),
        },
    }
}

fn flavor() -> FlavorSnapshot {
    FlavorSnapshot {
        id: "f1".into(),
        name: "small".into(),
        vcpus: 2,
        ram_mib: 1024,
        disk_gib: 1,
        ephemeral_gib: 0,
        swap_mib: 0,
        extra_specs: BTreeMap::new(),
    }
}

fn new_server(id: &str, host: &str) -> NewServer {
    NewServer {
        id: id.into(),
        name: format!("vm-{id}"),
        project_id: "p1".into(),
        user_id: "u1".into(),
        flavor: flavor(),
        image_id: "img".into(),
        host_id: host.into(),
        availability_zone: "nova".into(),
        metadata: BTreeMap::new(),
        user_data: vec![],
        operation_id: format!("op-{id}"),
        group_id: String::new(),
    }
}

fn create(servers: Vec<NewServer>) -> Command {
    Command::CreateServers {
        servers,
        ratios: AllocationRatios {
            cpu: 1.0,
            ram: 1.0,
            disk: 1.0,
        },
    }
}

/// Project p1, hosts h1 (4 vCPU, 4 GiB) and h2, an active image `img`.
fn setup() -> Log {
    let mut log = Log {
        state: State::new(),
        index: 0,
    };
    log.ok(Command::CreateProject {
        id: "p1".into(),
        name: "alpha".into(),
        description: String::new(),
        enabled: true,
        properties: BTreeMap::new(),
    });
    log.ok(register("node1", "h1", 4, 4096));
    log.ok(register("node2", "h2", 4, 4096));
    log.ok(Command::CreateImage(ImageSpec {
        id: "img".into(),
        name: "cirros".into(),
        owner_project_id: "p1".into(),
        disk_format: DiskFormat::Qcow2,
        container_format: ContainerFormat::Bare,
        visibility: Visibility::Private,
        min_disk_gib: 0,
        min_ram_mib: 0,
        protected: false,
        properties: BTreeMap::new(),
    }));
    log.ok(Command::BeginImageUpload {
        image_id: "img".into(),
        upload_id: "u".into(),
        controller_id: 1,
        size_hint: 0,
    });
    log.ok(Command::FinishImageUpload {
        image_id: "img".into(),
        upload_id: "u".into(),
        result: UploadResult::Stored {
            size_bytes: 1 << 20,
            virtual_size_bytes: GIB,
            sha256: "ab".repeat(32),
            md5: "cd".repeat(16),
        },
    });
    log
}

#[test]
fn a_boot_admits_quota_and_capacity_then_becomes_active_when_the_agent_sees_it_running() {
    let mut log = setup();
    let out = log.ok(create(vec![new_server("s1", "h1"), new_server("s2", "h1")]));
    assert!(matches!(out, Outcome::Servers(ref v) if v.len() == 2));
    assert_eq!(log.usage(Resource::Instances), 2);
    assert_eq!(log.usage(Resource::Vcpus), 4);
    assert_eq!(log.host("h1").used, Capacity::new(4, 2048, 2));
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.task_state.as_str()),
        (ServerStatus::Build, "spawning")
    );
    assert_eq!(log.op("op-s1").state, OpState::Running);

    // h1 is full (4 vCPUs at ratio 1): a third server is refused in apply (I3).
    let out = log.apply(create(vec![new_server("s3", "h1")]));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("node1")),
        "{out:?}"
    );
    assert_eq!(log.usage(Resource::Instances), 2);

    log.report(
        "h1",
        &[
            ("s1", PowerState::Running, 1, ""),
            ("s2", PowerState::NoState, 1, ""),
        ],
    );
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.power_state),
        (ServerStatus::Active, PowerState::Running)
    );
    assert!(s.task_state.is_empty() && s.launched_at_ms > 0);
    assert_eq!(log.op("op-s1").state, OpState::Succeeded);
    assert_eq!(log.server("s2").status, ServerStatus::Build);
}

#[test]
fn stop_start_and_reboot_complete_from_reports_and_step_results() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    log.ok(request("s1", "stop", ServerRequest::Stop));
    assert_eq!(log.server("s1").desired_power, DesiredPower::Shutdown);
    // Stopping twice, or starting while it stops, is refused with the reason.
    let out = log.request("s1", "start-early", ServerRequest::Start);
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("powering-off")),
        "{out:?}"
    );
    log.report("h1", &[("s1", PowerState::Shutdown, 1, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Shutoff);
    assert_eq!(log.op("stop").state, OpState::Succeeded);

    log.request("s1", "start", ServerRequest::Start);
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Active);

    log.request("s1", "reboot", ServerRequest::Reboot { hard: false });
    assert_eq!(log.server("s1").status, ServerStatus::Reboot);
    // A hard reboot may replace a soft one that hangs; the soft one ends as superseded.
    log.request("s1", "hard", ServerRequest::Reboot { hard: true });
    assert_eq!(log.op("reboot").state, OpState::Failed);
    assert!(log.op("reboot").message.contains("superseded"));
    log.ok(Command::OperationStepResult {
        operation_id: "hard".into(),
        ok: true,
        message: String::new(),
    });
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.task_state.as_str()),
        (ServerStatus::Active, "")
    );
    let kinds: Vec<&str> = s
        .operation_ids
        .iter()
        .map(|id| log.op(id).kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["create", "stop", "start", "reboot", "reboot --hard"]
    );
}

fn request(server: &str, op: &str, request: ServerRequest) -> Command {
    Command::ServerRequest {
        server_id: server.into(),
        operation_id: op.into(),
        request,
    }
}

#[test]
fn a_delete_completes_when_the_host_no_longer_reports_the_server_and_releases_everything() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    let out = log.apply(Command::DeleteImage {
        image_id: "img".into(),
    });
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("in use")),
        "{out:?}"
    );
    log.request("s1", "del", ServerRequest::Delete);
    assert_eq!(log.server("s1").status, ServerStatus::Deleting);
    assert!(
        log.state.servers_on("h1").next().is_none(),
        "the host's desired state drops it"
    );
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    assert!(
        log.state.server("s1").is_some(),
        "still there while the host holds it"
    );
    log.report("h1", &[]);
    assert!(log.state.server("s1").is_none());
    assert_eq!(log.op("del").state, OpState::Succeeded);
    assert_eq!(log.usage(Resource::Instances), 0);
    assert_eq!(log.host("h1").used, Capacity::default());
}

#[test]
fn a_failed_boot_is_rescheduled_on_another_host_then_errors_after_the_bound() {
    let mut log = setup();
    log.ok(register("node3", "h3", 4, 4096));
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report(
        "h1",
        &[(
            "s1",
            PowerState::NoState,
            1,
            "image fetch failed: disk full",
        )],
    );
    let s = log.server("s1");
    assert_eq!(
        (s.task_state.as_str(), s.failed_hosts.as_slice()),
        ("rescheduling", &["h1".to_string()][..])
    );
    let ratios = AllocationRatios::default();
    let out = log.apply(Command::RescheduleServer {
        server_id: "s1".into(),
        host_id: "h1".into(),
        ratios,
    });
    assert!(
        matches!(out, Outcome::Rejected(_)),
        "never back to a failed host"
    );
    log.ok(Command::RescheduleServer {
        server_id: "s1".into(),
        host_id: "h2".into(),
        ratios,
    });
    let s = log.server("s1");
    assert_eq!((s.host_id.as_str(), s.placement_generation), ("h2", 2));
    assert_eq!(log.host("h1").used, Capacity::default());
    // h1 still reports its stale generation-1 copy: ignored for the server.
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    assert_eq!(log.server("s1").status, ServerStatus::Build);
    log.report("h2", &[("s1", PowerState::NoState, 2, "define failed")]);
    log.ok(Command::RescheduleServer {
        server_id: "s1".into(),
        host_id: "h3".into(),
        ratios,
    });
    log.report(
        "h3",
        &[("s1", PowerState::NoState, 3, "start failed: no KVM")],
    );
    let s = log.server("s1");
    assert_eq!(s.status, ServerStatus::Error);
    assert!(s.fault.as_ref().unwrap().message.contains("no KVM"));
    assert_eq!(log.op("op-s1").state, OpState::Failed);
}

#[test]
fn leases_fence_reports_and_down_marks_and_a_down_host_deletes_at_once() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    let old = log.lease("h1");
    log.ok(register("node1", "ignored-new-id", 4, 4096));
    assert_eq!(
        log.lease("h1"),
        old + 1,
        "re-registration keeps the id, bumps the lease"
    );
    let out = log.apply(Command::ServerObserved {
        host_id: "h1".into(),
        lease_id: old,
        servers: vec![],
    });
    assert!(
        matches!(out, Outcome::Rejected(_)),
        "a report under an old lease"
    );
    log.ok(Command::MarkHostDown {
        host_id: "h1".into(),
        lease_id: old,
    });
    assert!(log.host("h1").up, "a down mark for an old lease is ignored");
    let lease = log.lease("h1");
    log.ok(Command::MarkHostDown {
        host_id: "h1".into(),
        lease_id: lease,
    });
    assert!(!log.host("h1").up);
    log.request("s1", "del", ServerRequest::Delete);
    assert!(log.state.server("s1").is_none());
    assert_eq!(log.usage(Resource::Instances), 0);
    let out = log.apply(create(vec![new_server("s2", "h1")]));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("down or disabled")),
        "{out:?}"
    );
}

#[test]
fn a_guest_that_shuts_itself_down_is_recorded_as_stopped_and_replicas_agree() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    log.report("h1", &[("s1", PowerState::Shutdown, 1, "")]);
    let s = log.server("s1").clone();
    assert_eq!(
        (s.status, s.desired_power),
        (ServerStatus::Shutoff, DesiredPower::Shutdown)
    );
    let last = log.op(s.operation_ids.last().unwrap());
    assert_eq!(last.kind, "stop (observed)");
    let decoded = State::decode(&log.state.encode()).unwrap();
    assert_eq!(decoded.checksum(), log.state.checksum());
    assert_eq!(decoded.host("node1").map(|h| h.id.as_str()), Some("h1"));
}

fn snapshot(server: &str, op: &str, backup: Option<(&str, u32)>) -> Command {
    Command::ServerRequest {
        server_id: server.into(),
        operation_id: op.into(),
        request: ServerRequest::Snapshot(SnapshotSpec {
            image_id: op.into(),
            name: format!("snap-{op}"),
            properties: BTreeMap::new(),
            backup: backup.map(|(k, r)| (k.to_owned(), r)),
        }),
    }
}

fn agent_uploads(log: &mut Log, op: &str) {
    log.ok(Command::FinishImageUpload {
        image_id: op.into(),
        upload_id: op.into(),
        result: UploadResult::Stored {
            size_bytes: 5 << 20,
            virtual_size_bytes: GIB,
            sha256: format!("{:0>64}", op.len()),
            md5: "00".repeat(16),
        },
    });
    log.ok(Command::OperationStepResult {
        operation_id: op.into(),
        ok: true,
        message: String::new(),
    });
}

#[test]
fn backups_become_images_of_the_project_and_rotate_out_the_oldest() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    for op in ["b1", "b2", "b3"] {
        log.ok(snapshot("s1", op, Some(("daily", 2))));
        let img = log.state.image(op).unwrap();
        assert_eq!(img.status, ImageStatus::Saving);
        assert_eq!(img.properties["image_type"], "backup");
        assert_eq!(log.server("s1").task_state, "image_backup");
        agent_uploads(&mut log, op);
        assert_eq!(log.server("s1").task_state, "");
        assert_eq!(log.op(op).state, OpState::Succeeded);
    }
    assert!(
        log.state.image("b1").is_none(),
        "the oldest daily backup rotated out"
    );
    assert!(log.state.image("b2").is_some() && log.state.image("b3").is_some());
    assert_eq!(log.usage(Resource::Images), 3, "img + two backups");

    // A snapshot the agent fails kills its image; one it "finishes" without uploading too.
    log.ok(snapshot("s1", "s-fail", None));
    log.ok(Command::OperationStepResult {
        operation_id: "s-fail".into(),
        ok: false,
        message: "qemu-img convert failed".into(),
    });
    let img = log.state.image("s-fail").unwrap();
    assert_eq!(img.status, ImageStatus::Killed);
    assert!(img.status_reason.contains("convert failed"));
    log.ok(snapshot("s1", "s-empty", None));
    log.ok(Command::OperationStepResult {
        operation_id: "s-empty".into(),
        ok: true,
        message: String::new(),
    });
    assert_eq!(log.op("s-empty").state, OpState::Failed);
    assert_eq!(
        log.state.image("s-empty").unwrap().status,
        ImageStatus::Killed
    );
}

#[test]
fn a_rebuild_switches_the_image_and_ends_with_the_agents_step() {
    let mut log = setup();
    log.ok(create(vec![new_server("s1", "h1")]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    let rebuild = |image: &str| Command::ServerRequest {
        server_id: "s1".into(),
        operation_id: format!("rb-{image}"),
        request: ServerRequest::Rebuild {
            image_id: image.into(),
        },
    };
    let out = log.apply(rebuild("missing"));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::NotFound { .. })),
        "{out:?}"
    );
    log.ok(rebuild("img"));
    assert_eq!(log.server("s1").status, ServerStatus::Rebuild);
    log.ok(Command::OperationStepResult {
        operation_id: "rb-img".into(),
        ok: true,
        message: String::new(),
    });
    let s = log.server("s1");
    assert_eq!(
        (s.status, s.task_state.as_str()),
        (ServerStatus::Active, "")
    );
}

fn create_group(id: &str, name: &str, policy: GroupPolicy) -> Command {
    Command::CreateServerGroup(ServerGroupSpec {
        id: id.into(),
        name: name.into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        policy,
    })
}

fn in_group(id: &str, host: &str, group: &str) -> NewServer {
    NewServer {
        group_id: group.into(),
        ..new_server(id, host)
    }
}

fn group(log: &Log, id: &str) -> ServerGroup {
    log.state
        .server_group_by_id(id)
        .expect("group exists")
        .clone()
}

#[test]
fn server_groups_charge_and_release_quota_and_names_are_unique_in_a_project() {
    let mut log = setup();
    log.ok(create_group("g1", "web", GroupPolicy::AntiAffinity));
    assert_eq!(log.usage(Resource::ServerGroups), 1);
    let out = log.apply(create_group("g2", "web", GroupPolicy::Affinity));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::AlreadyExists { .. })),
        "{out:?}"
    );
    log.ok(Command::SetQuota {
        project: "p1".into(),
        reset_to_default: vec![],
        changes: [(Resource::ServerGroups, 1)].into_iter().collect(),
    });
    let out = log.apply(create_group("g2", "db", GroupPolicy::Affinity));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::QuotaExceeded(_))),
        "{out:?}"
    );
    log.ok(Command::DeleteServerGroup {
        group_id: "g1".into(),
    });
    assert_eq!(log.usage(Resource::ServerGroups), 0);
    assert!(log.state.server_group_by_id("g1").is_none());
    log.ok(create_group("g2", "db", GroupPolicy::Affinity));
}

#[test]
fn hard_anti_affinity_is_rechecked_in_apply_within_one_create_and_across_creates() {
    let mut log = setup();
    log.ok(create_group("g1", "web", GroupPolicy::AntiAffinity));
    // Two servers of one create proposed onto the same host: refused as a whole.
    let out = log.apply(create(vec![
        in_group("s1", "h1", "g1"),
        in_group("s2", "h1", "g1"),
    ]));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("anti-affinity")),
        "{out:?}"
    );
    assert!(log.state.server("s1").is_none());
    assert!(group(&log, "g1").members.is_empty());
    log.ok(create(vec![
        in_group("s1", "h1", "g1"),
        in_group("s2", "h2", "g1"),
    ]));
    assert_eq!(group(&log, "g1").members, vec!["s1", "s2"]);
    assert_eq!(log.server("s1").group_id, "g1");
    // A later create placed (on a stale snapshot) next to a member is refused too.
    let out = log.apply(create(vec![in_group("s3", "h1", "g1")]));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(ref m)) if m.contains("anti-affinity")),
        "{out:?}"
    );
    // Servers outside the group are not constrained.
    log.ok(create(vec![new_server("s4", "h1")]));
}

#[test]
fn hard_affinity_keeps_one_create_on_one_host_and_groups_are_project_scoped() {
    let mut log = setup();
    log.ok(create_group("g1", "db", GroupPolicy::Affinity));
    let out = log.apply(create(vec![
        in_group("s1", "h1", "g1"),
        in_group("s2", "h2", "g1"),
    ]));
    assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
    log.ok(create(vec![
        in_group("s1", "h1", "g1"),
        in_group("s2", "h1", "g1"),
    ]));
    let out = log.apply(create(vec![in_group("s3", "h1", "missing")]));
    assert!(
        matches!(out, Outcome::Rejected(Rejection::NotFound { .. })),
        "{out:?}"
    );
}

#[test]
fn deleted_servers_leave_their_group_and_a_group_with_members_can_be_deleted() {
    let mut log = setup();
    log.ok(create_group("g1", "web", GroupPolicy::AntiAffinity));
    log.ok(create(vec![
        in_group("s1", "h1", "g1"),
        in_group("s2", "h2", "g1"),
    ]));
    log.report("h1", &[("s1", PowerState::Running, 1, "")]);
    log.request("s1", "del", ServerRequest::Delete);
    log.report("h1", &[]);
    assert!(log.state.server("s1").is_none());
    assert_eq!(group(&log, "g1").members, vec!["s2"]);
    // h1 is free for the group again.
    log.ok(create(vec![in_group("s3", "h1", "g1")]));
    assert_eq!(group(&log, "g1").members, vec!["s2", "s3"]);
    // Deleting the group forgets the grouping; the members keep running.
    log.ok(Command::DeleteServerGroup {
        group_id: "g1".into(),
    });
    assert_eq!(log.server("s2").status, ServerStatus::Build);
    log.request("s2", "del2", ServerRequest::Delete);
    log.report("h2", &[]);
    assert!(log.state.server("s2").is_none());
    let replica = State::decode(&log.state.encode()).expect("decodes");
    assert_eq!(replica.checksum(), log.state.checksum());
}

#[path = "move_tests.rs"]
mod move_tests;

#[path = "group_move_tests.rs"]
mod group_move_tests;

#[path = "server_network_tests.rs"]
mod server_network_tests;

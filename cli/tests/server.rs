//! `flotilla server` and `flotilla console` against a fake compute controller on a loopback
//! port, run in-process: what the requests carry, `--wait` following operations to success and
//! to failure (with the exit status and the error text), a watch that breaks and resumes, and
//! what the reads print.

mod compute_fake;

use compute_fake::{Compute, DEADLINE};
use flotilla_proto::v1;

struct Run {
    code: i32,
    out: String,
    err: String,
}

/// Runs `flotilla --endpoints E --config <empty> ARGS...` in-process.
async fn flotilla(endpoint: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let mut all = vec![
        "flotilla".to_string(),
        "--endpoints".into(),
        endpoint.into(),
        "--config".into(),
        config.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokio::time::timeout(DEADLINE, flotilla_cli::execute(all, &mut out, &mut err))
        .await
        .expect("the command finished before the test deadline");
    Run {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.out).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.out, run.err))
}

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim_start_matches(name)
        .trim()
        .to_string()
}

#[tokio::test]
async fn create_wait_follows_the_boot_to_active_and_prints_the_server() {
    let c = Compute::start().await;
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("init.yaml");
    std::fs::write(&user_data, "#cloud-config\n").unwrap();
    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "create",
            "web",
            "--flavor",
            "m1.tiny",
            "--image",
            "cirros",
            "--availability-zone",
            "az1",
            "--host",
            "cmp1",
            "--property",
            "role=web",
            "--user-data",
            user_data.to_str().unwrap(),
            "--wait",
            "-f",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let sent = c.rec.lock().unwrap().creates[0].clone();
    assert_eq!(
        (sent.name.as_str(), sent.flavor.as_str()),
        ("web", "m1.tiny")
    );
    assert_eq!(
        (sent.image.as_str(), sent.host.as_str()),
        ("cirros", "cmp1")
    );
    assert_eq!(sent.availability_zone, "az1");
    assert_eq!((sent.max_count, sent.min_count), (1, 0));
    assert_eq!(sent.metadata["role"], "web");
    assert_eq!(sent.user_data, b"#cloud-config\n");
    assert!(!sent.request_id.is_empty());
    assert_eq!(c.rec.lock().unwrap().watches, ["op-1"]);
    let out = json(&run);
    assert_eq!(out["name"], "web");
    assert_eq!(out["status"], "SERVER_STATUS_ACTIVE");
    assert_eq!(out["power_state"], "SERVER_POWER_STATE_RUNNING");
    assert!(
        run.err.is_empty(),
        "no progress lines for JSON: {}",
        run.err
    );
}

#[tokio::test]
async fn create_wait_fails_with_the_operation_error_when_the_boot_fails() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &[
            "server", "create", "bad", "--flavor", "f", "--image", "i", "--wait",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(
        field(&run.out, "status"),
        "ERROR",
        "the server is still shown"
    );
    assert_eq!(
        field(&run.out, "fault"),
        "no valid host left after 3 failed boot(s) [RESOURCE_EXHAUSTED]"
    );
    let lines: Vec<&str> = run.err.lines().collect();
    assert_eq!(
        lines,
        [
            "server \"bad\": boot running (scheduling)",
            "server \"bad\": boot running (spawning)",
            "server \"bad\": boot failed (spawning): no valid host left after 3 failed boot(s)",
            "flotilla: error: server \"bad\": boot failed: no valid host left after 3 failed \
             boot(s)",
        ]
    );
}

#[tokio::test]
async fn create_count_waits_for_each_server_and_reports_the_one_that_failed() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &[
            "server", "create", "half", "--flavor", "f", "--image", "i", "--count", "2", "--wait",
            "-f", "json",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(c.rec.lock().unwrap().creates[0].max_count, 2);
    assert_eq!(c.rec.lock().unwrap().watches, ["op-1", "op-2"]);
    let out = json(&run);
    assert_eq!(out[0]["name"], "half-1");
    assert_eq!(out[0]["status"], "SERVER_STATUS_ACTIVE");
    assert_eq!(out[1]["name"], "half-2");
    assert_eq!(out[1]["status"], "SERVER_STATUS_ERROR");
    assert_eq!(
        run.err,
        "flotilla: error: server \"half-2\": boot failed: no valid host left after 3 failed \
         boot(s)\nflotilla: error: 1 of 2 operations failed\n"
    );
}

#[tokio::test]
async fn a_watch_that_breaks_is_reopened_without_repeating_progress() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &[
            "server", "create", "flaky", "--flavor", "f", "--image", "i", "--wait",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(c.rec.lock().unwrap().watches, ["op-1", "op-1"]);
    assert_eq!(
        run.err.lines().collect::<Vec<_>>(),
        [
            "server \"flaky\": boot running (scheduling)",
            "server \"flaky\": boot running (spawning)",
            "server \"flaky\": boot succeeded (done)",
        ]
    );
    assert_eq!(field(&run.out, "status"), "ACTIVE");
    assert_eq!(
        field(&run.out, "image"),
        "cirros (img-1)",
        "names looked up"
    );
    assert_eq!(field(&run.out, "flavor"), "m1.tiny (f-1)");
}

#[tokio::test]
async fn create_without_wait_prints_the_building_server_and_watches_nothing() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &["server", "create", "web", "--flavor", "f", "--image", "i"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "status"), "BUILD");
    assert_eq!(field(&run.out, "task_state"), "scheduling");
    assert_eq!(field(&run.out, "current_operation_id"), "op-1");
    assert!(c.rec.lock().unwrap().watches.is_empty());
}

#[tokio::test]
async fn oversized_user_data_creates_nothing() {
    let c = Compute::start().await;
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'#'; 64 * 1024 + 1]).unwrap();
    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "create",
            "web",
            "--flavor",
            "f",
            "--image",
            "i",
            "--user-data",
            big.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err.contains("is 65537 bytes; at most 65536"),
        "{}",
        run.err
    );
    assert!(c.rec.lock().unwrap().creates.is_empty());
}

#[tokio::test]
async fn start_several_sends_one_request_each_and_waits_for_those_that_started() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Shutoff);
    c.add("b", v1::ServerStatus::Shutoff);
    let run = flotilla(
        &c.endpoint(),
        &[
            "server", "start", "a", "missing", "b", "--wait", "-f", "json",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    let actions = c.rec.lock().unwrap().actions.clone();
    let servers: Vec<&str> = actions.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(servers, ["a", "missing", "b"]);
    assert!(actions.iter().all(|(m, _, _)| *m == "start"));
    assert_ne!(actions[0].1, actions[2].1, "one request id per server");
    let out = json(&run);
    assert_eq!(out.as_array().unwrap().len(), 2);
    assert_eq!(out[0]["status"], "SERVER_STATUS_ACTIVE");
    assert_eq!(out[1]["name"], "b");
    assert_eq!(
        run.err,
        "flotilla: error: cannot start server missing: server \"missing\" not found \
         [NOT_FOUND]\nflotilla: error: 1 of 3 operations failed\n"
    );
}

#[tokio::test]
async fn without_wait_actions_print_the_operations_to_follow() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    c.add("b", v1::ServerStatus::Active);
    let run = flotilla(&c.endpoint(), &["server", "stop", "a", "b"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        "SERVER  OPERATION_ID\na       op-1\nb       op-2\n"
    );
    let run = flotilla(&c.endpoint(), &["server", "reboot", "--hard", "a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        "FIELD         VALUE\nserver        a\noperation_id  op-3\n"
    );
    assert_eq!(c.rec.lock().unwrap().actions[2].0, "reboot_hard");
    assert!(c.rec.lock().unwrap().watches.is_empty());
}

#[tokio::test]
async fn a_failed_reboot_wait_exits_1_with_the_error_and_the_fault() {
    let c = Compute::start().await;
    c.add("bad-1", v1::ServerStatus::Active);
    let run = flotilla(
        &c.endpoint(),
        &["server", "reboot", "bad-1", "--wait", "-f", "json"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(json(&run)["status"], "SERVER_STATUS_ERROR");
    assert_eq!(
        run.err,
        "flotilla: error: server \"bad-1\": reboot failed: no valid host left after 3 failed \
         boot(s); fault: the guest did not come back\n"
    );
}

#[tokio::test]
async fn delete_wait_prints_nothing_and_survives_an_unrecorded_operation() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    c.add("gone", v1::ServerStatus::Active);
    let run = flotilla(&c.endpoint(), &["server", "delete", "a", "gone", "--wait"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.out.is_empty(), "{}", run.out);
    assert!(c.server("a").is_none() && c.server("gone").is_none());
    assert_eq!(c.rec.lock().unwrap().watches, ["op-1", "op-never-recorded"]);
    assert!(
        run.err.contains("server \"a\": delete succeeded"),
        "{}",
        run.err
    );
    let run = flotilla(&c.endpoint(), &["server", "delete", "missing"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.err,
        "flotilla: error: server \"missing\" not found [NOT_FOUND]\n"
    );
}

#[tokio::test]
async fn rebuild_wait_sends_the_image_and_prints_the_server() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    let run = flotilla(
        &c.endpoint(),
        &[
            "server", "rebuild", "--image", "ubuntu", "a", "--wait", "-f", "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(c.rec.lock().unwrap().actions[0].2, "a|ubuntu");
    assert_eq!(json(&run)["status"], "SERVER_STATUS_ACTIVE");
}

#[tokio::test]
async fn backup_wait_prints_the_saved_image_and_image_create_its_handle() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    let run = flotilla(
        &c.endpoint(),
        &[
            "server", "backup", "create", "--name", "a-daily", "--type", "daily", "--rotate", "7",
            "a", "--wait", "-f", "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let backup = c.rec.lock().unwrap().backups[0].clone();
    assert_eq!(
        (backup.name.as_str(), backup.backup_type.as_str()),
        ("a-daily", "daily")
    );
    assert_eq!((backup.rotation, backup.server.as_str()), (7, "a"));
    let out = json(&run);
    assert_eq!(out["id"], "op-1");
    assert_eq!(out["status"], "IMAGE_STATUS_ACTIVE");

    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "image",
            "create",
            "--name",
            "snap",
            "--property",
            "k=v",
            "a",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(c.rec.lock().unwrap().snapshots[0].metadata["k"], "v");
    assert_eq!(field(&run.out, "image_id"), "op-2");
    assert_eq!(field(&run.out, "operation_id"), "op-2");
}

#[tokio::test]
async fn lock_and_unlock_print_the_server() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    let run = flotilla(&c.endpoint(), &["server", "lock", "--reason", "audit", "a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "locked"), "yes");
    assert_eq!(field(&run.out, "locked_reason"), "audit");
    let run = flotilla(&c.endpoint(), &["server", "unlock", "a", "--wait"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "locked"), "no");
}

#[tokio::test]
async fn list_sends_the_filters_follows_pages_and_shows_names() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    c.add("b", v1::ServerStatus::Shutoff);
    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "list",
            "--all-projects",
            "--status",
            "SHUTOFF",
            "--host",
            "cmp1",
            "--name",
            "b",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let lists = c.rec.lock().unwrap().lists.clone();
    assert_eq!(lists.len(), 2, "two pages");
    assert!(lists[0].all_projects);
    assert_eq!(lists[0].status, v1::ServerStatus::Shutoff as i32);
    assert_eq!(
        (lists[0].host.as_str(), lists[0].name.as_str()),
        ("cmp1", "b")
    );
    assert_eq!(lists[1].page_token, "t1");
    assert_eq!(
        run.out,
        "ID   NAME  STATUS   TASK_STATE  POWER_STATE  HOST  IMAGE   FLAVOR   NETWORKS  LOCKED\n\
         s-a  a     ACTIVE               NOSTATE      cmp1  cirros  m1.tiny            no\n\
         s-b  b     SHUTOFF              NOSTATE      cmp1  cirros  m1.tiny            no\n"
    );
    assert_eq!(
        c.rec.lock().unwrap().name_lookups,
        ["image img-1", "flavor f-1"],
        "one lookup per distinct id"
    );
    let run = flotilla(&c.endpoint(), &["server", "list", "--long", "-f", "json"]).await;
    assert_eq!(json(&run).as_array().unwrap().len(), 2);
    assert_eq!(
        c.rec.lock().unwrap().name_lookups.len(),
        2,
        "no lookups for JSON"
    );
}

#[tokio::test]
async fn action_list_is_newest_first() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    let run = flotilla(&c.endpoint(), &["server", "action", "list", "a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let lines: Vec<&str> = run.out.lines().collect();
    assert!(
        lines[0].starts_with("ACTION  RESULT   USER   START_TIME"),
        "{}",
        run.out
    );
    assert!(lines[1].starts_with("stop    error    alice  2024-05-01T12:01:00.000Z"));
    assert!(lines[2].starts_with("create  success  alice  2024-05-01T12:00:00.000Z"));
}

#[tokio::test]
async fn console_log_is_made_safe_for_the_terminal_in_both_spellings() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    for args in [
        &["console", "log", "show", "a", "--lines", "20"][..],
        &["server", "console", "log", "a", "--lines", "20"],
    ] {
        let run = flotilla(&c.endpoint(), args).await;
        assert_eq!(run.code, 0, "{}", run.err);
        assert_eq!(run.out, "login: \n\\u{1b}]0;pwned\\u{7}cirros\n");
        assert_eq!(
            run.err,
            "flotilla: note: older console output of server a was dropped\n"
        );
    }
    let console = c.rec.lock().unwrap().console.clone();
    assert!(console.iter().all(|r| r.lines == 20 && r.server == "a"));
    let run = flotilla(
        &c.endpoint(),
        &["console", "log", "show", "a", "-f", "json"],
    )
    .await;
    assert_eq!(
        json(&run)["output"],
        "login: \r\n\u{1b}]0;pwned\u{7}cirros\r\n"
    );
    assert_eq!(c.rec.lock().unwrap().console[2].lines, 0);
    assert!(run.err.is_empty());
}

#[tokio::test]
async fn diagnostics_print_fields_and_nics() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Active);
    let run = flotilla(&c.endpoint(), &["server", "diagnostics", "a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "driver"), "libvirt");
    assert_eq!(field(&run.out, "uptime"), "1m 30s");
    assert!(run.out.contains("\nPORT_ID  MAC"), "{}", run.out);
    assert!(
        run.out.contains("port-1   fa:16:3e:00:00:01  100"),
        "{}",
        run.out
    );
}

#[tokio::test]
async fn migrations_send_their_options_and_wait_prints_the_server() {
    let c = Compute::start().await;
    c.add("web-1", v1::ServerStatus::Active);
    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "migrate",
            "--live",
            "web-1",
            "--host",
            "cmp2",
            "--no-block-migration",
            "--timeout",
            "600",
            "--wait",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.err.contains("server \"web-1\": live_migrate succeeded"),
        "{}",
        run.err
    );
    assert_eq!(field(&run.out, "name"), "web-1");
    let run = flotilla(&c.endpoint(), &["server", "migrate", "web-1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "operation_id"), "op-2");
    assert_eq!(
        c.rec.lock().unwrap().moves,
        [
            "live_migrate web-1 host=cmp2 block=Some(false) timeout=600",
            "migrate web-1 host=",
        ]
    );
}

#[tokio::test]
async fn evacuate_warns_that_local_disks_are_lost_and_a_failure_exits_1() {
    let c = Compute::start().await;
    c.add("web-1", v1::ServerStatus::Unknown);
    c.add("bad-1", v1::ServerStatus::Unknown);
    let run = flotilla(
        &c.endpoint(),
        &["server", "evacuate", "web-1", "--host", "cmp3", "--force"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.err.contains("local disks are lost"), "{}", run.err);
    assert_eq!(field(&run.out, "server"), "web-1");
    let run = flotilla(&c.endpoint(), &["server", "evacuate", "bad-1", "--wait"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.err
            .contains("flotilla: error: server \"bad-1\": evacuate failed: no valid host"),
        "{}",
        run.err
    );
    assert_eq!(
        c.rec.lock().unwrap().moves,
        [
            "evacuate web-1 host=cmp3 force=true",
            "evacuate bad-1 host= force=false"
        ]
    );
}

#[tokio::test]
async fn create_sends_the_networks_in_order_then_the_ports() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "create",
            "web",
            "--flavor",
            "f",
            "--image",
            "i",
            "--port",
            "p1",
            "--network",
            "net1",
            "--network",
            "net2,fixed-ip=10.1.0.9",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    use v1::server_network_request::Target;
    let nics: Vec<(Option<Target>, String)> = c.rec.lock().unwrap().creates[0]
        .networks
        .iter()
        .map(|n| (n.target.clone(), n.fixed_ip.clone()))
        .collect();
    assert_eq!(
        nics,
        [
            (Some(Target::Network("net1".into())), String::new()),
            (Some(Target::Network("net2".into())), "10.1.0.9".into()),
            (Some(Target::Port("p1".into())), String::new()),
        ]
    );
    let bad = flotilla(
        &c.endpoint(),
        &[
            "server",
            "create",
            "web",
            "--flavor",
            "f",
            "--image",
            "i",
            "--network",
            "n,v4=1",
        ],
    )
    .await;
    assert_ne!(bad.code, 0);
    assert!(bad.err.contains("fixed-ip"), "{}", bad.err);
}

#[tokio::test]
async fn floating_ips_are_added_with_their_fixed_address_and_a_refusal_exits_non_zero() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &[
            "server",
            "add",
            "floating",
            "ip",
            "web",
            "172.24.4.10",
            "--fixed-ip-address",
            "10.0.0.7",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        c.rec.lock().unwrap().floating,
        [("web".into(), "172.24.4.10".into(), "10.0.0.7".into())]
    );
    assert!(run.out.contains("172.24.4.10"), "{}", run.out);
    let run = flotilla(
        &c.endpoint(),
        &["server", "remove", "floating", "ip", "web", "172.24.4.10"],
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(run.err.contains("not associated"), "{}", run.err);
}

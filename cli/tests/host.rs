//! `flotilla host` and `flotilla operation` against the fake compute controller, in-process.

mod compute_fake;

use compute_fake::{Compute, DEADLINE};
use flotilla_proto::v1;

struct Run {
    code: i32,
    out: String,
    err: String,
}

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

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim_start_matches(name)
        .trim()
        .to_string()
}

#[tokio::test]
async fn host_list_follows_pages_and_show_gives_capacity_and_lease() {
    let c = Compute::start().await;
    let run = flotilla(&c.endpoint(), &["host", "list", "--long"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let lines: Vec<&str> = run.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.out);
    assert!(lines[0].starts_with("ID   HOSTNAME  ZONE  STATE  STATUS   SERVERS  VCPUS"));
    assert!(lines[1].starts_with("h-1  cmp1      az1   up     enabled  1        1/8"));
    assert!(lines[2].starts_with("h-2  cmp2"));
    let run = flotilla(&c.endpoint(), &["host", "show", "cmp1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "state"), "up");
    assert_eq!(field(&run.out, "status"), "enabled");
    assert_eq!(field(&run.out, "vcpus"), "1 of 8 (12%)");
    assert_eq!(field(&run.out, "ram"), "512.0 MiB of 16.0 GiB (3%)");
    assert_eq!(field(&run.out, "lease_age"), "800ms");
    assert_eq!(field(&run.out, "server_count"), "1");
    let run = flotilla(&c.endpoint(), &["host", "show", "nope"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.err,
        "flotilla: error: host \"nope\" not found [NOT_FOUND]\n"
    );
}

#[tokio::test]
async fn host_changes_send_what_was_asked_and_print_the_host() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &["host", "disable", "cmp1", "--reason", "bad DIMM"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "status"), "disabled (bad DIMM)");
    let run = flotilla(&c.endpoint(), &["host", "enable", "cmp1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let run = flotilla(&c.endpoint(), &["host", "set", "--force-down", "cmp1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        field(&run.out, "state"),
        "down since 2024-05-01T12:00:00.000Z, forced down"
    );
    assert_eq!(field(&run.out, "lease_age"), "no lease");
    let run = flotilla(&c.endpoint(), &["host", "set", "--no-force-down", "cmp1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        c.rec.lock().unwrap().host_calls,
        [
            "disable cmp1 bad DIMM",
            "enable cmp1 true",
            "force_down cmp1 true",
            "force_down cmp1 false"
        ]
    );
}

#[tokio::test]
async fn operation_watch_prints_each_change_and_fails_with_the_error() {
    let c = Compute::start().await;
    c.add("bad-1", v1::ServerStatus::Active);
    c.add("a", v1::ServerStatus::Shutoff);
    let run = flotilla(&c.endpoint(), &["server", "start", "bad-1", "a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);

    let run = flotilla(&c.endpoint(), &["operation", "watch", "op-1"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.out,
        "TIME                      STATE       STEP              MESSAGE\n\
         2024-05-01T12:00:00.000Z  running     scheduling\n\
         2024-05-01T12:00:00.000Z  running     spawning\n\
         2024-05-01T12:00:00.000Z  failed      spawning          no valid host left after 3 \
         failed boot(s)\n"
    );
    assert_eq!(
        run.err,
        "flotilla: error: operation op-1: start failed: no valid host left after 3 failed \
         boot(s)\n"
    );

    let run = flotilla(&c.endpoint(), &["operation", "watch", "op-2", "-f", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let states: Vec<String> = run
        .out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].to_string())
        .collect();
    assert_eq!(
        states,
        [
            "\"OPERATION_STATE_RUNNING\"",
            "\"OPERATION_STATE_RUNNING\"",
            "\"OPERATION_STATE_SUCCEEDED\""
        ]
    );
    let run = flotilla(&c.endpoint(), &["operation", "watch", "op-9"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.err.contains("operation \"op-9\" not found [NOT_FOUND]"),
        "{}",
        run.err
    );
}

#[tokio::test]
async fn operation_list_resolves_a_server_name_filters_and_sorts_newest_first() {
    let c = Compute::start().await;
    c.add("a", v1::ServerStatus::Shutoff);
    c.add("b", v1::ServerStatus::Shutoff);
    let run = flotilla(&c.endpoint(), &["server", "start", "a", "b"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let run = flotilla(&c.endpoint(), &["server", "stop", "a"]).await;
    assert_eq!(run.code, 0, "{}", run.err);

    let run = flotilla(
        &c.endpoint(),
        &[
            "operation",
            "list",
            "--resource",
            "a",
            "--state",
            "succeeded",
            "--all-projects",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let sent = c.rec.lock().unwrap().op_lists[0].clone();
    assert_eq!(sent.resource_id, "s-a", "the name became the id");
    assert_eq!(sent.states, [v1::OperationState::Succeeded as i32]);
    assert!(sent.all_projects);
    let ids: Vec<&str> = run
        .out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["op-3", "op-1"], "newest first:\n{}", run.out);
    assert!(
        run.out.contains("op-3  stop   server s-a  succeeded  done"),
        "{}",
        run.out
    );

    let run = flotilla(
        &c.endpoint(),
        &["operation", "list", "--resource", "s-gone"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(c.rec.lock().unwrap().op_lists[1].resource_id, "s-gone");

    let run = flotilla(&c.endpoint(), &["operation", "show", "op-2", "-f", "yaml"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.starts_with("id: op-2\nkind: start\n"),
        "{}",
        run.out
    );
}

#[tokio::test]
async fn a_dry_run_prints_the_plan_and_starts_nothing() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &[
            "host",
            "evacuate",
            "cmp1",
            "--dry-run",
            "--target-host",
            "cmp2",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        run.out,
        "SERVER  SERVER_ID  DESTINATION  METHOD   NOTE\n\
         web-1   s-1        cmp2         rebuild\n\
         db-1    s-2        cmp2         rebuild\n"
    );
    assert_eq!(run.err, "dry run: nothing was started\n");
    assert_eq!(
        c.rec.lock().unwrap().host_calls,
        ["evacuate cmp1 live=false parallel=0 target=cmp2 dry_run=true"]
    );
}

#[tokio::test]
async fn a_drain_prints_the_plan_and_the_operation_to_follow() {
    let c = Compute::start().await;
    let run = flotilla(
        &c.endpoint(),
        &["host", "drain", "cmp1", "--live", "--parallel", "3"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out
            .contains("web-1   s-1        cmp2         live_migrate\n"),
        "{}",
        run.out
    );
    assert!(run.out.ends_with("\noperation op-1\n"), "{}", run.out);
    assert!(
        run.err.contains("flotilla operation watch op-1"),
        "{}",
        run.err
    );
    assert_eq!(
        c.rec.lock().unwrap().host_calls,
        ["drain cmp1 live=true parallel=3 dry_run=false"]
    );
    let run = flotilla(&c.endpoint(), &["-f", "json", "host", "drain", "cmp1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let json: serde_json::Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(json["operation_id"], "op-2");
    assert_eq!(json["plan"][1]["method"], "cold_migrate");
}

#[tokio::test]
async fn a_waited_evacuation_that_moves_every_server_prints_their_results() {
    let c = Compute::start().await;
    let run = flotilla(&c.endpoint(), &["host", "evacuate", "cmp1", "--wait"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(
            "NAME   ID   STATE      DESTINATION  OPERATION_ID  MESSAGE\n\
             web-1  s-1  succeeded  cmp2         op-1-web-1    moved\n\
             db-1   s-2  succeeded  cmp2         op-1-db-1     moved\n"
        ),
        "{}",
        run.out
    );
    assert!(
        run.err
            .contains("host \"cmp1\": host_evacuate running (move_servers): items: 0 of 2 done\n"),
        "{}",
        run.err
    );
    assert!(run.err.contains("host_evacuate succeeded"), "{}", run.err);
}

#[tokio::test]
async fn a_partly_failed_drain_exits_1_naming_the_servers_that_did_not_move() {
    let c = Compute::start().await;
    let run = flotilla(&c.endpoint(), &["host", "drain", "half-1", "--wait"]).await;
    assert_eq!(run.code, 1, "{}", run.out);
    assert!(
        run.out
            .contains("db-1   s-2  failed     cmp2         op-1-db-1     no host has room"),
        "{}",
        run.out
    );
    assert!(
        run.err.ends_with(
            "flotilla: error: server \"db-1\" (to cmp2): failed: no host has room for 64 GiB\n\
             flotilla: error: host \"half-1\": host_drain partially failed: 1 of 2 server(s) \
             did not move: db-1\n"
        ),
        "{}",
        run.err
    );
    let run = flotilla(
        &c.endpoint(),
        &["-f", "json", "host", "drain", "half-1", "--wait"],
    )
    .await;
    assert_eq!(run.code, 1);
    let json: serde_json::Value = serde_json::from_str(&run.out).unwrap();
    assert_eq!(json["state"], "OPERATION_STATE_PARTIALLY_SUCCEEDED");
    assert_eq!(json["items"][1]["message"], "no host has room for 64 GiB");
}

#[tokio::test]
async fn cancel_prints_the_operation_and_show_lists_its_items() {
    let c = Compute::start().await;
    let run = flotilla(&c.endpoint(), &["host", "evacuate", "cmp1", "--live"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let run = flotilla(&c.endpoint(), &["operation", "cancel", "op-1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "state"), "cancelling");
    assert_eq!(field(&run.out, "cancellable"), "no");
    let run = flotilla(&c.endpoint(), &["operation", "show", "op-1"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(field(&run.out, "items"), "2 of 2 done");
    assert!(run.out.contains("\nNAME   ID   STATE"), "{}", run.out);
    let run = flotilla(&c.endpoint(), &["operation", "cancel", "op-404"]).await;
    assert_eq!(run.code, 1);
    assert!(run.err.contains("[NOT_FOUND]"), "{}", run.err);
}

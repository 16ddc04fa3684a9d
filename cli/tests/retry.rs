//! The shared retry policy and the commands on top of it, run in-process against fake
//! controllers on loopback ports.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dead_endpoint, FakeServer, Mode, DEADLINE};
use tokio::sync::watch;

struct Outcome {
    code: i32,
    out: String,
    err: String,
}

/// Runs `flotilla ARGS...` in-process. `--config` points at a missing default so the tester's
/// own config file cannot interfere; flags win over any FLOTILLA_* variables.
async fn flotilla(args: &[&str]) -> Outcome {
    let mut argv = vec!["flotilla"];
    argv.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokio::time::timeout(DEADLINE, flotilla_cli::execute(argv, &mut out, &mut err))
        .await
        .expect("command finished before the test deadline");
    Outcome {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

#[tokio::test]
async fn unavailable_with_leader_hint_retries_on_the_leader_with_the_same_request_id() {
    let leader = FakeServer::start(Mode::Answer).await;
    let follower = FakeServer::start(Mode::Unavailable {
        leader: Some(leader.endpoint()),
    })
    .await;

    // Only the follower is configured: the leader is reached through the hint alone.
    let endpoints = follower.endpoint();
    let r = flotilla(&[
        "--endpoints",
        &endpoints,
        "-f",
        "json",
        "project",
        "create",
        "web",
    ])
    .await;
    assert_eq!(r.code, 0, "stderr: {}", r.err);

    let asked = follower.rec.calls();
    let answered = leader.rec.calls();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(asked[0].request_id, answered[0].request_id);
    let rid = uuid::Uuid::parse_str(&answered[0].request_id).expect("request id is a uuid");
    assert_eq!(rid.get_version_num(), 4);

    let json: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(json["name"], "web");
    assert_eq!(json["enabled"], true);
}

#[tokio::test]
async fn an_unreachable_endpoint_falls_over_to_the_next() {
    let dead = dead_endpoint().await;
    let good = FakeServer::start(Mode::Answer).await;
    let endpoints = format!("{dead},{}", good.endpoint());
    let r = flotilla(&[
        "--endpoints",
        &endpoints,
        "project",
        "create",
        "web",
        "--property",
        "k=v",
    ])
    .await;
    assert_eq!(r.code, 0, "stderr: {}", r.err);
    assert_eq!(good.rec.calls().len(), 1);
    assert!(r.out.contains("properties"), "{}", r.out);
    assert!(r.out.contains("k=v"), "{}", r.out);
}

#[tokio::test]
async fn not_found_is_not_retried_and_fails_with_exit_code_1() {
    let missing = FakeServer::start(Mode::NotFound).await;
    let other = FakeServer::start(Mode::Answer).await;
    let endpoints = format!("{},{}", missing.endpoint(), other.endpoint());
    let r = flotilla(&["--endpoints", &endpoints, "project", "show", "x"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "flotilla: error: project \"x\" not found [NOT_FOUND]\n"
    );
    assert_eq!(missing.rec.calls().len(), 1);
    assert!(other.rec.calls().is_empty());
}

#[tokio::test]
async fn retries_stop_at_the_overall_deadline() {
    let stuck = FakeServer::start(Mode::Unavailable { leader: None }).await;
    let started = Instant::now();
    let endpoints = stuck.endpoint();
    let r = flotilla(&[
        "--endpoints",
        &endpoints,
        "--timeout",
        "1",
        "project",
        "list",
    ])
    .await;
    assert_eq!(r.code, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        r.err.starts_with("flotilla: error: gave up after"),
        "{}",
        r.err
    );
    assert!(r.err.contains("not the leader [UNAVAILABLE]"), "{}", r.err);
    assert!(stuck.rec.calls().len() > 1, "UNAVAILABLE is retried");
}

#[tokio::test]
async fn list_follows_page_tokens_to_the_end() {
    let server = FakeServer::start(Mode::Answer).await;
    let endpoints = server.endpoint();
    let r = flotilla(&[
        "--endpoints",
        &endpoints,
        "project",
        "list",
        "-f",
        "json",
        "--stale",
    ])
    .await;
    assert_eq!(r.code, 0, "stderr: {}", r.err);
    let json: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p2", "p3", "p4"]);
    assert_eq!(server.rec.calls().len(), 3);

    let r = flotilla(&["--endpoints", &endpoints, "project", "list"]).await;
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "ID     NAME  ENABLED  DESCRIPTION");
    assert_eq!(lines[1], "id-p1  p1    yes");
    assert_eq!(lines.len(), 5);
}

#[tokio::test]
async fn deleting_several_reports_each_failure_and_uses_one_request_id_per_item() {
    let server = FakeServer::start(Mode::Answer).await;
    let endpoints = server.endpoint();
    let r = flotilla(&[
        "--endpoints",
        &endpoints,
        "project",
        "delete",
        "a",
        "missing",
        "b",
    ])
    .await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "flotilla: error: cannot delete project missing: project \"missing\" not found \
         [NOT_FOUND]\nflotilla: error: 1 of 3 operations failed\n"
    );
    let calls = server.rec.calls();
    assert_eq!(calls.len(), 3);
    assert_ne!(calls[0].request_id, calls[1].request_id);
    assert_ne!(calls[1].request_id, calls[2].request_id);
}

/// Output that can be inspected while the command is still writing.
#[derive(Clone)]
struct SharedOut {
    buf: Arc<Mutex<Vec<u8>>>,
    changed: Arc<watch::Sender<()>>,
}

impl SharedOut {
    fn text(&self) -> String {
        String::from_utf8(self.buf.lock().unwrap().clone()).unwrap()
    }
}

impl Write for SharedOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.lock().unwrap().extend_from_slice(data);
        self.changed.send_replace(());
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn event_watch_resumes_after_the_last_revision_seen() {
    let server = FakeServer::start(Mode::Answer).await;
    let endpoints = server.endpoint();
    let mut out = SharedOut {
        buf: Arc::default(),
        changed: Arc::new(watch::channel(()).0),
    };
    let mut rx = out.changed.subscribe();
    let reader = out.clone();
    let mut err = Vec::new();
    let argv = [
        "flotilla",
        "--endpoints",
        &endpoints,
        "-f",
        "json",
        "event",
        "watch",
    ];
    let watch = flotilla_cli::execute(argv, &mut out, &mut err);
    let third_event = tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|_| reader.text().lines().count() >= 3),
    );
    tokio::select! {
        code = watch => panic!("watch ended with {code}"),
        waited = third_event => { waited.expect("three events before the deadline").unwrap(); }
    }

    let revisions: Vec<u64> = reader
        .text()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["revision"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(revisions, [1, 2, 3]);
    let froms: Vec<u64> = server.rec.calls().iter().map(|c| c.from_revision).collect();
    assert_eq!(froms, [0, 2], "the second stream resumes after revision 2");
}

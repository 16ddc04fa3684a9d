//! The built `flotilla` binary: exit codes, error text, and where settings come from
//! (flag > environment > config file), with a clean environment per child process.

mod common;

use std::path::Path;
use std::process::Output;

use common::{dead_endpoint, FakeServer, Mode, DEADLINE};

/// Runs the binary with only the given environment variables (plus HOME = `home`).
async fn flotilla(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.env_clear()
        .env("HOME", home)
        .args(args)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("flotilla finished before the test deadline")
        .expect("flotilla runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn not_found_exits_1_with_a_one_line_error() {
    let home = tempfile::tempdir().unwrap();
    let server = FakeServer::start(Mode::NotFound).await;
    let o = flotilla(
        home.path(),
        &[],
        &["--endpoints", &server.endpoint(), "project", "show", "x"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "flotilla: error: project \"x\" not found [NOT_FOUND]\n"
    );
    assert!(stdout(&o).is_empty());
    assert_eq!(server.rec.calls().len(), 1, "NOT_FOUND is not retried");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let o = flotilla(home.path(), &[], &["project", "frobnicate"]).await;
    assert_eq!(o.status.code(), Some(2));
    let o = flotilla(
        home.path(),
        &[],
        &["flavor", "create", "small", "--vcpus", "1"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "--ram and --disk are required");
}

#[tokio::test]
async fn missing_endpoints_say_how_to_set_them() {
    let home = tempfile::tempdir().unwrap();
    let o = flotilla(home.path(), &[], &["project", "list"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("flotilla: error: no controller endpoints configured"),
        "{err}"
    );
    assert!(err.contains("FLOTILLA_ENDPOINTS"), "{err}");
}

#[tokio::test]
async fn the_default_config_file_is_used_when_nothing_else_is_set() {
    let home = tempfile::tempdir().unwrap();
    let server = FakeServer::start(Mode::Answer).await;
    let dir = home.path().join("xdg/flotilla");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "endpoints = [\"{}\"]\ntoken = \"file-token\"\n",
            server.endpoint()
        ),
    )
    .unwrap();
    let xdg = home.path().join("xdg");
    let o = flotilla(
        home.path(),
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
        &["project", "show", "web"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let calls = server.rec.calls();
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer file-token"));
}

#[tokio::test]
async fn flags_beat_environment_beat_config_file() {
    let home = tempfile::tempdir().unwrap();
    let server = FakeServer::start(Mode::Answer).await;
    let dead = dead_endpoint().await;
    let config = home.path().join("flotilla.toml");
    // The file names an endpoint where nothing listens: it must lose to the environment.
    std::fs::write(
        &config,
        format!("endpoints = [\"{dead}\"]\ntoken = \"file-token\"\n"),
    )
    .unwrap();
    let env = [
        ("FLOTILLA_CONFIG", config.to_str().unwrap()),
        ("FLOTILLA_ENDPOINTS", &server.endpoint()),
        ("FLOTILLA_TOKEN", "env-token"),
    ];

    let o = flotilla(
        home.path(),
        &env,
        &["--timeout", "5", "project", "show", "a"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = flotilla(
        home.path(),
        &env,
        &["project", "show", "b", "--token", "flag-token"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Only the file's token is left when the environment does not set one.
    let o = flotilla(
        home.path(),
        &[("FLOTILLA_CONFIG", config.to_str().unwrap())],
        &["project", "show", "c", "--endpoints", &server.endpoint()],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let tokens: Vec<Option<String>> = server
        .rec
        .calls()
        .into_iter()
        .map(|c| c.authorization)
        .collect();
    assert_eq!(
        tokens,
        [
            Some("Bearer env-token".to_string()),
            Some("Bearer flag-token".to_string()),
            Some("Bearer file-token".to_string()),
        ]
    );
}

#[tokio::test]
async fn an_explicit_config_file_must_exist() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("nope.toml");
    let o = flotilla(
        home.path(),
        &[],
        &["--config", missing.to_str().unwrap(), "project", "list"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read config file"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn login_prints_the_token_and_save_writes_a_private_config_file() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let server = FakeServer::start(Mode::Answer).await;
    let pw = home.path().join("pw");
    std::fs::write(&pw, "s3cret-pass\nignored second line\n").unwrap();
    let config = home.path().join("cfg").join("flotilla.toml");
    let endpoint = server.endpoint();
    let args = [
        "--endpoints",
        endpoint.as_str(),
        "--config",
        config.to_str().unwrap(),
        "login",
        "--user",
        "alice",
        "--project",
        "web",
        "--password-file",
        pw.to_str().unwrap(),
    ];
    // An explicit config file must exist to be read, so save into it only after it exists.
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "").unwrap();
    let mut with_save = args.to_vec();
    with_save.push("--save");
    let o = flotilla(home.path(), &[], &with_save).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "flt1.alice.sig\n");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert_eq!(saved.trim(), "token = \"flt1.alice.sig\"");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut json = args.to_vec();
    json.extend(["-f", "json"]);
    let o = flotilla(home.path(), &[], &json).await;
    let token: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(token["token_id"], "tid-1");
    assert_eq!(token["project_id"], "web");

    let o = flotilla(home.path(), &[], &["login", "--user", "alice"]).await;
    assert_eq!(o.status.code(), Some(2), "a password source is required");
}

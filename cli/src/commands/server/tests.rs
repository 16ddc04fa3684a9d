//! Grammar of `flotilla server` and `flotilla console`: what parses into what, and what is a
//! usage error.

use super::*;
use crate::args::{Cli, Command};
use crate::commands::console::{ConsoleCmd, ConsoleLogCmd};
use clap::Parser;

fn parse(args: &[&str]) -> Result<ServerCmd, clap::Error> {
    let mut all = vec!["flotilla", "server"];
    all.extend(args);
    match Cli::try_parse_from(all)?.command {
        Command::Server(cmd) => Ok(cmd),
        other => panic!("unexpected {other:?}"),
    }
}

fn usage_error(args: &[&str]) -> String {
    let err = parse(args).expect_err("a usage error");
    assert_eq!(err.exit_code(), 2, "{err}");
    err.to_string()
}

#[test]
fn create_needs_a_name_a_flavor_and_an_image() {
    let ServerCmd::Create(a) =
        parse(&["create", "web", "--flavor", "m1", "--image", "cirros"]).unwrap()
    else {
        panic!("create")
    };
    assert_eq!((a.name.as_str(), a.flavor.as_str()), ("web", "m1"));
    assert_eq!(a.image, "cirros");
    assert_eq!(a.count, 1);
    assert!(a.availability_zone.is_none() && a.group.is_none() && a.host.is_none());
    assert!(a.properties.is_empty() && a.user_data.is_none() && !a.wait.wait);
    usage_error(&["create", "web", "--image", "cirros"]);
    usage_error(&["create", "web", "--flavor", "m1"]);
    usage_error(&["create", "--flavor", "m1", "--image", "cirros"]);
}

#[test]
fn create_takes_every_option() {
    let ServerCmd::Create(a) = parse(&[
        "create",
        "web",
        "--flavor",
        "m1",
        "--image",
        "cirros",
        "--availability-zone",
        "az1",
        "--group",
        "spread",
        "--count",
        "3",
        "--host",
        "cmp1",
        "--property",
        "role=web",
        "--property",
        "tier=front",
        "--user-data",
        "init.yaml",
        "--wait",
    ])
    .unwrap() else {
        panic!("create")
    };
    assert_eq!(a.availability_zone.as_deref(), Some("az1"));
    assert_eq!(a.group.as_deref(), Some("spread"));
    assert_eq!(a.count, 3);
    assert_eq!(a.host.as_deref(), Some("cmp1"));
    assert_eq!(
        a.properties,
        [
            ("role".into(), "web".into()),
            ("tier".into(), "front".into())
        ]
    );
    assert_eq!(
        a.user_data.as_deref(),
        Some(std::path::Path::new("init.yaml"))
    );
    assert!(a.wait.wait);
}

#[test]
fn a_count_below_one_and_bad_properties_are_usage_errors() {
    let base = ["create", "web", "--flavor", "m1", "--image", "cirros"];
    for extra in [
        &["--count", "0"][..],
        &["--count", "x"],
        &["--property", "novalue"],
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        usage_error(&args);
    }
}

#[test]
fn list_filters_by_status_in_nova_words_any_case() {
    let ServerCmd::List(a) = parse(&[
        "list",
        "--all-projects",
        "--status",
        "ACTIVE",
        "--host",
        "cmp1",
        "--name",
        "web",
        "--long",
    ])
    .unwrap() else {
        panic!("list")
    };
    assert!(a.all_projects && a.long);
    assert_eq!(a.status, Some(StatusFilter::Active));
    assert_eq!(
        (a.host.as_deref(), a.name.as_deref()),
        (Some("cmp1"), Some("web"))
    );
    for (word, want) in [
        ("shutoff", StatusFilter::Shutoff),
        ("HARD_REBOOT", StatusFilter::HardReboot),
        ("hard-reboot", StatusFilter::HardReboot),
        ("Error", StatusFilter::Error),
    ] {
        let ServerCmd::List(a) = parse(&["list", "--status", word]).unwrap() else {
            panic!("list")
        };
        assert_eq!(a.status, Some(want), "{word}");
    }
    assert_eq!(
        v1::ServerStatus::from(StatusFilter::HardReboot),
        v1::ServerStatus::HardReboot
    );
    usage_error(&["list", "--status", "running"]);
}

#[test]
fn start_stop_and_delete_take_several_servers() {
    for verb in ["start", "stop", "delete"] {
        let cmd = parse(&[verb, "a", "b", "--wait"]).unwrap();
        let a = match cmd {
            ServerCmd::Start(a) | ServerCmd::Stop(a) | ServerCmd::Delete(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.servers, ["a", "b"]);
        assert!(a.wait.wait);
        usage_error(&[verb]);
    }
}

#[test]
fn single_server_actions_take_their_options_and_wait() {
    let ServerCmd::Reboot(a) = parse(&["reboot", "--hard", "web", "--wait"]).unwrap() else {
        panic!("reboot")
    };
    assert!(a.hard && a.wait.wait && a.server == "web");
    let ServerCmd::Reboot(a) = parse(&["reboot", "web"]).unwrap() else {
        panic!("reboot")
    };
    assert!(!a.hard && !a.wait.wait);
    let ServerCmd::Lock(a) = parse(&["lock", "--reason", "audit", "web"]).unwrap() else {
        panic!("lock")
    };
    assert_eq!(
        (a.server.as_str(), a.reason.as_deref()),
        ("web", Some("audit"))
    );
    let ServerCmd::Unlock(a) = parse(&["unlock", "web", "--wait"]).unwrap() else {
        panic!("unlock")
    };
    assert!(a.wait.wait);
    let ServerCmd::Rebuild(a) = parse(&["rebuild", "--image", "ubuntu", "web"]).unwrap() else {
        panic!("rebuild")
    };
    assert_eq!(a.image.as_deref(), Some("ubuntu"));
    let ServerCmd::Rebuild(a) = parse(&["rebuild", "web"]).unwrap() else {
        panic!("rebuild")
    };
    assert!(a.image.is_none());
    usage_error(&["reboot", "a", "b"]);
}

#[test]
fn backup_create_takes_name_type_and_rotation() {
    let ServerCmd::Backup(BackupCmd::Create(a)) = parse(&[
        "backup",
        "create",
        "--name",
        "web-daily",
        "--type",
        "daily",
        "--rotate",
        "7",
        "web",
        "--wait",
    ])
    .unwrap() else {
        panic!("backup create")
    };
    assert_eq!(a.server, "web");
    assert_eq!(
        (a.name.as_str(), a.backup_type.as_str()),
        ("web-daily", "daily")
    );
    assert_eq!(a.rotate, 7);
    assert!(a.wait.wait);
    let ServerCmd::Backup(BackupCmd::Create(a)) =
        parse(&["backup", "create", "--name", "b", "--type", "weekly", "web"]).unwrap()
    else {
        panic!("backup create")
    };
    assert_eq!(a.rotate, 1, "keeps one by default");
    usage_error(&["backup", "create", "--type", "daily", "web"]);
    usage_error(&["backup", "create", "--name", "b", "web"]);
    usage_error(&[
        "backup", "create", "--name", "b", "--type", "d", "--rotate", "0", "web",
    ]);
}

#[test]
fn image_create_takes_a_name_and_properties() {
    let ServerCmd::Image(ServerImageCmd::Create(a)) = parse(&[
        "image",
        "create",
        "--name",
        "snap",
        "--property",
        "k=v",
        "web",
    ])
    .unwrap() else {
        panic!("image create")
    };
    assert_eq!((a.server.as_str(), a.name.as_str()), ("web", "snap"));
    assert_eq!(a.properties, [("k".into(), "v".into())]);
    usage_error(&["image", "create", "web"]);
}

#[test]
fn reads_take_one_server() {
    assert!(matches!(
        parse(&["action", "list", "web"]).unwrap(),
        ServerCmd::Action(ActionCmd::List { server }) if server == "web"
    ));
    assert!(matches!(
        parse(&["diagnostics", "web"]).unwrap(),
        ServerCmd::Diagnostics { server } if server == "web"
    ));
    assert!(matches!(
        parse(&["show", "web"]).unwrap(),
        ServerCmd::Show { server } if server == "web"
    ));
    let ServerCmd::Console(ServerConsoleCmd::Log(a)) =
        parse(&["console", "log", "web", "--lines", "20"]).unwrap()
    else {
        panic!("server console log")
    };
    assert_eq!((a.server.as_str(), a.lines), ("web", Some(20)));
    usage_error(&["console", "log", "web", "--lines", "0"]);
}

#[test]
fn console_log_show_is_the_same_command() {
    let cli =
        Cli::try_parse_from(["flotilla", "console", "log", "show", "web", "--lines", "5"]).unwrap();
    let Command::Console(ConsoleCmd::Log(ConsoleLogCmd::Show(a))) = cli.command else {
        panic!("console log show")
    };
    assert_eq!((a.server.as_str(), a.lines), ("web", Some(5)));
    let cli = Cli::try_parse_from(["flotilla", "console", "log", "show", "web"]).unwrap();
    let Command::Console(ConsoleCmd::Log(ConsoleLogCmd::Show(a))) = cli.command else {
        panic!("console log show")
    };
    assert_eq!(a.lines, None);
}

#[test]
fn oversized_user_data_is_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.yaml");
    std::fs::write(&ok, vec![b'a'; MAX_USER_DATA]).unwrap();
    assert_eq!(read_user_data(&ok).unwrap().len(), MAX_USER_DATA);
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'a'; MAX_USER_DATA + 1]).unwrap();
    let err = read_user_data(&big).unwrap_err().to_string();
    assert!(err.contains("65537 bytes; at most 65536"), "{err}");
    let err = read_user_data(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, CliError::ReadFile { .. }), "{err}");
}

#[test]
fn server_group_commands_take_nova_policy_names() {
    let ServerCmd::Group(group::GroupCmd::Create(a)) =
        parse(&["group", "create", "web", "--policy", "anti-affinity"]).unwrap()
    else {
        panic!("group create")
    };
    assert_eq!(a.name, "web");
    assert_eq!(a.policy, group::Policy::AntiAffinity);
    assert_eq!(
        v1::ServerGroupPolicy::from(group::Policy::SoftAntiAffinity),
        v1::ServerGroupPolicy::SoftAntiAffinity
    );
    usage_error(&["group", "create", "web"]);
    usage_error(&["group", "create", "web", "--policy", "spread"]);
    let ServerCmd::Group(group::GroupCmd::Delete { groups }) =
        parse(&["group", "delete", "a", "b"]).unwrap()
    else {
        panic!("group delete")
    };
    assert_eq!(groups, vec!["a", "b"]);
    usage_error(&["group", "delete"]);
    assert!(matches!(
        parse(&["group", "list", "--all-projects"]).unwrap(),
        ServerCmd::Group(group::GroupCmd::List(group::GroupListArgs {
            all_projects: true
        }))
    ));
    assert!(matches!(
        parse(&["group", "show", "web"]).unwrap(),
        ServerCmd::Group(group::GroupCmd::Show { .. })
    ));
}

#[test]
fn a_server_group_view_names_its_policy_and_counts_members() {
    use crate::output::Tabular;
    use crate::views::server_group::ServerGroupView;
    let view = ServerGroupView::from(v1::ServerGroup {
        id: "g1".into(),
        name: "web".into(),
        policy: v1::ServerGroupPolicy::AntiAffinity as i32,
        member_ids: vec!["s1".into(), "s2".into()],
        ..Default::default()
    });
    assert_eq!(view.row(), vec!["g1", "web", "anti-affinity", "2"]);
    assert!(view
        .fields()
        .contains(&("member_ids", "s1, s2".to_string())));
}

#[test]
fn migrate_is_cold_unless_live() {
    let ServerCmd::Migrate(a) = parse(&["migrate", "web-1"]).unwrap() else {
        panic!("migrate")
    };
    assert_eq!(a.server, "web-1");
    assert!(!a.live && a.host.is_none() && a.timeout.is_none() && !a.wait.wait);
    assert_eq!(a.block_migration(), None);
    let ServerCmd::Migrate(a) = parse(&["migrate", "web-1", "--host", "cmp2", "--wait"]).unwrap()
    else {
        panic!("migrate")
    };
    assert_eq!(a.host.as_deref(), Some("cmp2"));
    assert!(a.wait.wait && !a.live);
}

#[test]
fn live_migrate_takes_block_migration_either_way_and_a_timeout() {
    let ServerCmd::Migrate(a) = parse(&[
        "migrate",
        "--live",
        "web-1",
        "--host",
        "cmp2",
        "--block-migration",
        "--timeout",
        "600",
        "--wait",
    ])
    .unwrap() else {
        panic!("migrate")
    };
    assert!(a.live && a.wait.wait);
    assert_eq!(a.block_migration(), Some(true));
    assert_eq!(a.timeout, Some(600));
    assert_eq!(a.host.as_deref(), Some("cmp2"));
    let ServerCmd::Migrate(a) =
        parse(&["migrate", "--live", "--no-block-migration", "web-1"]).unwrap()
    else {
        panic!("migrate")
    };
    assert_eq!(a.block_migration(), Some(false));
    assert_eq!(a.timeout, None);
}

#[test]
fn the_migration_timeout_is_not_the_global_call_deadline() {
    let cli = Cli::try_parse_from([
        "flotilla",
        "--timeout",
        "30",
        "server",
        "migrate",
        "--live",
        "web-1",
        "--timeout",
        "900",
    ])
    .unwrap();
    assert_eq!(cli.global.timeout, std::time::Duration::from_secs(30));
    let Command::Server(ServerCmd::Migrate(a)) = cli.command else {
        panic!("migrate")
    };
    assert_eq!(a.timeout, Some(900));
    // Without either, the call deadline keeps its default and the controller picks the
    // migration's.
    let cli = Cli::try_parse_from(["flotilla", "server", "migrate", "--live", "web-1"]).unwrap();
    assert_eq!(cli.global.timeout, std::time::Duration::from_secs(15));
    let Command::Server(ServerCmd::Migrate(a)) = cli.command else {
        panic!("migrate")
    };
    assert_eq!(a.timeout, None);
    // --call-timeout sets the call deadline from after the subcommand.
    let cli = Cli::try_parse_from([
        "flotilla",
        "server",
        "migrate",
        "web-1",
        "--call-timeout",
        "40",
    ])
    .unwrap();
    assert_eq!(cli.global.timeout, std::time::Duration::from_secs(40));
    // Other server commands still take the global --timeout after the subcommand.
    let cli =
        Cli::try_parse_from(["flotilla", "server", "evacuate", "web-1", "--timeout", "7"]).unwrap();
    assert_eq!(cli.global.timeout, std::time::Duration::from_secs(7));
}

#[test]
fn live_only_options_and_contradictions_are_usage_errors() {
    for bad in [
        &["migrate", "web-1", "--block-migration"][..],
        &["migrate", "web-1", "--no-block-migration"],
        &["migrate", "web-1", "--timeout", "60"],
        &[
            "migrate",
            "--live",
            "web-1",
            "--block-migration",
            "--no-block-migration",
        ],
        &["migrate", "--live", "web-1", "--timeout", "0"],
        &["migrate", "--live", "web-1", "--timeout", "soon"],
        &["migrate", "--live"],
        &["migrate", "a", "b"],
    ] {
        usage_error(bad);
    }
    let err = usage_error(&["migrate", "web-1", "--timeout", "60"]);
    assert!(err.contains("--live"), "{err}");
}

#[test]
fn evacuate_takes_a_host_and_force_needs_it() {
    let ServerCmd::Evacuate(a) =
        parse(&["evacuate", "web-1", "--host", "cmp3", "--force", "--wait"]).unwrap()
    else {
        panic!("evacuate")
    };
    assert_eq!(
        (a.server.as_str(), a.host.as_deref()),
        ("web-1", Some("cmp3"))
    );
    assert!(a.force && a.wait.wait);
    let ServerCmd::Evacuate(a) = parse(&["evacuate", "web-1"]).unwrap() else {
        panic!("evacuate")
    };
    assert!(!a.force && a.host.is_none());
    let err = usage_error(&["evacuate", "web-1", "--force"]);
    assert!(err.contains("--host"), "{err}");
    usage_error(&["evacuate"]);
}

#[test]
fn the_evacuation_note_says_local_disks_are_lost() {
    let note = moves::evacuate_note("web-1");
    assert!(note.contains("\"web-1\""), "{note}");
    assert!(note.contains("local disks are lost"), "{note}");
}

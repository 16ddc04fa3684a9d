//! Server views: Nova's words in tables, proto names in JSON/YAML.

use std::collections::HashMap;

use super::*;
use crate::args::Format;
use crate::output::{list, show};

fn server() -> v1::Server {
    v1::Server {
        id: "s-1".into(),
        name: "web-1".into(),
        project_id: "p-1".into(),
        user_id: "u-1".into(),
        flavor_id: "f-1".into(),
        image_id: "img-1".into(),
        status: v1::ServerStatus::Active as i32,
        task_state: String::new(),
        power_state: v1::ServerPowerState::Running as i32,
        host: "cmp1".into(),
        host_status: v1::HostState::Up as i32,
        availability_zone: "az1".into(),
        placement_generation: 3,
        metadata: HashMap::from([("role".into(), "web".into())]),
        user_data: b"#cloud-config\n".to_vec(),
        meta: Some(v1::ResourceMeta {
            create_revision: 5,
            update_revision: 8,
            created_at_ms: 1_714_564_800_000,
            updated_at_ms: 1_714_564_860_000,
        }),
        launched_at_ms: 1_714_564_830_000,
        ..Default::default()
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

fn names() -> (HashMap<String, String>, HashMap<String, String>) {
    (
        HashMap::from([("img-1".to_string(), "cirros".to_string())]),
        HashMap::from([("f-1".to_string(), "m1.tiny".to_string())]),
    )
}

#[test]
fn lists_use_nova_columns_and_words() {
    let (images, flavors) = names();
    let mut building = server();
    building.id = "s-2".into();
    building.name = "web-2".into();
    building.status = v1::ServerStatus::HardReboot as i32;
    building.task_state = "rebooting_hard".into();
    building.power_state = v1::ServerPowerState::Unspecified as i32;
    building.locked = true;
    building.image_id = "img-gone".into();
    let views: Vec<ServerView> = [server(), building]
        .into_iter()
        .map(|s| ServerView::from(s).with_names(&images, &flavors))
        .collect();
    assert_eq!(
        list(Format::Table, &views).unwrap(),
        "ID   NAME   STATUS       TASK_STATE      POWER_STATE  HOST  IMAGE     FLAVOR   \
         NETWORKS  LOCKED\n\
         s-1  web-1  ACTIVE                       Running      cmp1  cirros    m1.tiny  \
         \x20         no\n\
         s-2  web-2  HARD_REBOOT  rebooting_hard  NOSTATE      cmp1  img-gone  m1.tiny  \
         \x20         yes\n"
    );
}

#[test]
fn long_lists_add_zone_project_creation_and_properties() {
    let long = ServerLongView(ServerView::from(server()));
    let text = list(Format::Table, &[long]).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.ends_with(
            "LOCKED  AVAILABILITY_ZONE  PROJECT_ID  CREATED_AT                PROPERTIES"
        ),
        "{header}"
    );
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .ends_with("no      az1                p-1         2024-05-01T12:00:00.000Z  role=web"),
        "{text}"
    );
}

#[test]
fn show_adds_fault_generation_operation_launch_and_metadata() {
    let (images, flavors) = names();
    let mut s = server();
    s.status = v1::ServerStatus::Error as i32;
    s.fault = Some(v1::ServerFault {
        message: "no valid host".into(),
        code: 8,
        details: "3 hosts tried".into(),
        time_ms: 1_714_564_900_000,
    });
    s.current_operation_id = "op-9".into();
    s.locked = true;
    s.locked_reason = "audit".into();
    let text = show(
        Format::Table,
        &ServerView::from(s).with_names(&images, &flavors),
    )
    .unwrap();
    assert_eq!(field(&text, "status"), "ERROR");
    assert_eq!(field(&text, "power_state"), "Running");
    assert_eq!(field(&text, "host_status"), "up");
    assert_eq!(field(&text, "image"), "cirros (img-1)");
    assert_eq!(field(&text, "flavor"), "m1.tiny (f-1)");
    assert_eq!(field(&text, "locked"), "yes");
    assert_eq!(field(&text, "locked_reason"), "audit");
    assert_eq!(
        field(&text, "fault"),
        "no valid host [RESOURCE_EXHAUSTED] at 2024-05-01T12:01:40.000Z"
    );
    assert_eq!(field(&text, "fault_details"), "3 hosts tried");
    assert_eq!(field(&text, "placement_generation"), "3");
    assert_eq!(field(&text, "current_operation_id"), "op-9");
    assert_eq!(field(&text, "launched_at"), "2024-05-01T12:00:30.000Z");
    assert_eq!(field(&text, "metadata"), "role=web");
    assert_eq!(field(&text, "user_data"), "14 bytes");
}

#[test]
fn fault_codes_outside_grpc_stay_numbers_and_healthy_servers_show_no_fault() {
    let mut s = server();
    s.fault = Some(v1::ServerFault {
        message: "boot failed".into(),
        code: 500,
        ..Default::default()
    });
    assert_eq!(ServerView::from(s).fault_cell(), "boot failed [500]");
    let text = show(Format::Table, &ServerView::from(server())).unwrap();
    assert!(text.contains("\nfault\n"), "empty without a fault:\n{text}");
    assert!(!text.contains("fault_details"), "{text}");
    assert!(!text.contains("locked_reason"), "{text}");
    assert_eq!(field(&text, "image"), "img-1", "no name looked up");
}

#[test]
fn networks_group_addresses_like_nova() {
    let mut s = server();
    let address = |net: &str, ip: &str| v1::ServerAddress {
        network_name: net.into(),
        ip: ip.into(),
        ..Default::default()
    };
    s.addresses = vec![
        address("private", "10.0.0.5"),
        address("public", "203.0.113.7"),
        address("private", "172.24.4.10"),
    ];
    assert_eq!(
        ServerView::from(s).networks_cell(),
        "private=10.0.0.5, 172.24.4.10; public=203.0.113.7"
    );
}

#[test]
fn json_and_yaml_mirror_the_proto() {
    let (images, flavors) = names();
    let view = ServerView::from(server()).with_names(&images, &flavors);
    let json: serde_json::Value =
        serde_json::from_str(&show(Format::Json, &view).unwrap()).unwrap();
    assert_eq!(json["status"], "SERVER_STATUS_ACTIVE");
    assert_eq!(json["power_state"], "SERVER_POWER_STATE_RUNNING");
    assert_eq!(json["host_status"], "HOST_STATE_UP");
    assert_eq!(json["image_id"], "img-1");
    assert!(json.get("image_name").is_none(), "names are for tables");
    assert_eq!(json["user_data"], "I2Nsb3VkLWNvbmZpZwo=");
    assert_eq!(json["metadata"]["role"], "web");
    assert_eq!(json["placement_generation"], 3);
    assert!(json["fault"].is_null());
    let yaml = show(Format::Yaml, &view).unwrap();
    assert!(yaml.starts_with("id: s-1\nname: web-1\n"), "{yaml}");
    let long = list(Format::Json, &[ServerLongView(view)]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&long).unwrap();
    assert_eq!(json[0]["id"], "s-1", "--long changes only the table");
}

#[test]
fn unknown_enum_values_show_their_number() {
    let mut s = server();
    s.status = 99;
    s.power_state = 42;
    let view = ServerView::from(s);
    assert_eq!(
        (view.status.as_str(), view.power_state.as_str()),
        ("99", "42")
    );
    assert_eq!(view.status_word(), "99");
}

#[test]
fn actions_say_who_did_what_when_with_what_result() {
    let action = ServerActionView::from(v1::ServerAction {
        action: "reboot --hard".into(),
        request_id: "r-1".into(),
        user_id: "alice".into(),
        project_id: "p-1".into(),
        start_time_ms: 1_714_564_800_000,
        finish_time_ms: 1_714_564_805_000,
        result: v1::ServerActionResult::Error as i32,
        message: "guest did not stop".into(),
        operation_id: "op-1".into(),
    });
    let text = list(Format::Table, std::slice::from_ref(&action)).unwrap();
    assert_eq!(
        text.lines().nth(1).unwrap(),
        "reboot --hard  error   alice  2024-05-01T12:00:00.000Z  2024-05-01T12:00:05.000Z  \
         op-1          r-1         guest did not stop"
    );
    let json: serde_json::Value =
        serde_json::from_str(&show(Format::Json, &action).unwrap()).unwrap();
    assert_eq!(json["result"], "SERVER_ACTION_RESULT_ERROR");
    assert_eq!(json["finish_time_ms"], 1_714_564_805_000i64);
}

#[test]
fn operation_handles_name_the_server_as_given() {
    let refs = vec![OperationRefView {
        server: "web-1".into(),
        operation_id: "op-1".into(),
    }];
    assert_eq!(
        list(Format::Table, &refs).unwrap(),
        "SERVER  OPERATION_ID\nweb-1   op-1\n"
    );
    let image = ServerImageView {
        server: "web-1".into(),
        image_id: "op-2".into(),
        operation_id: "op-2".into(),
    };
    assert_eq!(
        show(Format::Table, &image).unwrap(),
        "FIELD         VALUE\nserver        web-1\nimage_id      op-2\noperation_id  op-2\n"
    );
}

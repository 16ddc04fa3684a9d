//! Views of servers, their action history and the handles of the operations acting on them.
//! JSON/YAML carry every proto field (enums by their proto names, `user_data` in base64 as in
//! the proto3 JSON mapping); tables use the words Nova operators know (`ACTIVE`, `HARD_REBOOT`,
//! `Running`, `NOSTATE`) and show image and flavor names when the command could look them up.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use flotilla_proto::v1;
use serde::Serialize;

use super::host::host_state_name;
use super::{meta_fields, sorted, MetaView};
use crate::error::code_name;
use crate::output::{format_time_ms, map_cell, short_enum, yes_no, Tabular};

pub fn server_status_name(value: i32) -> String {
    v1::ServerStatus::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn power_state_name(value: i32) -> String {
    v1::ServerPowerState::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn address_type_name(value: i32) -> String {
    v1::ServerAddressType::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn action_result_name(value: i32) -> String {
    v1::ServerActionResult::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

/// `SERVER_STATUS_HARD_REBOOT` → `HARD_REBOOT` (Nova's words); nothing for UNSPECIFIED.
pub fn status_word(name: &str) -> String {
    match name.strip_prefix("SERVER_STATUS_") {
        Some("UNSPECIFIED") => String::new(),
        Some(word) => word.to_string(),
        None => name.to_string(),
    }
}

/// Nova's power state words: `Running`, `Shutdown`, ..., `NOSTATE` when nothing is reported.
fn power_word(name: &str) -> String {
    match name.strip_prefix("SERVER_POWER_STATE_") {
        Some("UNSPECIFIED") => "NOSTATE".to_string(),
        Some(word) => {
            let lower = word.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
        None => name.to_string(),
    }
}

/// `13` → `UNAVAILABLE`; numbers outside the gRPC codes stay numbers.
fn fault_code(code: i32) -> String {
    if (0..=16).contains(&code) {
        code_name(tonic::Code::from(code)).to_string()
    } else {
        code.to_string()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AddressView {
    pub network_id: String,
    pub network_name: String,
    pub port_id: String,
    pub ip: String,
    pub mac: String,
    pub address_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultView {
    pub message: String,
    pub code: i32,
    pub details: String,
    pub time_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub flavor_id: String,
    pub image_id: String,
    pub status: String,
    pub task_state: String,
    pub power_state: String,
    pub host: String,
    pub host_status: String,
    pub availability_zone: String,
    pub server_group_id: String,
    pub locked: bool,
    pub locked_reason: String,
    pub addresses: Vec<AddressView>,
    pub fault: Option<FaultView>,
    pub placement_generation: u64,
    pub metadata: BTreeMap<String, String>,
    pub key_name: String,
    /// Base64, as the proto3 JSON mapping writes bytes.
    pub user_data: String,
    pub meta: Option<MetaView>,
    pub launched_at_ms: i64,
    pub current_operation_id: String,
    /// Names looked up for tables; not part of JSON/YAML (which carry the ids).
    #[serde(skip)]
    pub image_name: Option<String>,
    #[serde(skip)]
    pub flavor_name: Option<String>,
    #[serde(skip)]
    user_data_len: usize,
}

impl From<v1::Server> for ServerView {
    fn from(s: v1::Server) -> Self {
        ServerView {
            id: s.id,
            name: s.name,
            project_id: s.project_id,
            user_id: s.user_id,
            flavor_id: s.flavor_id,
            image_id: s.image_id,
            status: server_status_name(s.status),
            task_state: s.task_state,
            power_state: power_state_name(s.power_state),
            host: s.host,
            host_status: host_state_name(s.host_status),
            availability_zone: s.availability_zone,
            server_group_id: s.server_group_id,
            locked: s.locked,
            locked_reason: s.locked_reason,
            addresses: s
                .addresses
                .into_iter()
                .map(|a| AddressView {
                    network_id: a.network_id,
                    network_name: a.network_name,
                    port_id: a.port_id,
                    ip: a.ip,
                    mac: a.mac,
                    address_type: address_type_name(a.address_type),
                })
                .collect(),
            fault: s.fault.map(|f| FaultView {
                message: f.message,
                code: f.code,
                details: f.details,
                time_ms: f.time_ms,
            }),
            placement_generation: s.placement_generation,
            metadata: sorted(s.metadata),
            key_name: s.key_name,
            user_data: base64::engine::general_purpose::STANDARD.encode(&s.user_data),
            user_data_len: s.user_data.len(),
            meta: s.meta.map(MetaView::from),
            launched_at_ms: s.launched_at_ms,
            current_operation_id: s.current_operation_id,
            image_name: None,
            flavor_name: None,
        }
    }
}

impl ServerView {
    /// Fills in the image and flavor names found in `images` / `flavors` (id → name).
    pub fn with_names(
        mut self,
        images: &HashMap<String, String>,
        flavors: &HashMap<String, String>,
    ) -> Self {
        self.image_name = images.get(&self.image_id).cloned();
        self.flavor_name = flavors.get(&self.flavor_id).cloned();
        self
    }

    pub fn status_word(&self) -> String {
        status_word(&self.status)
    }

    fn power_word(&self) -> String {
        power_word(&self.power_state)
    }

    /// The name when known, else the id.
    fn short_ref(name: &Option<String>, id: &str) -> String {
        name.clone().unwrap_or_else(|| id.to_string())
    }

    /// `name (id)` when the name is known, else the id.
    fn long_ref(name: &Option<String>, id: &str) -> String {
        match name {
            Some(n) if !id.is_empty() => format!("{n} ({id})"),
            _ => id.to_string(),
        }
    }

    /// Nova's layout: `net1=10.0.0.5, 172.24.4.10; net2=10.1.0.7`, networks in order of first
    /// appearance.
    pub fn networks_cell(&self) -> String {
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for a in &self.addresses {
            let net = if a.network_name.is_empty() {
                a.network_id.clone()
            } else {
                a.network_name.clone()
            };
            match groups.iter_mut().find(|(n, _)| *n == net) {
                Some((_, ips)) => ips.push(&a.ip),
                None => groups.push((net, vec![&a.ip])),
            }
        }
        groups
            .iter()
            .map(|(net, ips)| format!("{net}={}", ips.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `message [CODE] at TIME`; empty without a fault.
    pub fn fault_cell(&self) -> String {
        match &self.fault {
            None => String::new(),
            Some(f) => {
                let mut text = format!("{} [{}]", f.message, fault_code(f.code));
                if f.time_ms != 0 {
                    text.push_str(" at ");
                    text.push_str(&format_time_ms(f.time_ms));
                }
                text
            }
        }
    }
}

impl Tabular for ServerView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "STATUS",
            "TASK_STATE",
            "POWER_STATE",
            "HOST",
            "IMAGE",
            "FLAVOR",
            "NETWORKS",
            "LOCKED",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.status_word(),
            self.task_state.clone(),
            self.power_word(),
            self.host.clone(),
            Self::short_ref(&self.image_name, &self.image_id),
            Self::short_ref(&self.flavor_name, &self.flavor_id),
            self.networks_cell(),
            yes_no(self.locked),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("status", self.status_word()),
            ("task_state", self.task_state.clone()),
            ("power_state", self.power_word()),
            ("host", self.host.clone()),
            ("host_status", short_enum(&self.host_status, "HOST_STATE_")),
            ("availability_zone", self.availability_zone.clone()),
            ("image", Self::long_ref(&self.image_name, &self.image_id)),
            ("flavor", Self::long_ref(&self.flavor_name, &self.flavor_id)),
            ("networks", self.networks_cell()),
            ("locked", yes_no(self.locked)),
        ];
        if !self.locked_reason.is_empty() {
            f.push(("locked_reason", self.locked_reason.clone()));
        }
        f.push(("fault", self.fault_cell()));
        if let Some(fault) = self.fault.as_ref().filter(|f| !f.details.is_empty()) {
            f.push(("fault_details", fault.details.clone()));
        }
        f.extend([
            (
                "placement_generation",
                self.placement_generation.to_string(),
            ),
            ("current_operation_id", self.current_operation_id.clone()),
            ("launched_at", format_time_ms(self.launched_at_ms)),
            ("metadata", map_cell(&self.metadata)),
            ("project_id", self.project_id.clone()),
            ("user_id", self.user_id.clone()),
            ("server_group_id", self.server_group_id.clone()),
            ("key_name", self.key_name.clone()),
            (
                "user_data",
                if self.user_data_len == 0 {
                    String::new()
                } else {
                    format!("{} bytes", self.user_data_len)
                },
            ),
        ]);
        f.extend(meta_fields(&self.meta));
        f
    }
}

/// `server list --long`: more columns; JSON/YAML are the same as without `--long`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ServerLongView(pub ServerView);

impl Tabular for ServerLongView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "STATUS",
            "TASK_STATE",
            "POWER_STATE",
            "HOST",
            "IMAGE",
            "FLAVOR",
            "NETWORKS",
            "LOCKED",
            "AVAILABILITY_ZONE",
            "PROJECT_ID",
            "CREATED_AT",
            "PROPERTIES",
        ]
    }
    fn row(&self) -> Vec<String> {
        let s = &self.0;
        let mut row = s.row();
        row.extend([
            s.availability_zone.clone(),
            s.project_id.clone(),
            format_time_ms(s.meta.as_ref().map_or(0, |m| m.created_at_ms)),
            map_cell(&s.metadata),
        ]);
        row
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.0.fields()
    }
}

/// One entry of `server action list`: who did what, when, with what result.
#[derive(Debug, Clone, Serialize)]
pub struct ServerActionView {
    pub action: String,
    pub request_id: String,
    pub user_id: String,
    pub project_id: String,
    pub start_time_ms: i64,
    pub finish_time_ms: i64,
    pub result: String,
    pub message: String,
    pub operation_id: String,
}

impl From<v1::ServerAction> for ServerActionView {
    fn from(a: v1::ServerAction) -> Self {
        ServerActionView {
            action: a.action,
            request_id: a.request_id,
            user_id: a.user_id,
            project_id: a.project_id,
            start_time_ms: a.start_time_ms,
            finish_time_ms: a.finish_time_ms,
            result: action_result_name(a.result),
            message: a.message,
            operation_id: a.operation_id,
        }
    }
}

impl Tabular for ServerActionView {
    fn columns() -> &'static [&'static str] {
        &[
            "ACTION",
            "RESULT",
            "USER",
            "START_TIME",
            "FINISH_TIME",
            "OPERATION_ID",
            "REQUEST_ID",
            "MESSAGE",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.action.clone(),
            short_enum(&self.result, "SERVER_ACTION_RESULT_"),
            self.user_id.clone(),
            format_time_ms(self.start_time_ms),
            format_time_ms(self.finish_time_ms),
            self.operation_id.clone(),
            self.request_id.clone(),
            self.message.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("action", self.action.clone()),
            ("result", short_enum(&self.result, "SERVER_ACTION_RESULT_")),
            ("user_id", self.user_id.clone()),
            ("project_id", self.project_id.clone()),
            ("start_time", format_time_ms(self.start_time_ms)),
            ("finish_time", format_time_ms(self.finish_time_ms)),
            ("operation_id", self.operation_id.clone()),
            ("request_id", self.request_id.clone()),
            ("message", self.message.clone()),
        ]
    }
}

/// What an action that starts an operation prints without `--wait`: the handle to follow.
#[derive(Debug, Clone, Serialize)]
pub struct OperationRefView {
    /// The server as named on the command line.
    pub server: String,
    pub operation_id: String,
}

impl Tabular for OperationRefView {
    fn columns() -> &'static [&'static str] {
        &["SERVER", "OPERATION_ID"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.server.clone(), self.operation_id.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("server", self.server.clone()),
            ("operation_id", self.operation_id.clone()),
        ]
    }
}

/// What `server backup create` / `server image create` print without `--wait`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerImageView {
    pub server: String,
    pub image_id: String,
    pub operation_id: String,
}

impl Tabular for ServerImageView {
    fn columns() -> &'static [&'static str] {
        &["SERVER", "IMAGE_ID", "OPERATION_ID"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.server.clone(),
            self.image_id.clone(),
            self.operation_id.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("server", self.server.clone()),
            ("image_id", self.image_id.clone()),
            ("operation_id", self.operation_id.clone()),
        ]
    }
}

#[cfg(test)]
mod tests;

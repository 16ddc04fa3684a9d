//! Views of compute hosts. JSON/YAML carry every proto field; tables say `up`/`down since ...`,
//! `enabled`/`disabled (reason)`, and capacity as `used of total (percent)`.

use flotilla_proto::v1;
use serde::Serialize;

use super::{meta_fields, MetaView};
use crate::args::Format;
use crate::error::CliError;
use crate::output::{
    format_time_ms, human_bytes, human_duration_ms, list, short_enum, structured, yes_no, Tabular,
};

pub fn host_state_name(value: i32) -> String {
    v1::HostState::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CapacityView {
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
}

impl From<v1::HostCapacity> for CapacityView {
    fn from(c: v1::HostCapacity) -> Self {
        CapacityView {
            vcpus: c.vcpus,
            ram_mib: c.ram_mib,
            disk_gib: c.disk_gib,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RatiosView {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub id: String,
    pub hostname: String,
    pub address: String,
    /// VXLAN endpoint (the address unless the host has a separate underlay).
    pub tunnel_address: String,
    pub state: String,
    pub down_since_ms: i64,
    pub enabled: bool,
    pub disabled_reason: String,
    pub forced_down: bool,
    pub availability_zone: String,
    pub hypervisor_type: String,
    pub hypervisor_version: String,
    pub cpu_model: String,
    pub capacity: Option<CapacityView>,
    pub usage: Option<CapacityView>,
    pub allocation_ratios: Option<RatiosView>,
    /// -1 = no lease.
    pub lease_age_ms: i64,
    pub agent_version: String,
    pub server_count: u32,
    pub meta: Option<MetaView>,
}

impl From<v1::Host> for HostView {
    fn from(h: v1::Host) -> Self {
        HostView {
            id: h.id,
            hostname: h.hostname,
            address: h.address,
            tunnel_address: h.tunnel_address,
            state: host_state_name(h.state),
            down_since_ms: h.down_since_ms,
            enabled: h.enabled,
            disabled_reason: h.disabled_reason,
            forced_down: h.forced_down,
            availability_zone: h.availability_zone,
            hypervisor_type: h.hypervisor_type,
            hypervisor_version: h.hypervisor_version,
            cpu_model: h.cpu_model,
            capacity: h.capacity.map(Into::into),
            usage: h.usage.map(Into::into),
            allocation_ratios: h.allocation_ratios.map(|r| RatiosView {
                cpu: r.cpu,
                ram: r.ram,
                disk: r.disk,
            }),
            lease_age_ms: h.lease_age_ms,
            agent_version: h.agent_version,
            server_count: h.server_count,
            meta: h.meta.map(MetaView::from),
        }
    }
}

/// `used of total (percent)`, each amount shown by `fmt`.
fn usage_cell(used: u64, total: u64, fmt: impl Fn(u64) -> String) -> String {
    if total == 0 {
        return format!("{} of {}", fmt(used), fmt(total));
    }
    let percent = used as f64 * 100.0 / total as f64;
    format!("{} of {} ({percent:.0}%)", fmt(used), fmt(total))
}

/// `used/total` for list columns.
fn ratio_cell(used: u64, total: u64, fmt: impl Fn(u64) -> String) -> String {
    format!("{}/{}", fmt(used), fmt(total))
}

fn plain(n: u64) -> String {
    n.to_string()
}

fn mib(n: u64) -> String {
    human_bytes(n.saturating_mul(MIB))
}

fn gib(n: u64) -> String {
    human_bytes(n.saturating_mul(GIB))
}

impl HostView {
    fn state_word(&self) -> String {
        short_enum(&self.state, "HOST_STATE_")
    }

    /// `up`, `down since TIME`, `down (forced) since TIME` for list columns.
    fn state_cell(&self) -> String {
        let mut text = self.state_word();
        if self.forced_down {
            text.push_str(" (forced)");
        }
        if self.state == "HOST_STATE_DOWN" && self.down_since_ms != 0 {
            text.push_str(" since ");
            text.push_str(&format_time_ms(self.down_since_ms));
        }
        text
    }

    /// `up`, or `down since TIME`, plus `, forced down` when an operator fenced it.
    fn state_detail(&self) -> String {
        let mut text = self.state_word();
        if self.state == "HOST_STATE_DOWN" && self.down_since_ms != 0 {
            text.push_str(" since ");
            text.push_str(&format_time_ms(self.down_since_ms));
        }
        if self.forced_down {
            text.push_str(", forced down");
        }
        text
    }

    fn status_word(&self) -> String {
        if self.enabled { "enabled" } else { "disabled" }.to_string()
    }

    /// `enabled`, `disabled`, or `disabled (reason)`.
    fn status_detail(&self) -> String {
        if self.enabled || self.disabled_reason.is_empty() {
            self.status_word()
        } else {
            format!("disabled ({})", self.disabled_reason)
        }
    }

    fn lease_age(&self) -> String {
        if self.lease_age_ms < 0 {
            "no lease".to_string()
        } else {
            human_duration_ms(self.lease_age_ms)
        }
    }

    fn amounts(&self) -> (CapacityView, CapacityView) {
        (
            self.usage.unwrap_or_default(),
            self.capacity.unwrap_or_default(),
        )
    }
}

impl Tabular for HostView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID", "HOSTNAME", "ZONE", "STATE", "STATUS", "SERVERS", "VCPUS", "RAM", "DISK",
        ]
    }
    fn row(&self) -> Vec<String> {
        let (used, cap) = self.amounts();
        vec![
            self.id.clone(),
            self.hostname.clone(),
            self.availability_zone.clone(),
            self.state_cell(),
            self.status_word(),
            self.server_count.to_string(),
            ratio_cell(used.vcpus.into(), cap.vcpus.into(), plain),
            ratio_cell(used.ram_mib, cap.ram_mib, mib),
            ratio_cell(used.disk_gib, cap.disk_gib, gib),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let (used, cap) = self.amounts();
        let mut f = vec![
            ("id", self.id.clone()),
            ("hostname", self.hostname.clone()),
            ("address", self.address.clone()),
            ("tunnel_address", self.tunnel_address.clone()),
            ("state", self.state_detail()),
            ("status", self.status_detail()),
            ("forced_down", yes_no(self.forced_down)),
            ("availability_zone", self.availability_zone.clone()),
            ("lease_age", self.lease_age()),
            ("server_count", self.server_count.to_string()),
            (
                "vcpus",
                usage_cell(used.vcpus.into(), cap.vcpus.into(), plain),
            ),
            ("ram", usage_cell(used.ram_mib, cap.ram_mib, mib)),
            ("disk", usage_cell(used.disk_gib, cap.disk_gib, gib)),
        ];
        if let Some(r) = self.allocation_ratios {
            f.push((
                "allocation_ratios",
                format!("cpu={}, ram={}, disk={}", r.cpu, r.ram, r.disk),
            ));
        }
        f.extend([
            ("hypervisor_type", self.hypervisor_type.clone()),
            ("hypervisor_version", self.hypervisor_version.clone()),
            ("cpu_model", self.cpu_model.clone()),
            ("agent_version", self.agent_version.clone()),
        ]);
        f.extend(meta_fields(&self.meta));
        f
    }
}

/// `host list --long`: more columns; JSON/YAML are the same as without `--long`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct HostLongView(pub HostView);

impl Tabular for HostLongView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "HOSTNAME",
            "ZONE",
            "STATE",
            "STATUS",
            "SERVERS",
            "VCPUS",
            "RAM",
            "DISK",
            "ADDRESS",
            "HYPERVISOR",
            "LEASE_AGE",
            "DISABLED_REASON",
        ]
    }
    fn row(&self) -> Vec<String> {
        let h = &self.0;
        let mut row = h.row();
        let hypervisor = [h.hypervisor_type.as_str(), h.hypervisor_version.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        row.extend([
            h.address.clone(),
            hypervisor,
            h.lease_age(),
            h.disabled_reason.clone(),
        ]);
        row
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.0.fields()
    }
}

/// Where one server of a host evacuation or drain is planned to go.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntryView {
    pub server_id: String,
    pub server_name: String,
    /// Empty when no host fits (see `message`).
    pub destination: String,
    /// `rebuild`, `live_migrate` or `cold_migrate`.
    pub method: String,
    pub message: String,
}

impl From<v1::HostPlanEntry> for PlanEntryView {
    fn from(e: v1::HostPlanEntry) -> Self {
        PlanEntryView {
            server_id: e.server_id,
            server_name: e.server_name,
            destination: e.destination,
            method: e.method,
            message: e.message,
        }
    }
}

impl Tabular for PlanEntryView {
    fn columns() -> &'static [&'static str] {
        &["SERVER", "SERVER_ID", "DESTINATION", "METHOD", "NOTE"]
    }
    fn row(&self) -> Vec<String> {
        let destination = if self.destination.is_empty() {
            "(none)".to_string()
        } else {
            self.destination.clone()
        };
        vec![
            self.server_name.clone(),
            self.server_id.clone(),
            destination,
            self.method.clone(),
            self.message.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        ["server", "server_id", "destination", "method", "note"]
            .into_iter()
            .zip(self.row())
            .collect()
    }
}

/// The answer of `host evacuate` / `host drain`: the operation started (empty for a dry run)
/// and the plan. Tables print the plan, then the operation id on a line of its own.
#[derive(Debug, Clone, Serialize)]
pub struct HostJobView {
    pub operation_id: String,
    pub plan: Vec<PlanEntryView>,
}

impl From<v1::EvacuateHostResponse> for HostJobView {
    fn from(r: v1::EvacuateHostResponse) -> Self {
        HostJobView {
            operation_id: r.operation_id,
            plan: r.plan.into_iter().map(Into::into).collect(),
        }
    }
}

impl HostJobView {
    /// The plan table, then `operation ID` unless this was a dry run; JSON/YAML: the object.
    pub fn render(&self, format: Format) -> Result<String, CliError> {
        if format != Format::Table {
            return structured(format, self);
        }
        let mut text = list(format, &self.plan)?;
        if !self.operation_id.is_empty() {
            text.push_str(&format!("\noperation {}\n", self.operation_id));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::show;

    fn host() -> v1::Host {
        v1::Host {
            id: "h-1".into(),
            hostname: "cmp1".into(),
            address: "10.0.0.11".into(),
            state: v1::HostState::Up as i32,
            enabled: true,
            availability_zone: "az1".into(),
            hypervisor_type: "qemu".into(),
            hypervisor_version: "QEMU 8.2.2".into(),
            cpu_model: "EPYC".into(),
            capacity: Some(v1::HostCapacity {
                vcpus: 8,
                ram_mib: 16_384,
                disk_gib: 100,
            }),
            usage: Some(v1::HostCapacity {
                vcpus: 2,
                ram_mib: 4096,
                disk_gib: 20,
            }),
            lease_age_ms: 1_250,
            agent_version: "0.1.0".into(),
            server_count: 2,
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

    #[test]
    fn show_gives_state_status_capacity_and_lease_age() {
        let text = show(Format::Table, &HostView::from(host())).unwrap();
        assert_eq!(field(&text, "state"), "up");
        assert_eq!(field(&text, "status"), "enabled");
        assert_eq!(field(&text, "vcpus"), "2 of 8 (25%)");
        assert_eq!(field(&text, "ram"), "4.0 GiB of 16.0 GiB (25%)");
        assert_eq!(field(&text, "disk"), "20.0 GiB of 100.0 GiB (20%)");
        assert_eq!(field(&text, "lease_age"), "1.2s");
        assert_eq!(field(&text, "server_count"), "2");
        assert!(!text.contains("allocation_ratios"), "only when set");
    }

    #[test]
    fn a_down_disabled_host_says_since_when_and_why() {
        let mut h = host();
        h.state = v1::HostState::Down as i32;
        h.down_since_ms = 1_714_564_800_000;
        h.forced_down = true;
        h.enabled = false;
        h.disabled_reason = "bad DIMM".into();
        h.lease_age_ms = -1;
        let view = HostView::from(h);
        let text = show(Format::Table, &view).unwrap();
        assert_eq!(
            field(&text, "state"),
            "down since 2024-05-01T12:00:00.000Z, forced down"
        );
        assert_eq!(field(&text, "status"), "disabled (bad DIMM)");
        assert_eq!(field(&text, "lease_age"), "no lease");
        let table = list(Format::Table, &[view]).unwrap();
        assert!(
            table.contains("down (forced) since 2024-05-01T12:00:00.000Z  disabled"),
            "{table}"
        );
    }

    #[test]
    fn lists_have_short_and_long_tables_and_json_keeps_proto_names() {
        let view = HostView::from(host());
        assert_eq!(
            list(Format::Table, std::slice::from_ref(&view)).unwrap(),
            "ID   HOSTNAME  ZONE  STATE  STATUS   SERVERS  VCPUS  RAM               DISK\n\
             h-1  cmp1      az1   up     enabled  2        2/8    4.0 GiB/16.0 GiB  \
             20.0 GiB/100.0 GiB\n"
        );
        let long = list(Format::Table, &[HostLongView(view.clone())]).unwrap();
        assert!(long.contains("10.0.0.11  qemu QEMU 8.2.2  1.2s"), "{long}");
        let json: serde_json::Value =
            serde_json::from_str(&show(Format::Json, &view).unwrap()).unwrap();
        assert_eq!(json["state"], "HOST_STATE_UP");
        assert_eq!(json["capacity"]["ram_mib"], 16_384);
        assert_eq!(json["usage"]["vcpus"], 2);
        assert_eq!(json["lease_age_ms"], 1_250);
        assert!(json["allocation_ratios"].is_null());
    }

    fn plan() -> v1::EvacuateHostResponse {
        v1::EvacuateHostResponse {
            operation_id: "op-9".into(),
            plan: vec![
                v1::HostPlanEntry {
                    server_id: "s-1".into(),
                    server_name: "web-1".into(),
                    destination: "cmp2".into(),
                    method: "live_migrate".into(),
                    message: String::new(),
                },
                v1::HostPlanEntry {
                    server_id: "s-2".into(),
                    server_name: "db-1".into(),
                    destination: String::new(),
                    method: "cold_migrate".into(),
                    message: "no host has 64 GiB RAM free".into(),
                },
            ],
        }
    }

    #[test]
    fn a_plan_shows_each_server_destination_and_method_then_the_operation() {
        let view = HostJobView::from(plan());
        assert_eq!(
            view.render(Format::Table).unwrap(),
            "SERVER  SERVER_ID  DESTINATION  METHOD        NOTE\n\
             web-1   s-1        cmp2         live_migrate\n\
             db-1    s-2        (none)       cold_migrate  no host has 64 GiB RAM free\n\
             \n\
             operation op-9\n"
        );
        let mut dry = plan();
        dry.operation_id.clear();
        let text = HostJobView::from(dry).render(Format::Table).unwrap();
        assert!(!text.contains("operation"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&view.render(Format::Json).unwrap()).unwrap();
        assert_eq!(json["operation_id"], "op-9");
        assert_eq!(json["plan"][1]["destination"], "");
        assert_eq!(json["plan"][0]["method"], "live_migrate");
    }
}

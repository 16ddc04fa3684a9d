//! What a server's host reports live: the serial console log and hypervisor diagnostics.
//! JSON/YAML carry every proto field; the table form of diagnostics is a FIELD/VALUE table
//! followed by one table of disks and one of NICs.

use flotilla_proto::v1;
use serde::Serialize;

use crate::args::Format;
use crate::error::CliError;
use crate::output::{
    fields_table, format_time_ms, human_bytes, human_duration_ms, short_enum, structured, table,
};

#[derive(Debug, Clone, Serialize)]
pub struct ConsoleLogView {
    pub output: String,
    pub truncated: bool,
}

impl From<v1::ServerConsoleLog> for ConsoleLogView {
    fn from(l: v1::ServerConsoleLog) -> Self {
        ConsoleLogView {
            output: l.output,
            truncated: l.truncated,
        }
    }
}

/// Console output made safe for a terminal: newlines and tabs kept, carriage returns dropped,
/// other control characters (escape sequences a guest could use to drive the terminal)
/// escaped; ends with a newline unless empty.
pub fn console_text(output: &str) -> String {
    let mut text = String::with_capacity(output.len());
    for c in output.chars() {
        match c {
            '\n' | '\t' => text.push(c),
            '\r' => {}
            c if c.is_control() => text.extend(c.escape_default()),
            c => text.push(c),
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The console log in the chosen format: the text itself for tables.
pub fn render_console(format: Format, log: &ConsoleLogView) -> Result<String, CliError> {
    match format {
        Format::Table => Ok(console_text(&log.output)),
        _ => structured(format, log),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuView {
    pub vcpus: u32,
    pub cpu_time_ns: u64,
    pub vcpu_time_ns: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryView {
    pub maximum_kib: u64,
    pub actual_kib: u64,
    pub rss_kib: u64,
    pub available_kib: u64,
    pub unused_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskView {
    pub device: String,
    pub read_bytes: u64,
    pub read_requests: u64,
    pub write_bytes: u64,
    pub write_requests: u64,
    pub errors: u64,
    pub capacity_bytes: u64,
    pub allocation_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NicView {
    pub port_id: String,
    pub mac_address: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticsView {
    pub server_id: String,
    pub host: String,
    pub power_state: String,
    pub driver: String,
    pub uptime_seconds: u64,
    pub cpu: Option<CpuView>,
    pub memory: Option<MemoryView>,
    pub disks: Vec<DiskView>,
    pub nics: Vec<NicView>,
    pub collected_at_ms: i64,
}

impl From<v1::ServerDiagnostics> for DiagnosticsView {
    fn from(d: v1::ServerDiagnostics) -> Self {
        DiagnosticsView {
            server_id: d.server_id,
            host: d.host,
            power_state: v1::ServerPowerState::try_from(d.power_state)
                .map(|v| v.as_str_name().to_string())
                .unwrap_or_else(|_| d.power_state.to_string()),
            driver: d.driver,
            uptime_seconds: d.uptime_seconds,
            cpu: d.cpu.map(|c| CpuView {
                vcpus: c.vcpus,
                cpu_time_ns: c.cpu_time_ns,
                vcpu_time_ns: c.vcpu_time_ns,
            }),
            memory: d.memory.map(|m| MemoryView {
                maximum_kib: m.maximum_kib,
                actual_kib: m.actual_kib,
                rss_kib: m.rss_kib,
                available_kib: m.available_kib,
                unused_kib: m.unused_kib,
            }),
            disks: d
                .disks
                .into_iter()
                .map(|x| DiskView {
                    device: x.device,
                    read_bytes: x.read_bytes,
                    read_requests: x.read_requests,
                    write_bytes: x.write_bytes,
                    write_requests: x.write_requests,
                    errors: x.errors,
                    capacity_bytes: x.capacity_bytes,
                    allocation_bytes: x.allocation_bytes,
                })
                .collect(),
            nics: d
                .nics
                .into_iter()
                .map(|n| NicView {
                    port_id: n.port_id,
                    mac_address: n.mac_address,
                    rx_bytes: n.rx_bytes,
                    rx_packets: n.rx_packets,
                    rx_errors: n.rx_errors,
                    rx_drops: n.rx_drops,
                    tx_bytes: n.tx_bytes,
                    tx_packets: n.tx_packets,
                    tx_errors: n.tx_errors,
                    tx_drops: n.tx_drops,
                })
                .collect(),
            collected_at_ms: d.collected_at_ms,
        }
    }
}

/// Nanoseconds of CPU time as seconds with millisecond precision.
fn cpu_seconds(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

fn kib(n: u64) -> String {
    if n == 0 {
        "0".to_string()
    } else {
        human_bytes(n.saturating_mul(1024))
    }
}

impl DiagnosticsView {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("server_id", self.server_id.clone()),
            ("host", self.host.clone()),
            (
                "power_state",
                short_enum(&self.power_state, "SERVER_POWER_STATE_"),
            ),
            ("driver", self.driver.clone()),
            (
                "uptime",
                human_duration_ms(self.uptime_seconds.saturating_mul(1000) as i64),
            ),
            ("collected_at", format_time_ms(self.collected_at_ms)),
        ];
        if let Some(c) = &self.cpu {
            f.extend([
                ("vcpus", c.vcpus.to_string()),
                ("cpu_time", cpu_seconds(c.cpu_time_ns)),
                (
                    "vcpu_time",
                    c.vcpu_time_ns
                        .iter()
                        .enumerate()
                        .map(|(i, ns)| format!("{i}={}", cpu_seconds(*ns)))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]);
        }
        if let Some(m) = &self.memory {
            f.extend([
                ("memory_maximum", kib(m.maximum_kib)),
                ("memory_actual", kib(m.actual_kib)),
                ("memory_rss", kib(m.rss_kib)),
                ("memory_available", kib(m.available_kib)),
                ("memory_unused", kib(m.unused_kib)),
            ]);
        }
        f
    }

    fn disk_rows(&self) -> Vec<Vec<String>> {
        self.disks
            .iter()
            .map(|d| {
                vec![
                    d.device.clone(),
                    d.read_bytes.to_string(),
                    d.read_requests.to_string(),
                    d.write_bytes.to_string(),
                    d.write_requests.to_string(),
                    d.errors.to_string(),
                    human_bytes(d.capacity_bytes),
                    human_bytes(d.allocation_bytes),
                ]
            })
            .collect()
    }

    fn nic_rows(&self) -> Vec<Vec<String>> {
        self.nics
            .iter()
            .map(|n| {
                vec![
                    n.port_id.clone(),
                    n.mac_address.clone(),
                    n.rx_bytes.to_string(),
                    n.rx_packets.to_string(),
                    n.rx_errors.to_string(),
                    n.rx_drops.to_string(),
                    n.tx_bytes.to_string(),
                    n.tx_packets.to_string(),
                    n.tx_errors.to_string(),
                    n.tx_drops.to_string(),
                ]
            })
            .collect()
    }
}

const DISK_COLUMNS: [&str; 8] = [
    "DISK",
    "READ_BYTES",
    "READ_REQS",
    "WRITE_BYTES",
    "WRITE_REQS",
    "ERRORS",
    "CAPACITY",
    "ALLOCATION",
];

const NIC_COLUMNS: [&str; 10] = [
    "PORT_ID",
    "MAC",
    "RX_BYTES",
    "RX_PACKETS",
    "RX_ERRORS",
    "RX_DROPS",
    "TX_BYTES",
    "TX_PACKETS",
    "TX_ERRORS",
    "TX_DROPS",
];

/// Diagnostics in the chosen format; tables leave out the disk or NIC table when there is none.
pub fn render_diagnostics(format: Format, d: &DiagnosticsView) -> Result<String, CliError> {
    if format != Format::Table {
        return structured(format, d);
    }
    let mut text = fields_table(&d.fields());
    if !d.disks.is_empty() {
        text.push('\n');
        text.push_str(&table(&DISK_COLUMNS, &d.disk_rows()));
    }
    if !d.nics.is_empty() {
        text.push('\n');
        text.push_str(&table(&NIC_COLUMNS, &d.nic_rows()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostics() -> v1::ServerDiagnostics {
        v1::ServerDiagnostics {
            server_id: "s-1".into(),
            host: "cmp1".into(),
            power_state: v1::ServerPowerState::Running as i32,
            driver: "libvirt".into(),
            uptime_seconds: 3_725,
            cpu: Some(v1::ServerCpuDiagnostics {
                vcpus: 2,
                cpu_time_ns: 12_500_000_000,
                vcpu_time_ns: vec![6_000_000_000, 6_500_000_000],
            }),
            memory: Some(v1::ServerMemoryDiagnostics {
                maximum_kib: 524_288,
                actual_kib: 524_288,
                rss_kib: 204_800,
                ..Default::default()
            }),
            disks: vec![v1::ServerDiskDiagnostics {
                device: "vda".into(),
                read_bytes: 1000,
                read_requests: 10,
                write_bytes: 2000,
                write_requests: 20,
                errors: 0,
                capacity_bytes: 1 << 30,
                allocation_bytes: 3 << 20,
            }],
            nics: vec![],
            collected_at_ms: 1_714_564_800_000,
        }
    }

    #[test]
    fn tables_show_fields_then_the_disks() {
        let text = render_diagnostics(Format::Table, &diagnostics().into()).unwrap();
        assert!(text.contains("power_state       running\n"), "{text}");
        assert!(text.contains("uptime            1h 02m\n"), "{text}");
        assert!(text.contains("cpu_time          12.500s\n"), "{text}");
        assert!(
            text.contains("vcpu_time         0=6.000s, 1=6.500s\n"),
            "{text}"
        );
        assert!(text.contains("memory_rss        200.0 MiB\n"), "{text}");
        assert!(text.contains("memory_unused     0\n"), "{text}");
        assert!(
            text.ends_with(
                "\nDISK  READ_BYTES  READ_REQS  WRITE_BYTES  WRITE_REQS  ERRORS  CAPACITY  \
                 ALLOCATION\nvda   1000        10         2000         20          0       \
                 1.0 GiB   3.0 MiB\n"
            ),
            "{text}"
        );
        assert!(!text.contains("PORT_ID"), "no NIC table without NICs");
    }

    #[test]
    fn json_keeps_every_counter() {
        let text = render_diagnostics(Format::Json, &diagnostics().into()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["power_state"], "SERVER_POWER_STATE_RUNNING");
        assert_eq!(json["cpu"]["vcpu_time_ns"][1], 6_500_000_000u64);
        assert_eq!(json["disks"][0]["capacity_bytes"], 1u64 << 30);
        assert_eq!(json["nics"], serde_json::json!([]));
    }

    #[test]
    fn console_output_cannot_drive_the_terminal() {
        assert_eq!(
            console_text("boot\r\n\u{1b}[31mred\tok"),
            "boot\n\\u{1b}[31mred\tok\n"
        );
        assert_eq!(console_text(""), "");
        let log = ConsoleLogView {
            output: "a\n".into(),
            truncated: true,
        };
        assert_eq!(render_console(Format::Table, &log).unwrap(), "a\n");
        let json: serde_json::Value =
            serde_json::from_str(&render_console(Format::Json, &log).unwrap()).unwrap();
        assert_eq!(json["truncated"], true);
    }
}

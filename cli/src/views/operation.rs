//! Views of durable operations: lists, `show`, and the lines `operation watch` streams.
//! JSON/YAML carry every proto field; tables shorten states (`running`, `failed`) and show the
//! error in place of the message once an operation has failed.

use flotilla_proto::v1;
use serde::Serialize;

use super::{meta_fields, MetaView};
use crate::output::{format_time_ms, human_bytes, short_enum, yes_no, Tabular};

pub fn operation_state_name(value: i32) -> String {
    v1::OperationState::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

/// Whether an operation in this state will not change any more.
pub fn is_terminal(op: &v1::Operation) -> bool {
    use v1::OperationState as S;
    op.finished_at_ms != 0
        || matches!(
            S::try_from(op.state),
            Ok(S::Succeeded | S::Failed | S::Cancelled | S::PartiallySucceeded)
        )
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    pub phase: String,
    pub percent: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl ProgressView {
    /// `fetching image 40% (1.0 GiB of 2.5 GiB)`; parts that are unknown are left out.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if !self.phase.is_empty() {
            parts.push(self.phase.clone());
        }
        if self.percent > 0 {
            parts.push(format!("{}%", self.percent));
        }
        if self.bytes_total > 0 {
            parts.push(format!(
                "({} of {})",
                human_bytes(self.bytes_done),
                human_bytes(self.bytes_total)
            ));
        } else if self.bytes_done > 0 {
            parts.push(format!("({})", human_bytes(self.bytes_done)));
        }
        parts.join(" ")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub resource_id: String,
    pub resource_name: String,
    pub state: String,
    pub message: String,
    pub destination: String,
    pub operation_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    pub id: String,
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    pub project_id: String,
    pub user_id: String,
    pub request_id: String,
    pub state: String,
    pub step: String,
    pub progress: Option<ProgressView>,
    pub message: String,
    pub error: String,
    pub cancellable: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub items: Vec<ItemView>,
    pub parent_id: String,
    pub meta: Option<MetaView>,
}

impl From<v1::Operation> for OperationView {
    fn from(o: v1::Operation) -> Self {
        OperationView {
            id: o.id,
            kind: o.kind,
            resource_type: o.resource_type,
            resource_id: o.resource_id,
            project_id: o.project_id,
            user_id: o.user_id,
            request_id: o.request_id,
            state: operation_state_name(o.state),
            step: o.step,
            progress: o.progress.map(|p| ProgressView {
                phase: p.phase,
                percent: p.percent,
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
            }),
            message: o.message,
            error: o.error,
            cancellable: o.cancellable,
            started_at_ms: o.started_at_ms,
            finished_at_ms: o.finished_at_ms,
            items: o
                .items
                .into_iter()
                .map(|i| ItemView {
                    resource_id: i.resource_id,
                    resource_name: i.resource_name,
                    state: operation_state_name(i.state),
                    message: i.message,
                    destination: i.destination,
                    operation_id: i.operation_id,
                })
                .collect(),
            parent_id: o.parent_id,
            meta: o.meta.map(MetaView::from),
        }
    }
}

impl OperationView {
    pub fn state_word(&self) -> String {
        short_enum(&self.state, "OPERATION_STATE_")
    }

    /// The error once failed, else the message followed by the progress.
    pub fn note(&self) -> String {
        if !self.error.is_empty() {
            return self.error.clone();
        }
        let progress = self
            .progress
            .as_ref()
            .map(ProgressView::text)
            .unwrap_or_default();
        match (self.message.is_empty(), progress.is_empty()) {
            (false, false) => format!("{}; {progress}", self.message),
            (false, true) => self.message.clone(),
            (true, _) => progress,
        }
    }

    /// `server 4f1c…` — what the operation acts on.
    pub fn resource(&self) -> String {
        [self.resource_type.as_str(), self.resource_id.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// When the operation last changed (for watch lines).
    pub fn updated_at_ms(&self) -> i64 {
        self.meta
            .as_ref()
            .map(|m| m.updated_at_ms)
            .filter(|t| *t != 0)
            .unwrap_or(self.started_at_ms)
    }

    /// When it was recorded, for sorting newest first.
    pub fn created_at_ms(&self) -> i64 {
        self.meta
            .as_ref()
            .map(|m| m.created_at_ms)
            .filter(|t| *t != 0)
            .unwrap_or(self.started_at_ms)
    }

    fn items_cell(&self) -> String {
        self.items
            .iter()
            .map(|i| {
                let name = if i.resource_name.is_empty() {
                    &i.resource_id
                } else {
                    &i.resource_name
                };
                let mut text = format!("{name}: {}", short_enum(&i.state, "OPERATION_STATE_"));
                if !i.destination.is_empty() {
                    text.push_str(&format!(" -> {}", i.destination));
                }
                if !i.message.is_empty() {
                    text.push_str(&format!(" ({})", i.message));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Column widths of the streamed `operation watch` table.
    pub const WATCH_WIDTHS: [usize; 4] = [24, 10, 16, 0];

    pub fn watch_columns() -> [String; 4] {
        ["TIME", "STATE", "STEP", "MESSAGE"].map(String::from)
    }

    pub fn watch_row(&self) -> [String; 4] {
        [
            format_time_ms(self.updated_at_ms()),
            self.state_word(),
            self.step.clone(),
            self.note(),
        ]
    }
}

impl Tabular for OperationView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "KIND",
            "RESOURCE",
            "STATE",
            "STEP",
            "STARTED_AT",
            "FINISHED_AT",
            "MESSAGE",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.kind.clone(),
            self.resource(),
            self.state_word(),
            self.step.clone(),
            format_time_ms(self.started_at_ms),
            format_time_ms(self.finished_at_ms),
            self.note(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("kind", self.kind.clone()),
            ("resource_type", self.resource_type.clone()),
            ("resource_id", self.resource_id.clone()),
            ("state", self.state_word()),
            ("step", self.step.clone()),
            (
                "progress",
                self.progress
                    .as_ref()
                    .map(ProgressView::text)
                    .unwrap_or_default(),
            ),
            ("message", self.message.clone()),
            ("error", self.error.clone()),
            ("cancellable", yes_no(self.cancellable)),
            ("started_at", format_time_ms(self.started_at_ms)),
            ("finished_at", format_time_ms(self.finished_at_ms)),
            ("project_id", self.project_id.clone()),
            ("user_id", self.user_id.clone()),
            ("request_id", self.request_id.clone()),
            ("parent_id", self.parent_id.clone()),
        ];
        if !self.items.is_empty() {
            f.push(("items", self.items_cell()));
        }
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Format;
    use crate::output::{list, show};

    fn op() -> v1::Operation {
        v1::Operation {
            id: "op-1".into(),
            kind: "boot".into(),
            resource_type: "server".into(),
            resource_id: "s-1".into(),
            project_id: "p-1".into(),
            user_id: "alice".into(),
            request_id: "r-1".into(),
            state: v1::OperationState::Running as i32,
            step: "spawning".into(),
            progress: Some(v1::OperationProgress {
                phase: "fetching image".into(),
                percent: 40,
                bytes_done: 1 << 30,
                bytes_total: 5 << 29,
            }),
            started_at_ms: 1_714_564_800_000,
            meta: Some(v1::ResourceMeta {
                create_revision: 4,
                update_revision: 6,
                created_at_ms: 1_714_564_800_000,
                updated_at_ms: 1_714_564_801_500,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_operations_show_their_step_and_progress() {
        let view = OperationView::from(op());
        assert!(!is_terminal(&op()));
        assert_eq!(view.note(), "fetching image 40% (1.0 GiB of 2.5 GiB)");
        let text = list(Format::Table, std::slice::from_ref(&view)).unwrap();
        assert!(
            text.contains("op-1  boot  server s-1  running  spawning  2024-05-01T12:00:00.000Z"),
            "{text}"
        );
        assert_eq!(
            view.watch_row(),
            [
                "2024-05-01T12:00:01.500Z".to_string(),
                "running".into(),
                "spawning".into(),
                "fetching image 40% (1.0 GiB of 2.5 GiB)".into()
            ]
        );
    }

    #[test]
    fn failed_operations_show_the_error_instead_of_the_message() {
        let mut o = op();
        o.state = v1::OperationState::Failed as i32;
        o.message = String::new();
        o.error = "no valid host".into();
        o.finished_at_ms = 1_714_564_900_000;
        assert!(is_terminal(&o));
        let view = OperationView::from(o);
        assert_eq!(view.note(), "no valid host");
        let text = show(Format::Table, &view).unwrap();
        assert!(text.contains("state            failed\n"), "{text}");
        assert!(text.contains("finished_at      2024-05-01T12:01:40.000Z\n"));
        let json: serde_json::Value =
            serde_json::from_str(&show(Format::Json, &view).unwrap()).unwrap();
        assert_eq!(json["state"], "OPERATION_STATE_FAILED");
        assert_eq!(json["error"], "no valid host");
        assert_eq!(json["progress"]["percent"], 40);
    }

    #[test]
    fn items_of_multi_resource_operations_are_listed() {
        let mut o = op();
        o.items = vec![
            v1::OperationItemResult {
                resource_id: "s-1".into(),
                resource_name: "web-1".into(),
                state: v1::OperationState::Succeeded as i32,
                destination: "cmp2".into(),
                ..Default::default()
            },
            v1::OperationItemResult {
                resource_id: "s-2".into(),
                state: v1::OperationState::Failed as i32,
                message: "no room".into(),
                ..Default::default()
            },
        ];
        let text = show(Format::Table, &OperationView::from(o)).unwrap();
        assert!(
            text.contains("web-1: succeeded -> cmp2; s-2: failed (no room)"),
            "{text}"
        );
    }
}

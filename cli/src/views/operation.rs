//! Views of durable operations: lists, `show`, and the lines `operation watch` streams.
//! JSON/YAML carry every proto field; tables shorten states (`running`, `failed`) and show the
//! error in place of the message once an operation has failed. Multi-resource operations (host
//! evacuations and drains) show a summary of their items in `show`, followed by a table of the
//! items ([`render_operation`]).

use flotilla_proto::v1;
use serde::Serialize;

use super::{meta_fields, MetaView};
use crate::args::Format;
use crate::error::CliError;
use crate::output::{
    fields_table, format_time_ms, human_bytes, list, short_enum, structured, yes_no, Tabular,
};

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

impl ItemView {
    /// The resource's name, or its id when the name is unknown.
    pub fn label(&self) -> &str {
        if self.resource_name.is_empty() {
            &self.resource_id
        } else {
            &self.resource_name
        }
    }

    pub fn state_word(&self) -> String {
        short_enum(&self.state, "OPERATION_STATE_")
    }

    pub fn succeeded(&self) -> bool {
        self.state == "OPERATION_STATE_SUCCEEDED"
    }

    /// Failed or cancelled (not merely unfinished).
    pub fn failed(&self) -> bool {
        matches!(
            self.state.as_str(),
            "OPERATION_STATE_FAILED" | "OPERATION_STATE_CANCELLED"
        )
    }
}

/// Per-resource results: NAME (or id), STATE, DESTINATION, OPERATION_ID (the child moving it),
/// MESSAGE.
impl Tabular for ItemView {
    fn columns() -> &'static [&'static str] {
        &[
            "NAME",
            "ID",
            "STATE",
            "DESTINATION",
            "OPERATION_ID",
            "MESSAGE",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.label().to_string(),
            self.resource_id.clone(),
            self.state_word(),
            self.destination.clone(),
            self.operation_id.clone(),
            self.message.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.resource_name.clone()),
            ("id", self.resource_id.clone()),
            ("state", self.state_word()),
            ("destination", self.destination.clone()),
            ("operation_id", self.operation_id.clone()),
            ("message", self.message.clone()),
        ]
    }
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

    /// `3 of 5 done (1 failed)` for multi-resource operations; empty for the others.
    pub fn items_summary(&self) -> String {
        if self.items.is_empty() {
            return String::new();
        }
        let total = self.items.len();
        let succeeded = self.items.iter().filter(|i| i.succeeded()).count();
        let failed = self.items.iter().filter(|i| i.failed()).count();
        let mut text = format!("{} of {total} done", succeeded + failed);
        if failed > 0 {
            text.push_str(&format!(" ({failed} failed)"));
        }
        text
    }

    /// The note, followed by the items summary when there are items (watch and `--wait` lines).
    pub fn note_with_items(&self) -> String {
        let note = self.note();
        let items = self.items_summary();
        match (note.is_empty(), items.is_empty()) {
            (_, true) => note,
            (true, false) => format!("items: {items}"),
            (false, false) => format!("{note}; items: {items}"),
        }
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
            self.note_with_items(),
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
            f.push(("items", self.items_summary()));
        }
        f.extend(meta_fields(&self.meta));
        f
    }
}

/// `operation show`: the FIELD/VALUE table, then the items (if any) as a table of their own.
/// JSON/YAML: the operation object, items included.
pub fn render_operation(format: Format, view: &OperationView) -> Result<String, CliError> {
    if format != Format::Table {
        return structured(format, view);
    }
    let mut text = fields_table(&view.fields());
    if !view.items.is_empty() {
        text.push('\n');
        text.push_str(&list(format, &view.items)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::show;

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

    fn host_job() -> v1::Operation {
        let mut o = op();
        o.kind = "host_evacuate".into();
        o.resource_type = "host".into();
        o.resource_id = "h-1".into();
        o.step = "move_servers".into();
        o.progress = None;
        o.cancellable = true;
        o.items = vec![
            v1::OperationItemResult {
                resource_id: "s-1".into(),
                resource_name: "web-1".into(),
                state: v1::OperationState::Succeeded as i32,
                destination: "cmp2".into(),
                operation_id: "op-2".into(),
                ..Default::default()
            },
            v1::OperationItemResult {
                resource_id: "s-2".into(),
                state: v1::OperationState::Failed as i32,
                message: "no room".into(),
                operation_id: "op-3".into(),
                ..Default::default()
            },
            v1::OperationItemResult {
                resource_id: "s-3".into(),
                resource_name: "db-1".into(),
                state: v1::OperationState::Running as i32,
                destination: "cmp3".into(),
                ..Default::default()
            },
        ];
        o
    }

    #[test]
    fn show_summarizes_items_then_lists_them_in_a_table() {
        let text = render_operation(Format::Table, &OperationView::from(host_job())).unwrap();
        assert!(
            text.contains("items            2 of 3 done (1 failed)\n"),
            "{text}"
        );
        assert!(text.contains("cancellable      yes\n"), "{text}");
        assert!(
            text.contains(
                "\nNAME   ID   STATE      DESTINATION  OPERATION_ID  MESSAGE\n\
                 web-1  s-1  succeeded  cmp2         op-2\n\
                 s-2    s-2  failed                  op-3          no room\n\
                 db-1   s-3  running    cmp3\n"
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(
            &render_operation(Format::Json, &OperationView::from(host_job())).unwrap(),
        )
        .unwrap();
        assert_eq!(json["items"][1]["state"], "OPERATION_STATE_FAILED");
        assert_eq!(json["items"][0]["operation_id"], "op-2");
        assert_eq!(json["cancellable"], true);
    }

    #[test]
    fn single_resource_operations_show_no_item_table() {
        let text = render_operation(Format::Table, &OperationView::from(op())).unwrap();
        assert!(!text.contains("NAME"), "{text}");
        assert!(!text.contains("items"), "{text}");
    }

    #[test]
    fn watch_lines_of_host_jobs_count_items_and_of_migrations_show_phase_and_percent() {
        let view = OperationView::from(host_job());
        assert_eq!(view.watch_row()[3], "items: 2 of 3 done (1 failed)");
        let mut o = op();
        o.kind = "live_migrate".into();
        o.step = "migrate".into();
        o.parent_id = "op-0".into();
        o.progress = Some(v1::OperationProgress {
            phase: "copying memory".into(),
            percent: 63,
            bytes_done: 0,
            bytes_total: 0,
        });
        let view = OperationView::from(o);
        assert_eq!(view.watch_row()[3], "copying memory 63%");
        let text = show(Format::Table, &view).unwrap();
        assert!(text.contains("parent_id        op-0\n"), "{text}");
        assert!(
            text.contains("progress         copying memory 63%\n"),
            "{text}"
        );
    }
}

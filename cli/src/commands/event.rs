//! `flotilla event watch`: streams committed changes until interrupted, reconnecting after a
//! break and resuming after the last revision printed (no gaps, no duplicates).

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use flotilla_proto::v1::{self, event_service_client::EventServiceClient};
use tonic::{Code, Status};

use super::{Ctx, Io};
use crate::args::Format;
use crate::error::{status_text, CliError};
use crate::output::fixed_line;
use crate::views::EventView;

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub enum EventCmd {
    /// Stream events, one per line, until interrupted (Ctrl-C).
    Watch(WatchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Start after this revision (replaying the retained backlog); 0 = only new events.
    #[arg(long = "from", value_name = "REV", default_value_t = 0)]
    pub from: u64,
    /// Only this resource type, e.g. project or flavor (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events about this resource id.
    #[arg(long, value_name = "ID")]
    pub resource: Option<String>,
}

pub async fn run(cmd: EventCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    match cmd {
        EventCmd::Watch(args) => {
            let interrupted = async {
                if tokio::signal::ctrl_c().await.is_err() {
                    // No signal handling available: run until the stream fails.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = interrupted => Ok(()),
                result = watch(args, ctx, io) => result,
            }
        }
    }
}

/// Errors after which the stream is reopened rather than the command failed: the transport
/// broke or the controller went away. Anything else (e.g. OUT_OF_RANGE when the resume
/// revision was compacted away, PERMISSION_DENIED) ends the command.
pub(crate) fn is_stream_break(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
            | Code::Internal
    )
}

async fn watch(args: WatchArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let timeout = ctx.conn.timeout();
    // Highest revision printed so far (or the starting point).
    let mut from = args.from;
    // Since when the stream keeps breaking without delivering anything.
    let mut broken_since: Option<Instant> = None;
    let mut backoff = INITIAL_BACKOFF;
    if ctx.format == Format::Table {
        io.print(&event_line(&EventView::columns().map(String::from)))?;
    }
    loop {
        let request = v1::WatchEventsRequest {
            from_revision: from,
            resource_types: args.types.clone(),
            resource_id: args.resource.clone().unwrap_or_default(),
        };
        // Opening the stream has the usual retries within --timeout.
        let mut stream = ctx
            .conn
            .call(request, |ch, req| async move {
                EventServiceClient::new(ch).watch_events(req).await
            })
            .await?;
        let opened = Instant::now();
        let last_error = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    broken_since = None;
                    backoff = INITIAL_BACKOFF;
                    if from > 0 && event.revision <= from {
                        continue; // already printed before a reconnect
                    }
                    from = event.revision;
                    io.print(&render_event(ctx.format, EventView::from(event))?)?;
                }
                Ok(None) => break "the controller ended the stream".to_string(),
                Err(status) if is_stream_break(&status) => break status_text(&status),
                Err(status) => return Err(CliError::Status(status)),
            }
        };
        if opened.elapsed() >= timeout {
            // The stream was healthy for a while: this is a fresh break.
            broken_since = None;
        }
        let since = *broken_since.get_or_insert(opened);
        if since.elapsed() >= timeout {
            return Err(CliError::Protocol(format!(
                "the event stream kept breaking for {:.1}s; last error: {last_error}",
                since.elapsed().as_secs_f64()
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One event in the chosen format: a table line, one JSON object per line, or a YAML document.
pub fn render_event(format: Format, event: EventView) -> Result<String, CliError> {
    Ok(match format {
        Format::Table => event_line(&event.row()),
        Format::Json => serde_json::to_string(&event)? + "\n",
        Format::Yaml => format!("---\n{}", serde_yaml::to_string(&event)?),
    })
}

fn event_line(cells: &[String; 6]) -> String {
    fixed_line(cells, &EventView::WIDTHS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventView {
        EventView::from(v1::Event {
            revision: 42,
            time_ms: 1_714_564_800_123,
            resource_type: "project".into(),
            resource_id: "p-1".into(),
            resource_name: "web".into(),
            action: v1::EventAction::Created as i32,
            project_id: "p-1".into(),
            actor: "admin".into(),
            request_id: "r-1".into(),
        })
    }

    #[test]
    fn table_lines_use_fixed_columns() {
        let header = event_line(&EventView::columns().map(String::from));
        let line = render_event(Format::Table, event()).unwrap();
        assert_eq!(header.find("TIME"), line.find("2024-05-01T12:00:00.123Z"));
        assert_eq!(header.find("ACTION"), line.find("created"));
        assert_eq!(header.find("NAME"), line.find("web"));
        assert!(line.ends_with("  web\n"), "{line:?}");
    }

    #[test]
    fn json_is_one_object_per_line() {
        let line = render_event(Format::Json, event()).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["revision"], 42);
        assert_eq!(value["action"], "EVENT_ACTION_CREATED");
        assert_eq!(value["resource_type"], "project");
    }

    #[test]
    fn yaml_events_are_separate_documents() {
        let doc = render_event(Format::Yaml, event()).unwrap();
        assert!(doc.starts_with("---\nrevision: 42\n"), "{doc}");
    }

    #[test]
    fn only_transport_breaks_reopen_the_stream() {
        assert!(is_stream_break(&Status::unavailable("gone")));
        assert!(is_stream_break(&Status::internal("h2 protocol error")));
        assert!(!is_stream_break(&Status::out_of_range("oldest is 7")));
        assert!(!is_stream_break(&Status::permission_denied("no")));
    }
}

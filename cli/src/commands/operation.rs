//! `flotilla operation ...`: durable operations (boots, reboots, rebuilds, backups, migrations,
//! evacuations, deletes...) as they run, served by OperationService; and [`follow`], the watch
//! loop behind `--wait`.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use flotilla_proto::v1::{
    self, operation_service_client::OperationServiceClient,
    server_service_client::ServerServiceClient,
};
use tonic::Code;

use super::event::is_stream_break;
use super::{all_pages, Ctx, Io};
use crate::args::Format;
use crate::client::new_request_id;
use crate::error::{status_text, CliError};
use crate::output::{self, fixed_line};
use crate::views::operation::{is_terminal, render_operation, OperationView};

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    /// List operations, newest first (your project's; admins may add --all-projects).
    List(ListArgs),
    /// Show one operation.
    Show {
        /// Operation id.
        id: String,
    },
    /// Print the operation now and after every change until it finishes; fails unless it
    /// succeeded.
    Watch {
        /// Operation id.
        id: String,
    },
    /// Ask an operation to stop at its next safe point and undo what it can; prints the
    /// operation (usually `cancelling`: watch it to see how it ends).
    Cancel {
        /// Operation id.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelling,
    Cancelled,
    PartiallySucceeded,
}

impl From<StateFilter> for v1::OperationState {
    fn from(s: StateFilter) -> Self {
        match s {
            StateFilter::Pending => v1::OperationState::Pending,
            StateFilter::Running => v1::OperationState::Running,
            StateFilter::Succeeded => v1::OperationState::Succeeded,
            StateFilter::Failed => v1::OperationState::Failed,
            StateFilter::Cancelling => v1::OperationState::Cancelling,
            StateFilter::Cancelled => v1::OperationState::Cancelled,
            StateFilter::PartiallySucceeded => v1::OperationState::PartiallySucceeded,
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Operations of every project (admins only).
    #[arg(long)]
    pub all_projects: bool,
    /// Only operations acting on this resource: an id, or a server name.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only operations in this state (repeatable: any of them).
    #[arg(long = "state", value_enum, value_name = "STATE", ignore_case = true)]
    pub states: Vec<StateFilter>,
    /// Only operations of this kind, e.g. boot, reboot, live_migrate, host_evacuate.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only the children of this operation (e.g. the per-server moves of a host evacuation).
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
}

pub async fn run(cmd: OperationCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    match cmd {
        OperationCmd::List(a) => list(a, ctx, io).await,
        OperationCmd::Show { id } => {
            let op = get(ctx, &id).await?;
            io.print(&render_operation(ctx.format, &OperationView::from(op))?)
        }
        OperationCmd::Watch { id } => watch(&id, ctx, io).await,
        OperationCmd::Cancel { id } => {
            let request = v1::CancelOperationRequest {
                request_id: new_request_id(),
                operation_id: id,
            };
            let op = ctx
                .conn
                .call(request, |ch, req| async move {
                    OperationServiceClient::new(ch).cancel_operation(req).await
                })
                .await?;
            io.print(&render_operation(ctx.format, &OperationView::from(op))?)
        }
    }
}

pub async fn get(ctx: &Ctx, id: &str) -> Result<v1::Operation, CliError> {
    let request = v1::GetOperationRequest {
        operation_id: id.to_string(),
        stale: ctx.stale,
    };
    ctx.conn
        .call(request, |ch, req| async move {
            OperationServiceClient::new(ch).get_operation(req).await
        })
        .await
}

async fn list(a: ListArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let resource_id = match a.resource {
        None => String::new(),
        Some(r) => resource_id(ctx, r).await?,
    };
    let base = v1::ListOperationsRequest {
        all_projects: a.all_projects,
        project: String::new(),
        states: a
            .states
            .iter()
            .map(|s| v1::OperationState::from(*s) as i32)
            .collect(),
        resource_id,
        kind: a.kind.unwrap_or_default(),
        parent_id: a.parent.unwrap_or_default(),
        page_size: 0,
        page_token: String::new(),
        stale: ctx.stale,
    };
    let ops = all_pages(|page_token| {
        let request = v1::ListOperationsRequest {
            page_token,
            ..base.clone()
        };
        async move {
            let page = conn
                .call(request, |ch, req| async move {
                    OperationServiceClient::new(ch).list_operations(req).await
                })
                .await?;
            Ok((page.operations, page.next_page_token))
        }
    })
    .await?;
    let mut views: Vec<OperationView> = ops.into_iter().map(Into::into).collect();
    // Newest first, whatever order the pages came in.
    views.sort_by_key(|v| std::cmp::Reverse(v.created_at_ms()));
    io.print(&output::list(ctx.format, &views)?)
}

/// `--resource R`: a server name becomes that server's id; anything else (an id of a server,
/// host or image, or of a server already deleted) is used as given.
async fn resource_id(ctx: &Ctx, resource: String) -> Result<String, CliError> {
    let request = v1::GetServerRequest {
        server: resource.clone(),
        stale: ctx.stale,
    };
    let found = ctx
        .conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).get_server(req).await
        })
        .await;
    match found {
        Ok(server) => Ok(server.id),
        Err(CliError::Status(s)) if matches!(s.code(), Code::NotFound | Code::PermissionDenied) => {
            Ok(resource)
        }
        Err(e) => Err(e),
    }
}

/// `operation watch`: every snapshot on stdout, then success only if the operation succeeded.
async fn watch(id: &str, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let format = ctx.format;
    if format == Format::Table {
        io.print(&fixed_line(
            &OperationView::watch_columns(),
            &OperationView::WATCH_WIDTHS,
        ))?;
    }
    let out = &mut *io.out;
    let last = follow(ctx, id, &mut |op| {
        let view = OperationView::from(op.clone());
        let text = match format {
            Format::Table => fixed_line(&view.watch_row(), &OperationView::WATCH_WIDTHS),
            Format::Json => serde_json::to_string(&view)? + "\n",
            Format::Yaml => format!("---\n{}", serde_yaml::to_string(&view)?),
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    })
    .await?;
    match outcome(&last) {
        None => Ok(()),
        Some(outcome) => Err(CliError::OperationFailed {
            subject: format!("operation {}", last.id),
            action: last.kind.clone(),
            outcome: outcome.to_string(),
            reason: reason(&last, None),
        }),
    }
}

/// `None` for a success; otherwise how the operation ended, for error messages.
pub fn outcome(op: &v1::Operation) -> Option<&'static str> {
    use v1::OperationState as S;
    match S::try_from(op.state) {
        Ok(S::Succeeded) => None,
        Ok(S::Cancelled) => Some("was cancelled"),
        Ok(S::PartiallySucceeded) => Some("partially failed"),
        _ => Some("failed"),
    }
}

/// Why an operation did not succeed: its error, plus the resource's `fault` when that says
/// something the error does not.
pub fn reason(op: &v1::Operation, fault: Option<&str>) -> String {
    let mut text = [op.error.trim(), op.message.trim()]
        .into_iter()
        .find(|t| !t.is_empty())
        .unwrap_or_default()
        .to_string();
    if let Some(fault) = fault.map(str::trim).filter(|f| !f.is_empty()) {
        if text.is_empty() {
            text = fault.to_string();
        } else if !text.contains(fault) {
            text = format!("{text}; fault: {fault}");
        }
    }
    if text.is_empty() {
        "the controller gave no reason".to_string()
    } else {
        text
    }
}

/// Follows operation `id` with WatchOperation until it reaches a terminal state, calling
/// `on_change` with each new snapshot (the first is the current one), and returns the last.
///
/// A stream that breaks (controller restarted, leader change, connection lost) is reopened
/// through the usual retry policy; its first message is always the current snapshot, so
/// nothing is missed, and a snapshot equal to the last one seen is not passed on again. The
/// wait itself has no deadline (boots take as long as they take); it gives up when the stream
/// keeps breaking without delivering anything for longer than `--timeout`. Ctrl-C ends it with
/// [`CliError::Interrupted`]; the operation goes on.
pub async fn follow(
    ctx: &Ctx,
    id: &str,
    on_change: &mut dyn FnMut(&v1::Operation) -> Result<(), CliError>,
) -> Result<v1::Operation, CliError> {
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling available: wait for the operation alone.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupted => Err(CliError::Interrupted { operation: id.to_string() }),
        result = follow_stream(ctx, id, on_change) => result,
    }
}

async fn follow_stream(
    ctx: &Ctx,
    id: &str,
    on_change: &mut dyn FnMut(&v1::Operation) -> Result<(), CliError>,
) -> Result<v1::Operation, CliError> {
    let timeout = ctx.conn.timeout();
    let mut last: Option<v1::Operation> = None;
    let mut broken_since: Option<Instant> = None;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let request = v1::WatchOperationRequest {
            operation_id: id.to_string(),
        };
        let mut stream = ctx
            .conn
            .call(request, |ch, req| async move {
                OperationServiceClient::new(ch).watch_operation(req).await
            })
            .await?;
        let opened = Instant::now();
        let last_error = loop {
            match stream.message().await {
                Ok(Some(op)) => {
                    broken_since = None;
                    backoff = INITIAL_BACKOFF;
                    if last.as_ref() != Some(&op) {
                        on_change(&op)?;
                    }
                    let done = is_terminal(&op);
                    last = Some(op);
                    if done {
                        return Ok(last.take().expect("just set"));
                    }
                }
                Ok(None) => {
                    break "the controller ended the stream before the operation finished"
                        .to_string()
                }
                Err(status) if is_stream_break(&status) => break status_text(&status),
                Err(status) => return Err(CliError::Status(status)),
            }
        };
        if opened.elapsed() >= timeout {
            broken_since = None;
        }
        let since = *broken_since.get_or_insert(opened);
        if since.elapsed() >= timeout {
            return Err(CliError::Protocol(format!(
                "the watch of operation {id} kept breaking for {:.1}s; last error: \
                 {last_error}",
                since.elapsed().as_secs_f64()
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<OperationCmd, clap::Error> {
        let mut all = vec!["flotilla", "operation"];
        all.extend(args);
        match Cli::try_parse_from(all)?.command {
            Command::Operation(cmd) => Ok(cmd),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_takes_filters() {
        let OperationCmd::List(a) = parse(&[
            "list",
            "--all-projects",
            "--resource",
            "web-1",
            "--state",
            "running",
            "--state",
            "FAILED",
            "--kind",
            "boot",
            "--parent",
            "op-0",
        ])
        .unwrap() else {
            panic!("list")
        };
        assert!(a.all_projects);
        assert_eq!(a.resource.as_deref(), Some("web-1"));
        assert_eq!(a.states, [StateFilter::Running, StateFilter::Failed]);
        assert_eq!(a.kind.as_deref(), Some("boot"));
        assert_eq!(a.parent.as_deref(), Some("op-0"));
        let OperationCmd::List(a) = parse(&["list"]).unwrap() else {
            panic!("list")
        };
        assert!(!a.all_projects && a.resource.is_none() && a.states.is_empty());
        assert!(a.parent.is_none());
    }

    #[test]
    fn show_and_watch_take_one_id() {
        assert!(
            matches!(parse(&["show", "op-1"]).unwrap(), OperationCmd::Show { id } if id == "op-1")
        );
        assert!(
            matches!(parse(&["watch", "op-1"]).unwrap(), OperationCmd::Watch { id } if id == "op-1")
        );
        assert!(
            matches!(parse(&["cancel", "op-1"]).unwrap(), OperationCmd::Cancel { id } if id == "op-1")
        );
        assert_eq!(parse(&["watch"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["cancel"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["cancel", "a", "b"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            parse(&["list", "--state", "sleeping"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    fn failed(error: &str, message: &str) -> v1::Operation {
        v1::Operation {
            state: v1::OperationState::Failed as i32,
            error: error.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reasons_combine_the_error_and_a_fault_that_adds_something() {
        assert_eq!(reason(&failed("no host", ""), None), "no host");
        assert_eq!(
            reason(&failed("no host", ""), Some("disk full")),
            "no host; fault: disk full"
        );
        assert_eq!(
            reason(&failed("boot failed: disk full", ""), Some("disk full")),
            "boot failed: disk full"
        );
        assert_eq!(reason(&failed("", "superseded"), None), "superseded");
        assert_eq!(reason(&failed("", ""), Some("disk full")), "disk full");
        assert_eq!(
            reason(&failed("", ""), None),
            "the controller gave no reason"
        );
    }

    #[test]
    fn only_success_is_not_an_outcome_to_report() {
        let mut op = failed("x", "");
        assert_eq!(outcome(&op), Some("failed"));
        op.state = v1::OperationState::Cancelled as i32;
        assert_eq!(outcome(&op), Some("was cancelled"));
        op.state = v1::OperationState::Succeeded as i32;
        assert_eq!(outcome(&op), None);
    }
}

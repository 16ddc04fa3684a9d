//! `host evacuate` and `host drain`: start one host job (an operation with one item per server
//! of the host), print its plan, and with `--wait` follow it to the end, print what became of
//! each server and fail unless every one moved.

use flotilla_proto::v1;

use super::super::operation::{follow, outcome, reason};
use super::super::{Ctx, Io};
use crate::args::Format;
use crate::commands::server::progress_line;
use crate::error::CliError;
use crate::output::{list, sanitize};
use crate::views::host::HostJobView;
use crate::views::operation::{render_operation, OperationView};

/// Prints the plan (and the operation id), or for a dry run the plan alone; with `wait`,
/// follows the operation and concludes with [`job_error`].
pub async fn report(
    ctx: &Ctx,
    io: &mut Io<'_>,
    host: &str,
    response: v1::EvacuateHostResponse,
    dry_run: bool,
    wait: bool,
) -> Result<(), CliError> {
    let view = HostJobView::from(response);
    if dry_run || !wait {
        io.print(&view.render(ctx.format)?)?;
        if dry_run {
            writeln!(io.err, "dry run: nothing was started")?;
        } else if ctx.format == Format::Table {
            writeln!(
                io.err,
                "follow it with `flotilla operation watch {}`",
                view.operation_id
            )?;
        }
        return Ok(());
    }
    if view.operation_id.is_empty() {
        return Err(CliError::Protocol(format!(
            "the controller accepted the job for host {host:?} but returned no operation id"
        )));
    }
    // With --wait, tables show the plan first; JSON/YAML print only the finished operation.
    if ctx.format == Format::Table {
        io.print(&view.render(ctx.format)?)?;
    }
    let label = format!("host {host:?}");
    let show_progress = ctx.format == Format::Table;
    let err = &mut *io.err;
    let mut last_line = String::new();
    let op = follow(ctx, &view.operation_id, &mut |op| {
        if show_progress {
            let line = progress_line(&label, op);
            if line != last_line {
                writeln!(err, "{line}")?;
                last_line = line;
            }
        }
        Ok(())
    })
    .await?;
    let finished = OperationView::from(op.clone());
    if ctx.format == Format::Table {
        io.print("\n")?;
        io.print(&list(ctx.format, &finished.items)?)?;
    } else {
        io.print(&render_operation(ctx.format, &finished)?)?;
    }
    match job_error(&label, &op) {
        None => Ok(()),
        Some((lines, error)) => {
            for line in lines {
                writeln!(io.err, "flotilla: error: {}", sanitize(&line))?;
            }
            Err(error)
        }
    }
}

/// `None` when the job succeeded; otherwise one line per server that did not move (failed,
/// cancelled, or left unfinished) and the error the command ends with, which names them.
pub fn job_error(label: &str, op: &v1::Operation) -> Option<(Vec<String>, CliError)> {
    let outcome = outcome(op)?;
    let view = OperationView::from(op.clone());
    let mut lines = Vec::new();
    let mut names = Vec::new();
    for item in view.items.iter().filter(|i| !i.succeeded()) {
        let why = if item.message.is_empty() {
            String::new()
        } else {
            format!(": {}", item.message)
        };
        let to = if item.destination.is_empty() {
            String::new()
        } else {
            format!(" (to {})", item.destination)
        };
        lines.push(format!(
            "server {:?}{to}: {}{why}",
            item.label(),
            item.state_word()
        ));
        names.push(item.label().to_string());
    }
    let why = if names.is_empty() {
        reason(op, None)
    } else {
        let total = view.items.len();
        let mut text = format!(
            "{} of {total} server(s) did not move: {}",
            names.len(),
            names.join(", ")
        );
        if !op.error.trim().is_empty() {
            text = format!("{}; {text}", op.error.trim());
        }
        text
    };
    let error = CliError::OperationFailed {
        subject: label.to_string(),
        action: op.kind.clone(),
        outcome: outcome.to_string(),
        reason: why,
    };
    Some((lines, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(
        name: &str,
        state: v1::OperationState,
        dest: &str,
        msg: &str,
    ) -> v1::OperationItemResult {
        v1::OperationItemResult {
            resource_id: format!("id-{name}"),
            resource_name: name.into(),
            state: state as i32,
            message: msg.into(),
            destination: dest.into(),
            operation_id: format!("op-{name}"),
        }
    }

    fn job(state: v1::OperationState, items: Vec<v1::OperationItemResult>) -> v1::Operation {
        v1::Operation {
            id: "op-1".into(),
            kind: "host_evacuate".into(),
            state: state as i32,
            items,
            ..Default::default()
        }
    }

    #[test]
    fn a_job_that_moved_every_server_succeeds() {
        use v1::OperationState as S;
        let op = job(S::Succeeded, vec![item("web-1", S::Succeeded, "cmp2", "")]);
        assert!(job_error("host \"cmp1\"", &op).is_none());
    }

    #[test]
    fn a_partial_success_fails_naming_each_server_that_did_not_move_and_why() {
        use v1::OperationState as S;
        let op = job(
            S::PartiallySucceeded,
            vec![
                item("web-1", S::Succeeded, "cmp2", "moved"),
                item("db-1", S::Failed, "cmp3", "disk copy failed"),
                item("batch-1", S::Cancelled, "", "cancelled before it started"),
            ],
        );
        let (lines, error) = job_error("host \"cmp1\"", &op).expect("an error");
        assert_eq!(
            lines,
            [
                "server \"db-1\" (to cmp3): failed: disk copy failed",
                "server \"batch-1\": cancelled: cancelled before it started",
            ]
        );
        assert_eq!(
            error.to_string(),
            "host \"cmp1\": host_evacuate partially failed: 2 of 3 server(s) did not move: \
             db-1, batch-1"
        );
    }

    #[test]
    fn a_failed_job_without_items_gives_the_operation_error() {
        use v1::OperationState as S;
        let mut op = job(S::Failed, Vec::new());
        op.error = "host cmp1 holds a valid lease".into();
        let (lines, error) = job_error("host \"cmp1\"", &op).expect("an error");
        assert!(lines.is_empty());
        assert_eq!(
            error.to_string(),
            "host \"cmp1\": host_evacuate failed: host cmp1 holds a valid lease"
        );
        op.state = S::Cancelled as i32;
        op.error.clear();
        let (_, error) = job_error("host \"cmp1\"", &op).expect("an error");
        assert!(error.to_string().contains("was cancelled"), "{error}");
    }
}

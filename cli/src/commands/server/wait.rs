//! `--wait` for server commands: follow each started operation to its end, print what it left
//! (the servers, or the saved image), and fail when any operation did not succeed — with the
//! operation's error and the server's fault. Also the shared printing of servers, with image
//! and flavor names looked up for tables.

use std::collections::HashMap;

use flotilla_proto::v1::{
    self, flavor_service_client::FlavorServiceClient, image_service_client::ImageServiceClient,
    server_service_client::ServerServiceClient,
};
use tonic::Code;

use super::super::operation::{follow, outcome, reason};
use super::super::{Ctx, Io};
use crate::args::Format;
use crate::error::{report, CliError};
use crate::output::{self, sanitize};
use crate::views::image::ImageView;
use crate::views::operation::OperationView;
use crate::views::server::{ServerLongView, ServerView};

/// An operation a command started on a server.
pub struct Started {
    /// The server as the command line named it (its name, for `create`).
    pub server: String,
    /// Its id when the command knows it; otherwise the operation's `resource_id` is used.
    pub server_id: String,
    pub operation_id: String,
}

/// What to print once the operations have finished.
pub enum After {
    /// The servers as they are now (those that still exist).
    Servers,
    /// Nothing (`delete`).
    Nothing,
    /// The image with this id (`backup create`, `image create`), when the save succeeded.
    Image(String),
}

/// A failure of one server's operation, with what to prefix it with when several are reported.
struct Failure {
    context: Option<String>,
    error: CliError,
}

/// Follows each operation of `started` in turn (they run concurrently on the controllers, so
/// waiting in order costs nothing), prints the result per `after`, and fails if any did not
/// succeed. `failed_before` counts servers whose request already failed (and was reported):
/// with one server in all its error is returned as is; with several, each failure goes to
/// stderr and the command fails with a summary.
pub async fn conclude(
    ctx: &Ctx,
    io: &mut Io<'_>,
    started: Vec<Started>,
    failed_before: usize,
    after: After,
) -> Result<(), CliError> {
    let total = started.len() + failed_before;
    let mut failures = Vec::new();
    let mut server_ids = Vec::new();
    for s in &started {
        match follow_one(ctx, io, s, &after).await {
            Ok(op) => {
                let id = if s.server_id.is_empty() {
                    op.resource_id.clone()
                } else {
                    s.server_id.clone()
                };
                if let Some(outcome) = outcome(&op) {
                    let fault = fault_of(ctx, &id).await;
                    failures.push(Failure {
                        context: None,
                        error: CliError::OperationFailed {
                            subject: format!("server {:?}", s.server),
                            action: op.kind.clone(),
                            outcome: outcome.to_string(),
                            reason: reason(&op, fault.as_deref()),
                        },
                    });
                }
                server_ids.push(id);
            }
            Err(e @ CliError::Interrupted { .. }) => return Err(e),
            Err(error) => {
                failures.push(Failure {
                    context: Some(format!(
                        "cannot follow operation {} of server {}",
                        s.operation_id, s.server
                    )),
                    error,
                });
                server_ids.push(if s.server_id.is_empty() {
                    s.server.clone()
                } else {
                    s.server_id.clone()
                });
            }
        }
    }
    match after {
        After::Nothing => {}
        After::Servers => {
            let mut servers = Vec::new();
            for id in server_ids.iter().filter(|id| !id.is_empty()) {
                match get_server(ctx, id).await {
                    Ok(s) => servers.push(s),
                    Err(CliError::Status(s)) if s.code() == Code::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let single = total == 1 && servers.len() == 1;
            print_servers(ctx, io, servers, false, single).await?;
        }
        After::Image(image) if failures.is_empty() => {
            let request = v1::GetImageRequest {
                image,
                stale: false,
            };
            let image = ctx
                .conn
                .call(request, |ch, req| async move {
                    ImageServiceClient::new(ch).get_image(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &ImageView::from(image))?)?;
        }
        After::Image(_) => {}
    }
    if total == 1 {
        return failures.pop().map_or(Ok(()), |f| Err(f.error));
    }
    let failed = failed_before + failures.len();
    for f in failures {
        match f.context {
            Some(context) => writeln!(io.err, "flotilla: error: {context}: {}", report(&f.error))?,
            None => writeln!(io.err, "flotilla: error: {}", report(&f.error))?,
        }
    }
    if failed > 0 {
        return Err(CliError::Partial { failed, total });
    }
    Ok(())
}

/// Follows one operation, printing each change on stderr for table output.
async fn follow_one(
    ctx: &Ctx,
    io: &mut Io<'_>,
    s: &Started,
    after: &After,
) -> Result<v1::Operation, CliError> {
    let label = format!("server {:?}", s.server);
    let show_progress = ctx.format == Format::Table;
    let err = &mut *io.err;
    let mut last_line = String::new();
    let mut on_change = |op: &v1::Operation| -> Result<(), CliError> {
        if show_progress {
            let line = progress_line(&label, op);
            if line != last_line {
                writeln!(err, "{line}")?;
                last_line = line;
            }
        }
        Ok(())
    };
    match follow(ctx, &s.operation_id, &mut on_change).await {
        Err(CliError::Status(status))
            if status.code() == Code::NotFound && matches!(after, After::Nothing) =>
        {
            // A delete that found the server already being deleted (or a retried delete)
            // can be answered with an operation id that was never recorded: the server's
            // own state then says how the deletion went.
            let target = if s.server_id.is_empty() {
                &s.server
            } else {
                &s.server_id
            };
            match get_server(ctx, target).await {
                Err(CliError::Status(gone)) if gone.code() == Code::NotFound => Ok(v1::Operation {
                    id: s.operation_id.clone(),
                    kind: "delete".into(),
                    resource_type: "server".into(),
                    state: v1::OperationState::Succeeded as i32,
                    ..Default::default()
                }),
                Ok(server)
                    if !server.current_operation_id.is_empty()
                        && server.current_operation_id != s.operation_id =>
                {
                    follow(ctx, &server.current_operation_id, &mut on_change).await
                }
                _ => Err(CliError::Status(status)),
            }
        }
        other => other,
    }
}

/// `server "web-1": boot running (spawning): fetching image 40%`, made safe for a terminal.
pub fn progress_line(label: &str, op: &v1::Operation) -> String {
    let view = OperationView::from(op.clone());
    let mut line = format!("{label}: {} {}", view.kind, view.state_word());
    if !view.step.is_empty() {
        line.push_str(&format!(" ({})", view.step));
    }
    let note = view.note_with_items();
    if !note.is_empty() {
        line.push_str(": ");
        line.push_str(&note);
    }
    sanitize(&line)
}

/// The server's fault message, if it has one (best effort: any error gives `None`).
async fn fault_of(ctx: &Ctx, id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    let server = get_server(ctx, id).await.ok()?;
    server.fault.map(|f| f.message)
}

pub async fn get_server(ctx: &Ctx, server: &str) -> Result<v1::Server, CliError> {
    let request = v1::GetServerRequest {
        server: server.to_string(),
        stale: ctx.stale,
    };
    ctx.conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).get_server(req).await
        })
        .await
}

/// Prints servers: a FIELD/VALUE table when `single`, else a list (`long` for more columns).
/// Tables show image and flavor names, looked up here.
pub async fn print_servers(
    ctx: &Ctx,
    io: &mut Io<'_>,
    servers: Vec<v1::Server>,
    long: bool,
    single: bool,
) -> Result<(), CliError> {
    let (images, flavors) = if ctx.format == Format::Table {
        names(ctx, &servers).await
    } else {
        Default::default()
    };
    let mut views: Vec<ServerView> = servers
        .into_iter()
        .map(|s| ServerView::from(s).with_names(&images, &flavors))
        .collect();
    let text = if single && views.len() == 1 {
        output::show(ctx.format, &views.remove(0))?
    } else if long {
        output::list(
            ctx.format,
            &views.into_iter().map(ServerLongView).collect::<Vec<_>>(),
        )?
    } else {
        output::list(ctx.format, &views)?
    };
    io.print(&text)
}

type Names = HashMap<String, String>;

/// Names of the servers' images and flavors (id → name), one lookup per distinct id. Best
/// effort: an image or flavor that cannot be read (deleted, not visible) keeps showing its id.
async fn names(ctx: &Ctx, servers: &[v1::Server]) -> (Names, Names) {
    let conn = &ctx.conn;
    let stale = ctx.stale;
    let mut images = Names::new();
    let mut flavors = Names::new();
    for s in servers {
        if !s.image_id.is_empty() && !images.contains_key(&s.image_id) {
            let request = v1::GetImageRequest {
                image: s.image_id.clone(),
                stale,
            };
            let found = conn
                .call(request, |ch, req| async move {
                    ImageServiceClient::new(ch).get_image(req).await
                })
                .await;
            // Empty = looked up and not found; filtered out below.
            images.insert(
                s.image_id.clone(),
                found.map(|i| i.name).unwrap_or_default(),
            );
        }
        if !s.flavor_id.is_empty() && !flavors.contains_key(&s.flavor_id) {
            let request = v1::GetFlavorRequest {
                flavor: s.flavor_id.clone(),
                stale,
            };
            let found = conn
                .call(request, |ch, req| async move {
                    FlavorServiceClient::new(ch).get_flavor(req).await
                })
                .await;
            flavors.insert(
                s.flavor_id.clone(),
                found.map(|f| f.name).unwrap_or_default(),
            );
        }
    }
    images.retain(|_, name| !name.is_empty());
    flavors.retain(|_, name| !name.is_empty());
    (images, flavors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_name_the_server_kind_state_step_and_note() {
        let mut op = v1::Operation {
            kind: "boot".into(),
            state: v1::OperationState::Running as i32,
            step: "spawning".into(),
            ..Default::default()
        };
        assert_eq!(
            progress_line("server \"web-1\"", &op),
            "server \"web-1\": boot running (spawning)"
        );
        op.state = v1::OperationState::Failed as i32;
        op.error = "agent said:\nno disk".into();
        assert_eq!(
            progress_line("server \"web-1\"", &op),
            "server \"web-1\": boot failed (spawning): agent said:\\nno disk"
        );
    }
}

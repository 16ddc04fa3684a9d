//! `flotilla console log show SERVER` (also `server console log SERVER`): the last lines of a
//! server's serial console, read live from its host through the controller.

use clap::{Args, Subcommand};
use flotilla_proto::v1::{self, server_service_client::ServerServiceClient};

use super::{Ctx, Io};
use crate::args::Format;
use crate::error::CliError;
use crate::views::diagnostics::{render_console, ConsoleLogView};

#[derive(Debug, Subcommand)]
pub enum ConsoleCmd {
    /// The serial console log.
    #[command(subcommand)]
    Log(ConsoleLogCmd),
}

#[derive(Debug, Subcommand)]
pub enum ConsoleLogCmd {
    /// Print the last lines of a server's serial console.
    Show(ConsoleLogArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConsoleLogArgs {
    /// Server id or name.
    pub server: String,
    /// How many of the last lines (default: as much as the controller returns, under 1 MiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub lines: Option<u32>,
}

pub async fn run(cmd: ConsoleCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    match cmd {
        ConsoleCmd::Log(ConsoleLogCmd::Show(a)) => show_log(a, ctx, io).await,
    }
}

/// Prints the log: the text itself for tables (made safe for a terminal), an object with
/// `output` and `truncated` for JSON/YAML. Tables note on stderr when older output was dropped.
pub async fn show_log(a: ConsoleLogArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let request = v1::GetConsoleLogRequest {
        server: a.server.clone(),
        lines: a.lines.unwrap_or(0),
    };
    let log = ctx
        .conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).get_console_log(req).await
        })
        .await?;
    let view = ConsoleLogView::from(log);
    io.print(&render_console(ctx.format, &view)?)?;
    if view.truncated && ctx.format == Format::Table {
        writeln!(
            io.err,
            "flotilla: note: older console output of server {} was dropped",
            a.server
        )?;
    }
    Ok(())
}

//! The `flotilla` command-line client.
//!
//! Layout: [`args`] (global options and grammar), [`config`] (config file and precedence),
//! [`client`] (connections and the shared retry policy), [`commands`] (one module per command
//! group), [`transfer`] (image content on the local side: chunked reading, verified downloads,
//! progress), [`views`] and [`output`] (what gets printed), [`error`] (the one error type).

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod transfer;
pub mod views;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

use crate::args::Cli;
use crate::client::Connection;
use crate::commands::{Ctx, Io};
use crate::error::{report, CliError};

/// Exit code of a failed command (usage errors exit with clap's code, 2).
pub const EXIT_FAILURE: i32 = 1;

/// Parses `args` (including the program name) and runs the command; returns the exit code.
/// Usage errors are written like clap does, without colors.
pub async fn execute<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => run_to_exit_code(cli, out, err).await,
        Err(e) => {
            // Nothing sensible is left to do when the terminal is gone.
            let _ = if e.use_stderr() {
                write!(err, "{}", e.render())
            } else {
                write!(out, "{}", e.render())
            };
            e.exit_code()
        }
    }
}

/// Runs a parsed command, reports a failure on `err` as `flotilla: error: ...`, and returns
/// the exit code.
pub async fn run_to_exit_code(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match run(cli, out, err).await {
        Ok(()) => 0,
        Err(e) if e.is_broken_pipe() => 0,
        Err(e) => {
            let _ = writeln!(err, "flotilla: error: {}", report(&e));
            EXIT_FAILURE
        }
    }
}

/// Resolves the connection settings and runs the command.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let default_path = config::default_config_path(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    );
    let loaded = config::load(cli.global.config.as_deref(), default_path.as_deref())?;
    let settings = config::resolve(&cli.global, loaded, default_path.as_deref())?;
    let ctx = Ctx {
        conn: Connection::new(&settings)?,
        format: cli.global.format,
        stale: cli.global.stale,
        config_path: cli.global.config.clone().or(default_path),
    };
    commands::run(cli.command, &ctx, &mut Io { out, err }).await
}

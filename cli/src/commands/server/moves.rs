//! Moving servers between hosts (admins): `server migrate` (cold), `server migrate --live` and
//! `server evacuate` (rebuild off a DOWN host). Each starts one operation; `--wait` follows it
//! like the other server commands ([`super::wait`]) and prints the server on its new host.
//!
//! `--timeout` of `server migrate --live` is the migration's deadline, not the global call
//! deadline of the same name: clap lets a subcommand take over a global option by declaring an
//! argument with the global's id, so [`MigrateArgs::call_timeout`] holds that id (and the
//! global's value when it is given before the subcommand) and [`MigrateArgs::timeout`] owns the
//! `--timeout` name.

use std::time::Duration;

use clap::Args;
use flotilla_proto::v1::{self, server_service_client::ServerServiceClient};

use super::super::{Ctx, Io};
use super::wait::{self, After, Started};
use super::WaitFlag;
use crate::args::parse_timeout;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::server::OperationRefView;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Server id or name.
    pub server: String,
    /// Destination host, id or hostname (default: the scheduler picks).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Move the running server without stopping it; on failure it keeps running on its source
    /// host. Without --live the server is stopped, moved and started again (cold migration).
    #[arg(long)]
    pub live: bool,
    /// With --live: copy the disks along with memory (default: copy unless the disks are on
    /// storage shared by both hosts).
    #[arg(long, requires = "live", conflicts_with = "no_block_migration")]
    pub block_migration: bool,
    /// With --live: do not copy the disks (they must be on storage shared by both hosts).
    #[arg(long, requires = "live")]
    pub no_block_migration: bool,
    /// With --live: abort the migration (the server keeps running on its source host) if it
    /// has not finished after SECS seconds (default: the controller's). Not the global
    /// --timeout: give that one before `server`, or as --call-timeout.
    #[arg(
        long = "timeout",
        id = "migration_timeout",
        value_name = "SECS",
        requires = "live",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub timeout: Option<u32>,
    /// The global --timeout (overall deadline of each call, retries included), which this
    /// command names --call-timeout.
    #[arg(long, id = "timeout", value_name = "SECONDS", value_parser = parse_timeout)]
    pub call_timeout: Option<Duration>,
    #[command(flatten)]
    pub wait: WaitFlag,
}

impl MigrateArgs {
    /// `--block-migration` → `Some(true)`, `--no-block-migration` → `Some(false)`, neither →
    /// `None` (the controller decides).
    pub fn block_migration(&self) -> Option<bool> {
        match (self.block_migration, self.no_block_migration) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct EvacuateArgs {
    /// Server id or name (its host must be DOWN).
    pub server: String,
    /// Destination host, id or hostname (default: the scheduler picks).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// With --host: skip the scheduler's filters (zone, group policy, hypervisor type); the
    /// destination's capacity is still checked.
    #[arg(long, requires = "host")]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitFlag,
}

pub async fn migrate(a: MigrateArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let request_id = new_request_id();
    let server = a.server.clone();
    let host = a.host.clone().unwrap_or_default();
    let op = if a.live {
        let request = v1::LiveMigrateServerRequest {
            request_id,
            server,
            host,
            block_migration: a.block_migration(),
            timeout_seconds: a.timeout.unwrap_or(0),
        };
        ctx.conn
            .call(request, |ch, req| async move {
                ServerServiceClient::new(ch).live_migrate_server(req).await
            })
            .await?
    } else {
        let request = v1::MigrateServerRequest {
            request_id,
            server,
            host,
        };
        ctx.conn
            .call(request, |ch, req| async move {
                ServerServiceClient::new(ch).migrate_server(req).await
            })
            .await?
    };
    started(ctx, io, a.server, op.operation_id, a.wait).await
}

pub async fn evacuate(a: EvacuateArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let request = v1::EvacuateServerRequest {
        request_id: new_request_id(),
        server: a.server.clone(),
        host: a.host.unwrap_or_default(),
        force: a.force,
    };
    let op = ctx
        .conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).evacuate_server(req).await
        })
        .await?;
    writeln!(io.err, "{}", evacuate_note(&a.server))?;
    started(ctx, io, a.server, op.operation_id, a.wait).await
}

/// What `server evacuate` tells the operator on stderr once the evacuation has started.
pub fn evacuate_note(server: &str) -> String {
    format!(
        "note: server {server:?} is being rebuilt from its image on another host: the contents \
         of its local disks are lost (unless they are on shared storage); its id, name, ports \
         and IP addresses are kept"
    )
}

/// The operation handle, or with `--wait` the outcome and the server as it is now.
async fn started(
    ctx: &Ctx,
    io: &mut Io<'_>,
    server: String,
    operation_id: String,
    flag: WaitFlag,
) -> Result<(), CliError> {
    if !flag.wait {
        let view = OperationRefView {
            server,
            operation_id,
        };
        return io.print(&output::show(ctx.format, &view)?);
    }
    let started = Started {
        server,
        server_id: String::new(),
        operation_id,
    };
    wait::conclude(ctx, io, vec![started], 0, After::Servers).await
}

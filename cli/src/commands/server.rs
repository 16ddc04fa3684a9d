//! `flotilla server ...`: virtual machines, served by ServerService. The words and flags follow
//! `openstack server ...`. Creating, starting, stopping, rebooting, rebuilding, saving,
//! moving ([`moves`]) and deleting a server start a durable operation: the command returns once
//! the controller has recorded it, or with `--wait` follows it to the end ([`wait`]).

mod group;
mod moves;
mod nics;
mod wait;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use flotilla_proto::v1::{self, server_service_client::ServerServiceClient};

use super::console::{self, ConsoleLogArgs};
use super::{all_pages, map_each_name, Ctx, Io};
use crate::args::parse_property;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::diagnostics::{render_diagnostics, DiagnosticsView};
use crate::views::server::{OperationRefView, ServerActionView, ServerImageView};
use wait::{After, Started};

pub(crate) use wait::progress_line;

/// Most user data a server may carry (the API's limit).
pub const MAX_USER_DATA: usize = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// Create a server (or --count N servers named NAME-1 ... NAME-N) and start booting it.
    Create(CreateArgs),
    /// List servers: your project's, or every project's with --all-projects (admins). All pages.
    List(ListArgs),
    /// Show one server.
    Show {
        /// Server id or name.
        server: String,
    },
    /// Power on one or more SHUTOFF servers.
    Start(ManyArgs),
    /// Shut down one or more ACTIVE servers (ACPI, then power off after the controller's
    /// timeout).
    Stop(ManyArgs),
    /// Delete one or more servers (prints nothing).
    Delete(ManyArgs),
    /// Reboot a server: soft (ACPI, then hard after the controller's timeout) or --hard.
    Reboot(RebootArgs),
    /// Lock a server: only admins can change it until it is unlocked.
    Lock(LockArgs),
    /// Unlock a server.
    Unlock(OneArgs),
    /// Recreate a server's root disk from an image (its current one by default), keeping its
    /// id, name and host.
    Rebuild(RebuildArgs),
    /// Backups: images of a server's root disk kept in rotation.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Save a server's root disk as a new image.
    #[command(subcommand)]
    Image(ServerImageCmd),
    /// A server's action history.
    #[command(subcommand)]
    Action(ActionCmd),
    /// A server's serial console.
    #[command(subcommand)]
    Console(ServerConsoleCmd),
    /// Server groups: keep servers together or apart.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// CPU, memory, disk and NIC statistics, read live from the server's host (admins).
    Diagnostics {
        /// Server id or name.
        server: String,
    },
    /// Move a server to another host (admins): cold (stop, move, start), or --live without
    /// stopping it.
    Migrate(moves::MigrateArgs),
    /// Rebuild a server of a DOWN host on another host (admins). Its local disk contents are
    /// lost: it is rebuilt from its image, keeping its id, name, ports and IP addresses.
    Evacuate(moves::EvacuateArgs),
    /// Add to a server: `server add floating ip SERVER FLOATING_IP`.
    #[command(subcommand)]
    Add(nics::AddCmd),
    /// Remove from a server: `server remove floating ip SERVER FLOATING_IP`.
    #[command(subcommand)]
    Remove(nics::RemoveCmd),
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Save the root disk as a backup image, deleting the oldest backups of the same type
    /// beyond --rotate.
    Create(BackupArgs),
}

#[derive(Debug, Subcommand)]
pub enum ServerImageCmd {
    /// Save the root disk as a new (snapshot) image.
    Create(ServerImageArgs),
}

#[derive(Debug, Subcommand)]
pub enum ActionCmd {
    /// Who did what to a server, when, and with what result (newest first).
    List {
        /// Server id or name.
        server: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerConsoleCmd {
    /// Print the last lines of the server's serial console (same as `console log show`).
    Log(ConsoleLogArgs),
}

/// `--wait`, accepted by every command that changes a server.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct WaitFlag {
    /// Follow the operation until it finishes, then print the result; fail if it failed.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Server name (with --count N: the prefix of NAME-1 ... NAME-N).
    pub name: String,
    /// Flavor id or name.
    #[arg(long, value_name = "FLAVOR")]
    pub flavor: String,
    /// Image id or name (must be active).
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Place in this availability zone (default: any).
    #[arg(long, value_name = "ZONE")]
    pub availability_zone: Option<String>,
    /// Join this server group (id or name); its policy constrains placement.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// How many servers to create at once.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Place on this host, id or hostname (admins only; still subject to its capacity).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// A NIC: a new port on this network (id or name), deleted with the server; with
    /// `,fixed-ip=ADDRESS` at that address (repeatable; NICs in order, before the --port ones).
    #[arg(long = "network", value_name = "NETWORK[,fixed-ip=ADDRESS]",
          value_parser = nics::parse_network)]
    pub networks: Vec<v1::ServerNetworkRequest>,
    /// A NIC: this existing unused port of the project (id or name), unbound and kept when the
    /// server is deleted (repeatable; one server only).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// File passed to the guest (cloud-init), at most 64 KiB.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitFlag,
}

/// Server status, in Nova's words (case-insensitive; `hard_reboot` works too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Build,
    Active,
    Shutoff,
    Reboot,
    #[value(alias = "hard_reboot")]
    HardReboot,
    Rebuild,
    Migrating,
    Resize,
    #[value(alias = "verify_resize")]
    VerifyResize,
    Error,
    Deleted,
    Shelved,
    Paused,
    Suspended,
    Unknown,
}

impl From<StatusFilter> for v1::ServerStatus {
    fn from(s: StatusFilter) -> Self {
        use v1::ServerStatus as S;
        match s {
            StatusFilter::Build => S::Build,
            StatusFilter::Active => S::Active,
            StatusFilter::Shutoff => S::Shutoff,
            StatusFilter::Reboot => S::Reboot,
            StatusFilter::HardReboot => S::HardReboot,
            StatusFilter::Rebuild => S::Rebuild,
            StatusFilter::Migrating => S::Migrating,
            StatusFilter::Resize => S::Resize,
            StatusFilter::VerifyResize => S::VerifyResize,
            StatusFilter::Error => S::Error,
            StatusFilter::Deleted => S::Deleted,
            StatusFilter::Shelved => S::Shelved,
            StatusFilter::Paused => S::Paused,
            StatusFilter::Suspended => S::Suspended,
            StatusFilter::Unknown => S::Unknown,
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Servers of every project (admins only).
    #[arg(long)]
    pub all_projects: bool,
    /// Only servers in this status, e.g. ACTIVE, SHUTOFF, ERROR.
    #[arg(long, value_enum, value_name = "STATUS", ignore_case = true)]
    pub status: Option<StatusFilter>,
    /// Only servers on this host, id or hostname (admins only).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Only servers whose name contains this.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// More columns (availability zone, project, creation time, properties).
    #[arg(long)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct ManyArgs {
    /// Server ids or names.
    #[arg(required = true, value_name = "SERVER")]
    pub servers: Vec<String>,
    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct OneArgs {
    /// Server id or name.
    pub server: String,
    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct RebootArgs {
    /// Server id or name.
    pub server: String,
    /// Power-cycle the server instead of asking the guest to restart.
    #[arg(long)]
    pub hard: bool,
    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Server id or name.
    pub server: String,
    /// Why (shown with the server).
    #[arg(long, value_name = "REASON")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Server id or name.
    pub server: String,
    /// Image id or name (default: the server's current image).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Server id or name.
    pub server: String,
    /// Name of the backup image.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Rotation class, e.g. daily or weekly.
    #[arg(long = "type", value_name = "TYPE")]
    pub backup_type: String,
    /// How many backups of this server and type to keep (oldest deleted first).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rotate: u32,
    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct ServerImageArgs {
    /// Server id or name.
    pub server: String,
    /// Name of the new image.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Property KEY=VALUE of the new image (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    #[command(flatten)]
    pub wait: WaitFlag,
}

/// The actions that start one operation on a named server.
#[derive(Debug, Clone)]
enum Act {
    Start,
    Stop,
    Delete,
    Reboot { hard: bool },
    Rebuild { image: Option<String> },
}

impl Act {
    /// Prefix of per-server errors of multi-server commands.
    fn failure(&self) -> &'static str {
        match self {
            Act::Start => "cannot start server",
            Act::Stop => "cannot stop server",
            Act::Delete => "cannot delete server",
            Act::Reboot { .. } => "cannot reboot server",
            Act::Rebuild { .. } => "cannot rebuild server",
        }
    }

    /// Sends the request (one request id, reused by its retries); returns the operation id.
    async fn request(&self, ctx: &Ctx, server: String) -> Result<String, CliError> {
        let conn = &ctx.conn;
        let request_id = new_request_id();
        let op = match self {
            Act::Start => {
                let request = v1::StartServerRequest { request_id, server };
                conn.call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).start_server(req).await
                })
                .await?
            }
            Act::Stop => {
                let request = v1::StopServerRequest { request_id, server };
                conn.call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).stop_server(req).await
                })
                .await?
            }
            Act::Delete => {
                let request = v1::DeleteServerRequest { request_id, server };
                conn.call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).delete_server(req).await
                })
                .await?
            }
            Act::Reboot { hard } => {
                let request = v1::RebootServerRequest {
                    request_id,
                    server,
                    hard: *hard,
                };
                conn.call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).reboot_server(req).await
                })
                .await?
            }
            Act::Rebuild { image } => {
                let request = v1::RebuildServerRequest {
                    request_id,
                    server,
                    image: image.clone().unwrap_or_default(),
                    name: None,
                };
                conn.call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).rebuild_server(req).await
                })
                .await?
            }
        };
        Ok(op.operation_id)
    }
}

pub async fn run(cmd: ServerCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    match cmd {
        ServerCmd::Create(a) => create(a, ctx, io).await,
        ServerCmd::List(a) => list(a, ctx, io).await,
        ServerCmd::Show { server } => {
            let server = wait::get_server(ctx, &server).await?;
            wait::print_servers(ctx, io, vec![server], false, true).await
        }
        ServerCmd::Start(a) => act(ctx, io, Act::Start, a.servers, a.wait, true).await,
        ServerCmd::Stop(a) => act(ctx, io, Act::Stop, a.servers, a.wait, true).await,
        ServerCmd::Delete(a) => act(ctx, io, Act::Delete, a.servers, a.wait, true).await,
        ServerCmd::Reboot(a) => {
            let what = Act::Reboot { hard: a.hard };
            act(ctx, io, what, vec![a.server], a.wait, false).await
        }
        ServerCmd::Rebuild(a) => {
            let what = Act::Rebuild { image: a.image };
            act(ctx, io, what, vec![a.server], a.wait, false).await
        }
        ServerCmd::Lock(a) => {
            let request = v1::LockServerRequest {
                request_id: new_request_id(),
                server: a.server,
                reason: a.reason.unwrap_or_default(),
            };
            let server = ctx
                .conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).lock_server(req).await
                })
                .await?;
            // Locking takes effect when the controller answers: nothing to wait for.
            wait::print_servers(ctx, io, vec![server], false, true).await
        }
        ServerCmd::Unlock(a) => {
            let request = v1::UnlockServerRequest {
                request_id: new_request_id(),
                server: a.server,
            };
            let server = ctx
                .conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).unlock_server(req).await
                })
                .await?;
            wait::print_servers(ctx, io, vec![server], false, true).await
        }
        ServerCmd::Backup(BackupCmd::Create(a)) => {
            let label = a.server.clone();
            let request = v1::BackupServerRequest {
                request_id: new_request_id(),
                server: a.server,
                name: a.name,
                backup_type: a.backup_type,
                rotation: a.rotate,
            };
            let saved = ctx
                .conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).backup_server(req).await
                })
                .await?;
            saved_image(ctx, io, label, saved, a.wait.wait).await
        }
        ServerCmd::Image(ServerImageCmd::Create(a)) => {
            let label = a.server.clone();
            let request = v1::CreateServerImageRequest {
                request_id: new_request_id(),
                server: a.server,
                name: a.name,
                metadata: a.properties.into_iter().collect(),
            };
            let saved = ctx
                .conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).create_server_image(req).await
                })
                .await?;
            saved_image(ctx, io, label, saved, a.wait.wait).await
        }
        ServerCmd::Action(ActionCmd::List { server }) => actions(ctx, io, server).await,
        ServerCmd::Console(ServerConsoleCmd::Log(a)) => console::show_log(a, ctx, io).await,
        ServerCmd::Group(cmd) => group::run(cmd, ctx, io).await,
        ServerCmd::Migrate(a) => moves::migrate(a, ctx, io).await,
        ServerCmd::Evacuate(a) => moves::evacuate(a, ctx, io).await,
        ServerCmd::Add(cmd) => nics::add(cmd, ctx, io).await,
        ServerCmd::Remove(cmd) => nics::remove(cmd, ctx, io).await,
        ServerCmd::Diagnostics { server } => {
            let request = v1::GetDiagnosticsRequest { server };
            let diagnostics = ctx
                .conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).get_diagnostics(req).await
                })
                .await?;
            let view = DiagnosticsView::from(diagnostics);
            io.print(&render_diagnostics(ctx.format, &view)?)
        }
    }
}

async fn create(a: CreateArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let user_data = match &a.user_data {
        None => Vec::new(),
        Some(path) => read_user_data(path)?,
    };
    let request = v1::CreateServerRequest {
        request_id: new_request_id(),
        name: a.name,
        flavor: a.flavor,
        image: a.image,
        availability_zone: a.availability_zone.unwrap_or_default(),
        server_group: a.group.unwrap_or_default(),
        networks: nics::nics(a.networks, a.ports),
        min_count: 0,
        max_count: a.count,
        metadata: a.properties.into_iter().collect(),
        user_data,
        key_name: String::new(),
        host: a.host.unwrap_or_default(),
    };
    let created = ctx
        .conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).create_server(req).await
        })
        .await?;
    if created.operation_ids.len() != created.servers.len() {
        return Err(CliError::Protocol(format!(
            "the controller created {} server(s) but returned {} operation(s)",
            created.servers.len(),
            created.operation_ids.len()
        )));
    }
    if !a.wait.wait {
        let single = created.servers.len() == 1;
        return wait::print_servers(ctx, io, created.servers, false, single).await;
    }
    let started = created
        .servers
        .iter()
        .zip(&created.operation_ids)
        .map(|(s, op)| Started {
            server: s.name.clone(),
            server_id: s.id.clone(),
            operation_id: op.clone(),
        })
        .collect();
    wait::conclude(ctx, io, started, 0, After::Servers).await
}

/// The user data file, refused before anything is sent when it is over the API's limit.
fn read_user_data(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let data = std::fs::read(path).map_err(|source| CliError::ReadFile {
        what: "user data file",
        path: path.to_path_buf(),
        source,
    })?;
    if data.len() > MAX_USER_DATA {
        return Err(CliError::Invalid(format!(
            "user data file {} is {} bytes; at most {MAX_USER_DATA} are allowed",
            path.display(),
            data.len()
        )));
    }
    Ok(data)
}

async fn list(a: ListArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let base = v1::ListServersRequest {
        all_projects: a.all_projects,
        status: a.status.map_or(v1::ServerStatus::Unspecified, Into::into) as i32,
        host: a.host.unwrap_or_default(),
        name: a.name.unwrap_or_default(),
        stale: ctx.stale,
        ..Default::default()
    };
    let servers = all_pages(|page_token| {
        let request = v1::ListServersRequest {
            page_token,
            ..base.clone()
        };
        async move {
            let page = conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).list_servers(req).await
                })
                .await?;
            Ok((page.servers, page.next_page_token))
        }
    })
    .await?;
    wait::print_servers(ctx, io, servers, a.long, false).await
}

/// Start, stop, delete, reboot, rebuild: one request per server (failures reported and the
/// rest still sent), then either the operation handles or, with `--wait`, the outcome.
/// `many` prints handles as a list even for one server (commands that take several).
async fn act(
    ctx: &Ctx,
    io: &mut Io<'_>,
    act: Act,
    servers: Vec<String>,
    flag: WaitFlag,
    many: bool,
) -> Result<(), CliError> {
    let total = servers.len();
    let each = map_each_name(servers, act.failure(), io, |server| {
        let act = act.clone();
        async move {
            let operation_id = act.request(ctx, server.clone()).await?;
            Ok(OperationRefView {
                server,
                operation_id,
            })
        }
    })
    .await?;
    if !flag.wait {
        if !matches!(act, Act::Delete) && !each.done.is_empty() {
            let text = if many {
                output::list(ctx.format, &each.done)?
            } else {
                output::show(ctx.format, &each.done[0])?
            };
            io.print(&text)?;
        }
        return each.error.map_or(Ok(()), Err);
    }
    if each.done.is_empty() {
        return Err(each.error.unwrap_or(CliError::Partial {
            failed: total,
            total,
        }));
    }
    let failed_before = total - each.done.len();
    let started = each
        .done
        .into_iter()
        .map(|r| Started {
            server: r.server,
            server_id: String::new(),
            operation_id: r.operation_id,
        })
        .collect();
    let after = match act {
        Act::Delete => After::Nothing,
        _ => After::Servers,
    };
    wait::conclude(ctx, io, started, failed_before, after).await
}

/// Backup and image create: the image id and operation, or with `--wait` the finished image.
async fn saved_image(
    ctx: &Ctx,
    io: &mut Io<'_>,
    server: String,
    saved: v1::ServerImageResponse,
    wait: bool,
) -> Result<(), CliError> {
    if !wait {
        let view = ServerImageView {
            server,
            image_id: saved.image_id,
            operation_id: saved.operation_id,
        };
        return io.print(&output::show(ctx.format, &view)?);
    }
    let started = Started {
        server,
        server_id: String::new(),
        operation_id: saved.operation_id,
    };
    wait::conclude(ctx, io, vec![started], 0, After::Image(saved.image_id)).await
}

async fn actions(ctx: &Ctx, io: &mut Io<'_>, server: String) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let stale = ctx.stale;
    let actions = all_pages(|page_token| {
        let request = v1::ListServerActionsRequest {
            server: server.clone(),
            page_size: 0,
            page_token,
            stale,
        };
        async move {
            let page = conn
                .call(request, |ch, req| async move {
                    ServerServiceClient::new(ch).list_server_actions(req).await
                })
                .await?;
            Ok((page.actions, page.next_page_token))
        }
    })
    .await?;
    let mut views: Vec<ServerActionView> = actions.into_iter().map(Into::into).collect();
    // Newest first, whatever order the pages came in.
    views.sort_by_key(|v| std::cmp::Reverse(v.start_time_ms));
    io.print(&output::list(ctx.format, &views)?)
}

#[cfg(test)]
mod tests;

//! `flotilla login`, `whoami`, `token revoke` and `role ...`: tokens and role assignments,
//! served by IdentityService.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Subcommand};
use flotilla_proto::v1::{self, identity_service_client::IdentityServiceClient};

use super::{all_pages, Ctx, Io};
use crate::args::Format;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::{IdentityView, RoleAssignmentView, TokenView};

/// Where a password comes from: never a command-line argument (it would show in `ps`).
#[derive(Debug, Args)]
pub struct PasswordSource {
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

impl PasswordSource {
    /// The password, or `None` when no source was given.
    pub fn read(&self) -> Result<Option<String>, CliError> {
        let text = if let Some(path) = &self.password_file {
            std::fs::read_to_string(path).map_err(|source| CliError::ReadFile {
                what: "password file",
                path: path.clone(),
                source,
            })?
        } else if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        } else {
            return Ok(None);
        };
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            return Err(CliError::Config("the password is empty".into()));
        }
        Ok(Some(password))
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("password").required(true).args(["password_file", "password_stdin"])))]
pub struct LoginArgs {
    /// User name or id.
    #[arg(long)]
    pub user: String,
    /// Project (name or id) to scope the token to [default: the user's default project].
    #[arg(long)]
    pub project: Option<String>,
    #[command(flatten)]
    pub password: PasswordSource,
    /// Also write `token = "..."` into the CLI config file (created with mode 0600).
    #[arg(long)]
    pub save: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Revoke a token by id (see `flotilla login -f json`); it stops working at once.
    Revoke {
        /// Token id.
        token_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Give a user a role: `member` or `reader` in a project, or the cluster-wide `admin`.
    Add(RoleArgs),
    /// Take a role away from a user.
    Remove(RoleArgs),
    /// Role assignments.
    #[command(subcommand)]
    Assignment(AssignmentCmd),
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// User name or id.
    #[arg(long)]
    pub user: String,
    /// Project name or id (not with the admin role).
    #[arg(long, conflicts_with = "admin")]
    pub project: Option<String>,
    /// The cluster-wide admin role (same as ROLE `admin`).
    #[arg(long, conflicts_with = "role")]
    pub admin: bool,
    /// `member` or `reader` (with --project), or `admin`.
    #[arg(required_unless_present = "admin")]
    pub role: Option<String>,
}

impl RoleArgs {
    fn parts(self) -> (String, String, String) {
        let role = if self.admin {
            "admin".to_string()
        } else {
            self.role.unwrap_or_default()
        };
        (self.user, self.project.unwrap_or_default(), role)
    }
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCmd {
    /// List role assignments (yours only, unless you are an admin).
    List {
        /// Only this user's (name or id).
        #[arg(long)]
        user: Option<String>,
        /// Only in this project (name or id).
        #[arg(long)]
        project: Option<String>,
    },
}

pub async fn login(a: LoginArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let password = a
        .password
        .read()?
        .ok_or_else(|| CliError::Config("give --password-file or --password-stdin".into()))?;
    let request = v1::LoginRequest {
        user: a.user,
        password,
        project: a.project.unwrap_or_default(),
    };
    let token = ctx
        .conn
        .without_token()
        .call(request, |ch, req| async move {
            IdentityServiceClient::new(ch).login(req).await
        })
        .await?;
    if a.save {
        let path = ctx.config_path.as_deref().ok_or_else(|| {
            CliError::Config("no config file path: give --config or set HOME".into())
        })?;
        save_token(path, &token.token)?;
    }
    match ctx.format {
        Format::Table => io.print(&format!("{}\n", token.token)),
        f => io.print(&output::structured(f, &TokenView::from(token))?),
    }
}

/// Sets `token` in the config file, keeping its other settings; creates the file (and its
/// folder) when missing. The file holds a credential, so it is made readable by its owner only.
pub fn save_token(path: &Path, token: &str) -> Result<(), CliError> {
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|source| CliError::ConfigParse {
            path: path.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(source) => {
            return Err(CliError::ConfigRead {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    table.insert("token".into(), toml::Value::String(token.to_string()));
    let text = toml::to_string(&table)
        .map_err(|e| CliError::Config(format!("cannot write the config file: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn whoami(ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let identity = ctx
        .conn
        .call(v1::WhoAmIRequest {}, |ch, req| async move {
            IdentityServiceClient::new(ch).who_am_i(req).await
        })
        .await?;
    io.print(&output::show(ctx.format, &IdentityView::from(identity))?)
}

pub async fn token(cmd: TokenCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    match cmd {
        TokenCmd::Revoke { token_id } => {
            let request = v1::RevokeTokenRequest {
                request_id: new_request_id(),
                token_id: token_id.clone(),
            };
            ctx.conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).revoke_token(req).await
                })
                .await?;
            match ctx.format {
                Format::Table => io.print(&format!("revoked token {token_id}\n")),
                f => io.print(&output::structured(
                    f,
                    &serde_json::json!({ "revoked": token_id }),
                )?),
            }
        }
    }
}

pub async fn role(cmd: RoleCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        RoleCmd::Add(a) => {
            let (user, project, role) = a.parts();
            let request = v1::AddRoleAssignmentRequest {
                request_id: new_request_id(),
                user,
                project,
                role,
            };
            let a = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch)
                        .add_role_assignment(req)
                        .await
                })
                .await?;
            io.print(&output::show(ctx.format, &RoleAssignmentView::from(a))?)
        }
        RoleCmd::Remove(a) => {
            let (user, project, role) = a.parts();
            let request = v1::RemoveRoleAssignmentRequest {
                request_id: new_request_id(),
                user: user.clone(),
                project: project.clone(),
                role: role.clone(),
            };
            conn.call(request, |ch, req| async move {
                IdentityServiceClient::new(ch)
                    .remove_role_assignment(req)
                    .await
            })
            .await?;
            let removed = RoleAssignmentView {
                user_id: user,
                project_id: project,
                role,
            };
            match ctx.format {
                Format::Table => io.print(&format!(
                    "removed role {} of user {}{}\n",
                    removed.role,
                    removed.user_id,
                    if removed.project_id.is_empty() {
                        String::new()
                    } else {
                        format!(" in project {}", removed.project_id)
                    }
                )),
                f => io.print(&output::structured(f, &removed)?),
            }
        }
        RoleCmd::Assignment(AssignmentCmd::List { user, project }) => {
            let (user, project, stale) = (
                user.unwrap_or_default(),
                project.unwrap_or_default(),
                ctx.stale,
            );
            let items = all_pages(|page_token| {
                let (user, project) = (user.clone(), project.clone());
                async move {
                    let request = v1::ListRoleAssignmentsRequest {
                        user,
                        project,
                        page_size: 0,
                        page_token,
                        stale,
                    };
                    let page = conn
                        .call(request, |ch, req| async move {
                            IdentityServiceClient::new(ch)
                                .list_role_assignments(req)
                                .await
                        })
                        .await?;
                    Ok((page.assignments, page.next_page_token))
                }
            })
            .await?;
            let views: Vec<RoleAssignmentView> = items.into_iter().map(Into::into).collect();
            io.print(&output::list(ctx.format, &views)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_a_token_keeps_other_settings_and_makes_the_file_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        save_token(&path, "first").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "endpoints = [\"a:1\"]\ntoken = \"old\"\n").unwrap();
        save_token(&path, "flt1.x.y").unwrap();
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(table["token"].as_str(), Some("flt1.x.y"));
        assert_eq!(table["endpoints"].as_array().unwrap().len(), 1);
    }
}

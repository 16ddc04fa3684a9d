//! `flotilla user ...`: users, served by IdentityService.

use clap::{ArgGroup, Args, Subcommand};
use flotilla_proto::v1::{self, identity_service_client::IdentityServiceClient};

use super::auth::PasswordSource;
use super::{all_pages, for_each_name, Ctx, Io};
use crate::args::Format;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::UserView;

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user.
    Create(CreateArgs),
    /// List users (only yourself, unless you are an admin).
    List,
    /// Show one user.
    Show {
        /// User id or name.
        user: String,
    },
    /// Change a user; only the given fields change.
    Set(SetArgs),
    /// Delete one or more users.
    Delete {
        /// User ids or names.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// Set a user's password (your own needs --current-password-file).
    SetPassword(SetPasswordArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Unique user name.
    pub name: String,
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// Default project (name or id) of the user's tokens.
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// Create the user disabled.
    #[arg(long)]
    pub disable: bool,
    /// Without a password source the user cannot log in until one is set.
    #[command(flatten)]
    pub password: PasswordSource,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["name", "email", "project", "no_project", "enable", "disable"])
))]
pub struct SetArgs {
    /// User id or name.
    pub user: String,
    /// New name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// New default project (name or id).
    #[arg(long, value_name = "PROJECT", conflicts_with = "no_project")]
    pub project: Option<String>,
    /// Clear the default project.
    #[arg(long)]
    pub no_project: bool,
    /// Enable the user.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the user: their tokens stop working at once.
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("password").required(true).args(["password_file", "password_stdin"])))]
pub struct SetPasswordArgs {
    /// User id or name.
    pub user: String,
    /// The new password.
    #[command(flatten)]
    pub password: PasswordSource,
    /// File whose first line is the current password (needed to change your own).
    #[arg(long, value_name = "FILE")]
    pub current_password_file: Option<std::path::PathBuf>,
}

pub async fn run(cmd: UserCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        UserCmd::Create(a) => {
            let request = v1::CreateUserRequest {
                request_id: new_request_id(),
                name: a.name,
                email: a.email.unwrap_or_default(),
                password: a.password.read()?.unwrap_or_default(),
                enabled: a.disable.then_some(false),
                default_project: a.project.unwrap_or_default(),
            };
            let user = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).create_user(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &UserView::from(user))?)
        }
        UserCmd::List => {
            let stale = ctx.stale;
            let users = all_pages(|page_token| async move {
                let request = v1::ListUsersRequest {
                    page_size: 0,
                    page_token,
                    stale,
                };
                let page = conn
                    .call(request, |ch, req| async move {
                        IdentityServiceClient::new(ch).list_users(req).await
                    })
                    .await?;
                Ok((page.users, page.next_page_token))
            })
            .await?;
            let views: Vec<UserView> = users.into_iter().map(Into::into).collect();
            io.print(&output::list(ctx.format, &views)?)
        }
        UserCmd::Show { user } => {
            let request = v1::GetUserRequest {
                user,
                stale: ctx.stale,
            };
            let user = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).get_user(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &UserView::from(user))?)
        }
        UserCmd::Set(a) => {
            let enabled = match (a.enable, a.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let default_project = if a.no_project {
                Some(String::new())
            } else {
                a.project
            };
            let request = v1::UpdateUserRequest {
                request_id: new_request_id(),
                user: a.user,
                name: a.name,
                email: a.email,
                enabled,
                default_project,
            };
            let user = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).update_user(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &UserView::from(user))?)
        }
        UserCmd::Delete { users } => {
            for_each_name(users, "cannot delete user", io, |user| async move {
                let request = v1::DeleteUserRequest {
                    request_id: new_request_id(),
                    user,
                };
                conn.call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).delete_user(req).await
                })
                .await?;
                Ok(())
            })
            .await
        }
        UserCmd::SetPassword(a) => {
            let new_password = a.password.read()?.unwrap_or_default();
            let current_password = match &a.current_password_file {
                Some(path) => PasswordSource {
                    password_file: Some(path.clone()),
                    password_stdin: false,
                }
                .read()?
                .unwrap_or_default(),
                None => String::new(),
            };
            let request = v1::SetPasswordRequest {
                request_id: new_request_id(),
                user: a.user.clone(),
                current_password,
                new_password,
            };
            conn.call(request, |ch, req| async move {
                IdentityServiceClient::new(ch).set_password(req).await
            })
            .await?;
            match ctx.format {
                Format::Table => io.print(&format!("password of user {} set\n", a.user)),
                f => io.print(&output::structured(
                    f,
                    &serde_json::json!({ "user": a.user, "password_set": true }),
                )?),
            }
        }
    }
}

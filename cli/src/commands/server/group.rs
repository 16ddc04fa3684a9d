//! `flotilla server group ...`: server groups (placement policies between servers), served by
//! ServerGroupService. Words follow `openstack server group ...`.
use clap::{Args, Subcommand, ValueEnum};
use flotilla_proto::v1::{self, server_group_service_client::ServerGroupServiceClient};

use crate::client::new_request_id;
use crate::commands::{all_pages, for_each_name, Ctx, Io};
use crate::error::CliError;
use crate::output;
use crate::views::server_group::ServerGroupView;

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a server group in your project.
    Create(GroupCreateArgs),
    /// List server groups: your project's, or every project's with --all-projects (admins).
    List(GroupListArgs),
    /// Show one server group and its members.
    Show {
        /// Server group id or name.
        group: String,
    },
    /// Delete one or more server groups (prints nothing). Members keep running where they are;
    /// the policy no longer applies to them.
    Delete {
        /// Server group ids or names.
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
}

/// Nova's policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// All members on one host; creating a server fails when it does not fit there.
    Affinity,
    /// Every member on a different host; creating a server fails when none is left.
    AntiAffinity,
    /// Members on one host when possible.
    SoftAffinity,
    /// Members on different hosts when possible.
    SoftAntiAffinity,
}

impl From<Policy> for v1::ServerGroupPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Affinity => v1::ServerGroupPolicy::Affinity,
            Policy::AntiAffinity => v1::ServerGroupPolicy::AntiAffinity,
            Policy::SoftAffinity => v1::ServerGroupPolicy::SoftAffinity,
            Policy::SoftAntiAffinity => v1::ServerGroupPolicy::SoftAntiAffinity,
        }
    }
}

#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// Group name (unique within the project).
    pub name: String,
    /// Placement policy between the group's servers.
    #[arg(long, value_enum)]
    pub policy: Policy,
}

#[derive(Debug, Args)]
pub struct GroupListArgs {
    /// Every project's groups (admins).
    #[arg(long)]
    pub all_projects: bool,
}

pub async fn run(cmd: GroupCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        GroupCmd::Create(a) => {
            let request = v1::CreateServerGroupRequest {
                request_id: new_request_id(),
                name: a.name,
                policy: v1::ServerGroupPolicy::from(a.policy) as i32,
                rules: None,
            };
            let group = conn
                .call(request, |ch, req| async move {
                    ServerGroupServiceClient::new(ch)
                        .create_server_group(req)
                        .await
                })
                .await?;
            io.print(&output::show(ctx.format, &ServerGroupView::from(group))?)
        }
        GroupCmd::List(a) => {
            let base = v1::ListServerGroupsRequest {
                all_projects: a.all_projects,
                stale: ctx.stale,
                ..Default::default()
            };
            let groups = all_pages(|page_token| {
                let request = v1::ListServerGroupsRequest {
                    page_token,
                    ..base.clone()
                };
                async move {
                    let page = conn
                        .call(request, |ch, req| async move {
                            ServerGroupServiceClient::new(ch)
                                .list_server_groups(req)
                                .await
                        })
                        .await?;
                    Ok((page.server_groups, page.next_page_token))
                }
            })
            .await?;
            let views: Vec<ServerGroupView> = groups.into_iter().map(Into::into).collect();
            io.print(&output::list(ctx.format, &views)?)
        }
        GroupCmd::Show { group } => {
            let request = v1::GetServerGroupRequest {
                server_group: group,
                stale: ctx.stale,
            };
            let group = conn
                .call(request, |ch, req| async move {
                    ServerGroupServiceClient::new(ch)
                        .get_server_group(req)
                        .await
                })
                .await?;
            io.print(&output::show(ctx.format, &ServerGroupView::from(group))?)
        }
        GroupCmd::Delete { groups } => {
            for_each_name(
                groups,
                "cannot delete server group",
                io,
                |group| async move {
                    // One request id per group, reused by that deletion's retries.
                    let request = v1::DeleteServerGroupRequest {
                        request_id: new_request_id(),
                        server_group: group,
                    };
                    conn.call(request, |ch, req| async move {
                        ServerGroupServiceClient::new(ch)
                            .delete_server_group(req)
                            .await
                    })
                    .await?;
                    Ok(())
                },
            )
            .await
        }
    }
}

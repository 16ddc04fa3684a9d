//! `flotilla cluster ...`: the controllers themselves, served by ClusterService.

use clap::{Args, Subcommand};
use flotilla_proto::v1::{self, cluster_service_client::ClusterServiceClient};

use super::{Ctx, Io};
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output::{self, sanitize};
use crate::views::{ClusterStatusView, MemberStatusView, MemberView};

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every member's status as each member reports it (role, term, applied index, checksum).
    Status,
    /// The configured members.
    Members,
    /// Add a member (already running with `join = true` and an empty data directory).
    AddMember(AddMemberArgs),
    /// Remove a member.
    RemoveMember {
        /// Member id.
        id: u64,
    },
    /// Hand leadership to another member (by default the most up-to-date follower).
    TransferLeader {
        /// Member id of the new leader.
        id: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct AddMemberArgs {
    /// Raft id of the new member (unique, non-zero).
    #[arg(long, value_name = "N")]
    pub id: u64,
    /// Member name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// gRPC address clients use, HOST:PORT.
    #[arg(long, value_name = "ADDRESS")]
    pub client_address: String,
    /// Address peer controllers use, HOST:PORT.
    #[arg(long, value_name = "ADDRESS")]
    pub peer_address: String,
}

pub async fn run(cmd: ClusterCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        ClusterCmd::Status => {
            let status = conn
                .call(v1::GetClusterStatusRequest {}, |ch, req| async move {
                    ClusterServiceClient::new(ch).get_cluster_status(req).await
                })
                .await?;
            let view = ClusterStatusView::from(status);
            let text = match ctx.format {
                crate::args::Format::Table => status_table(&view)?,
                format => output::structured(format, &view)?,
            };
            io.print(&text)
        }
        ClusterCmd::Members => {
            let request = v1::ListMembersRequest { stale: ctx.stale };
            let members = conn
                .call(request, |ch, req| async move {
                    ClusterServiceClient::new(ch).list_members(req).await
                })
                .await?;
            print_members(ctx, io, members)
        }
        ClusterCmd::AddMember(a) => {
            let request = v1::AddMemberRequest {
                request_id: new_request_id(),
                id: a.id,
                name: a.name,
                client_address: a.client_address,
                peer_address: a.peer_address,
            };
            let members = conn
                .call(request, |ch, req| async move {
                    ClusterServiceClient::new(ch).add_member(req).await
                })
                .await?;
            print_members(ctx, io, members)
        }
        ClusterCmd::RemoveMember { id } => {
            let request = v1::RemoveMemberRequest {
                request_id: new_request_id(),
                id,
            };
            let members = conn
                .call(request, |ch, req| async move {
                    ClusterServiceClient::new(ch).remove_member(req).await
                })
                .await?;
            print_members(ctx, io, members)
        }
        ClusterCmd::TransferLeader { id } => {
            let request = v1::TransferLeaderRequest {
                target_id: id.unwrap_or(0),
            };
            let status = conn
                .call(request, |ch, req| async move {
                    ClusterServiceClient::new(ch).transfer_leader(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &MemberStatusView::from(status))?)
        }
    }
}

fn print_members(
    ctx: &Ctx,
    io: &mut Io<'_>,
    members: v1::ListMembersResponse,
) -> Result<(), CliError> {
    let views: Vec<MemberView> = members.members.into_iter().map(Into::into).collect();
    io.print(&output::list(ctx.format, &views)?)
}

/// One row per member, then why unreachable members did not answer.
fn status_table(view: &ClusterStatusView) -> Result<String, CliError> {
    let mut text = output::list(crate::args::Format::Table, &view.members)?;
    for m in view.members.iter().filter(|m| !m.error.is_empty()) {
        text.push_str(&format!(
            "member {} ({}) did not answer: {}\n",
            m.id,
            sanitize(&m.name),
            sanitize(&m.error)
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_explains_unreachable_members() {
        let view = ClusterStatusView::from(v1::ClusterStatus {
            leader_id: 1,
            members: vec![
                v1::MemberStatus {
                    id: 1,
                    name: "c1".into(),
                    role: v1::Role::Leader as i32,
                    ..Default::default()
                },
                v1::MemberStatus {
                    id: 2,
                    name: "c2".into(),
                    role: v1::Role::Unreachable as i32,
                    error: "connection refused".into(),
                    ..Default::default()
                },
            ],
        });
        let text = status_table(&view).unwrap();
        assert!(
            text.lines().nth(2).unwrap().contains("unreachable"),
            "{text}"
        );
        assert!(
            text.ends_with("member 2 (c2) did not answer: connection refused\n"),
            "{text}"
        );
    }
}

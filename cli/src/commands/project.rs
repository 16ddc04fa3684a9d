//! `flotilla project ...`: projects (tenants), served by IdentityService.

use clap::{ArgGroup, Args, Subcommand};
use flotilla_proto::v1::{self, identity_service_client::IdentityServiceClient};

use super::{all_pages, for_each_name, Ctx, Io};
use crate::args::parse_property;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::ProjectView;

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project.
    Create(CreateArgs),
    /// List all projects.
    List,
    /// Show one project.
    Show {
        /// Project id or name.
        project: String,
    },
    /// Change a project; only the given fields change.
    Set(SetArgs),
    /// Delete one or more projects.
    Delete {
        /// Project ids or names.
        #[arg(required = true, value_name = "PROJECT")]
        projects: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Unique project name.
    pub name: String,
    /// Free-form description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Create the project disabled (enabled by default).
    #[arg(long)]
    pub disable: bool,
    /// Property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["name", "description", "enable", "disable", "properties", "unset_properties"])
))]
pub struct SetArgs {
    /// Project id or name.
    pub project: String,
    /// New name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// New description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Enable the project.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the project.
    #[arg(long)]
    pub disable: bool,
    /// Add or overwrite property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Remove property KEY (repeatable).
    #[arg(long = "unset-property", value_name = "KEY")]
    pub unset_properties: Vec<String>,
}

pub async fn run(cmd: ProjectCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        ProjectCmd::Create(a) => {
            let request = v1::CreateProjectRequest {
                request_id: new_request_id(),
                name: a.name,
                description: a.description.unwrap_or_default(),
                enabled: a.disable.then_some(false),
                properties: a.properties.into_iter().collect(),
            };
            let project = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).create_project(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &ProjectView::from(project))?)
        }
        ProjectCmd::List => {
            let stale = ctx.stale;
            let projects = all_pages(|page_token| async move {
                let request = v1::ListProjectsRequest {
                    page_size: 0,
                    page_token,
                    stale,
                };
                let page = conn
                    .call(request, |ch, req| async move {
                        IdentityServiceClient::new(ch).list_projects(req).await
                    })
                    .await?;
                Ok((page.projects, page.next_page_token))
            })
            .await?;
            let views: Vec<ProjectView> = projects.into_iter().map(Into::into).collect();
            io.print(&output::list(ctx.format, &views)?)
        }
        ProjectCmd::Show { project } => {
            let request = v1::GetProjectRequest {
                project,
                stale: ctx.stale,
            };
            let project = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).get_project(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &ProjectView::from(project))?)
        }
        ProjectCmd::Set(a) => {
            let enabled = match (a.enable, a.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let request = v1::UpdateProjectRequest {
                request_id: new_request_id(),
                project: a.project,
                name: a.name,
                description: a.description,
                enabled,
                set_properties: a.properties.into_iter().collect(),
                unset_properties: a.unset_properties,
            };
            let project = conn
                .call(request, |ch, req| async move {
                    IdentityServiceClient::new(ch).update_project(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &ProjectView::from(project))?)
        }
        ProjectCmd::Delete { projects } => {
            for_each_name(
                projects,
                "cannot delete project",
                io,
                |project| async move {
                    // One request id per project, reused by that deletion's retries.
                    let request = v1::DeleteProjectRequest {
                        request_id: new_request_id(),
                        project,
                    };
                    conn.call(request, |ch, req| async move {
                        IdentityServiceClient::new(ch).delete_project(req).await
                    })
                    .await?;
                    Ok(())
                },
            )
            .await
        }
    }
}

//! `flotilla flavor ...`: the sizes servers are created with, served by FlavorService.

use clap::{ArgGroup, Args, Subcommand};
use flotilla_proto::v1::{self, flavor_service_client::FlavorServiceClient};

use super::{all_pages, for_each_name, Ctx, Io};
use crate::args::{parse_property, Format};
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::FlavorView;

#[derive(Debug, Subcommand)]
pub enum FlavorCmd {
    /// Create a flavor. Its sizes never change afterwards.
    Create(CreateArgs),
    /// List all flavors.
    List,
    /// Show one flavor.
    Show {
        /// Flavor id or name.
        flavor: String,
    },
    /// Change a flavor's description, visibility or extra specs.
    Set(SetArgs),
    /// Delete one or more flavors.
    Delete {
        /// Flavor ids or names.
        #[arg(required = true, value_name = "FLAVOR")]
        flavors: Vec<String>,
    },
    /// Which projects may use a private flavor.
    #[command(subcommand)]
    Access(AccessCmd),
}

#[derive(Debug, Subcommand)]
pub enum AccessCmd {
    /// Let a project use a private flavor.
    Add {
        /// Flavor id or name.
        flavor: String,
        /// Project id or name.
        project: String,
    },
    /// Take a project's access to a private flavor away.
    Remove {
        /// Flavor id or name.
        flavor: String,
        /// Project id or name.
        project: String,
    },
    /// List the projects that may use a flavor.
    List {
        /// Flavor id or name.
        flavor: String,
    },
}

/// `flavor access list` as JSON/YAML.
#[derive(Debug, serde::Serialize)]
pub struct AccessView {
    pub flavor_id: String,
    pub access_project_ids: Vec<String>,
}

impl AccessView {
    pub fn render(&self, format: Format) -> Result<String, CliError> {
        if format != Format::Table {
            return output::structured(format, self);
        }
        let rows: Vec<Vec<String>> = self
            .access_project_ids
            .iter()
            .map(|id| vec![id.clone()])
            .collect();
        Ok(output::table(&["PROJECT ID"], &rows))
    }
}

async fn access(cmd: AccessCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let (flavor, project, add) = match cmd {
        AccessCmd::List { flavor } => {
            let request = v1::GetFlavorRequest {
                flavor,
                stale: ctx.stale,
            };
            let f = conn
                .call(request, |ch, req| async move {
                    FlavorServiceClient::new(ch).get_flavor(req).await
                })
                .await?;
            let mut access_project_ids = f.access_project_ids;
            access_project_ids.sort();
            let view = AccessView {
                flavor_id: f.id,
                access_project_ids,
            };
            return io.print(&view.render(ctx.format)?);
        }
        AccessCmd::Add { flavor, project } => (flavor, project, true),
        AccessCmd::Remove { flavor, project } => (flavor, project, false),
    };
    let request = v1::FlavorAccessRequest {
        request_id: new_request_id(),
        flavor,
        project,
    };
    let flavor = conn
        .call(request, move |ch, req| async move {
            let mut client = FlavorServiceClient::new(ch);
            if add {
                client.add_flavor_access(req).await
            } else {
                client.remove_flavor_access(req).await
            }
        })
        .await?;
    io.print(&output::show(ctx.format, &FlavorView::from(flavor))?)
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Unique flavor name.
    pub name: String,
    /// Virtual CPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long, value_name = "MIB")]
    pub ram: u64,
    /// Root disk in GiB.
    #[arg(long, value_name = "GIB")]
    pub disk: u64,
    /// Ephemeral disk in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 0)]
    pub ephemeral: u64,
    /// Swap in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub swap: u64,
    /// Only projects given access may use it (public by default).
    #[arg(long)]
    pub private: bool,
    /// Free-form description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Extra spec KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["description", "public", "private", "properties", "unset_properties"])
))]
pub struct SetArgs {
    /// Flavor id or name.
    pub flavor: String,
    /// New description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Make the flavor usable by every project.
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Restrict the flavor to projects given access.
    #[arg(long)]
    pub private: bool,
    /// Add or overwrite extra spec KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Remove extra spec KEY (repeatable).
    #[arg(long = "unset-property", value_name = "KEY")]
    pub unset_properties: Vec<String>,
}

pub async fn run(cmd: FlavorCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        FlavorCmd::Access(cmd) => access(cmd, ctx, io).await,
        FlavorCmd::Create(a) => {
            let request = v1::CreateFlavorRequest {
                request_id: new_request_id(),
                name: a.name,
                vcpus: a.vcpus,
                ram_mib: a.ram,
                disk_gib: a.disk,
                ephemeral_gib: a.ephemeral,
                swap_mib: a.swap,
                is_public: a.private.then_some(false),
                description: a.description.unwrap_or_default(),
                extra_specs: a.properties.into_iter().collect(),
            };
            let flavor = conn
                .call(request, |ch, req| async move {
                    FlavorServiceClient::new(ch).create_flavor(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &FlavorView::from(flavor))?)
        }
        FlavorCmd::List => {
            let stale = ctx.stale;
            let flavors = all_pages(|page_token| async move {
                let request = v1::ListFlavorsRequest {
                    page_size: 0,
                    page_token,
                    stale,
                };
                let page = conn
                    .call(request, |ch, req| async move {
                        FlavorServiceClient::new(ch).list_flavors(req).await
                    })
                    .await?;
                Ok((page.flavors, page.next_page_token))
            })
            .await?;
            let views: Vec<FlavorView> = flavors.into_iter().map(Into::into).collect();
            io.print(&output::list(ctx.format, &views)?)
        }
        FlavorCmd::Show { flavor } => {
            let request = v1::GetFlavorRequest {
                flavor,
                stale: ctx.stale,
            };
            let flavor = conn
                .call(request, |ch, req| async move {
                    FlavorServiceClient::new(ch).get_flavor(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &FlavorView::from(flavor))?)
        }
        FlavorCmd::Set(a) => {
            let is_public = match (a.public, a.private) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let request = v1::UpdateFlavorRequest {
                request_id: new_request_id(),
                flavor: a.flavor,
                description: a.description,
                is_public,
                set_extra_specs: a.properties.into_iter().collect(),
                unset_extra_specs: a.unset_properties,
            };
            let flavor = conn
                .call(request, |ch, req| async move {
                    FlavorServiceClient::new(ch).update_flavor(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &FlavorView::from(flavor))?)
        }
        FlavorCmd::Delete { flavors } => {
            for_each_name(flavors, "cannot delete flavor", io, |flavor| async move {
                // One request id per flavor, reused by that deletion's retries.
                let request = v1::DeleteFlavorRequest {
                    request_id: new_request_id(),
                    flavor,
                };
                conn.call(request, |ch, req| async move {
                    FlavorServiceClient::new(ch).delete_flavor(req).await
                })
                .await?;
                Ok(())
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<AccessCmd, clap::Error> {
        let mut all = vec!["flotilla", "flavor", "access"];
        all.extend(args);
        match Cli::try_parse_from(all)?.command {
            Command::Flavor(FlavorCmd::Access(a)) => Ok(a),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn access_commands_parse_and_list_renders_project_ids() {
        assert!(matches!(
            parse(&["add", "gpu", "web"]).unwrap(),
            AccessCmd::Add { ref flavor, ref project } if flavor == "gpu" && project == "web"
        ));
        assert!(matches!(
            parse(&["remove", "gpu", "web"]).unwrap(),
            AccessCmd::Remove { .. }
        ));
        assert!(matches!(
            parse(&["list", "gpu", "-f", "json"]).unwrap(),
            AccessCmd::List { .. }
        ));
        assert!(parse(&["add", "gpu"]).is_err(), "a project is required");
        let view = AccessView {
            flavor_id: "f1".into(),
            access_project_ids: vec!["p1".into(), "p2".into()],
        };
        assert_eq!(view.render(Format::Table).unwrap(), "PROJECT ID\np1\np2\n");
        let json: serde_json::Value =
            serde_json::from_str(&view.render(Format::Json).unwrap()).unwrap();
        assert_eq!(json["access_project_ids"][1], "p2");
    }
}

//! `flotilla quota ...`: per-project limits and the cluster-wide defaults (QuotaService).

use clap::{ArgGroup, Args, Subcommand};
use flotilla_proto::v1::{self, quota_service_client::QuotaServiceClient};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{Ctx, Io};
use crate::args::Format;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;

/// Resource names (proto field names), in display order.
pub const RESOURCES: [&str; 13] = [
    "instances",
    "vcpus",
    "ram_mib",
    "disk_gib",
    "networks",
    "ports",
    "floating_ips",
    "images",
    "image_storage_gib",
    "server_groups",
    "subnets",
    "security_groups",
    "security_group_rules",
];

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Show a project's limits and usage, or the default limits.
    Show {
        /// Project id or name [default: the project of the token].
        #[arg(conflicts_with = "default")]
        project: Option<String>,
        /// Show the cluster-wide defaults instead.
        #[arg(long)]
        default: bool,
    },
    /// Change limits of a project, or the defaults (-1 = unlimited).
    Set(Box<SetArgs>),
    /// Make every limit of a project follow the defaults again.
    Reset {
        /// Project id or name.
        project: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("limits").required(true).multiple(true).args([
    "instances", "vcpus", "ram", "disk", "networks", "ports", "floating_ips", "images",
    "image_storage", "server_groups", "subnets", "security_groups", "security_group_rules",
])))]
pub struct SetArgs {
    /// Project id or name.
    #[arg(required_unless_present = "default", conflicts_with = "default")]
    pub project: Option<String>,
    /// Change the cluster-wide defaults instead of a project's limits.
    #[arg(long)]
    pub default: bool,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub instances: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub vcpus: Option<i64>,
    /// Memory in MiB.
    #[arg(long, value_name = "MIB", allow_negative_numbers = true)]
    pub ram: Option<i64>,
    /// Server disks in GiB.
    #[arg(long, value_name = "GIB", allow_negative_numbers = true)]
    pub disk: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub networks: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub ports: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub floating_ips: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub images: Option<i64>,
    /// Total image size in GiB.
    #[arg(long, value_name = "GIB", allow_negative_numbers = true)]
    pub image_storage: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub server_groups: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub subnets: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub security_groups: Option<i64>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub security_group_rules: Option<i64>,
}

/// One resource: its limit and, for a project, usage and where the limit comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuotaRow {
    #[serde(skip)]
    pub resource: &'static str,
    pub limit: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_use: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_default: Option<bool>,
}

/// A quota shown as the proto does: `{"project_id": .., "vcpus": {"limit": ..}, ..}`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaView {
    pub project_id: Option<String>,
    pub rows: Vec<QuotaRow>,
}

impl Serialize for QuotaView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(id) = &self.project_id {
            m.serialize_entry("project_id", id)?;
        }
        for row in &self.rows {
            match row.in_use {
                Some(_) => m.serialize_entry(row.resource, row)?,
                None => m.serialize_entry(row.resource, &row.limit)?,
            }
        }
        m.end()
    }
}

fn limit_cell(limit: i64) -> String {
    if limit == -1 {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

impl QuotaView {
    pub fn render(&self, format: Format) -> Result<String, CliError> {
        if format != Format::Table {
            return output::structured(format, self);
        }
        if self.project_id.is_none() {
            let rows: Vec<Vec<String>> = self
                .rows
                .iter()
                .map(|r| vec![r.resource.to_string(), limit_cell(r.limit)])
                .collect();
            return Ok(output::table(&["RESOURCE", "LIMIT"], &rows));
        }
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.resource.to_string(),
                    limit_cell(r.limit),
                    r.in_use.unwrap_or_default().to_string(),
                    r.from_default.unwrap_or_default().to_string(),
                ]
            })
            .collect();
        Ok(output::table(
            &["RESOURCE", "LIMIT", "IN USE", "FROM DEFAULT"],
            &rows,
        ))
    }
}

impl From<v1::Quota> for QuotaView {
    fn from(q: v1::Quota) -> Self {
        let items = [
            q.instances,
            q.vcpus,
            q.ram_mib,
            q.disk_gib,
            q.networks,
            q.ports,
            q.floating_ips,
            q.images,
            q.image_storage_gib,
            q.server_groups,
            q.subnets,
            q.security_groups,
            q.security_group_rules,
        ];
        let rows = RESOURCES
            .into_iter()
            .zip(items)
            .map(|(resource, item)| {
                let item = item.unwrap_or_default();
                QuotaRow {
                    resource,
                    limit: item.limit,
                    in_use: Some(item.in_use),
                    from_default: Some(item.from_default),
                }
            })
            .collect();
        QuotaView {
            project_id: Some(q.project_id),
            rows,
        }
    }
}

impl From<v1::QuotaLimits> for QuotaView {
    fn from(l: v1::QuotaLimits) -> Self {
        let limits = [
            l.instances,
            l.vcpus,
            l.ram_mib,
            l.disk_gib,
            l.networks,
            l.ports,
            l.floating_ips,
            l.images,
            l.image_storage_gib,
            l.server_groups,
            l.subnets,
            l.security_groups,
            l.security_group_rules,
        ];
        let rows = RESOURCES
            .into_iter()
            .zip(limits)
            .map(|(resource, limit)| QuotaRow {
                resource,
                limit,
                in_use: None,
                from_default: None,
            })
            .collect();
        QuotaView {
            project_id: None,
            rows,
        }
    }
}

pub async fn run(cmd: QuotaCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let view: QuotaView = match cmd {
        QuotaCmd::Show { default: true, .. } => {
            let request = v1::GetDefaultQuotaRequest { stale: ctx.stale };
            conn.call(request, |ch, req| async move {
                QuotaServiceClient::new(ch).get_default_quota(req).await
            })
            .await?
            .into()
        }
        QuotaCmd::Show { project, .. } => {
            let request = v1::GetQuotaRequest {
                project: project.unwrap_or_default(),
                stale: ctx.stale,
            };
            conn.call(request, |ch, req| async move {
                QuotaServiceClient::new(ch).get_quota(req).await
            })
            .await?
            .into()
        }
        QuotaCmd::Set(a) if a.default => {
            let request = v1::SetDefaultQuotaRequest {
                request_id: new_request_id(),
                instances: a.instances,
                vcpus: a.vcpus,
                ram_mib: a.ram,
                disk_gib: a.disk,
                networks: a.networks,
                ports: a.ports,
                floating_ips: a.floating_ips,
                images: a.images,
                image_storage_gib: a.image_storage,
                server_groups: a.server_groups,
                subnets: a.subnets,
                security_groups: a.security_groups,
                security_group_rules: a.security_group_rules,
            };
            conn.call(request, |ch, req| async move {
                QuotaServiceClient::new(ch).set_default_quota(req).await
            })
            .await?
            .into()
        }
        QuotaCmd::Set(a) => {
            let request = v1::SetQuotaRequest {
                request_id: new_request_id(),
                project: a.project.unwrap_or_default(),
                instances: a.instances,
                vcpus: a.vcpus,
                ram_mib: a.ram,
                disk_gib: a.disk,
                networks: a.networks,
                ports: a.ports,
                floating_ips: a.floating_ips,
                images: a.images,
                image_storage_gib: a.image_storage,
                server_groups: a.server_groups,
                subnets: a.subnets,
                security_groups: a.security_groups,
                security_group_rules: a.security_group_rules,
                reset_to_default: Vec::new(),
            };
            conn.call(request, |ch, req| async move {
                QuotaServiceClient::new(ch).set_quota(req).await
            })
            .await?
            .into()
        }
        QuotaCmd::Reset { project } => {
            let request = v1::SetQuotaRequest {
                request_id: new_request_id(),
                project,
                reset_to_default: RESOURCES.iter().map(|r| r.to_string()).collect(),
                ..Default::default()
            };
            conn.call(request, |ch, req| async move {
                QuotaServiceClient::new(ch).set_quota(req).await
            })
            .await?
            .into()
        }
    };
    io.print(&view.render(ctx.format)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<QuotaCmd, clap::Error> {
        let mut all = vec!["flotilla", "quota"];
        all.extend(args);
        match Cli::try_parse_from(all)?.command {
            Command::Quota(q) => Ok(q),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn set_takes_limits_with_unlimited_and_needs_a_project_or_default() {
        let QuotaCmd::Set(a) = parse(&["set", "web", "--vcpus", "-1", "--ram", "4096"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (a.project.as_deref(), a.vcpus, a.ram, a.default),
            (Some("web"), Some(-1), Some(4096), false)
        );
        let QuotaCmd::Set(a) = parse(&["set", "--default", "--instances", "5"]).unwrap() else {
            panic!()
        };
        assert!(a.default && a.project.is_none());
        assert!(
            parse(&["set", "--vcpus", "1"]).is_err(),
            "project or --default"
        );
        assert!(parse(&["set", "web"]).is_err(), "at least one limit");
        assert!(parse(&["set", "web", "--default", "--ports", "1"]).is_err());
        assert!(matches!(
            parse(&["show", "--default"]).unwrap(),
            QuotaCmd::Show {
                default: true,
                project: None
            }
        ));
        assert!(matches!(
            parse(&["reset", "web"]).unwrap(),
            QuotaCmd::Reset { .. }
        ));
    }

    #[test]
    fn a_project_quota_renders_as_a_table_and_as_proto_shaped_json() {
        let item = |limit, in_use, from_default| {
            Some(v1::QuotaItem {
                limit,
                in_use,
                from_default,
            })
        };
        let q = v1::Quota {
            project_id: "p1".into(),
            instances: item(10, 2, true),
            vcpus: item(-1, 4, false),
            ..Default::default()
        };
        let view = QuotaView::from(q);
        let table = view.render(Format::Table).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "RESOURCE              LIMIT      IN USE  FROM DEFAULT"
        );
        assert_eq!(lines[1], "instances             10         2       true");
        assert_eq!(lines[2], "vcpus                 unlimited  4       false");
        assert_eq!(lines.len(), 14);
        let json: serde_json::Value =
            serde_json::from_str(&view.render(Format::Json).unwrap()).unwrap();
        assert_eq!(json["project_id"], "p1");
        assert_eq!(json["vcpus"]["limit"], -1);
        assert_eq!(json["instances"]["in_use"], 2);
        assert_eq!(json["instances"]["from_default"], true);
    }

    #[test]
    fn the_default_quota_shows_limits_only() {
        let d = v1::QuotaLimits {
            instances: 10,
            vcpus: -1,
            ..Default::default()
        };
        let view = QuotaView::from(d);
        let table = view.render(Format::Table).unwrap();
        assert!(
            table.starts_with("RESOURCE              LIMIT\n"),
            "{table}"
        );
        assert!(
            table.contains("vcpus                 unlimited\n"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&view.render(Format::Json).unwrap()).unwrap();
        assert_eq!(json["instances"], 10);
        assert!(json.get("project_id").is_none());
    }
}

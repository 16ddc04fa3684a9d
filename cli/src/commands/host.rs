//! `flotilla host ...`: compute hosts as their agents registered them, served by HostService
//! (admins only). Words follow `openstack compute service` / `hypervisor`: hosts are `up` or
//! `down` (lease), `enabled` or `disabled` (scheduling), and may be forced down when fenced.
//! `host evacuate` and `host drain` move every server off a host ([`jobs`]).

mod jobs;

use clap::{ArgGroup, Args, Subcommand};
use flotilla_proto::v1::{self, host_service_client::HostServiceClient};

use super::{all_pages, Ctx, Io};
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::views::host::{HostLongView, HostView};

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List all hosts (all pages).
    List {
        /// More columns (address, hypervisor, lease age, disabled reason).
        #[arg(long)]
        long: bool,
    },
    /// Show one host: state, scheduling status, capacity and usage, lease age, servers.
    Show {
        /// Host id or hostname.
        host: String,
    },
    /// Let the scheduler place new servers on a host again.
    Enable {
        /// Host id or hostname.
        host: String,
    },
    /// Keep the scheduler from placing new servers on a host; its servers keep running.
    Disable {
        /// Host id or hostname.
        host: String,
        /// Why (shown in `host show` and `host list --long`).
        #[arg(long, value_name = "REASON")]
        reason: String,
    },
    /// Mark a host as fenced (--force-down) or clear the mark (--no-force-down).
    Set(SetArgs),
    /// Move every server off a host: rebuild them elsewhere when the host is DOWN (local disk
    /// contents are lost), or with --live live-migrate them off a host that is UP.
    Evacuate(EvacuateArgs),
    /// Disable a host (reason "drain") and move every server off it: cold migration, or live
    /// migration of running servers with --live.
    Drain(DrainArgs),
}

#[derive(Debug, Args)]
pub struct EvacuateArgs {
    /// Host id or hostname.
    pub host: String,
    /// Only print where each server would go; start nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// How many servers move at the same time (default: the controller's).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// Live-migrate the running servers off a host that is UP (stopped ones are cold
    /// migrated) instead of rebuilding the servers of a DOWN host.
    #[arg(long)]
    pub live: bool,
    /// Move every server to this host, id or hostname (default: the scheduler picks per
    /// server).
    #[arg(long, value_name = "HOST")]
    pub target_host: Option<String>,
    /// Follow the job until it ends, then print each server's result; fail unless every
    /// server moved.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Host id or hostname.
    pub host: String,
    /// Live-migrate running servers instead of cold-migrating them.
    #[arg(long)]
    pub live: bool,
    /// How many servers move at the same time (default: the controller's).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// Only print where each server would go; change nothing (the host stays enabled).
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Follow the job until it ends, then print each server's result; fail unless every
    /// server moved.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("force").required(true).args(["force_down", "no_force_down"])
))]
pub struct SetArgs {
    /// Host id or hostname.
    pub host: String,
    /// The host is dead and fenced (powered off, cut off): revoke its lease and count it as
    /// down at once, so its servers can be evacuated. Only when it really cannot run them.
    #[arg(long)]
    pub force_down: bool,
    /// Clear the mark; the host is up again once its agent registers.
    #[arg(long)]
    pub no_force_down: bool,
}

pub async fn run(cmd: HostCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let host = match cmd {
        HostCmd::List { long } => return list(long, ctx, io).await,
        HostCmd::Evacuate(a) => {
            let request = v1::EvacuateHostRequest {
                request_id: new_request_id(),
                host: a.host.clone(),
                target_host: a.target_host.unwrap_or_default(),
                dry_run: a.dry_run,
                parallel: a.parallel.unwrap_or(0),
                live: a.live,
            };
            let response = conn
                .call(request, |ch, req| async move {
                    HostServiceClient::new(ch).evacuate_host(req).await
                })
                .await?;
            return jobs::report(ctx, io, &a.host, response, a.dry_run, a.wait).await;
        }
        HostCmd::Drain(a) => {
            let request = v1::DrainHostRequest {
                request_id: new_request_id(),
                host: a.host.clone(),
                live: a.live,
                parallel: a.parallel.unwrap_or(0),
                dry_run: a.dry_run,
            };
            let response = conn
                .call(request, |ch, req| async move {
                    HostServiceClient::new(ch).drain_host(req).await
                })
                .await?;
            return jobs::report(ctx, io, &a.host, response, a.dry_run, a.wait).await;
        }
        HostCmd::Show { host } => {
            let request = v1::GetHostRequest {
                host,
                stale: ctx.stale,
            };
            conn.call(request, |ch, req| async move {
                HostServiceClient::new(ch).get_host(req).await
            })
            .await?
        }
        HostCmd::Enable { host } => {
            let request = v1::EnableHostRequest {
                request_id: new_request_id(),
                host,
            };
            conn.call(request, |ch, req| async move {
                HostServiceClient::new(ch).enable_host(req).await
            })
            .await?
        }
        HostCmd::Disable { host, reason } => {
            let request = v1::DisableHostRequest {
                request_id: new_request_id(),
                host,
                reason,
            };
            conn.call(request, |ch, req| async move {
                HostServiceClient::new(ch).disable_host(req).await
            })
            .await?
        }
        HostCmd::Set(a) => {
            let request = v1::SetHostForceDownRequest {
                request_id: new_request_id(),
                host: a.host,
                forced_down: a.force_down,
            };
            conn.call(request, |ch, req| async move {
                HostServiceClient::new(ch).set_host_force_down(req).await
            })
            .await?
        }
    };
    io.print(&output::show(ctx.format, &HostView::from(host))?)
}

async fn list(long: bool, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    let stale = ctx.stale;
    let hosts = all_pages(|page_token| {
        let request = v1::ListHostsRequest {
            page_token,
            stale,
            ..Default::default()
        };
        async move {
            let page = conn
                .call(request, |ch, req| async move {
                    HostServiceClient::new(ch).list_hosts(req).await
                })
                .await?;
            Ok((page.hosts, page.next_page_token))
        }
    })
    .await?;
    let views = hosts.into_iter().map(HostView::from);
    let text = if long {
        output::list(ctx.format, &views.map(HostLongView).collect::<Vec<_>>())?
    } else {
        output::list(ctx.format, &views.collect::<Vec<_>>())?
    };
    io.print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<HostCmd, clap::Error> {
        let mut all = vec!["flotilla", "host"];
        all.extend(args);
        match Cli::try_parse_from(all)?.command {
            Command::Host(cmd) => Ok(cmd),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn disable_needs_a_reason() {
        let cmd = parse(&["disable", "cmp1", "--reason", "bad DIMM"]).unwrap();
        assert!(
            matches!(cmd, HostCmd::Disable { host, reason } if host == "cmp1" && reason == "bad DIMM")
        );
        assert_eq!(parse(&["disable", "cmp1"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn set_takes_exactly_one_of_force_down_and_no_force_down() {
        let HostCmd::Set(a) = parse(&["set", "--force-down", "cmp1"]).unwrap() else {
            panic!("set")
        };
        assert!(a.force_down && !a.no_force_down && a.host == "cmp1");
        let HostCmd::Set(a) = parse(&["set", "cmp1", "--no-force-down"]).unwrap() else {
            panic!("set")
        };
        assert!(!a.force_down && a.no_force_down);
        for bad in [
            &["set", "cmp1"][..],
            &["set", "cmp1", "--force-down", "--no-force-down"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn list_show_and_enable_parse() {
        assert!(matches!(
            parse(&["list", "--long"]).unwrap(),
            HostCmd::List { long: true }
        ));
        assert!(matches!(
            parse(&["list"]).unwrap(),
            HostCmd::List { long: false }
        ));
        assert!(
            matches!(parse(&["show", "h-1"]).unwrap(), HostCmd::Show { host } if host == "h-1")
        );
        assert!(
            matches!(parse(&["enable", "h-1"]).unwrap(), HostCmd::Enable { host } if host == "h-1")
        );
    }

    #[test]
    fn evacuate_takes_every_option() {
        let HostCmd::Evacuate(a) = parse(&[
            "evacuate",
            "cmp1",
            "--parallel",
            "4",
            "--live",
            "--target-host",
            "cmp2",
            "--wait",
        ])
        .unwrap() else {
            panic!("evacuate")
        };
        assert_eq!(a.host, "cmp1");
        assert_eq!(a.parallel, Some(4));
        assert_eq!(a.target_host.as_deref(), Some("cmp2"));
        assert!(a.live && a.wait && !a.dry_run);
        let HostCmd::Evacuate(a) = parse(&["evacuate", "cmp1", "--dry-run"]).unwrap() else {
            panic!("evacuate")
        };
        assert!(a.dry_run && !a.live && !a.wait);
        assert!(a.parallel.is_none() && a.target_host.is_none());
    }

    #[test]
    fn drain_takes_live_parallel_dry_run_and_wait() {
        let HostCmd::Drain(a) =
            parse(&["drain", "cmp1", "--live", "--parallel", "2", "--wait"]).unwrap()
        else {
            panic!("drain")
        };
        assert_eq!((a.host.as_str(), a.parallel), ("cmp1", Some(2)));
        assert!(a.live && a.wait && !a.dry_run);
        let HostCmd::Drain(a) = parse(&["drain", "--dry-run", "cmp1"]).unwrap() else {
            panic!("drain")
        };
        assert!(a.dry_run && !a.live && a.parallel.is_none());
    }

    #[test]
    fn bad_host_job_options_are_usage_errors() {
        for bad in [
            &["evacuate"][..],
            &["drain"],
            &["evacuate", "cmp1", "--parallel", "0"],
            &["evacuate", "cmp1", "--parallel", "many"],
            &["drain", "cmp1", "--parallel", "-1"],
            &["evacuate", "cmp1", "--dry-run", "--wait"],
            &["drain", "cmp1", "--dry-run", "--wait"],
            &["drain", "cmp1", "--target-host", "cmp2"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }
}

//! `flotilla host ...`: compute hosts as their agents registered them, served by HostService
//! (admins only). Words follow `openstack compute service` / `hypervisor`: hosts are `up` or
//! `down` (lease), `enabled` or `disabled` (scheduling), and may be forced down when fenced.

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
}

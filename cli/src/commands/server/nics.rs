//! Servers on networks from the command line: the NICs of `server create` (`--network`,
//! `--port`) and `server add|remove floating ip`, served by ServerService.
//!
//! `--network NET` asks for a new port on NET (deleted with the server); `--network
//! NET,fixed-ip=ADDR` for that address on it. `--port PORT` attaches an existing unused port of
//! the project (kept, unbound, when the server is deleted). Both repeat; the server's NICs are
//! the `--network` ones in the order given, then the `--port` ones in the order given.
use clap::{Args, Subcommand};
use flotilla_proto::v1::{self, server_service_client::ServerServiceClient};

use crate::client::new_request_id;
use crate::commands::{Ctx, Io};
use crate::error::CliError;
use crate::output;
use crate::views::network::FloatingIpView;

/// `NET` or `NET,fixed-ip=ADDR` (clap value parser of `--network`).
pub fn parse_network(value: &str) -> Result<v1::ServerNetworkRequest, String> {
    let mut parts = value.split(',');
    let network = parts.next().unwrap_or_default().trim();
    if network.is_empty() {
        return Err("expected NETWORK or NETWORK,fixed-ip=ADDRESS".into());
    }
    let mut fixed_ip = String::new();
    for option in parts {
        match option.split_once('=') {
            Some(("fixed-ip", ip)) if !ip.trim().is_empty() => fixed_ip = ip.trim().to_owned(),
            _ => {
                return Err(format!(
                    "unknown option {option:?}: expected NETWORK or NETWORK,fixed-ip=ADDRESS"
                ))
            }
        }
    }
    Ok(v1::ServerNetworkRequest {
        target: Some(v1::server_network_request::Target::Network(
            network.to_owned(),
        )),
        fixed_ip,
    })
}

/// The `networks` of a create: the `--network` NICs, then the `--port` ones.
pub fn nics(
    networks: Vec<v1::ServerNetworkRequest>,
    ports: Vec<String>,
) -> Vec<v1::ServerNetworkRequest> {
    networks
        .into_iter()
        .chain(ports.into_iter().map(|p| v1::ServerNetworkRequest {
            target: Some(v1::server_network_request::Target::Port(p)),
            fixed_ip: String::new(),
        }))
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum AddCmd {
    /// Floating IPs.
    #[command(subcommand)]
    Floating(AddFloatingCmd),
}

#[derive(Debug, Subcommand)]
pub enum AddFloatingCmd {
    /// Map a floating IP of the project to one of the server's fixed addresses.
    Ip(AddFloatingIpArgs),
}

#[derive(Debug, Args)]
pub struct AddFloatingIpArgs {
    /// Server id or name.
    pub server: String,
    /// Floating IP (address or id), allocated to the project beforehand (`floating ip create`).
    pub floating_ip: String,
    /// Which fixed address of the server (default: the first IPv4 address of its first port).
    #[arg(long, value_name = "ADDRESS")]
    pub fixed_ip_address: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RemoveCmd {
    /// Floating IPs.
    #[command(subcommand)]
    Floating(RemoveFloatingCmd),
}

#[derive(Debug, Subcommand)]
pub enum RemoveFloatingCmd {
    /// Unmap a floating IP from the server; it stays allocated to the project.
    Ip(RemoveFloatingIpArgs),
}

#[derive(Debug, Args)]
pub struct RemoveFloatingIpArgs {
    /// Server id or name.
    pub server: String,
    /// Floating IP (address or id).
    pub floating_ip: String,
}

pub async fn add(cmd: AddCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let AddCmd::Floating(AddFloatingCmd::Ip(a)) = cmd;
    let request = v1::AddFloatingIpRequest {
        request_id: new_request_id(),
        server: a.server,
        floating_ip: a.floating_ip,
        pool: String::new(),
        fixed_address: a.fixed_ip_address.unwrap_or_default(),
    };
    let f = ctx
        .conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).add_floating_ip(req).await
        })
        .await?;
    io.print(&output::show(ctx.format, &FloatingIpView::from(f))?)
}

pub async fn remove(cmd: RemoveCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let RemoveCmd::Floating(RemoveFloatingCmd::Ip(a)) = cmd;
    let request = v1::RemoveFloatingIpRequest {
        request_id: new_request_id(),
        server: a.server,
        floating_ip: a.floating_ip,
    };
    let f = ctx
        .conn
        .call(request, |ch, req| async move {
            ServerServiceClient::new(ch).remove_floating_ip(req).await
        })
        .await?;
    io.print(&output::show(ctx.format, &FloatingIpView::from(f))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_takes_an_optional_fixed_ip() {
        let plain = parse_network("net1").unwrap();
        assert_eq!(plain.fixed_ip, "");
        assert_eq!(
            plain.target,
            Some(v1::server_network_request::Target::Network("net1".into()))
        );
        let fixed = parse_network("net1,fixed-ip=10.0.0.7").unwrap();
        assert_eq!(fixed.fixed_ip, "10.0.0.7");
        assert!(parse_network("").is_err());
        assert!(parse_network("net1,v4=10.0.0.7").is_err());
        assert!(parse_network("net1,fixed-ip=").is_err());
    }

    #[test]
    fn networks_come_first_then_ports_in_the_order_given() {
        let all = nics(
            vec![parse_network("a").unwrap(), parse_network("b").unwrap()],
            vec!["p1".into()],
        );
        let targets: Vec<_> = all.into_iter().map(|n| n.target.unwrap()).collect();
        use v1::server_network_request::Target;
        assert_eq!(
            targets,
            [
                Target::Network("a".into()),
                Target::Network("b".into()),
                Target::Port("p1".into())
            ]
        );
    }
}

//! Command-line grammar: global options and the top-level subcommands. Each command group's
//! own arguments live next to its handler in `commands/`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::{
    auth::{LoginArgs, RoleCmd, TokenCmd},
    cluster::ClusterCmd,
    console::ConsoleCmd,
    event::EventCmd,
    flavor::FlavorCmd,
    host::HostCmd,
    image::ImageCmd,
    network::{FloatingCmd, NetworkCmd, PortCmd, SecurityCmd, SubnetCmd},
    operation::OperationCmd,
    project::ProjectCmd,
    quota::QuotaCmd,
    server::ServerCmd,
    user::UserCmd,
};

/// Operate a Flotilla cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after any subcommand. Precedence: flag > environment > config file.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Controller client addresses, comma-separated (e.g. 127.0.0.1:7001,127.0.0.1:7002).
    /// Without a scheme, https is used when a CA certificate is configured, else http.
    #[arg(long, global = true, env = "FLOTILLA_ENDPOINTS", value_name = "LIST")]
    pub endpoints: Option<String>,

    /// Bearer token sent with every request.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// PEM file with the CA certificate(s) that sign the controllers' certificates.
    #[arg(long, global = true, env = "FLOTILLA_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// PEM client certificate (optional, for mutual TLS).
    #[arg(long, global = true, env = "FLOTILLA_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long, global = true, env = "FLOTILLA_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Config file [default: $XDG_CONFIG_HOME/flotilla/config.toml or
    /// ~/.config/flotilla/config.toml, when it exists].
    #[arg(long, global = true, env = "FLOTILLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Output format.
    #[arg(short = 'f', long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Allow reads served from the answering controller's local state (no ReadIndex).
    #[arg(long, global = true)]
    pub stale: bool,

    /// Overall deadline of a command in seconds, retries included. Image uploads and downloads
    /// apply it to connecting and to each wait for data, not to the whole transfer.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "15",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Projects (tenants).
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Flavors: the sizes servers are created with.
    #[command(subcommand)]
    Flavor(FlavorCmd),
    /// Images: the base disks servers boot from.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Servers: virtual machines.
    #[command(subcommand)]
    Server(ServerCmd),
    /// A server's serial console.
    #[command(subcommand)]
    Console(ConsoleCmd),
    /// Compute hosts (admins only).
    #[command(subcommand)]
    Host(HostCmd),
    /// Networks: tenant VXLAN networks, and flat/VLAN provider networks (admins).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Subnets: address ranges of networks (CIDR, gateway, pools, DNS, DHCP).
    #[command(subcommand)]
    Subnet(SubnetCmd),
    /// Ports: a network attachment with a MAC and fixed addresses.
    #[command(subcommand)]
    Port(PortCmd),
    /// `floating ip ...`: addresses of external networks mapped to ports.
    #[command(subcommand)]
    Floating(FloatingCmd),
    /// `security group [rule] ...`: allow-lists of traffic applied to ports.
    #[command(subcommand)]
    Security(SecurityCmd),
    /// Durable operations: boots, reboots, rebuilds, backups, deletes... as they run.
    #[command(subcommand)]
    Operation(OperationCmd),
    /// The controllers themselves: status and membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The stream of committed changes.
    #[command(subcommand)]
    Event(EventCmd),
    /// Log in with a password and print a token (use it as --token or FLOTILLA_TOKEN, or
    /// --save it into the config file).
    Login(LoginArgs),
    /// Show who the current token belongs to.
    Whoami,
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// Role assignments: `admin` (cluster-wide), `member` and `reader` (per project).
    #[command(subcommand)]
    Role(RoleCmd),
    /// Quotas: per-project limits and the cluster-wide defaults (-1 = unlimited).
    #[command(subcommand)]
    Quota(QuotaCmd),
}

/// The global `--timeout`: seconds (fractions allowed), more than 0 and at most a day.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err("the timeout must be more than 0 and at most 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `KEY=VALUE` (the value may be empty, the key may not).
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "flotilla",
            "project",
            "list",
            "--endpoints",
            "a:1,b:2",
            "-f",
            "json",
            "--stale",
            "--timeout",
            "2.5",
        ])
        .expect("parses");
        assert_eq!(cli.global.endpoints.as_deref(), Some("a:1,b:2"));
        assert_eq!(cli.global.format, Format::Json);
        assert!(cli.global.stale);
        assert_eq!(cli.global.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn properties_need_a_key() {
        assert_eq!(parse_property("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_property("a="), Ok(("a".into(), String::new())));
        assert!(parse_property("=b").is_err());
        assert!(parse_property("ab").is_err());
    }

    #[test]
    fn bad_timeouts_are_usage_errors() {
        for bad in ["0", "-1", "abc", "inf"] {
            let err = Cli::try_parse_from(["flotilla", "--timeout", bad, "project", "list"])
                .expect_err(bad);
            assert_eq!(err.exit_code(), 2);
        }
    }
}

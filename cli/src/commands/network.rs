//! `flotilla network|subnet|port|floating ip|security group [rule] ...`: tenant networking,
//! served by NetworkService. Names follow the OpenStack client where it has one.

use clap::{Args, Subcommand};
use flotilla_proto::v1::{
    self, network_service_client::NetworkServiceClient, server_service_client::ServerServiceClient,
};

use super::{all_pages, for_each_name, Ctx, Io};
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output::{self, Tabular};
use crate::views::network::{
    FloatingIpView, NetworkView, PortView, RuleView, SecurityGroupView, SubnetView,
};
use Reply::{Done, Many, One};

/// Calls one NetworkService method (or, named first, another client's) with the connection's
/// retries.
macro_rules! rpc {
    ($client:ident: $conn:expr, $request:expr, $method:ident) => {
        $conn
            .call($request, |ch, req| async move {
                $client::new(ch).$method(req).await
            })
            .await?
    };
    ($conn:expr, $request:expr, $method:ident) => {
        rpc!(NetworkServiceClient: $conn, $request, $method)
    };
}

/// Lists every page of one NetworkService (or, named first, another client's) List method.
macro_rules! list_all {
    ($client:ident: $conn:expr, $base:expr, $method:ident, $field:ident) => {{
        let conn = $conn;
        let base = $base;
        all_pages(|page_token| {
            let mut request = base.clone();
            request.page_token = page_token;
            async move {
                let page = rpc!($client: conn, request, $method);
                Ok((page.$field, page.next_page_token))
            }
        })
        .await?
    }};
    ($conn:expr, $base:expr, $method:ident, $field:ident) => {
        list_all!(NetworkServiceClient: $conn, $base, $method, $field)
    };
}

/// Deletes each named resource with its own request id; then there is nothing to print.
macro_rules! delete_each {
    ($ctx:expr, $io:expr, $names:expr, $what:expr, $req:ident, $field:ident, $method:ident) => {{
        let conn = &$ctx.conn;
        for_each_name($names, $what, $io, |name| async move {
            let request = v1::$req {
                request_id: new_request_id(),
                $field: name,
            };
            rpc!(conn, request, $method);
            Ok(())
        })
        .await?;
        Done
    }};
}

/// What a command prints: one resource (create, show, set), a list of them, or nothing.
enum Reply<T> {
    One(T),
    Many(Vec<T>),
    Done,
}

impl<T> Reply<T> {
    /// Prints the resource, or the list, as `V`s in the chosen format.
    fn print<V: Tabular + From<T>>(self, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
        let text = match self {
            Reply::One(item) => output::show(ctx.format, &V::from(item))?,
            Reply::Many(items) => {
                let views: Vec<V> = items.into_iter().map(V::from).collect();
                output::list(ctx.format, &views)?
            }
            Reply::Done => return Ok(()),
        };
        io.print(&text)
    }
}

// ---- network ----------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network (a tenant VXLAN network unless --provider-network-type says otherwise).
    Create(NetworkCreateArgs),
    /// List networks: your project's, shared and external ones.
    List(NetworkListArgs),
    /// Show one network.
    Show {
        /// Network id or name.
        network: String,
    },
    /// Change a network; only the given fields change.
    Set(NetworkSetArgs),
    /// Delete networks (refused while they have ports); their subnets go with them.
    Delete {
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NetworkTypeArg {
    Vxlan,
    Flat,
    Vlan,
}

#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    pub name: String,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Admins only: flat or vlan (default vxlan).
    #[arg(long, value_name = "TYPE")]
    pub provider_network_type: Option<NetworkTypeArg>,
    /// Admins only: the host-side physical network of a flat or VLAN network.
    #[arg(long, value_name = "NAME")]
    pub provider_physical_network: Option<String>,
    /// Admins only: the VLAN id or VNI (default: a free VNI).
    #[arg(long, value_name = "ID")]
    pub provider_segment: Option<u32>,
    /// Admins only: floating IPs can be allocated from it.
    #[arg(long)]
    pub external: bool,
    /// Admins only: every project can attach ports to it.
    #[arg(long)]
    pub share: bool,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Create it administratively down.
    #[arg(long)]
    pub disable: bool,
    /// Admins only: the owner project (id or name).
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct NetworkListArgs {
    /// Admins only: every project's networks.
    #[arg(long)]
    pub all_projects: bool,
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Only external networks.
    #[arg(long, conflicts_with = "internal")]
    pub external: bool,
    /// Only non-external networks.
    #[arg(long)]
    pub internal: bool,
}

#[derive(Debug, Args)]
pub struct NetworkSetArgs {
    pub network: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    #[arg(long)]
    pub disable: bool,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Admins only.
    #[arg(long, conflicts_with = "no_share")]
    pub share: bool,
    /// Admins only.
    #[arg(long)]
    pub no_share: bool,
    /// Admins only.
    #[arg(long, conflicts_with = "internal")]
    pub external: bool,
    /// Admins only.
    #[arg(long)]
    pub internal: bool,
}

fn flag(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

pub async fn network(cmd: NetworkCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let (conn, stale) = (&ctx.conn, ctx.stale);
    let reply = match cmd {
        NetworkCmd::Create(a) => {
            let network_type = match a.provider_network_type {
                None => v1::NetworkType::Unspecified,
                Some(NetworkTypeArg::Vxlan) => v1::NetworkType::Vxlan,
                Some(NetworkTypeArg::Flat) => v1::NetworkType::Flat,
                Some(NetworkTypeArg::Vlan) => v1::NetworkType::Vlan,
            };
            let request = v1::CreateNetworkRequest {
                request_id: new_request_id(),
                name: a.name,
                description: a.description.unwrap_or_default(),
                network_type: network_type as i32,
                segmentation_id: a.provider_segment.unwrap_or(0),
                physical_network: a.provider_physical_network.unwrap_or_default(),
                external: a.external,
                shared: a.share,
                mtu: a.mtu,
                admin_state_up: a.disable.then_some(false),
                project: a.project.unwrap_or_default(),
            };
            One(rpc!(conn, request, create_network))
        }
        NetworkCmd::List(a) => {
            let base = v1::ListNetworksRequest {
                all_projects: a.all_projects,
                project: a.project.unwrap_or_default(),
                name: a.name.unwrap_or_default(),
                external: flag(a.external, a.internal),
                stale,
                ..Default::default()
            };
            Many(list_all!(conn, base, list_networks, networks))
        }
        NetworkCmd::Show { network } => One(rpc!(
            conn,
            v1::GetNetworkRequest { network, stale },
            get_network
        )),
        NetworkCmd::Set(a) => {
            let request = v1::UpdateNetworkRequest {
                request_id: new_request_id(),
                network: a.network,
                name: a.name,
                description: a.description,
                admin_state_up: flag(a.enable, a.disable),
                shared: flag(a.share, a.no_share),
                external: flag(a.external, a.internal),
                mtu: a.mtu,
            };
            One(rpc!(conn, request, update_network))
        }
        NetworkCmd::Delete { networks } => delete_each!(
            ctx,
            io,
            networks,
            "cannot delete network",
            DeleteNetworkRequest,
            network,
            delete_network
        ),
    };
    reply.print::<NetworkView>(ctx, io)
}

// ---- subnet -----------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum SubnetCmd {
    /// Create a subnet of a network.
    Create(SubnetCreateArgs),
    /// List subnets.
    List {
        /// Only the subnets of this network (id or name).
        #[arg(long)]
        network: Option<String>,
        /// Admins only.
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one subnet.
    Show { subnet: String },
    /// Change a subnet; only the given fields change.
    Set(SubnetSetArgs),
    /// Delete subnets (refused while addresses of them are allocated).
    Delete {
        #[arg(required = true, value_name = "SUBNET")]
        subnets: Vec<String>,
    },
}

/// `start=A,end=B`.
fn parse_pool(s: &str) -> Result<(String, String), String> {
    let mut start = None;
    let mut end = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("start", v)) => start = Some(v.to_string()),
            Some(("end", v)) => end = Some(v.to_string()),
            _ => return Err(format!("`{s}` is not start=ADDRESS,end=ADDRESS")),
        }
    }
    match (start, end) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("`{s}` is not start=ADDRESS,end=ADDRESS")),
    }
}

/// `subnet=S,ip-address=A` (either part may be left out).
fn parse_fixed_ip(s: &str) -> Result<(String, String), String> {
    let mut subnet = String::new();
    let mut ip = String::new();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("subnet", v)) => subnet = v.to_string(),
            Some(("ip-address", v)) => ip = v.to_string(),
            _ => return Err(format!("`{s}` is not subnet=SUBNET,ip-address=ADDRESS")),
        }
    }
    Ok((subnet, ip))
}

#[derive(Debug, Args)]
pub struct SubnetCreateArgs {
    pub name: String,
    /// The network (id or name).
    #[arg(long)]
    pub network: String,
    /// The CIDR, e.g. 10.0.0.0/24.
    #[arg(long, value_name = "CIDR")]
    pub subnet_range: String,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Default: the first usable address.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "no_gateway")]
    pub gateway: Option<String>,
    #[arg(long)]
    pub no_gateway: bool,
    /// start=ADDRESS,end=ADDRESS (repeatable); default: the whole range but the gateway.
    #[arg(long = "allocation-pool", value_parser = parse_pool, value_name = "start=A,end=B")]
    pub allocation_pools: Vec<(String, String)>,
    /// Repeatable.
    #[arg(long = "dns-nameserver", value_name = "ADDRESS")]
    pub dns_nameservers: Vec<String>,
    #[arg(long)]
    pub no_dhcp: bool,
}

#[derive(Debug, Args)]
pub struct SubnetSetArgs {
    pub subnet: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    #[arg(long, value_name = "ADDRESS", conflicts_with = "no_gateway")]
    pub gateway: Option<String>,
    #[arg(long)]
    pub no_gateway: bool,
    #[arg(long, conflicts_with = "no_dhcp")]
    pub dhcp: bool,
    #[arg(long)]
    pub no_dhcp: bool,
    /// Replaces the list (repeatable).
    #[arg(long = "dns-nameserver", value_name = "ADDRESS")]
    pub dns_nameservers: Vec<String>,
    /// Clears the list.
    #[arg(long, conflicts_with = "dns_nameservers")]
    pub no_dns_nameservers: bool,
}

pub async fn subnet(cmd: SubnetCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let (conn, stale) = (&ctx.conn, ctx.stale);
    let reply = match cmd {
        SubnetCmd::Create(a) => {
            let request = v1::CreateSubnetRequest {
                request_id: new_request_id(),
                network: a.network,
                name: a.name,
                description: a.description.unwrap_or_default(),
                cidr: a.subnet_range,
                gateway_ip: a.gateway.unwrap_or_default(),
                disable_gateway: a.no_gateway,
                allocation_pools: a
                    .allocation_pools
                    .into_iter()
                    .map(|(start, end)| v1::SubnetAllocationPool { start, end })
                    .collect(),
                dns_nameservers: a.dns_nameservers,
                enable_dhcp: a.no_dhcp.then_some(false),
                ..Default::default()
            };
            One(rpc!(conn, request, create_subnet))
        }
        SubnetCmd::List {
            network,
            all_projects,
        } => {
            let base = v1::ListSubnetsRequest {
                all_projects,
                network: network.unwrap_or_default(),
                stale,
                ..Default::default()
            };
            Many(list_all!(conn, base, list_subnets, subnets))
        }
        SubnetCmd::Show { subnet } => One(rpc!(
            conn,
            v1::GetSubnetRequest { subnet, stale },
            get_subnet
        )),
        SubnetCmd::Set(a) => {
            let dns = if a.no_dns_nameservers {
                Some(Vec::new())
            } else if a.dns_nameservers.is_empty() {
                None
            } else {
                Some(a.dns_nameservers)
            };
            let request = v1::UpdateSubnetRequest {
                request_id: new_request_id(),
                subnet: a.subnet,
                name: a.name,
                description: a.description,
                gateway_ip: if a.no_gateway {
                    Some(String::new())
                } else {
                    a.gateway
                },
                enable_dhcp: flag(a.dhcp, a.no_dhcp),
                dns_nameservers: dns.map(|nameservers| v1::SubnetDnsNameservers { nameservers }),
                host_routes: None,
            };
            One(rpc!(conn, request, update_subnet))
        }
        SubnetCmd::Delete { subnets } => delete_each!(
            ctx,
            io,
            subnets,
            "cannot delete subnet",
            DeleteSubnetRequest,
            subnet,
            delete_subnet
        ),
    };
    reply.print::<SubnetView>(ctx, io)
}

// ---- port -------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum PortCmd {
    /// Create a port on a network; addresses come from the network's subnets.
    Create(PortCreateArgs),
    /// List ports.
    List {
        #[arg(long)]
        network: Option<String>,
        /// The ports (NICs) of this server (id or name), in NIC order.
        #[arg(long, value_name = "SERVER",
              conflicts_with_all = ["network", "device_owner", "all_projects", "project"])]
        server: Option<String>,
        #[arg(long)]
        device_owner: Option<String>,
        /// Admins only.
        #[arg(long)]
        all_projects: bool,
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one port.
    Show { port: String },
    /// Change a port; only the given fields change.
    Set(PortSetArgs),
    /// Delete ports (refused for a server's ports).
    Delete {
        #[arg(required = true, value_name = "PORT")]
        ports: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PortCreateArgs {
    pub name: String,
    #[arg(long)]
    pub network: String,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// subnet=SUBNET,ip-address=ADDRESS (repeatable; either part optional).
    #[arg(long = "fixed-ip", value_parser = parse_fixed_ip, value_name = "subnet=S,ip-address=A")]
    pub fixed_ips: Vec<(String, String)>,
    #[arg(long, value_name = "MAC")]
    pub mac_address: Option<String>,
    /// Repeatable; default: the project's `default` group.
    #[arg(long = "security-group", value_name = "GROUP")]
    pub security_groups: Vec<String>,
    /// No security groups and no anti-spoofing on this port.
    #[arg(long, conflicts_with = "security_groups")]
    pub disable_port_security: bool,
    /// Create it administratively down.
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct PortSetArgs {
    pub port: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    #[arg(long)]
    pub disable: bool,
    /// Replaces the port's groups (repeatable).
    #[arg(long = "security-group", value_name = "GROUP")]
    pub security_groups: Vec<String>,
    /// Removes every group.
    #[arg(long, conflicts_with = "security_groups")]
    pub no_security_group: bool,
    #[arg(long, conflicts_with = "disable_port_security")]
    pub enable_port_security: bool,
    #[arg(long)]
    pub disable_port_security: bool,
}

pub async fn port(cmd: PortCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let (conn, stale) = (&ctx.conn, ctx.stale);
    let reply = match cmd {
        PortCmd::Create(a) => {
            let request = v1::CreatePortRequest {
                request_id: new_request_id(),
                network: a.network,
                name: a.name,
                description: a.description.unwrap_or_default(),
                mac_address: a.mac_address.unwrap_or_default(),
                fixed_ips: a
                    .fixed_ips
                    .into_iter()
                    .map(|(subnet_id, ip_address)| v1::PortFixedIp {
                        subnet_id,
                        ip_address,
                    })
                    .collect(),
                security_groups: a.security_groups,
                port_security_enabled: a.disable_port_security.then_some(false),
                admin_state_up: a.disable.then_some(false),
            };
            One(rpc!(conn, request, create_port))
        }
        PortCmd::List {
            network,
            server,
            device_owner,
            all_projects,
            project,
        } => {
            if let Some(server) = server {
                let base = v1::ListServerPortsRequest {
                    server,
                    stale,
                    ..Default::default()
                };
                Many(list_all!(ServerServiceClient: conn, base, list_server_ports, ports))
            } else {
                let base = v1::ListPortsRequest {
                    all_projects,
                    network: network.unwrap_or_default(),
                    project: project.unwrap_or_default(),
                    device_owner: device_owner.unwrap_or_default(),
                    stale,
                    ..Default::default()
                };
                Many(list_all!(conn, base, list_ports, ports))
            }
        }
        PortCmd::Show { port } => One(rpc!(conn, v1::GetPortRequest { port, stale }, get_port)),
        PortCmd::Set(a) => {
            let groups = if a.no_security_group || a.disable_port_security {
                Some(Vec::new())
            } else if a.security_groups.is_empty() {
                None
            } else {
                Some(a.security_groups)
            };
            let request = v1::UpdatePortRequest {
                request_id: new_request_id(),
                port: a.port,
                name: a.name,
                description: a.description,
                admin_state_up: flag(a.enable, a.disable),
                port_security_enabled: flag(a.enable_port_security, a.disable_port_security),
                security_groups: groups
                    .map(|security_groups| v1::PortSecurityGroups { security_groups }),
            };
            One(rpc!(conn, request, update_port))
        }
        PortCmd::Delete { ports } => delete_each!(
            ctx,
            io,
            ports,
            "cannot delete port",
            DeletePortRequest,
            port,
            delete_port
        ),
    };
    reply.print::<PortView>(ctx, io)
}

// ---- floating ip ------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum FloatingCmd {
    /// Floating IPs: addresses of an external network mapped to a port.
    #[command(subcommand)]
    Ip(FloatingIpCmd),
}

#[derive(Debug, Subcommand)]
pub enum FloatingIpCmd {
    /// Allocate an address of an external network to your project.
    Create(FloatingIpCreateArgs),
    /// List floating IPs.
    List {
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        port: Option<String>,
        /// Admins only.
        #[arg(long)]
        all_projects: bool,
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one floating IP (id or address).
    Show { floating_ip: String },
    /// Associate with a port (moving it if associated) or change the description.
    Set {
        floating_ip: String,
        #[arg(long)]
        port: Option<String>,
        /// Which address of the port (default: its first IPv4 address).
        #[arg(long, value_name = "ADDRESS", requires = "port")]
        fixed_ip_address: Option<String>,
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Disassociate from its port (the address stays allocated).
    Unset {
        floating_ip: String,
        #[arg(long, required = true)]
        port: bool,
    },
    /// Release floating IPs.
    Delete {
        #[arg(required = true, value_name = "FLOATING_IP")]
        floating_ips: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct FloatingIpCreateArgs {
    /// The external network (id or name).
    pub network: String,
    /// Admins only: this address.
    #[arg(long, value_name = "ADDRESS")]
    pub floating_ip_address: Option<String>,
    /// Associate with this port right away.
    #[arg(long)]
    pub port: Option<String>,
    #[arg(long, value_name = "ADDRESS", requires = "port")]
    pub fixed_ip_address: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

pub async fn floating(cmd: FloatingCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let FloatingCmd::Ip(cmd) = cmd;
    let (conn, stale) = (&ctx.conn, ctx.stale);
    let reply = match cmd {
        FloatingIpCmd::Create(a) => {
            let request = v1::CreateFloatingIpRequest {
                request_id: new_request_id(),
                floating_network: a.network,
                floating_ip_address: a.floating_ip_address.unwrap_or_default(),
                port: a.port.unwrap_or_default(),
                fixed_ip_address: a.fixed_ip_address.unwrap_or_default(),
                description: a.description.unwrap_or_default(),
            };
            One(rpc!(conn, request, create_floating_ip))
        }
        FloatingIpCmd::List {
            network,
            port,
            all_projects,
            project,
        } => {
            let base = v1::ListFloatingIpsRequest {
                all_projects,
                project: project.unwrap_or_default(),
                floating_network: network.unwrap_or_default(),
                port: port.unwrap_or_default(),
                stale,
                ..Default::default()
            };
            Many(list_all!(conn, base, list_floating_ips, floating_ips))
        }
        FloatingIpCmd::Show { floating_ip } => One(rpc!(
            conn,
            v1::GetFloatingIpRequest { floating_ip, stale },
            get_floating_ip
        )),
        FloatingIpCmd::Set {
            floating_ip,
            port,
            fixed_ip_address,
            description,
        } => {
            if port.is_none() && description.is_none() {
                return Err(CliError::Invalid(
                    "nothing to change: give --port and/or --description".into(),
                ));
            }
            let mut last = None;
            if description.is_some() {
                let request = v1::UpdateFloatingIpRequest {
                    request_id: new_request_id(),
                    floating_ip: floating_ip.clone(),
                    description,
                };
                last = Some(rpc!(conn, request, update_floating_ip));
            }
            if let Some(port) = port {
                let request = v1::AssociateFloatingIpRequest {
                    request_id: new_request_id(),
                    floating_ip,
                    port,
                    fixed_ip_address: fixed_ip_address.unwrap_or_default(),
                };
                last = Some(rpc!(conn, request, associate_floating_ip));
            }
            match last {
                Some(f) => One(f),
                None => Done,
            }
        }
        FloatingIpCmd::Unset { floating_ip, .. } => {
            let request = v1::DisassociateFloatingIpRequest {
                request_id: new_request_id(),
                floating_ip,
            };
            One(rpc!(conn, request, disassociate_floating_ip))
        }
        FloatingIpCmd::Delete { floating_ips } => delete_each!(
            ctx,
            io,
            floating_ips,
            "cannot delete floating IP",
            DeleteFloatingIpRequest,
            floating_ip,
            delete_floating_ip
        ),
    };
    reply.print::<FloatingIpView>(ctx, io)
}

// ---- security group [rule] --------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum SecurityCmd {
    /// Security groups: allow-lists of traffic applied to ports.
    #[command(subcommand)]
    Group(SecurityGroupCmd),
}

#[derive(Debug, Subcommand)]
pub enum SecurityGroupCmd {
    /// Create a group (it starts with rules allowing all egress).
    Create {
        name: String,
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List groups.
    List {
        /// Admins only.
        #[arg(long)]
        all_projects: bool,
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one group with its rules.
    Show { group: String },
    /// Rename a group or change its description.
    Set {
        group: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Delete groups (refused while ports use them; `default` cannot be deleted).
    Delete {
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Rules of security groups.
    #[command(subcommand)]
    Rule(RuleCmd),
}

#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Add a rule to a group.
    Create(RuleCreateArgs),
    /// List rules (of one group, or of your project).
    List {
        group: Option<String>,
        #[arg(long, conflicts_with = "egress")]
        ingress: bool,
        #[arg(long)]
        egress: bool,
    },
    /// Show one rule.
    Show { rule: String },
    /// Delete rules.
    Delete {
        #[arg(required = true, value_name = "RULE")]
        rules: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct RuleCreateArgs {
    /// The group (id or name).
    pub group: String,
    /// Traffic into the server (the default).
    #[arg(long, conflicts_with = "egress")]
    pub ingress: bool,
    /// Traffic out of the server.
    #[arg(long)]
    pub egress: bool,
    /// IPv4 (default) or IPv6.
    #[arg(long, value_name = "IPv4|IPv6", default_value = "IPv4")]
    pub ethertype: String,
    /// tcp, udp, icmp, icmpv6, a number, or any (default).
    #[arg(long, value_name = "PROTO")]
    pub protocol: Option<String>,
    /// PORT or FIRST:LAST (tcp, udp).
    #[arg(long, value_name = "PORT[:PORT]", value_parser = parse_port_range)]
    pub dst_port: Option<(u32, u32)>,
    #[arg(long, value_name = "TYPE", conflicts_with = "dst_port")]
    pub icmp_type: Option<u32>,
    #[arg(long, value_name = "CODE", requires = "icmp_type")]
    pub icmp_code: Option<u32>,
    /// Peer addresses (CIDR).
    #[arg(long, value_name = "CIDR", conflicts_with = "remote_group")]
    pub remote_ip: Option<String>,
    /// Peer group (id or name).
    #[arg(long, value_name = "GROUP")]
    pub remote_group: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// `22` or `8000:8080`.
fn parse_port_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not PORT or FIRST:LAST");
    match s.split_once(':') {
        Some((a, b)) => Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)),
        None => {
            let p = s.parse().map_err(|_| bad())?;
            Ok((p, p))
        }
    }
}

fn direction(ingress: bool, egress: bool) -> v1::SecurityGroupRuleDirection {
    match (ingress, egress) {
        (_, true) => v1::SecurityGroupRuleDirection::Egress,
        (true, _) => v1::SecurityGroupRuleDirection::Ingress,
        _ => v1::SecurityGroupRuleDirection::Unspecified,
    }
}

pub async fn security(cmd: SecurityCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let SecurityCmd::Group(cmd) = cmd;
    let (conn, stale) = (&ctx.conn, ctx.stale);
    let reply = match cmd {
        SecurityGroupCmd::Create { name, description } => {
            let request = v1::CreateSecurityGroupRequest {
                request_id: new_request_id(),
                name,
                description: description.unwrap_or_default(),
            };
            One(rpc!(conn, request, create_security_group))
        }
        SecurityGroupCmd::List {
            all_projects,
            project,
        } => {
            let base = v1::ListSecurityGroupsRequest {
                all_projects,
                project: project.unwrap_or_default(),
                stale,
                ..Default::default()
            };
            Many(list_all!(conn, base, list_security_groups, security_groups))
        }
        SecurityGroupCmd::Show { group } => One(rpc!(
            conn,
            v1::GetSecurityGroupRequest {
                security_group: group,
                stale
            },
            get_security_group
        )),
        SecurityGroupCmd::Set {
            group,
            name,
            description,
        } => {
            let request = v1::UpdateSecurityGroupRequest {
                request_id: new_request_id(),
                security_group: group,
                name,
                description,
            };
            One(rpc!(conn, request, update_security_group))
        }
        SecurityGroupCmd::Delete { groups } => delete_each!(
            ctx,
            io,
            groups,
            "cannot delete security group",
            DeleteSecurityGroupRequest,
            security_group,
            delete_security_group
        ),
        SecurityGroupCmd::Rule(cmd) => return rule(cmd, ctx, io).await,
    };
    reply.print::<SecurityGroupView>(ctx, io)
}

async fn rule(cmd: RuleCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let (conn, stale) = (&ctx.conn, ctx.stale);
    let reply = match cmd {
        RuleCmd::Create(a) => {
            let ethertype = match a.ethertype.to_ascii_lowercase().as_str() {
                "ipv4" => v1::SecurityGroupRuleEthertype::Ipv4,
                "ipv6" => v1::SecurityGroupRuleEthertype::Ipv6,
                other => {
                    return Err(CliError::Invalid(format!(
                        "--ethertype {other}: use IPv4 or IPv6"
                    )))
                }
            };
            let (min, max) = match (a.dst_port, a.icmp_type) {
                (Some((lo, hi)), _) => (Some(lo), Some(hi)),
                (None, Some(t)) => (Some(t), a.icmp_code),
                (None, None) => (None, None),
            };
            let dir = match direction(a.ingress, a.egress) {
                v1::SecurityGroupRuleDirection::Unspecified => {
                    v1::SecurityGroupRuleDirection::Ingress
                }
                d => d,
            };
            let request = v1::CreateSecurityGroupRuleRequest {
                request_id: new_request_id(),
                security_group: a.group,
                direction: dir as i32,
                ethertype: ethertype as i32,
                protocol: a.protocol.unwrap_or_default(),
                port_range_min: min,
                port_range_max: max,
                remote_ip_prefix: a.remote_ip.unwrap_or_default(),
                remote_group: a.remote_group.unwrap_or_default(),
                description: a.description.unwrap_or_default(),
            };
            One(rpc!(conn, request, create_security_group_rule))
        }
        RuleCmd::List {
            group,
            ingress,
            egress,
        } => {
            let base = v1::ListSecurityGroupRulesRequest {
                security_group: group.unwrap_or_default(),
                direction: direction(ingress, egress) as i32,
                stale,
                ..Default::default()
            };
            Many(list_all!(conn, base, list_security_group_rules, rules))
        }
        RuleCmd::Show { rule } => One(rpc!(
            conn,
            v1::GetSecurityGroupRuleRequest { rule, stale },
            get_security_group_rule
        )),
        RuleCmd::Delete { rules } => delete_each!(
            ctx,
            io,
            rules,
            "cannot delete security group rule",
            DeleteSecurityGroupRuleRequest,
            rule,
            delete_security_group_rule
        ),
    };
    reply.print::<RuleView>(ctx, io)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut all = vec!["flotilla"];
        all.extend(args);
        Cli::try_parse_from(all).map(|c| c.command)
    }

    #[test]
    fn subnet_create_takes_pools_dns_and_no_gateway() {
        let Command::Subnet(SubnetCmd::Create(a)) = parse(&[
            "subnet",
            "create",
            "s1",
            "--network",
            "n1",
            "--subnet-range",
            "10.0.0.0/24",
            "--allocation-pool",
            "start=10.0.0.10,end=10.0.0.20",
            "--dns-nameserver",
            "10.0.0.53",
            "--no-gateway",
        ])
        .unwrap() else {
            panic!("subnet create")
        };
        assert_eq!(
            a.allocation_pools,
            [("10.0.0.10".to_string(), "10.0.0.20".to_string())]
        );
        assert!(a.no_gateway && a.gateway.is_none());
        assert_eq!(a.dns_nameservers, ["10.0.0.53"]);
        assert!(parse(&[
            "subnet",
            "create",
            "s1",
            "--network",
            "n1",
            "--subnet-range",
            "10.0.0.0/24",
            "--allocation-pool",
            "10.0.0.10-10.0.0.20",
        ])
        .is_err());
    }

    #[test]
    fn port_fixed_ips_and_floating_ip_and_rule_grammar() {
        let Command::Port(PortCmd::Create(a)) = parse(&[
            "port",
            "create",
            "p1",
            "--network",
            "n1",
            "--fixed-ip",
            "subnet=s1,ip-address=10.0.0.5",
            "--fixed-ip",
            "subnet=s2",
        ])
        .unwrap() else {
            panic!("port create")
        };
        assert_eq!(
            a.fixed_ips,
            [
                ("s1".to_string(), "10.0.0.5".to_string()),
                ("s2".to_string(), String::new())
            ]
        );
        let Command::Floating(FloatingCmd::Ip(FloatingIpCmd::Set { port, .. })) =
            parse(&["floating", "ip", "set", "203.0.113.5", "--port", "p1"]).unwrap()
        else {
            panic!("floating ip set")
        };
        assert_eq!(port.as_deref(), Some("p1"));
        let Command::Security(SecurityCmd::Group(SecurityGroupCmd::Rule(RuleCmd::Create(r)))) =
            parse(&[
                "security",
                "group",
                "rule",
                "create",
                "web",
                "--protocol",
                "tcp",
                "--dst-port",
                "8000:8080",
                "--remote-ip",
                "192.0.2.0/24",
            ])
            .unwrap()
        else {
            panic!("security group rule create")
        };
        assert_eq!(r.dst_port, Some((8000, 8080)));
        assert!(parse(&[
            "security",
            "group",
            "rule",
            "create",
            "web",
            "--remote-ip",
            "0.0.0.0/0",
            "--remote-group",
            "web",
        ])
        .is_err());
    }
}

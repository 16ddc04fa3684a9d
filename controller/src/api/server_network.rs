//! Servers on networks, the API side: the NICs of a create (networks and ports resolved and
//! checked here, created or bound in apply), floating IPs on servers and a server's ports.
//!
//! Who may attach what: a project's own networks and shared networks; external networks only
//! for admins (others reach a server from outside with a floating IP); only the project's own
//! unused ports. Another project's private network or port is not found.
use flotilla_proto::v1 as pb;
use tonic::Status;

use super::authz::{Action, Principal};
use super::network_access::{find_floating_ip, find_network, find_port};
use super::servers::{resolve, ServerApi};
use super::{allow, new_id, page_size, paginate, Api};
use crate::state::{
    Command, FloatingIp, NetCommand, NetOutcome, NicSpec, Outcome, Port, Server, State,
    COMPUTE_OWNER,
};

/// A NIC asked for, resolved: the port ids of new ports are stamped per server.
#[derive(Debug, Clone)]
pub(super) enum NicTemplate {
    Network {
        network_id: String,
        fixed_ip: String,
    },
    Port {
        port_id: String,
    },
}

/// Resolves and checks the `networks` of a create of `count` servers in `project_id`.
pub(super) fn nic_templates(
    state: &State,
    p: &Principal,
    project_id: &str,
    requests: &[pb::ServerNetworkRequest],
    count: u32,
) -> Result<Vec<NicTemplate>, Status> {
    use pb::server_network_request::Target;
    let mut out = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let nth = i + 1;
        match &r.target {
            None => {
                return Err(Status::invalid_argument(format!(
                    "network request {nth} names neither a network nor a port"
                )))
            }
            Some(Target::Network(key)) => {
                let n = find_network(state, p, key)?;
                if n.external && !p.admin {
                    return Err(Status::permission_denied(format!(
                        "permission denied: network {:?} is external; servers are attached to \
                         external networks by the cluster admin only. Attach a tenant network \
                         and add a floating IP (`flotilla server add floating ip`)",
                        n.name
                    )));
                }
                if n.project_id != project_id && !n.shared && !p.admin {
                    return Err(Status::not_found(format!("network {key:?} not found")));
                }
                if !r.fixed_ip.is_empty() {
                    if r.fixed_ip.parse::<std::net::IpAddr>().is_err() {
                        return Err(Status::invalid_argument(format!(
                            "fixed IP {:?} of network {:?} is not an IP address",
                            r.fixed_ip, n.name
                        )));
                    }
                    if count > 1 {
                        return Err(Status::invalid_argument(format!(
                            "fixed IP {} cannot be given to {count} servers; create them one at \
                             a time",
                            r.fixed_ip
                        )));
                    }
                }
                out.push(NicTemplate::Network {
                    network_id: n.id.clone(),
                    fixed_ip: r.fixed_ip.clone(),
                });
            }
            Some(Target::Port(key)) => {
                if !r.fixed_ip.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "a fixed IP goes with a network, not with port {key:?} (the port has \
                         its addresses)"
                    )));
                }
                if count > 1 {
                    return Err(Status::invalid_argument(format!(
                        "port {key:?} can be the NIC of one server only; a create of {count} \
                         servers takes networks, not ports"
                    )));
                }
                let port = find_port(state, p, key)?;
                if port.project_id != project_id {
                    return Err(Status::not_found(format!("port {key:?} not found")));
                }
                if let Some(user) = in_use(state, port) {
                    return Err(Status::failed_precondition(format!(
                        "port {key:?} is in use by {user}; a port can be the NIC of one server \
                         only"
                    )));
                }
                out.push(NicTemplate::Port {
                    port_id: port.id.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Who uses a port, when something does.
fn in_use(state: &State, port: &Port) -> Option<String> {
    if port.device_id.is_empty() && port.device_owner.is_empty() {
        return None;
    }
    Some(match state.port_server(port) {
        Some(s) => format!("server {} ({})", s.id, s.name),
        None if port.device_owner.starts_with(COMPUTE_OWNER) => {
            format!("server {}", port.device_id)
        }
        None => format!("{} {}", port.device_owner, port.device_id),
    })
}

/// The NICs of one server of the create, with fresh ids for its new ports.
pub(super) fn stamp(templates: &[NicTemplate]) -> Vec<NicSpec> {
    templates
        .iter()
        .map(|t| match t {
            NicTemplate::Network {
                network_id,
                fixed_ip,
            } => NicSpec::Network {
                port_id: new_id(),
                network_id: network_id.clone(),
                fixed_ip: fixed_ip.clone(),
            },
            NicTemplate::Port { port_id } => NicSpec::Port {
                port_id: port_id.clone(),
            },
        })
        .collect()
}

/// A server the caller may change (members of its project, admins; a locked one admins only).
fn writable<'s>(state: &'s State, p: &Principal, key: &str) -> Result<&'s Server, Status> {
    let s = resolve(state, p, key)?;
    let project = state
        .project(&s.project_id)
        .ok_or_else(|| Status::internal("server without project"))?;
    allow(p, Action::WriteProject, Some(project))?;
    if s.locked && !p.admin {
        return Err(Status::failed_precondition(format!(
            "server {:?} is locked; unlock it first",
            s.name
        )));
    }
    Ok(s)
}

fn net_reply(api: &Api, out: Outcome) -> Result<pb::FloatingIp, Status> {
    match out {
        Outcome::Net(o) => match *o {
            NetOutcome::FloatingIp(f) => {
                let state = api.node.state();
                let now = state.floating_ip(&f.id).unwrap_or(&f);
                Ok(super::network_convert::floating_ip(&state, now))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        },
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The port and fixed address a floating IP should map to on `s`.
fn target(state: &State, s: &Server, fixed: &str) -> Result<(String, String), Status> {
    let ports: Vec<&Port> = state.server_ports(s).collect();
    if ports.is_empty() {
        return Err(Status::failed_precondition(format!(
            "server {:?} has no ports; floating IPs map to a server's port (create the server \
             with --network or --port)",
            s.name
        )));
    }
    let v4 = |ip: &str| ip.parse::<std::net::Ipv4Addr>().is_ok();
    if fixed.is_empty() {
        return ports
            .iter()
            .find_map(|p| {
                p.fixed_ips
                    .iter()
                    .find(|f| v4(&f.ip_address))
                    .map(|f| (p.id.clone(), f.ip_address.clone()))
            })
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "server {:?} has no IPv4 address a floating IP could map to",
                    s.name
                ))
            });
    }
    ports
        .iter()
        .find_map(|p| {
            p.fixed_ips
                .iter()
                .find(|f| f.ip_address == fixed && v4(&f.ip_address))
                .map(|f| (p.id.clone(), f.ip_address.clone()))
        })
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{fixed} is not an IPv4 address of server {:?}",
                s.name
            ))
        })
}

impl ServerApi {
    pub(super) async fn add_floating_ip_to(
        &self,
        p: Principal,
        r: pb::AddFloatingIpRequest,
    ) -> Result<pb::FloatingIp, Status> {
        let cmd = {
            let state = self.api.read(false).await?;
            let s = writable(&state, &p, &r.server)?;
            let (port_id, fixed) = target(&state, s, &r.fixed_address)?;
            if r.floating_ip.is_empty() {
                let network_id = if r.pool.is_empty() {
                    let external: Vec<_> =
                        state.networks_after("").filter(|n| n.external).collect();
                    match external.as_slice() {
                        [one] => one.id.clone(),
                        [] => {
                            return Err(Status::failed_precondition(
                                "there is no external network to allocate a floating IP from",
                            ))
                        }
                        _ => {
                            return Err(Status::invalid_argument(
                                "there are several external networks; name the pool to \
                                 allocate the floating IP from",
                            ))
                        }
                    }
                } else {
                    let n = find_network(&state, &p, &r.pool)?;
                    if !n.external {
                        return Err(Status::invalid_argument(format!(
                            "network {:?} is not external; floating IPs come from external \
                             networks",
                            n.name
                        )));
                    }
                    n.id.clone()
                };
                NetCommand::CreateFloatingIp {
                    id: new_id(),
                    network_id,
                    project_id: s.project_id.clone(),
                    address: String::new(),
                    port_id,
                    fixed_ip_address: fixed,
                    description: String::new(),
                }
            } else {
                if !r.pool.is_empty() {
                    return Err(Status::invalid_argument(
                        "give either a floating IP or a pool to allocate one from, not both",
                    ));
                }
                let f = find_floating_ip(&state, &p, &r.floating_ip)?;
                if f.project_id != s.project_id {
                    return Err(Status::failed_precondition(format!(
                        "floating IP {} belongs to another project than server {:?}",
                        f.address, s.name
                    )));
                }
                if !f.port_id.is_empty() && f.port_id != port_id {
                    return Err(Status::failed_precondition(format!(
                        "floating IP {} is already associated with {}; remove it there first",
                        f.address,
                        holder(&state, f)
                    )));
                }
                NetCommand::AssociateFloatingIp {
                    floating_ip_id: f.id.clone(),
                    port_id,
                    fixed_ip_address: fixed,
                }
            }
        };
        let out = self
            .api
            .propose(r.request_id, p.name, Command::Networking(cmd))
            .await?;
        net_reply(&self.api, out)
    }

    pub(super) async fn remove_floating_ip_from(
        &self,
        p: Principal,
        r: pb::RemoveFloatingIpRequest,
    ) -> Result<pb::FloatingIp, Status> {
        let floating_ip_id = {
            let state = self.api.read(false).await?;
            let s = writable(&state, &p, &r.server)?;
            let f = find_floating_ip(&state, &p, &r.floating_ip)?;
            let on_server = state
                .port(&f.port_id)
                .and_then(|port| state.port_server(port))
                .is_some_and(|x| x.id == s.id);
            if !on_server {
                return Err(Status::failed_precondition(format!(
                    "floating IP {} is not associated with server {:?}",
                    f.address, s.name
                )));
            }
            f.id.clone()
        };
        let cmd = Command::Networking(NetCommand::DisassociateFloatingIp { floating_ip_id });
        let out = self.api.propose(r.request_id, p.name, cmd).await?;
        net_reply(&self.api, out)
    }

    pub(super) async fn server_ports(
        &self,
        p: Principal,
        r: pb::ListServerPortsRequest,
    ) -> Result<pb::ListPortsResponse, Status> {
        let state = self.api.read(r.stale).await?;
        let s = resolve(&state, &p, &r.server)?;
        let mut ports = state.server_ports(s).peekable();
        if !r.page_token.is_empty() {
            // NIC order; the token is the last port id of the previous page.
            for port in ports.by_ref() {
                if port.id == r.page_token {
                    break;
                }
            }
        }
        let (page, next) = paginate(ports, page_size(r.page_size), |x| x.id.clone());
        Ok(pb::ListPortsResponse {
            ports: page
                .into_iter()
                .map(|x| super::network_convert::port(&state, x))
                .collect(),
            next_page_token: next,
        })
    }
}

/// What a floating IP is associated with, for messages.
fn holder(state: &State, f: &FloatingIp) -> String {
    match state.port(&f.port_id).and_then(|p| state.port_server(p)) {
        Some(s) => format!("server {:?} (port {})", s.name, f.port_id),
        None => format!("port {}", f.port_id),
    }
}

//! Servers on networks: a server's NICs are ports (I3). Creating servers with NICs creates
//! their new ports (IPAM, the port quota, the project's `default` security group) or binds the
//! existing ports they name in the same apply that admits the servers, all or nothing. A port
//! created for a server is deleted with it; a port the user brought is unbound and kept.
//!
//! Where a port is bound is not stored: its host is its server's owner host, so it follows live
//! and cold migration and evacuation by construction. Whether it is wired is what the owner
//! host's agent last reported ([`Command::PortsWired`]): a port is ACTIVE while its owner host
//! is up and lists it, DOWN otherwise (also right after its server moved, until the new owner
//! reports it).
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::hosts::Host;
use super::networks::{change, FloatingIp, Port, PortSpec};
use super::servers::Server;
use super::{Command, Envelope, EventAction, Outcome, Rejection, State};

type Applied = Result<(Outcome, Option<super::Change<'static>>), Rejection>;

/// What the device owner of a server's port starts with (then the host's zone).
pub const COMPUTE_OWNER: &str = "compute:";

/// One NIC asked for in a create, in the guest's interface order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NicSpec {
    /// A new port on `network_id` (the proposer stamps its id), optionally at `fixed_ip`;
    /// deleted with the server.
    Network {
        port_id: String,
        network_id: String,
        /// Empty = IPAM picks (one address per IP version, as a plain port create).
        fixed_ip: String,
    },
    /// An existing unused port of the server's project; unbound (kept) when the server goes.
    Port { port_id: String },
}

/// One NIC of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub port_id: String,
    /// The port was created for the server (and is deleted with it).
    pub delete_with_server: bool,
}

impl State {
    /// Creates or binds the NICs of the servers of one create (`nics[i]` for `servers[i]`).
    /// On a rejection nothing of it stays: the caller restores the networking state.
    pub(super) fn attach_nics(
        &mut self,
        revision: u64,
        t: i64,
        servers: &[(String, String, String)],
        nics: &[Vec<NicSpec>],
        default_group_ids: &[String],
    ) -> Result<Vec<Vec<Nic>>, Rejection> {
        if nics.len() != servers.len() {
            return Err(Rejection::Invalid(
                "internal: one NIC list per server is needed".into(),
            ));
        }
        let mut bound: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        for ((server_id, project_id, host_id), specs) in servers.iter().zip(nics) {
            let zone = self
                .hosts
                .get(host_id)
                .map(|h| h.info.availability_zone.clone())
                .unwrap_or_default();
            let owner = format!("{COMPUTE_OWNER}{zone}");
            let mut attached = Vec::new();
            for spec in specs {
                match spec {
                    NicSpec::Network {
                        port_id,
                        network_id,
                        fixed_ip,
                    } => {
                        let port = PortSpec {
                            id: port_id.clone(),
                            network_id: network_id.clone(),
                            project_id: project_id.clone(),
                            name: String::new(),
                            description: String::new(),
                            mac_address: String::new(),
                            fixed_ips: if fixed_ip.is_empty() {
                                Vec::new()
                            } else {
                                vec![super::FixedIp {
                                    subnet_id: String::new(),
                                    ip_address: fixed_ip.clone(),
                                }]
                            },
                            security_group_ids: Vec::new(),
                            port_security_enabled: true,
                            admin_state_up: true,
                            device_owner: owner.clone(),
                            device_id: server_id.clone(),
                            default_group_ids: default_group_ids.to_vec(),
                        };
                        let (_, created) = self.create_port(revision, t, &port)?;
                        self.more_changes.extend(created);
                        attached.push(Nic {
                            port_id: port_id.clone(),
                            delete_with_server: true,
                        });
                    }
                    NicSpec::Port { port_id } => {
                        if !bound.insert(port_id) {
                            return Err(Rejection::Invalid(format!(
                                "port {port_id} is asked for twice; a port is one NIC of one \
                                 server"
                            )));
                        }
                        let p = self
                            .net
                            .ports
                            .get(port_id)
                            .ok_or_else(|| Rejection::not_found("port", port_id))?;
                        if &p.project_id != project_id {
                            return Err(Rejection::Invalid(format!(
                                "port {port_id} belongs to another project"
                            )));
                        }
                        if !p.device_id.is_empty() || !p.device_owner.is_empty() {
                            let user = if p.device_owner.starts_with(COMPUTE_OWNER) {
                                let name = self
                                    .servers
                                    .get(&p.device_id)
                                    .map(|s| format!(" ({})", s.name))
                                    .unwrap_or_default();
                                format!("server {}{name}", p.device_id)
                            } else {
                                format!("{} {}", p.device_owner, p.device_id)
                            };
                            return Err(Rejection::FailedPrecondition(format!(
                                "port {port_id} is in use by {user}; a port can be the NIC of \
                                 one server only"
                            )));
                        }
                        let mut next = p.clone();
                        next.device_owner = owner.clone();
                        next.device_id = server_id.clone();
                        next.meta.touch(revision, t);
                        self.more_changes.push(port_change(&next));
                        self.net.ports.insert(next.id.clone(), next);
                        attached.push(Nic {
                            port_id: port_id.clone(),
                            delete_with_server: false,
                        });
                    }
                }
            }
            out.push(attached);
        }
        Ok(out)
    }

    /// A deleted server's NICs: its own ports are deleted, the others unbound.
    pub(super) fn detach_nics(&mut self, revision: u64, env: &Envelope, s: &Server) {
        for nic in &s.nics {
            let Some(p) = self.net.ports.get(&nic.port_id).cloned() else {
                continue;
            };
            if p.device_id != s.id {
                continue;
            }
            if nic.delete_with_server {
                self.remove_port(revision, env.time_ms, &p);
                self.more_changes.push(change(
                    "port",
                    &p.id,
                    &p.name,
                    EventAction::Deleted,
                    &p.project_id,
                ));
            } else {
                let mut next = p;
                next.device_id.clear();
                next.device_owner.clear();
                next.meta.touch(revision, env.time_ms);
                self.more_changes.push(port_change(&next));
                self.net.ports.insert(next.id.clone(), next);
            }
        }
    }

    /// Events for the ports of a server whose owner host changed (their host and status).
    pub(super) fn ports_moved(&mut self, s: &Server) {
        for nic in &s.nics {
            if let Some(p) = self.net.ports.get(&nic.port_id) {
                self.more_changes.push(port_change(p));
            }
        }
    }

    /// Records the ports a host's agent has wired (its full list).
    pub(super) fn apply_ports_wired(&mut self, env: &Envelope) -> Applied {
        let Command::PortsWired {
            host_id,
            lease_id,
            port_ids,
        } = &env.command
        else {
            unreachable!("apply_ports_wired called with another command")
        };
        let host = self.existing_host(host_id)?;
        if host.lease_id != *lease_id {
            return Err(Rejection::FailedPrecondition(format!(
                "a report under lease {lease_id} of host {:?}, which holds lease {} now",
                host.info.hostname, host.lease_id
            )));
        }
        // Only ports that exist are kept (the state stays bounded by what it holds).
        let next: BTreeSet<String> = port_ids
            .iter()
            .filter(|id| self.net.ports.contains_key(*id))
            .cloned()
            .collect();
        let before = self.net.wired.get(host_id).cloned().unwrap_or_default();
        if next == before {
            return Ok((Outcome::Unchanged, None));
        }
        let flipped: Vec<String> = next.symmetric_difference(&before).cloned().collect();
        if next.is_empty() {
            self.net.wired.remove(host_id);
        } else {
            self.net.wired.insert(host_id.clone(), next);
        }
        // Only ports this host owns change status; the others are noted silently.
        let mut changes = flipped
            .iter()
            .filter_map(|id| self.net.ports.get(id))
            .filter(|p| self.port_server(p).is_some_and(|s| s.host_id == *host_id))
            .map(port_change)
            .collect::<Vec<_>>()
            .into_iter();
        let first = changes.next();
        self.more_changes.extend(changes);
        Ok((Outcome::Unchanged, first))
    }

    /// The server a port is the NIC of.
    pub fn port_server(&self, p: &Port) -> Option<&Server> {
        if !p.device_owner.starts_with(COMPUTE_OWNER) {
            return None;
        }
        self.servers.get(&p.device_id)
    }

    /// The host a port is bound to: its server's owner host.
    pub fn port_host(&self, p: &Port) -> Option<&Host> {
        self.port_server(p).and_then(|s| self.hosts.get(&s.host_id))
    }

    /// Whether the port is wired where it should be: its owner host is up and its agent
    /// reported it wired.
    pub fn port_wired(&self, p: &Port) -> bool {
        self.port_host(p).is_some_and(|h| {
            h.is_up()
                && self
                    .net
                    .wired
                    .get(&h.id)
                    .is_some_and(|set| set.contains(&p.id))
        })
    }

    /// The floating IPs associated with a port.
    pub fn floating_ips_of_port<'a>(
        &'a self,
        port_id: &'a str,
    ) -> impl Iterator<Item = &'a FloatingIp> + 'a {
        self.net
            .floating_ips
            .values()
            .filter(move |f| f.port_id == port_id)
    }

    /// A server's ports, in NIC order.
    pub fn server_ports<'a>(&'a self, s: &'a Server) -> impl Iterator<Item = &'a Port> + 'a {
        s.nics.iter().filter_map(|n| self.net.ports.get(&n.port_id))
    }
}

fn port_change(p: &Port) -> super::Change<'static> {
    change("port", &p.id, &p.name, EventAction::Updated, &p.project_id)
}

//! Compute hosts: registration by their agents, up/down, enable/disable, and the capacity their
//! servers use.
//!
//! Leases are not replicated heartbeat by heartbeat: the leader keeps each host's last
//! heartbeat in memory and proposes [`Command::MarkHostDown`] once the lease (plus grace) has
//! run out. Every registration gets a new `lease_id` (a fencing token): a down-marking for an
//! older lease is ignored, so a host that re-registered in the meantime stays up.
use serde::{Deserialize, Serialize};

use super::{validate, Change, Command, Envelope, EventAction, Meta, Outcome, Rejection, State};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// vCPUs, RAM MiB and disk GiB (the scheduler's arithmetic type).
pub use crate::scheduler::Resources as Capacity;

/// What an agent reports when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRegistration {
    pub hostname: String,
    pub address: String,
    /// VXLAN endpoint when it is not `address`; empty = `address`.
    #[serde(default)]
    pub tunnel_address: String,
    pub availability_zone: String,
    pub hypervisor_type: String,
    pub hypervisor_version: String,
    pub cpu_model: String,
    pub agent_version: String,
    pub capacity: Capacity,
}

impl HostRegistration {
    /// Where other hosts send this host's VXLAN traffic.
    pub fn tunnel_endpoint(&self) -> &str {
        if self.tunnel_address.is_empty() {
            &self.address
        } else {
            &self.tunnel_address
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub info: HostRegistration,
    pub enabled: bool,
    pub disabled_reason: String,
    /// An operator declared it down (it stays down until cleared).
    pub forced_down: bool,
    pub up: bool,
    /// When it went down; 0 while up.
    pub down_since_ms: i64,
    /// Increases with every registration: the fencing token of the current lease.
    pub lease_id: u64,
    pub registered_at_ms: i64,
    /// Sum of the flavors of the servers placed here.
    pub used: Capacity,
    pub meta: Meta,
}

impl Host {
    /// Up, not forced down, enabled: may receive new servers.
    pub fn schedulable(&self) -> bool {
        self.up && !self.forced_down && self.enabled
    }

    pub fn is_up(&self) -> bool {
        self.up && !self.forced_down
    }
}

impl State {
    pub(super) fn apply_host(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::RegisterHost { host_id, info } => {
                validate::name("host", &info.hostname).map_err(Rejection::Invalid)?;
                let existing = self.host_names.get(&info.hostname).cloned();
                let (mut host, action) = match existing.and_then(|id| self.hosts.get(&id)) {
                    // A fenced host gets no lease (I7) until an operator clears the mark.
                    Some(h) if h.forced_down => {
                        return Err(Rejection::FailedPrecondition(format!(
                            "host {:?} is forced down by an operator; clear the mark with                              `flotilla host set --no-force-down {}` once it is healthy",
                            h.info.hostname, h.info.hostname
                        )))
                    }
                    Some(h) => (h.clone(), EventAction::Updated),
                    None => {
                        if self.hosts.contains_key(host_id) {
                            return Err(Rejection::Invalid(format!(
                                "host id {host_id} is already taken"
                            )));
                        }
                        let host = Host {
                            id: host_id.clone(),
                            info: info.clone(),
                            enabled: true,
                            disabled_reason: String::new(),
                            forced_down: false,
                            up: false,
                            down_since_ms: 0,
                            lease_id: 0,
                            registered_at_ms: env.time_ms,
                            used: Capacity::default(),
                            meta: Meta::new(revision, env.time_ms),
                        };
                        (host, EventAction::Created)
                    }
                };
                host.info = info.clone();
                host.up = true;
                host.down_since_ms = 0;
                host.lease_id += 1;
                host.registered_at_ms = env.time_ms;
                host.meta.touch(revision, env.time_ms);
                self.host_names
                    .insert(host.info.hostname.clone(), host.id.clone());
                self.hosts.insert(host.id.clone(), host.clone());
                Ok((
                    Outcome::Host(Box::new(host.clone())),
                    Some(change(&host, action)),
                ))
            }
            Command::MarkHostDown { host_id, lease_id } => {
                let mut host = self.existing_host(host_id)?.clone();
                if host.lease_id != *lease_id || !host.up {
                    return Ok((Outcome::Host(Box::new(host)), None));
                }
                host.up = false;
                host.down_since_ms = env.time_ms;
                let id = host.id.clone();
                let stored = self.store_host(revision, env, host);
                self.abandon_migrations_of(revision, env, &id);
                self.reschedule_boots_of(revision, env, &id);
                stored
            }
            Command::SetHostEnabled {
                host,
                enabled,
                reason,
            } => {
                let mut next = self.existing_host(host)?.clone();
                validate::description("disable reason", reason).map_err(Rejection::Invalid)?;
                next.enabled = *enabled;
                next.disabled_reason = if *enabled {
                    String::new()
                } else {
                    reason.clone()
                };
                self.store_host(revision, env, next)
            }
            Command::SetHostForcedDown { host, forced_down } => {
                let mut next = self.existing_host(host)?.clone();
                next.forced_down = *forced_down;
                if *forced_down && next.down_since_ms == 0 {
                    next.down_since_ms = env.time_ms;
                }
                if !*forced_down && next.up {
                    next.down_since_ms = 0;
                }
                let id = next.id.clone();
                let stored = self.store_host(revision, env, next);
                if *forced_down {
                    self.abandon_migrations_of(revision, env, &id);
                    self.reschedule_boots_of(revision, env, &id);
                }
                stored
            }
            _ => unreachable!("apply_host called with a non-host command"),
        }
    }

    pub(super) fn existing_host(&self, key: &str) -> Result<&Host, Rejection> {
        self.host(key)
            .ok_or_else(|| Rejection::not_found("host", key))
    }

    pub(super) fn store_host(&mut self, revision: u64, env: &Envelope, mut next: Host) -> Applied {
        if self.hosts.get(&next.id) == Some(&next) {
            return Ok((Outcome::Host(Box::new(next)), None));
        }
        next.meta.touch(revision, env.time_ms);
        self.hosts.insert(next.id.clone(), next.clone());
        Ok((
            Outcome::Host(Box::new(next.clone())),
            Some(change(&next, EventAction::Updated)),
        ))
    }

    /// A host by id or hostname.
    pub fn host(&self, key: &str) -> Option<&Host> {
        super::by_id_or_name(&self.hosts, &self.host_names, key)
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    pub fn hosts_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Host> + 'a {
        super::page_after(&self.hosts, after)
    }

    /// Adds (or with `release`, removes) a server's size to its host's usage.
    pub(super) fn account_host(&mut self, host_id: &str, size: Capacity, release: bool) {
        if let Some(h) = self.hosts.get_mut(host_id) {
            h.used = if release {
                h.used.saturating_sub(size)
            } else {
                h.used.saturating_add(size)
            };
        }
    }
}

fn change(h: &Host, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "host",
        resource_id: h.id.clone(),
        resource_name: h.info.hostname.clone(),
        action,
        project_id: String::new(),
    }
}

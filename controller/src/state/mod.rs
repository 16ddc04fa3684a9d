//! The replicated state machine (I1, I2, I4, I8). Pure: no I/O, no clock, no randomness.
//!
//! `State::apply(index, &Envelope) -> Outcome` is the only mutation. Every replica that applies
//! the same entries reaches the same state, which [`State::checksum`] lets tests and operators
//! compare. Each successful change gets the next revision and an [`Event`]; recent request ids
//! are remembered so a retried request returns its original outcome.
mod capacity;
mod command;
mod flavors;
mod host_jobs;
mod hosts;
mod identity;
mod images;
mod ipam;
mod migrations;
mod model;
mod net_floating;
mod net_networks;
mod net_ports;
mod net_subnets;
mod networks;
mod operations;
mod outcome;
mod projects;
mod quota;
mod security_groups;
mod server_groups;
mod server_nics;
mod server_queries;
mod server_reports;
mod server_steps;
mod servers;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use capacity::{host_view, request_for as placement_request};
pub use command::{Command, DecodeError, Envelope, FlavorSpec, FORMAT_VERSION};
pub use host_jobs::{HostJob, HostJobSpec, ItemStart, DEFAULT_PARALLEL};
pub use hosts::{Capacity, Host, HostRegistration};
pub use identity::{MAX_SIGNING_KEYS, MAX_TOKEN_LIFETIME_MS};
pub use images::{
    ContainerFormat, DiskFormat, Image, ImageChanges, ImageSpec, ImageStatus, ImageUpload,
    UploadResult, Visibility,
};
pub use ipam::Family;
pub use migrations::{cancellable, Migration, MoveSpec};
pub use model::{
    Event, EventAction, Flavor, Member, Meta, Project, Role, RoleAssignment, SigningKey, User,
};
pub use net_ports::normalize_mac;
pub use networks::{
    FixedIp, FloatingIp, GatewaySpec, HostRoute, NetCommand, NetOutcome, Network, NetworkSpec,
    NetworkType, Port, PortSpec, Subnet, SubnetSpec, DEFAULT_VNI_RANGE, MAX_VNI,
};
pub use operations::{ItemState, OpItem, OpState, Operation, Progress};
pub use outcome::{Outcome, Rejection};
pub use quota::{
    admit, validate_limits, Amounts, ProjectQuota, QuotaExceeded, QuotaItem, Resource,
    ResourceDelta, UNLIMITED,
};
pub use security_groups::{
    Direction, Ethertype, RuleSpec, SecurityGroup, SecurityGroupRule, DEFAULT_GROUP,
    DEFAULT_GROUP_IDS, NEW_GROUP_RULE_IDS,
};
pub use server_groups::{ServerGroup, ServerGroupSpec};
pub use server_nics::{Nic, NicSpec, COMPUTE_OWNER};
pub use server_steps::AGENT_UPLOAD;
pub use servers::{
    BootImage, DesiredPower, Fault, FlavorSnapshot, NewServer, ObservedServer, PowerState, Server,
    ServerRequest, ServerStatus, SnapshotSpec, MAX_BOOT_ATTEMPTS,
};

/// Format of encoded snapshots of [`State`]. 2: identity and quotas were added. 3: images.
/// 4: hosts, servers, operations. 5: server groups (and each server's group id). 7: networking
/// (networks, subnets, ports, floating IPs, security groups). 8: servers' NICs, the ports each
/// host has wired (a port's host is derived from its server, no longer stored).
pub const STATE_FORMAT_VERSION: u8 = 8;

/// Events kept for watchers that resume from an old revision.
pub const EVENT_RETENTION: usize = 20_000;
/// Request ids remembered for deduplication: at most this many…
pub const DEDUP_MAX_ENTRIES: usize = 100_000;
/// …and none older than this (leader-stamped time).
pub const DEDUP_WINDOW_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Remembered {
    kind: String,
    time_ms: i64,
    outcome: RememberedOutcome,
}

/// What a retry gets back. Resources are remembered by reference (a retry sees the resource as
/// it is now, as etcd and Kubernetes answer) so the dedup table stays small; everything else is
/// kept whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum RememberedOutcome {
    Project(String),
    Flavor(String),
    Image(String),
    Other(Box<Outcome>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Index of the last applied log entry.
    applied_index: u64,
    /// Revision of the last change; 0 before any.
    revision: u64,
    members: BTreeMap<u64, Member>,
    /// Ids of members that were removed; ids are never reused.
    removed_members: BTreeSet<u64>,
    projects: BTreeMap<String, Project>,
    flavors: BTreeMap<String, Flavor>,
    events: VecDeque<Event>,
    requests: BTreeMap<String, Remembered>,
    request_order: VecDeque<(i64, String)>,
    users: BTreeMap<String, User>,
    role_assignments: BTreeSet<RoleAssignment>,
    /// Oldest first; the last one is the active key.
    signing_keys: Vec<SigningKey>,
    /// Revoked token ids and when the token would expire anyway…
    revoked_tokens: BTreeMap<String, i64>,
    /// …and the same ordered by that time, for pruning.
    revoked_order: BTreeSet<(i64, String)>,
    /// Project id → project-specific limits (resources without one use the default).
    quota_overrides: BTreeMap<String, quota::Amounts>,
    /// Default limits changed from the built-in ones.
    default_quota: quota::Amounts,
    /// Project id → amounts allocated.
    quota_usage: BTreeMap<String, quota::Amounts>,
    images: BTreeMap<String, Image>,
    hosts: BTreeMap<String, Host>,
    servers: BTreeMap<String, Server>,
    operations: BTreeMap<String, Operation>,
    finished_operations: operations::FinishedOrder,
    /// Backup operation id → (backup type, how many of that type to keep).
    backup_rotations: BTreeMap<String, (String, u32)>,
    server_groups: BTreeMap<String, ServerGroup>,
    /// Networks, subnets (with their IPAM), ports, floating IPs and security groups.
    net: networks::Networking,
    // Derived lookups, rebuilt after decoding and never encoded.
    #[serde(skip)]
    project_names: BTreeMap<String, String>,
    #[serde(skip)]
    flavor_names: BTreeMap<String, String>,
    #[serde(skip)]
    user_names: BTreeMap<String, String>,
    #[serde(skip)]
    host_names: BTreeMap<String, String>,
    /// Host id → ids of the servers placed there.
    #[serde(skip)]
    servers_by_host: BTreeMap<String, BTreeSet<String>>,
    /// Ids of the servers with a migration under way.
    #[serde(skip)]
    migrating: BTreeSet<String>,
    /// Further changes of the entry being applied (one revision, several events).
    #[serde(skip)]
    more_changes: Vec<Change<'static>>,
}

/// What a change did, for the event log.
#[derive(Debug, Clone)]
struct Change<'a> {
    resource_type: &'a str,
    resource_id: String,
    resource_name: String,
    action: EventAction,
    project_id: String,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Applies one committed entry. `index` is its Raft index.
    pub fn apply(&mut self, index: u64, env: &Envelope) -> Outcome {
        self.applied_index = index;
        self.forget_old_requests(env.time_ms);
        self.prune_identity(env.time_ms);
        if !env.request_id.is_empty() {
            if let Some(seen) = self.requests.get(&env.request_id) {
                if seen.kind != env.command.kind() {
                    return Outcome::Rejected(Rejection::RequestIdReused {
                        request_id: env.request_id.clone(),
                        previous: seen.kind.clone(),
                    });
                }
                return self.recall(&seen.outcome);
            }
        }
        let revision = self.revision + 1;
        let result = match &env.command {
            Command::Bootstrap { members } => Ok(self.bootstrap(members)),
            Command::CreateProject { .. }
            | Command::UpdateProject { .. }
            | Command::DeleteProject { .. } => self.apply_project(revision, env),
            Command::CreateFlavor(_)
            | Command::UpdateFlavor { .. }
            | Command::DeleteFlavor { .. }
            | Command::AddFlavorAccess { .. }
            | Command::RemoveFlavorAccess { .. } => self.apply_flavor(revision, env),
            Command::CreateUser { .. }
            | Command::UpdateUser { .. }
            | Command::DeleteUser { .. }
            | Command::SetPassword { .. }
            | Command::AddRoleAssignment { .. }
            | Command::RemoveRoleAssignment { .. }
            | Command::AddSigningKey { .. }
            | Command::RevokeToken { .. }
            | Command::BootstrapAdmin { .. } => self.apply_identity(revision, env),
            Command::SetQuota { .. } | Command::SetDefaultQuota { .. } => self.apply_quota(env),
            Command::CreateImage(_)
            | Command::UpdateImage { .. }
            | Command::DeleteImage { .. }
            | Command::AddImageMember { .. }
            | Command::RemoveImageMember { .. }
            | Command::BeginImageUpload { .. }
            | Command::FinishImageUpload { .. } => self.apply_image(revision, env),
            Command::RegisterHost { .. }
            | Command::MarkHostDown { .. }
            | Command::SetHostEnabled { .. }
            | Command::SetHostForcedDown { .. } => self.apply_host(revision, env),
            Command::CreateServers { .. }
            | Command::ServerObserved { .. }
            | Command::ServerRequest { .. }
            | Command::RescheduleServer { .. }
            | Command::CreateServersWithNics { .. }
            | Command::OperationStepResult { .. } => self.apply_server(revision, env),
            Command::MigrationStep { .. }
            | Command::OperationProgress { .. }
            | Command::CancelOperation { .. } => self.apply_migration(revision, env),
            Command::StartHostJob { .. } | Command::AdvanceHostJob { .. } => {
                self.apply_host_job(revision, env)
            }
            Command::CreateServerGroup(_) | Command::DeleteServerGroup { .. } => {
                self.apply_server_group(revision, env)
            }
            Command::Networking(_) => self.apply_networking(revision, env),
            Command::PortsWired { .. } => self.apply_ports_wired(env),
        };
        let outcome = match result {
            Ok((outcome, Some(change))) => {
                self.record(revision, env, change);
                for more in std::mem::take(&mut self.more_changes) {
                    self.record(revision, env, more);
                }
                outcome
            }
            Ok((outcome, None)) => outcome,
            Err(rejection) => Outcome::Rejected(rejection),
        };
        self.more_changes.clear();
        if !env.request_id.is_empty() {
            self.remember(env, &outcome);
        }
        outcome
    }

    /// Records a membership change made by a Raft configuration change entry.
    pub fn apply_member_change(&mut self, index: u64, added: Option<Member>, removed: Option<u64>) {
        self.applied_index = index;
        if let Some(id) = removed {
            self.members.remove(&id);
            self.removed_members.insert(id);
        }
        if let Some(m) = added {
            self.members.insert(m.id, m);
        }
    }

    /// Notes an entry that changes no state (e.g. the empty entry of a new leader).
    pub fn apply_noop(&mut self, index: u64) {
        self.applied_index = index;
    }

    fn bootstrap(&mut self, members: &[Member]) -> (Outcome, Option<Change<'static>>) {
        if !self.members.is_empty() {
            return (Outcome::Unchanged, None);
        }
        for m in members {
            self.members.insert(m.id, m.clone());
        }
        (Outcome::Members(members.to_vec()), None)
    }

    fn record(&mut self, revision: u64, env: &Envelope, change: Change<'_>) {
        self.revision = revision;
        if self.events.len() >= EVENT_RETENTION {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            revision,
            time_ms: env.time_ms,
            resource_type: change.resource_type.to_owned(),
            resource_id: change.resource_id,
            resource_name: change.resource_name,
            action: change.action,
            project_id: change.project_id,
            actor: env.actor.clone(),
            request_id: env.request_id.clone(),
        });
    }

    fn recall(&self, remembered: &RememberedOutcome) -> Outcome {
        let gone = |kind: &str, id: &str| {
            Outcome::Rejected(Rejection::FailedPrecondition(format!(
                "this request already succeeded, but {kind} {id} was deleted since"
            )))
        };
        match remembered {
            RememberedOutcome::Project(id) => self
                .projects
                .get(id)
                .map(|p| Outcome::Project(p.clone()))
                .unwrap_or_else(|| gone("project", id)),
            RememberedOutcome::Flavor(id) => self
                .flavors
                .get(id)
                .map(|f| Outcome::Flavor(f.clone()))
                .unwrap_or_else(|| gone("flavor", id)),
            RememberedOutcome::Image(id) => self
                .images
                .get(id)
                .map(|i| Outcome::Image(i.clone()))
                .unwrap_or_else(|| gone("image", id)),
            RememberedOutcome::Other(o) => (**o).clone(),
        }
    }

    fn remember(&mut self, env: &Envelope, outcome: &Outcome) {
        self.requests.insert(
            env.request_id.clone(),
            Remembered {
                kind: env.command.kind().to_owned(),
                time_ms: env.time_ms,
                outcome: match outcome {
                    Outcome::Project(p) => RememberedOutcome::Project(p.id.clone()),
                    Outcome::Flavor(f) => RememberedOutcome::Flavor(f.id.clone()),
                    Outcome::Image(i) => RememberedOutcome::Image(i.id.clone()),
                    other => RememberedOutcome::Other(Box::new(other.clone())),
                },
            },
        );
        self.request_order
            .push_back((env.time_ms, env.request_id.clone()));
    }

    fn forget_old_requests(&mut self, now_ms: i64) {
        while let Some((t, id)) = self.request_order.front() {
            if self.request_order.len() > DEDUP_MAX_ENTRIES || *t < now_ms - DEDUP_WINDOW_MS {
                self.requests.remove(id);
                self.request_order.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether `id` belonged to a member that was removed (ids are never reused).
    pub fn was_removed(&self, id: u64) -> bool {
        self.removed_members.contains(&id)
    }

    /// Projects in id order, starting after `after` (exclusive) when given.
    pub fn projects_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Project> + 'a {
        page_after(&self.projects, after)
    }

    /// Looks a project up by id, then by name.
    pub fn project(&self, key: &str) -> Option<&Project> {
        by_id_or_name(&self.projects, &self.project_names, key)
    }

    pub fn project_count(&self) -> usize {
        self.projects.len()
    }

    pub fn flavors_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Flavor> + 'a {
        page_after(&self.flavors, after)
    }

    pub fn flavor(&self, key: &str) -> Option<&Flavor> {
        by_id_or_name(&self.flavors, &self.flavor_names, key)
    }

    /// Retained events with revision greater than `after`, oldest first. `Err(oldest)` when
    /// events after `after` were already dropped (the watcher must re-list).
    pub fn events_after(&self, after: u64) -> Result<impl Iterator<Item = &Event>, u64> {
        if let Some(oldest) = self.events.front() {
            if after + 1 < oldest.revision {
                return Err(oldest.revision);
            }
        }
        let start = self.events.partition_point(|e| e.revision <= after);
        Ok(self.events.range(start..))
    }

    /// Encodes the whole state (for snapshots). Deterministic. The first byte is
    /// [`STATE_FORMAT_VERSION`], raised whenever `State`'s fields change.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_FORMAT_VERSION];
        bincode::serialize_into(&mut out, self).expect("state serializes");
        out
    }

    pub fn decode(data: &[u8]) -> Result<State, DecodeError> {
        let mut state: State = match data.first() {
            None => return Err(DecodeError::Empty),
            Some(&v) if v > STATE_FORMAT_VERSION => return Err(DecodeError::NewerSnapshot(v)),
            Some(&v) if v < STATE_FORMAT_VERSION => {
                return Err(DecodeError::OlderSnapshot {
                    found: v,
                    expected: STATE_FORMAT_VERSION,
                })
            }
            Some(_) => bincode::deserialize(&data[1..]).map_err(DecodeError::Malformed)?,
        };
        state.project_names = state
            .projects
            .values()
            .map(|p| (p.name.clone(), p.id.clone()))
            .collect();
        state.flavor_names = state
            .flavors
            .values()
            .map(|f| (f.name.clone(), f.id.clone()))
            .collect();
        state.user_names = state
            .users
            .values()
            .map(|u| (u.name.clone(), u.id.clone()))
            .collect();
        state.host_names = state
            .hosts
            .values()
            .map(|h| (h.info.hostname.clone(), h.id.clone()))
            .collect();
        state.migrating = state
            .servers
            .values()
            .filter(|s| s.migration.is_some())
            .map(|s| s.id.clone())
            .collect();
        for s in state.servers.values() {
            state
                .servers_by_host
                .entry(s.host_id.clone())
                .or_default()
                .insert(s.id.clone());
        }
        Ok(state)
    }

    /// SHA-256 of the encoded state, hex, first 16 characters. Equal on every replica at the
    /// same applied index.
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.encode());
        hex::encode(&digest[..8])
    }
}

#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod image_tests;
#[cfg(test)]
mod network_tests;
#[cfg(test)]
mod server_tests;
/// Values of an id-keyed map after `after` (exclusive; empty = from the start): one page of a
/// List RPC, whose page token is the last id returned.
pub(crate) fn page_after<'a, V>(
    map: &'a BTreeMap<String, V>,
    after: &str,
) -> impl Iterator<Item = &'a V> + 'a {
    use std::ops::Bound::{Excluded, Unbounded};
    let lower = if after.is_empty() {
        Unbounded
    } else {
        Excluded(after.to_owned())
    };
    map.range((lower, Unbounded)).map(|(_, v)| v)
}

/// Looks a resource up by id, then by unique name.
pub(crate) fn by_id_or_name<'a, V>(
    by_id: &'a BTreeMap<String, V>,
    names: &BTreeMap<String, String>,
    key: &str,
) -> Option<&'a V> {
    by_id
        .get(key)
        .or_else(|| names.get(key).and_then(|id| by_id.get(id)))
}

#[cfg(test)]
mod tests;

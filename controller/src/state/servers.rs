//! Servers and their operations (I3, I5, I7).
//!
//! A server is placed on one host with a placement generation; only a local copy holding that
//! generation may run. Creating servers admits quota, re-checks each proposed host's capacity
//! and records the servers and their boot operations in one apply (I3). Agents report what they
//! observe ([`Command::ServerObserved`], the host's full list); apply moves servers and their
//! operations forward from those reports. Work the leader does by itself (rescheduling a boot
//! that failed on its host, giving up after [`MAX_BOOT_ATTEMPTS`]) is proposed as commands too,
//! so a new leader resumes where the old one stopped.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::capacity;
use super::hosts::{Capacity, Host};
use super::images::{DiskFormat, ImageStatus};
use super::migrations::{Migration, MoveSpec};
use super::operations::NewOperation;
use super::quota::{Resource, ResourceDelta};
use super::server_nics::{Nic, NicSpec};
use super::{validate, Change, Command, Envelope, EventAction, Meta, Outcome, Rejection, State};
use crate::scheduler::{AllocationRatios, HostView, PlacementRequest};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// Hosts a boot is tried on before the server goes to ERROR.
pub const MAX_BOOT_ATTEMPTS: u32 = 3;
/// Actions remembered per server (oldest dropped first).
pub const MAX_ACTIONS_PER_SERVER: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerStatus {
    Build,
    Active,
    Shutoff,
    Reboot,
    HardReboot,
    Error,
    Deleting,
    Rebuild,
    Migrating,
}

impl ServerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Build => "BUILD",
            ServerStatus::Active => "ACTIVE",
            ServerStatus::Shutoff => "SHUTOFF",
            ServerStatus::Reboot => "REBOOT",
            ServerStatus::HardReboot => "HARD_REBOOT",
            ServerStatus::Error => "ERROR",
            ServerStatus::Deleting => "DELETING",
            ServerStatus::Rebuild => "REBUILD",
            ServerStatus::Migrating => "MIGRATING",
        }
    }
}

/// What the hypervisor shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    NoState,
    Running,
    Paused,
    Shutdown,
    Crashed,
}

/// What the server should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredPower {
    Running,
    Shutdown,
}

/// The flavor as it was when the server was created (later flavor changes do not move it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorSnapshot {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub ephemeral_gib: u64,
    pub swap_mib: u64,
    pub extra_specs: BTreeMap<String, String>,
}

impl FlavorSnapshot {
    /// What it charges to the project's quota.
    pub fn quota(&self) -> ResourceDelta {
        [
            (Resource::Instances, 1),
            (Resource::Vcpus, self.vcpus as i64),
            (Resource::RamMib, self.ram_mib as i64),
            (
                Resource::DiskGib,
                (self.disk_gib + self.ephemeral_gib) as i64,
            ),
        ]
        .into_iter()
        .collect()
    }
}

/// The image a server boots from, as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootImage {
    pub id: String,
    pub sha256: String,
    pub disk_format: DiskFormat,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub message: String,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub flavor: FlavorSnapshot,
    pub image: BootImage,
    /// What it takes from its host's capacity.
    pub claim: Capacity,
    pub status: ServerStatus,
    /// What is under way ("spawning", "powering-off", …); empty when idle.
    pub task_state: String,
    pub power_state: PowerState,
    pub desired_power: DesiredPower,
    /// Empty when the server has no host (e.g. no valid host was found).
    pub host_id: String,
    pub placement_generation: u64,
    pub availability_zone: String,
    pub locked: bool,
    pub locked_reason: String,
    pub fault: Option<Fault>,
    pub metadata: BTreeMap<String, String>,
    pub user_data: Vec<u8>,
    pub launched_at_ms: i64,
    pub current_operation_id: String,
    /// Hosts a boot failed on (not tried again), in order.
    pub failed_hosts: Vec<String>,
    /// Why the boot on the current host failed; set until the leader reschedules it.
    pub boot_failure: String,
    /// Its operations (the action list), oldest first, at most [`MAX_ACTIONS_PER_SERVER`].
    pub operation_ids: Vec<String>,
    /// The server group it belongs to; empty when none.
    pub group_id: String,
    pub meta: Meta,
    /// A live or cold migration under way.
    pub migration: Option<Migration>,
    /// Its NICs (ports), in the guest's interface order.
    pub nics: Vec<Nic>,
}

/// One server of a create, placed by the proposer's scheduler run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewServer {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub flavor: FlavorSnapshot,
    pub image_id: String,
    pub host_id: String,
    pub availability_zone: String,
    pub metadata: BTreeMap<String, String>,
    pub user_data: Vec<u8>,
    pub operation_id: String,
    /// The server group it joins; empty when none. Every server of one create joins the same.
    pub group_id: String,
}

/// What an agent found for one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedServer {
    pub id: String,
    pub power: PowerState,
    pub generation: u64,
    /// Why the agent cannot converge it; empty when fine.
    pub error: String,
}

/// A change a user asks for; the proposer stamps the operation id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerRequest {
    Start,
    Stop,
    Reboot {
        hard: bool,
    },
    Delete,
    Lock {
        reason: String,
    },
    Unlock,
    /// Recreate the root disk from `image_id` (the server keeps its id, name and host).
    Rebuild {
        image_id: String,
    },
    /// Save the root disk as a new image (created SAVING in the same apply).
    Snapshot(SnapshotSpec),
    /// Live or cold migration to `host_id` (the source host must be up).
    Migrate(MoveSpec),
    /// Rebuild on `host_id` from its image, off a DOWN host (I7).
    Evacuate(MoveSpec),
}

/// A server image (`server image create`) or a backup (`server backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    pub image_id: String,
    pub name: String,
    pub properties: BTreeMap<String, String>,
    /// For backups: the backup type (e.g. "daily") and how many of that type to keep.
    pub backup: Option<(String, u32)>,
}

impl ServerRequest {
    fn kind(&self) -> &'static str {
        match self {
            ServerRequest::Start => "start",
            ServerRequest::Stop => "stop",
            ServerRequest::Reboot { hard: false } => "reboot",
            ServerRequest::Reboot { hard: true } => "reboot --hard",
            ServerRequest::Delete => "delete",
            ServerRequest::Lock { .. } => "lock",
            ServerRequest::Unlock => "unlock",
            ServerRequest::Rebuild { .. } => "rebuild",
            ServerRequest::Snapshot(SnapshotSpec { backup: None, .. }) => "image create",
            ServerRequest::Snapshot(_) => "backup",
            ServerRequest::Migrate(MoveSpec { live: true, .. }) => "live_migrate",
            ServerRequest::Migrate(_) => "migrate",
            ServerRequest::Evacuate(_) => "evacuate",
        }
    }
}

impl State {
    pub(super) fn apply_server(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::CreateServers { servers, ratios } => {
                self.create_servers(revision, env, servers, ratios, &[], &[])
            }
            Command::CreateServersWithNics {
                servers,
                ratios,
                nics,
                default_group_ids,
            } => self.create_servers(revision, env, servers, ratios, nics, default_group_ids),
            Command::ServerObserved {
                host_id,
                lease_id,
                servers,
            } => self.observe(revision, env, host_id, *lease_id, servers),
            Command::ServerRequest {
                server_id,
                operation_id,
                request,
            } => self.server_request(revision, env, server_id, operation_id, request),
            Command::RescheduleServer {
                server_id,
                host_id,
                ratios,
            } => self.reschedule(revision, env, server_id, host_id, ratios),
            Command::OperationStepResult {
                operation_id,
                ok,
                message,
            } => self.step_result(revision, env, operation_id, *ok, message),
            _ => unreachable!("apply_server called with a non-server command"),
        }
    }

    fn create_servers(
        &mut self,
        revision: u64,
        env: &Envelope,
        new: &[NewServer],
        ratios: &AllocationRatios,
        nics: &[Vec<NicSpec>],
        default_group_ids: &[String],
    ) -> Applied {
        let first = new
            .first()
            .ok_or_else(|| Rejection::Invalid("no servers to create".into()))?;
        let project = self
            .projects
            .get(&first.project_id)
            .ok_or_else(|| Rejection::not_found("project", &first.project_id))?;
        if !project.enabled {
            return Err(Rejection::FailedPrecondition(format!(
                "project {:?} is disabled",
                project.name
            )));
        }
        // Re-check every placement against current usage, the servers of this create
        // included (I3): the scheduler ran on a snapshot that may be stale by now.
        let mut planned: BTreeMap<String, Capacity> = BTreeMap::new();
        // The group's member hosts as they are now; each server of this create joins it
        // before the next one is checked (I3 for groups).
        let mut group = match first.group_id.as_str() {
            "" => None,
            id => {
                let g = self
                    .server_groups
                    .get(id)
                    .filter(|g| g.project_id == first.project_id)
                    .ok_or_else(|| Rejection::not_found("server group", id))?;
                Some(self.server_group_view(g))
            }
        };
        let mut total = ResourceDelta::new();
        for s in new {
            validate::name("server", &s.name).map_err(Rejection::Invalid)?;
            validate::properties("server", &s.metadata).map_err(Rejection::Invalid)?;
            if s.project_id != first.project_id {
                return Err(Rejection::Invalid("one create is for one project".into()));
            }
            if s.group_id != first.group_id {
                return Err(Rejection::Invalid(
                    "one create joins one server group".into(),
                ));
            }
            if self.servers.contains_key(&s.id) || self.operations.contains_key(&s.operation_id) {
                return Err(Rejection::Invalid(format!("server id {} is taken", s.id)));
            }
            let image = self
                .images
                .get(&s.image_id)
                .filter(|i| i.usable_by(&s.project_id))
                .ok_or_else(|| Rejection::not_found("image", &s.image_id))?;
            if image.status != ImageStatus::Active {
                return Err(Rejection::FailedPrecondition(format!(
                    "image {:?} is {}; servers boot from active images only",
                    image.name,
                    image.status.as_str()
                )));
            }
            let mut request = capacity::request_for(&s.flavor, image);
            request.group = group.clone();
            let host = self.schedulable_host(&s.host_id)?;
            let mut view = capacity::host_view(host);
            let before = planned.get(&s.host_id).copied().unwrap_or_default();
            view.used = view.used.saturating_add(before);
            check_fits(&view, ratios, &request)?;
            planned.insert(s.host_id.clone(), before.saturating_add(request.claim()));
            if let Some(g) = group.as_mut() {
                g.member_hosts.push(s.host_id.clone());
            }
            for (r, v) in s.flavor.quota() {
                *total.entry(r).or_insert(0) += v;
            }
        }
        // NICs next (ports, addresses, the port quota), then the servers' quota: on any
        // rejection the networking state and the project's usage go back as they were.
        let mut attached = vec![Vec::new(); new.len()];
        let saved = (!nics.is_empty()).then(|| {
            (
                self.net.clone(),
                self.quota_usage.get(&first.project_id).cloned(),
                self.more_changes.len(),
            )
        });
        let admitted = if nics.is_empty() {
            Ok(())
        } else {
            let who: Vec<(String, String, String)> = new
                .iter()
                .map(|s| (s.id.clone(), s.project_id.clone(), s.host_id.clone()))
                .collect();
            self.attach_nics(revision, env.time_ms, &who, nics, default_group_ids)
                .map(|a| attached = a)
        }
        .and_then(|()| {
            self.charge(&first.project_id, &total)
                .map_err(|e| Rejection::QuotaExceeded(e.to_string()))
        });
        if let Err(rejection) = admitted {
            if let Some((net, usage, changes)) = saved {
                self.net = net;
                match usage {
                    Some(u) => self.quota_usage.insert(first.project_id.clone(), u),
                    None => self.quota_usage.remove(&first.project_id),
                };
                self.more_changes.truncate(changes);
            }
            return Err(rejection);
        }
        let mut created = Vec::new();
        for (s, nics) in new.iter().zip(attached) {
            let image = &self.images[&s.image_id];
            let claim = capacity::request_for(&s.flavor, image).claim();
            let server = Server {
                id: s.id.clone(),
                name: s.name.clone(),
                project_id: s.project_id.clone(),
                user_id: s.user_id.clone(),
                flavor: s.flavor.clone(),
                image: BootImage {
                    id: image.id.clone(),
                    sha256: image.sha256.clone(),
                    disk_format: image.disk_format,
                    size_bytes: image.size_bytes,
                },
                claim,
                status: ServerStatus::Build,
                task_state: "spawning".into(),
                power_state: PowerState::NoState,
                desired_power: DesiredPower::Running,
                host_id: s.host_id.clone(),
                placement_generation: 1,
                availability_zone: s.availability_zone.clone(),
                locked: false,
                locked_reason: String::new(),
                fault: None,
                metadata: s.metadata.clone(),
                user_data: s.user_data.clone(),
                launched_at_ms: 0,
                current_operation_id: s.operation_id.clone(),
                failed_hosts: Vec::new(),
                boot_failure: String::new(),
                operation_ids: vec![s.operation_id.clone()],
                group_id: s.group_id.clone(),
                meta: Meta::new(revision, env.time_ms),
                migration: None,
                nics,
            };
            self.start_operation(
                revision,
                env,
                NewOperation {
                    id: &s.operation_id,
                    kind: "create",
                    resource_type: "server",
                    resource_id: &server.id,
                    resource_name: &server.name,
                    project_id: &server.project_id,
                    step: "spawning",
                },
            );
            self.account_host(&s.host_id, claim, false);
            self.index_server(&server.host_id, &server.id, true);
            self.index_group_member(&server.group_id, &server.id, true);
            self.servers.insert(server.id.clone(), server.clone());
            created.push(server);
        }
        let change = change(&created[0], EventAction::Created);
        Ok((Outcome::Servers(created), Some(change)))
    }

    fn server_request(
        &mut self,
        revision: u64,
        env: &Envelope,
        server_id: &str,
        operation_id: &str,
        request: &ServerRequest,
    ) -> Applied {
        let mut s = self.existing_server(server_id)?.clone();
        if self.operations.contains_key(operation_id) {
            return Err(Rejection::Invalid(format!(
                "operation id {operation_id} is taken"
            )));
        }
        let refuse = |s: &Server, what: &str, allowed: &str| {
            Err(Rejection::FailedPrecondition(format!(
                "server {:?} is {}{}; {what} needs {allowed}",
                s.name,
                s.status.as_str(),
                if s.task_state.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.task_state)
                }
            )))
        };
        let idle = s.task_state.is_empty();
        let step = match request {
            ServerRequest::Lock { .. } | ServerRequest::Unlock => "done",
            ServerRequest::Start if idle && s.status == ServerStatus::Shutoff => "powering-on",
            ServerRequest::Start => return refuse(&s, "start", "a SHUTOFF server"),
            ServerRequest::Stop if idle && s.status == ServerStatus::Active => "powering-off",
            ServerRequest::Stop => return refuse(&s, "stop", "an ACTIVE server"),
            ServerRequest::Reboot { hard: false } if idle && s.status == ServerStatus::Active => {
                "rebooting"
            }
            ServerRequest::Reboot { hard: true }
                if s.status == ServerStatus::Active
                    || (s.status == ServerStatus::Reboot && s.task_state == "rebooting") =>
            {
                "rebooting_hard"
            }
            ServerRequest::Reboot { .. } => return refuse(&s, "reboot", "an ACTIVE server"),
            ServerRequest::Delete if s.status == ServerStatus::Deleting => {
                return Ok((Outcome::Server(Box::new(s)), None))
            }
            ServerRequest::Delete => "deleting",
            ServerRequest::Rebuild { image_id }
                if idle
                    && matches!(
                        s.status,
                        ServerStatus::Active | ServerStatus::Shutoff | ServerStatus::Error
                    ) =>
            {
                self.check_rebuild(&s, image_id)?;
                "rebuilding"
            }
            ServerRequest::Rebuild { .. } => {
                return refuse(&s, "rebuild", "an ACTIVE, SHUTOFF or ERROR server")
            }
            ServerRequest::Snapshot(spec)
                if idle && matches!(s.status, ServerStatus::Active | ServerStatus::Shutoff) =>
            {
                self.check_snapshot(&s, spec)?;
                if spec.backup.is_some() {
                    "image_backup"
                } else {
                    "image_snapshot"
                }
            }
            ServerRequest::Snapshot(_) => {
                return refuse(&s, "saving an image", "an ACTIVE or SHUTOFF server")
            }
            ServerRequest::Migrate(m)
                if idle
                    && (s.status == ServerStatus::Active
                        || (!m.live && s.status == ServerStatus::Shutoff)) =>
            {
                self.check_migration(&s, m)?;
                "prepare_destination"
            }
            ServerRequest::Migrate(MoveSpec { live: true, .. }) => {
                return refuse(&s, "live migration", "an ACTIVE server")
            }
            ServerRequest::Migrate(_) => {
                return refuse(&s, "migration", "an ACTIVE or SHUTOFF server")
            }
            ServerRequest::Evacuate(m) => {
                self.check_evacuation(&s, m)?;
                "rebuild_spawning"
            }
        };
        // A request replaces what was under way (a hard reboot a stuck soft one, a delete
        // anything): the replaced operation ends as failed, saying why.
        if !s.current_operation_id.is_empty() && step != "done" {
            let previous = s.current_operation_id.clone();
            let note = format!("superseded by {}", request.kind());
            self.finish_operation(revision, env, &previous, false, &note);
        }
        self.start_operation(
            revision,
            env,
            NewOperation {
                id: operation_id,
                kind: request.kind(),
                resource_type: "server",
                resource_id: &s.id,
                resource_name: &s.name,
                project_id: &s.project_id,
                step,
            },
        );
        push_operation(&mut s, operation_id);
        match request {
            ServerRequest::Lock { reason } => {
                s.locked = true;
                s.locked_reason = reason.clone();
                self.finish_operation(revision, env, operation_id, true, "");
                return self.store_server(revision, env, s);
            }
            ServerRequest::Unlock => {
                s.locked = false;
                s.locked_reason.clear();
                self.finish_operation(revision, env, operation_id, true, "");
                return self.store_server(revision, env, s);
            }
            ServerRequest::Start => s.desired_power = DesiredPower::Running,
            ServerRequest::Stop => s.desired_power = DesiredPower::Shutdown,
            ServerRequest::Reboot { hard } => {
                s.status = if *hard {
                    ServerStatus::HardReboot
                } else {
                    ServerStatus::Reboot
                };
                s.desired_power = DesiredPower::Running;
            }
            ServerRequest::Delete => {
                // A migration under way ends here: its destination claim goes back.
                if let Some(m) = s.migration.take() {
                    self.account_host(&m.destination_host_id, s.claim, true);
                }
                s.status = ServerStatus::Deleting;
            }
            ServerRequest::Rebuild { image_id } => self.begin_rebuild(&mut s, image_id),
            ServerRequest::Snapshot(spec) => {
                self.begin_snapshot(revision, env, &s, operation_id, spec)
            }
            ServerRequest::Migrate(m) | ServerRequest::Evacuate(m) => {
                self.begin_move(&mut s, operation_id, request, m)
            }
        }
        s.task_state = match request {
            ServerRequest::Migrate(_) => "migrating".into(),
            _ => step.into(),
        };
        s.current_operation_id = operation_id.to_owned();
        if matches!(request, ServerRequest::Delete) {
            // Nothing runs it (no host, or its host is down: its agent destroys the stale copy
            // before starting anything when it returns, I7), so the delete completes now.
            let host_up = self.hosts.get(&s.host_id).is_some_and(Host::is_up);
            if !host_up {
                return Ok(self.finish_delete(revision, env, s));
            }
        }
        self.store_server(revision, env, s)
    }

    fn reschedule(
        &mut self,
        revision: u64,
        env: &Envelope,
        id: &str,
        host_id: &str,
        ratios: &AllocationRatios,
    ) -> Applied {
        let mut s = self.existing_server(id)?.clone();
        if s.status != ServerStatus::Build || s.boot_failure.is_empty() {
            return Ok((Outcome::Server(Box::new(s)), None));
        }
        if host_id.is_empty() {
            let reason = format!(
                "no valid host left after {} failed boot(s); last failure: {}",
                s.failed_hosts.len(),
                s.boot_failure
            );
            self.fail_boot(revision, env, &mut s, reason);
            return self.store_server(revision, env, s);
        }
        if s.failed_hosts.iter().any(|h| h == host_id) {
            return Err(Rejection::FailedPrecondition(
                "the boot already failed on that host".into(),
            ));
        }
        let view = capacity::host_view(self.schedulable_host(host_id)?);
        let image = self
            .images
            .get(&s.image.id)
            .ok_or_else(|| Rejection::not_found("image", &s.image.id))?;
        let mut request = capacity::request_for(&s.flavor, image);
        request.group = self.server_group_view_for(&s);
        check_fits(&view, ratios, &request)?;
        let old = std::mem::replace(&mut s.host_id, host_id.to_owned());
        self.account_host(&old, s.claim, true);
        self.account_host(host_id, s.claim, false);
        s.placement_generation += 1;
        s.boot_failure.clear();
        s.task_state = "spawning".into();
        self.operation_step(revision, env, &s.current_operation_id, "spawning");
        self.store_server(revision, env, s)
    }

    /// Removes a deleted server and gives back what it held.
    pub(super) fn finish_delete(
        &mut self,
        revision: u64,
        env: &Envelope,
        s: Server,
    ) -> (Outcome, Option<Change<'static>>) {
        self.finish_operation(revision, env, &s.current_operation_id, true, "");
        self.account_host(&s.host_id, s.claim, true);
        self.release(&s.project_id, &s.flavor.quota());
        self.detach_nics(revision, env, &s);
        self.servers.remove(&s.id);
        self.migrating.remove(&s.id);
        self.index_server(&s.host_id, &s.id, false);
        self.index_group_member(&s.group_id, &s.id, false);
        (Outcome::Deleted, Some(change(&s, EventAction::Deleted)))
    }

    pub(super) fn existing_server(&self, id: &str) -> Result<&Server, Rejection> {
        self.servers
            .get(id)
            .ok_or_else(|| Rejection::not_found("server", id))
    }

    pub(super) fn schedulable_host(&self, id: &str) -> Result<&Host, Rejection> {
        let host = self
            .hosts
            .get(id)
            .ok_or_else(|| Rejection::not_found("host", id))?;
        if !host.schedulable() {
            return Err(Rejection::FailedPrecondition(format!(
                "host {:?} cannot take new servers now (down or disabled)",
                host.info.hostname
            )));
        }
        Ok(host)
    }

    pub(super) fn store_server(
        &mut self,
        revision: u64,
        env: &Envelope,
        mut next: Server,
    ) -> Applied {
        if self.servers.get(&next.id) == Some(&next) {
            return Ok((Outcome::Server(Box::new(next)), None));
        }
        next.meta.touch(revision, env.time_ms);
        let old_host = self.servers.get(&next.id).map(|s| s.host_id.clone());
        if old_host.as_ref() != Some(&next.host_id) {
            if let Some(old) = old_host {
                self.index_server(&old, &next.id, false);
                self.ports_moved(&next);
            }
            self.index_server(&next.host_id, &next.id, true);
        }
        if next.migration.is_some() {
            self.migrating.insert(next.id.clone());
        } else {
            self.migrating.remove(&next.id);
        }
        self.servers.insert(next.id.clone(), next.clone());
        let change = change(&next, EventAction::Updated);
        Ok((Outcome::Server(Box::new(next)), Some(change)))
    }
}

/// The capacity re-check of a placement, with the scheduler's own filters (I3).
pub(super) fn check_fits(
    host: &HostView,
    ratios: &AllocationRatios,
    request: &PlacementRequest,
) -> Result<(), Rejection> {
    crate::scheduler::fits(host, ratios, request).map_err(|reason| {
        Rejection::FailedPrecondition(format!(
            "host {:?} cannot take the server any more: {reason}",
            host.name
        ))
    })
}

pub(super) fn push_operation(s: &mut Server, op_id: &str) {
    s.operation_ids.push(op_id.to_owned());
    if s.operation_ids.len() > MAX_ACTIONS_PER_SERVER {
        s.operation_ids.remove(0);
    }
}

fn change(s: &Server, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "server",
        resource_id: s.id.clone(),
        resource_name: s.name.clone(),
        action,
        project_id: s.project_id.clone(),
    }
}

//! Moving servers between hosts (I5, I7): live and cold migration off an UP host, evacuation
//! (rebuild from the image) off a DOWN one, and cancelling operations.
//!
//! A migration claims the destination's capacity when it starts and records a [`Migration`] on
//! the server. The destination's agent prepares (base image, empty overlay for the new
//! generation) and answers with the domain XML it wants; the source's agent then runs libvirt's
//! peer-to-peer migration. Ownership moves (new host, generation + 1, source claim released)
//! only after the source reports that libvirt finished. Any failure, a cancel or either host
//! going down rolls back: the server stays on the source, the destination claim is released
//! and the destination drops its copy because its desired state no longer lists it.
use serde::{Deserialize, Serialize};

use super::capacity;
use super::host_jobs::op_change;
use super::hosts::Host;
use super::operations::OpState;
use super::servers::{
    check_fits, DesiredPower, Fault, ObservedServer, PowerState, Server, ServerRequest,
    ServerStatus,
};
use super::{Change, Command, Envelope, Outcome, Rejection, State};
use crate::scheduler::AllocationRatios;

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// Where and how a server moves; the proposer picks the destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveSpec {
    pub host_id: String,
    /// Live migration (memory follows) rather than cold; ignored by evacuation.
    pub live: bool,
    pub block_migration: bool,
    /// The source agent aborts a migration not finished by then.
    pub timeout_seconds: u32,
    /// Evacuation to a named host: skip zone and group filters (capacity is still checked).
    pub force: bool,
    /// The host evacuation or drain this move is an item of; empty when none.
    pub parent_id: String,
    pub ratios: AllocationRatios,
}

/// A migration under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub live: bool,
    pub source_host_id: String,
    pub destination_host_id: String,
    pub destination_generation: u64,
    pub block_migration: bool,
    pub timeout_seconds: u32,
    /// The destination's domain XML, from its "prepare_destination" answer.
    pub destination_xml: String,
    /// Restored when the migration rolls back.
    pub previous_status: ServerStatus,
}

/// Steps of a migration operation, in order.
pub const PREPARE: &str = "prepare_destination";
pub const MIGRATE: &str = "migrate";
/// Cold migration: ownership moved, waiting for the destination to reach the power state.
pub const FINISHING: &str = "finishing_migration";
/// Evacuation: rebuilding on the new host.
pub const REBUILD_SPAWNING: &str = "rebuild_spawning";

impl State {
    pub(super) fn apply_migration(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::MigrationStep {
                operation_id,
                step,
                ok,
                message,
            } => self.migration_step(revision, env, operation_id, step, *ok, message),
            Command::OperationProgress {
                operation_id,
                step,
                progress,
            } => {
                let Some(op) = self.operations.get_mut(operation_id) else {
                    return Ok((Outcome::Unchanged, None));
                };
                if op.state.finished() || &op.step != step || op.progress.as_ref() == Some(progress)
                {
                    return Ok((Outcome::Unchanged, None));
                }
                op.progress = Some(progress.clone());
                op.meta.touch(revision, env.time_ms);
                let change = op_change(op);
                Ok((Outcome::Operation(Box::new(op.clone())), Some(change)))
            }
            Command::CancelOperation { operation_id } => {
                self.cancel_operation(revision, env, operation_id)
            }
            _ => unreachable!("apply_migration called with another command"),
        }
    }

    fn destination(&self, s: &Server, m: &MoveSpec, live: bool) -> Result<&Host, Rejection> {
        if m.host_id.is_empty() {
            return Err(Rejection::Invalid("no destination host given".into()));
        }
        if m.host_id == s.host_id {
            return Err(Rejection::FailedPrecondition(format!(
                "server {:?} is on that host already; pick another destination",
                s.name
            )));
        }
        let dest = self.schedulable_host(&m.host_id)?;
        if live {
            let source = self.hosts.get(&s.host_id);
            if let Some(src) =
                source.filter(|h| h.info.hypervisor_type != dest.info.hypervisor_type)
            {
                return Err(Rejection::FailedPrecondition(format!(
                    "host {:?} runs hypervisor {:?} and host {:?} runs {:?}; live migration \
                     needs the same hypervisor type",
                    src.info.hostname,
                    src.info.hypervisor_type,
                    dest.info.hostname,
                    dest.info.hypervisor_type
                )));
            }
        }
        let image = self
            .images
            .get(&s.image.id)
            .ok_or_else(|| Rejection::not_found("image", &s.image.id))?;
        let mut request = capacity::request_for(&s.flavor, image);
        if !m.force {
            request.group = self.server_group_view_for(s);
        }
        check_fits(&capacity::host_view(dest), &m.ratios, &request)?;
        Ok(dest)
    }

    pub(super) fn check_migration(&self, s: &Server, m: &MoveSpec) -> Result<(), Rejection> {
        let source = self.existing_host(&s.host_id)?;
        if !source.is_up() {
            return Err(Rejection::FailedPrecondition(format!(
                "host {:?} of server {:?} is down; migration needs its agent — evacuate the \
                 server instead",
                source.info.hostname, s.name
            )));
        }
        if s.locked {
            return Err(Rejection::FailedPrecondition(format!(
                "server {:?} is locked; unlock it first",
                s.name
            )));
        }
        self.destination(s, m, m.live).map(|_| ())
    }

    pub(super) fn check_evacuation(&self, s: &Server, m: &MoveSpec) -> Result<(), Rejection> {
        if s.status == ServerStatus::Deleting {
            return Err(Rejection::FailedPrecondition(format!(
                "server {:?} is being deleted",
                s.name
            )));
        }
        if let Some(host) = self.hosts.get(&s.host_id).filter(|h| h.is_up()) {
            return Err(Rejection::FailedPrecondition(format!(
                "host {:?} of server {:?} is up (its agent holds a valid lease); evacuation is \
                 for servers of DOWN hosts. Wait until the host is declared down, or once it is \
                 really fenced mark it with `flotilla host set --force-down {}`",
                host.info.hostname, s.name, host.info.hostname
            )));
        }
        self.destination(s, m, false).map(|_| ())
    }

    /// Starts a migration or an evacuation (checked by the caller in the same apply).
    pub(super) fn begin_move(
        &mut self,
        s: &mut Server,
        operation_id: &str,
        request: &ServerRequest,
        m: &MoveSpec,
    ) {
        if let Some(op) = self.operations.get_mut(operation_id) {
            op.parent_id = m.parent_id.clone();
        }
        self.account_host(&m.host_id, s.claim, false);
        match request {
            ServerRequest::Migrate(_) => {
                s.migration = Some(Migration {
                    live: m.live,
                    source_host_id: s.host_id.clone(),
                    destination_host_id: m.host_id.clone(),
                    destination_generation: s.placement_generation + 1,
                    block_migration: m.block_migration,
                    timeout_seconds: m.timeout_seconds,
                    destination_xml: String::new(),
                    previous_status: s.status,
                });
                s.status = ServerStatus::Migrating;
            }
            _ => {
                // A migration cut short by its source going down gives its claim back first.
                if let Some(mig) = s.migration.take() {
                    self.account_host(&mig.destination_host_id, s.claim, true);
                }
                let old = std::mem::replace(&mut s.host_id, m.host_id.clone());
                self.account_host(&old, s.claim, true);
                s.placement_generation += 1;
                s.status = ServerStatus::Rebuild;
                s.failed_hosts.clear();
                s.boot_failure.clear();
                s.power_state = PowerState::NoState;
            }
        }
    }

    /// Moves evacuated and cold-migrated servers on once their new host reports them; true
    /// when it handled the report.
    pub(super) fn advance_move(
        &mut self,
        revision: u64,
        env: &Envelope,
        s: &mut Server,
        seen: &ObservedServer,
    ) -> bool {
        let task = s.task_state.as_str();
        if task != REBUILD_SPAWNING && task != FINISHING {
            return false;
        }
        let op = s.current_operation_id.clone();
        if !seen.error.is_empty() {
            let reason = format!("on the new host: {}", seen.error);
            s.status = ServerStatus::Error;
            s.task_state.clear();
            s.fault = Some(Fault {
                message: reason.clone(),
                time_ms: env.time_ms,
            });
            self.finish_operation(revision, env, &op, false, &reason);
            return true;
        }
        let reached = match s.desired_power {
            DesiredPower::Running => seen.power == PowerState::Running,
            DesiredPower::Shutdown => seen.power == PowerState::Shutdown,
        };
        if reached {
            s.status = match s.desired_power {
                DesiredPower::Running => ServerStatus::Active,
                DesiredPower::Shutdown => ServerStatus::Shutoff,
            };
            let note = if task == REBUILD_SPAWNING {
                "rebuilt from its image on the new host (local disk contents of the failed host \
                 are lost)"
            } else {
                "moved"
            };
            s.task_state.clear();
            s.fault = None;
            if s.launched_at_ms == 0 {
                s.launched_at_ms = env.time_ms;
            }
            self.finish_operation(revision, env, &op, true, note);
        }
        true
    }

    fn migration_step(
        &mut self,
        revision: u64,
        env: &Envelope,
        op_id: &str,
        step: &str,
        ok: bool,
        message: &str,
    ) -> Applied {
        let Some(op) = self.operations.get(op_id).filter(|o| !o.state.finished()) else {
            return Ok((Outcome::Unchanged, None));
        };
        if op.step != step {
            return Ok((Outcome::Unchanged, None));
        }
        let cancelled = op.cancel_requested;
        let Some(mut s) = self.servers.get(&op.resource_id).cloned() else {
            return Ok((Outcome::Unchanged, None));
        };
        let Some(mut mig) = s
            .migration
            .clone()
            .filter(|_| s.current_operation_id == op_id)
        else {
            return Ok((Outcome::Unchanged, None));
        };
        match (step, ok) {
            (PREPARE, true) if cancelled => {
                self.roll_back(
                    revision,
                    env,
                    &mut s,
                    "cancelled before anything moved",
                    true,
                );
            }
            (PREPARE, true) => {
                mig.destination_xml = message.to_owned();
                s.migration = Some(mig);
                self.operation_step(revision, env, op_id, MIGRATE);
            }
            (PREPARE, false) => {
                let why = format!("preparing the destination failed: {message}");
                self.roll_back(revision, env, &mut s, &why, false);
            }
            (MIGRATE, true) => self.switch_owner(revision, env, &mut s, mig),
            (_, false) => {
                let why = if cancelled {
                    format!("cancelled; the server stays on its source host ({message})")
                } else {
                    format!("the migration failed and was rolled back: {message}")
                };
                self.roll_back(revision, env, &mut s, &why, cancelled);
            }
            _ => return Ok((Outcome::Unchanged, None)),
        }
        self.store_server(revision, env, s)
    }

    /// Live migrations their destination reports finished (the domain running there at the new
    /// generation: libvirt only lets the incoming copy run once the migration completed), for
    /// when the source's answer is lost — its agent restarted, say.
    pub(super) fn arrived_live(
        &mut self,
        revision: u64,
        env: &Envelope,
        host_id: &str,
        observed: &[ObservedServer],
    ) -> Result<Vec<Change<'static>>, Rejection> {
        let arrived: Vec<String> = self
            .migrating_to(host_id)
            .filter(|s| {
                let Some(m) = &s.migration else { return false };
                let at_migrate = self
                    .operations
                    .get(&s.current_operation_id)
                    .is_some_and(|o| o.step == MIGRATE);
                m.live
                    && at_migrate
                    && observed.iter().any(|o| {
                        o.id == s.id
                            && o.generation == m.destination_generation
                            && o.power == PowerState::Running
                    })
            })
            .map(|s| s.id.clone())
            .collect();
        let mut changes = Vec::new();
        for id in arrived {
            let mut s = self.servers[&id].clone();
            let mig = s.migration.clone().expect("filtered");
            self.switch_owner(revision, env, &mut s, mig);
            changes.extend(self.store_server(revision, env, s)?.1);
        }
        Ok(changes)
    }

    /// Ownership moves to the destination (I7): generation + 1, the source claim released.
    fn switch_owner(&mut self, revision: u64, env: &Envelope, s: &mut Server, mig: Migration) {
        self.account_host(&mig.source_host_id, s.claim, true);
        s.host_id = mig.destination_host_id.clone();
        s.placement_generation = mig.destination_generation;
        s.migration = None;
        let op = s.current_operation_id.clone();
        if mig.live {
            s.status = ServerStatus::Active;
            s.task_state.clear();
            let note = format!(
                "moved live from host {}",
                self.hostname(&mig.source_host_id)
            );
            self.finish_operation(revision, env, &op, true, &note);
        } else {
            // The domain arrives paused; it counts once the destination shows the power state.
            s.task_state = FINISHING.into();
            self.operation_step(revision, env, &op, FINISHING);
        }
    }

    /// Ends a migration without moving: the destination's claim released, the server as before.
    fn roll_back(
        &mut self,
        revision: u64,
        env: &Envelope,
        s: &mut Server,
        why: &str,
        cancelled: bool,
    ) {
        let Some(mig) = s.migration.take() else {
            return;
        };
        self.account_host(&mig.destination_host_id, s.claim, true);
        s.status = mig.previous_status;
        s.task_state.clear();
        let op = s.current_operation_id.clone();
        let state = if cancelled {
            OpState::Cancelled
        } else {
            OpState::Failed
        };
        self.finish_operation_as(revision, env, &op, state, why);
    }

    fn hostname(&self, host_id: &str) -> String {
        self.hosts
            .get(host_id)
            .map_or_else(|| host_id.to_owned(), |h| h.info.hostname.clone())
    }

    /// Rolls back every migration with a host that is not up (called when a host goes down).
    pub(super) fn abandon_migrations_of(&mut self, revision: u64, env: &Envelope, host_id: &str) {
        let hit: Vec<String> = self
            .servers
            .values()
            .filter(|s| {
                s.migration.as_ref().is_some_and(|m| {
                    m.source_host_id == host_id || m.destination_host_id == host_id
                })
            })
            .map(|s| s.id.clone())
            .collect();
        for id in hit {
            let mut s = self.servers[&id].clone();
            let why = format!(
                "host {} went down during the migration; the server stays on its source",
                self.hostname(host_id)
            );
            self.roll_back(revision, env, &mut s, &why, false);
            if let Ok((_, Some(change))) = self.store_server(revision, env, s) {
                self.more_changes.push(change);
            }
        }
    }

    fn cancel_operation(&mut self, revision: u64, env: &Envelope, op_id: &str) -> Applied {
        let op = self
            .operations
            .get(op_id)
            .ok_or_else(|| Rejection::not_found("operation", op_id))?;
        if op.state.finished() {
            return Err(Rejection::FailedPrecondition(format!(
                "operation {op_id} has finished already"
            )));
        }
        if !cancellable(op) {
            return Err(Rejection::FailedPrecondition(format!(
                "a {} operation cannot be cancelled at step {:?}",
                op.kind, op.step
            )));
        }
        if op.job.is_some() {
            return self.cancel_host_job(revision, env, op_id);
        }
        let server_id = op.resource_id.clone();
        let at_prepare = op.step == PREPARE;
        if let Some(op) = self.operations.get_mut(op_id) {
            op.cancel_requested = true;
            op.meta.touch(revision, env.time_ms);
        }
        let mut s = self.existing_server(&server_id)?.clone();
        if at_prepare {
            // Nothing has moved yet: stop here (the destination drops what it prepared).
            self.roll_back(
                revision,
                env,
                &mut s,
                "cancelled before anything moved",
                true,
            );
            if let (_, Some(change)) = self.store_server(revision, env, s)? {
                self.more_changes.push(change);
            }
        }
        let op = self.operations[op_id].clone();
        let change = op_change(&op);
        Ok((Outcome::Operation(Box::new(op)), Some(change)))
    }
}

/// Whether CancelOperation is accepted for `op` now.
pub fn cancellable(op: &super::Operation) -> bool {
    if op.state.finished() || op.cancel_requested {
        return false;
    }
    match op.kind.as_str() {
        "live_migrate" | "migrate" => op.step == PREPARE || op.step == MIGRATE,
        "host_evacuate" | "host_drain" => true,
        _ => false,
    }
}

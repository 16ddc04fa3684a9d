//! Host evacuation and drain (I5): one operation per host with one item per server. The items
//! start a few at a time ([`HostJob::parallel`]): the leader picks destinations for the next
//! pending ones and proposes [`Command::AdvanceHostJob`]; each item becomes an ordinary
//! evacuation or migration of its server, whose end reports back here. Results are per server
//! and honest: some may fail while others succeed (PARTIALLY_SUCCEEDED).
use serde::{Deserialize, Serialize};

use super::migrations::MoveSpec;
use super::operations::{ItemState, NewOperation, OpItem, OpState};
use super::servers::{ServerRequest, ServerStatus};
use super::{Change, Command, Envelope, EventAction, Outcome, Rejection, State};
use crate::scheduler::AllocationRatios;

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// Servers moved at the same time when the request does not say.
pub const DEFAULT_PARALLEL: u32 = 32;

/// What a host evacuation or drain does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostJob {
    /// Drain: disable the host first, then migrate everything off it.
    pub drain: bool,
    /// Live-migrate running servers (others are cold-migrated); otherwise evacuation rebuilds
    /// (off a DOWN host) or a drain cold-migrates.
    pub live: bool,
    pub parallel: u32,
    /// Every server goes to this host; empty = the scheduler picks per server.
    pub target_host_id: String,
    /// Per-migration deadline handed to the source agent.
    pub timeout_seconds: u32,
    pub ratios: AllocationRatios,
}

pub type HostJobSpec = HostJob;

/// One item the leader starts: where it goes, or why nothing fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemStart {
    pub server_id: String,
    /// Empty when no host fits.
    pub host_id: String,
    pub no_host_reason: String,
    /// Id of the server operation that moves it.
    pub operation_id: String,
}

impl HostJob {
    /// How a server of the host moves.
    pub fn method(&self, status: ServerStatus) -> &'static str {
        if !self.drain && !self.live {
            "rebuild"
        } else if self.live && status == ServerStatus::Active {
            "live_migrate"
        } else {
            "cold_migrate"
        }
    }

    pub fn kind(&self) -> &'static str {
        if self.drain {
            "host_drain"
        } else {
            "host_evacuate"
        }
    }
}

impl State {
    pub(super) fn apply_host_job(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::StartHostJob {
                operation_id,
                host_id,
                job,
            } => self.start_host_job(revision, env, operation_id, host_id, job),
            Command::AdvanceHostJob {
                operation_id,
                starts,
            } => self.advance_host_job(revision, env, operation_id, starts),
            _ => unreachable!("apply_host_job called with another command"),
        }
    }

    fn start_host_job(
        &mut self,
        revision: u64,
        env: &Envelope,
        op_id: &str,
        host_id: &str,
        job: &HostJob,
    ) -> Applied {
        if self.operations.contains_key(op_id) {
            return Err(Rejection::Invalid(format!("operation id {op_id} is taken")));
        }
        let host = self.existing_host(host_id)?.clone();
        let name = host.info.hostname.clone();
        let needs_down = !job.drain && !job.live;
        if needs_down && host.is_up() {
            return Err(Rejection::FailedPrecondition(format!(
                "host {name:?} is up (its agent holds a valid lease); evacuation rebuilds the \
                 servers of DOWN hosts. Use `--live` to move them off a running host, wait until \
                 it is declared down, or once it is really fenced mark it with \
                 `flotilla host set --force-down {name}`"
            )));
        }
        if !needs_down && !host.is_up() {
            return Err(Rejection::FailedPrecondition(format!(
                "host {name:?} is down; migrating needs its agent — use `flotilla host evacuate \
                 {name}` to rebuild its servers elsewhere"
            )));
        }
        if !job.target_host_id.is_empty() {
            let target = self.schedulable_host(&job.target_host_id)?;
            if target.id == host.id {
                return Err(Rejection::Invalid(
                    "the target host is the host being emptied".into(),
                ));
            }
        }
        if job.parallel == 0 {
            return Err(Rejection::Invalid("parallel must be at least 1".into()));
        }
        if job.drain && host.enabled {
            let mut next = host.clone();
            next.enabled = false;
            next.disabled_reason = "drain".into();
            if let (_, Some(change)) = self.store_host(revision, env, next)? {
                self.more_changes.push(change);
            }
        }
        let items: Vec<OpItem> = self
            .placed_on(host_id)
            .filter(|s| s.status != ServerStatus::Deleting)
            .map(|s| OpItem {
                server_id: s.id.clone(),
                server_name: s.name.clone(),
                method: job.method(s.status).into(),
                state: ItemState::Pending,
                message: String::new(),
                destination_host_id: String::new(),
                operation_id: String::new(),
            })
            .collect();
        self.start_operation(
            revision,
            env,
            NewOperation {
                id: op_id,
                kind: job.kind(),
                resource_type: "host",
                resource_id: host_id,
                resource_name: &name,
                project_id: "",
                step: "moving",
            },
        );
        let op = self.operations.get_mut(op_id).expect("just started");
        op.job = Some(job.clone());
        op.items = items;
        self.check_job_done(revision, env, op_id);
        Ok(self.operation_outcome(op_id))
    }

    fn advance_host_job(
        &mut self,
        revision: u64,
        env: &Envelope,
        op_id: &str,
        starts: &[ItemStart],
    ) -> Applied {
        let Some(op) = self.operations.get(op_id) else {
            return Err(Rejection::not_found("operation", op_id));
        };
        let Some(job) = op.job.clone() else {
            return Err(Rejection::Invalid(format!("{op_id} is not a host job")));
        };
        if op.state.finished() || op.cancel_requested {
            return Ok((Outcome::Unchanged, None));
        }
        for start in starts {
            let pending = self.operations[op_id]
                .items
                .iter()
                .position(|i| i.server_id == start.server_id && i.state == ItemState::Pending);
            let Some(idx) = pending else {
                continue;
            };
            let method = self.operations[op_id].items[idx].method.clone();
            let result = if start.host_id.is_empty() {
                Err(format!("no host can take it: {}", start.no_host_reason))
            } else {
                let spec = MoveSpec {
                    host_id: start.host_id.clone(),
                    live: method == "live_migrate",
                    block_migration: true,
                    timeout_seconds: job.timeout_seconds,
                    force: false,
                    parent_id: op_id.to_owned(),
                    ratios: job.ratios,
                };
                let request = if method == "rebuild" {
                    ServerRequest::Evacuate(spec)
                } else {
                    ServerRequest::Migrate(spec)
                };
                let taken = self.operations.contains_key(&start.operation_id);
                if taken {
                    Err(format!("operation id {} is taken", start.operation_id))
                } else {
                    self.apply_request(revision, env, start, request)
                }
            };
            let item = &mut self.operations.get_mut(op_id).expect("checked").items[idx];
            match result {
                Ok(()) => {
                    item.state = ItemState::Running;
                    item.operation_id = start.operation_id.clone();
                    item.destination_host_id = start.host_id.clone();
                }
                Err(why) => {
                    item.state = ItemState::Failed;
                    item.message = why;
                }
            }
        }
        self.check_job_done(revision, env, op_id);
        Ok(self.operation_outcome(op_id))
    }

    /// Starts one item's move as the server request it is; its changes become this entry's.
    fn apply_request(
        &mut self,
        revision: u64,
        env: &Envelope,
        start: &ItemStart,
        request: ServerRequest,
    ) -> Result<(), String> {
        let cmd = Command::ServerRequest {
            server_id: start.server_id.clone(),
            operation_id: start.operation_id.clone(),
            request,
        };
        let inner = Envelope {
            command: cmd,
            ..env.clone()
        };
        match self.apply_server(revision, &inner) {
            Ok((_, change)) => {
                self.more_changes.extend(change);
                Ok(())
            }
            Err(r) => Err(r.to_string()),
        }
    }

    /// An item's server operation ended.
    pub(super) fn item_finished(
        &mut self,
        revision: u64,
        env: &Envelope,
        parent: &str,
        server_id: &str,
        state: OpState,
        message: &str,
    ) {
        let Some(op) = self.operations.get_mut(parent) else {
            return;
        };
        let running = op
            .items
            .iter_mut()
            .find(|i| i.server_id == server_id && i.state == ItemState::Running);
        if let Some(item) = running {
            item.state = match state {
                OpState::Succeeded => ItemState::Succeeded,
                OpState::Cancelled => ItemState::Cancelled,
                _ => ItemState::Failed,
            };
            item.message = message.to_owned();
            op.meta.touch(revision, env.time_ms);
        }
        self.check_job_done(revision, env, parent);
        let change = op_change(&self.operations[parent]);
        self.more_changes.push(change);
    }

    pub(super) fn cancel_host_job(
        &mut self,
        revision: u64,
        env: &Envelope,
        op_id: &str,
    ) -> Applied {
        let op = self
            .operations
            .get_mut(op_id)
            .expect("checked by the caller");
        op.cancel_requested = true;
        for item in op
            .items
            .iter_mut()
            .filter(|i| i.state == ItemState::Pending)
        {
            item.state = ItemState::Cancelled;
            item.message = "cancelled before it started".into();
        }
        op.meta.touch(revision, env.time_ms);
        self.check_job_done(revision, env, op_id);
        Ok(self.operation_outcome(op_id))
    }

    /// Ends the job once every item has.
    fn check_job_done(&mut self, revision: u64, env: &Envelope, op_id: &str) {
        let op = &self.operations[op_id];
        if op.state.finished() || op.items.iter().any(|i| !i.state.finished()) {
            return;
        }
        let total = op.items.len();
        let ok = op
            .items
            .iter()
            .filter(|i| i.state == ItemState::Succeeded)
            .count();
        let state = if op.cancel_requested {
            OpState::Cancelled
        } else if ok == total {
            OpState::Succeeded
        } else if ok == 0 {
            OpState::Failed
        } else {
            OpState::PartiallySucceeded
        };
        let message = match total {
            0 => "no servers to move".to_owned(),
            _ => format!("{ok} of {total} servers moved"),
        };
        self.finish_operation_as(revision, env, op_id, state, &message);
    }

    fn operation_outcome(&self, op_id: &str) -> (Outcome, Option<Change<'static>>) {
        let op = &self.operations[op_id];
        (
            Outcome::Operation(Box::new(op.clone())),
            Some(op_change(op)),
        )
    }
}

/// The event of an operation changing by itself (no server or host change).
pub(super) fn op_change(op: &super::Operation) -> Change<'static> {
    Change {
        resource_type: "operation",
        resource_id: op.id.clone(),
        resource_name: op.kind.clone(),
        action: EventAction::Updated,
        project_id: op.project_id.clone(),
    }
}

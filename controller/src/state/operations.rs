//! Durable operations (I5): every multi-step action is a record in replicated state with its
//! current step, so whichever controller leads can resume it and users can follow it. A
//! server's operations are also its action list (`server action list`).
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Envelope, Meta, State};

/// Finished operations kept (oldest forgotten first); running ones are always kept.
pub const FINISHED_OPERATION_RETENTION: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A multi-server operation with some items failed.
    PartiallySucceeded,
}

impl OpState {
    pub fn finished(self) -> bool {
        self != OpState::Running
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    /// What it does: "create", "start", "stop", "reboot", "reboot --hard", "delete", …
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    pub resource_name: String,
    pub project_id: String,
    /// Who asked (user name; `controller-<id>` for the controller's own work).
    pub actor: String,
    pub request_id: String,
    pub state: OpState,
    /// The step it is at (or ended at).
    pub step: String,
    /// Progress note or, when it failed, the reason.
    pub message: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub meta: Meta,
    /// The host operation this one is an item of; empty at the top level.
    pub parent_id: String,
    /// Progress of the current step, as the agent last reported it.
    pub progress: Option<Progress>,
    /// A cancel was asked for; the executor winds the operation down.
    pub cancel_requested: bool,
    /// Per-server outcomes of a host evacuation or drain.
    pub items: Vec<OpItem>,
    /// What a host evacuation or drain does; `None` for other operations.
    pub job: Option<super::host_jobs::HostJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub percent: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ItemState {
    pub fn finished(self) -> bool {
        !matches!(self, ItemState::Pending | ItemState::Running)
    }
}

/// One server of a host evacuation or drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpItem {
    pub server_id: String,
    pub server_name: String,
    /// "rebuild", "live_migrate" or "cold_migrate".
    pub method: String,
    pub state: ItemState,
    pub message: String,
    /// Host it goes to; empty until it starts.
    pub destination_host_id: String,
    /// The operation moving it; empty until it starts.
    pub operation_id: String,
}

/// The fields an operation starts with.
pub(super) struct NewOperation<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub resource_name: &'a str,
    pub project_id: &'a str,
    pub step: &'a str,
}

impl State {
    pub(super) fn start_operation(&mut self, revision: u64, env: &Envelope, new: NewOperation<'_>) {
        let op = Operation {
            id: new.id.to_owned(),
            kind: new.kind.to_owned(),
            resource_type: new.resource_type.to_owned(),
            resource_id: new.resource_id.to_owned(),
            resource_name: new.resource_name.to_owned(),
            project_id: new.project_id.to_owned(),
            actor: env.actor.clone(),
            request_id: env.request_id.clone(),
            state: OpState::Running,
            step: new.step.to_owned(),
            message: String::new(),
            started_at_ms: env.time_ms,
            finished_at_ms: 0,
            meta: Meta::new(revision, env.time_ms),
            parent_id: String::new(),
            progress: None,
            cancel_requested: false,
            items: Vec::new(),
            job: None,
        };
        self.operations.insert(op.id.clone(), op);
    }

    /// Moves a running operation to another step.
    pub(super) fn operation_step(&mut self, revision: u64, env: &Envelope, id: &str, step: &str) {
        if let Some(op) = self.operations.get_mut(id) {
            if !op.state.finished() && op.step != step {
                op.step = step.to_owned();
                op.meta.touch(revision, env.time_ms);
            }
        }
    }

    /// Ends a running operation (an already finished one is left as it is).
    pub(super) fn finish_operation(
        &mut self,
        revision: u64,
        env: &Envelope,
        id: &str,
        ok: bool,
        message: &str,
    ) {
        let state = if ok {
            OpState::Succeeded
        } else {
            OpState::Failed
        };
        self.finish_operation_as(revision, env, id, state, message);
    }

    /// Ends a running operation in `state`; an item of a host operation reports to its parent.
    pub(super) fn finish_operation_as(
        &mut self,
        revision: u64,
        env: &Envelope,
        id: &str,
        state: OpState,
        message: &str,
    ) {
        let Some(op) = self.operations.get_mut(id) else {
            return;
        };
        if op.state.finished() {
            return;
        }
        op.state = state;
        op.message = message.to_owned();
        if state == OpState::Succeeded {
            op.step = "done".into();
        }
        op.progress = None;
        op.finished_at_ms = env.time_ms;
        op.meta.touch(revision, env.time_ms);
        let parent = op.parent_id.clone();
        let resource = op.resource_id.clone();
        self.finished_operations.push_back(id.to_owned());
        while self.finished_operations.len() > FINISHED_OPERATION_RETENTION {
            if let Some(old) = self.finished_operations.pop_front() {
                self.operations.remove(&old);
            }
        }
        if !parent.is_empty() {
            self.item_finished(revision, env, &parent, &resource, state, message);
        }
    }

    pub fn operation(&self, id: &str) -> Option<&Operation> {
        self.operations.get(id)
    }

    pub fn operations_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Operation> + 'a {
        super::page_after(&self.operations, after)
    }

    /// Running operations, for the leader's executor.
    pub fn running_operations(&self) -> impl Iterator<Item = &Operation> {
        self.operations.values().filter(|o| !o.state.finished())
    }
}

/// Finished-operation ids in finishing order (for retention).
pub(super) type FinishedOrder = VecDeque<String>;

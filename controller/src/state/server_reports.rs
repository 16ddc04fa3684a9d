//! Agent reports (I6, I7): a host's full list of what it holds moves its servers and their
//! operations forward — boots become ACTIVE, stops SHUTOFF, failed boots are rescheduled or go
//! to ERROR, guests that powered off by themselves are recorded as stopped.
use super::operations::NewOperation;
use super::servers::{
    push_operation, DesiredPower, Fault, ObservedServer, PowerState, Server, ServerStatus,
    MAX_BOOT_ATTEMPTS,
};
use super::{Change, Envelope, Outcome, Rejection, State};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

impl State {
    pub(super) fn observe(
        &mut self,
        revision: u64,
        env: &Envelope,
        host_id: &str,
        lease_id: u64,
        observed: &[ObservedServer],
    ) -> Applied {
        let host = self.existing_host(host_id)?;
        if host.lease_id != lease_id {
            return Err(Rejection::FailedPrecondition(format!(
                "a report under lease {lease_id} of host {:?}, which holds lease {} now",
                host.info.hostname, host.lease_id
            )));
        }
        let mine: Vec<String> = self.placed_on(host_id).map(|s| s.id.clone()).collect();
        let mut changes = Vec::new();
        for id in mine {
            let current = self.servers[&id].clone();
            let seen = observed
                .iter()
                .find(|o| o.id == id && o.generation == current.placement_generation);
            if current.status == ServerStatus::Deleting && seen.is_none() {
                changes.extend(self.finish_delete(revision, env, current).1);
                continue;
            }
            let next = self.advance(revision, env, current.clone(), seen);
            if next != current {
                changes.extend(self.store_server(revision, env, next)?.1);
            }
        }
        changes.extend(self.arrived_live(revision, env, host_id, observed)?);
        let changed = changes.len();
        let mut changes = changes.into_iter();
        let first = changes.next();
        self.more_changes.extend(changes);
        Ok((Outcome::Observed { changed }, first))
    }

    /// A server's next state given what its host reports.
    fn advance(
        &mut self,
        revision: u64,
        env: &Envelope,
        mut s: Server,
        seen: Option<&ObservedServer>,
    ) -> Server {
        let Some(seen) = seen else {
            // Not there yet (a boot in progress) or gone: the agent converges it.
            s.power_state = PowerState::NoState;
            return s;
        };
        s.power_state = seen.power;
        if self.advance_move(revision, env, &mut s, seen) {
            return s;
        }
        let op = s.current_operation_id.clone();
        if !seen.error.is_empty() {
            s.fault = Some(Fault {
                message: seen.error.clone(),
                time_ms: env.time_ms,
            });
            if s.status == ServerStatus::Build && s.boot_failure.is_empty() {
                s.failed_hosts.push(s.host_id.clone());
                s.boot_failure = seen.error.clone();
                if s.failed_hosts.len() as u32 >= MAX_BOOT_ATTEMPTS {
                    let reason = format!(
                        "the boot failed on {} hosts; last failure: {}",
                        s.failed_hosts.len(),
                        seen.error
                    );
                    self.fail_boot(revision, env, &mut s, reason);
                } else {
                    s.task_state = "rescheduling".into();
                    self.operation_step(revision, env, &op, "rescheduling");
                }
            }
            return s;
        }
        let down = matches!(seen.power, PowerState::Shutdown | PowerState::Crashed);
        match s.task_state.as_str() {
            "spawning" if seen.power == PowerState::Running => {
                s.status = ServerStatus::Active;
                s.task_state.clear();
                s.launched_at_ms = env.time_ms;
                s.fault = None;
                self.finish_operation(revision, env, &op, true, "");
            }
            "powering-on" if seen.power == PowerState::Running => {
                s.status = ServerStatus::Active;
                s.task_state.clear();
                self.finish_operation(revision, env, &op, true, "");
            }
            "powering-off" if down => {
                s.status = ServerStatus::Shutoff;
                s.task_state.clear();
                self.finish_operation(revision, env, &op, true, "");
            }
            "" if s.status == ServerStatus::Active && down => {
                // Shut down from inside the guest, or crashed: like Nova's power-state sync,
                // record it as stopped rather than start it again behind the user's back.
                s.status = ServerStatus::Shutoff;
                s.desired_power = DesiredPower::Shutdown;
                let id = format!("{}-stopped-{revision}", s.id);
                self.start_operation(
                    revision,
                    env,
                    NewOperation {
                        id: &id,
                        kind: "stop (observed)",
                        resource_type: "server",
                        resource_id: &s.id,
                        resource_name: &s.name,
                        project_id: &s.project_id,
                        step: "done",
                    },
                );
                let note = "the server shut down by itself (from inside the guest, or it crashed)";
                self.finish_operation(revision, env, &id, true, note);
                push_operation(&mut s, &id);
            }
            _ => {}
        }
        s
    }

    pub(super) fn fail_boot(
        &mut self,
        revision: u64,
        env: &Envelope,
        s: &mut Server,
        reason: String,
    ) {
        s.status = ServerStatus::Error;
        s.task_state.clear();
        s.fault = Some(Fault {
            message: reason.clone(),
            time_ms: env.time_ms,
        });
        self.finish_operation(revision, env, &s.current_operation_id, false, &reason);
    }

    /// Boots under way on a host that went down are tried elsewhere (the leader reschedules
    /// them like a failed boot; the copy on the dead host is stale once the generation moves).
    pub(super) fn reschedule_boots_of(&mut self, revision: u64, env: &Envelope, host_id: &str) {
        let building: Vec<String> = self
            .placed_on(host_id)
            .filter(|s| s.status == ServerStatus::Build && s.boot_failure.is_empty())
            .map(|s| s.id.clone())
            .collect();
        for id in building {
            let mut s = self.servers[&id].clone();
            let reason = format!(
                "host {} went down during the boot",
                self.hosts[host_id].info.hostname
            );
            s.failed_hosts.push(host_id.to_owned());
            s.boot_failure = reason.clone();
            if s.failed_hosts.len() as u32 >= MAX_BOOT_ATTEMPTS {
                let why = format!(
                    "the boot failed on {} hosts; last failure: {reason}",
                    s.failed_hosts.len()
                );
                self.fail_boot(revision, env, &mut s, why);
            } else {
                s.task_state = "rescheduling".into();
                self.operation_step(revision, env, &s.current_operation_id, "rescheduling");
            }
            if let Ok((_, Some(change))) = self.store_server(revision, env, s) {
                self.more_changes.push(change);
            }
        }
    }
}

//! The leader's side of the agents: who is connected, their heartbeats, and the background
//! work that turns time passing into commands — hosts whose lease ran out are marked down,
//! boots that failed on a host are rescheduled, reboot steps are sent to the host's agent.
//! All of it runs on every controller but acts only while it leads; a new leader starts with
//! empty memory and gives every host a full lease period from the moment it took over.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::Api;
use crate::scheduler::{self, AllocationRatios};
use crate::state::{Command, ServerStatus, State};

/// Lease timing, from the controller's configuration.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    pub ttl: Duration,
    pub heartbeat_interval: Duration,
    /// Added to the TTL before a host is declared down (I7: the agent stops trusting its lease
    /// after the TTL, counted from before the controller's clock started, so it has stopped
    /// starting anything well before the host is declared down).
    pub grace: Duration,
}

impl Default for LeaseSettings {
    fn default() -> LeaseSettings {
        LeaseSettings {
            ttl: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(1),
            grace: Duration::from_secs(2),
        }
    }
}

struct Session {
    lease_id: u64,
    tx: mpsc::Sender<pb::ControllerMessage>,
    /// Command steps sent in this session (resent in the next one).
    sent: BTreeSet<(String, String)>,
}

/// Connected agents and their heartbeats, kept in the leader's memory only.
#[derive(Default)]
pub struct AgentHub {
    sessions: Mutex<HashMap<String, Session>>,
    /// Host id → (lease id, last heartbeat).
    heartbeats: Mutex<HashMap<String, (u64, Instant)>>,
    queries: Mutex<HashMap<u64, oneshot::Sender<pb::AgentQueryResult>>>,
    next_query: Mutex<u64>,
}

impl AgentHub {
    pub fn attach(&self, host_id: &str, lease_id: u64, tx: mpsc::Sender<pb::ControllerMessage>) {
        self.heartbeats
            .lock()
            .insert(host_id.to_owned(), (lease_id, Instant::now()));
        self.sessions.lock().insert(
            host_id.to_owned(),
            Session {
                lease_id,
                tx,
                sent: BTreeSet::new(),
            },
        );
    }

    /// Forgets a session that ended (unless a newer one replaced it).
    pub fn detach(&self, host_id: &str, lease_id: u64) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(host_id)
            .is_some_and(|s| s.lease_id == lease_id)
        {
            sessions.remove(host_id);
        }
    }

    /// Records a heartbeat; false when the lease is not the host's current one.
    pub fn heartbeat(&self, host_id: &str, lease_id: u64) -> bool {
        let mut beats = self.heartbeats.lock();
        match beats.get_mut(host_id) {
            Some(entry) if entry.0 == lease_id => {
                entry.1 = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Time since the host's last heartbeat, as this controller (the leader) saw it.
    pub fn lease_age(&self, host_id: &str) -> Option<Duration> {
        self.heartbeats
            .lock()
            .get(host_id)
            .map(|(_, at)| at.elapsed())
    }

    pub fn connected(&self, host_id: &str) -> bool {
        self.sessions.lock().contains_key(host_id)
    }

    /// Asks a host's agent something and waits for the answer.
    pub async fn query(
        &self,
        host_id: &str,
        query: pb::agent_query::Query,
        within: Duration,
    ) -> Result<pb::AgentQueryResult, String> {
        let tx = self
            .sessions
            .lock()
            .get(host_id)
            .map(|s| s.tx.clone())
            .ok_or_else(|| "the host's agent is not connected to the leader".to_owned())?;
        let query_id = {
            let mut next = self.next_query.lock();
            *next += 1;
            *next
        };
        let (done, answer) = oneshot::channel();
        self.queries.lock().insert(query_id, done);
        let msg = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Query(pb::AgentQuery {
                query_id,
                query: Some(query),
            })),
        };
        let result = async {
            tx.send(msg)
                .await
                .map_err(|_| "the agent disconnected".to_owned())?;
            tokio::time::timeout(within, answer)
                .await
                .map_err(|_| format!("the agent did not answer within {} s", within.as_secs()))?
                .map_err(|_| "the agent disconnected".to_owned())
        }
        .await;
        self.queries.lock().remove(&query_id);
        result
    }

    pub fn answer(&self, result: pb::AgentQueryResult) {
        if let Some(done) = self.queries.lock().remove(&result.query_id) {
            let _ = done.send(result);
        }
    }

    /// Sends a command step to a host's agent unless this session already got it.
    fn send_once(&self, host_id: &str, command: pb::AgentCommand) {
        let mut sessions = self.sessions.lock();
        let Some(session) = sessions.get_mut(host_id) else {
            return;
        };
        let key = (command.operation_id.clone(), command.step.clone());
        if session.sent.contains(&key) {
            return;
        }
        let msg = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Command(command)),
        };
        if session.tx.try_send(msg).is_ok() {
            session.sent.insert(key);
        }
    }

    fn clear(&self) {
        self.heartbeats.lock().clear();
    }
}

/// What the leader should propose now, computed from a state snapshot (pure).
#[derive(Debug, Default, PartialEq)]
pub struct Duties {
    pub down: Vec<(String, u64)>,
    pub reschedule: Vec<(String, String)>,
    /// Command steps to send: (host id, command).
    pub commands: Vec<(String, pb::AgentCommand)>,
    /// Host jobs (evacuations, drains) whose next items should start: (operation id, items).
    pub advance: Vec<(String, Vec<crate::state::ItemStart>)>,
}

/// Hosts whose last heartbeat is older than `limit`, given `beats`; hosts without an entry get
/// one stamped `now` (their period starts now).
fn expired(
    state: &State,
    beats: &mut HashMap<String, (u64, Instant)>,
    now: Instant,
    limit: Duration,
) -> Vec<(String, u64)> {
    let mut down = Vec::new();
    for host in state.hosts().filter(|h| h.up) {
        let entry = beats.entry(host.id.clone()).or_insert((host.lease_id, now));
        if entry.0 != host.lease_id {
            *entry = (host.lease_id, now);
        }
        if now.duration_since(entry.1) > limit {
            down.push((host.id.clone(), host.lease_id));
        }
    }
    down
}

/// Reschedules and command steps due in `state` (pure).
pub fn duties(state: &State, ratios: &AllocationRatios) -> Duties {
    let mut duties = Duties::default();
    let hosts: Vec<_> = state.hosts().map(crate::state::host_view).collect();
    for s in state.servers() {
        match s.task_state.as_str() {
            "rescheduling" if s.status == ServerStatus::Build => {
                let Some(image) = state.image(&s.image.id) else {
                    continue;
                };
                let mut request = crate::state::placement_request(&s.flavor, image);
                request.exclude_hosts = s.failed_hosts.iter().cloned().collect();
                request.group = state.server_group_view_for(s);
                request.availability_zone =
                    (!s.availability_zone.is_empty()).then(|| s.availability_zone.clone());
                let target = scheduler::place(&hosts, ratios, &request)
                    .ok()
                    .and_then(|v| v.into_iter().next())
                    .unwrap_or_default();
                duties.reschedule.push((s.id.clone(), target));
            }
            "rebuilding" => {
                duties.commands.push((
                    s.host_id.clone(),
                    pb::AgentCommand {
                        operation_id: s.current_operation_id.clone(),
                        step: s.task_state.clone(),
                        payload: Some(pb::agent_command::Payload::Rebuild(pb::RebuildCommand {
                            server_id: s.id.clone(),
                            image_id: s.image.id.clone(),
                            image_sha256: s.image.sha256.clone(),
                            image_size_bytes: s.image.size_bytes,
                            image_disk_format: super::convert::disk_format(s.image.disk_format)
                                as i32,
                        })),
                    },
                ));
            }
            "image_snapshot" | "image_backup" => {
                let op = &s.current_operation_id;
                let target = state
                    .images()
                    .find(|i| i.upload.as_ref().is_some_and(|u| &u.id == op));
                if let Some(image) = target {
                    duties.commands.push((
                        s.host_id.clone(),
                        pb::AgentCommand {
                            operation_id: op.clone(),
                            step: s.task_state.clone(),
                            payload: Some(pb::agent_command::Payload::Snapshot(
                                pb::SnapshotCommand {
                                    server_id: s.id.clone(),
                                    image_id: image.id.clone(),
                                    disk_format: pb::ImageDiskFormat::Qcow2 as i32,
                                },
                            )),
                        },
                    ));
                }
            }
            "rebooting" | "rebooting_hard" => {
                duties.commands.push((
                    s.host_id.clone(),
                    pb::AgentCommand {
                        operation_id: s.current_operation_id.clone(),
                        step: s.task_state.clone(),
                        payload: Some(pb::agent_command::Payload::Reboot(pb::RebootCommand {
                            server_id: s.id.clone(),
                            hard: s.task_state == "rebooting_hard",
                        })),
                    },
                ));
            }
            _ => {}
        }
    }
    super::move_duties::add(state, ratios, &mut duties);
    duties
}

/// The leader's loop: runs forever on every controller; acts while this one leads.
pub async fn run(api: Api, hub: Arc<AgentHub>, lease: LeaseSettings, ratios: AllocationRatios) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut revisions = api.node.revisions();
    let actor = format!("controller-{}", api.node.id());
    let mut proposed: HashMap<String, Instant> = HashMap::new();
    loop {
        // Every change (an item of a host evacuation finishing, a migration step) is acted on
        // at once, at most every 50 ms; time passing (leases) every 250 ms.
        tokio::select! {
            _ = tick.tick() => {}
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if api.node.status().leader_id != api.node.id() {
            hub.clear();
            continue;
        }
        let (down, duties) = {
            let state = api.node.state();
            let mut beats = hub.heartbeats.lock();
            let down = expired(&state, &mut beats, Instant::now(), lease.ttl + lease.grace);
            (down, duties(&state, &ratios))
        };
        // Proposals are not repeated while one is in flight (they are idempotent anyway).
        proposed.retain(|_, at| at.elapsed() < Duration::from_secs(5));
        for (host_id, lease_id) in down {
            if proposed
                .insert(format!("down:{host_id}"), Instant::now())
                .is_some()
            {
                continue;
            }
            tracing::warn!(host = %host_id, "host lease expired: marking the host down");
            let cmd = Command::MarkHostDown { host_id, lease_id };
            spawn_propose(&api, &actor, cmd);
        }
        for (server_id, host_id) in duties.reschedule {
            if proposed
                .insert(format!("resched:{server_id}"), Instant::now())
                .is_some()
            {
                continue;
            }
            let cmd = Command::RescheduleServer {
                server_id,
                host_id,
                ratios,
            };
            spawn_propose(&api, &actor, cmd);
        }
        for (host_id, command) in duties.commands {
            hub.send_once(&host_id, command);
        }
        for (operation_id, starts) in duties.advance {
            let key = format!("job:{operation_id}:{}", starts[0].server_id);
            if proposed.insert(key, Instant::now()).is_some() {
                continue;
            }
            let cmd = Command::AdvanceHostJob {
                operation_id,
                starts,
            };
            spawn_propose(&api, &actor, cmd);
        }
    }
}

fn spawn_propose(api: &Api, actor: &str, cmd: Command) {
    let (api, actor) = (api.clone(), actor.to_owned());
    tokio::spawn(async move {
        if let Err(e) = api.propose(String::new(), actor, cmd).await {
            tracing::debug!("a leader duty was not applied: {}", e.message());
        }
    });
}

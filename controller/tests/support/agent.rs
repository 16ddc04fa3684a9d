//! A scripted agent speaking the real AgentService protocol over gRPC (register, heartbeats,
//! desired state in, observed state out), so the controllers' side of compute can be tested
//! without libvirt. It "runs" whatever the desired state asks for unless told to fail.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_message::Msg as In;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::v1::controller_message::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// What the fake agent holds for one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub generation: u64,
    pub power: pb::ServerPowerState,
    pub error: String,
}

#[derive(Default)]
pub struct Shared {
    pub host_id: String,
    pub lease_id: u64,
    pub desired: Option<pb::DesiredState>,
    pub local: BTreeMap<String, Local>,
    /// Server id → the error to report instead of booting it.
    pub fail_boot: BTreeMap<String, String>,
    /// Every boot on this host fails with this error.
    pub fail_all: Option<String>,
    /// Desired states are taken in but not acted on until cleared (a slow boot).
    pub hold: bool,
    pub commands: Vec<pb::AgentCommand>,
    /// Command step name → the error to answer it with (e.g. "migrate").
    pub fail_steps: BTreeMap<String, String>,
    /// Command steps taken in but not answered (a migration still copying); an
    /// "abort_migration" ends a muted "migrate" of its operation as libvirt's abort would.
    pub mute_steps: std::collections::BTreeSet<String>,
    pub registered: u32,
    /// Converge and report on the next heartbeat tick.
    pub resend: bool,
}

pub struct FakeAgent {
    pub hostname: String,
    pub shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn channel(address: &str) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
}

impl FakeAgent {
    /// Lets a held agent act on the newest desired state and report it.
    pub fn release(&self) {
        self.with(|s| s.hold = false);
        self.shared.lock().unwrap().resend = true;
    }

    /// Starts a session loop against the controllers' peer addresses (following the leader).
    pub fn start(hostname: &str, peers: Vec<String>) -> FakeAgent {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let (name, state) = (hostname.to_owned(), shared.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let target = peers[next % peers.len()].clone();
                next += 1;
                tokio::select! {
                    hint = session(&name, &target, &state) => {
                        if let Some(leader) = hint {
                            if let Some(i) = peers.iter().position(|p| *p == leader) {
                                next = i;
                            }
                        }
                    }
                    _ = &mut stop_rx => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = &mut stop_rx => return,
                }
            }
        });
        FakeAgent {
            hostname: hostname.to_owned(),
            shared,
            stop: Some(stop_tx),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        f(&mut self.shared.lock().unwrap())
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn observed(shared: &Shared) -> pb::AgentObserved {
    pb::AgentObserved {
        desired_revision: shared.desired.as_ref().map(|d| d.revision).unwrap_or(0),
        servers: shared
            .local
            .iter()
            .map(|(id, l)| pb::ObservedServer {
                id: id.clone(),
                state: l.power as i32,
                placement_generation: l.generation,
                domain_state: String::new(),
                error: l.error.clone(),
            })
            .collect(),
        // The fake wires every port of the servers it holds at once.
        wired_ports: shared
            .desired
            .iter()
            .flat_map(|d| &d.servers)
            .filter(|s| shared.local.contains_key(&s.id))
            .flat_map(|s| s.ports.iter().map(|p| p.port_id.clone()))
            .collect(),
    }
}

/// Converges the local copies to the desired state (the fake hypervisor).
fn converge(shared: &mut Shared) {
    let Some(desired) = shared.desired.clone() else {
        return;
    };
    if shared.hold {
        return;
    }
    // A server being migrated in is the migration's business until ownership moves.
    let wanted: BTreeMap<_, _> = desired
        .servers
        .iter()
        .filter(|s| !s.incoming_migration)
        .map(|s| (s.id.clone(), s))
        .collect();
    shared.local.retain(|id, l| {
        wanted
            .get(id)
            .is_some_and(|d| d.placement_generation == l.generation)
    });
    for (id, d) in wanted {
        let failure = shared
            .fail_boot
            .get(&id)
            .or(shared.fail_all.as_ref())
            .cloned();
        if let Some(err) = failure.filter(|_| !shared.local.contains_key(&id)) {
            shared.local.insert(
                id,
                Local {
                    generation: d.placement_generation,
                    power: pb::ServerPowerState::Unspecified,
                    error: err,
                },
            );
            continue;
        }
        let power = pb::ServerPowerState::try_from(d.power_state).unwrap_or_default();
        shared.local.insert(
            id,
            Local {
                generation: d.placement_generation,
                power,
                error: String::new(),
            },
        );
    }
}

/// One session; returns the leader hint when the controller was not the leader.
async fn session(hostname: &str, address: &str, state: &Arc<Mutex<Shared>>) -> Option<String> {
    let (tx, rx) = mpsc::channel(16);
    let register = pb::AgentMessage {
        msg: Some(In::Register(pb::AgentRegister {
            hostname: hostname.to_owned(),
            address: "127.0.0.1".into(),
            capacity: Some(pb::HostCapacity {
                vcpus: 8,
                ram_mib: 8192,
                disk_gib: 100,
            }),
            hypervisor_type: "qemu".into(),
            hypervisor_version: "fake".into(),
            cpu_model: "fake".into(),
            availability_zone: "nova".into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    };
    tx.send(register).await.ok()?;
    let mut client = AgentServiceClient::new(channel(address));
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return status
                .metadata()
                .get(flotilla_proto::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }
    };
    let mut beat = tokio::time::interval(Duration::from_millis(300));
    let mut seq = 0;
    loop {
        tokio::select! {
            m = inbound.next() => {
                let Some(Ok(m)) = m else { return None };
                let reply = {
                    let mut s = state.lock().unwrap();
                    match m.msg {
                        Some(Out::Registered(r)) => {
                            s.host_id = r.host_id;
                            s.lease_id = r.lease_id;
                            s.registered += 1;
                            s.resend = true;
                            None
                        }
                        Some(Out::DesiredState(d)) => {
                            s.desired = Some(d);
                            converge(&mut s);
                            Some(In::Observed(observed(&s)))
                        }
                        Some(Out::Command(c)) => {
                            s.commands.push(c.clone());
                            if c.step == "abort_migration" {
                                s.mute_steps.remove("migrate");
                                Some(In::StepResult(pb::AgentStepResult {
                                    operation_id: c.operation_id,
                                    step: "migrate".into(),
                                    finished: true,
                                    ok: false,
                                    message: "migration job: operation aborted".into(),
                                    progress: None,
                                }))
                            } else if s.mute_steps.contains(&c.step) {
                                // Still running: report progress, as a copying migration does.
                                Some(In::StepResult(pb::AgentStepResult {
                                    operation_id: c.operation_id,
                                    step: c.step,
                                    finished: false,
                                    ok: false,
                                    message: String::new(),
                                    progress: Some(pb::OperationProgress {
                                        phase: "copying memory".into(),
                                        percent: 42,
                                        bytes_done: 42 << 20,
                                        bytes_total: 100 << 20,
                                    }),
                                }))
                            } else {
                            let failure = s.fail_steps.get(&c.step).cloned();
                            let message = match (&failure, c.step.as_str()) {
                                (Some(why), _) => why.clone(),
                                // A destination answers with the domain XML it wants.
                                (None, "prepare_destination") => "<domain type='qemu'/>".into(),
                                (None, _) => String::new(),
                            };
                            Some(In::StepResult(pb::AgentStepResult {
                                operation_id: c.operation_id,
                                step: c.step,
                                finished: true,
                                ok: failure.is_none(),
                                message,
                                progress: None,
                            }))
                            }
                        }
                        Some(Out::LeaseRevoked(_)) => return None,
                        _ => None,
                    }
                };
                if let Some(msg) = reply {
                    if tx.send(pb::AgentMessage { msg: Some(msg) }).await.is_err() {
                        return None;
                    }
                }
            }
            _ = beat.tick() => {
                seq += 1;
                let (lease_id, report) = {
                    let mut s = state.lock().unwrap();
                    let report = std::mem::take(&mut s.resend).then(|| {
                        converge(&mut s);
                        observed(&s)
                    });
                    (s.lease_id, report)
                };
                if lease_id == 0 { continue; }
                if let Some(o) = report {
                    if tx.send(pb::AgentMessage { msg: Some(In::Observed(o)) }).await.is_err() { return None; }
                }
                let hb = pb::AgentMessage { msg: Some(In::Heartbeat(pb::AgentHeartbeat { lease_id, seq })) };
                if tx.send(hb).await.is_err() { return None; }
            }
        }
    }
}

//! The agent's session with the controllers (`AgentService.Session`).
//!
//! [`run`] keeps one session open against the leader: it tries the configured controllers in
//! turn, follows the `x-flotilla-leader` hint of a follower at once, and otherwise backs off
//! (0.2 s doubling to 5 s) between attempts. Each session:
//! 1. registers the host, with every Flotilla server found on it (a fresh scan);
//! 2. takes the lease from `registered` and sends the scan as the first observed state;
//! 3. then, concurrently: sends a heartbeat every `heartbeat_interval_ms`; hands desired states
//!    to the executor (through [`Link`]); passes commands and queries to the dispatcher; sends
//!    the observed state whenever the executor publishes one that differs from the last sent;
//!    sends what the dispatcher puts in the outbox (step and query results).
//!
//! A session ends when the stream breaks, the lease is revoked, or no heartbeat has been
//! acknowledged for a whole lease TTL (a silent controller); the agent then registers again.
//!
//! # Lease
//! [`Lease`] implements the protocol's rule: the lease is valid until `lease_ttl_ms` after the
//! agent *sent* the newest heartbeat the controller acknowledged. Registration counts as the
//! first such heartbeat (the controller starts the lease when it answers, after the agent sent
//! `register`). The lease survives a broken stream until it runs out, and is dropped at once
//! when the controller revokes it.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_message::Msg as In;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::v1::controller_message::Msg as Out;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::transfer::Controllers;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the controller may take to answer `register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

/// The agent's lease (see the module doc).
#[derive(Debug, Default)]
pub struct Lease {
    state: Mutex<LeaseState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct LeaseState {
    lease_id: u64,
    ttl: Duration,
    valid_until: Option<Instant>,
}

impl Lease {
    /// Whether the agent may start anything now.
    pub fn is_valid(&self) -> bool {
        self.state
            .lock()
            .valid_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// The current lease id (0 before the first registration).
    pub fn lease_id(&self) -> u64 {
        self.state.lock().lease_id
    }

    /// When the lease runs (or ran) out: `None` before the first registration. A revoked
    /// lease ran out when it was revoked.
    pub fn valid_until(&self) -> Option<Instant> {
        self.state.lock().valid_until
    }

    /// The TTL of the newest registration; `None` before the first.
    pub fn ttl(&self) -> Option<Duration> {
        let s = self.state.lock();
        s.valid_until.is_some().then_some(s.ttl)
    }

    /// A new lease from a registration sent at `sent`. Returns whether it is valid now.
    fn grant(&self, lease_id: u64, ttl: Duration, sent: Instant) -> bool {
        *self.state.lock() = LeaseState {
            lease_id,
            ttl,
            valid_until: Some(sent + ttl),
        };
        self.is_valid()
    }

    /// The controller acknowledged a heartbeat of `lease_id` sent at `sent`. Returns whether
    /// the lease was invalid before and is valid now.
    fn renew(&self, lease_id: u64, sent: Instant) -> bool {
        let mut s = self.state.lock();
        if s.lease_id != lease_id {
            return false;
        }
        let now = Instant::now();
        let was_valid = s.valid_until.is_some_and(|t| now < t);
        let until = sent + s.ttl;
        if s.valid_until.is_none_or(|t| t < until) {
            s.valid_until = Some(until);
        }
        !was_valid && now < until
    }

    /// The controller revoked the lease: it ends now (an earlier end stays).
    fn revoke(&self) {
        let now = Instant::now();
        let mut s = self.state.lock();
        s.valid_until = s.valid_until.map(|t| t.min(now));
    }
}

/// A command or query from the controller, for the dispatcher.
#[derive(Debug)]
pub enum Inbound {
    Command(Box<pb::AgentCommand>),
    /// With the session it arrived on: its answer is only sent on that session.
    Query {
        session: u64,
        query: pb::AgentQuery,
    },
}

/// Something to send to the controller; `session: Some(n)` only on session `n`.
#[derive(Debug)]
pub struct Outgoing {
    pub session: Option<u64>,
    pub msg: In,
}

/// What the session shares with the executor and the dispatcher.
pub struct Link {
    pub lease: Lease,
    desired: watch::Sender<Option<Arc<pb::DesiredState>>>,
    observed: watch::Sender<Option<pb::AgentObserved>>,
    kick: Notify,
    outbox_tx: mpsc::UnboundedSender<Outgoing>,
    outbox_rx: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    host_id: Mutex<String>,
}

impl Default for Link {
    fn default() -> Self {
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        Link {
            lease: Lease::default(),
            desired: watch::channel(None).0,
            observed: watch::channel(None).0,
            kick: Notify::new(),
            outbox_tx,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            host_id: Mutex::new(String::new()),
        }
    }
}

impl Link {
    /// The newest desired state the controller sent, if any yet.
    pub fn desired(&self) -> Option<Arc<pb::DesiredState>> {
        self.desired.borrow().clone()
    }

    pub fn watch_desired(&self) -> watch::Receiver<Option<Arc<pb::DesiredState>>> {
        self.desired.subscribe()
    }

    /// Publishes the host's observed state; the session sends it when it differs from the
    /// last one sent.
    pub fn publish_observed(&self, observed: pb::AgentObserved) {
        self.observed.send_replace(Some(observed));
    }

    /// The newest observed state published.
    pub fn observed(&self) -> Option<pb::AgentObserved> {
        self.observed.borrow().clone()
    }

    /// Wakes the executor (lease granted, an operation finished).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Waits for [`Link::kick`].
    pub async fn kicked(&self) {
        self.kick.notified().await
    }

    /// Queues a message for the controller (sent on the current or next session).
    pub fn send(&self, out: Outgoing) {
        let _ = self.outbox_tx.send(out);
    }

    /// The host id from the newest registration (empty before the first).
    pub fn host_id(&self) -> String {
        self.host_id.lock().clone()
    }
}

/// Builds the registration message (a fresh scan of the host).
pub type Register = Arc<dyn Fn() -> BoxFuture<'static, pb::AgentRegister> + Send + Sync>;

/// How a session ended.
enum Ended {
    /// A follower named the leader.
    Leader(String),
    /// Registered, then lost (worth retrying at once).
    Lost(String),
    /// Could not register.
    Failed(String),
}

/// Keeps a session with the leader forever (see the module doc). Commands and queries go to
/// `inbound`.
pub async fn run(
    link: Arc<Link>,
    controllers: Arc<Controllers>,
    register: Register,
    inbound: mpsc::UnboundedSender<Inbound>,
) {
    let mut outbox = link
        .outbox_rx
        .lock()
        .take()
        .expect("one session loop per link");
    let addresses = controllers.addresses().to_vec();
    let mut next = 0usize;
    let mut hint: Option<String> = None;
    let mut backoff = MIN_BACKOFF;
    let mut epoch = 0u64;
    loop {
        let address = hint.take().unwrap_or_else(|| {
            next += 1;
            addresses[(next - 1) % addresses.len()].clone()
        });
        epoch += 1;
        let s = Session {
            link: &link,
            controllers: &controllers,
            inbound: &inbound,
            epoch,
        };
        let ended = s.run(&address, &register, &mut outbox).await;
        let pause = match ended {
            Ended::Leader(leader) => {
                tracing::debug!(%address, %leader, "not the leader; following the hint");
                let same = leader == address;
                hint = Some(leader);
                // A hint naming the controller we asked means it is electing: wait a little.
                if same {
                    backoff
                } else {
                    Duration::ZERO
                }
            }
            Ended::Lost(why) => {
                tracing::info!(%address, "session with the controller ended: {why}");
                backoff = MIN_BACKOFF;
                MIN_BACKOFF
            }
            Ended::Failed(why) => {
                tracing::warn!(%address, "could not register with the controller: {why}");
                backoff
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

struct Session<'a> {
    link: &'a Link,
    controllers: &'a Controllers,
    inbound: &'a mpsc::UnboundedSender<Inbound>,
    epoch: u64,
}

/// The leader named in a refusal, if any.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(flotilla_proto::LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn msg(m: In) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

impl Session<'_> {
    async fn run(
        &self,
        address: &str,
        register: &Register,
        outbox: &mut mpsc::UnboundedReceiver<Outgoing>,
    ) -> Ended {
        let mut reg = register().await;
        reg.host_id = self.link.host_id();
        let scanned = reg.servers.clone();
        let channel = match self.controllers.channel(address) {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e),
        };
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.send(msg(In::Register(reg))).await;
        let sent_register = Instant::now();
        let mut client = AgentServiceClient::new(channel);
        let call = tokio::time::timeout(REGISTER_TIMEOUT, async {
            let mut stream = client.session(ReceiverStream::new(rx)).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, tonic::Status>((stream, first))
        });
        let (mut stream, registered) = match call.await {
            Err(_) => return Ended::Failed("no answer to the registration".into()),
            Ok(Err(status)) => {
                return match leader_hint(&status) {
                    Some(leader) => Ended::Leader(leader),
                    None => Ended::Failed(format!("{}: {}", status.code(), status.message())),
                }
            }
            Ok(Ok((
                stream,
                Some(pb::ControllerMessage {
                    msg: Some(Out::Registered(r)),
                }),
            ))) => (stream, r),
            Ok(Ok((_, other))) => {
                return Ended::Failed(format!("expected `registered` first, got {other:?}"))
            }
        };
        let ttl = Duration::from_millis(registered.lease_ttl_ms);
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(50));
        *self.link.host_id.lock() = registered.host_id.clone();
        self.controllers.set_current(address);
        let lease_id = registered.lease_id;
        if self.link.lease.grant(lease_id, ttl, sent_register) {
            self.link.kick();
        }
        tracing::info!(
            %address,
            host_id = %registered.host_id,
            lease_id,
            "registered with the controller"
        );

        // The scan sent with the registration is the first observed state.
        let mut observed_rx = self.link.observed.subscribe();
        let revision = observed_rx
            .borrow_and_update()
            .as_ref()
            .map_or(0, |o| o.desired_revision);
        let wired = self
            .link
            .observed()
            .map(|o| o.wired_ports)
            .unwrap_or_default();
        let mut last_sent = (scanned.clone(), wired.clone());
        let first = pb::AgentObserved {
            desired_revision: revision,
            servers: scanned,
            wired_ports: wired,
        };
        if tx.send(msg(In::Observed(first))).await.is_err() {
            return Ended::Lost("the stream closed".into());
        }

        let mut beat = tokio::time::interval(interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let mut unacked: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut last_ack = Instant::now();
        loop {
            // Biased: an observed state published before a result was queued is sent first.
            tokio::select! {
                biased;
                changed = observed_rx.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let current = observed_rx.borrow_and_update().clone();
                    let sent = |o: &pb::AgentObserved| (o.servers.clone(), o.wired_ports.clone());
                    if let Some(o) = current.filter(|o| sent(o) != last_sent) {
                        last_sent = sent(&o);
                        if tx.send(msg(In::Observed(o))).await.is_err() {
                            return Ended::Lost("the stream closed".into());
                        }
                    }
                }
                m = stream.message() => {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Ok(None) => return Ended::Lost("the controller ended the session".into()),
                        Err(status) => {
                            return match leader_hint(&status) {
                                Some(leader) => Ended::Leader(leader),
                                None => Ended::Lost(format!("{}: {}", status.code(), status.message())),
                            }
                        }
                    };
                    match m.msg {
                        Some(Out::LeaseRenewed(r)) => {
                            while let Some(&(s, sent)) = unacked.front() {
                                if s > r.seq {
                                    break;
                                }
                                unacked.pop_front();
                                if s == r.seq {
                                    last_ack = Instant::now();
                                    if self.link.lease.renew(r.lease_id, sent) {
                                        self.link.kick();
                                    }
                                }
                            }
                        }
                        Some(Out::LeaseRevoked(r)) => {
                            self.link.lease.revoke();
                            return Ended::Lost(format!("the lease was revoked: {}", r.reason));
                        }
                        Some(Out::DesiredState(d)) => {
                            self.link.desired.send_replace(Some(Arc::new(d)));
                        }
                        Some(Out::Command(c)) => {
                            let _ = self.inbound.send(Inbound::Command(Box::new(c)));
                        }
                        Some(Out::Query(q)) => {
                            let _ = self.inbound.send(Inbound::Query { session: self.epoch, query: q });
                        }
                        Some(Out::Registered(_)) | None => {}
                    }
                }
                _ = beat.tick() => {
                    if last_ack.elapsed() > ttl.max(interval * 3) {
                        return Ended::Lost("no heartbeat was acknowledged for a whole lease period".into());
                    }
                    seq += 1;
                    unacked.push_back((seq, Instant::now()));
                    let hb = In::Heartbeat(pb::AgentHeartbeat { lease_id, seq });
                    if tx.send(msg(hb)).await.is_err() {
                        return Ended::Lost("the stream closed".into());
                    }
                }
                Some(out) = outbox.recv() => {
                    if out.session.is_some_and(|s| s != self.epoch) {
                        continue;
                    }
                    if tx.send(msg(out.msg)).await.is_err() {
                        return Ended::Lost("the stream closed".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_counts_from_sending_the_acknowledged_heartbeat() {
        let lease = Lease::default();
        assert!(!lease.is_valid(), "no lease before registering");
        assert_eq!((lease.valid_until(), lease.ttl()), (None, None));
        let ttl = Duration::from_secs(10);
        let long_ago = Instant::now() - Duration::from_secs(11);
        assert!(
            !lease.grant(7, ttl, long_ago),
            "a registration sent a TTL ago grants nothing usable"
        );
        assert!(!lease.is_valid());
        // An acknowledgement of a heartbeat sent just now makes it valid again.
        assert!(lease.renew(7, Instant::now()), "became valid");
        assert!(lease.is_valid());
        assert!(!lease.renew(7, Instant::now()), "was valid already");
        // An acknowledgement for another lease changes nothing.
        lease.revoke();
        assert!(!lease.renew(8, Instant::now()));
        assert!(!lease.is_valid(), "revoked");
        assert!(
            lease.valid_until().is_some_and(|t| t <= Instant::now()),
            "a revoked lease ended when it was revoked (for fencing)"
        );
        assert_eq!(lease.ttl(), Some(ttl));
        // An old heartbeat's late acknowledgement never shortens the lease.
        assert!(lease.grant(9, ttl, Instant::now()));
        lease.renew(9, long_ago);
        assert!(lease.is_valid());
        assert_eq!(lease.lease_id(), 9);
    }
}

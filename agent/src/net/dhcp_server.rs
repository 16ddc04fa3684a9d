//! The DHCP responders: one thread per tenant network's DHCP port (an OVS internal port on
//! `br-int`, e.g. `fd-<8 hex of network id>`, tagged with the network's local VLAN, without
//! an IP address), reading frames from a raw `AF_PACKET` socket bound to that interface and
//! sending back what [`dhcp::decide`] says.
//!
//! Protocol: the agent owns one [`DhcpServers`] and calls [`DhcpServers::sync`] with the
//! interfaces it wants after each reconcile. `sync` is idempotent:
//! - a new interface gets a socket and a thread (an interface that is missing or down is
//!   reported in the result and tried again on the next `sync`);
//! - a running interface gets the new lease table in place (the next frame sees it);
//! - a removed interface's thread is told to stop and joined;
//! - a thread whose socket failed (the interface went down or was deleted) has ended, with
//!   its error logged at warn; the next `sync` opens the interface again.
//!
//! Each thread waits for frames with a 500 ms read timeout and checks its stop flag between
//! reads, so it stops within about half a second; [`Drop`] stops and joins them all.
//! Replies are sent from the interface's own MAC address (the one guests will address), not
//! [`DhcpInterface::server_mac`], unless the interface has none.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};

use super::dhcp::{self, DhcpInterface, Ignored, Outcome};

/// How long a responder waits for a frame before checking whether it should stop.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Why an interface could not be served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no interface named {0}")]
    NoSuchInterface(String),
    #[error("interface {0} is down")]
    Down(String),
    #[error("could not open a packet socket on {name}")]
    Socket {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("interface {0} is not an Ethernet interface")]
    NotEthernet(String),
}

/// Counters of one interface (or of all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// OFFERs, ACKs and NAKs sent.
    pub replies: u64,
    /// DHCP requests that got no reply (unknown MAC, other server, release, decline, …).
    pub ignored: u64,
    /// Replies that could not be sent.
    pub send_errors: u64,
}

impl InterfaceStats {
    fn add(&mut self, other: InterfaceStats) {
        self.replies += other.replies;
        self.ignored += other.ignored;
        self.send_errors += other.send_errors;
    }
}

/// What the responders did since [`DhcpServers::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpStats {
    /// All interfaces, including those removed since.
    pub total: InterfaceStats,
    /// The interfaces in the last `sync`, with whether their thread is running.
    pub interfaces: BTreeMap<String, (InterfaceStats, bool)>,
}

#[derive(Default)]
struct Counters {
    replies: AtomicU64,
    ignored: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> InterfaceStats {
        InterfaceStats {
            replies: self.replies.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// One interface's responder thread and what it shares with it.
struct Responder {
    table: Arc<RwLock<DhcpInterface>>,
    /// The interface's MAC, which replies come from.
    mac: Option<[u8; 6]>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn stop_and_join(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lease table as the thread should see it: replies from the interface's own MAC.
fn effective(mut iface: DhcpInterface, mac: Option<[u8; 6]>) -> DhcpInterface {
    if let Some(mac) = mac {
        iface.server_mac = mac;
    }
    iface
}

#[derive(Default)]
struct State {
    responders: BTreeMap<String, Responder>,
    counters: BTreeMap<String, Arc<Counters>>,
    /// What removed interfaces had counted.
    retired: InterfaceStats,
}

/// The DHCP responders of this host, one per interface (see the module doc).
pub struct DhcpServers {
    state: Mutex<State>,
}

impl Default for DhcpServers {
    fn default() -> Self {
        Self::new()
    }
}

impl DhcpServers {
    pub fn new() -> Self {
        DhcpServers {
            state: Mutex::new(State::default()),
        }
    }

    /// Serves exactly `wanted` (interface name → lease table). Returns the interfaces that
    /// could not be opened, with why; they are tried again on the next call.
    pub fn sync(&self, wanted: BTreeMap<String, DhcpInterface>) -> Vec<(String, String)> {
        let mut state = self.state.lock();
        // Stop the removed responders and reap the dead ones: all told first, then joined.
        let leaving: Vec<String> = state
            .responders
            .iter()
            .filter(|(name, r)| !wanted.contains_key(*name) || !r.running())
            .map(|(name, _)| name.clone())
            .collect();
        let leaving: Vec<Responder> = leaving
            .iter()
            .filter_map(|name| state.responders.remove(name))
            .inspect(|r| r.stop.store(true, Ordering::Relaxed))
            .collect();
        leaving.into_iter().for_each(Responder::stop_and_join);
        let State {
            counters, retired, ..
        } = &mut *state;
        counters.retain(|name, counters| {
            let keep = wanted.contains_key(name);
            if !keep {
                retired.add(counters.snapshot());
            }
            keep
        });

        let mut failed = Vec::new();
        for (name, iface) in wanted {
            if let Some(responder) = state.responders.get(&name) {
                let iface = effective(iface, responder.mac);
                let mut table = responder.table.write();
                if *table != iface {
                    tracing::debug!(interface = %name, leases = iface.leases.len(), "DHCP leases updated");
                    *table = iface;
                }
                continue;
            }
            let counters = state.counters.entry(name.clone()).or_default().clone();
            match start(&name, iface, counters) {
                Ok(responder) => {
                    tracing::debug!(interface = %name, "DHCP responder started");
                    state.responders.insert(name, responder);
                }
                Err(e) => {
                    let message = error_chain(&e);
                    tracing::warn!(interface = %name, error = %message, "no DHCP responder");
                    failed.push((name, message));
                }
            }
        }
        failed
    }

    /// Counters per interface and in total.
    pub fn stats(&self) -> DhcpStats {
        let state = self.state.lock();
        let mut stats = DhcpStats::default();
        for (name, counters) in &state.counters {
            let running = state.responders.get(name).is_some_and(Responder::running);
            stats
                .interfaces
                .insert(name.clone(), (counters.snapshot(), running));
        }
        stats.total = state.retired;
        for (counters, _) in stats.interfaces.values() {
            stats.total.add(*counters);
        }
        stats
    }
}

impl Drop for DhcpServers {
    fn drop(&mut self) {
        let responders = std::mem::take(&mut self.state.get_mut().responders);
        for responder in responders.values() {
            responder.stop.store(true, Ordering::Relaxed);
        }
        responders.into_values().for_each(Responder::stop_and_join);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Opens a packet socket on `name` and starts its thread.
fn start(
    name: &str,
    iface: DhcpInterface,
    counters: Arc<Counters>,
) -> Result<Responder, OpenError> {
    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| OpenError::NoSuchInterface(name.to_string()))?;
    if !interface.is_up() {
        return Err(OpenError::Down(name.to_string()));
    }
    let config = pnet_datalink::Config {
        read_timeout: Some(READ_TIMEOUT),
        write_timeout: Some(Duration::from_secs(1)),
        promiscuous: false,
        ..Default::default()
    };
    let socket = |source| OpenError::Socket {
        name: name.to_string(),
        source,
    };
    let (tx, rx) = match pnet_datalink::channel(&interface, config).map_err(socket)? {
        Channel::Ethernet(tx, rx) => (tx, rx),
        _ => return Err(OpenError::NotEthernet(name.to_string())),
    };
    let mac = interface.mac.map(|m| [m.0, m.1, m.2, m.3, m.4, m.5]);
    let table = Arc::new(RwLock::new(effective(iface, mac)));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (name, table, stop) = (name.to_string(), table.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("dhcp-{name}"))
            .spawn(move || serve(&name, tx, rx, &table, &stop, &counters))
            .map_err(socket)?
    };
    Ok(Responder {
        table,
        mac,
        stop,
        thread: Some(thread),
    })
}

/// The responder thread: read, decide, reply, until told to stop or the socket fails.
fn serve(
    name: &str,
    mut tx: Box<dyn DataLinkSender>,
    mut rx: Box<dyn DataLinkReceiver>,
    table: &RwLock<DhcpInterface>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    while !stop.load(Ordering::Relaxed) {
        let outcome = match rx.next() {
            Ok(frame) => dhcp::decide(&table.read(), frame),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // e.g. the interface went down or was deleted: the next sync reopens it.
                tracing::warn!(interface = %name, error = %e, "DHCP responder stopped: cannot read");
                return;
            }
        };
        match outcome {
            Outcome::Reply {
                kind,
                mac,
                ip,
                frame,
            } => match tx.send_to(&frame, None) {
                Some(Ok(())) => {
                    counters.replies.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(interface = %name, ?kind, mac = %mac_text(mac), %ip, "DHCP reply sent");
                }
                Some(Err(e)) => {
                    counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(interface = %name, ?kind, mac = %mac_text(mac), error = %e, "DHCP reply not sent");
                }
                None => {}
            },
            Outcome::Ignored(Ignored::NotDhcp | Ignored::NotRequest) => {}
            Outcome::Ignored(why) => {
                counters.ignored.fetch_add(1, Ordering::Relaxed);
                if why == Ignored::Decline {
                    tracing::warn!(interface = %name, "a guest declined its address: another machine answers for it");
                } else {
                    tracing::debug!(interface = %name, ?why, "DHCP request not answered");
                }
            }
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

//! The network reconcile's task: converges on every new desired state and every second (a
//! guest's interface appears when libvirt starts the domain, and should get its flows and
//! DHCP at once), and reports the wired ports with the host's observed state.
use std::sync::Arc;
use std::time::Duration;

use crate::executor::Host;
use crate::net::converge::NetworkHost;
use crate::session::Link;

/// How often the network converges without a new desired state.
pub const NETWORK_TICK: Duration = Duration::from_secs(1);

pub async fn run(net: Arc<NetworkHost>, host: Arc<Host>, link: Arc<Link>) {
    let mut desired_rx = link.watch_desired();
    let mut tick = tokio::time::interval(NETWORK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_errors: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = desired_rx.changed() => {}
            _ = tick.tick() => {}
        }
        let Some(desired) = link.desired() else {
            continue;
        };
        let n = net.clone();
        let report = match tokio::task::spawn_blocking(move || n.converge(&desired)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("the network converge panicked: {e}");
                continue;
            }
        };
        if report.ovs_ops > 0 {
            tracing::info!(
                ops = report.ovs_ops,
                flows = report.flows_changed,
                wired = report.wired.len(),
                "network converged"
            );
        }
        if report.errors != last_errors {
            for e in &report.errors {
                tracing::warn!("network: {e}");
            }
            last_errors = report.errors.clone();
        }
        host.publish_wired(&link, report.wired);
    }
}

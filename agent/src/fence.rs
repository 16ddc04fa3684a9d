//! Self-fencing on lease loss (I7).
//!
//! Without a valid lease the executor starts nothing, but that alone leaves guests that run
//! already running. The controllers declare a host down once its lease is over (counted from
//! when they *received* its newest heartbeat) plus a grace (`lease_grace_ms`, 2 s by default),
//! and may then rebuild its servers elsewhere: a partitioned but powered host would run a second
//! copy. So the agent fences itself: once [`fence_deadline`] has passed, [`run`] pauses (libvirt
//! suspend) every running Flotilla domain, and keeps doing so every [`CHECK_EVERY`] while there
//! is no valid lease (a domain resumed or started meanwhile is paused again). It never destroys
//! anything for this: memory and disks stay, and the report shows the guests paused.
//!
//! Once the lease is valid again the planner converges as usual: a paused domain still desired
//! here at its generation and desired running is resumed; a stale copy (its server moved on) is
//! destroyed.
//!
//! `[lease] fence_on_loss = false` turns this off (availability over split-brain safety).
//!
//! # When
//! The agent's lease is valid until the lease TTL after it *sent* the newest heartbeat the
//! controller acknowledged ([`crate::session::Lease`]), so it always runs out before the
//! controllers' view of it, and before they may declare the host down. The agent fences as soon
//! as its lease has run out: at that moment the controllers may be at most the network delay
//! plus the grace away from rebuilding its servers, whereas waiting another TTL (6 s by default,
//! more than the 2 s grace) would leave a window with two running copies.
//! Before the first registration there is no lease to run out: the agent then fences only when
//! a whole TTL has passed since it started without getting one, so a restarted agent whose
//! controllers answer promptly never pauses its guests. The TTL is the one from the newest
//! `AgentRegistered`, before any the controllers' default ([`DEFAULT_LEASE_TTL`]).
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{Hypervisor, PowerState};
use crate::executor::{error_chain, Host};
use crate::session::Link;

/// The controllers' default `lease_ttl_ms`, used before the first registration.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the lease is checked (and, while fenced, running guests paused again).
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// When an agent started at `started` must fence itself, given when its lease runs or ran out
/// (`None` before the first registration) and the TTL of its newest registration (see the
/// module doc). Pure.
pub fn fence_deadline(
    started: Instant,
    valid_until: Option<Instant>,
    ttl: Option<Duration>,
) -> Instant {
    let first = started + ttl.unwrap_or(DEFAULT_LEASE_TTL);
    valid_until.map_or(first, |until| until.max(first))
}

/// Whether the agent must be fenced at `now` (see [`fence_deadline`]).
pub fn must_fence(
    now: Instant,
    started: Instant,
    valid_until: Option<Instant>,
    ttl: Option<Duration>,
) -> bool {
    now >= fence_deadline(started, valid_until, ttl)
}

/// Whether a domain in `power` has running vCPUs (pausing it stops the guest).
fn runs(power: PowerState) -> bool {
    matches!(
        power,
        PowerState::Running | PowerState::Blocked | PowerState::ShuttingDown | PowerState::Unknown
    )
}

/// Pauses every running Flotilla domain; returns the names of those it paused. A domain that
/// cannot be paused is logged and the others are still paused.
pub fn pause_running(hv: &dyn Hypervisor) -> Result<Vec<String>, String> {
    let mut paused = Vec::new();
    for info in hv.list().map_err(|e| error_chain(&e))? {
        if info.server.is_none() || !runs(info.power) {
            continue;
        }
        match hv.suspend(&info.name) {
            Ok(()) => paused.push(info.name),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::error!(
                domain = %info.name,
                "cannot pause the guest although the host holds no valid lease: {}",
                error_chain(&e)
            ),
        }
    }
    Ok(paused)
}

/// Watches the lease forever and fences the host while it has none (see the module doc).
/// `started`: when the agent started.
pub async fn run(host: Arc<Host>, link: Arc<Link>, started: Instant) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fenced = false;
    loop {
        tick.tick().await;
        let (valid_until, ttl) = (link.lease.valid_until(), link.lease.ttl());
        if !must_fence(Instant::now(), started, valid_until, ttl) {
            if std::mem::take(&mut fenced) {
                tracing::warn!(
                    "the lease is valid again: guests this host still owns are resumed, stale \
                     copies destroyed"
                );
                link.kick();
            }
            continue;
        }
        if !fenced {
            fenced = true;
            let why = match valid_until {
                Some(t) => format!(
                    "the lease ran out {:.1?} ago",
                    Instant::now().saturating_duration_since(t)
                ),
                None => format!(
                    "no lease since the agent started {:.1?} ago",
                    started.elapsed()
                ),
            };
            tracing::warn!(
                "self-fencing: {why} (the controllers may rebuild this host's servers \
                 elsewhere); pausing every running guest until the lease is valid again"
            );
        }
        match host.blocking(|hv, _| pause_running(hv)).await {
            Ok(paused) if !paused.is_empty() => {
                tracing::warn!(
                    count = paused.len(),
                    domains = ?paused,
                    "paused guests: the host holds no valid lease (self-fencing)"
                );
                host.refresh(&link).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!("cannot list the guests to pause them (self-fencing): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_fresh_agent_gets_a_whole_ttl_to_obtain_a_lease() {
        let t0 = Instant::now();
        // Before any registration: the controllers' default TTL, counted from the start.
        assert!(!must_fence(t0, t0, None, None));
        assert!(!must_fence(t0 + 5 * S, t0, None, None));
        assert!(must_fence(t0 + 6 * S, t0, None, None));
        assert_eq!(fence_deadline(t0, None, None), t0 + DEFAULT_LEASE_TTL);
        // A registration whose lease was over before it arrived (sent long ago, or a tiny TTL)
        // does not shorten the start's TTL of the registered length...
        let ttl = Some(10 * S);
        assert!(!must_fence(t0 + 9 * S, t0, Some(t0 - S), ttl));
        // ...and fences once it has passed.
        assert!(must_fence(t0 + 10 * S, t0, Some(t0 - S), ttl));
    }

    #[test]
    fn a_lapsed_lease_fences_at_once() {
        let t0 = Instant::now();
        let ttl = Some(6 * S);
        // Registered at once, heartbeats acknowledged until a heartbeat sent at t0 + 20 s.
        let until = t0 + 26 * S;
        assert!(
            !must_fence(t0 + 25 * S, t0, Some(until), ttl),
            "still valid"
        );
        assert!(must_fence(t0 + 26 * S, t0, Some(until), ttl), "ran out");
        assert!(must_fence(t0 + 60 * S, t0, Some(until), ttl));
        // An agent restarted right after: the old lease is not its own; a fresh TTL applies.
        let restarted = t0 + 30 * S;
        assert!(!must_fence(t0 + 35 * S, restarted, None, None));
        // A renewal ends the fence.
        let renewed = t0 + 70 * S;
        assert!(!must_fence(t0 + 65 * S, t0, Some(renewed), ttl));
    }
}

//! Floating-IP routers ([`crate::net::router`]) as the network reconcile uses them: derived
//! from the desired state, converged through the `ip`/`nft` driver, and handed to the switch
//! plan as plugs (the internal side on the integration bridge, the external side on the bridge
//! `[network] bridge_mappings` gives the external network's physical network).
use std::collections::BTreeMap;

use flotilla_proto::v1 as pb;
use parking_lot::Mutex;

use crate::net::converge::Routers;
use crate::net::ovs_plan::RouterPlug;
use crate::net::router::{routers_from_desired, RouterSpec};
use crate::net::router_linux::{IpRouterDriver, RouterConfig, RouterDriver, RouterReconciler};

/// Routers through a [`RouterDriver`] (the real one: [`IpRouterDriver`]).
pub struct DriverRouters<D: RouterDriver> {
    driver: D,
    reconciler: Mutex<RouterReconciler>,
    /// Physical network → bridge.
    mappings: BTreeMap<String, String>,
}

impl DriverRouters<IpRouterDriver> {
    pub fn real(mappings: BTreeMap<String, String>) -> Self {
        Self::new(IpRouterDriver::new(RouterConfig::default()), mappings)
    }
}

impl<D: RouterDriver> DriverRouters<D> {
    pub fn new(driver: D, mappings: BTreeMap<String, String>) -> Self {
        DriverRouters {
            driver,
            reconciler: Mutex::new(RouterReconciler::new()),
            mappings,
        }
    }

    pub fn driver(&self) -> &D {
        &self.driver
    }
}

/// The routers whose external network has a bridge here, and an error for each other one.
pub fn mapped_routers(
    desired: &pb::DesiredState,
    mappings: &BTreeMap<String, String>,
) -> (Vec<(RouterSpec, String)>, Vec<String>) {
    let derived = routers_from_desired(desired);
    let mut errors: Vec<String> = derived.errors.iter().map(ToString::to_string).collect();
    let mut out = Vec::new();
    for spec in derived.routers {
        let physnet = desired
            .networks
            .iter()
            .find(|n| n.network_id == spec.external_network_id)
            .map(|n| n.physical_network.as_str())
            .unwrap_or_default();
        match mappings.get(physnet) {
            Some(bridge) => out.push((spec, bridge.clone())),
            None => errors.push(format!(
                "floating IPs of network {}: external network {} is on physical network {physnet:?}, \
                 which this host has no bridge for ([network] bridge_mappings)",
                spec.network_id, spec.external_network_id
            )),
        }
    }
    (out, errors)
}

impl<D: RouterDriver> Routers for DriverRouters<D> {
    fn converge(&self, desired: &pb::DesiredState) -> (Vec<RouterPlug>, Vec<String>) {
        let (routers, mut errors) = mapped_routers(desired, &self.mappings);
        let specs: Vec<RouterSpec> = routers.iter().map(|(s, _)| s.clone()).collect();
        let report = self.reconciler.lock().converge(&self.driver, &specs);
        match report {
            Ok(r) => errors.extend(
                r.failures
                    .iter()
                    .map(|f| format!("router {}: {:?}: {}", f.namespace, f.step, f.error)),
            ),
            Err(e) => {
                errors.push(format!("routers: {e}"));
                return (Vec::new(), errors);
            }
        }
        let plugs = routers
            .into_iter()
            .map(|(spec, bridge)| RouterPlug {
                network_id: spec.network_id.clone(),
                internal_peer: spec.internal_peer().to_string(),
                external_peer: spec.external_peer().to_string(),
                external_bridge: bridge,
            })
            .collect();
        (plugs, errors)
    }
}

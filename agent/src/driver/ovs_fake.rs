//! An in-memory [`VSwitch`]: the same contract (checked by [`super::conformance_ovs`]), plus
//! [`FakeVSwitch::fail_next`] to script failures, [`FakeVSwitch::calls`] to see what was done,
//! and [`FakeVSwitch::insert_flow`] / [`FakeVSwitch::remove_flow_by_hand`] to play an operator
//! or a restart that changed OVS behind the agent's back.
//!
//! Flows are kept as given (no normalisation): the fake reads back exactly what was written.
use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::{Mutex, MutexGuard};

use super::ovs::{
    check_bridge, check_flow, check_name, check_port, check_tunnel, managed_key, BridgeInfo,
    BridgeSpec, CookieMatch, Flow, OvsError, PortInfo, PortSpec, TunnelInfo, TunnelSpec, VSwitch,
    VlanTag,
};

/// Operations failures can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OvsOp {
    EnsureBridge,
    DeleteBridge,
    ListBridges,
    EnsurePort,
    DeletePort,
    ListPorts,
    EnsureTunnel,
    DeleteTunnel,
    ListTunnels,
    AddFlows,
    DeleteFlows,
    DeleteFlowsByCookie,
    ListFlows,
}

#[derive(Debug, Clone)]
enum Iface {
    Plain {
        ovs_type: String,
        tag: Option<VlanTag>,
    },
    Tunnel(TunnelSpec),
}

#[derive(Debug, Clone)]
struct FakePort {
    iface: Iface,
    external_ids: BTreeMap<String, String>,
    ofport: u32,
}

#[derive(Debug, Clone)]
struct FakeBridge {
    info: BridgeInfo,
    ports: BTreeMap<String, FakePort>,
    /// By (table, priority, match).
    flows: BTreeMap<(u8, u16, String), Flow>,
    next_ofport: u32,
}

#[derive(Debug, Default)]
struct State {
    bridges: BTreeMap<String, FakeBridge>,
    failures: HashMap<OvsOp, VecDeque<OvsError>>,
    calls: Vec<OvsOp>,
}

impl State {
    fn bridge(&mut self, name: &str) -> Result<&mut FakeBridge, OvsError> {
        self.bridges
            .get_mut(name)
            .ok_or_else(|| OvsError::NoSuchBridge {
                bridge: name.to_string(),
            })
    }

    /// The bridge a port of this name is on.
    fn port_home(&self, port: &str) -> Option<&str> {
        self.bridges
            .iter()
            .find(|(_, b)| b.ports.contains_key(port))
            .map(|(n, _)| n.as_str())
    }

    fn check_home(&self, bridge: &str, port: &str) -> Result<(), OvsError> {
        match self.port_home(port) {
            Some(home) if home != bridge => Err(OvsError::Conflict {
                message: format!("port {port} is attached to bridge {home}, not {bridge}"),
            }),
            _ => Ok(()),
        }
    }
}

/// Managed keys as `desired` says, other keys kept.
fn converge_ids(current: &mut BTreeMap<String, String>, desired: &BTreeMap<String, String>) {
    current.retain(|k, _| !managed_key(k));
    current.extend(desired.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// See the module doc. Datapath type `netdev` for every bridge, like the default real driver.
#[derive(Debug, Default)]
pub struct FakeVSwitch {
    state: Mutex<State>,
}

impl FakeVSwitch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next call of `op` fails with `error` (before any change).
    pub fn fail_next(&self, op: OvsOp, error: OvsError) {
        self.state
            .lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<OvsOp> {
        self.state.lock().calls.clone()
    }

    /// Adds a flow as if someone else had (no call is recorded); `false` without that bridge.
    pub fn insert_flow(&self, bridge: &str, flow: Flow) -> bool {
        let mut state = self.state.lock();
        let Some(b) = state.bridges.get_mut(bridge) else {
            return false;
        };
        b.flows
            .insert((flow.table, flow.priority, flow.match_.clone()), flow);
        true
    }

    /// Removes a flow as if lost (an ovs-vswitchd restart); returns whether it was there.
    pub fn remove_flow_by_hand(&self, bridge: &str, flow: &Flow) -> bool {
        let mut state = self.state.lock();
        state
            .bridges
            .get_mut(bridge)
            .and_then(|b| {
                b.flows
                    .remove(&(flow.table, flow.priority, flow.match_.clone()))
            })
            .is_some()
    }

    fn enter(&self, op: OvsOp) -> Result<MutexGuard<'_, State>, OvsError> {
        let mut state = self.state.lock();
        state.calls.push(op);
        match state.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(state),
        }
    }
}

impl VSwitch for FakeVSwitch {
    fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), OvsError> {
        check_bridge(spec)?;
        let mut state = self.enter(OvsOp::EnsureBridge)?;
        let b = state
            .bridges
            .entry(spec.name.clone())
            .or_insert_with(|| FakeBridge {
                info: BridgeInfo {
                    name: spec.name.clone(),
                    datapath_type: String::new(),
                    fail_mode: None,
                    external_ids: BTreeMap::new(),
                },
                ports: BTreeMap::new(),
                flows: BTreeMap::new(),
                next_ofport: 1,
            });
        b.info.datapath_type = "netdev".to_string();
        b.info.fail_mode = Some(spec.fail_mode);
        converge_ids(&mut b.info.external_ids, &spec.external_ids);
        Ok(())
    }

    fn delete_bridge(&self, name: &str) -> Result<bool, OvsError> {
        check_name("bridge name", name)?;
        let mut state = self.enter(OvsOp::DeleteBridge)?;
        Ok(state.bridges.remove(name).is_some())
    }

    fn list_bridges(&self) -> Result<Vec<BridgeInfo>, OvsError> {
        let state = self.enter(OvsOp::ListBridges)?;
        Ok(state.bridges.values().map(|b| b.info.clone()).collect())
    }

    fn ensure_port(&self, bridge: &str, spec: &PortSpec) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        check_port(spec)?;
        let mut state = self.enter(OvsOp::EnsurePort)?;
        state.bridge(bridge)?;
        state.check_home(bridge, &spec.name)?;
        let b = state.bridge(bridge)?;
        let iface = Iface::Plain {
            ovs_type: spec.kind.ovs_type().to_string(),
            tag: spec.tag,
        };
        match b.ports.get_mut(&spec.name) {
            Some(FakePort {
                iface: Iface::Tunnel(_),
                ..
            }) => Err(OvsError::Conflict {
                message: format!("port {} is a VXLAN tunnel, not a plain port", spec.name),
            }),
            Some(p) => {
                p.iface = iface;
                converge_ids(&mut p.external_ids, &spec.external_ids);
                Ok(())
            }
            None => {
                let ofport = b.next_ofport;
                b.next_ofport += 1;
                b.ports.insert(
                    spec.name.clone(),
                    FakePort {
                        iface,
                        external_ids: spec.external_ids.clone(),
                        ofport,
                    },
                );
                Ok(())
            }
        }
    }

    fn delete_port(&self, bridge: &str, name: &str) -> Result<bool, OvsError> {
        check_name("bridge name", bridge)?;
        check_name("port name", name)?;
        let mut state = self.enter(OvsOp::DeletePort)?;
        state.bridge(bridge)?;
        state.check_home(bridge, name)?;
        Ok(state.bridge(bridge)?.ports.remove(name).is_some())
    }

    fn list_ports(&self, bridge: &str) -> Result<Vec<PortInfo>, OvsError> {
        check_name("bridge name", bridge)?;
        let mut state = self.enter(OvsOp::ListPorts)?;
        let b = state.bridge(bridge)?;
        Ok(b.ports
            .iter()
            .filter_map(|(name, p)| match &p.iface {
                Iface::Plain { ovs_type, tag } => Some(PortInfo {
                    name: name.clone(),
                    ovs_type: ovs_type.clone(),
                    tag: *tag,
                    external_ids: p.external_ids.clone(),
                    ofport: Some(p.ofport),
                }),
                Iface::Tunnel(_) => None,
            })
            .collect())
    }

    fn ensure_tunnel(&self, bridge: &str, spec: &TunnelSpec) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        check_tunnel(spec)?;
        let mut state = self.enter(OvsOp::EnsureTunnel)?;
        state.bridge(bridge)?;
        state.check_home(bridge, &spec.name)?;
        let b = state.bridge(bridge)?;
        match b.ports.get_mut(&spec.name) {
            Some(FakePort {
                iface: Iface::Plain { .. },
                ..
            }) => Err(OvsError::Conflict {
                message: format!("port {} exists and is not a VXLAN tunnel", spec.name),
            }),
            Some(p) => {
                p.iface = Iface::Tunnel(spec.clone());
                converge_ids(&mut p.external_ids, &spec.external_ids);
                Ok(())
            }
            None => {
                let ofport = b.next_ofport;
                b.next_ofport += 1;
                b.ports.insert(
                    spec.name.clone(),
                    FakePort {
                        iface: Iface::Tunnel(spec.clone()),
                        external_ids: spec.external_ids.clone(),
                        ofport,
                    },
                );
                Ok(())
            }
        }
    }

    fn delete_tunnel(&self, bridge: &str, name: &str) -> Result<bool, OvsError> {
        check_name("bridge name", bridge)?;
        check_name("port name", name)?;
        let mut state = self.enter(OvsOp::DeleteTunnel)?;
        state.bridge(bridge)?;
        let b = state.bridge(bridge)?;
        match b.ports.get(name) {
            None => Ok(false),
            Some(FakePort {
                iface: Iface::Plain { .. },
                ..
            }) => Err(OvsError::Conflict {
                message: format!("port {name} is not a VXLAN tunnel; refusing to delete it"),
            }),
            Some(_) => Ok(b.ports.remove(name).is_some()),
        }
    }

    fn list_tunnels(&self, bridge: &str) -> Result<Vec<TunnelInfo>, OvsError> {
        check_name("bridge name", bridge)?;
        let mut state = self.enter(OvsOp::ListTunnels)?;
        let b = state.bridge(bridge)?;
        Ok(b.ports
            .values()
            .filter_map(|p| match &p.iface {
                Iface::Tunnel(spec) => Some(TunnelInfo {
                    spec: TunnelSpec {
                        external_ids: p.external_ids.clone(),
                        ..spec.clone()
                    },
                    ofport: Some(p.ofport),
                }),
                Iface::Plain { .. } => None,
            })
            .collect())
    }

    fn add_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        for f in flows {
            check_flow(f)?;
        }
        let mut state = self.enter(OvsOp::AddFlows)?;
        let b = state.bridge(bridge)?;
        for f in flows {
            b.flows
                .insert((f.table, f.priority, f.match_.clone()), f.clone());
        }
        Ok(())
    }

    fn delete_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), OvsError> {
        check_name("bridge name", bridge)?;
        for f in flows {
            check_flow(f)?;
        }
        let mut state = self.enter(OvsOp::DeleteFlows)?;
        let b = state.bridge(bridge)?;
        for f in flows {
            let key = (f.table, f.priority, f.match_.clone());
            if b.flows
                .get(&key)
                .is_some_and(|have| have.cookie == f.cookie)
            {
                b.flows.remove(&key);
            }
        }
        Ok(())
    }

    fn delete_flows_by_cookie(
        &self,
        bridge: &str,
        cookies: CookieMatch,
    ) -> Result<usize, OvsError> {
        check_name("bridge name", bridge)?;
        let mut state = self.enter(OvsOp::DeleteFlowsByCookie)?;
        let b = state.bridge(bridge)?;
        let before = b.flows.len();
        b.flows.retain(|_, f| !cookies.matches(f.cookie));
        Ok(before - b.flows.len())
    }

    fn list_flows(&self, bridge: &str, cookies: CookieMatch) -> Result<Vec<Flow>, OvsError> {
        check_name("bridge name", bridge)?;
        let mut state = self.enter(OvsOp::ListFlows)?;
        let b = state.bridge(bridge)?;
        let mut out: Vec<Flow> = b
            .flows
            .values()
            .filter(|f| cookies.matches(f.cookie))
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::conformance_ovs::{run_ovs_suite, OvsFixture};

    #[test]
    fn fake_vswitch_passes_the_conformance_suite() {
        let fake = FakeVSwitch::new();
        run_ovs_suite(&OvsFixture {
            vswitch: &fake,
            prefix: "fk".to_string(),
        });
        assert!(fake.list_bridges().unwrap().is_empty());
    }

    #[test]
    fn scripted_failures_fire_once_before_any_change() {
        let fake = FakeVSwitch::new();
        fake.fail_next(
            OvsOp::EnsureBridge,
            OvsError::Timeout {
                tool: "ovs-vsctl",
                action: "add-br",
                timeout: std::time::Duration::from_secs(10),
            },
        );
        let spec = BridgeSpec::new("br-int", super::super::ovs::FailMode::Secure);
        assert!(matches!(
            fake.ensure_bridge(&spec),
            Err(OvsError::Timeout { .. })
        ));
        assert!(fake.list_bridges().unwrap().is_empty());
        fake.ensure_bridge(&spec).unwrap();
        assert_eq!(fake.list_bridges().unwrap().len(), 1);
        assert_eq!(
            fake.calls(),
            vec![
                OvsOp::EnsureBridge,
                OvsOp::ListBridges,
                OvsOp::EnsureBridge,
                OvsOp::ListBridges
            ]
        );
    }

    #[test]
    fn a_lost_flow_is_restored_by_sync() {
        let fake = FakeVSwitch::new();
        fake.ensure_bridge(&BridgeSpec::new(
            "br-int",
            super::super::ovs::FailMode::Secure,
        ))
        .unwrap();
        let ours = CookieMatch {
            value: 0xf1 << 56,
            mask: 0xff << 56,
        };
        let flow = Flow::new(0xf1 << 56, 0, 10, "in_port=1", "drop");
        fake.sync_flows("br-int", ours, std::slice::from_ref(&flow))
            .unwrap();
        assert!(fake.remove_flow_by_hand("br-int", &flow));
        let sync = fake
            .sync_flows("br-int", ours, std::slice::from_ref(&flow))
            .unwrap();
        assert_eq!(sync.added, vec![flow]);
        assert!(sync.deleted.is_empty());
    }
}

//! `[network]` of the agent's configuration: where guests' NICs, tunnels and external networks
//! go on this host. Without the section the host wires no ports (servers with ports still
//! define and start where the hypervisor allows, their ports stay DOWN).
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::driver::ovs::{check_name, OvsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The bridge guests' NICs are plugged into; created (userspace datapath, fail mode
    /// secure) and kept by the agent, its flows all Flotilla's.
    #[serde(default = "default_integration_bridge")]
    pub integration_bridge: String,
    /// Local end of VXLAN tunnels, and the address other hosts send them to (registered as the
    /// host's tunnel address). The userspace datapath sends tunnel packets by OVS's own
    /// routing: the address must be on an OVS bridge (e.g. `br-phy` holding the uplink), which
    /// the operator sets up. Unset: the host's `address`, source picked by route.
    #[serde(default)]
    pub tunnel_local_ip: Option<IpAddr>,
    /// Provider network name (`physical_network`) → the OVS bridge attached to it, e.g.
    /// `external = "br-ex"`: floating-IP routers plug their external side there. The agent
    /// creates a missing bridge (fail mode standalone) but never touches its other ports (the
    /// uplink is the operator's).
    #[serde(default)]
    pub bridge_mappings: BTreeMap<String, String>,
    /// Open vSwitch's run directory (`db.sock`, `<bridge>.mgmt`).
    #[serde(default = "default_ovs_rundir")]
    pub ovs_rundir: PathBuf,
}

fn default_integration_bridge() -> String {
    "br-int".into()
}
fn default_ovs_rundir() -> PathBuf {
    PathBuf::from("/run/openvswitch")
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            integration_bridge: default_integration_bridge(),
            tunnel_local_ip: None,
            bridge_mappings: BTreeMap::new(),
            ovs_rundir: default_ovs_rundir(),
        }
    }
}

impl NetworkConfig {
    /// Bridge names must be device names; the integration bridge is not also a mapping.
    pub fn validate(&self) -> Result<(), String> {
        let name = |what: &'static str, n: &str| {
            check_name(what, n).map_err(|e: OvsError| format!("[network] {e}"))
        };
        name("integration_bridge", &self.integration_bridge)?;
        for (physnet, bridge) in &self.bridge_mappings {
            name("bridge_mappings bridge", bridge)?;
            if physnet.is_empty() {
                return Err("[network] bridge_mappings: empty physical network name".into());
            }
            if *bridge == self.integration_bridge {
                return Err(format!(
                    "[network] bridge_mappings: {physnet:?} maps to the integration bridge \
                     {bridge:?}; provider networks need their own bridge"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c: NetworkConfig = toml::from_str("").unwrap();
        assert_eq!(c.integration_bridge, "br-int");
        assert!(c.validate().is_ok());
        let bad: NetworkConfig = toml::from_str(
            "integration_bridge = \"br-int\"\n[bridge_mappings]\nexternal = \"br-int\"\n",
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("integration bridge"));
        let long: NetworkConfig =
            toml::from_str("integration_bridge = \"a-very-long-bridge-name\"").unwrap();
        assert!(long.validate().is_err());
        assert!(toml::from_str::<NetworkConfig>("bogus = 1").is_err());
    }
}

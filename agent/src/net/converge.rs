//! Converges the host's networking to the desired state: Open vSwitch (bridges, ports,
//! tunnels, flows — planned by [`crate::net::ovs_plan`]), floating-IP routers, DHCP
//! responders. Runs after every executor round and on its own tick, so a guest's interface
//! that libvirt just plugged gets its flows within a second, and anything lost (a flow, a
//! port, a tunnel, a router rule) is put back.
//!
//! Every object is compared with what is there before anything is changed: a converge with
//! nothing to do runs only the reads (bridge, port, tunnel and flow listings).
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use parking_lot::Mutex;

use crate::driver::ovs::{
    managed_key, BridgeInfo, BridgeSpec, OvsError, PortInfo, PortSpec, TunnelInfo, TunnelSpec,
    VSwitch,
};
use crate::driver::process::{run, RunError};
use crate::net::config::NetworkConfig;
use crate::net::dhcp::{dhcp_interface, DhcpInterface};
use crate::net::dhcp_server::DhcpServers;
use crate::net::ovs_plan::{
    cookies, plan_flows, plan_topology, stale_ports, stale_tunnels, RouterPlug, Topology,
};

/// Floating-IP routers as the switch needs to know them.
pub trait Routers: Send + Sync {
    /// Converges the routers; returns the plugs of those that exist now, and errors.
    fn converge(&self, desired: &pb::DesiredState) -> (Vec<RouterPlug>, Vec<String>);
}

/// A host without floating-IP routers (no external bridge mapped).
pub struct NoRouters;

impl Routers for NoRouters {
    fn converge(&self, desired: &pb::DesiredState) -> (Vec<RouterPlug>, Vec<String>) {
        let errors = desired
            .floating_ips
            .iter()
            .map(|f| {
                format!(
                    "floating IP {}: this host has no bridge for external networks \
                     ([network] bridge_mappings)",
                    f.floating_ip_address
                )
            })
            .collect();
        (Vec::new(), errors)
    }
}

/// The floating-IP routers of a host with this configuration.
pub fn routers_for(cfg: &NetworkConfig) -> Arc<dyn Routers> {
    if cfg.bridge_mappings.is_empty() {
        Arc::new(NoRouters)
    } else {
        Arc::new(crate::net::routers::DriverRouters::real(
            cfg.bridge_mappings.clone(),
        ))
    }
}

/// What one converge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvergeReport {
    /// Ports of servers this host owns that are wired (sorted).
    pub wired: Vec<String>,
    pub errors: Vec<String>,
    /// Mutating Open vSwitch operations run (ensure/delete calls, flow bundles).
    pub ovs_ops: usize,
    /// Flows added or replaced plus flows deleted.
    pub flows_changed: usize,
}

/// The host's networking and the state it needs between converges.
pub struct NetworkHost {
    cfg: NetworkConfig,
    vswitch: Arc<dyn VSwitch>,
    routers: Arc<dyn Routers>,
    dhcp: DhcpServers,
    /// Serializes converges (the executor's kick and the tick may overlap).
    running: Mutex<()>,
}

impl NetworkHost {
    pub fn new(cfg: NetworkConfig, vswitch: Arc<dyn VSwitch>, routers: Arc<dyn Routers>) -> Self {
        NetworkHost {
            cfg,
            vswitch,
            routers,
            dhcp: DhcpServers::new(),
            running: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    pub fn dhcp(&self) -> &DhcpServers {
        &self.dhcp
    }

    /// One converge (blocking: call through `spawn_blocking`).
    pub fn converge(&self, desired: &pb::DesiredState) -> ConvergeReport {
        let _one = self.running.lock();
        let mut report = ConvergeReport::default();
        if let Err(e) = self.converge_into(desired, &mut report) {
            report.errors.push(format!("Open vSwitch: {e}"));
        }
        report
    }

    fn converge_into(
        &self,
        desired: &pb::DesiredState,
        report: &mut ConvergeReport,
    ) -> Result<(), OvsError> {
        let vs = self.vswitch.as_ref();
        let int_br = self.cfg.integration_bridge.as_str();
        // The integration bridge first: routers plug into it.
        let bridges = vs.list_bridges()?;
        let int_spec = BridgeSpec::new(int_br, crate::driver::ovs::FailMode::Secure);
        ensure_bridge(vs, &bridges, &int_spec, report)?;
        let (routers, router_errors) = self.routers.converge(desired);
        report.errors.extend(router_errors);

        let int_ports = vs.list_ports(int_br)?;
        let ops_before = report.ovs_ops;
        let topo = plan_topology(desired, &self.cfg, &routers, &int_ports);
        report.errors.extend(topo.errors.iter().cloned());
        for b in topo.bridges.iter().filter(|b| b.name != int_br) {
            ensure_bridge(vs, &bridges, b, report)?;
        }
        self.converge_ports(&topo, &int_ports, report)?;
        let links = self.dhcp_ports_up(&topo, report);
        let tunnels = vs.list_tunnels(int_br)?;
        for name in stale_tunnels(&topo.tunnels, &tunnels) {
            vs.delete_tunnel(int_br, name)?;
            report.ovs_ops += 1;
        }
        for t in &topo.tunnels {
            if !tunnel_is(&tunnels, t) {
                vs.ensure_tunnel(int_br, t)?;
                report.ovs_ops += 1;
            }
        }

        // Flows need the OpenFlow port numbers OVS gave the ports just made (if any were).
        let (int_ports, tunnels) = if report.ovs_ops == ops_before {
            (int_ports, tunnels)
        } else {
            (vs.list_ports(int_br)?, vs.list_tunnels(int_br)?)
        };
        let plan = plan_flows(desired, &topo, &routers, &int_ports, &tunnels);
        report.errors.extend(plan.errors.iter().cloned());
        for fix in &plan.tag_fixes {
            vs.ensure_port(int_br, fix)?;
            report.ovs_ops += 1;
        }
        let sync = vs.sync_flows(int_br, cookies(), &plan.flows)?;
        for f in &sync.added {
            tracing::debug!(
                table = f.table,
                priority = f.priority,
                "flow + {} {}",
                f.match_,
                f.actions
            );
        }
        for f in &sync.deleted {
            tracing::debug!(
                table = f.table,
                priority = f.priority,
                "flow - {}",
                f.match_
            );
        }
        if !sync.is_noop() {
            report.ovs_ops += 1;
            report.flows_changed += sync.added.len() + sync.deleted.len();
        }
        for (iface, e) in self.dhcp.sync(self.dhcp_wanted(desired, &topo, &links)) {
            report.errors.push(format!("DHCP on {iface}: {e}"));
        }
        report.wired = plan.wired.into_iter().collect();
        Ok(())
    }

    /// Flotilla's ports on the integration bridge and the external bridges.
    fn converge_ports(
        &self,
        topo: &Topology,
        int_ports: &[PortInfo],
        report: &mut ConvergeReport,
    ) -> Result<(), OvsError> {
        let vs = self.vswitch.as_ref();
        let int_br = self.cfg.integration_bridge.as_str();
        for name in stale_ports(&topo.int_ports, int_ports) {
            vs.delete_port(int_br, name)?;
            report.ovs_ops += 1;
        }
        for p in &topo.int_ports {
            if !port_is(int_ports, p) {
                vs.ensure_port(int_br, p)?;
                report.ovs_ops += 1;
            }
        }
        let mut by_bridge: BTreeMap<&str, Vec<PortSpec>> = BTreeMap::new();
        for (b, p) in &topo.ext_ports {
            by_bridge.entry(b.as_str()).or_default().push(p.clone());
        }
        for b in self.cfg.bridge_mappings.values() {
            by_bridge.entry(b.as_str()).or_default();
        }
        for (bridge, wanted) in by_bridge {
            let actual = match vs.list_ports(bridge) {
                Ok(a) => a,
                Err(OvsError::NoSuchBridge { .. }) => continue,
                Err(e) => return Err(e),
            };
            for name in stale_ports(&wanted, &actual) {
                vs.delete_port(bridge, name)?;
                report.ovs_ops += 1;
            }
            for p in &wanted {
                if !port_is(&actual, p) {
                    vs.ensure_port(bridge, p)?;
                    report.ovs_ops += 1;
                }
            }
        }
        Ok(())
    }

    /// Brings the DHCP ports up (the kernel side of an internal port starts down, and a tap
    /// that is down drops what OVS writes to it); returns the devices as they are then.
    fn dhcp_ports_up(&self, topo: &Topology, report: &mut ConvergeReport) -> Links {
        let mut links = match read_links() {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(e);
                return Links::new();
            }
        };
        for net in topo.networks.values() {
            match links.get_mut(&net.dhcp_port) {
                Some(link) if link.up => {}
                Some(link) => match set_up(&net.dhcp_port) {
                    Ok(()) => link.up = true,
                    Err(e) => report.errors.push(e),
                },
                None => report
                    .errors
                    .push(format!("DHCP port {} has no device yet", net.dhcp_port)),
            }
        }
        links
    }

    /// The DHCP responders: one per local network with a DHCP-enabled IPv4 subnet, answering
    /// the ports of servers this host owns.
    fn dhcp_wanted(
        &self,
        desired: &pb::DesiredState,
        topo: &Topology,
        links: &Links,
    ) -> BTreeMap<String, DhcpInterface> {
        let mut out = BTreeMap::new();
        for net in &desired.networks {
            let Some(local) = topo.networks.get(&net.network_id) else {
                continue;
            };
            let ports: Vec<(&pb::DesiredPort, Option<&str>)> = desired
                .servers
                .iter()
                .filter(|s| !s.incoming_migration)
                .flat_map(|s| s.ports.iter().map(move |p| (p, Some(s.name.as_str()))))
                .filter(|(p, _)| p.network_id == net.network_id)
                .collect();
            let Some(mac) = links.get(&local.dhcp_port).and_then(|l| l.mac) else {
                continue;
            };
            if let Some(iface) = dhcp_interface(net, &ports, mac) {
                out.insert(local.dhcp_port.clone(), iface);
            }
        }
        out
    }
}

fn ensure_bridge(
    vs: &dyn VSwitch,
    bridges: &[BridgeInfo],
    spec: &BridgeSpec,
    report: &mut ConvergeReport,
) -> Result<(), OvsError> {
    let same = bridges.iter().any(|b| {
        b.name == spec.name
            && b.fail_mode == Some(spec.fail_mode)
            && b.datapath_type != "system"
            && managed(&b.external_ids) == spec.external_ids
    });
    if !same {
        vs.ensure_bridge(spec)?;
        report.ovs_ops += 1;
    }
    Ok(())
}

fn managed(ids: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    ids.iter()
        .filter(|(k, _)| managed_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn port_is(actual: &[PortInfo], spec: &PortSpec) -> bool {
    actual.iter().any(|p| {
        p.name == spec.name
            && p.ovs_type == spec.kind.ovs_type()
            && p.tag == spec.tag
            && managed(&p.external_ids) == spec.external_ids
            && p.ofport.is_some()
    })
}

fn tunnel_is(actual: &[TunnelInfo], spec: &TunnelSpec) -> bool {
    actual.iter().any(|t| {
        t.spec.name == spec.name
            && t.spec.remote_ip == spec.remote_ip
            && t.spec.local_ip == spec.local_ip
            && t.spec.key == spec.key
            && managed(&t.spec.external_ids) == spec.external_ids
    })
}

/// A network device of this thread's network namespace.
struct Link {
    up: bool,
    mac: Option<[u8; 6]>,
}

type Links = BTreeMap<String, Link>;

const IP_TIMEOUT: Duration = Duration::from_secs(10);

fn ip(args: &[&str]) -> Result<Vec<u8>, String> {
    let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    run(Path::new("ip"), &argv, IP_TIMEOUT).map_err(|e| {
        let why = match e {
            RunError::Spawn(e) => format!("cannot run it: {e}"),
            RunError::Timeout => format!("no answer within {IP_TIMEOUT:?}"),
            RunError::Failed { stderr, .. } => stderr,
        };
        format!("ip {}: {why}", args.join(" "))
    })
}

/// Every device, from one `ip -o link show` (not sysfs: that shows the namespace it was
/// mounted in, not this thread's).
fn read_links() -> Result<Links, String> {
    let out = ip(&["-o", "link", "show"])?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(parse_link)
        .collect())
}

/// `5: fd-0a1b2c3d4e5f: <BROADCAST,UP,LOWER_UP> mtu 1500 … link/ether fa:16:3e:… brd …`
fn parse_link(line: &str) -> Option<(String, Link)> {
    let mut fields = line.splitn(3, ": ");
    fields.next()?;
    let name = fields.next()?.split('@').next()?.to_string();
    let rest = fields.next()?;
    let flags = rest.strip_prefix('<')?.split('>').next()?;
    let mac = rest
        .split("link/ether ")
        .nth(1)
        .and_then(|m| m.split_whitespace().next())
        .and_then(crate::net::dhcp::parse_mac);
    Some((
        name,
        Link {
            up: flags.split(',').any(|f| f == "UP"),
            mac,
        },
    ))
}

fn set_up(name: &str) -> Result<(), String> {
    ip(&["link", "set", "dev", name, "up"]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_listing_lines() {
        let (name, l) = parse_link(
            "7: fd-0a1b2c3d4e5f: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state \
             UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether fa:16:3e:00:00:01 brd \
             ff:ff:ff:ff:ff:ff",
        )
        .unwrap();
        assert_eq!(name, "fd-0a1b2c3d4e5f");
        assert!(l.up);
        assert_eq!(l.mac, Some([0xfa, 0x16, 0x3e, 0, 0, 1]));
        let (name, l) = parse_link(
            "9: tr-0a1b2c3d@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN \\    \
             link/ether 02:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff link-netns flr-0a1b2c3d",
        )
        .unwrap();
        assert_eq!(name, "tr-0a1b2c3d");
        assert!(!l.up);
        assert!(parse_link("garbage").is_none());
    }
}

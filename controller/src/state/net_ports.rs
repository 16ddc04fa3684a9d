//! Ports: a network's attachment points, with their MAC address, fixed addresses (allocated from
//! the network's subnets when the port is created) and security groups.
use std::collections::BTreeMap;

use super::ipam::{self, Family};
use super::networks::{
    change_of, check_description, check_name, created, deleted, invalid, one, precondition,
    set_texts, Applied, FixedIp, NetCommand, Network, Port, PortSpec, Subnet, MAC_PREFIX,
};
use super::quota::Resource;
use super::{EventAction, Meta, Rejection, State};

/// `aa:bb:cc:dd:ee:ff`, lower case, unicast.
pub fn normalize_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let bad = || format!("{mac:?} is not a MAC address (e.g. fa:16:3e:12:34:56)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut bytes = [0u8; 6];
    for (b, p) in bytes.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if bytes[0] & 1 == 1 {
        return Err(format!("{mac:?} is a multicast MAC address"));
    }
    if bytes == [0; 6] {
        return Err(format!("{mac:?} is not a usable MAC address"));
    }
    Ok(format_mac(bytes))
}

fn format_mac(b: [u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The subnet and address a requested fixed IP names: an address must be inside a pool; no
/// address means the subnet's lowest free one.
fn pick_address(
    network: &Network,
    subnets: &BTreeMap<String, Subnet>,
    req: &FixedIp,
) -> Result<(String, u128), Rejection> {
    let subnet = if req.subnet_id.is_empty() {
        if req.ip_address.is_empty() {
            return Err(invalid("a fixed IP needs a subnet, an address or both"));
        }
        let (family, addr) = ipam::parse_ip(&req.ip_address).map_err(Rejection::Invalid)?;
        network
            .subnet_ids
            .iter()
            .filter_map(|id| subnets.get(id))
            .find(|s| s.cidr.contains(family, addr))
            .ok_or_else(|| {
                invalid(format!(
                    "{} is not inside any subnet of network {}",
                    req.ip_address, network.id
                ))
            })?
    } else {
        subnets.get(&req.subnet_id).ok_or_else(|| {
            invalid(format!(
                "subnet {} is not a subnet of network {}",
                req.subnet_id, network.id
            ))
        })?
    };
    if req.ip_address.is_empty() {
        let addr = ipam::lowest_free(&subnet.pools, &subnet.allocated).ok_or_else(|| {
            Rejection::QuotaExceeded(format!("no free address is left in subnet {}", subnet.id))
        })?;
        return Ok((subnet.id.clone(), addr));
    }
    let (family, addr) = ipam::parse_ip(&req.ip_address).map_err(Rejection::Invalid)?;
    if !subnet.cidr.contains(family, addr) {
        return Err(invalid(format!(
            "{} is not inside subnet {} ({})",
            req.ip_address, subnet.id, subnet.cidr
        )));
    }
    if !ipam::in_pools(&subnet.pools, addr) {
        return Err(invalid(format!(
            "{} is outside the allocation pools of subnet {}",
            req.ip_address, subnet.id
        )));
    }
    Ok((subnet.id.clone(), addr))
}

impl State {
    pub(super) fn apply_port(&mut self, revision: u64, t: i64, cmd: &NetCommand) -> Applied {
        match cmd {
            NetCommand::CreatePort(spec) => self.create_port(revision, t, spec),
            NetCommand::UpdatePort {
                port_id,
                name,
                description,
                admin_state_up,
                port_security_enabled,
                security_group_ids,
            } => {
                let p = self.net_get::<Port>(port_id)?.clone();
                let mut next = p.clone();
                let texts = (name, description);
                set_texts("port", texts, &mut next.name, &mut next.description)?;
                if let Some(v) = admin_state_up {
                    next.admin_state_up = *v;
                }
                if let Some(v) = port_security_enabled {
                    next.port_security_enabled = *v;
                }
                if let Some(groups) = security_group_ids {
                    self.check_port_groups(&p.project_id, groups)?;
                    next.security_group_ids = groups.clone();
                }
                if !next.port_security_enabled && !next.security_group_ids.is_empty() {
                    return Err(invalid(
                        "a port without port security cannot have security groups; remove them \
                         in the same request",
                    ));
                }
                self.store_update(revision, t, p, next)
            }
            NetCommand::DeletePort { port_id } => {
                let p = self.net_get::<Port>(port_id)?.clone();
                if p.device_owner.starts_with("compute:") && !p.device_id.is_empty() {
                    return Err(precondition(format!(
                        "port {} is attached to server {}; delete the server or detach the port",
                        p.id, p.device_id
                    )));
                }
                self.remove_port(revision, t, &p);
                deleted(&p)
            }
            _ => unreachable!("apply_port called with another command"),
        }
    }

    fn check_port_groups(&self, project_id: &str, groups: &[String]) -> Result<(), Rejection> {
        for g in groups {
            let found = self
                .net
                .security_groups
                .get(g)
                .ok_or_else(|| Rejection::not_found("security group", g))?;
            if found.project_id != project_id {
                return Err(invalid(format!(
                    "security group {g} belongs to another project"
                )));
            }
        }
        Ok(())
    }

    fn generate_mac(&mut self) -> Result<String, Rejection> {
        for _ in 0..(1u32 << 24) {
            let n = self.net.next_mac & 0x00ff_ffff;
            self.net.next_mac = self.net.next_mac.wrapping_add(1);
            let [_, a, b, c] = n.to_be_bytes();
            let mac = format_mac([MAC_PREFIX[0], MAC_PREFIX[1], MAC_PREFIX[2], a, b, c]);
            if !self.net.ports.values().any(|p| p.mac_address == mac) {
                return Ok(mac);
            }
        }
        Err(Rejection::QuotaExceeded(
            "no generated MAC address is left".into(),
        ))
    }

    pub(super) fn create_port(&mut self, revision: u64, t: i64, spec: &PortSpec) -> Applied {
        check_name("port", &spec.name)?;
        check_description("port", &spec.description)?;
        self.project_enabled(&spec.project_id)?;
        let network = self.net_get::<Network>(&spec.network_id)?.clone();
        if network.project_id != spec.project_id && !network.shared {
            return Err(precondition(format!(
                "network {} belongs to another project and is not shared",
                network.id
            )));
        }
        if self.net.ports.contains_key(&spec.id) {
            return Err(invalid(format!("port id {} is taken", spec.id)));
        }
        if !spec.port_security_enabled && !spec.security_group_ids.is_empty() {
            return Err(invalid(
                "a port without port security cannot have security groups",
            ));
        }
        self.check_port_groups(&spec.project_id, &spec.security_group_ids)?;
        // Work on a copy of the subnets touched, committed only when everything fits.
        let mut subnets: BTreeMap<String, Subnet> = network
            .subnet_ids
            .iter()
            .filter_map(|id| self.net.subnets.get(id))
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        let mut fixed_ips = Vec::new();
        if spec.fixed_ips.is_empty() {
            for family in [Family::V4, Family::V6] {
                let candidates: Vec<&String> = network
                    .subnet_ids
                    .iter()
                    .filter(|id| subnets.get(*id).is_some_and(|s| s.cidr.family == family))
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let found = candidates.iter().find_map(|id| {
                    let s = &subnets[*id];
                    ipam::lowest_free(&s.pools, &s.allocated).map(|a| ((*id).clone(), a))
                });
                let Some((sid, addr)) = found else {
                    return Err(Rejection::QuotaExceeded(format!(
                        "no free IPv{} address is left on network {}",
                        family.version(),
                        network.id
                    )));
                };
                let s = subnets.get_mut(&sid).expect("candidate exists");
                s.allocated.insert(addr, spec.id.clone());
                fixed_ips.push(FixedIp {
                    subnet_id: sid,
                    ip_address: ipam::format_ip(family, addr),
                });
            }
        } else {
            for req in &spec.fixed_ips {
                let (sid, addr) = pick_address(&network, &subnets, req)?;
                let s = subnets.get_mut(&sid).expect("picked subnet exists");
                if let Some(owner) = s.allocated.get(&addr) {
                    let what = if owner == &spec.id {
                        "this port already".to_owned()
                    } else {
                        "another port or floating IP".to_owned()
                    };
                    return Err(precondition(format!(
                        "address {} of subnet {sid} is in use by {what}",
                        ipam::format_ip(s.cidr.family, addr)
                    )));
                }
                s.allocated.insert(addr, spec.id.clone());
                fixed_ips.push(FixedIp {
                    subnet_id: sid,
                    ip_address: ipam::format_ip(s.cidr.family, addr),
                });
            }
        }
        let mac_address = if spec.mac_address.is_empty() {
            None
        } else {
            let mac = normalize_mac(&spec.mac_address).map_err(Rejection::Invalid)?;
            if self.net.ports.values().any(|p| p.mac_address == mac) {
                return Err(precondition(format!("MAC address {mac} is in use")));
            }
            Some(mac)
        };
        self.check_quota(&spec.project_id, &one(Resource::Ports))?;
        let mac_address = match mac_address {
            Some(m) => m,
            None => self.generate_mac()?,
        };
        let security_group_ids = if spec.port_security_enabled && spec.security_group_ids.is_empty()
        {
            vec![self.ensure_default_group(
                revision,
                t,
                &spec.project_id,
                &spec.default_group_ids,
            )?]
        } else {
            spec.security_group_ids.clone()
        };
        self.charge(&spec.project_id, &one(Resource::Ports))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        self.net.subnets.extend(subnets);
        let p = Port {
            id: spec.id.clone(),
            network_id: network.id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            project_id: spec.project_id.clone(),
            mac_address,
            fixed_ips,
            security_group_ids,
            device_owner: spec.device_owner.clone(),
            device_id: spec.device_id.clone(),
            admin_state_up: spec.admin_state_up,
            port_security_enabled: spec.port_security_enabled,
            meta: Meta::new(revision, t),
        };
        self.net.ports.insert(p.id.clone(), p.clone());
        created(p)
    }

    /// Forgets a port: frees its addresses, disassociates its floating IPs, gives back quota.
    pub(super) fn remove_port(&mut self, revision: u64, t: i64, p: &Port) {
        for ip in &p.fixed_ips {
            if let Some(s) = self.net.subnets.get_mut(&ip.subnet_id) {
                s.allocated.retain(|_, owner| *owner != p.id);
            }
        }
        for f in self.net.floating_ips.values_mut() {
            if f.port_id == p.id {
                f.port_id.clear();
                f.fixed_ip_address.clear();
                f.meta.touch(revision, t);
                self.more_changes.push(change_of(&*f, EventAction::Updated));
            }
        }
        self.net.ports.remove(&p.id);
        for wired in self.net.wired.values_mut() {
            wired.remove(&p.id);
        }
        self.net.wired.retain(|_, w| !w.is_empty());
        self.release(&p.project_id, &one(Resource::Ports));
    }

    pub fn port(&self, id: &str) -> Option<&Port> {
        self.net.ports.get(id)
    }

    pub fn ports_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Port> + 'a {
        super::page_after(&self.net.ports, after)
    }
}

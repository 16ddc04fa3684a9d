//! Floating IPs: addresses of external networks, allocated to a project and mapped (or not) to
//! one fixed address of one of its ports.
use super::ipam::{self, Family};
use super::networks::{
    check_description, created, deleted, invalid, one, precondition, unchanged, Applied, FixedIp,
    FloatingIp, NetCommand, Network, Port, Subnet,
};
use super::quota::Resource;
use super::{Meta, Rejection, State};

/// What owns an address that backs a floating IP (instead of a port id).
const FIP_OWNER: &str = "floatingip:";

impl State {
    pub(super) fn apply_floating_ip(&mut self, revision: u64, t: i64, cmd: &NetCommand) -> Applied {
        match cmd {
            NetCommand::CreateFloatingIp { .. } => self.create_floating_ip(revision, t, cmd),
            NetCommand::UpdateFloatingIp {
                floating_ip_id,
                description,
            } => {
                let f = self.net_get::<FloatingIp>(floating_ip_id)?.clone();
                let mut next = f.clone();
                if let Some(v) = description {
                    check_description("floating IP", v)?;
                    next.description = v.clone();
                }
                self.store_update(revision, t, f, next)
            }
            NetCommand::DeleteFloatingIp { floating_ip_id } => {
                let f = self.net_get::<FloatingIp>(floating_ip_id)?.clone();
                self.net.floating_ips.remove(&f.id);
                if let Some(s) = self.net.subnets.get_mut(&f.subnet_id) {
                    s.allocated
                        .retain(|_, owner| *owner != format!("{FIP_OWNER}{}", f.id));
                }
                self.release(&f.project_id, &one(Resource::FloatingIps));
                deleted(&f)
            }
            NetCommand::AssociateFloatingIp {
                floating_ip_id,
                port_id,
                fixed_ip_address,
            } => {
                let f = self.net_get::<FloatingIp>(floating_ip_id)?.clone();
                let mut next = f.clone();
                next.fixed_ip_address = self.fip_target(&f, port_id, fixed_ip_address)?;
                next.port_id = port_id.clone();
                self.store_update(revision, t, f, next)
            }
            NetCommand::DisassociateFloatingIp { floating_ip_id } => {
                let f = self.net_get::<FloatingIp>(floating_ip_id)?.clone();
                if f.port_id.is_empty() {
                    return unchanged(f);
                }
                let mut next = f.clone();
                next.port_id.clear();
                next.fixed_ip_address.clear();
                self.store_update(revision, t, f, next)
            }
            _ => unreachable!("apply_floating_ip called with another command"),
        }
    }

    fn create_floating_ip(&mut self, revision: u64, t: i64, cmd: &NetCommand) -> Applied {
        let NetCommand::CreateFloatingIp {
            id,
            network_id,
            project_id,
            address,
            port_id,
            fixed_ip_address,
            description,
        } = cmd
        else {
            unreachable!("create_floating_ip called with another command")
        };
        check_description("floating IP", description)?;
        self.project_enabled(project_id)?;
        if self.net.floating_ips.contains_key(id) {
            return Err(invalid(format!("floating IP id {id} is taken")));
        }
        let network = self.net_get::<Network>(network_id)?.clone();
        if !network.external {
            return Err(invalid(format!(
                "network {} is not external; floating IPs come from external networks",
                network.id
            )));
        }
        let v4: Vec<&Subnet> = network
            .subnet_ids
            .iter()
            .filter_map(|id| self.net.subnets.get(id))
            .filter(|s| s.cidr.family == Family::V4)
            .collect();
        let (subnet_id, addr) = if address.is_empty() {
            v4.iter()
                .find_map(|s| ipam::lowest_free(&s.pools, &s.allocated).map(|a| (s.id.clone(), a)))
                .ok_or_else(|| {
                    Rejection::QuotaExceeded(format!(
                        "no free address is left on external network {}",
                        network.id
                    ))
                })?
        } else {
            let (family, addr) = ipam::parse_ip(address).map_err(Rejection::Invalid)?;
            let s = v4
                .iter()
                .find(|s| s.cidr.contains(family, addr))
                .ok_or_else(|| {
                    invalid(format!(
                        "{address} is not inside an IPv4 subnet of network {}",
                        network.id
                    ))
                })?;
            let usable = s.cidr.usable().is_some_and(|(a, b)| addr >= a && addr <= b);
            if !usable || s.gateway == Some(addr) {
                return Err(invalid(format!(
                    "{address} is the gateway, network or broadcast address of subnet {}",
                    s.id
                )));
            }
            if s.allocated.contains_key(&addr) {
                return Err(precondition(format!("address {address} is in use")));
            }
            (s.id.clone(), addr)
        };
        let mut f = FloatingIp {
            id: id.clone(),
            network_id: network.id.clone(),
            subnet_id: subnet_id.clone(),
            address: ipam::format_ip(Family::V4, addr),
            project_id: project_id.clone(),
            port_id: String::new(),
            fixed_ip_address: String::new(),
            description: description.clone(),
            meta: Meta::new(revision, t),
        };
        if !port_id.is_empty() {
            f.fixed_ip_address = self.fip_target(&f, port_id, fixed_ip_address)?;
            f.port_id = port_id.clone();
        }
        self.charge(project_id, &one(Resource::FloatingIps))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        if let Some(s) = self.net.subnets.get_mut(&subnet_id) {
            s.allocated.insert(addr, format!("{FIP_OWNER}{}", f.id));
        }
        self.net.floating_ips.insert(f.id.clone(), f.clone());
        created(f)
    }

    /// Which fixed address of `port_id` the floating IP `f` may map to.
    fn fip_target(&self, f: &FloatingIp, port_id: &str, fixed: &str) -> Result<String, Rejection> {
        let port = self.net_get::<Port>(port_id)?;
        if port.project_id != f.project_id {
            return Err(invalid(format!(
                "port {port_id} belongs to another project than the floating IP"
            )));
        }
        if port.network_id == f.network_id {
            return Err(invalid(
                "a floating IP cannot map to a port on its own external network",
            ));
        }
        let v4: Vec<&FixedIp> = port
            .fixed_ips
            .iter()
            .filter(|ip| ipam::parse_ip(&ip.ip_address).is_ok_and(|(fam, _)| fam == Family::V4))
            .collect();
        let chosen = if fixed.is_empty() {
            v4.first()
                .map(|ip| ip.ip_address.clone())
                .ok_or_else(|| invalid(format!("port {port_id} has no IPv4 address")))?
        } else {
            v4.iter()
                .find(|ip| ip.ip_address == fixed)
                .map(|ip| ip.ip_address.clone())
                .ok_or_else(|| {
                    invalid(format!("{fixed} is not an IPv4 address of port {port_id}"))
                })?
        };
        if let Some(other) = self
            .net
            .floating_ips
            .values()
            .find(|o| o.id != f.id && o.port_id == port_id && o.fixed_ip_address == chosen)
        {
            return Err(precondition(format!(
                "{chosen} of port {port_id} already has floating IP {}",
                other.address
            )));
        }
        Ok(chosen)
    }

    pub fn floating_ip(&self, id: &str) -> Option<&FloatingIp> {
        self.net.floating_ips.get(id)
    }

    pub fn floating_ips_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = &'a FloatingIp> + 'a {
        super::page_after(&self.net.floating_ips, after)
    }
}

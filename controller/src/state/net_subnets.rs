//! Subnets: a network's address ranges, with their pools, gateway, DNS servers and host routes.
//! Their `allocated` maps are the IPAM that ports and floating IPs draw from.
use std::collections::BTreeMap;

use super::ipam::{self, Cidr, Family, Pool};
use super::networks::{
    check_description, check_name, created, deleted, invalid, one, precondition, set_texts,
    Applied, GatewaySpec, HostRoute, NetCommand, Network, Subnet, SubnetSpec,
};
use super::quota::Resource;
use super::{Meta, Rejection, State};

fn check_dns(family: Family, servers: &[String]) -> Result<(), Rejection> {
    if servers.len() > 5 {
        return Err(invalid("at most 5 DNS name servers per subnet"));
    }
    for s in servers {
        let (f, _) = ipam::parse_ip(s).map_err(Rejection::Invalid)?;
        if f != family {
            return Err(invalid(format!(
                "DNS name server {s} is not an IPv{} address like the subnet",
                family.version()
            )));
        }
    }
    Ok(())
}

fn check_routes(cidr: &Cidr, routes: &[HostRoute]) -> Result<(), Rejection> {
    if routes.len() > 20 {
        return Err(invalid("at most 20 host routes per subnet"));
    }
    for r in routes {
        let dest = Cidr::parse(&r.destination).map_err(Rejection::Invalid)?;
        let (f, _) = ipam::parse_ip(&r.nexthop).map_err(Rejection::Invalid)?;
        if dest.family != cidr.family || f != cidr.family {
            return Err(invalid(format!(
                "host route {} via {} is not IPv{} like the subnet",
                r.destination,
                r.nexthop,
                cidr.family.version()
            )));
        }
    }
    Ok(())
}

/// A gateway address: inside the CIDR and not its network (or IPv4 broadcast) address.
fn check_gateway(cidr: &Cidr, g: &str) -> Result<u128, Rejection> {
    let (family, addr) = ipam::parse_ip(g).map_err(Rejection::Invalid)?;
    if !cidr.contains(family, addr) {
        return Err(invalid(format!("gateway {g} is not inside {cidr}")));
    }
    if !cidr.usable().is_some_and(|(a, b)| addr >= a && addr <= b) {
        return Err(invalid(format!(
            "gateway {g} is the network or broadcast address of {cidr}"
        )));
    }
    Ok(addr)
}

impl State {
    pub(super) fn apply_subnet(&mut self, revision: u64, t: i64, cmd: &NetCommand) -> Applied {
        match cmd {
            NetCommand::CreateSubnet(spec) => self.create_subnet(revision, t, spec),
            NetCommand::UpdateSubnet {
                subnet_id,
                name,
                description,
                gateway_ip,
                enable_dhcp,
                dns_nameservers,
                host_routes,
            } => {
                let s = self.net_get::<Subnet>(subnet_id)?.clone();
                let mut next = s.clone();
                let texts = (name, description);
                set_texts("subnet", texts, &mut next.name, &mut next.description)?;
                if let Some(v) = enable_dhcp {
                    next.enable_dhcp = *v;
                }
                if let Some(v) = dns_nameservers {
                    check_dns(s.cidr.family, v)?;
                    next.dns_nameservers = v.clone();
                }
                if let Some(v) = host_routes {
                    check_routes(&s.cidr, v)?;
                    next.host_routes = v.clone();
                }
                if let Some(g) = gateway_ip {
                    next.gateway = if g.is_empty() {
                        None
                    } else {
                        let addr = check_gateway(&s.cidr, g)?;
                        if ipam::in_pools(&s.pools, addr) {
                            return Err(invalid(format!(
                                "gateway {g} is inside an allocation pool of subnet {}",
                                s.id
                            )));
                        }
                        if s.allocated.contains_key(&addr) {
                            return Err(precondition(format!(
                                "gateway {g} is allocated to a port"
                            )));
                        }
                        Some(addr)
                    };
                }
                self.store_update(revision, t, s, next)
            }
            NetCommand::DeleteSubnet { subnet_id } => {
                let s = self.net_get::<Subnet>(subnet_id)?.clone();
                if !s.allocated.is_empty() {
                    return Err(precondition(format!(
                        "{} address(es) of subnet {} are allocated (to ports or floating IPs); \
                         delete those first",
                        s.allocated.len(),
                        s.id
                    )));
                }
                self.net.subnets.remove(&s.id);
                self.release(&s.project_id, &one(Resource::Subnets));
                if let Some(n) = self.net.networks.get_mut(&s.network_id) {
                    n.subnet_ids.retain(|id| *id != s.id);
                }
                deleted(&s)
            }
            _ => unreachable!("apply_subnet called with another command"),
        }
    }

    fn create_subnet(&mut self, revision: u64, t: i64, spec: &SubnetSpec) -> Applied {
        check_name("subnet", &spec.name)?;
        check_description("subnet", &spec.description)?;
        let network = self.net_get::<Network>(&spec.network_id)?.clone();
        self.project_enabled(&network.project_id)?;
        if self.net.subnets.contains_key(&spec.id) {
            return Err(invalid(format!("subnet id {} is taken", spec.id)));
        }
        let cidr = Cidr::parse(&spec.cidr).map_err(Rejection::Invalid)?;
        if spec.ip_version != 0 && spec.ip_version != cidr.family.version() {
            return Err(invalid(format!(
                "ip_version {} does not match CIDR {cidr}",
                spec.ip_version
            )));
        }
        if cidr.family == Family::V4 && cidr.prefix_len > 30 {
            return Err(invalid(format!(
                "CIDR {cidr} is too small: an IPv4 subnet needs a prefix of /30 or shorter"
            )));
        }
        if let Some(other) = network
            .subnet_ids
            .iter()
            .filter_map(|id| self.net.subnets.get(id))
            .find(|s| s.cidr.overlaps(&cidr))
        {
            return Err(invalid(format!(
                "CIDR {cidr} overlaps subnet {} ({}) of the same network",
                other.id, other.cidr
            )));
        }
        let gateway = match &spec.gateway {
            GatewaySpec::None => None,
            GatewaySpec::Default => cidr.usable().map(|(first, _)| first),
            GatewaySpec::Address(g) => Some(check_gateway(&cidr, g)?),
        };
        let pools = if spec.allocation_pools.is_empty() {
            ipam::default_pools(&cidr, gateway)
        } else {
            let mut pools = Vec::new();
            for (start, end) in &spec.allocation_pools {
                let (fs, s) = ipam::parse_ip(start).map_err(Rejection::Invalid)?;
                let (fe, e) = ipam::parse_ip(end).map_err(Rejection::Invalid)?;
                if fs != cidr.family || fe != cidr.family {
                    return Err(invalid(format!(
                        "allocation pool {start}-{end} is not IPv{} like the subnet",
                        cidr.family.version()
                    )));
                }
                pools.push(Pool { start: s, end: e });
            }
            ipam::check_pools(&cidr, gateway, &pools).map_err(Rejection::Invalid)?
        };
        check_dns(cidr.family, &spec.dns_nameservers)?;
        check_routes(&cidr, &spec.host_routes)?;
        let s = Subnet {
            id: spec.id.clone(),
            network_id: network.id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            project_id: network.project_id.clone(),
            cidr,
            gateway,
            pools,
            dns_nameservers: spec.dns_nameservers.clone(),
            enable_dhcp: spec.enable_dhcp,
            host_routes: spec.host_routes.clone(),
            allocated: BTreeMap::new(),
            meta: Meta::new(revision, t),
        };
        self.charge(&s.project_id, &one(Resource::Subnets))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        self.net.subnets.insert(s.id.clone(), s.clone());
        if let Some(n) = self.net.networks.get_mut(&network.id) {
            n.subnet_ids.push(s.id.clone());
        }
        created(s)
    }

    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.net.subnets.get(id)
    }

    pub fn subnets_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Subnet> + 'a {
        super::page_after(&self.net.subnets, after)
    }
}

//! Networks: creation (VXLAN VNIs allocated here, flat and VLAN segments checked), updates and
//! deletion (which takes the network's subnets with it).
use super::networks::{
    change_of, check_description, check_name, created, deleted, invalid, one, precondition,
    set_texts, Applied, NetCommand, Network, NetworkSpec, NetworkType, MAX_VNI,
};
use super::quota::Resource;
use super::{EventAction, Meta, Rejection, State};

fn check_mtu(t: NetworkType, mtu: u32) -> Result<(), Rejection> {
    if !(68..=t.max_mtu()).contains(&mtu) {
        return Err(invalid(format!(
            "mtu {mtu} is out of range: a {t:?} network allows 68 to {}",
            t.max_mtu()
        )));
    }
    Ok(())
}

impl State {
    pub(super) fn apply_network(&mut self, revision: u64, t: i64, cmd: &NetCommand) -> Applied {
        match cmd {
            NetCommand::CreateNetwork(spec) => self.create_network(revision, t, spec),
            NetCommand::UpdateNetwork {
                network_id,
                name,
                description,
                admin_state_up,
                shared,
                external,
                mtu,
            } => {
                let n = self.net_get::<Network>(network_id)?.clone();
                let mut next = n.clone();
                let texts = (name, description);
                set_texts("network", texts, &mut next.name, &mut next.description)?;
                if let Some(v) = admin_state_up {
                    next.admin_state_up = *v;
                }
                if let Some(v) = mtu {
                    check_mtu(n.network_type, *v)?;
                    next.mtu = *v;
                }
                if let Some(v) = shared {
                    if !*v && n.shared {
                        let foreign = self
                            .net
                            .ports
                            .values()
                            .any(|p| p.network_id == n.id && p.project_id != n.project_id);
                        if foreign {
                            return Err(precondition(format!(
                                "network {} has ports of other projects; it must stay shared \
                                 until they are deleted",
                                n.id
                            )));
                        }
                    }
                    next.shared = *v;
                }
                if let Some(v) = external {
                    if !*v && n.external && self.has_floating_ips(&n) {
                        return Err(precondition(format!(
                            "floating IPs are allocated from network {}; delete them first",
                            n.id
                        )));
                    }
                    next.external = *v;
                }
                self.store_update(revision, t, n, next)
            }
            NetCommand::DeleteNetwork { network_id } => {
                let n = self.net_get::<Network>(network_id)?.clone();
                let ports = self
                    .net
                    .ports
                    .values()
                    .filter(|p| p.network_id == n.id)
                    .count();
                if ports > 0 {
                    return Err(precondition(format!(
                        "network {} still has {ports} port(s); delete them first",
                        n.id
                    )));
                }
                if self.has_floating_ips(&n) {
                    return Err(precondition(format!(
                        "floating IPs are allocated from network {}; delete them first",
                        n.id
                    )));
                }
                for sid in &n.subnet_ids {
                    if let Some(s) = self.net.subnets.remove(sid) {
                        self.release(&s.project_id, &one(Resource::Subnets));
                        self.more_changes.push(change_of(&s, EventAction::Deleted));
                    }
                }
                self.net.networks.remove(&n.id);
                self.release(&n.project_id, &one(Resource::Networks));
                deleted(&n)
            }
            _ => unreachable!("apply_network called with another command"),
        }
    }

    fn has_floating_ips(&self, n: &Network) -> bool {
        self.net.floating_ips.values().any(|f| f.network_id == n.id)
    }

    fn create_network(&mut self, revision: u64, t: i64, spec: &NetworkSpec) -> Applied {
        check_name("network", &spec.name)?;
        check_description("network", &spec.description)?;
        self.project_enabled(&spec.project_id)?;
        if self.net.networks.contains_key(&spec.id) {
            return Err(invalid(format!("network id {} is taken", spec.id)));
        }
        let segmentation_id = match spec.network_type {
            NetworkType::Vxlan => {
                if !spec.physical_network.is_empty() {
                    return Err(invalid("a VXLAN network has no physical network"));
                }
                let used = |vni: u32| {
                    self.net
                        .networks
                        .values()
                        .any(|n| n.network_type == NetworkType::Vxlan && n.segmentation_id == vni)
                };
                if spec.segmentation_id != 0 {
                    if spec.segmentation_id > MAX_VNI {
                        return Err(invalid(format!(
                            "VNI {} is out of range (1 to {MAX_VNI})",
                            spec.segmentation_id
                        )));
                    }
                    if used(spec.segmentation_id) {
                        return Err(precondition(format!(
                            "VNI {} is used by another network",
                            spec.segmentation_id
                        )));
                    }
                    spec.segmentation_id
                } else {
                    let (lo, hi) = spec.vni_range;
                    let lo = lo.max(1);
                    let hi = hi.min(MAX_VNI);
                    let mut taken: Vec<u32> = self
                        .net
                        .networks
                        .values()
                        .filter(|n| n.network_type == NetworkType::Vxlan)
                        .map(|n| n.segmentation_id)
                        .filter(|v| (lo..=hi).contains(v))
                        .collect();
                    taken.sort_unstable();
                    let mut candidate = lo;
                    for v in taken {
                        if v == candidate {
                            candidate += 1;
                        } else if v > candidate {
                            break;
                        }
                    }
                    if candidate > hi || lo > hi {
                        return Err(Rejection::QuotaExceeded(format!(
                            "no free VXLAN VNI is left in the range {lo}-{hi}"
                        )));
                    }
                    candidate
                }
            }
            NetworkType::Flat => {
                if spec.physical_network.is_empty() {
                    return Err(invalid("a flat network needs a physical network"));
                }
                if spec.segmentation_id != 0 {
                    return Err(invalid("a flat network has no segmentation id"));
                }
                if self.net.networks.values().any(|n| {
                    n.network_type == NetworkType::Flat
                        && n.physical_network == spec.physical_network
                }) {
                    return Err(precondition(format!(
                        "physical network {:?} already carries a flat network",
                        spec.physical_network
                    )));
                }
                0
            }
            NetworkType::Vlan => {
                if spec.physical_network.is_empty() {
                    return Err(invalid("a VLAN network needs a physical network"));
                }
                if !(1..=4094).contains(&spec.segmentation_id) {
                    return Err(invalid(format!(
                        "VLAN id {} is out of range (1 to 4094)",
                        spec.segmentation_id
                    )));
                }
                if self.net.networks.values().any(|n| {
                    n.network_type == NetworkType::Vlan
                        && n.physical_network == spec.physical_network
                        && n.segmentation_id == spec.segmentation_id
                }) {
                    return Err(precondition(format!(
                        "VLAN {} on physical network {:?} is used by another network",
                        spec.segmentation_id, spec.physical_network
                    )));
                }
                spec.segmentation_id
            }
        };
        let mtu = spec.mtu.unwrap_or(spec.network_type.max_mtu());
        check_mtu(spec.network_type, mtu)?;
        self.charge(&spec.project_id, &one(Resource::Networks))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        let n = Network {
            id: spec.id.clone(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            project_id: spec.project_id.clone(),
            network_type: spec.network_type,
            segmentation_id,
            physical_network: spec.physical_network.clone(),
            external: spec.external,
            shared: spec.shared,
            mtu,
            admin_state_up: spec.admin_state_up,
            subnet_ids: Vec::new(),
            meta: Meta::new(revision, t),
        };
        self.net.networks.insert(n.id.clone(), n.clone());
        created(n)
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.net.networks.get(id)
    }

    pub fn networks_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Network> + 'a {
        super::page_after(&self.net.networks, after)
    }
}

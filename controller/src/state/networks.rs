//! Tenant networking in replicated state (Neutron's model): networks, subnets, ports, floating
//! IPs. IPAM happens here, in `apply` (I3): an address is handed out by the entry that records
//! it, so two concurrent requests can never get the same one. This file holds the types, the
//! dispatch and what the handlers share ([`NetResource`]); each resource's handlers are in
//! `net_networks`, `net_subnets`, `net_ports` and `net_floating`, security groups in
//! [`super::security_groups`].
//!
//! Ids (and the ids of a project's `default` security group, should this entry create it) are
//! stamped by the proposer; VNIs, MAC addresses and fixed addresses are chosen here from state
//! alone, so every replica picks the same.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ipam::{self, Cidr, Pool};
use super::quota::{Resource, ResourceDelta};
use super::security_groups::{SecurityGroup, SecurityGroupRule};
use super::{validate, Change, Command, Envelope, EventAction, Meta, Outcome, Rejection, State};

pub(super) type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// The VXLAN VNIs a tenant network may get when the leader's configuration names none.
pub const DEFAULT_VNI_RANGE: (u32, u32) = (1, 65_535);
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Generated MAC addresses: this prefix (OpenStack's `fa:16:3e`) and a 24-bit counter.
pub const MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3e];
/// Physical MTU assumed for flat and VLAN networks; VXLAN takes 50 bytes of it.
pub const PHYSICAL_MTU: u32 = 1500;
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkType {
    Vxlan,
    Flat,
    Vlan,
}

impl NetworkType {
    pub fn max_mtu(self) -> u32 {
        match self {
            NetworkType::Vxlan => PHYSICAL_MTU - VXLAN_OVERHEAD,
            NetworkType::Flat | NetworkType::Vlan => PHYSICAL_MTU,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub network_type: NetworkType,
    /// VNI (VXLAN) or VLAN id; 0 for flat.
    pub segmentation_id: u32,
    pub physical_network: String,
    pub external: bool,
    pub shared: bool,
    pub mtu: u32,
    pub admin_state_up: bool,
    /// In creation order.
    pub subnet_ids: Vec<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub cidr: Cidr,
    pub gateway: Option<u128>,
    /// Sorted, disjoint, inside the CIDR, without the gateway.
    pub pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub enable_dhcp: bool,
    pub host_routes: Vec<HostRoute>,
    /// Address → owner (a port id, or `floatingip:<id>`).
    pub allocated: BTreeMap<u128, String>,
    pub meta: Meta,
}

impl Subnet {
    pub fn gateway_ip(&self) -> String {
        self.gateway
            .map(|g| ipam::format_ip(self.cidr.family, g))
            .unwrap_or_default()
    }

    pub fn pool_strings(&self) -> Vec<(String, String)> {
        let f = self.cidr.family;
        self.pools
            .iter()
            .map(|p| (ipam::format_ip(f, p.start), ipam::format_ip(f, p.end)))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub mac_address: String,
    pub fixed_ips: Vec<FixedIp>,
    pub security_group_ids: Vec<String>,
    pub device_owner: String,
    pub device_id: String,
    pub admin_state_up: bool,
    pub port_security_enabled: bool,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    pub network_id: String,
    pub subnet_id: String,
    pub address: String,
    pub project_id: String,
    /// Associated port and which of its addresses; empty when unassociated.
    pub port_id: String,
    pub fixed_ip_address: String,
    pub description: String,
    pub meta: Meta,
}

/// What `CreateNetwork` records; the API has checked who may set the admin-only fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub network_type: NetworkType,
    /// 0 = allocate (VXLAN).
    pub segmentation_id: u32,
    pub physical_network: String,
    pub external: bool,
    pub shared: bool,
    pub mtu: Option<u32>,
    pub admin_state_up: bool,
    /// Inclusive range tenant VNIs come from (the leader's configuration).
    pub vni_range: (u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewaySpec {
    /// The first usable address of the CIDR.
    Default,
    None,
    Address(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub cidr: String,
    /// 0 = derived from the CIDR.
    pub ip_version: u32,
    pub gateway: GatewaySpec,
    /// (start, end); empty = the whole usable range except the gateway.
    pub allocation_pools: Vec<(String, String)>,
    pub dns_nameservers: Vec<String>,
    pub enable_dhcp: bool,
    pub host_routes: Vec<HostRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub id: String,
    pub network_id: String,
    /// The owner; may differ from the network's for a shared network.
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// Empty = generated.
    pub mac_address: String,
    /// Empty = one address from each IP version's first subnet with room.
    pub fixed_ips: Vec<FixedIp>,
    /// Ids; empty = the project's `default` group (unless port security is off).
    pub security_group_ids: Vec<String>,
    pub port_security_enabled: bool,
    pub admin_state_up: bool,
    pub device_owner: String,
    pub device_id: String,
    /// Ids for the project's `default` group and its rules, used when this entry creates it.
    pub default_group_ids: Vec<String>,
}

/// Networking commands, carried by [`Command::Networking`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetCommand {
    CreateNetwork(NetworkSpec),
    UpdateNetwork {
        network_id: String,
        name: Option<String>,
        description: Option<String>,
        admin_state_up: Option<bool>,
        shared: Option<bool>,
        external: Option<bool>,
        mtu: Option<u32>,
    },
    DeleteNetwork {
        network_id: String,
    },
    CreateSubnet(SubnetSpec),
    UpdateSubnet {
        subnet_id: String,
        name: Option<String>,
        description: Option<String>,
        /// `Some("")` removes the gateway.
        gateway_ip: Option<String>,
        enable_dhcp: Option<bool>,
        dns_nameservers: Option<Vec<String>>,
        host_routes: Option<Vec<HostRoute>>,
    },
    DeleteSubnet {
        subnet_id: String,
    },
    CreatePort(PortSpec),
    UpdatePort {
        port_id: String,
        name: Option<String>,
        description: Option<String>,
        admin_state_up: Option<bool>,
        port_security_enabled: Option<bool>,
        security_group_ids: Option<Vec<String>>,
    },
    DeletePort {
        port_id: String,
    },
    CreateFloatingIp {
        id: String,
        network_id: String,
        project_id: String,
        /// Empty = the lowest free address.
        address: String,
        /// Associate right away when not empty.
        port_id: String,
        fixed_ip_address: String,
        description: String,
    },
    UpdateFloatingIp {
        floating_ip_id: String,
        description: Option<String>,
    },
    DeleteFloatingIp {
        floating_ip_id: String,
    },
    AssociateFloatingIp {
        floating_ip_id: String,
        port_id: String,
        /// Empty = the port's first IPv4 address.
        fixed_ip_address: String,
    },
    DisassociateFloatingIp {
        floating_ip_id: String,
    },
    CreateSecurityGroup {
        id: String,
        project_id: String,
        name: String,
        description: String,
        /// Ids of its two egress rules, then ids for the project's `default` group.
        fresh_ids: Vec<String>,
    },
    UpdateSecurityGroup {
        group_id: String,
        name: Option<String>,
        description: Option<String>,
    },
    DeleteSecurityGroup {
        group_id: String,
    },
    CreateSecurityGroupRule(super::security_groups::RuleSpec),
    DeleteSecurityGroupRule {
        rule_id: String,
    },
    /// Creates the project's `default` group unless it has one.
    EnsureDefaultSecurityGroup {
        project_id: String,
        fresh_ids: Vec<String>,
    },
}

impl NetCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            NetCommand::CreateNetwork(_) => "create_network",
            NetCommand::UpdateNetwork { .. } => "update_network",
            NetCommand::DeleteNetwork { .. } => "delete_network",
            NetCommand::CreateSubnet(_) => "create_subnet",
            NetCommand::UpdateSubnet { .. } => "update_subnet",
            NetCommand::DeleteSubnet { .. } => "delete_subnet",
            NetCommand::CreatePort(_) => "create_port",
            NetCommand::UpdatePort { .. } => "update_port",
            NetCommand::DeletePort { .. } => "delete_port",
            NetCommand::CreateFloatingIp { .. } => "create_floating_ip",
            NetCommand::UpdateFloatingIp { .. } => "update_floating_ip",
            NetCommand::DeleteFloatingIp { .. } => "delete_floating_ip",
            NetCommand::AssociateFloatingIp { .. } => "associate_floating_ip",
            NetCommand::DisassociateFloatingIp { .. } => "disassociate_floating_ip",
            NetCommand::CreateSecurityGroup { .. } => "create_security_group",
            NetCommand::UpdateSecurityGroup { .. } => "update_security_group",
            NetCommand::DeleteSecurityGroup { .. } => "delete_security_group",
            NetCommand::CreateSecurityGroupRule(_) => "create_security_group_rule",
            NetCommand::DeleteSecurityGroupRule { .. } => "delete_security_group_rule",
            NetCommand::EnsureDefaultSecurityGroup { .. } => "ensure_default_security_group",
        }
    }
}

/// What a networking command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetOutcome {
    Network(Network),
    Subnet(Subnet),
    Port(Port),
    FloatingIp(FloatingIp),
    SecurityGroup(SecurityGroup),
    SecurityGroupRule(SecurityGroupRule),
}

/// Networking resources of the state. Plain `BTreeMap`s: encoding stays deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Networking {
    pub(super) networks: BTreeMap<String, Network>,
    pub(super) subnets: BTreeMap<String, Subnet>,
    pub(super) ports: BTreeMap<String, Port>,
    pub(super) floating_ips: BTreeMap<String, FloatingIp>,
    pub(super) security_groups: BTreeMap<String, SecurityGroup>,
    pub(super) rules: BTreeMap<String, SecurityGroupRule>,
    /// Counter behind generated MAC addresses (only ever grows).
    pub(super) next_mac: u32,
    /// Host id → the existing ports its agent last reported wired (observed state).
    pub(super) wired: BTreeMap<String, BTreeSet<String>>,
}

/// What the handlers of every networking resource share: its table, how its events name it and
/// which [`NetOutcome`] carries it.
pub(super) trait NetResource: Clone + PartialEq {
    /// The event's resource type.
    const TYPE: &'static str;
    /// What rejections call it.
    const KIND: &'static str;
    fn table(net: &Networking) -> &BTreeMap<String, Self>;
    fn table_mut(net: &mut Networking) -> &mut BTreeMap<String, Self>;
    fn id(&self) -> &str;
    /// The name its events carry.
    fn label(&self) -> &str;
    fn project_id(&self) -> &str;
    fn meta_mut(&mut self) -> &mut Meta;
    fn into_outcome(self) -> NetOutcome;
}

macro_rules! net_resource {
    ($ty:ty, $table:ident, $type:literal, $kind:literal, $label:ident, $outcome:ident) => {
        impl NetResource for $ty {
            const TYPE: &'static str = $type;
            const KIND: &'static str = $kind;
            fn table(net: &Networking) -> &BTreeMap<String, Self> {
                &net.$table
            }
            fn table_mut(net: &mut Networking) -> &mut BTreeMap<String, Self> {
                &mut net.$table
            }
            fn id(&self) -> &str {
                &self.id
            }
            fn label(&self) -> &str {
                &self.$label
            }
            fn project_id(&self) -> &str {
                &self.project_id
            }
            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
            fn into_outcome(self) -> NetOutcome {
                NetOutcome::$outcome(self)
            }
        }
    };
}

net_resource!(Network, networks, "network", "network", name, Network);
net_resource!(Subnet, subnets, "subnet", "subnet", name, Subnet);
net_resource!(Port, ports, "port", "port", name, Port);
net_resource!(
    FloatingIp,
    floating_ips,
    "floating_ip",
    "floating IP",
    address,
    FloatingIp
);
net_resource!(
    SecurityGroup,
    security_groups,
    "security_group",
    "security group",
    name,
    SecurityGroup
);

pub(super) fn ok(out: NetOutcome, change: Change<'static>) -> Applied {
    Ok((Outcome::Net(Box::new(out)), Some(change)))
}

pub(super) fn change(
    resource_type: &'static str,
    id: &str,
    name: &str,
    action: EventAction,
    project_id: &str,
) -> Change<'static> {
    Change {
        resource_type,
        resource_id: id.to_owned(),
        resource_name: name.to_owned(),
        action,
        project_id: project_id.to_owned(),
    }
}

pub(super) fn one(r: Resource) -> ResourceDelta {
    [(r, 1)].into_iter().collect()
}

pub(super) fn invalid(msg: impl Into<String>) -> Rejection {
    Rejection::Invalid(msg.into())
}

pub(super) fn precondition(msg: impl Into<String>) -> Rejection {
    Rejection::FailedPrecondition(msg.into())
}

pub(super) fn check_name(kind: &str, name: &str) -> Result<(), Rejection> {
    // Neutron's names may be empty; when given they follow the usual rules.
    if name.is_empty() {
        return Ok(());
    }
    validate::name(kind, name).map_err(Rejection::Invalid)
}

pub(super) fn check_description(kind: &str, text: &str) -> Result<(), Rejection> {
    validate::description(kind, text).map_err(Rejection::Invalid)
}

/// An update's new name and description, each when given: checked as `kind`'s, then set.
pub(super) fn set_texts(
    kind: &str,
    (new_name, new_description): (&Option<String>, &Option<String>),
    name: &mut String,
    description: &mut String,
) -> Result<(), Rejection> {
    if let Some(v) = new_name {
        check_name(kind, v)?;
        *name = v.clone();
    }
    if let Some(v) = new_description {
        check_description(kind, v)?;
        *description = v.clone();
    }
    Ok(())
}

/// The event of `action` on `r`.
pub(super) fn change_of<R: NetResource>(r: &R, action: EventAction) -> Change<'static> {
    change(R::TYPE, r.id(), r.label(), action, r.project_id())
}

/// `r` was just stored: it is the outcome, with its creation event.
pub(super) fn created<R: NetResource>(r: R) -> Applied {
    let c = change_of(&r, EventAction::Created);
    ok(r.into_outcome(), c)
}

/// `r` was just removed: its deletion event.
pub(super) fn deleted<R: NetResource>(r: &R) -> Applied {
    Ok((Outcome::Deleted, Some(change_of(r, EventAction::Deleted))))
}

/// Nothing changed: `r` as it is, no event.
pub(super) fn unchanged<R: NetResource>(r: R) -> Applied {
    Ok((Outcome::Net(Box::new(r.into_outcome())), None))
}

impl State {
    pub(super) fn apply_networking(&mut self, revision: u64, env: &Envelope) -> Applied {
        let Command::Networking(cmd) = &env.command else {
            unreachable!("apply_networking called with a non-networking command")
        };
        let t = env.time_ms;
        match cmd {
            NetCommand::CreateNetwork(_)
            | NetCommand::UpdateNetwork { .. }
            | NetCommand::DeleteNetwork { .. } => self.apply_network(revision, t, cmd),
            NetCommand::CreateSubnet(_)
            | NetCommand::UpdateSubnet { .. }
            | NetCommand::DeleteSubnet { .. } => self.apply_subnet(revision, t, cmd),
            NetCommand::CreatePort(_)
            | NetCommand::UpdatePort { .. }
            | NetCommand::DeletePort { .. } => self.apply_port(revision, t, cmd),
            NetCommand::CreateFloatingIp { .. }
            | NetCommand::UpdateFloatingIp { .. }
            | NetCommand::DeleteFloatingIp { .. }
            | NetCommand::AssociateFloatingIp { .. }
            | NetCommand::DisassociateFloatingIp { .. } => self.apply_floating_ip(revision, t, cmd),
            NetCommand::CreateSecurityGroup { .. }
            | NetCommand::UpdateSecurityGroup { .. }
            | NetCommand::DeleteSecurityGroup { .. }
            | NetCommand::CreateSecurityGroupRule(_)
            | NetCommand::DeleteSecurityGroupRule { .. }
            | NetCommand::EnsureDefaultSecurityGroup { .. } => {
                self.apply_security_group(revision, t, cmd)
            }
        }
    }

    /// The resource `id` of `R`'s table, or NotFound.
    pub(super) fn net_get<R: NetResource>(&self, id: &str) -> Result<&R, Rejection> {
        R::table(&self.net)
            .get(id)
            .ok_or_else(|| Rejection::not_found(R::KIND, id))
    }

    /// Stores `next`, the changed copy of `old`, touched and with its update event; when nothing
    /// differs, answers `old` and records nothing.
    pub(super) fn store_update<R: NetResource>(
        &mut self,
        revision: u64,
        t: i64,
        old: R,
        mut next: R,
    ) -> Applied {
        if next == old {
            return unchanged(old);
        }
        next.meta_mut().touch(revision, t);
        R::table_mut(&mut self.net).insert(next.id().to_owned(), next.clone());
        let c = change_of(&next, EventAction::Updated);
        ok(next.into_outcome(), c)
    }

    pub(super) fn project_enabled(&self, project_id: &str) -> Result<(), Rejection> {
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| Rejection::not_found("project", project_id))?;
        if !project.enabled {
            return Err(precondition(format!(
                "project {:?} is disabled",
                project.name
            )));
        }
        Ok(())
    }
}

impl State {
    /// What networking resources a project still owns that block its deletion (networks,
    /// ports, floating IPs), as "N network(s), …"; None when there are none.
    pub(super) fn project_networking_in_use(&self, project_id: &str) -> Option<String> {
        let networks = self.owned_by::<Network>(project_id);
        let ports = self.owned_by::<Port>(project_id);
        let fips = self.owned_by::<FloatingIp>(project_id);
        let parts: Vec<String> = [
            (networks, "network(s)"),
            (ports, "port(s)"),
            (fips, "floating IP(s)"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// How many resources of `R` the project owns.
    fn owned_by<R: NetResource>(&self, project_id: &str) -> usize {
        R::table(&self.net)
            .values()
            .filter(|r| r.project_id() == project_id)
            .count()
    }

    /// Drops a deleted project's security groups (its `default` one included) and their rules.
    pub(super) fn forget_project_networking(&mut self, project_id: &str) {
        self.net
            .security_groups
            .retain(|_, g| g.project_id != project_id);
        self.net.rules.retain(|_, r| r.project_id != project_id);
    }
}

impl State {
    /// Records usage without the admission check: the `default` security group and its rules
    /// are created whenever a project needs them and count, over quota or not (as Neutron).
    pub(super) fn force_charge(&mut self, project_id: &str, delta: &ResourceDelta) {
        let usage = self.quota_usage.entry(project_id.to_owned()).or_default();
        for (&r, &amount) in delta {
            *usage.entry(r).or_insert(0) += amount;
        }
        usage.retain(|_, v| *v != 0);
    }
}

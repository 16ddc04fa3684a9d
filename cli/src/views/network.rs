//! Networking views: networks, subnets, ports, floating IPs, security groups and their rules.
use std::collections::HashMap;

use flotilla_proto::v1;
use serde::Serialize;

use super::{meta_fields, MetaView};
use crate::output::{short_enum, yes_no, Tabular};

fn status_name(value: i32) -> String {
    v1::NetworkResourceStatus::try_from(value)
        .map(|s| short_enum(s.as_str_name(), "NETWORK_RESOURCE_STATUS_"))
        .unwrap_or_else(|_| value.to_string())
}

/// A list row: the values of the `show` fields named in `keys` (separated by spaces), in order.
fn cells(fields: Vec<(&'static str, String)>, keys: &str) -> Vec<String> {
    let mut fields: HashMap<_, _> = fields.into_iter().collect();
    keys.split_whitespace()
        .map(|key| {
            debug_assert!(fields.contains_key(key), "no show field `{key}`");
            fields.remove(key).unwrap_or_default()
        })
        .collect()
}

fn opt(v: Option<u32>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "any".into())
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub network_type: String,
    pub segmentation_id: u32,
    pub physical_network: String,
    pub external: bool,
    pub shared: bool,
    pub mtu: u32,
    pub admin_state_up: bool,
    pub status: String,
    pub subnet_ids: Vec<String>,
    pub description: String,
    pub meta: Option<MetaView>,
}

impl From<v1::Network> for NetworkView {
    fn from(n: v1::Network) -> Self {
        NetworkView {
            network_type: v1::NetworkType::try_from(n.network_type)
                .map(|t| short_enum(t.as_str_name(), "NETWORK_TYPE_"))
                .unwrap_or_else(|_| n.network_type.to_string()),
            status: status_name(n.status),
            id: n.id,
            name: n.name,
            project_id: n.project_id,
            segmentation_id: n.segmentation_id,
            physical_network: n.physical_network,
            external: n.external,
            shared: n.shared,
            mtu: n.mtu,
            admin_state_up: n.admin_state_up,
            subnet_ids: n.subnet_ids,
            description: n.description,
            meta: n.meta.map(MetaView::from),
        }
    }
}

impl Tabular for NetworkView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID", "NAME", "TYPE", "SEGMENT", "EXTERNAL", "SHARED", "SUBNETS",
        ]
    }
    fn row(&self) -> Vec<String> {
        cells(
            self.fields(),
            "id name network_type segmentation_id external shared subnet_ids",
        )
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("project_id", self.project_id.clone()),
            ("network_type", self.network_type.clone()),
            ("segmentation_id", self.segmentation_id.to_string()),
            ("physical_network", self.physical_network.clone()),
            ("external", yes_no(self.external)),
            ("shared", yes_no(self.shared)),
            ("mtu", self.mtu.to_string()),
            ("admin_state_up", yes_no(self.admin_state_up)),
            ("status", self.status.clone()),
            ("subnet_ids", self.subnet_ids.join(", ")),
            ("description", self.description.clone()),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SubnetView {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub project_id: String,
    pub cidr: String,
    pub ip_version: u32,
    pub gateway_ip: String,
    pub allocation_pools: Vec<String>,
    pub dns_nameservers: Vec<String>,
    pub enable_dhcp: bool,
    pub host_routes: Vec<String>,
    pub description: String,
    pub meta: Option<MetaView>,
}

impl From<v1::Subnet> for SubnetView {
    fn from(s: v1::Subnet) -> Self {
        SubnetView {
            id: s.id,
            network_id: s.network_id,
            name: s.name,
            project_id: s.project_id,
            cidr: s.cidr,
            ip_version: s.ip_version,
            gateway_ip: s.gateway_ip,
            allocation_pools: s
                .allocation_pools
                .into_iter()
                .map(|p| format!("{}-{}", p.start, p.end))
                .collect(),
            dns_nameservers: s.dns_nameservers,
            enable_dhcp: s.enable_dhcp,
            host_routes: s
                .host_routes
                .into_iter()
                .map(|r| format!("{} via {}", r.destination, r.nexthop))
                .collect(),
            description: s.description,
            meta: s.meta.map(MetaView::from),
        }
    }
}

impl Tabular for SubnetView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "NETWORK", "CIDR", "GATEWAY"]
    }
    fn row(&self) -> Vec<String> {
        cells(self.fields(), "id name network_id cidr gateway_ip")
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("network_id", self.network_id.clone()),
            ("project_id", self.project_id.clone()),
            ("cidr", self.cidr.clone()),
            ("ip_version", self.ip_version.to_string()),
            ("gateway_ip", self.gateway_ip.clone()),
            ("allocation_pools", self.allocation_pools.join(", ")),
            ("dns_nameservers", self.dns_nameservers.join(", ")),
            ("enable_dhcp", yes_no(self.enable_dhcp)),
            ("host_routes", self.host_routes.join(", ")),
            ("description", self.description.clone()),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PortView {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub project_id: String,
    pub mac_address: String,
    /// `ADDRESS (subnet SUBNET)`.
    pub fixed_ips: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub device_owner: String,
    pub device_id: String,
    pub host: String,
    pub status: String,
    pub admin_state_up: bool,
    pub port_security_enabled: bool,
    pub description: String,
    pub meta: Option<MetaView>,
}

impl From<v1::Port> for PortView {
    fn from(p: v1::Port) -> Self {
        PortView {
            status: status_name(p.status),
            id: p.id,
            network_id: p.network_id,
            name: p.name,
            project_id: p.project_id,
            mac_address: p.mac_address,
            fixed_ips: p
                .fixed_ips
                .into_iter()
                .map(|f| format!("{} (subnet {})", f.ip_address, f.subnet_id))
                .collect(),
            security_group_ids: p.security_group_ids,
            device_owner: p.device_owner,
            device_id: p.device_id,
            host: p.host,
            admin_state_up: p.admin_state_up,
            port_security_enabled: p.port_security_enabled,
            description: p.description,
            meta: p.meta.map(MetaView::from),
        }
    }
}

impl Tabular for PortView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "MAC", "FIXED IPS", "STATUS"]
    }
    fn row(&self) -> Vec<String> {
        cells(self.fields(), "id name mac_address fixed_ips status")
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("network_id", self.network_id.clone()),
            ("project_id", self.project_id.clone()),
            ("mac_address", self.mac_address.clone()),
            ("fixed_ips", self.fixed_ips.join(", ")),
            ("security_group_ids", self.security_group_ids.join(", ")),
            ("device_owner", self.device_owner.clone()),
            ("device_id", self.device_id.clone()),
            ("host", self.host.clone()),
            ("status", self.status.clone()),
            ("admin_state_up", yes_no(self.admin_state_up)),
            ("port_security_enabled", yes_no(self.port_security_enabled)),
            ("description", self.description.clone()),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FloatingIpView {
    pub id: String,
    pub floating_network_id: String,
    pub floating_ip_address: String,
    pub port_id: String,
    pub fixed_ip_address: String,
    pub project_id: String,
    pub status: String,
    pub server_id: String,
    pub host: String,
    pub description: String,
    pub meta: Option<MetaView>,
}

impl From<v1::FloatingIp> for FloatingIpView {
    fn from(f: v1::FloatingIp) -> Self {
        FloatingIpView {
            status: status_name(f.status),
            id: f.id,
            floating_network_id: f.floating_network_id,
            floating_ip_address: f.floating_ip_address,
            port_id: f.port_id,
            fixed_ip_address: f.fixed_ip_address,
            project_id: f.project_id,
            server_id: f.server_id,
            host: f.host,
            description: f.description,
            meta: f.meta.map(MetaView::from),
        }
    }
}

impl Tabular for FloatingIpView {
    fn columns() -> &'static [&'static str] {
        &["ID", "FLOATING IP", "FIXED IP", "PORT", "STATUS"]
    }
    fn row(&self) -> Vec<String> {
        cells(
            self.fields(),
            "id floating_ip_address fixed_ip_address port_id status",
        )
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("floating_network_id", self.floating_network_id.clone()),
            ("floating_ip_address", self.floating_ip_address.clone()),
            ("port_id", self.port_id.clone()),
            ("fixed_ip_address", self.fixed_ip_address.clone()),
            ("project_id", self.project_id.clone()),
            ("status", self.status.clone()),
            ("server_id", self.server_id.clone()),
            ("host", self.host.clone()),
            ("description", self.description.clone()),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub id: String,
    pub security_group_id: String,
    pub direction: String,
    pub ethertype: String,
    pub protocol: String,
    pub port_range_min: Option<u32>,
    pub port_range_max: Option<u32>,
    pub remote_ip_prefix: String,
    pub remote_group_id: String,
    pub description: String,
    pub project_id: String,
    pub meta: Option<MetaView>,
}

impl RuleView {
    /// `22`, `8000-8080`, `any`; ICMP: `type 8 code 0`.
    fn ports(&self) -> String {
        match (
            self.protocol.as_str(),
            self.port_range_min,
            self.port_range_max,
        ) {
            (_, None, None) => "any".into(),
            ("icmp" | "icmpv6", t, c) => format!("type {} code {}", opt(t), opt(c)),
            (_, Some(a), Some(b)) if a == b => a.to_string(),
            (_, a, b) => format!("{}-{}", opt(a), opt(b)),
        }
    }

    fn remote(&self) -> String {
        if !self.remote_group_id.is_empty() {
            format!("group {}", self.remote_group_id)
        } else if !self.remote_ip_prefix.is_empty() {
            self.remote_ip_prefix.clone()
        } else {
            "any".into()
        }
    }
}

impl From<v1::SecurityGroupRule> for RuleView {
    fn from(r: v1::SecurityGroupRule) -> Self {
        RuleView {
            direction: v1::SecurityGroupRuleDirection::try_from(r.direction)
                .map(|d| short_enum(d.as_str_name(), "SECURITY_GROUP_RULE_DIRECTION_"))
                .unwrap_or_else(|_| r.direction.to_string()),
            ethertype: v1::SecurityGroupRuleEthertype::try_from(r.ethertype)
                .map(|e| short_enum(e.as_str_name(), "SECURITY_GROUP_RULE_ETHERTYPE_"))
                .unwrap_or_else(|_| r.ethertype.to_string()),
            id: r.id,
            security_group_id: r.security_group_id,
            protocol: r.protocol,
            port_range_min: r.port_range_min,
            port_range_max: r.port_range_max,
            remote_ip_prefix: r.remote_ip_prefix,
            remote_group_id: r.remote_group_id,
            description: r.description,
            project_id: r.project_id,
            meta: r.meta.map(MetaView::from),
        }
    }
}

impl Tabular for RuleView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "DIRECTION",
            "ETHERTYPE",
            "PROTOCOL",
            "PORTS",
            "REMOTE",
        ]
    }
    fn row(&self) -> Vec<String> {
        cells(
            self.fields(),
            "id direction ethertype protocol ports remote",
        )
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("security_group_id", self.security_group_id.clone()),
            ("direction", self.direction.clone()),
            ("ethertype", self.ethertype.clone()),
            ("protocol", self.protocol.clone()),
            ("ports", self.ports()),
            ("remote", self.remote()),
            ("description", self.description.clone()),
            ("project_id", self.project_id.clone()),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SecurityGroupView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub rules: Vec<RuleView>,
    pub meta: Option<MetaView>,
}

impl From<v1::SecurityGroup> for SecurityGroupView {
    fn from(g: v1::SecurityGroup) -> Self {
        SecurityGroupView {
            id: g.id,
            name: g.name,
            description: g.description,
            project_id: g.project_id,
            rules: g.rules.into_iter().map(RuleView::from).collect(),
            meta: g.meta.map(MetaView::from),
        }
    }
}

impl Tabular for SecurityGroupView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "RULES", "DESCRIPTION"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.rules.len().to_string(),
            self.description.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} from {}",
                    r.direction,
                    r.ethertype,
                    r.protocol,
                    r.ports(),
                    r.remote()
                )
            })
            .collect();
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("description", self.description.clone()),
            ("project_id", self.project_id.clone()),
            ("rules", rules.join("; ")),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cells` asserts (in debug builds) that each key names a show field.
    #[test]
    fn list_rows_repeat_show_fields() {
        fn check<V: Tabular>(view: V) {
            assert_eq!(view.row().len(), V::columns().len());
        }
        check(NetworkView::from(v1::Network::default()));
        check(SubnetView::from(v1::Subnet::default()));
        check(PortView::from(v1::Port::default()));
        check(FloatingIpView::from(v1::FloatingIp::default()));
        check(RuleView::from(v1::SecurityGroupRule::default()));
        check(SecurityGroupView::from(v1::SecurityGroup::default()));
    }
}

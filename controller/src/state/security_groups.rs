//! Security groups and their rules (Neutron's): allow-lists applied to ports. Every project has
//! a `default` group, created by the first entry that needs it (a port created without groups,
//! a new group, or an explicit [`NetCommand::EnsureDefaultSecurityGroup`]); like Neutron's it
//! allows all egress and ingress from ports in the same group.
use serde::{Deserialize, Serialize};

use super::ipam::{Cidr, Family};
use super::networks::{change, created, deleted, ok, one, Applied, NetCommand, NetOutcome};
use super::quota::{Resource, ResourceDelta};
use super::{EventAction, Meta, Outcome, Rejection, State};

pub const DEFAULT_GROUP: &str = "default";
/// Fresh ids the default group needs: the group and its four rules.
pub const DEFAULT_GROUP_IDS: usize = 5;
/// Fresh ids a new group needs for its two egress rules.
pub const NEW_GROUP_RULE_IDS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ethertype {
    Ipv4,
    Ipv6,
}

impl Ethertype {
    fn family(self) -> Family {
        match self {
            Ethertype::Ipv4 => Family::V4,
            Ethertype::Ipv6 => Family::V6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub security_group_id: String,
    pub direction: Direction,
    pub ethertype: Ethertype,
    /// "any", "tcp", "udp", "icmp", "icmpv6" or an IP protocol number.
    pub protocol: String,
    pub port_range_min: Option<u32>,
    pub port_range_max: Option<u32>,
    pub remote_ip_prefix: String,
    pub remote_group_id: String,
    pub description: String,
    pub project_id: String,
    pub meta: Meta,
}

impl SecurityGroupRule {
    fn same_match(&self, o: &SecurityGroupRule) -> bool {
        self.security_group_id == o.security_group_id
            && self.direction == o.direction
            && self.ethertype == o.ethertype
            && self.protocol == o.protocol
            && self.port_range_min == o.port_range_min
            && self.port_range_max == o.port_range_max
            && self.remote_ip_prefix == o.remote_ip_prefix
            && self.remote_group_id == o.remote_group_id
    }
}

/// What `CreateSecurityGroupRule` records (the remote group already resolved to an id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub id: String,
    pub security_group_id: String,
    pub direction: Direction,
    pub ethertype: Ethertype,
    /// Empty = "any".
    pub protocol: String,
    pub port_range_min: Option<u32>,
    pub port_range_max: Option<u32>,
    pub remote_ip_prefix: String,
    pub remote_group_id: String,
    pub description: String,
}

/// What a new (non-default) group uses: itself and its two egress rules.
fn new_group_usage() -> ResourceDelta {
    [
        (Resource::SecurityGroups, 1),
        (Resource::SecurityGroupRules, NEW_GROUP_RULE_IDS as i64),
    ]
    .into_iter()
    .collect()
}

fn invalid(msg: impl Into<String>) -> Rejection {
    Rejection::Invalid(msg.into())
}

/// The protocol in canonical form, or why it is not one.
fn normalize_protocol(p: &str, ethertype: Ethertype) -> Result<String, Rejection> {
    let p = p.trim().to_ascii_lowercase();
    let p = if p.is_empty() { "any".to_owned() } else { p };
    match p.as_str() {
        "any" | "tcp" | "udp" | "icmp" => Ok(p),
        "icmpv6" if ethertype == Ethertype::Ipv6 => Ok(p),
        "icmpv6" => Err(invalid("protocol icmpv6 needs ethertype IPv6")),
        n => match n.parse::<u8>() {
            Ok(_) => Ok(p),
            Err(_) => Err(invalid(format!(
                "protocol {p:?} is not tcp, udp, icmp, icmpv6, any or a number from 0 to 255"
            ))),
        },
    }
}

fn check_ports(protocol: &str, min: Option<u32>, max: Option<u32>) -> Result<(), Rejection> {
    match protocol {
        "tcp" | "udp" => match (min, max) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(invalid("port_range_max needs port_range_min")),
            (Some(lo), hi) => {
                let hi = hi.unwrap_or(lo);
                if lo == 0 || hi > 65_535 || lo > hi {
                    return Err(invalid(format!(
                        "port range {lo}-{hi} is invalid: ports go from 1 to 65535, min ≤ max"
                    )));
                }
                Ok(())
            }
        },
        "icmp" | "icmpv6" => match (min, max) {
            (None, Some(_)) => Err(invalid(
                "an ICMP code (port_range_max) needs a type (port_range_min)",
            )),
            (t, c) if t.unwrap_or(0) > 255 || c.unwrap_or(0) > 255 => Err(invalid(
                "ICMP type (port_range_min) and code (port_range_max) go from 0 to 255",
            )),
            _ => Ok(()),
        },
        other => {
            if min.is_some() || max.is_some() {
                return Err(invalid(format!(
                    "protocol {other} has no ports; port ranges need tcp, udp, icmp or icmpv6"
                )));
            }
            Ok(())
        }
    }
}

impl State {
    pub(super) fn apply_security_group(
        &mut self,
        revision: u64,
        t: i64,
        cmd: &NetCommand,
    ) -> Applied {
        match cmd {
            NetCommand::CreateSecurityGroup {
                id,
                project_id,
                name,
                description,
                fresh_ids,
            } => {
                super::validate::name("security group", name).map_err(Rejection::Invalid)?;
                super::validate::description("security group", description)
                    .map_err(Rejection::Invalid)?;
                self.project_enabled(project_id)?;
                if fresh_ids.len() < NEW_GROUP_RULE_IDS {
                    return Err(invalid("internal: too few ids for the new group's rules"));
                }
                if self.net.security_groups.contains_key(id) {
                    return Err(invalid(format!("security group id {id} is taken")));
                }
                if name == DEFAULT_GROUP {
                    return Err(invalid(
                        "every project has its own default security group already; choose \
                         another name",
                    ));
                }
                if self.group_named(project_id, name).is_some() {
                    return Err(Rejection::exists("security group", name));
                }
                let needs = new_group_usage();
                self.check_quota(project_id, &needs)?;
                self.ensure_default_group(
                    revision,
                    t,
                    project_id,
                    &fresh_ids[NEW_GROUP_RULE_IDS..],
                )?;
                self.force_charge(project_id, &needs);
                let g = SecurityGroup {
                    id: id.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    project_id: project_id.clone(),
                    meta: Meta::new(revision, t),
                };
                self.net.security_groups.insert(g.id.clone(), g.clone());
                for (rule_id, ethertype) in fresh_ids.iter().zip([Ethertype::Ipv4, Ethertype::Ipv6])
                {
                    self.add_rule(revision, t, &g, rule_id, Direction::Egress, ethertype, "");
                }
                created(g)
            }
            NetCommand::UpdateSecurityGroup {
                group_id,
                name,
                description,
            } => {
                let g = self.net_get::<SecurityGroup>(group_id)?.clone();
                let mut next = g.clone();
                if let Some(v) = name {
                    super::validate::name("security group", v).map_err(Rejection::Invalid)?;
                    if *v != g.name {
                        if g.name == DEFAULT_GROUP || v == DEFAULT_GROUP {
                            return Err(invalid(
                                "the default security group cannot be renamed, nor another \
                                 group named default",
                            ));
                        }
                        if self.group_named(&g.project_id, v).is_some() {
                            return Err(Rejection::exists("security group", v));
                        }
                    }
                    next.name = v.clone();
                }
                if let Some(v) = description {
                    super::validate::description("security group", v)
                        .map_err(Rejection::Invalid)?;
                    next.description = v.clone();
                }
                self.store_update(revision, t, g, next)
            }
            NetCommand::DeleteSecurityGroup { group_id } => {
                let g = self.net_get::<SecurityGroup>(group_id)?.clone();
                if g.name == DEFAULT_GROUP {
                    return Err(Rejection::FailedPrecondition(format!(
                        "the default security group of a project cannot be deleted ({})",
                        g.id
                    )));
                }
                let users = self
                    .net
                    .ports
                    .values()
                    .filter(|p| p.security_group_ids.contains(&g.id))
                    .count();
                if users > 0 {
                    return Err(Rejection::FailedPrecondition(format!(
                        "security group {} is used by {users} port(s); remove it from them first",
                        g.id
                    )));
                }
                // Its own rules, and other groups' rules naming it as remote (as Neutron).
                let gone: Vec<SecurityGroupRule> = self
                    .net
                    .rules
                    .values()
                    .filter(|r| r.security_group_id == g.id || r.remote_group_id == g.id)
                    .cloned()
                    .collect();
                for r in gone {
                    self.net.rules.remove(&r.id);
                    self.release(&r.project_id, &one(Resource::SecurityGroupRules));
                    if r.security_group_id != g.id {
                        self.more_changes.push(change(
                            "security_group_rule",
                            &r.id,
                            "",
                            EventAction::Deleted,
                            &r.project_id,
                        ));
                    }
                }
                self.net.security_groups.remove(&g.id);
                self.release(&g.project_id, &one(Resource::SecurityGroups));
                deleted(&g)
            }
            NetCommand::CreateSecurityGroupRule(spec) => self.create_rule(revision, t, spec),
            NetCommand::DeleteSecurityGroupRule { rule_id } => {
                let r = self
                    .net
                    .rules
                    .remove(rule_id)
                    .ok_or_else(|| Rejection::not_found("security group rule", rule_id))?;
                self.release(&r.project_id, &one(Resource::SecurityGroupRules));
                let c = change(
                    "security_group_rule",
                    &r.id,
                    "",
                    EventAction::Deleted,
                    &r.project_id,
                );
                Ok((Outcome::Deleted, Some(c)))
            }
            NetCommand::EnsureDefaultSecurityGroup {
                project_id,
                fresh_ids,
            } => {
                self.project_enabled(project_id)?;
                let id = self.ensure_default_group(revision, t, project_id, fresh_ids)?;
                let g = self.net.security_groups[&id].clone();
                let created = self.more_changes.pop();
                Ok((
                    Outcome::Net(Box::new(NetOutcome::SecurityGroup(g))),
                    created,
                ))
            }
            _ => unreachable!("apply_security_group called with another command"),
        }
    }

    /// The id of the project's `default` group, created from `fresh_ids` (group, then four
    /// rules) when it has none (its creation is recorded as a further change of this entry).
    pub(super) fn ensure_default_group(
        &mut self,
        revision: u64,
        t: i64,
        project_id: &str,
        fresh_ids: &[String],
    ) -> Result<String, Rejection> {
        if let Some(g) = self.default_group_of(project_id) {
            return Ok(g.id.clone());
        }
        if fresh_ids.len() < DEFAULT_GROUP_IDS {
            return Err(invalid(
                "internal: too few ids for the project's default group",
            ));
        }
        if fresh_ids
            .iter()
            .any(|id| self.net.security_groups.contains_key(id) || self.net.rules.contains_key(id))
        {
            return Err(invalid("internal: the default group's ids are taken"));
        }
        let g = SecurityGroup {
            id: fresh_ids[0].clone(),
            name: DEFAULT_GROUP.into(),
            description: "Default security group".into(),
            project_id: project_id.to_owned(),
            meta: Meta::new(revision, t),
        };
        self.net.security_groups.insert(g.id.clone(), g.clone());
        let rules = [
            (Direction::Egress, Ethertype::Ipv4, ""),
            (Direction::Egress, Ethertype::Ipv6, ""),
            (Direction::Ingress, Ethertype::Ipv4, g.id.as_str()),
            (Direction::Ingress, Ethertype::Ipv6, g.id.as_str()),
        ];
        for (rule_id, (direction, ethertype, remote)) in fresh_ids[1..].iter().zip(rules) {
            self.add_rule(revision, t, &g, rule_id, direction, ethertype, remote);
        }
        let usage: ResourceDelta = [
            (Resource::SecurityGroups, 1),
            (Resource::SecurityGroupRules, 4),
        ]
        .into_iter()
        .collect();
        self.force_charge(project_id, &usage);
        self.more_changes.push(change(
            "security_group",
            &g.id,
            &g.name,
            EventAction::Created,
            project_id,
        ));
        Ok(g.id)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_rule(
        &mut self,
        revision: u64,
        t: i64,
        g: &SecurityGroup,
        id: &str,
        direction: Direction,
        ethertype: Ethertype,
        remote_group_id: &str,
    ) {
        let r = SecurityGroupRule {
            id: id.to_owned(),
            security_group_id: g.id.clone(),
            direction,
            ethertype,
            protocol: "any".into(),
            port_range_min: None,
            port_range_max: None,
            remote_ip_prefix: String::new(),
            remote_group_id: remote_group_id.to_owned(),
            description: String::new(),
            project_id: g.project_id.clone(),
            meta: Meta::new(revision, t),
        };
        self.net.rules.insert(r.id.clone(), r);
    }

    fn create_rule(&mut self, revision: u64, t: i64, spec: &RuleSpec) -> Applied {
        let g = self
            .net_get::<SecurityGroup>(&spec.security_group_id)?
            .clone();
        self.project_enabled(&g.project_id)?;
        super::validate::description("security group rule", &spec.description)
            .map_err(Rejection::Invalid)?;
        if self.net.rules.contains_key(&spec.id) {
            return Err(invalid(format!("rule id {} is taken", spec.id)));
        }
        let protocol = normalize_protocol(&spec.protocol, spec.ethertype)?;
        check_ports(&protocol, spec.port_range_min, spec.port_range_max)?;
        let port_range_max = match (protocol.as_str(), spec.port_range_min) {
            ("tcp" | "udp", Some(lo)) => Some(spec.port_range_max.unwrap_or(lo)),
            _ => spec.port_range_max,
        };
        if !spec.remote_ip_prefix.is_empty() && !spec.remote_group_id.is_empty() {
            return Err(invalid(
                "give at most one of remote_ip_prefix and remote_group",
            ));
        }
        let remote_ip_prefix = if spec.remote_ip_prefix.is_empty() {
            String::new()
        } else {
            let cidr = Cidr::parse(&spec.remote_ip_prefix).map_err(Rejection::Invalid)?;
            if cidr.family != spec.ethertype.family() {
                return Err(invalid(format!(
                    "remote_ip_prefix {cidr} does not match ethertype {:?}",
                    spec.ethertype
                )));
            }
            cidr.to_string()
        };
        if !spec.remote_group_id.is_empty() {
            let remote = self
                .net
                .security_groups
                .get(&spec.remote_group_id)
                .ok_or_else(|| Rejection::not_found("security group", &spec.remote_group_id))?;
            if remote.project_id != g.project_id {
                return Err(invalid(format!(
                    "remote group {} belongs to another project",
                    spec.remote_group_id
                )));
            }
        }
        let r = SecurityGroupRule {
            id: spec.id.clone(),
            security_group_id: g.id.clone(),
            direction: spec.direction,
            ethertype: spec.ethertype,
            protocol,
            port_range_min: spec.port_range_min,
            port_range_max,
            remote_ip_prefix,
            remote_group_id: spec.remote_group_id.clone(),
            description: spec.description.clone(),
            project_id: g.project_id.clone(),
            meta: Meta::new(revision, t),
        };
        if let Some(same) = self.net.rules.values().find(|o| o.same_match(&r)) {
            return Err(Rejection::Duplicate(format!(
                "security group {} already has this rule (rule {})",
                g.id, same.id
            )));
        }
        self.charge(&r.project_id, &one(Resource::SecurityGroupRules))
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        self.net.rules.insert(r.id.clone(), r.clone());
        let c = change(
            "security_group_rule",
            &r.id,
            "",
            EventAction::Created,
            &r.project_id,
        );
        ok(NetOutcome::SecurityGroupRule(r), c)
    }

    fn group_named(&self, project_id: &str, name: &str) -> Option<&SecurityGroup> {
        self.net
            .security_groups
            .values()
            .find(|g| g.project_id == project_id && g.name == name)
    }

    pub fn default_group_of(&self, project_id: &str) -> Option<&SecurityGroup> {
        self.group_named(project_id, DEFAULT_GROUP)
    }

    pub fn security_group(&self, id: &str) -> Option<&SecurityGroup> {
        self.net.security_groups.get(id)
    }

    pub fn security_groups_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = &'a SecurityGroup> + 'a {
        super::page_after(&self.net.security_groups, after)
    }

    /// A group's rules, in id order.
    pub fn rules_of<'a>(
        &'a self,
        group_id: &'a str,
    ) -> impl Iterator<Item = &'a SecurityGroupRule> + 'a {
        self.net
            .rules
            .values()
            .filter(move |r| r.security_group_id == group_id)
    }

    pub fn security_group_rule(&self, id: &str) -> Option<&SecurityGroupRule> {
        self.net.rules.get(id)
    }

    pub fn security_group_rules_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = &'a SecurityGroupRule> + 'a {
        super::page_after(&self.net.rules, after)
    }
}

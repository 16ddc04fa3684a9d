//! Quotas: per-project limits stored as overrides over cluster-wide defaults, per-project usage,
//! and the pure admission check.
//!
//! Allocations call [`State::charge`] inside the same `apply` that records the resource (I3):
//! checking in the API and recording later would let two concurrent requests both pass.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Change, Command, Envelope, EventAction, Outcome, Rejection, State};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// A limited resource. Declaration order is the display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    Instances,
    Vcpus,
    RamMib,
    DiskGib,
    Networks,
    Ports,
    FloatingIps,
    Images,
    ImageStorageGib,
    ServerGroups,
    Subnets,
    SecurityGroups,
    SecurityGroupRules,
}

/// An amount per resource (limits, usage or a request).
pub type Amounts = BTreeMap<Resource, i64>;
/// What one allocation asks for (negative amounts release).
pub type ResourceDelta = Amounts;

/// A limit of -1 means unlimited.
pub const UNLIMITED: i64 = -1;

impl Resource {
    pub const ALL: [Resource; 13] = [
        Resource::Instances,
        Resource::Vcpus,
        Resource::RamMib,
        Resource::DiskGib,
        Resource::Networks,
        Resource::Ports,
        Resource::FloatingIps,
        Resource::Images,
        Resource::ImageStorageGib,
        Resource::ServerGroups,
        Resource::Subnets,
        Resource::SecurityGroups,
        Resource::SecurityGroupRules,
    ];

    /// The proto field name (e.g. `ram_mib`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Instances => "instances",
            Resource::Vcpus => "vcpus",
            Resource::RamMib => "ram_mib",
            Resource::DiskGib => "disk_gib",
            Resource::Networks => "networks",
            Resource::Ports => "ports",
            Resource::FloatingIps => "floating_ips",
            Resource::Images => "images",
            Resource::ImageStorageGib => "image_storage_gib",
            Resource::ServerGroups => "server_groups",
            Resource::Subnets => "subnets",
            Resource::SecurityGroups => "security_groups",
            Resource::SecurityGroupRules => "security_group_rules",
        }
    }

    pub fn parse(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The default of a new cluster, until an admin changes it.
    pub fn builtin_default(self) -> i64 {
        match self {
            Resource::Instances => 10,
            Resource::Vcpus => 20,
            Resource::RamMib => 51_200,
            Resource::DiskGib => 1000,
            Resource::Networks => 10,
            Resource::Ports => 50,
            Resource::FloatingIps => 10,
            Resource::Images => 20,
            Resource::ImageStorageGib => 100,
            Resource::ServerGroups => 10,
            Resource::Subnets => 100,
            Resource::SecurityGroups => 10,
            Resource::SecurityGroupRules => 100,
        }
    }
}

/// One resource of a project's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaItem {
    pub limit: i64,
    pub in_use: i64,
    pub from_default: bool,
}

/// A project's limits and usage, every resource present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectQuota {
    pub project_id: String,
    pub items: BTreeMap<Resource, QuotaItem>,
}

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quota exceeded for {}: limit {limit}, in use {in_use}, requested {requested}",
    resource.as_str()
)]
pub struct QuotaExceeded {
    pub resource: Resource,
    pub limit: i64,
    pub in_use: i64,
    pub requested: i64,
}

/// Whether `request` fits in `limits` given `usage`. Pure. To be called inside the same apply
/// that records usage (I3). A resource missing from `limits` is unlimited, as is a limit of -1;
/// missing usage is zero; releases (amounts <= 0) always fit. A limit below current usage
/// blocks any further allocation of that resource. The first resource (in [`Resource`] order)
/// that does not fit is reported.
pub fn admit(
    limits: &Amounts,
    usage: &Amounts,
    request: &ResourceDelta,
) -> Result<(), QuotaExceeded> {
    for (&resource, &requested) in request {
        if requested <= 0 {
            continue;
        }
        let limit = limits.get(&resource).copied().unwrap_or(UNLIMITED);
        if limit == UNLIMITED {
            continue;
        }
        let in_use = usage.get(&resource).copied().unwrap_or(0);
        if in_use.saturating_add(requested) > limit {
            return Err(QuotaExceeded {
                resource,
                limit,
                in_use,
                requested,
            });
        }
    }
    Ok(())
}

/// Limits must be -1 (unlimited) or non-negative.
pub fn validate_limits(changes: &Amounts) -> Result<(), String> {
    for (r, &v) in changes {
        if v < UNLIMITED {
            return Err(format!(
                "quota limit for {} must be -1 (unlimited) or at least 0, not {v}",
                r.as_str()
            ));
        }
    }
    Ok(())
}

impl State {
    pub(super) fn apply_quota(&mut self, env: &Envelope) -> Applied {
        match &env.command {
            Command::SetQuota {
                project,
                reset_to_default,
                changes,
            } => {
                validate_limits(changes).map_err(Rejection::Invalid)?;
                let found = self
                    .project(project)
                    .ok_or_else(|| Rejection::not_found("project", project))?;
                let (id, name) = (found.id.clone(), found.name.clone());
                let current = self.quota_overrides.get(&id).cloned().unwrap_or_default();
                let mut next = current.clone();
                for r in reset_to_default {
                    next.remove(r);
                }
                next.extend(changes.iter().map(|(r, v)| (*r, *v)));
                if next == current {
                    return Ok((Outcome::Quota(self.project_quota(&id)), None));
                }
                if next.is_empty() {
                    self.quota_overrides.remove(&id);
                } else {
                    self.quota_overrides.insert(id.clone(), next);
                }
                let change = Change {
                    resource_type: "quota",
                    resource_id: id.clone(),
                    resource_name: name,
                    action: EventAction::Updated,
                    project_id: id.clone(),
                };
                Ok((Outcome::Quota(self.project_quota(&id)), Some(change)))
            }
            Command::SetDefaultQuota { changes } => {
                validate_limits(changes).map_err(Rejection::Invalid)?;
                let before = self.default_quota();
                for (&r, &v) in changes {
                    if v == r.builtin_default() {
                        self.default_quota.remove(&r);
                    } else {
                        self.default_quota.insert(r, v);
                    }
                }
                let after = self.default_quota();
                if after == before {
                    return Ok((Outcome::DefaultQuota(after), None));
                }
                let change = Change {
                    resource_type: "default_quota",
                    resource_id: "default".into(),
                    resource_name: "default".into(),
                    action: EventAction::Updated,
                    project_id: String::new(),
                };
                Ok((Outcome::DefaultQuota(after), Some(change)))
            }
            _ => unreachable!("apply_quota called with a non-quota command"),
        }
    }

    /// Admits `request` for the project and records it as used, or changes nothing.
    pub(super) fn charge(
        &mut self,
        project_id: &str,
        request: &ResourceDelta,
    ) -> Result<(), QuotaExceeded> {
        self.admits(project_id, request)?;
        let usage = self.quota_usage.entry(project_id.to_owned()).or_default();
        for (&r, &amount) in request {
            *usage.entry(r).or_insert(0) += amount;
        }
        usage.retain(|_, v| *v != 0);
        if usage.is_empty() {
            self.quota_usage.remove(project_id);
        }
        Ok(())
    }

    /// Gives back what an allocation used (amounts are negated if positive).
    pub(super) fn release(&mut self, project_id: &str, used: &ResourceDelta) {
        let negated: ResourceDelta = used.iter().map(|(&r, &v)| (r, -v.abs())).collect();
        self.charge(project_id, &negated)
            .expect("releases always fit");
    }

    /// Whether `request` would fit the project's quota now (charges nothing).
    pub(super) fn check_quota(
        &self,
        project_id: &str,
        request: &ResourceDelta,
    ) -> Result<(), Rejection> {
        self.admits(project_id, request)
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))
    }

    fn admits(&self, project_id: &str, request: &ResourceDelta) -> Result<(), QuotaExceeded> {
        let quota = self.project_quota(project_id);
        let limits: Amounts = quota.items.iter().map(|(&r, i)| (r, i.limit)).collect();
        let usage: Amounts = quota.items.iter().map(|(&r, i)| (r, i.in_use)).collect();
        admit(&limits, &usage, request)
    }

    /// Drops a deleted project's quota overrides and usage.
    pub(super) fn forget_project_quota(&mut self, project_id: &str) {
        self.quota_overrides.remove(project_id);
        self.quota_usage.remove(project_id);
    }

    /// The cluster-wide default limits, every resource present.
    pub fn default_quota(&self) -> Amounts {
        Resource::ALL
            .into_iter()
            .map(|r| {
                let v = self.default_quota.get(&r).copied();
                (r, v.unwrap_or_else(|| r.builtin_default()))
            })
            .collect()
    }

    /// A project's effective limits and usage (`project_id` must be an id).
    pub fn project_quota(&self, project_id: &str) -> ProjectQuota {
        let defaults = self.default_quota();
        let overrides = self.quota_overrides.get(project_id);
        let usage = self.quota_usage.get(project_id);
        let items = Resource::ALL
            .into_iter()
            .map(|r| {
                let own = overrides.and_then(|o| o.get(&r)).copied();
                let item = QuotaItem {
                    limit: own.unwrap_or(defaults[&r]),
                    in_use: usage.and_then(|u| u.get(&r)).copied().unwrap_or(0),
                    from_default: own.is_none(),
                };
                (r, item)
            })
            .collect();
        ProjectQuota {
            project_id: project_id.to_owned(),
            items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(items: &[(Resource, i64)]) -> Amounts {
        items.iter().copied().collect()
    }

    #[test]
    fn a_request_within_the_limit_is_admitted_up_to_the_exact_boundary() {
        let limits = amounts(&[(Resource::Vcpus, 20)]);
        let usage = amounts(&[(Resource::Vcpus, 16)]);
        assert!(admit(&limits, &usage, &amounts(&[(Resource::Vcpus, 4)])).is_ok());
        let err = admit(&limits, &usage, &amounts(&[(Resource::Vcpus, 5)])).unwrap_err();
        assert_eq!(
            err,
            QuotaExceeded {
                resource: Resource::Vcpus,
                limit: 20,
                in_use: 16,
                requested: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "quota exceeded for vcpus: limit 20, in use 16, requested 5"
        );
    }

    #[test]
    fn unlimited_admits_anything_and_zero_admits_nothing() {
        let limits = amounts(&[(Resource::RamMib, UNLIMITED), (Resource::Instances, 0)]);
        let usage = amounts(&[(Resource::RamMib, i64::MAX - 1)]);
        assert!(admit(&limits, &usage, &amounts(&[(Resource::RamMib, i64::MAX)])).is_ok());
        let err = admit(&limits, &usage, &amounts(&[(Resource::Instances, 1)])).unwrap_err();
        assert_eq!(
            (err.resource, err.limit, err.in_use),
            (Resource::Instances, 0, 0)
        );
        assert!(admit(&limits, &usage, &amounts(&[(Resource::Instances, 0)])).is_ok());
    }

    #[test]
    fn releases_always_fit_and_over_limit_usage_blocks_new_allocations() {
        let limits = amounts(&[(Resource::Ports, 2)]);
        let usage = amounts(&[(Resource::Ports, 5)]);
        assert!(admit(&limits, &usage, &amounts(&[(Resource::Ports, -1)])).is_ok());
        assert!(admit(&limits, &usage, &amounts(&[(Resource::Ports, 1)])).is_err());
    }

    #[test]
    fn the_first_resource_that_does_not_fit_is_named() {
        let limits = amounts(&[(Resource::Instances, 1), (Resource::Vcpus, 1)]);
        let request = amounts(&[(Resource::Vcpus, 2), (Resource::Instances, 2)]);
        let err = admit(&limits, &Amounts::new(), &request).unwrap_err();
        assert_eq!(err.resource, Resource::Instances);
        assert!(err.to_string().contains("instances"), "{err}");
    }

    #[test]
    fn resource_names_round_trip() {
        for r in Resource::ALL {
            assert_eq!(Resource::parse(r.as_str()), Some(r));
        }
        assert_eq!(Resource::parse("cores"), None);
    }

    fn env(request_id: &str, command: Command) -> Envelope {
        Envelope {
            request_id: request_id.into(),
            actor: "tester".into(),
            time_ms: 1,
            command,
        }
    }

    fn state_with_project() -> State {
        let mut s = State::new();
        s.apply(
            1,
            &env(
                "",
                Command::CreateProject {
                    id: "p1".into(),
                    name: "alpha".into(),
                    description: String::new(),
                    enabled: true,
                    properties: Default::default(),
                },
            ),
        );
        s
    }

    fn set_quota(project: &str, reset: &[Resource], changes: &[(Resource, i64)]) -> Command {
        Command::SetQuota {
            project: project.into(),
            reset_to_default: reset.to_vec(),
            changes: amounts(changes),
        }
    }

    #[test]
    fn a_new_project_gets_the_builtin_defaults_and_zero_usage() {
        let s = state_with_project();
        let q = s.project_quota("p1");
        assert_eq!(q.items.len(), Resource::ALL.len());
        let vcpus = q.items[&Resource::Vcpus];
        assert_eq!(
            vcpus,
            QuotaItem {
                limit: 20,
                in_use: 0,
                from_default: true
            }
        );
        assert_eq!(q.items[&Resource::RamMib].limit, 51_200);
    }

    #[test]
    fn project_overrides_win_over_defaults_and_reset_restores_them() {
        let mut s = state_with_project();
        let out = s.apply(
            2,
            &env("r1", set_quota("alpha", &[], &[(Resource::Vcpus, -1)])),
        );
        let Outcome::Quota(q) = out else {
            panic!("unexpected {out:?}")
        };
        assert_eq!(q.items[&Resource::Vcpus].limit, UNLIMITED);
        assert!(!q.items[&Resource::Vcpus].from_default);
        assert_eq!(s.revision(), 2);
        let ev = s.events_after(1).unwrap().last().unwrap().clone();
        assert_eq!(
            (ev.resource_type.as_str(), ev.project_id.as_str()),
            ("quota", "p1")
        );

        // Changing the default moves only projects without their own value.
        let out = s.apply(
            3,
            &env(
                "r2",
                Command::SetDefaultQuota {
                    changes: amounts(&[(Resource::Vcpus, 8), (Resource::Instances, 3)]),
                },
            ),
        );
        assert!(matches!(out, Outcome::DefaultQuota(ref d) if d[&Resource::Instances] == 3));
        let q = s.project_quota("p1");
        assert_eq!(q.items[&Resource::Vcpus].limit, UNLIMITED);
        assert_eq!(q.items[&Resource::Instances].limit, 3);

        // Reset is applied before the changes of the same command.
        s.apply(
            4,
            &env(
                "r3",
                set_quota("p1", &[Resource::Vcpus], &[(Resource::Ports, 7)]),
            ),
        );
        let q = s.project_quota("p1");
        assert_eq!(q.items[&Resource::Vcpus].limit, 8);
        assert!(q.items[&Resource::Vcpus].from_default);
        assert_eq!(q.items[&Resource::Ports].limit, 7);
        // A change that changes nothing makes no revision.
        let rev = s.revision();
        s.apply(5, &env("", set_quota("p1", &[], &[(Resource::Ports, 7)])));
        assert_eq!(s.revision(), rev);
    }

    #[test]
    fn limits_below_minus_one_and_unknown_projects_are_rejected() {
        let mut s = state_with_project();
        let out = s.apply(2, &env("", set_quota("p1", &[], &[(Resource::Images, -2)])));
        assert!(
            matches!(out, Outcome::Rejected(Rejection::Invalid(ref m)) if m.contains("images")),
            "{out:?}"
        );
        let cmd = Command::SetDefaultQuota {
            changes: amounts(&[(Resource::Ports, -5)]),
        };
        assert!(matches!(
            s.apply(3, &env("", cmd)),
            Outcome::Rejected(Rejection::Invalid(_))
        ));
        let out = s.apply(4, &env("", set_quota("nope", &[], &[])));
        assert!(matches!(out, Outcome::Rejected(Rejection::NotFound { .. })));
        assert_eq!(s.revision(), 1);
    }

    #[test]
    fn deleting_a_project_drops_its_quota_and_replicas_agree() {
        let mut s = state_with_project();
        s.apply(
            2,
            &env("", set_quota("p1", &[], &[(Resource::Networks, 1)])),
        );
        s.quota_usage
            .insert("p1".into(), amounts(&[(Resource::Networks, 1)]));
        let decoded = State::decode(&s.encode()).unwrap();
        assert_eq!(decoded.checksum(), s.checksum());
        assert_eq!(
            decoded.project_quota("p1").items[&Resource::Networks].in_use,
            1
        );
        s.apply(
            3,
            &env(
                "",
                Command::DeleteProject {
                    project: "p1".into(),
                },
            ),
        );
        assert!(s.quota_overrides.is_empty() && s.quota_usage.is_empty());
    }

    #[test]
    fn a_retried_set_quota_returns_the_original_outcome() {
        let mut s = state_with_project();
        let first = s.apply(
            2,
            &env("same", set_quota("p1", &[], &[(Resource::Ports, 3)])),
        );
        let retry = s.apply(
            3,
            &env("same", set_quota("p1", &[], &[(Resource::Ports, 3)])),
        );
        assert_eq!(first, retry);
        assert_eq!(s.revision(), 2);
    }
}

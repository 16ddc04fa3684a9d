//! How NetworkService finds networking resources and decides who may see and change them.
//!
//! Readers of a project read its resources, members change them, admins everything.
//! Non-admins also see shared and external networks. Names resolve among the visible
//! resources, preferring the caller's token project.
use flotilla_proto::v1 as pb;
use tonic::Status;

use super::authz::{Action, Principal};
use super::{allow, required};
use crate::state::{
    FloatingIp, Network, NetworkType, Port, Project, SecurityGroup, SecurityGroupRule, State,
    Subnet,
};

pub(super) fn token_project(p: &Principal) -> String {
    p.token
        .as_ref()
        .map(|t| t.project_id.clone())
        .unwrap_or_default()
}

pub(super) fn admin_only(p: &Principal, what: &str) -> Result<(), Status> {
    if p.admin {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "permission denied: {what} needs the cluster admin role"
    )))
}

/// Provider networks (flat, VLAN), chosen segmentation ids, physical networks and the
/// `external`/`shared` flags of a new network are admin only, as in Neutron.
pub(super) fn provider_options(
    p: &Principal,
    r: &pb::CreateNetworkRequest,
    network_type: NetworkType,
) -> Result<(), Status> {
    if network_type != NetworkType::Vxlan {
        admin_only(p, "a flat or VLAN (provider) network")?;
    }
    if r.segmentation_id != 0 {
        admin_only(p, "choosing a segmentation id")?;
    }
    if !r.physical_network.is_empty() {
        admin_only(p, "choosing a physical network")?;
    }
    if r.external {
        admin_only(p, "an external network")?;
    }
    if r.shared {
        admin_only(p, "a shared network")?;
    }
    Ok(())
}

pub(super) fn project_of<'s>(state: &'s State, id: &str) -> Result<&'s Project, Status> {
    state
        .project(id)
        .ok_or_else(|| Status::not_found(format!("project {id:?} not found")))
}

/// The caller's token project, which must exist.
pub(super) fn own_project<'s>(state: &'s State, p: &Principal) -> Result<&'s Project, Status> {
    let id = token_project(p);
    if id.is_empty() {
        return Err(Status::invalid_argument(
            "your token is not scoped to a project: log in with --project",
        ));
    }
    state
        .project(&id)
        .ok_or_else(|| Status::not_found("your token's project no longer exists"))
}

pub(super) fn may_write(state: &State, p: &Principal, project_id: &str) -> Result<(), Status> {
    allow(
        p,
        Action::WriteProject,
        Some(project_of(state, project_id)?),
    )
}

pub(super) fn network_visible(p: &Principal, n: &Network) -> bool {
    p.admin || p.in_project(&n.project_id) || n.shared || n.external
}

pub(super) fn owned_visible(p: &Principal, project_id: &str) -> bool {
    p.admin || p.in_project(project_id)
}

/// Finds a resource by id among those visible, else by a name unique among those visible
/// (preferring the caller's token project).
fn resolve<'s, T: 's>(
    kind: &str,
    key: &str,
    by_id: Option<&'s T>,
    all: impl Iterator<Item = &'s T>,
    visible: impl Fn(&T) -> bool,
    name_project: impl Fn(&T) -> (&str, &str),
    scope: &str,
) -> Result<&'s T, Status> {
    required(kind, key)?;
    if let Some(found) = by_id.filter(|t| visible(t)) {
        return Ok(found);
    }
    let named: Vec<&T> = all
        .filter(|t| visible(t) && name_project(t).0 == key)
        .collect();
    let own: Vec<&T> = named
        .iter()
        .copied()
        .filter(|t| name_project(t).1 == scope)
        .collect();
    let pick = if own.len() == 1 { own } else { named };
    match pick.as_slice() {
        [one] => Ok(one),
        [] => Err(Status::not_found(format!("{kind} {key:?} not found"))),
        _ => Err(Status::failed_precondition(format!(
            "several {kind}s are named {key:?}; use the id"
        ))),
    }
}

/// A List RPC's optional network filter: none when empty, else the network's id.
pub(super) fn network_filter(
    state: &State,
    p: &Principal,
    key: &str,
) -> Result<Option<String>, Status> {
    if key.is_empty() {
        return Ok(None);
    }
    Ok(Some(find_network(state, p, key)?.id.clone()))
}

pub(super) fn find_network<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s Network, Status> {
    resolve(
        "network",
        key,
        state.network(key),
        state.networks_after(""),
        |n| network_visible(p, n),
        |n| (n.name.as_str(), n.project_id.as_str()),
        &token_project(p),
    )
}

pub(super) fn subnet_visible(state: &State, p: &Principal, s: &Subnet) -> bool {
    owned_visible(p, &s.project_id)
        || state
            .network(&s.network_id)
            .is_some_and(|n| network_visible(p, n))
}

pub(super) fn find_subnet<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s Subnet, Status> {
    resolve(
        "subnet",
        key,
        state.subnet(key),
        state.subnets_after(""),
        |s| subnet_visible(state, p, s),
        |s| (s.name.as_str(), s.project_id.as_str()),
        &token_project(p),
    )
}

pub(super) fn find_port<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s Port, Status> {
    resolve(
        "port",
        key,
        state.port(key),
        state.ports_after(""),
        |x| owned_visible(p, &x.project_id),
        |x| (x.name.as_str(), x.project_id.as_str()),
        &token_project(p),
    )
}

/// Floating IPs are named by id or by address.
pub(super) fn find_floating_ip<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s FloatingIp, Status> {
    resolve(
        "floating IP",
        key,
        state.floating_ip(key),
        state.floating_ips_after(""),
        |f| owned_visible(p, &f.project_id),
        |f| (f.address.as_str(), f.project_id.as_str()),
        &token_project(p),
    )
}

pub(super) fn find_group<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s SecurityGroup, Status> {
    resolve(
        "security group",
        key,
        state.security_group(key),
        state.security_groups_after(""),
        |g| owned_visible(p, &g.project_id),
        |g| (g.name.as_str(), g.project_id.as_str()),
        &token_project(p),
    )
}

/// Security groups of `project_id` by id or name.
pub(super) fn groups_in(
    state: &State,
    project_id: &str,
    keys: &[String],
) -> Result<Vec<String>, Status> {
    keys.iter()
        .map(|k| {
            state
                .security_group(k)
                .filter(|g| g.project_id == project_id)
                .or_else(|| {
                    state
                        .security_groups_after("")
                        .find(|g| g.project_id == project_id && g.name == *k)
                })
                .map(|g| g.id.clone())
                .ok_or_else(|| {
                    Status::not_found(format!("security group {k:?} not found in the project"))
                })
        })
        .collect()
}

/// The project a list is limited to: `project` (needs a role there), every project (admins
/// with `all_projects`), or the token's project.
pub(super) fn list_scope(
    state: &State,
    p: &Principal,
    all_projects: bool,
    project: &str,
) -> Result<Option<String>, Status> {
    if all_projects && !p.admin {
        return Err(Status::permission_denied(
            "permission denied: --all-projects needs the cluster admin role",
        ));
    }
    if !project.is_empty() {
        let pr = project_of(state, project)?;
        allow(p, Action::ReadProject, Some(pr))?;
        return Ok(Some(pr.id.clone()));
    }
    let scope = token_project(p);
    if all_projects || scope.is_empty() {
        Ok(None)
    } else {
        Ok(Some(scope))
    }
}

/// A security group rule by id, among those visible.
pub(super) fn find_rule<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s SecurityGroupRule, Status> {
    state
        .security_group_rule(key)
        .filter(|x| owned_visible(p, &x.project_id))
        .ok_or_else(|| Status::not_found(format!("security group rule {key:?} not found")))
}

/// Finds a resource of a project by the key a caller named it by (`find_network`, …).
pub(super) type Finder<T> = for<'s> fn(&'s State, &Principal, &str) -> Result<&'s T, Status>;

/// A networking resource that belongs to a project.
pub(super) trait Owned {
    fn id(&self) -> &str;
    fn project_id(&self) -> &str;
}

macro_rules! owned {
    ($($t:ty),*) => {$(
        impl Owned for $t {
            fn id(&self) -> &str {
                &self.id
            }
            fn project_id(&self) -> &str {
                &self.project_id
            }
        }
    )*};
}
owned!(
    Network,
    Subnet,
    Port,
    FloatingIp,
    SecurityGroup,
    SecurityGroupRule
);

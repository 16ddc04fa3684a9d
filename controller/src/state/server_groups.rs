//! Server groups: placement policies between the servers of a project (Nova's). A server joins
//! a group when it is created ([`super::NewServer::group_id`]) and leaves it when it is deleted.
//! Deleting a group that still has members is allowed, as in Nova: the members keep running
//! where they are and the policy no longer applies to them.
use serde::{Deserialize, Serialize};

use super::quota::{Resource, ResourceDelta};
use super::servers::Server;
use super::{validate, Change, Command, Envelope, EventAction, Meta, Outcome, Rejection, State};
use crate::scheduler::{GroupPolicy, ServerGroupView};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroup {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub policy: GroupPolicy,
    /// Ids of the member servers, in the order they joined.
    pub members: Vec<String>,
    pub meta: Meta,
}

/// What `CreateServerGroup` records; the proposer stamps the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroupSpec {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub policy: GroupPolicy,
}

fn quota() -> ResourceDelta {
    [(Resource::ServerGroups, 1)].into_iter().collect()
}

/// The hosts a member counts on for its group's policy: where it is placed and, while a
/// migration is under way, its destination (claimed already, and its host once it lands), so
/// two members moving at the same time cannot both land on one host of an anti-affinity group.
fn held_hosts(s: &Server) -> impl Iterator<Item = String> + '_ {
    let placed = Some(&s.host_id).filter(|h| !h.is_empty());
    let incoming = s.migration.as_ref().map(|m| &m.destination_host_id);
    placed.into_iter().chain(incoming).cloned()
}

fn change(g: &ServerGroup, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "server_group",
        resource_id: g.id.clone(),
        resource_name: g.name.clone(),
        action,
        project_id: g.project_id.clone(),
    }
}

impl State {
    pub(super) fn apply_server_group(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::CreateServerGroup(spec) => self.create_server_group(revision, env, spec),
            Command::DeleteServerGroup { group_id } => {
                let g = self
                    .server_groups
                    .remove(group_id)
                    .ok_or_else(|| Rejection::not_found("server group", group_id))?;
                self.release(&g.project_id, &quota());
                Ok((Outcome::Deleted, Some(change(&g, EventAction::Deleted))))
            }
            _ => unreachable!("apply_server_group called with a non-group command"),
        }
    }

    fn create_server_group(
        &mut self,
        revision: u64,
        env: &Envelope,
        spec: &ServerGroupSpec,
    ) -> Applied {
        validate::name("server group", &spec.name).map_err(Rejection::Invalid)?;
        let project = self
            .projects
            .get(&spec.project_id)
            .ok_or_else(|| Rejection::not_found("project", &spec.project_id))?;
        if !project.enabled {
            return Err(Rejection::FailedPrecondition(format!(
                "project {:?} is disabled",
                project.name
            )));
        }
        if self.server_groups.contains_key(&spec.id) {
            return Err(Rejection::Invalid(format!(
                "server group id {} is taken",
                spec.id
            )));
        }
        if self
            .server_groups
            .values()
            .any(|g| g.project_id == spec.project_id && g.name == spec.name)
        {
            return Err(Rejection::exists("server group", &spec.name));
        }
        self.charge(&spec.project_id, &quota())
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        let g = ServerGroup {
            id: spec.id.clone(),
            name: spec.name.clone(),
            project_id: spec.project_id.clone(),
            user_id: spec.user_id.clone(),
            policy: spec.policy,
            members: Vec::new(),
            meta: Meta::new(revision, env.time_ms),
        };
        self.server_groups.insert(g.id.clone(), g.clone());
        Ok((
            Outcome::ServerGroup(g.clone()),
            Some(change(&g, EventAction::Created)),
        ))
    }

    /// How the group looks to the scheduler now: the host of each member that has one.
    pub fn server_group_view(&self, g: &ServerGroup) -> ServerGroupView {
        ServerGroupView {
            id: g.id.clone(),
            name: g.name.clone(),
            policy: g.policy,
            member_hosts: g
                .members
                .iter()
                .filter_map(|id| self.servers.get(id))
                .flat_map(held_hosts)
                .collect(),
        }
    }

    /// The group `server` belongs to as it looks when that server is (re)placed: the other
    /// members' hosts. None when it has no group (or the group was deleted).
    pub fn server_group_view_for(&self, server: &Server) -> Option<ServerGroupView> {
        let g = self.server_groups.get(&server.group_id)?;
        let mut view = self.server_group_view(g);
        view.member_hosts = g
            .members
            .iter()
            .filter(|id| **id != server.id)
            .filter_map(|id| self.servers.get(id))
            .flat_map(held_hosts)
            .collect();
        Some(view)
    }

    /// Adds (or removes) a server to (from) its group; a group deleted meanwhile is ignored.
    pub(super) fn index_group_member(&mut self, group_id: &str, server_id: &str, add: bool) {
        if let Some(g) = self.server_groups.get_mut(group_id) {
            if add {
                g.members.push(server_id.to_owned());
            } else {
                g.members.retain(|m| m != server_id);
            }
        }
    }

    pub fn server_group_by_id(&self, id: &str) -> Option<&ServerGroup> {
        self.server_groups.get(id)
    }

    /// Groups in id order, after `after` (exclusive) when given.
    pub fn server_groups_after<'a>(
        &'a self,
        after: &str,
    ) -> impl Iterator<Item = &'a ServerGroup> + 'a {
        super::page_after(&self.server_groups, after)
    }
}

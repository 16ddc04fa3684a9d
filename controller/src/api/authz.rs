//! Authorization: the one place that decides whether a principal may do something.
//!
//! Every handler calls [`authorize`] with the action its RPC performs (and the project it
//! touches, when there is one). The table:
//!
//! | action                          | admin | member of P | reader of P | anyone else |
//! |---------------------------------|-------|-------------|-------------|-------------|
//! | ReadProject(P)                  | yes   | yes         | yes         | no          |
//! | WriteProject(P)                 | yes   | yes         | no          | no          |
//! | ManageProjects, ManageUsers,    |       |             |             |             |
//! | ManageFlavors, RotateKeys,      | yes   | no          | no          | no          |
//! | ClusterAdmin, ManageQuotas,     |       |             |             |             |
//! | PublishImage                    |       |             |             |             |
//! | ReadUser(u), ChangePassword(u)  | yes   | only u = self                             |
//! | ReadFlavors, ReadEvents, WhoAmI,| yes   | yes         | yes         | yes         |
//! | RevokeToken, ReadDefaultQuota   |       |             |             |             |
//!
//! A project's quota is read with ReadProject(P).
//!
//! Non-admins cannot act in a disabled project. A disabled user never gets this far: their
//! tokens stop authenticating (see [`super::auth`]). Pure, so the table is unit-tested.
use std::collections::{BTreeMap, BTreeSet};

use crate::state::{Project, Role};

/// Who made a request, resolved from state when the request arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// User name; recorded as the event actor.
    pub name: String,
    /// The user's id (empty only for [`Principal::test_admin`]).
    pub user_id: String,
    /// Holds the cluster-wide admin role.
    pub admin: bool,
    /// Project id → roles held there.
    pub projects: BTreeMap<String, BTreeSet<Role>>,
    /// The token used, when it was a user token.
    pub token: Option<TokenInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub token_id: String,
    pub project_id: String,
    pub expires_at_ms: i64,
}

impl Principal {
    /// A cluster admin backed by no user, for in-process tests that call handlers without
    /// logging in. Requests over the network never get it: every principal they carry comes
    /// from a user token (see [`super::auth`]).
    #[cfg(test)]
    pub fn test_admin() -> Principal {
        Principal {
            name: "test-admin".into(),
            user_id: String::new(),
            admin: true,
            projects: BTreeMap::new(),
            token: None,
        }
    }

    /// Whether the principal holds any role in the project.
    pub fn in_project(&self, project_id: &str) -> bool {
        self.projects.get(project_id).is_some_and(|r| !r.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Read a project and the resources in it.
    ReadProject,
    /// Create or change resources in a project.
    WriteProject,
    /// Create, change and delete projects themselves.
    ManageProjects,
    /// Create, change and delete users and role assignments.
    ManageUsers,
    /// Read one user (or their role assignments).
    ReadUser {
        user_id: &'a str,
    },
    /// Set a user's password.
    ChangePassword {
        user_id: &'a str,
    },
    ManageFlavors,
    ReadFlavors,
    ReadEvents,
    RotateKeys,
    ClusterAdmin,
    WhoAmI,
    RevokeToken,
    /// Set project quotas and the default quota.
    ManageQuotas,
    ReadDefaultQuota,
    /// Make an image public (visible to every project).
    PublishImage,
}

impl Action<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Action::ReadProject => "reading this project",
            Action::WriteProject => "changing resources in this project",
            Action::ManageProjects => "creating, changing or deleting projects",
            Action::ManageUsers => "managing users and role assignments",
            Action::ReadUser { .. } => "reading another user",
            Action::ChangePassword { .. } => "setting another user's password",
            Action::ManageFlavors => "managing flavors",
            Action::ReadFlavors => "reading flavors",
            Action::ReadEvents => "watching events",
            Action::RotateKeys => "rotating the token signing key",
            Action::ClusterAdmin => "cluster administration",
            Action::WhoAmI => "whoami",
            Action::RevokeToken => "revoking tokens",
            Action::ManageQuotas => "setting quotas",
            Action::ReadDefaultQuota => "reading the default quota",
            Action::PublishImage => "making an image public",
        }
    }
}

/// Why an action was refused, as a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {0}")]
pub struct Denied(pub String);

pub fn authorize(
    principal: &Principal,
    action: Action<'_>,
    target_project: Option<&Project>,
) -> Result<(), Denied> {
    if principal.admin {
        return Ok(());
    }
    let needs_admin = || {
        Err(Denied(format!(
            "{} needs the cluster admin role",
            action.describe()
        )))
    };
    match action {
        Action::ManageProjects
        | Action::ManageUsers
        | Action::ManageFlavors
        | Action::RotateKeys
        | Action::ClusterAdmin
        | Action::ManageQuotas
        | Action::PublishImage => needs_admin(),
        Action::ReadFlavors
        | Action::ReadEvents
        | Action::WhoAmI
        | Action::RevokeToken
        | Action::ReadDefaultQuota => Ok(()),
        Action::ReadUser { user_id } | Action::ChangePassword { user_id } => {
            if !principal.user_id.is_empty() && principal.user_id == user_id {
                Ok(())
            } else {
                needs_admin()
            }
        }
        Action::ReadProject | Action::WriteProject => {
            let Some(project) = target_project else {
                return Err(Denied(format!(
                    "{} needs a project (internal: none was given)",
                    action.describe()
                )));
            };
            let roles = principal.projects.get(&project.id);
            let allowed = match action {
                Action::WriteProject => roles.is_some_and(|r| r.contains(&Role::Member)),
                _ => roles.is_some_and(|r| !r.is_empty()),
            };
            if !allowed {
                let need = if action == Action::WriteProject {
                    "the member role"
                } else {
                    "a role (member or reader)"
                };
                return Err(Denied(format!(
                    "{} needs {need} in project {:?}; ask an admin for a role assignment",
                    action.describe(),
                    project.name
                )));
            }
            if !project.enabled {
                return Err(Denied(format!(
                    "project {:?} is disabled; an admin must enable it first",
                    project.name
                )));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Meta;

    fn project(id: &str, enabled: bool) -> Project {
        Project {
            id: id.into(),
            name: format!("name-{id}"),
            description: String::new(),
            enabled,
            properties: Default::default(),
            meta: Meta::default(),
        }
    }

    fn user(id: &str, roles: &[(&str, Role)]) -> Principal {
        let mut projects: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
        for (p, r) in roles {
            projects.entry((*p).into()).or_default().insert(*r);
        }
        Principal {
            name: id.into(),
            user_id: id.into(),
            admin: false,
            projects,
            token: None,
        }
    }

    #[test]
    fn the_action_table_holds_for_every_role() {
        let own = project("p1", true);
        let other = project("p2", true);
        let admin = Principal::test_admin();
        let member = user("m", &[("p1", Role::Member)]);
        let reader = user("r", &[("p1", Role::Reader)]);
        let nobody = user("n", &[]);
        use Action::*;
        // (action, project, [admin, member, reader, no role])
        let table: &[(Action<'_>, Option<&Project>, [bool; 4])] = &[
            (ReadProject, Some(&own), [true, true, true, false]),
            (ReadProject, Some(&other), [true, false, false, false]),
            (WriteProject, Some(&own), [true, true, false, false]),
            (WriteProject, Some(&other), [true, false, false, false]),
            (ManageProjects, None, [true, false, false, false]),
            (ManageUsers, None, [true, false, false, false]),
            (ManageFlavors, None, [true, false, false, false]),
            (RotateKeys, None, [true, false, false, false]),
            (ClusterAdmin, None, [true, false, false, false]),
            (ReadUser { user_id: "x" }, None, [true, false, false, false]),
            (ReadFlavors, None, [true, true, true, true]),
            (ReadEvents, None, [true, true, true, true]),
            (WhoAmI, None, [true, true, true, true]),
            (RevokeToken, None, [true, true, true, true]),
            (ManageQuotas, None, [true, false, false, false]),
            (ReadDefaultQuota, None, [true, true, true, true]),
        ];
        for (action, target, expected) in table {
            for (who, want) in [&admin, &member, &reader, &nobody].iter().zip(expected) {
                let got = authorize(who, *action, *target);
                assert_eq!(
                    got.is_ok(),
                    *want,
                    "{} {action:?} {target:?}: {got:?}",
                    who.name
                );
            }
        }
    }

    #[test]
    fn users_may_read_themselves_and_change_their_own_password() {
        let me = user("u1", &[]);
        assert!(authorize(&me, Action::ReadUser { user_id: "u1" }, None).is_ok());
        assert!(authorize(&me, Action::ChangePassword { user_id: "u1" }, None).is_ok());
        assert!(authorize(&me, Action::ChangePassword { user_id: "u2" }, None).is_err());
        let admin = Principal::test_admin();
        assert!(authorize(&admin, Action::ChangePassword { user_id: "" }, None).is_ok());
        let bootstrap_is_nobody = user("", &[]);
        assert!(authorize(&bootstrap_is_nobody, Action::ReadUser { user_id: "" }, None).is_err());
    }

    #[test]
    fn a_disabled_project_stops_its_members_but_not_admins() {
        let off = project("p1", false);
        let member = user("m", &[("p1", Role::Member)]);
        let err = authorize(&member, Action::ReadProject, Some(&off)).unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
        assert!(authorize(&Principal::test_admin(), Action::WriteProject, Some(&off)).is_ok());
    }

    #[test]
    fn a_denial_says_what_is_missing() {
        let reader = user("r", &[("p1", Role::Reader)]);
        let err = authorize(&reader, Action::WriteProject, Some(&project("p1", true)));
        assert_eq!(
            err.unwrap_err().to_string(),
            "permission denied: changing resources in this project needs the member role in \
             project \"name-p1\"; ask an admin for a role assignment"
        );
    }
}

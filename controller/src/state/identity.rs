//! Applying identity commands: users, role assignments, signing keys, revoked tokens and the
//! bootstrap of the `admin` user. Password hashes and key secrets arrive computed by the
//! proposing controller; nothing here hashes, signs or reads a clock.
use super::{
    validate, Change, Command, Envelope, EventAction, Meta, Outcome, Project, Rejection, Role,
    RoleAssignment, SigningKey, State, User,
};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// No token lives longer than this; revocations and retired keys are pruned after it.
pub const MAX_TOKEN_LIFETIME_MS: i64 = 12 * 60 * 60 * 1000;
/// Signing keys kept at most; beyond it the oldest retired key is dropped (its tokens stop
/// verifying early).
pub const MAX_SIGNING_KEYS: usize = 16;
pub const MAX_EMAIL_LEN: usize = 255;
const MIN_KEY_BYTES: usize = 32;

impl State {
    pub(super) fn apply_identity(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::CreateUser {
                id,
                name,
                email,
                enabled,
                default_project,
                password_hash,
            } => {
                validate::name("user", name).map_err(Rejection::Invalid)?;
                check_email(email)?;
                check_hash(password_hash)?;
                if self.user_names.contains_key(name) {
                    return Err(Rejection::exists("user", name));
                }
                if self.users.contains_key(id) {
                    return Err(Rejection::Invalid(format!("user id {id} is already taken")));
                }
                let user = User {
                    id: id.clone(),
                    name: name.clone(),
                    email: email.clone(),
                    enabled: *enabled,
                    default_project_id: self.project_id_or_empty(default_project)?,
                    password_hash: password_hash.clone(),
                    meta: Meta::new(revision, env.time_ms),
                };
                self.store_user(revision, env, user, EventAction::Created)
            }
            Command::UpdateUser {
                user,
                name,
                email,
                enabled,
                default_project,
            } => {
                let current = self.existing_user(user)?.clone();
                let mut next = current.clone();
                if let Some(n) = name {
                    validate::name("user", n).map_err(Rejection::Invalid)?;
                    if n != &current.name && self.user_names.contains_key(n) {
                        return Err(Rejection::exists("user", n));
                    }
                    next.name = n.clone();
                }
                if let Some(e) = email {
                    check_email(e)?;
                    next.email = e.clone();
                }
                if let Some(e) = enabled {
                    if !e && current.enabled {
                        self.keep_an_admin(&current.id, "disable")?;
                    }
                    next.enabled = *e;
                }
                if let Some(p) = default_project {
                    next.default_project_id = self.project_id_or_empty(p)?;
                }
                if next == current {
                    return Ok((Outcome::User(next), None));
                }
                self.store_user(revision, env, next, EventAction::Updated)
            }
            Command::DeleteUser { user } => {
                let found = self.existing_user(user)?.clone();
                self.keep_an_admin(&found.id, "delete")?;
                self.users.remove(&found.id);
                self.user_names.remove(&found.name);
                self.role_assignments.retain(|a| a.user_id != found.id);
                Ok((
                    Outcome::Deleted,
                    Some(user_change(&found, EventAction::Deleted)),
                ))
            }
            Command::SetPassword {
                user,
                password_hash,
            } => {
                check_hash(password_hash)?;
                let mut next = self.existing_user(user)?.clone();
                next.password_hash = password_hash.clone();
                self.store_user(revision, env, next, EventAction::Updated)
            }
            Command::AddRoleAssignment {
                user,
                project,
                role,
            } => {
                let a = self.assignment(user, project, *role)?;
                if self.role_assignments.contains(&a) {
                    return Ok((Outcome::RoleAssignment(a), None));
                }
                self.role_assignments.insert(a.clone());
                let change = self.assignment_change(&a, EventAction::Created);
                Ok((Outcome::RoleAssignment(a), Some(change)))
            }
            Command::RemoveRoleAssignment {
                user,
                project,
                role,
            } => {
                let a = self.assignment(user, project, *role)?;
                if !self.role_assignments.contains(&a) {
                    return Err(Rejection::not_found(
                        "role assignment",
                        &format!("{} {user} {project}", role.as_str()),
                    ));
                }
                if a.role == Role::Admin {
                    self.keep_an_admin(&a.user_id, "remove the admin role of")?;
                }
                self.role_assignments.remove(&a);
                let change = self.assignment_change(&a, EventAction::Deleted);
                Ok((Outcome::Deleted, Some(change)))
            }
            Command::AddSigningKey {
                key_id,
                secret,
                only_if_none,
            } => {
                if *only_if_none && !self.signing_keys.is_empty() {
                    return Ok((Outcome::Unchanged, None));
                }
                self.add_signing_key(key_id, secret, env.time_ms)?;
                Ok((
                    Outcome::Unchanged,
                    Some(Change {
                        resource_type: "signing_key",
                        resource_id: key_id.clone(),
                        resource_name: key_id.clone(),
                        action: EventAction::Created,
                        project_id: String::new(),
                    }),
                ))
            }
            Command::RevokeToken {
                token_id,
                expires_at_ms,
            } => {
                if token_id.is_empty() || token_id.len() > 64 {
                    return Err(Rejection::Invalid(
                        "a token id is 1–64 characters (see `flotilla whoami`)".into(),
                    ));
                }
                if *expires_at_ms > env.time_ms {
                    if let Some(old) = self.revoked_tokens.insert(token_id.clone(), *expires_at_ms)
                    {
                        self.revoked_order.remove(&(old, token_id.clone()));
                    }
                    self.revoked_order
                        .insert((*expires_at_ms, token_id.clone()));
                }
                Ok((Outcome::Unchanged, None))
            }
            Command::BootstrapAdmin {
                user_id,
                project_id,
                password_hash,
                key_id,
                key_secret,
            } => self.bootstrap_admin(
                revision,
                env,
                user_id,
                project_id,
                password_hash,
                key_id,
                key_secret,
            ),
            _ => unreachable!("apply_identity called with a non-identity command"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bootstrap_admin(
        &mut self,
        revision: u64,
        env: &Envelope,
        user_id: &str,
        project_id: &str,
        password_hash: &str,
        key_id: &str,
        key_secret: &[u8],
    ) -> Applied {
        if !self.users.is_empty() {
            return Ok((Outcome::Unchanged, None));
        }
        check_hash(password_hash)?;
        if self.signing_keys.is_empty() {
            self.add_signing_key(key_id, key_secret, env.time_ms)?;
        }
        let project_id = match self.project("admin") {
            Some(p) => p.id.clone(),
            None => {
                let project = Project {
                    id: project_id.to_owned(),
                    name: "admin".into(),
                    description: "Cluster administration".into(),
                    enabled: true,
                    properties: Default::default(),
                    meta: Meta::new(revision, env.time_ms),
                };
                self.project_names
                    .insert(project.name.clone(), project.id.clone());
                self.projects.insert(project.id.clone(), project.clone());
                self.record(
                    revision,
                    env,
                    Change {
                        resource_type: "project",
                        resource_id: project.id.clone(),
                        resource_name: project.name.clone(),
                        action: EventAction::Created,
                        project_id: project.id.clone(),
                    },
                );
                project.id
            }
        };
        let user = User {
            id: user_id.to_owned(),
            name: "admin".into(),
            email: String::new(),
            enabled: true,
            default_project_id: project_id,
            password_hash: password_hash.to_owned(),
            meta: Meta::new(revision, env.time_ms),
        };
        self.role_assignments.insert(RoleAssignment {
            user_id: user.id.clone(),
            project_id: String::new(),
            role: Role::Admin,
        });
        self.store_user(revision, env, user, EventAction::Created)
    }

    fn add_signing_key(&mut self, id: &str, secret: &[u8], now_ms: i64) -> Result<(), Rejection> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(Rejection::Invalid(format!(
                "a signing key needs at least {MIN_KEY_BYTES} secret bytes"
            )));
        }
        if id.is_empty() || self.signing_keys.iter().any(|k| k.id == id) {
            return Err(Rejection::Invalid(format!(
                "signing key id {id:?} is empty or taken"
            )));
        }
        for k in &mut self.signing_keys {
            k.retired_at_ms.get_or_insert(now_ms);
        }
        self.signing_keys.push(SigningKey {
            id: id.to_owned(),
            secret: secret.to_vec(),
            created_at_ms: now_ms,
            retired_at_ms: None,
        });
        while self.signing_keys.len() > MAX_SIGNING_KEYS {
            self.signing_keys.remove(0);
        }
        Ok(())
    }

    /// Drops revocations of tokens that have expired anyway and keys retired for longer than
    /// any token lives. Uses the leader-stamped time of the entry being applied.
    pub(super) fn prune_identity(&mut self, now_ms: i64) {
        while let Some((exp, id)) = self.revoked_order.first().cloned() {
            if exp > now_ms {
                break;
            }
            self.revoked_order.pop_first();
            self.revoked_tokens.remove(&id);
        }
        self.signing_keys.retain(|k| {
            k.retired_at_ms
                .is_none_or(|r| r.saturating_add(MAX_TOKEN_LIFETIME_MS) > now_ms)
        });
    }

    /// A deleted project takes its role assignments and default-project references with it.
    pub(super) fn forget_project_in_identity(&mut self, project_id: &str) {
        self.role_assignments.retain(|a| a.project_id != project_id);
        for u in self.users.values_mut() {
            if u.default_project_id == project_id {
                u.default_project_id.clear();
            }
        }
    }

    fn store_user(
        &mut self,
        revision: u64,
        env: &Envelope,
        mut user: User,
        action: EventAction,
    ) -> Applied {
        if action == EventAction::Updated {
            user.meta.touch(revision, env.time_ms);
        }
        if let Some(old) = self.users.get(&user.id) {
            self.user_names.remove(&old.name);
        }
        self.user_names.insert(user.name.clone(), user.id.clone());
        self.users.insert(user.id.clone(), user.clone());
        let change = user_change(&user, action);
        Ok((Outcome::User(user), Some(change)))
    }

    fn existing_user(&self, key: &str) -> Result<&User, Rejection> {
        self.user(key)
            .ok_or_else(|| Rejection::not_found("user", key))
    }

    fn project_id_or_empty(&self, key: &str) -> Result<String, Rejection> {
        if key.is_empty() {
            return Ok(String::new());
        }
        Ok(self
            .project(key)
            .ok_or_else(|| Rejection::not_found("project", key))?
            .id
            .clone())
    }

    fn assignment(
        &self,
        user: &str,
        project: &str,
        role: Role,
    ) -> Result<RoleAssignment, Rejection> {
        let user_id = self.existing_user(user)?.id.clone();
        let project_id = match role {
            Role::Admin if !project.is_empty() => {
                return Err(Rejection::Invalid(
                    "the admin role is cluster-wide: give no project".into(),
                ))
            }
            Role::Admin => String::new(),
            Role::Member | Role::Reader if project.is_empty() => {
                return Err(Rejection::Invalid(format!(
                    "the {} role is held in a project: give a project",
                    role.as_str()
                )))
            }
            Role::Member | Role::Reader => self.project_id_or_empty(project)?,
        };
        Ok(RoleAssignment {
            user_id,
            project_id,
            role,
        })
    }

    /// Refuses to take away the last enabled user holding the cluster admin role.
    fn keep_an_admin(&self, user_id: &str, what: &str) -> Result<(), Rejection> {
        if !self.is_admin(user_id) || !self.users.get(user_id).is_some_and(|u| u.enabled) {
            return Ok(());
        }
        let others = self.role_assignments.iter().any(|a| {
            a.role == Role::Admin
                && a.user_id != user_id
                && self.users.get(&a.user_id).is_some_and(|u| u.enabled)
        });
        if others {
            return Ok(());
        }
        let name = self
            .users
            .get(user_id)
            .map(|u| u.name.as_str())
            .unwrap_or("");
        Err(Rejection::FailedPrecondition(format!(
            "cannot {what} user {name:?}: it is the last enabled cluster admin; give another \
             user the admin role first"
        )))
    }

    fn assignment_change(&self, a: &RoleAssignment, action: EventAction) -> Change<'static> {
        let user_name = self
            .users
            .get(&a.user_id)
            .map(|u| u.name.clone())
            .unwrap_or_default();
        Change {
            resource_type: "role_assignment",
            resource_id: format!("{}/{}/{}", a.user_id, a.project_id, a.role.as_str()),
            resource_name: format!("{user_name} {}", a.role.as_str()),
            action,
            project_id: a.project_id.clone(),
        }
    }

    // Reads.

    /// Looks a user up by id, then by name.
    pub fn user(&self, key: &str) -> Option<&User> {
        super::by_id_or_name(&self.users, &self.user_names, key)
    }

    pub fn users_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a User> + 'a {
        super::page_after(&self.users, after)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn role_assignments(&self) -> impl Iterator<Item = &RoleAssignment> {
        self.role_assignments.iter()
    }

    pub fn is_admin(&self, user_id: &str) -> bool {
        self.role_assignments.contains(&RoleAssignment {
            user_id: user_id.to_owned(),
            project_id: String::new(),
            role: Role::Admin,
        })
    }

    /// The key that signs new tokens.
    pub fn active_signing_key(&self) -> Option<&SigningKey> {
        self.signing_keys.last()
    }

    pub fn signing_key(&self, id: &str) -> Option<&SigningKey> {
        self.signing_keys.iter().find(|k| k.id == id)
    }

    pub fn signing_keys(&self) -> &[SigningKey] {
        &self.signing_keys
    }

    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.revoked_tokens.contains_key(token_id)
    }

    pub fn revoked_count(&self) -> usize {
        self.revoked_tokens.len()
    }
}

fn check_email(email: &str) -> Result<(), Rejection> {
    if email.chars().count() > MAX_EMAIL_LEN || email.chars().any(char::is_control) {
        return Err(Rejection::Invalid(format!(
            "email must be at most {MAX_EMAIL_LEN} characters without control characters"
        )));
    }
    Ok(())
}

/// Apply trusts no producer: a stored hash must at least look like an argon2id PHC string.
fn check_hash(hash: &str) -> Result<(), Rejection> {
    if hash.is_empty() || (hash.starts_with("$argon2id$") && hash.len() <= 512) {
        return Ok(());
    }
    Err(Rejection::Invalid(
        "password hash is not an argon2id PHC string".into(),
    ))
}

fn user_change(u: &User, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "user",
        resource_id: u.id.clone(),
        resource_name: u.name.clone(),
        action,
        project_id: String::new(),
    }
}

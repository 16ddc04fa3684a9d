//! Applying project commands.
use super::{
    validate, Change, Command, Envelope, EventAction, Meta, Outcome, Project, Rejection, State,
};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

impl State {
    pub(super) fn apply_project(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::CreateProject {
                id,
                name,
                description,
                enabled,
                properties,
            } => {
                validate::name("project", name).map_err(Rejection::Invalid)?;
                validate::description("project", description).map_err(Rejection::Invalid)?;
                validate::properties("project", properties).map_err(Rejection::Invalid)?;
                if self.project_names.contains_key(name) {
                    return Err(Rejection::exists("project", name));
                }
                if self.projects.contains_key(id) {
                    return Err(Rejection::Invalid(format!(
                        "project id {id} is already taken"
                    )));
                }
                let project = Project {
                    id: id.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    enabled: *enabled,
                    properties: properties.clone(),
                    meta: Meta::new(revision, env.time_ms),
                };
                self.project_names.insert(name.clone(), id.clone());
                self.projects.insert(id.clone(), project.clone());
                Ok((
                    Outcome::Project(project.clone()),
                    Some(change(&project, EventAction::Created)),
                ))
            }
            Command::UpdateProject {
                project,
                name,
                description,
                enabled,
                set_properties,
                unset_properties,
            } => {
                let current = self
                    .project(project)
                    .ok_or_else(|| Rejection::not_found("project", project))?
                    .clone();
                let mut next = current.clone();
                if let Some(name) = name {
                    validate::name("project", name).map_err(Rejection::Invalid)?;
                    if name != &current.name && self.project_names.contains_key(name) {
                        return Err(Rejection::exists("project", name));
                    }
                    next.name = name.clone();
                }
                if let Some(d) = description {
                    validate::description("project", d).map_err(Rejection::Invalid)?;
                    next.description = d.clone();
                }
                if let Some(e) = enabled {
                    next.enabled = *e;
                }
                for k in unset_properties {
                    next.properties.remove(k);
                }
                next.properties.extend(set_properties.clone());
                validate::properties("project", &next.properties).map_err(Rejection::Invalid)?;
                if next == current {
                    return Ok((Outcome::Project(next), None));
                }
                next.meta.touch(revision, env.time_ms);
                self.project_names.remove(&current.name);
                self.project_names
                    .insert(next.name.clone(), next.id.clone());
                self.projects.insert(next.id.clone(), next.clone());
                Ok((
                    Outcome::Project(next.clone()),
                    Some(change(&next, EventAction::Updated)),
                ))
            }
            Command::DeleteProject { project } => {
                let found = self
                    .project(project)
                    .ok_or_else(|| Rejection::not_found("project", project))?
                    .clone();
                if found
                    .properties
                    .get("protected")
                    .is_some_and(|v| v == "true")
                {
                    return Err(Rejection::FailedPrecondition(format!(
                        "project {:?} is protected (property protected=true); unset it first",
                        found.name
                    )));
                }
                let images = self.project_owns_images(&found.id);
                if images > 0 {
                    return Err(Rejection::FailedPrecondition(format!(
                        "project {:?} still owns {images} image(s); delete them first",
                        found.name
                    )));
                }
                if let Some(what) = self.project_networking_in_use(&found.id) {
                    return Err(Rejection::FailedPrecondition(format!(
                        "project {:?} still owns {what}; delete them first",
                        found.name
                    )));
                }
                self.projects.remove(&found.id);
                self.project_names.remove(&found.name);
                self.forget_project_networking(&found.id);
                self.forget_project_in_images(&found.id);
                for flavor in self.flavors.values_mut() {
                    flavor.access_project_ids.remove(&found.id);
                }
                self.forget_project_in_identity(&found.id);
                self.forget_project_quota(&found.id);
                Ok((Outcome::Deleted, Some(change(&found, EventAction::Deleted))))
            }
            _ => unreachable!("apply_project called with a non-project command"),
        }
    }
}

fn change(p: &Project, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "project",
        resource_id: p.id.clone(),
        resource_name: p.name.clone(),
        action,
        project_id: p.id.clone(),
    }
}

//! Applying flavor commands.
use super::{
    validate, Change, Command, Envelope, EventAction, Flavor, Meta, Outcome, Rejection, State,
};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

impl State {
    pub(super) fn apply_flavor(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::CreateFlavor(spec) => {
                validate::name("flavor", &spec.name).map_err(Rejection::Invalid)?;
                validate::description("flavor", &spec.description).map_err(Rejection::Invalid)?;
                validate::properties("flavor", &spec.extra_specs).map_err(Rejection::Invalid)?;
                validate::flavor_sizes(
                    spec.vcpus,
                    spec.ram_mib,
                    spec.disk_gib,
                    spec.ephemeral_gib,
                    spec.swap_mib,
                )
                .map_err(Rejection::Invalid)?;
                if self.flavor_names.contains_key(&spec.name) {
                    return Err(Rejection::exists("flavor", &spec.name));
                }
                if self.flavors.contains_key(&spec.id) {
                    return Err(Rejection::Invalid(format!(
                        "flavor id {} is already taken",
                        spec.id
                    )));
                }
                let flavor = Flavor {
                    id: spec.id.clone(),
                    name: spec.name.clone(),
                    vcpus: spec.vcpus,
                    ram_mib: spec.ram_mib,
                    disk_gib: spec.disk_gib,
                    ephemeral_gib: spec.ephemeral_gib,
                    swap_mib: spec.swap_mib,
                    is_public: spec.is_public,
                    description: spec.description.clone(),
                    extra_specs: spec.extra_specs.clone(),
                    access_project_ids: Default::default(),
                    meta: Meta::new(revision, env.time_ms),
                };
                self.flavor_names
                    .insert(flavor.name.clone(), flavor.id.clone());
                self.flavors.insert(flavor.id.clone(), flavor.clone());
                Ok((
                    Outcome::Flavor(flavor.clone()),
                    Some(change(&flavor, EventAction::Created)),
                ))
            }
            Command::UpdateFlavor {
                flavor,
                description,
                is_public,
                set_extra_specs,
                unset_extra_specs,
            } => {
                let mut next = self.existing(flavor)?.clone();
                if let Some(d) = description {
                    validate::description("flavor", d).map_err(Rejection::Invalid)?;
                    next.description = d.clone();
                }
                if let Some(p) = is_public {
                    next.is_public = *p;
                }
                for k in unset_extra_specs {
                    next.extra_specs.remove(k);
                }
                next.extra_specs.extend(set_extra_specs.clone());
                validate::properties("flavor", &next.extra_specs).map_err(Rejection::Invalid)?;
                self.store_flavor(revision, env, next)
            }
            Command::DeleteFlavor { flavor } => {
                let found = self.existing(flavor)?.clone();
                self.flavors.remove(&found.id);
                self.flavor_names.remove(&found.name);
                Ok((Outcome::Deleted, Some(change(&found, EventAction::Deleted))))
            }
            Command::AddFlavorAccess { flavor, project }
            | Command::RemoveFlavorAccess { flavor, project } => {
                let mut next = self.existing(flavor)?.clone();
                if next.is_public {
                    return Err(Rejection::FailedPrecondition(format!(
                        "flavor {:?} is public; project access applies to private flavors only",
                        next.name
                    )));
                }
                let project_id = self
                    .project(project)
                    .ok_or_else(|| Rejection::not_found("project", project))?
                    .id
                    .clone();
                if matches!(env.command, Command::AddFlavorAccess { .. }) {
                    next.access_project_ids.insert(project_id);
                } else {
                    next.access_project_ids.remove(&project_id);
                }
                self.store_flavor(revision, env, next)
            }
            _ => unreachable!("apply_flavor called with a non-flavor command"),
        }
    }

    fn existing(&self, key: &str) -> Result<&Flavor, Rejection> {
        self.flavor(key)
            .ok_or_else(|| Rejection::not_found("flavor", key))
    }

    /// Stores an updated flavor; an update that changes nothing makes no revision.
    fn store_flavor(&mut self, revision: u64, env: &Envelope, mut next: Flavor) -> Applied {
        if self.flavors.get(&next.id) == Some(&next) {
            return Ok((Outcome::Flavor(next), None));
        }
        next.meta.touch(revision, env.time_ms);
        self.flavors.insert(next.id.clone(), next.clone());
        Ok((
            Outcome::Flavor(next.clone()),
            Some(change(&next, EventAction::Updated)),
        ))
    }
}

fn change(f: &Flavor, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "flavor",
        resource_id: f.id.clone(),
        resource_name: f.name.clone(),
        action,
        project_id: String::new(),
    }
}

//! Server actions the agent carries out as command steps (reboot, rebuild, saving the disk as
//! an image) and how their results end the operation.
use super::images::{ContainerFormat, DiskFormat, Image, ImageStatus, ImageUpload, Visibility};
use super::quota::{Resource, ResourceDelta};
use super::servers::{BootImage, DesiredPower, Fault, Server, ServerStatus, SnapshotSpec};
use super::{capacity, validate, Change, Envelope, EventAction, Meta, Outcome, Rejection, State};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

/// `ImageUpload::controller_id` of a server snapshot: the agent uploads it and the operation,
/// not a controller's upload, ends it.
pub const AGENT_UPLOAD: u64 = 0;

impl State {
    pub(super) fn check_rebuild(&self, s: &Server, image_id: &str) -> Result<(), Rejection> {
        let image = self
            .images
            .get(image_id)
            .filter(|i| i.usable_by(&s.project_id))
            .ok_or_else(|| Rejection::not_found("image", image_id))?;
        if image.status != ImageStatus::Active {
            return Err(Rejection::FailedPrecondition(format!(
                "image {:?} is {}; servers boot from active images only",
                image.name,
                image.status.as_str()
            )));
        }
        let claim = capacity::request_for(&s.flavor, image).claim();
        if claim.disk_gib > s.claim.disk_gib || claim.ram_mib > s.claim.ram_mib {
            return Err(Rejection::FailedPrecondition(format!(
                "image {:?} needs more disk or memory than server {:?} has; \
                 pick a smaller image",
                image.name, s.name
            )));
        }
        Ok(())
    }

    pub(super) fn begin_rebuild(&mut self, s: &mut Server, image_id: &str) {
        let image = &self.images[image_id];
        s.image = BootImage {
            id: image.id.clone(),
            sha256: image.sha256.clone(),
            disk_format: image.disk_format,
            size_bytes: image.size_bytes,
        };
        s.status = ServerStatus::Rebuild;
    }

    pub(super) fn check_snapshot(&self, s: &Server, spec: &SnapshotSpec) -> Result<(), Rejection> {
        validate::name("image", &spec.name).map_err(Rejection::Invalid)?;
        validate::properties("image", &spec.properties).map_err(Rejection::Invalid)?;
        if self.images.contains_key(&spec.image_id) {
            return Err(Rejection::Invalid(format!(
                "image id {} is taken",
                spec.image_id
            )));
        }
        if let Some((kind, rotation)) = &spec.backup {
            validate::name("backup type", kind).map_err(Rejection::Invalid)?;
            if *rotation == 0 {
                return Err(Rejection::Invalid("rotation must be at least 1".into()));
            }
        }
        let one: ResourceDelta = [(Resource::Images, 1)].into_iter().collect();
        self.check_quota(&s.project_id, &one)
    }

    /// Records the new image (SAVING, charged to the server's project) the agent will fill.
    pub(super) fn begin_snapshot(
        &mut self,
        revision: u64,
        env: &Envelope,
        s: &Server,
        operation_id: &str,
        spec: &SnapshotSpec,
    ) {
        let mut properties = spec.properties.clone();
        properties.insert("source_server_id".into(), s.id.clone());
        match &spec.backup {
            Some((kind, _)) => {
                properties.insert("image_type".into(), "backup".into());
                properties.insert("backup_type".into(), kind.clone());
            }
            None => {
                properties.insert("image_type".into(), "snapshot".into());
            }
        }
        let one: ResourceDelta = [(Resource::Images, 1)].into_iter().collect();
        self.charge(&s.project_id, &one)
            .expect("checked in the same apply");
        let image = Image {
            id: spec.image_id.clone(),
            name: spec.name.clone(),
            disk_format: DiskFormat::Qcow2,
            container_format: ContainerFormat::Bare,
            visibility: Visibility::Private,
            owner_project_id: s.project_id.clone(),
            members: Default::default(),
            min_disk_gib: s.flavor.disk_gib,
            min_ram_mib: s.flavor.ram_mib,
            size_bytes: 0,
            virtual_size_bytes: 0,
            sha256: String::new(),
            md5: String::new(),
            status: ImageStatus::Saving,
            status_reason: String::new(),
            protected: false,
            properties,
            upload: Some(ImageUpload {
                id: operation_id.to_owned(),
                controller_id: AGENT_UPLOAD,
                started_at_ms: env.time_ms,
            }),
            meta: Meta::new(revision, env.time_ms),
        };
        self.more_changes.push(Change {
            resource_type: "image",
            resource_id: image.id.clone(),
            resource_name: image.name.clone(),
            action: EventAction::Created,
            project_id: image.owner_project_id.clone(),
        });
        self.images.insert(image.id.clone(), image);
        if let Some((kind, rotation)) = &spec.backup {
            self.backup_rotations
                .insert(operation_id.to_owned(), (kind.clone(), *rotation));
        }
    }

    /// An agent's answer to a command step.
    pub(super) fn step_result(
        &mut self,
        revision: u64,
        env: &Envelope,
        op_id: &str,
        ok: bool,
        message: &str,
    ) -> Applied {
        let Some(op) = self.operations.get(op_id).filter(|o| !o.state.finished()) else {
            return Ok((Outcome::Unchanged, None));
        };
        let (server_id, kind) = (op.resource_id.clone(), op.kind.clone());
        let mut ok = ok;
        let mut message = message.to_owned();
        if kind == "image create" || kind == "backup" {
            let still_saving = self
                .images
                .values()
                .any(|i| i.upload.as_ref().is_some_and(|u| u.id == op_id));
            if ok && still_saving {
                ok = false;
                message = "the agent reported success but uploaded no image".into();
            }
            self.end_snapshot(revision, env, op_id, &server_id, ok, &message);
        }
        let message = message.as_str();
        self.finish_operation(revision, env, op_id, ok, message);
        let Some(mut s) = self.servers.get(&server_id).cloned() else {
            return Ok((Outcome::Unchanged, None));
        };
        if s.current_operation_id == op_id {
            s.task_state.clear();
            if matches!(
                s.status,
                ServerStatus::Reboot | ServerStatus::HardReboot | ServerStatus::Rebuild
            ) {
                s.status = match s.desired_power {
                    DesiredPower::Running => ServerStatus::Active,
                    DesiredPower::Shutdown => ServerStatus::Shutoff,
                };
            }
            if !ok {
                s.fault = Some(Fault {
                    message: message.to_owned(),
                    time_ms: env.time_ms,
                });
            }
        }
        self.store_server(revision, env, s)
    }

    /// A failed snapshot kills its image; a successful backup rotates older ones out.
    fn end_snapshot(
        &mut self,
        revision: u64,
        env: &Envelope,
        op_id: &str,
        server_id: &str,
        ok: bool,
        message: &str,
    ) {
        let image = self
            .images
            .values()
            .find(|i| i.upload.as_ref().is_some_and(|u| u.id == op_id))
            .map(|i| i.id.clone());
        if !ok {
            self.backup_rotations.remove(op_id);
            if let Some(id) = image {
                let img = self.images.get_mut(&id).expect("found above");
                img.status = ImageStatus::Killed;
                img.status_reason = format!("saving the server's disk failed: {message}");
                img.upload = None;
                img.meta.touch(revision, env.time_ms);
            }
            return;
        }
        let Some((kind, rotation)) = self.backup_rotations.remove(op_id) else {
            return;
        };
        let mut same: Vec<(u64, String)> = self
            .images
            .values()
            .filter(|i| {
                i.status == ImageStatus::Active
                    && i.properties.get("source_server_id").map(String::as_str) == Some(server_id)
                    && i.properties.get("backup_type") == Some(&kind)
            })
            .map(|i| (i.meta.create_revision, i.id.clone()))
            .collect();
        same.sort();
        let excess = same.len().saturating_sub(rotation as usize);
        for (_, id) in same.into_iter().take(excess) {
            let Some(old) = self.images.remove(&id) else {
                continue;
            };
            let release: ResourceDelta = [
                (Resource::Images, -1),
                (Resource::ImageStorageGib, -old.storage_gib()),
            ]
            .into_iter()
            .collect();
            self.release(&old.owner_project_id, &release);
            self.more_changes.push(Change {
                resource_type: "image",
                resource_id: old.id.clone(),
                resource_name: old.name.clone(),
                action: EventAction::Deleted,
                project_id: old.owner_project_id.clone(),
            });
        }
    }
}

//! Images: metadata, sharing, the upload state machine and the quota they consume. Bytes never
//! pass through here (nor through the Raft log): the controller that receives an upload stores
//! it in its blob store, copies it to peers, inspects it, and only then proposes the outcome.
//!
//! Status: QUEUED --BeginImageUpload--> SAVING --FinishImageUpload--> ACTIVE, or KILLED when the
//! content was refused, or back to QUEUED when the upload was interrupted (a retry may follow).
//! An upload is identified by its id so a late or duplicated finish of an older upload cannot
//! overwrite a newer one.
//!
//! Quota (I3): `images` is charged when the record is created, `image_storage_gib` (the stored
//! size rounded up to whole GiB) when the upload finishes, both in the same apply that records
//! the change, and both are released by the delete.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::quota::{Resource, ResourceDelta};
use super::{validate, Change, Command, Envelope, EventAction, Meta, Outcome, Rejection, State};

type Applied = Result<(Outcome, Option<Change<'static>>), Rejection>;

const GIB: u64 = 1 << 30;

/// The disk formats an image may be declared with (`ImageDiskFormat` in image.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DiskFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vdi,
    Vhd,
    Vhdx,
    Iso,
}

impl DiskFormat {
    /// The user-facing name (as in the API and CLI).
    pub fn name(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
            Self::Vmdk => "vmdk",
            Self::Vdi => "vdi",
            Self::Vhd => "vhd",
            Self::Vhdx => "vhdx",
            Self::Iso => "iso",
        }
    }

    /// The format name qemu-img reports for images of this format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Vhd => "vpc",
            // qemu has no ISO driver: ISO 9660 images are probed as raw.
            Self::Iso => "raw",
            other => other.name(),
        }
    }

    /// The declared format to suggest for a probed qemu format, if Flotilla accepts it.
    pub fn from_qemu_name(probed: &str) -> Option<Self> {
        Some(match probed {
            "qcow2" => Self::Qcow2,
            "raw" => Self::Raw,
            "vmdk" => Self::Vmdk,
            "vdi" => Self::Vdi,
            "vpc" => Self::Vhd,
            "vhdx" => Self::Vhdx,
            _ => return None,
        })
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerFormat {
    Bare,
    Ovf,
    Ova,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Visibility {
    /// Every project; only admins may make an image public.
    Public,
    /// The owner project only.
    Private,
    /// The owner and the member projects.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageStatus {
    Queued,
    Saving,
    Active,
    Killed,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Saving => "saving",
            ImageStatus::Active => "active",
            ImageStatus::Killed => "killed",
        }
    }
}

/// An upload in progress: which controller receives the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUpload {
    pub id: String,
    pub controller_id: u64,
    pub started_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub disk_format: DiskFormat,
    pub container_format: ContainerFormat,
    pub visibility: Visibility,
    pub owner_project_id: String,
    /// Member project id → when it was added (effective while the visibility is shared).
    pub members: BTreeMap<String, i64>,
    pub min_disk_gib: u64,
    pub min_ram_mib: u64,
    pub size_bytes: u64,
    pub virtual_size_bytes: u64,
    /// Lowercase hex; the blob's address. Empty until uploaded.
    pub sha256: String,
    pub md5: String,
    pub status: ImageStatus,
    pub status_reason: String,
    pub protected: bool,
    pub properties: BTreeMap<String, String>,
    pub upload: Option<ImageUpload>,
    pub meta: Meta,
}

impl Image {
    /// Image storage quota this image holds, in GiB (rounded up); 0 until its upload finished.
    pub fn storage_gib(&self) -> i64 {
        if self.status == ImageStatus::Active {
            self.size_bytes.div_ceil(GIB) as i64
        } else {
            0
        }
    }

    /// Whether users of `project_id` may see and boot it (role checks are the API's).
    pub fn usable_by(&self, project_id: &str) -> bool {
        self.visibility == Visibility::Public
            || self.owner_project_id == project_id
            || (self.visibility == Visibility::Shared && self.members.contains_key(project_id))
    }
}

/// What `CreateImage` records; the proposer resolves the owner to an id and stamps the new id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub id: String,
    pub name: String,
    pub owner_project_id: String,
    pub disk_format: DiskFormat,
    pub container_format: ContainerFormat,
    pub visibility: Visibility,
    pub min_disk_gib: u64,
    pub min_ram_mib: u64,
    pub protected: bool,
    pub properties: BTreeMap<String, String>,
}

/// How an upload ended, as decided by the controller that received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadResult {
    /// The content is stored on enough controllers and passed inspection.
    Stored {
        size_bytes: u64,
        virtual_size_bytes: u64,
        sha256: String,
        md5: String,
    },
    /// The content was refused (checksum, format or safety check): the image is KILLED.
    Refused { reason: String },
    /// The transfer broke off (client gone, controller restarting): back to QUEUED.
    Interrupted { reason: String },
}

/// Changes to an image's metadata; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageChanges {
    pub name: Option<String>,
    pub min_disk_gib: Option<u64>,
    pub min_ram_mib: Option<u64>,
    pub protected: Option<bool>,
    pub visibility: Option<Visibility>,
    pub set_properties: BTreeMap<String, String>,
    pub unset_properties: Vec<String>,
}

impl State {
    pub(super) fn apply_image(&mut self, revision: u64, env: &Envelope) -> Applied {
        match &env.command {
            Command::CreateImage(spec) => self.create_image(revision, env, spec),
            Command::UpdateImage { image_id, changes } => {
                let mut next = self.existing_image(image_id)?.clone();
                if let Some(name) = &changes.name {
                    validate::name("image", name).map_err(Rejection::Invalid)?;
                    next.name = name.clone();
                }
                if let Some(v) = changes.min_disk_gib {
                    next.min_disk_gib = v;
                }
                if let Some(v) = changes.min_ram_mib {
                    next.min_ram_mib = v;
                }
                if let Some(v) = changes.protected {
                    next.protected = v;
                }
                if let Some(v) = changes.visibility {
                    next.visibility = v;
                }
                for k in &changes.unset_properties {
                    next.properties.remove(k);
                }
                next.properties.extend(changes.set_properties.clone());
                validate::properties("image", &next.properties).map_err(Rejection::Invalid)?;
                self.store_image(revision, env, next)
            }
            Command::DeleteImage { image_id } => {
                let found = self.existing_image(image_id)?.clone();
                if found.protected {
                    return Err(Rejection::FailedPrecondition(format!(
                        "image {:?} is protected; unset the flag first \
                         (`flotilla image set --unprotected {}`)",
                        found.name, found.id
                    )));
                }
                if let Some(user) = self.image_user(&found.id) {
                    return Err(Rejection::FailedPrecondition(format!(
                        "image {:?} is in use by {user}; delete or rebuild it first",
                        found.name
                    )));
                }
                self.images.remove(&found.id);
                let release: ResourceDelta = [
                    (Resource::Images, -1),
                    (Resource::ImageStorageGib, -found.storage_gib()),
                ]
                .into_iter()
                .collect();
                self.release(&found.owner_project_id, &release);
                Ok((Outcome::Deleted, Some(change(&found, EventAction::Deleted))))
            }
            Command::AddImageMember { image_id, project }
            | Command::RemoveImageMember { image_id, project } => {
                let mut next = self.existing_image(image_id)?.clone();
                if next.visibility != Visibility::Shared {
                    return Err(Rejection::FailedPrecondition(format!(
                        "image {:?} is not shared; set its visibility to shared first \
                         (`flotilla image set --shared {}`)",
                        next.name, next.id
                    )));
                }
                let project_id = self
                    .project(project)
                    .ok_or_else(|| Rejection::not_found("project", project))?
                    .id
                    .clone();
                if matches!(env.command, Command::AddImageMember { .. }) {
                    if project_id == next.owner_project_id {
                        return Err(Rejection::Invalid(
                            "the owner project cannot be a member of its own image".into(),
                        ));
                    }
                    next.members.entry(project_id).or_insert(env.time_ms);
                } else if next.members.remove(&project_id).is_none() {
                    return Err(Rejection::not_found("image member", project));
                }
                self.store_image(revision, env, next)
            }
            Command::BeginImageUpload {
                image_id,
                upload_id,
                controller_id,
                size_hint,
            } => {
                let mut next = self.existing_image(image_id)?.clone();
                if next.status != ImageStatus::Queued {
                    return Err(Rejection::FailedPrecondition(format!(
                        "image {:?} is {}; only a queued image accepts an upload{}",
                        next.name,
                        next.status.as_str(),
                        if next.status == ImageStatus::Saving {
                            " (another upload is in progress)"
                        } else {
                            ""
                        }
                    )));
                }
                let storage: ResourceDelta =
                    [(Resource::ImageStorageGib, size_hint.div_ceil(GIB) as i64)]
                        .into_iter()
                        .collect();
                self.check_quota(&next.owner_project_id, &storage)?;
                next.status = ImageStatus::Saving;
                next.status_reason.clear();
                next.upload = Some(ImageUpload {
                    id: upload_id.clone(),
                    controller_id: *controller_id,
                    started_at_ms: env.time_ms,
                });
                self.store_image(revision, env, next)
            }
            Command::FinishImageUpload {
                image_id,
                upload_id,
                result,
            } => {
                let mut next = self.existing_image(image_id)?.clone();
                if next.upload.as_ref().map(|u| &u.id) != Some(upload_id) {
                    return Err(Rejection::FailedPrecondition(format!(
                        "the upload to image {:?} was abandoned (the image is {} now)",
                        next.name,
                        next.status.as_str()
                    )));
                }
                next.upload = None;
                match result {
                    UploadResult::Stored {
                        size_bytes,
                        virtual_size_bytes,
                        sha256,
                        md5,
                    } => {
                        next.size_bytes = *size_bytes;
                        next.virtual_size_bytes = *virtual_size_bytes;
                        next.sha256 = sha256.to_ascii_lowercase();
                        next.md5 = md5.to_ascii_lowercase();
                        next.status = ImageStatus::Active;
                        let storage: ResourceDelta =
                            [(Resource::ImageStorageGib, next.storage_gib())]
                                .into_iter()
                                .collect();
                        if let Err(exceeded) = self.charge(&next.owner_project_id, &storage) {
                            next.status = ImageStatus::Queued;
                            next.size_bytes = 0;
                            next.virtual_size_bytes = 0;
                            next.sha256.clear();
                            next.md5.clear();
                            next.status_reason = exceeded.to_string();
                        }
                    }
                    UploadResult::Refused { reason } => {
                        next.status = ImageStatus::Killed;
                        next.status_reason = reason.clone();
                    }
                    UploadResult::Interrupted { reason } => {
                        next.status = ImageStatus::Queued;
                        next.status_reason = reason.clone();
                    }
                }
                self.store_image(revision, env, next)
            }
            _ => unreachable!("apply_image called with a non-image command"),
        }
    }

    fn create_image(&mut self, revision: u64, env: &Envelope, spec: &ImageSpec) -> Applied {
        validate::name("image", &spec.name).map_err(Rejection::Invalid)?;
        validate::properties("image", &spec.properties).map_err(Rejection::Invalid)?;
        if self.images.contains_key(&spec.id) {
            return Err(Rejection::Invalid(format!(
                "image id {} is already taken",
                spec.id
            )));
        }
        let owner = self
            .projects
            .get(&spec.owner_project_id)
            .ok_or_else(|| Rejection::not_found("project", &spec.owner_project_id))?;
        if !owner.enabled {
            return Err(Rejection::FailedPrecondition(format!(
                "project {:?} is disabled",
                owner.name
            )));
        }
        let one: ResourceDelta = [(Resource::Images, 1)].into_iter().collect();
        self.charge(&spec.owner_project_id, &one)
            .map_err(|e| Rejection::QuotaExceeded(e.to_string()))?;
        let image = Image {
            id: spec.id.clone(),
            name: spec.name.clone(),
            disk_format: spec.disk_format,
            container_format: spec.container_format,
            visibility: spec.visibility,
            owner_project_id: spec.owner_project_id.clone(),
            members: BTreeMap::new(),
            min_disk_gib: spec.min_disk_gib,
            min_ram_mib: spec.min_ram_mib,
            size_bytes: 0,
            virtual_size_bytes: 0,
            sha256: String::new(),
            md5: String::new(),
            status: ImageStatus::Queued,
            status_reason: String::new(),
            protected: spec.protected,
            properties: spec.properties.clone(),
            upload: None,
            meta: Meta::new(revision, env.time_ms),
        };
        self.images.insert(image.id.clone(), image.clone());
        Ok((
            Outcome::Image(image.clone()),
            Some(change(&image, EventAction::Created)),
        ))
    }

    fn existing_image(&self, id: &str) -> Result<&Image, Rejection> {
        self.images
            .get(id)
            .ok_or_else(|| Rejection::not_found("image", id))
    }

    /// Stores a changed image; a change that changes nothing makes no revision.
    fn store_image(&mut self, revision: u64, env: &Envelope, mut next: Image) -> Applied {
        if self.images.get(&next.id) == Some(&next) {
            return Ok((Outcome::Image(next), None));
        }
        next.meta.touch(revision, env.time_ms);
        self.images.insert(next.id.clone(), next.clone());
        Ok((
            Outcome::Image(next.clone()),
            Some(change(&next, EventAction::Updated)),
        ))
    }

    /// What keeps an image from being deleted, if anything: a server booted from it.
    fn image_user(&self, image_id: &str) -> Option<String> {
        self.server_using_image(image_id)
            .map(|s| format!("server {:?} ({})", s.name, s.id))
    }

    /// Drops a deleted project from image member lists.
    pub(super) fn forget_project_in_images(&mut self, project_id: &str) {
        for image in self.images.values_mut() {
            image.members.remove(project_id);
        }
    }

    /// How many images the project owns (a project cannot be deleted while it owns any).
    pub(super) fn project_owns_images(&self, project_id: &str) -> usize {
        self.images
            .values()
            .filter(|i| i.owner_project_id == project_id)
            .count()
    }

    pub fn image(&self, id: &str) -> Option<&Image> {
        self.images.get(id)
    }

    /// Images in id order after `after` (exclusive).
    pub fn images_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Image> + 'a {
        super::page_after(&self.images, after)
    }

    pub fn images(&self) -> impl Iterator<Item = &Image> {
        self.images.values()
    }
}

fn change(image: &Image, action: EventAction) -> Change<'static> {
    Change {
        resource_type: "image",
        resource_id: image.id.clone(),
        resource_name: image.name.clone(),
        action,
        project_id: image.owner_project_id.clone(),
    }
}

//! ImageService: image metadata, sharing, and (in [`super::image_transfer`]) the byte streams.
//!
//! Who may do what: an image is visible to admins, to everyone when public, and to users with
//! a role in its owner project or — when shared — in a member project. Changing an image
//! (metadata, upload, members, delete) needs the member role in its owner project; making it
//! public needs the admin role. Images are named by id or by a name unique among the images
//! the caller can see.
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status, Streaming};

use super::authz::{Action, Principal};
use super::image_transfer::{self, DownloadStream};
use super::{allow, auth::principal, convert, new_id, page_size, paginate, required, Api};
use crate::images::ImageRuntime;
use crate::state::{
    validate, Command, ContainerFormat, DiskFormat, Image, ImageChanges, ImageSpec, ImageStatus,
    Outcome, Project, State, Visibility,
};

#[derive(Clone)]
pub struct ImageApi {
    pub api: Api,
    pub runtime: Arc<ImageRuntime>,
}

pub(super) fn visible(p: &Principal, image: &Image) -> bool {
    p.admin
        || image.visibility == Visibility::Public
        || p.in_project(&image.owner_project_id)
        || (image.visibility == Visibility::Shared
            && image.members.keys().any(|id| p.in_project(id)))
}

/// The image named by `key` (id, or a name unique among the images `p` can see).
pub(super) fn resolve<'s>(state: &'s State, p: &Principal, key: &str) -> Result<&'s Image, Status> {
    required("image", key)?;
    if let Some(image) = state.image(key).filter(|i| visible(p, i)) {
        return Ok(image);
    }
    let mut named = state.images().filter(|i| i.name == key && visible(p, i));
    match (named.next(), named.next()) {
        (Some(image), None) => Ok(image),
        (None, _) => Err(Status::not_found(format!("image {key:?} not found"))),
        (Some(_), Some(_)) => Err(Status::failed_precondition(format!(
            "several images are named {key:?}; use the image id"
        ))),
    }
}

/// The owner project of an image, which authorizes changes to it.
pub(super) fn owner<'s>(state: &'s State, image: &Image) -> Result<&'s Project, Status> {
    state
        .project(&image.owner_project_id)
        .ok_or_else(|| Status::internal(format!("image {} has no owner project", image.id)))
}

pub(super) fn image_of(outcome: Outcome) -> Result<Image, Status> {
    match outcome {
        Outcome::Image(i) => Ok(i),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

fn disk_format(v: i32) -> Result<DiskFormat, Status> {
    use pb::ImageDiskFormat as F;
    Ok(match F::try_from(v).unwrap_or(F::Unspecified) {
        F::Qcow2 => DiskFormat::Qcow2,
        F::Raw => DiskFormat::Raw,
        F::Vmdk => DiskFormat::Vmdk,
        F::Vdi => DiskFormat::Vdi,
        F::Vhd => DiskFormat::Vhd,
        F::Vhdx => DiskFormat::Vhdx,
        F::Iso => DiskFormat::Iso,
        F::Unspecified => {
            return Err(Status::invalid_argument(
                "disk_format is required: one of qcow2, raw, vmdk, vdi, vhd, vhdx, iso",
            ))
        }
    })
}

fn container_format(v: i32) -> Result<ContainerFormat, Status> {
    use pb::ImageContainerFormat as C;
    match C::try_from(v) {
        Ok(C::Unspecified) | Ok(C::Bare) => Ok(ContainerFormat::Bare),
        Ok(C::Ovf) => Ok(ContainerFormat::Ovf),
        Ok(C::Ova) => Ok(ContainerFormat::Ova),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown container_format {v}: use bare, ovf or ova"
        ))),
    }
}

/// `None` for UNSPECIFIED.
fn visibility(v: i32) -> Result<Option<Visibility>, Status> {
    use pb::ImageVisibility as V;
    match V::try_from(v) {
        Ok(V::Unspecified) => Ok(None),
        Ok(V::Public) => Ok(Some(Visibility::Public)),
        Ok(V::Private) => Ok(Some(Visibility::Private)),
        Ok(V::Shared) => Ok(Some(Visibility::Shared)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown visibility {v}: use public, private or shared"
        ))),
    }
}

fn status_filter(v: i32) -> Result<Option<ImageStatus>, Status> {
    use pb::ImageStatus as S;
    match S::try_from(v) {
        Ok(S::Unspecified) => Ok(None),
        Ok(S::Queued) => Ok(Some(ImageStatus::Queued)),
        Ok(S::Saving) => Ok(Some(ImageStatus::Saving)),
        Ok(S::Active) => Ok(Some(ImageStatus::Active)),
        Ok(S::Killed) => Ok(Some(ImageStatus::Killed)),
        Ok(S::Deleted) => Err(Status::invalid_argument(
            "deleted images are removed, not kept: no image has status deleted",
        )),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown image status {v}"
        ))),
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn create_image(
        &self,
        req: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        validate::name("image", &r.name).map_err(Status::invalid_argument)?;
        let properties = r.properties.into_iter().collect();
        validate::properties("image", &properties).map_err(Status::invalid_argument)?;
        let visibility = visibility(r.visibility)?.unwrap_or(Visibility::Private);
        let spec_formats = (
            disk_format(r.disk_format)?,
            container_format(r.container_format)?,
        );
        let owner_id = {
            let state = self.api.read(false).await?;
            let key = if r.owner.is_empty() {
                let scoped = p.token.as_ref().map(|t| t.project_id.clone());
                scoped.filter(|id| !id.is_empty()).ok_or_else(|| {
                    Status::invalid_argument(
                        "name the owner project: your token is not scoped to a project \
                         (or log in with --project)",
                    )
                })?
            } else {
                r.owner.clone()
            };
            let project = state
                .project(&key)
                .ok_or_else(|| Status::not_found(format!("project {key:?} not found")))?;
            allow(&p, Action::WriteProject, Some(project))?;
            project.id.clone()
        };
        if visibility == Visibility::Public {
            allow(&p, Action::PublishImage, None)?;
        }
        let spec = ImageSpec {
            id: new_id(),
            name: r.name,
            owner_project_id: owner_id,
            disk_format: spec_formats.0,
            container_format: spec_formats.1,
            visibility,
            min_disk_gib: r.min_disk_gib,
            min_ram_mib: r.min_ram_mib,
            protected: r.protected,
            properties,
        };
        let outcome = self
            .api
            .propose(r.request_id, p.name, Command::CreateImage(spec))
            .await?;
        Ok(Response::new(convert::image(&image_of(outcome)?)))
    }

    async fn upload_image(
        &self,
        req: Request<Streaming<pb::UploadImageRequest>>,
    ) -> Result<Response<pb::Image>, Status> {
        let p = principal(&req)?;
        // Run the upload as its own task: when the client goes away, tonic drops this handler,
        // and the upload must still record that it was interrupted (back to QUEUED at once).
        let images = self.clone();
        let stream = req.into_inner();
        let image = tokio::spawn(async move { image_transfer::upload(&images, p, stream).await })
            .await
            .map_err(|e| Status::internal(format!("the upload task failed: {e}")))??;
        Ok(Response::new(convert::image(&image)))
    }

    async fn download_image(
        &self,
        req: Request<pb::DownloadImageRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let p = principal(&req)?;
        let stream = image_transfer::download(self, p, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn get_image(
        &self,
        req: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let image = resolve(&state, &p, &r.image)?;
        Ok(Response::new(convert::image(image)))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let want_visibility = visibility(r.visibility)?;
        let want_status = status_filter(r.status)?;
        let state = self.api.read(r.stale).await?;
        let owner_id = if r.owner.is_empty() {
            None
        } else {
            let found = state
                .project(&r.owner)
                .filter(|o| p.admin || p.in_project(&o.id));
            Some(
                found
                    .ok_or_else(|| Status::not_found(format!("project {:?} not found", r.owner)))?
                    .id
                    .clone(),
            )
        };
        let (page, next) = paginate(
            state.images_after(&r.page_token).filter(|i| {
                visible(&p, i)
                    && want_visibility.is_none_or(|v| i.visibility == v)
                    && want_status.is_none_or(|s| i.status == s)
                    && owner_id.as_ref().is_none_or(|o| &i.owner_project_id == o)
                    && (r.name.is_empty() || i.name == r.name)
            }),
            page_size(r.page_size),
            |i| i.id.clone(),
        );
        Ok(Response::new(pb::ListImagesResponse {
            images: page.into_iter().map(convert::image).collect(),
            next_page_token: next,
        }))
    }

    async fn update_image(
        &self,
        req: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let new_visibility = visibility(r.visibility)?;
        if let Some(name) = &r.name {
            validate::name("image", name).map_err(Status::invalid_argument)?;
        }
        let image_id = self.writable(&p, &r.image).await?;
        if new_visibility == Some(Visibility::Public) {
            allow(&p, Action::PublishImage, None)?;
        }
        let changes = ImageChanges {
            name: r.name,
            min_disk_gib: r.min_disk_gib,
            min_ram_mib: r.min_ram_mib,
            protected: r.protected,
            visibility: new_visibility,
            set_properties: r.set_properties.into_iter().collect(),
            unset_properties: r.unset_properties,
        };
        let cmd = Command::UpdateImage { image_id, changes };
        let outcome = self.api.propose(r.request_id, p.name, cmd).await?;
        Ok(Response::new(convert::image(&image_of(outcome)?)))
    }

    async fn delete_image(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let image_id = self.writable(&p, &r.image).await?;
        let cmd = Command::DeleteImage { image_id };
        self.api.propose(r.request_id, p.name, cmd).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn add_image_member(
        &self,
        req: Request<pb::AddImageMemberRequest>,
    ) -> Result<Response<pb::ImageMember>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("project", &r.project)?;
        let image_id = self.writable(&p, &r.image).await?;
        let cmd = Command::AddImageMember {
            image_id,
            project: r.project.clone(),
        };
        let image = image_of(self.api.propose(r.request_id, p.name, cmd).await?)?;
        let state = self.api.node.state();
        let project_id = state
            .project(&r.project)
            .map(|pr| pr.id.clone())
            .unwrap_or(r.project);
        let created = image.members.get(&project_id).copied().unwrap_or_default();
        Ok(Response::new(pb::ImageMember {
            image_id: image.id,
            project_id,
            created_at_ms: created,
        }))
    }

    async fn remove_image_member(
        &self,
        req: Request<pb::RemoveImageMemberRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("project", &r.project)?;
        let image_id = self.writable(&p, &r.image).await?;
        let cmd = Command::RemoveImageMember {
            image_id,
            project: r.project,
        };
        self.api.propose(r.request_id, p.name, cmd).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_image_members(
        &self,
        req: Request<pb::ListImageMembersRequest>,
    ) -> Result<Response<pb::ListImageMembersResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let image = resolve(&state, &p, &r.image)?;
        // Members of a shared image see that it is shared with them, not with whom else.
        let owner_side = p.admin || p.in_project(&image.owner_project_id);
        let members = image
            .members
            .iter()
            .filter(|(id, _)| owner_side || p.in_project(id))
            .skip_while(|(id, _)| !r.page_token.is_empty() && id.as_str() <= r.page_token.as_str());
        let (page, next) = paginate(members, page_size(r.page_size), |(id, _)| (*id).clone());
        Ok(Response::new(pb::ListImageMembersResponse {
            members: page
                .into_iter()
                .map(|(id, at)| pb::ImageMember {
                    image_id: image.id.clone(),
                    project_id: id.clone(),
                    created_at_ms: *at,
                })
                .collect(),
            next_page_token: next,
        }))
    }
}

impl ImageApi {
    /// Resolves an image the caller may change and returns its id.
    pub(super) async fn writable(&self, p: &Principal, key: &str) -> Result<String, Status> {
        let state = self.api.read(false).await?;
        let image = resolve(&state, p, key)?;
        allow(p, Action::WriteProject, Some(owner(&state, image)?))?;
        Ok(image.id.clone())
    }
}

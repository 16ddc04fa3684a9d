//! ImageService rows of the matrix, and image behaviour through the real service (blob store on
//! disk, real qemu-img, the in-process blob peer driver).
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use pb::image_service_server::ImageService;
use pb::quota_service_server::QuotaService;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use super::{Rpc, Target, World};
use crate::api::auth::principal;
use crate::api::{image_transfer, Api, ImageApi};
use crate::images::peers::LocalBlobPeers;
use crate::images::{BlobStore, ImageRuntime, Inspector};

/// Node 1's image service, storing blobs under `dir/1`, its peers (nodes 2 and 3) under
/// `dir/2` and `dir/3`: uploads are copied to a majority before they are active.
pub(super) fn image_api(api: Api, dir: &tempfile::TempDir) -> ImageApi {
    let peers = LocalBlobPeers::default();
    for id in 1..=3u64 {
        let store = BlobStore::open(dir.path().join(id.to_string())).expect("blob store");
        peers.stores.lock().insert(id, store);
    }
    let store = peers.stores.lock()[&1].clone();
    let runtime = ImageRuntime::new(store, Inspector::default(), Arc::new(peers), 0, 1 << 30);
    ImageApi {
        api,
        runtime: Arc::new(runtime),
    }
}

/// Bytes qemu-img probes as raw.
fn raw_content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

fn upload_stream(
    image: &str,
    content: &[u8],
) -> impl tokio_stream::Stream<Item = Result<pb::UploadImageRequest, Status>> + Unpin + Send {
    use pb::upload_image_request::Data;
    let mut msgs = vec![Ok(pb::UploadImageRequest {
        data: Some(Data::Header(pb::UploadImageHeader {
            image: image.into(),
            size_bytes: content.len() as u64,
            ..Default::default()
        })),
    })];
    for c in content.chunks(4096) {
        msgs.push(Ok(pb::UploadImageRequest {
            data: Some(Data::Chunk(c.to_vec())),
        }));
    }
    tokio_stream::iter(msgs)
}

impl World {
    /// Unlimited image quota for `own` and `other`, a project `outsider` to share with, and an
    /// active private image in each of `own` and `other` (named `own-img`, `other-img`).
    pub(super) async fn populate_images(&self) {
        self.project("outsider").await;
        for project in ["own", "other"] {
            let r = pb::SetQuotaRequest {
                project: project.into(),
                images: Some(-1),
                image_storage_gib: Some(-1),
                ..Default::default()
            };
            self.quotas.set_quota(self.admin(r)).await.unwrap();
            let id = self
                .admin_image(project, &format!("{project}-img"), false)
                .await;
            self.admin_upload(&id, &raw_content(64 << 10))
                .await
                .unwrap();
        }
    }

    /// Creates a raw image in `project` as admin; returns its id.
    async fn admin_image(&self, project: &str, name: &str, shared: bool) -> String {
        let visibility = if shared {
            pb::ImageVisibility::Shared
        } else {
            pb::ImageVisibility::Private
        };
        let r = pb::CreateImageRequest {
            name: name.into(),
            disk_format: pb::ImageDiskFormat::Raw as i32,
            visibility: visibility as i32,
            owner: project.into(),
            ..Default::default()
        };
        let image = self.images.create_image(self.admin(r)).await.unwrap();
        image.into_inner().id
    }

    async fn admin_upload(&self, image: &str, content: &[u8]) -> Result<pb::Image, Status> {
        let p = principal(&self.admin(()))?;
        let image = image_transfer::upload(&self.images, p, upload_stream(image, content)).await?;
        Ok(crate::api::convert::image(&image))
    }

    pub(super) async fn call_image(
        &self,
        rpc: Rpc,
        token: Option<&str>,
        t: Target,
    ) -> Result<(), Status> {
        let project = t.name();
        let existing = format!("{project}-img");
        match rpc {
            Rpc::CreateImage => {
                let r = pb::CreateImageRequest {
                    name: self.fresh("img"),
                    disk_format: pb::ImageDiskFormat::Raw as i32,
                    owner: project.into(),
                    ..Default::default()
                };
                self.images.create_image(self.req(token, r)?).await?;
            }
            Rpc::GetImage => {
                let r = pb::GetImageRequest {
                    image: existing,
                    stale: false,
                };
                self.images.get_image(self.req(token, r)?).await?;
            }
            Rpc::ListImages => {
                let r = pb::ListImagesRequest::default();
                self.images.list_images(self.req(token, r)?).await?;
            }
            Rpc::UpdateImage | Rpc::PublishImage => {
                let id = self.admin_image(project, &self.fresh("upd"), false).await;
                let visibility = if matches!(rpc, Rpc::PublishImage) {
                    pb::ImageVisibility::Public
                } else {
                    pb::ImageVisibility::Unspecified
                };
                let r = pb::UpdateImageRequest {
                    image: id,
                    min_ram_mib: Some(128),
                    visibility: visibility as i32,
                    ..Default::default()
                };
                self.images.update_image(self.req(token, r)?).await?;
            }
            Rpc::DeleteImage => {
                let id = self.admin_image(project, &self.fresh("del"), false).await;
                let r = pb::DeleteImageRequest {
                    image: id,
                    ..Default::default()
                };
                self.images.delete_image(self.req(token, r)?).await?;
            }
            Rpc::UploadImage => {
                let id = self.admin_image(project, &self.fresh("up"), false).await;
                let p = principal(&self.req(token, ())?)?;
                let stream = upload_stream(&id, &raw_content(8 << 10));
                image_transfer::upload(&self.images, p, stream).await?;
            }
            Rpc::DownloadImage => {
                let r = pb::DownloadImageRequest {
                    image: existing,
                    offset: 0,
                };
                let mut stream = self.images.download_image(self.req(token, r)?).await?;
                let stream = stream.get_mut();
                while let Some(msg) = stream.next().await {
                    msg?;
                }
            }
            Rpc::AddImageMember | Rpc::RemoveImageMember => {
                let id = self.admin_image(project, &self.fresh("shr"), true).await;
                if matches!(rpc, Rpc::RemoveImageMember) {
                    let r = pb::AddImageMemberRequest {
                        image: id.clone(),
                        project: "outsider".into(),
                        ..Default::default()
                    };
                    self.images.add_image_member(self.admin(r)).await.unwrap();
                    let r = pb::RemoveImageMemberRequest {
                        image: id,
                        project: "outsider".into(),
                        ..Default::default()
                    };
                    self.images.remove_image_member(self.req(token, r)?).await?;
                } else {
                    let r = pb::AddImageMemberRequest {
                        image: id,
                        project: "outsider".into(),
                        ..Default::default()
                    };
                    self.images.add_image_member(self.req(token, r)?).await?;
                }
            }
            Rpc::ListImageMembers => {
                let r = pb::ListImageMembersRequest {
                    image: existing,
                    ..Default::default()
                };
                self.images.list_image_members(self.req(token, r)?).await?;
            }
            other => unreachable!("{other:?} is not an image RPC"),
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_listed_by_visibility_shared_by_members_and_streamed_back_whole() {
    let w = World::start().await;
    let principals = w.populate().await;
    let token = |name: &str| {
        principals
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, t)| t.clone())
    };
    let member = token("member").unwrap();
    let list = |tok: String| {
        let w = &w;
        async move {
            let r = w.req(Some(&tok), pb::ListImagesRequest::default()).unwrap();
            let mut names: Vec<String> = w
                .images
                .list_images(r)
                .await
                .unwrap()
                .into_inner()
                .images
                .into_iter()
                .map(|i| i.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(list(member.clone()).await, ["own-img"]);
    assert_eq!(list(token("boss").unwrap()).await, ["other-img", "own-img"]);
    assert!(list(token("norole").unwrap()).await.is_empty());

    // Sharing `other-img` with `own` makes it visible to own's users, read-only.
    let r = pb::UpdateImageRequest {
        image: "other-img".into(),
        visibility: pb::ImageVisibility::Shared as i32,
        ..Default::default()
    };
    w.images.update_image(w.admin(r)).await.unwrap();
    let r = pb::AddImageMemberRequest {
        image: "other-img".into(),
        project: "own".into(),
        ..Default::default()
    };
    w.images.add_image_member(w.admin(r)).await.unwrap();
    assert_eq!(list(member.clone()).await, ["other-img", "own-img"]);
    let r = pb::DeleteImageRequest {
        image: "other-img".into(),
        ..Default::default()
    };
    let err = w
        .images
        .delete_image(w.req(Some(&member), r).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A download returns the metadata first, then exactly the bytes, from any offset.
    let content = raw_content(64 << 10);
    for offset in [0usize, 1000] {
        let r = pb::DownloadImageRequest {
            image: "other-img".into(),
            offset: offset as u64,
        };
        let mut stream = w
            .images
            .download_image(w.req(Some(&member), r).unwrap())
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(
            first.data,
            Some(pb::download_image_response::Data::Image(ref i)) if i.name == "other-img"
        ));
        let mut got = Vec::new();
        while let Some(msg) = stream.next().await {
            if let Some(pb::download_image_response::Data::Chunk(c)) = msg.unwrap().data {
                got.extend(c);
            }
        }
        assert_eq!(got, content[offset..]);
    }

    // Names: an id or a unique visible name; a duplicate visible name asks for the id.
    let dup = w.admin_image("own", "own-img", false).await;
    let r = pb::GetImageRequest {
        image: "own-img".into(),
        stale: false,
    };
    let err = w
        .images
        .get_image(w.req(Some(&member), r).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let r = pb::GetImageRequest {
        image: dup.clone(),
        stale: false,
    };
    w.images
        .get_image(w.req(Some(&member), r).unwrap())
        .await
        .unwrap();

    // Bad input gets clear errors and changes nothing.
    let r = pb::CreateImageRequest {
        name: "no-format".into(),
        owner: "own".into(),
        ..Default::default()
    };
    let err = w.images.create_image(w.admin(r)).await.unwrap_err();
    assert!(err.message().contains("disk_format is required"), "{err:?}");
    let err = w.admin_upload(&dup, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let r = pb::GetImageRequest {
        image: dup,
        stale: false,
    };
    let after = w.images.get_image(w.admin(r)).await.unwrap().into_inner();
    assert_eq!(after.status(), pb::ImageStatus::Queued, "{after:?}");
    w.cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_storage_quota_limits_uploads_and_deletes_release_it() {
    let w = World::start().await;
    w.populate().await;
    let r = pb::SetQuotaRequest {
        project: "own".into(),
        images: Some(2),
        image_storage_gib: Some(0),
        ..Default::default()
    };
    w.quotas.set_quota(w.admin(r)).await.unwrap();
    // `own` already holds own-img (1 GiB, rounded up): usage is above a limit of 0.
    let id = w.admin_image("own", "second", false).await;
    let err = w.admin_upload(&id, &raw_content(4096)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let r = pb::CreateImageRequest {
        name: "third".into(),
        disk_format: pb::ImageDiskFormat::Raw as i32,
        owner: "own".into(),
        ..Default::default()
    };
    let err = w.images.create_image(w.admin(r)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("images"), "{err:?}");

    let r = pb::SetQuotaRequest {
        project: "own".into(),
        image_storage_gib: Some(2),
        ..Default::default()
    };
    w.quotas.set_quota(w.admin(r)).await.unwrap();
    let img = w.admin_upload(&id, &raw_content(4096)).await.unwrap();
    assert_eq!(img.status(), pb::ImageStatus::Active);
    let usage = || async {
        let r = pb::GetQuotaRequest {
            project: "own".into(),
            stale: false,
        };
        let q = w.quotas.get_quota(w.admin(r)).await.unwrap().into_inner();
        (
            q.images.unwrap().in_use,
            q.image_storage_gib.unwrap().in_use,
        )
    };
    assert_eq!(usage().await, (2, 2));
    for image in [id, "own-img".to_owned()] {
        let r = pb::DeleteImageRequest {
            image,
            ..Default::default()
        };
        w.images.delete_image(w.admin(r)).await.unwrap();
    }
    assert_eq!(usage().await, (0, 0));
    w.cluster.shutdown();
}

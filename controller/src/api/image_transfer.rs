//! Image bytes: the UploadImage and DownloadImage streams. Bytes go to this controller's blob
//! store, never into the Raft log; only the upload's start and outcome are proposed.
//!
//! An upload: authorize → propose `BeginImageUpload` (QUEUED → SAVING) → stream into the blob
//! store, hashing as it goes, limited by the project's remaining image storage quota → verify
//! the client's checksum → inspect with qemu-img (I9) → copy to enough controllers → propose
//! `FinishImageUpload` (ACTIVE, or KILLED when refused, or QUEUED when interrupted). If this
//! controller dies mid-way the image stays SAVING until it restarts (or, if it never comes
//! back, until it is removed from the cluster): the maintenance task then returns the image
//! to QUEUED. Nothing is ever ACTIVE without its verified bytes on enough controllers.
use std::pin::Pin;
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::upload_image_request::Data as UploadData;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::Status;

use super::authz::{Action, Principal};
use super::image::{image_of, owner, resolve, ImageApi};
use super::{allow, convert, new_id, Api};
use crate::images::stream::{read_chunks, ExpectedDigests, StreamingWrite};
use crate::images::{BlobError, InspectError};
use crate::state::{Command, Image, ImageStatus, Outcome, Resource, UploadResult, UNLIMITED};

pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadImageResponse, Status>> + Send>>;

const GIB: u64 = 1 << 30;
/// How long the outcome of an upload keeps being proposed while the cluster has no leader.
const FINISH_RETRY_FOR: Duration = Duration::from_secs(60);

/// Why an upload did not produce an active image.
enum Failure {
    /// The content is unacceptable: the image becomes KILLED.
    Refused(Status),
    /// The transfer failed: the image returns to QUEUED for another try.
    Interrupted(Status),
}

fn digests(h: &pb::UploadImageHeader) -> Result<ExpectedDigests, Status> {
    let check = |value: &str, what: &str, len: usize| -> Result<Option<String>, Status> {
        if value.is_empty() {
            return Ok(None);
        }
        if value.len() != len || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "expected_{what} must be {len} hex digits"
            )));
        }
        Ok(Some(value.to_ascii_lowercase()))
    };
    Ok(ExpectedDigests {
        sha256: check(&h.expected_sha256, "sha256", 64)?,
        md5: check(&h.expected_md5, "md5", 32)?,
    })
}

/// Proposes, retrying while the cluster has no leader (the outcome of a finished transfer must
/// not be lost to an election). Same request id each time, so a retry is deduplicated.
pub(crate) async fn propose_persistently(
    api: &Api,
    request_id: &str,
    actor: &str,
    command: Command,
) -> Result<Outcome, Status> {
    let deadline = Instant::now() + FINISH_RETRY_FOR;
    loop {
        match api
            .propose(request_id.to_owned(), actor.to_owned(), command.clone())
            .await
        {
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// The UploadImage stream (generic so tests can drive it without a transport).
pub(crate) async fn upload<S>(
    images: &ImageApi,
    p: Principal,
    mut stream: S,
) -> Result<Image, Status>
where
    S: Stream<Item = Result<pb::UploadImageRequest, Status>> + Unpin + Send,
{
    let header = match stream.next().await.transpose()? {
        Some(pb::UploadImageRequest {
            data: Some(UploadData::Header(h)),
        }) => h,
        _ => {
            return Err(Status::invalid_argument(
                "the first message of an upload must carry the header",
            ))
        }
    };
    let expected = digests(&header)?;
    let api = &images.api;
    let rt = &images.runtime;
    let (image, limit) = {
        let state = api.read(false).await?;
        let image = resolve(&state, &p, &header.image)?;
        allow(&p, Action::WriteProject, Some(owner(&state, image)?))?;
        if image.status != ImageStatus::Queued {
            return Err(Status::failed_precondition(format!(
                "image {:?} is {}; only a queued image accepts an upload",
                image.name,
                image.status.as_str()
            )));
        }
        let quota = state.project_quota(&image.owner_project_id);
        let storage = quota.items[&Resource::ImageStorageGib];
        let mut limit = rt.max_image_bytes;
        if storage.limit != UNLIMITED {
            let left = (storage.limit - storage.in_use).max(0) as u64;
            limit = limit.min(left.saturating_mul(GIB));
        }
        if header.size_bytes > limit {
            return Err(Status::resource_exhausted(format!(
                "the upload ({} bytes) exceeds what image {:?} may store: {limit} bytes left \
                 under the project's image storage quota and the controller's size limit",
                header.size_bytes, image.name
            )));
        }
        (image.clone(), limit)
    };
    let upload_id = new_id();
    let _live = rt.track_upload(&upload_id);
    let begin = Command::BeginImageUpload {
        image_id: image.id.clone(),
        upload_id: upload_id.clone(),
        controller_id: api.node.id(),
        size_hint: header.size_bytes,
    };
    api.propose(format!("{upload_id}:begin"), p.name.clone(), begin)
        .await?;

    let result = receive(
        images,
        &image,
        expected,
        limit,
        header.size_bytes,
        &mut stream,
    )
    .await;
    let (outcome_result, failure) = match result {
        Ok(stored) => (stored, None),
        Err(Failure::Refused(s)) => (
            UploadResult::Refused {
                reason: s.message().to_owned(),
            },
            Some(s),
        ),
        Err(Failure::Interrupted(s)) => (
            UploadResult::Interrupted {
                reason: s.message().to_owned(),
            },
            Some(s),
        ),
    };
    let finish = Command::FinishImageUpload {
        image_id: image.id.clone(),
        upload_id: upload_id.clone(),
        result: outcome_result,
    };
    let finished = propose_persistently(api, &format!("{upload_id}:finish"), &p.name, finish).await;
    if let Some(status) = failure {
        if let Err(e) = finished {
            tracing::warn!(image = %image.id, "recording a failed upload failed: {e}");
        }
        return Err(status);
    }
    let image = image_of(finished?)?;
    match image.status {
        ImageStatus::Active => Ok(image),
        _ => Err(Status::resource_exhausted(image.status_reason.clone())),
    }
}

/// Stores an upload that the caller already checked and started (a server snapshot sent by an
/// agent): content after the header, into the blob store, inspected and copied like a user's
/// upload. Returns how it ended, for `FinishImageUpload`, and the status to answer with.
pub(crate) async fn receive_started<S>(
    images: &ImageApi,
    image: &Image,
    stream: &mut S,
) -> (UploadResult, Option<Status>)
where
    S: Stream<Item = Result<pb::UploadImageRequest, Status>> + Unpin + Send,
{
    let limit = images.runtime.max_image_bytes;
    match receive(images, image, ExpectedDigests::default(), limit, 0, stream).await {
        Ok(stored) => (stored, None),
        Err(Failure::Refused(s)) => (
            UploadResult::Refused {
                reason: s.message().to_owned(),
            },
            Some(s),
        ),
        Err(Failure::Interrupted(s)) => (
            UploadResult::Refused {
                reason: s.message().to_owned(),
            },
            Some(s),
        ),
    }
}

/// Streams the content into the blob store, verifies, inspects and replicates it.
async fn receive<S>(
    images: &ImageApi,
    image: &Image,
    expected: ExpectedDigests,
    limit: u64,
    declared_size: u64,
    stream: &mut S,
) -> Result<UploadResult, Failure>
where
    S: Stream<Item = Result<pb::UploadImageRequest, Status>> + Unpin + Send,
{
    let rt = &images.runtime;
    let interrupted = |s: Status| Failure::Interrupted(s);
    let mut writer = StreamingWrite::start(&rt.blobs, limit, expected)
        .map_err(|e| interrupted(Status::internal(e.to_string())))?;
    loop {
        let msg = match stream.next().await.transpose() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                writer.abort().await;
                return Err(interrupted(Status::aborted(format!(
                    "the upload stream broke off: {}",
                    e.message()
                ))));
            }
        };
        let chunk = match msg.data {
            Some(UploadData::Chunk(c)) => c,
            _ => {
                writer.abort().await;
                return Err(interrupted(Status::invalid_argument(
                    "only the first message of an upload carries a header",
                )));
            }
        };
        if let Err(e) = writer.write(chunk).await {
            return Err(interrupted(match e {
                BlobError::TooLarge { limit } => Status::resource_exhausted(format!(
                    "the upload exceeds {limit} bytes, what image {:?} may store under the \
                     project's image storage quota and the controller's size limit",
                    image.name
                )),
                other => Status::internal(other.to_string()),
            }));
        }
    }
    let size = writer.size();
    if size == 0 || (declared_size != 0 && size != declared_size) {
        writer.abort().await;
        return Err(interrupted(Status::invalid_argument(format!(
            "the upload ended after {size} bytes{}",
            if declared_size != 0 {
                format!(" of the {declared_size} announced")
            } else {
                String::new()
            }
        ))));
    }
    let info = writer.finish().await.map_err(|e| match e {
        BlobError::ChecksumMismatch { .. } => {
            Failure::Refused(Status::invalid_argument(format!("checksum mismatch: {e}")))
        }
        other => interrupted(Status::internal(other.to_string())),
    })?;
    let path = rt
        .blobs
        .path_of(&info.sha256)
        .map_err(|e| interrupted(Status::internal(e.to_string())))?;
    let inspector = rt.inspector.clone();
    let declared = image.disk_format;
    let facts = tokio::task::spawn_blocking(move || {
        let facts = inspector.inspect(&path)?;
        crate::images::check(declared, &facts)?;
        Ok::<_, InspectError>(facts)
    })
    .await
    .map_err(|e| interrupted(Status::internal(e.to_string())))?
    .map_err(|e| match e {
        InspectError::Refused(unsafe_image) => Failure::Refused(Status::invalid_argument(format!(
            "image refused: {unsafe_image}"
        ))),
        InspectError::Failed { .. } | InspectError::Parse(_) | InspectError::OutputTooLarge => {
            Failure::Refused(Status::invalid_argument(format!(
                "image refused: qemu-img cannot read it as {declared}: {e}"
            )))
        }
        other => interrupted(Status::internal(format!("inspecting the image: {other}"))),
    })?;

    let (self_id, members) = {
        let state = images.api.node.state();
        let members: Vec<_> = state.members().cloned().collect();
        (images.api.node.id(), members)
    };
    let needed = rt.copies_needed(members.len());
    rt.replicate(self_id, members, &info.sha256, info.size, needed)
        .await
        .map_err(|e| interrupted(Status::unavailable(e)))?;
    Ok(UploadResult::Stored {
        size_bytes: info.size,
        virtual_size_bytes: facts.virtual_size,
        sha256: info.sha256,
        md5: info.md5,
    })
}

pub(super) async fn download(
    images: &ImageApi,
    p: Principal,
    r: pb::DownloadImageRequest,
) -> Result<DownloadStream, Status> {
    let (image, members) = {
        let state = images.api.read(false).await?;
        let image = resolve(&state, &p, &r.image)?.clone();
        let members: Vec<_> = state.members().cloned().collect();
        (image, members)
    };
    if image.status != ImageStatus::Active {
        return Err(Status::failed_precondition(format!(
            "image {:?} is {}; only active images can be downloaded",
            image.name,
            image.status.as_str()
        )));
    }
    if r.offset > image.size_bytes {
        return Err(Status::out_of_range(format!(
            "offset {} is past the end of the image ({} bytes)",
            r.offset, image.size_bytes
        )));
    }
    let rt = &images.runtime;
    rt.ensure_local(images.api.node.id(), &members, &image.sha256)
        .await
        .map_err(Status::unavailable)?;
    let path = rt
        .blobs
        .path_of(&image.sha256)
        .map_err(|e| Status::internal(e.to_string()))?;
    let header = Ok(pb::DownloadImageResponse {
        data: Some(pb::download_image_response::Data::Image(convert::image(
            &image,
        ))),
    });
    let chunks = read_chunks(path, r.offset).map(|c| match c {
        Ok(chunk) => Ok(pb::DownloadImageResponse {
            data: Some(pb::download_image_response::Data::Chunk(chunk)),
        }),
        Err(e) => Err(Status::internal(format!("reading the image: {e}"))),
    });
    Ok(Box::pin(tokio_stream::once(header).chain(chunks)))
}

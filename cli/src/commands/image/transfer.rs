//! Image content over gRPC: `UploadImage` (client stream: header, then 1 MiB chunks read from
//! the file as the transport takes them) and `DownloadImage` (server stream: metadata, then
//! chunks, resumable at an offset).
//!
//! How `--timeout` applies to transfers (it must not cap a transfer's length):
//!
//! * Upload: connecting follows the usual retry policy within `--timeout`. While sending, the
//!   upload fails when the controller takes no data for `--timeout` (a stall). After the last
//!   byte the CLI waits for the verdict (checksums, format inspection, copies to peers) without
//!   a deadline of its own; keepalive pings notice a controller that has gone away. The stream
//!   cannot be replayed mid-way, so the only transparent retry is a restart from byte 0 when a
//!   controller refuses the upload with UNAVAILABLE naming another controller as leader, and
//!   only within `--timeout` of the command's start. Any other failure ends the command with
//!   what to do next (an interrupted upload leaves the image queued, ready for `image upload`).
//! * Download: opening the stream follows the usual retry policy; each message (the metadata
//!   first) must arrive within `--timeout` of the previous one. A broken or stalled stream is
//!   reopened at the offset received so far, until breaks keep coming without any new byte
//!   for `--timeout`.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_proto::v1::{self, image_service_client::ImageServiceClient};
use flotilla_proto::v1::{download_image_response, upload_image_request};
use indicatif::ProgressBar;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Code, Request, Status};

use crate::client::{new_request_id, Connection};
use crate::commands::event::is_stream_break;
use crate::error::{report, status_text, CliError};
use crate::transfer::{
    complete, open_source, progress_bar, Checksum, ChunkReader, Download, Expected, CHUNK_BYTES,
};

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Chunks read ahead of the transport (memory use: this many plus the one being sent).
const READ_AHEAD: usize = 2;

/// One upload: the content of `path` into the queued image `image` (id or name).
pub struct Upload {
    pub image: String,
    pub path: PathBuf,
    pub checksum: Option<Checksum>,
    pub progress: bool,
}

/// Progress of one upload attempt, shared by the request stream and the stall watchdog.
#[derive(Default)]
struct Shared {
    state: Mutex<SendState>,
    changed: Notify,
}

struct SendState {
    /// Content bytes handed to the transport.
    sent: u64,
    last_progress: Instant,
    /// The whole content was handed over.
    finished: bool,
    failed: Option<io::Error>,
}

impl Default for SendState {
    fn default() -> Self {
        SendState {
            sent: 0,
            last_progress: Instant::now(),
            finished: false,
            failed: None,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The request stream: the header, then the chunks from the reader task. A read error must
/// never end the stream (the controller would take a truncated upload for a complete one): the
/// stream stays pending, the watchdog reports the error, and the attempt cancels the call, which
/// resets the HTTP/2 stream; the controller sees an interrupted upload.
struct UploadBody {
    header: Option<v1::UploadImageRequest>,
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    shared: Arc<Shared>,
    bar: ProgressBar,
    stuck: bool,
}

impl Stream for UploadBody {
    type Item = v1::UploadImageRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(header) = self.header.take() {
            return Poll::Ready(Some(header));
        }
        if self.stuck {
            return Poll::Pending;
        }
        let next = match self.chunks.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        let mut state = self.shared.lock();
        match next {
            Some(Ok(chunk)) => {
                state.sent += chunk.len() as u64;
                state.last_progress = Instant::now();
                drop(state);
                self.bar.inc(chunk.len() as u64);
                Poll::Ready(Some(v1::UploadImageRequest {
                    data: Some(upload_image_request::Data::Chunk(chunk)),
                }))
            }
            Some(Err(e)) => {
                state.failed = Some(e);
                drop(state);
                self.stuck = true;
                self.shared.changed.notify_one();
                Poll::Pending
            }
            None => {
                state.finished = true;
                state.last_progress = Instant::now();
                drop(state);
                self.shared.changed.notify_one();
                Poll::Ready(None)
            }
        }
    }
}

/// Why an upload attempt ended without an answer.
enum Stop {
    Status(Status),
    Read(io::Error),
    Stalled(Duration),
}

/// Resolves when the attempt must be abandoned: the file could not be read, or the transport
/// took nothing for `stall`. Never resolves once the whole content was handed over.
async fn watchdog(shared: &Shared, stall: Duration) -> Stop {
    loop {
        let changed = shared.changed.notified();
        let due = {
            let mut state = shared.lock();
            if let Some(e) = state.failed.take() {
                return Stop::Read(e);
            }
            if state.finished {
                None
            } else {
                Some(state.last_progress + stall)
            }
        };
        match due {
            None => std::future::pending::<()>().await,
            Some(due) if Instant::now() >= due => return Stop::Stalled(stall),
            Some(due) => {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = changed => {}
                }
            }
        }
    }
}

/// Aborts the reader task when an attempt ends, however it ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One attempt on `channel`: returns the controller's image and the sha256 of what was sent
/// (`None` if the controller answered before taking everything).
async fn attempt(
    conn: &Connection,
    channel: tonic::transport::Channel,
    header: v1::UploadImageHeader,
    upload: &Upload,
    size: u64,
    shared: &Arc<Shared>,
    bar: &ProgressBar,
) -> Result<(v1::Image, Option<String>), Stop> {
    let (file, _) = open_source(&upload.path).map_err(|e| match e {
        CliError::ReadFile { source, .. } => Stop::Read(source),
        other => Stop::Read(io::Error::other(report(&other))),
    })?;
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(async move {
        let mut reader = ChunkReader::new(file, size, CHUNK_BYTES);
        loop {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return None; // the call is over
                    }
                }
                Ok(None) => return Some(reader.sha256_hex()),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return None;
                }
            }
        }
    });
    let _abort = AbortOnDrop(reader.abort_handle());
    let body = UploadBody {
        header: Some(v1::UploadImageRequest {
            data: Some(upload_image_request::Data::Header(header)),
        }),
        chunks: rx,
        shared: Arc::clone(shared),
        bar: bar.clone(),
        stuck: false,
    };
    let mut request = Request::new(body);
    conn.authorize(&mut request);
    let cancel = request.cancellation_handle();
    let call = async move { ImageServiceClient::new(channel).upload_image(request).await };
    let stall = conn.timeout();
    tokio::select! {
        answer = call => {
            let image = answer
                .map_err(|status| match shared.lock().failed.take() {
                    Some(e) => Stop::Read(e),
                    None => Stop::Status(status),
                })?
                .into_inner();
            let sent_sha256 = if shared.lock().finished {
                reader.await.ok().flatten()
            } else {
                None
            };
            Ok((image, sent_sha256))
        }
        stop = watchdog(shared, stall) => {
            // RST_STREAM; dropping the call resets it too, this says so explicitly.
            cancel.cancel();
            Err(stop)
        }
    }
}

fn retry_advice(upload: &Upload) -> String {
    format!(
        "the controller returns an interrupted image to queued (it may show saving for up to a \
         minute); retry with `flotilla image upload {} --file {}`",
        upload.image,
        upload.path.display()
    )
}

/// What to tell the operator after the controller failed an upload with `code`: from the
/// image's status now (the controller records the outcome before answering), else from
/// `code`. Not asked when the controller could not be reached.
async fn advice(conn: &Connection, upload: &Upload, status: &Status) -> String {
    let code = status.code();
    let unreachable = matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    );
    if !unreachable {
        let request = v1::GetImageRequest {
            image: upload.image.clone(),
            stale: false,
        };
        let now = conn
            .call(request, |ch, req| async move {
                ImageServiceClient::new(ch).get_image(req).await
            })
            .await;
        if let Ok(image) = now {
            match v1::ImageStatus::try_from(image.status) {
                Ok(v1::ImageStatus::Killed) => {
                    // The reason is usually the controller's message, already shown.
                    let reason = &image.status_reason;
                    if reason.is_empty() || status.message().contains(reason.as_str()) {
                        return "the image is now killed; delete it and create it again".into();
                    }
                    return format!(
                        "the image is now killed ({reason}); delete it and create it again"
                    );
                }
                Ok(v1::ImageStatus::Queued) => {
                    return format!(
                        "the image is queued; retry with `flotilla image upload {} --file {}`",
                        upload.image,
                        upload.path.display()
                    )
                }
                _ => {}
            }
        }
    }
    if code == Code::InvalidArgument {
        return format!(
            "if the controller refused the content the image is now killed (`flotilla image \
             show {}` says why); otherwise {}",
            upload.image,
            retry_advice(upload)
        );
    }
    retry_advice(upload)
}

/// Uploads `upload.path` into a queued image and returns the image (active on success).
pub async fn upload(conn: &Connection, upload: Upload) -> Result<v1::Image, CliError> {
    let (_, size) = open_source(&upload.path)?;
    let deadline = Instant::now() + conn.timeout();
    let (expected_sha256, expected_md5) = Checksum::header_fields(upload.checksum.as_ref());
    let header = v1::UploadImageHeader {
        request_id: new_request_id(),
        image: upload.image.clone(),
        expected_sha256,
        expected_md5,
        size_bytes: size,
    };
    let bar = progress_bar(size, upload.progress);
    let failed = |sent: u64, cause: String, advice: String| CliError::Upload {
        image: upload.image.clone(),
        sent,
        total: size,
        cause,
        advice,
    };
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let (target, channel) = conn
            .connect(deadline.into_std())
            .await
            .map_err(|e| failed(0, report(&e), retry_advice(&upload)))?;
        let shared = Arc::new(Shared::default());
        bar.reset();
        let outcome = attempt(conn, channel, header.clone(), &upload, size, &shared, &bar).await;
        let sent = shared.lock().sent;
        let status = match outcome {
            Ok((image, sent_sha256)) => {
                conn.answered(&target);
                complete(&bar);
                check_stored(&image, sent_sha256.as_deref())?;
                return Ok(image);
            }
            Err(Stop::Read(e)) => {
                let cause = format!("cannot read {}: {e}", upload.path.display());
                return Err(failed(sent, cause, retry_advice(&upload)));
            }
            Err(Stop::Stalled(after)) => {
                let cause = format!(
                    "the controller took no data for {:.1}s",
                    after.as_secs_f64()
                );
                return Err(failed(sent, cause, retry_advice(&upload)));
            }
            Err(Stop::Status(status)) => status,
        };
        if status.code() == Code::Unavailable {
            let hint = conn.rejected(&target, &status);
            let redirected = hint.is_some_and(|leader| leader != target);
            if redirected && Instant::now() + backoff < deadline {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        // Refusals before any content was taken speak for themselves.
        if matches!(
            status.code(),
            Code::NotFound
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
        ) {
            return Err(CliError::Status(status));
        }
        let advice = advice(conn, &upload, &status).await;
        return Err(failed(sent, status_text(&status), advice));
    }
}

/// The controller's digest of what it stored must be the digest of what was sent.
fn check_stored(image: &v1::Image, sent_sha256: Option<&str>) -> Result<(), CliError> {
    match sent_sha256 {
        Some(sent) if !image.sha256.is_empty() && !image.sha256.eq_ignore_ascii_case(sent) => {
            Err(CliError::Protocol(format!(
                "the controller stored image {} with sha256 {} but the file sent has sha256 \
                 {sent}; delete the image and upload it again",
                image.id, image.sha256
            )))
        }
        _ => Ok(()),
    }
}

/// Downloads `image` into `sink` and returns what the content must be; the caller verifies
/// with [`Download::finish`] (or discards the sink on error).
pub async fn download(
    conn: &Connection,
    image: &str,
    sink: &mut Download<'_>,
    progress: bool,
) -> Result<Expected, CliError> {
    let timeout = conn.timeout();
    let mut meta: Option<v1::Image> = None;
    let mut bar = ProgressBar::hidden();
    // Since when breaks keep coming without a new byte.
    let mut broken_since: Option<Instant> = None;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let request = v1::DownloadImageRequest {
            image: meta
                .as_ref()
                .map_or_else(|| image.to_string(), |m| m.id.clone()),
            offset: sink.written(),
        };
        let mut stream = conn
            .call(request, |ch, req| async move {
                ImageServiceClient::new(ch).download_image(req).await
            })
            .await?;
        let mut got_meta = false;
        let cause = loop {
            let next = match tokio::time::timeout(timeout, stream.message()).await {
                Ok(next) => next,
                Err(_) => break format!("no data for {:.1}s", timeout.as_secs_f64()),
            };
            let data = match next {
                Ok(Some(message)) => message.data,
                Ok(None) => {
                    let m = meta.as_ref().ok_or_else(|| {
                        protocol("ended the stream before sending the image's metadata")
                    })?;
                    if m.size_bytes == 0 || sink.written() >= m.size_bytes {
                        complete(&bar);
                        return Ok(Expected {
                            image: image.to_string(),
                            size: m.size_bytes,
                            sha256: m.sha256.clone(),
                        });
                    }
                    break format!(
                        "the stream ended after {} of {} bytes",
                        sink.written(),
                        m.size_bytes
                    );
                }
                Err(status) if is_stream_break(&status) => break status_text(&status),
                Err(status) => {
                    return Err(CliError::Status(status));
                }
            };
            match data {
                Some(download_image_response::Data::Image(received)) if !got_meta => {
                    got_meta = true;
                    if let Some(before) = &meta {
                        if !same_content(before, &received) {
                            return Err(protocol("changed the image during the download"));
                        }
                    } else {
                        bar = progress_bar(received.size_bytes, progress);
                        meta = Some(received);
                    }
                }
                Some(download_image_response::Data::Image(_)) => {
                    return Err(protocol("sent the image's metadata twice in one stream"));
                }
                Some(download_image_response::Data::Chunk(_)) if !got_meta => {
                    return Err(protocol("sent content before the image's metadata"));
                }
                Some(download_image_response::Data::Chunk(chunk)) => {
                    let size = meta.as_ref().map_or(0, |m| m.size_bytes);
                    if size != 0 && sink.written() + chunk.len() as u64 > size {
                        return Err(protocol(&format!(
                            "sent more than the image's {size} bytes"
                        )));
                    }
                    sink.write(&chunk)?;
                    bar.inc(chunk.len() as u64);
                    broken_since = None;
                    backoff = INITIAL_BACKOFF;
                }
                None => return Err(protocol("sent an empty message")),
            }
        };
        let since = *broken_since.get_or_insert_with(Instant::now);
        if since.elapsed() + backoff >= timeout {
            return Err(CliError::Protocol(format!(
                "the download of image {image} kept breaking without progress for {:.1}s \
                 (received {} bytes); last error: {cause}",
                since.elapsed().as_secs_f64(),
                sink.written()
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn protocol(what: &str) -> CliError {
    CliError::Protocol(format!("the controller {what}"))
}

/// Whether a reopened stream serves the same content as the first one.
fn same_content(a: &v1::Image, b: &v1::Image) -> bool {
    a.id == b.id && a.sha256 == b.sha256 && a.size_bytes == b.size_bytes
}

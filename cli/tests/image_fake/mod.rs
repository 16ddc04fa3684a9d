//! A fake ImageService on a loopback port for `tests/image.rs`: scriptable upload and download
//! behaviour, and a record of what it received.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_proto::v1::image_service_server::{ImageService, ImageServiceServer};
use flotilla_proto::v1::{download_image_response, upload_image_request};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

pub const MIB: usize = 1 << 20;
/// Upper bound for one CLI run in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum UploadMode {
    Accept,
    /// UNAVAILABLE naming this leader, right after the header.
    Redirect(String),
    /// INVALID_ARGUMENT after the content (a checksum mismatch).
    Reject,
    /// UNAVAILABLE (no leader hint) after this many chunks.
    BreakAfter(usize),
    /// Takes the header, then reads nothing more.
    Stall,
    /// Accepts, pausing [`PAUSE`] after each chunk.
    Slow,
}

/// Pause between chunks of the slow modes.
pub const PAUSE: Duration = Duration::from_millis(60);

#[derive(Debug, Clone)]
pub enum DownloadMode {
    Serve,
    /// The first stream fails with UNAVAILABLE after this many content bytes.
    BreakOnceAfter(usize),
    /// The metadata carries a sha256 the content does not have.
    WrongDigest,
    /// Serves, pausing [`PAUSE`] before each chunk.
    Slow,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub header: v1::UploadImageHeader,
    pub chunk_sizes: Vec<usize>,
    pub content: Vec<u8>,
}

#[derive(Default)]
pub struct Record {
    /// How each upload stream ended, as the server saw it: "clean" or "broken".
    pub upload_ends: Vec<&'static str>,
    pub creates: Vec<v1::CreateImageRequest>,
    pub uploads: Vec<Received>,
    pub download_offsets: Vec<u64>,
    pub list_tokens: Vec<String>,
    pub deletes: Vec<String>,
}

struct Fake {
    pub upload: UploadMode,
    pub download: DownloadMode,
    pub content: Vec<u8>,
    pub rec: Arc<Mutex<Record>>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

pub fn image(id: &str, status: v1::ImageStatus) -> v1::Image {
    v1::Image {
        id: id.into(),
        name: format!("name-{id}"),
        disk_format: v1::ImageDiskFormat::Qcow2 as i32,
        container_format: v1::ImageContainerFormat::Bare as i32,
        visibility: v1::ImageVisibility::Private as i32,
        status: status as i32,
        ..Default::default()
    }
}

/// Records how an upload handler ended: "clean" after the whole stream, "broken" when the
/// stream failed or the handler was dropped (hyper drops it when the client resets the stream).
pub struct EndGuard {
    pub rec: Arc<Mutex<Record>>,
    pub clean: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let end = if self.clean { "clean" } else { "broken" };
        self.rec.lock().unwrap().upload_ends.push(end);
    }
}

#[tonic::async_trait]
impl ImageService for Fake {
    async fn create_image(
        &self,
        request: Request<v1::CreateImageRequest>,
    ) -> Result<Response<v1::Image>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().creates.push(r);
        Ok(Response::new(image("img-new", v1::ImageStatus::Queued)))
    }

    async fn upload_image(
        &self,
        request: Request<Streaming<v1::UploadImageRequest>>,
    ) -> Result<Response<v1::Image>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.data) {
            Some(upload_image_request::Data::Header(h)) => h,
            other => return Err(Status::invalid_argument(format!("no header: {other:?}"))),
        };
        let index = {
            let mut rec = self.rec.lock().unwrap();
            rec.uploads.push(Received {
                header: header.clone(),
                chunk_sizes: Vec::new(),
                content: Vec::new(),
            });
            rec.uploads.len() - 1
        };
        match &self.upload {
            UploadMode::Redirect(leader) => {
                let mut status = Status::unavailable("not the leader");
                status
                    .metadata_mut()
                    .insert(flotilla_proto::LEADER_METADATA_KEY, leader.parse().unwrap());
                return Err(status);
            }
            UploadMode::Stall => {
                let _end = EndGuard {
                    rec: Arc::clone(&self.rec),
                    clean: false,
                };
                tokio::time::sleep(DEADLINE).await;
                return Err(Status::aborted("stalled on purpose"));
            }
            _ => {}
        }
        let mut end = EndGuard {
            rec: Arc::clone(&self.rec),
            clean: false,
        };
        let mut chunks = 0;
        while let Some(message) = stream.message().await? {
            let Some(upload_image_request::Data::Chunk(chunk)) = message.data else {
                return Err(Status::invalid_argument("a second header"));
            };
            {
                let mut rec = self.rec.lock().unwrap();
                rec.uploads[index].chunk_sizes.push(chunk.len());
                rec.uploads[index].content.extend_from_slice(&chunk);
            }
            chunks += 1;
            if matches!(self.upload, UploadMode::Slow) {
                tokio::time::sleep(PAUSE).await;
            }
            if matches!(self.upload, UploadMode::BreakAfter(n) if chunks == n) {
                return Err(Status::unavailable("connection to the blob store lost"));
            }
        }
        end.clean = true;
        let content = self.rec.lock().unwrap().uploads[index].content.clone();
        let sha256 = sha256_hex(&content);
        if matches!(self.upload, UploadMode::Reject)
            || (!header.expected_sha256.is_empty() && header.expected_sha256 != sha256)
        {
            return Err(Status::invalid_argument("checksum mismatch"));
        }
        let mut done = image(&header.image, v1::ImageStatus::Active);
        done.size_bytes = content.len() as u64;
        done.sha256 = sha256;
        Ok(Response::new(done))
    }

    async fn download_image(
        &self,
        request: Request<v1::DownloadImageRequest>,
    ) -> Result<Response<BoxStream<v1::DownloadImageResponse>>, Status> {
        let r = request.into_inner();
        let first = {
            let mut rec = self.rec.lock().unwrap();
            rec.download_offsets.push(r.offset);
            rec.download_offsets.len() == 1
        };
        let mut meta = image("img-1", v1::ImageStatus::Active);
        meta.size_bytes = self.content.len() as u64;
        meta.sha256 = match self.download {
            DownloadMode::WrongDigest => "0".repeat(64),
            _ => sha256_hex(&self.content),
        };
        let mut messages = vec![Ok(v1::DownloadImageResponse {
            data: Some(download_image_response::Data::Image(meta)),
        })];
        let rest = &self.content[r.offset as usize..];
        let limit = match self.download {
            DownloadMode::BreakOnceAfter(n) if first => n,
            _ => rest.len(),
        };
        for chunk in rest[..limit].chunks(MIB / 2) {
            messages.push(Ok(v1::DownloadImageResponse {
                data: Some(download_image_response::Data::Chunk(chunk.to_vec())),
            }));
        }
        if limit < rest.len() {
            messages.push(Err(Status::unavailable("controller restarting")));
        }
        if !matches!(self.download, DownloadMode::Slow) {
            return Ok(Response::new(Box::pin(tokio_stream::iter(messages))));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for (i, message) in messages.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(PAUSE).await;
                }
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// After a rejected upload the image is killed; otherwise queued.
    async fn get_image(
        &self,
        request: Request<v1::GetImageRequest>,
    ) -> Result<Response<v1::Image>, Status> {
        let r = request.into_inner();
        Ok(Response::new(match self.upload {
            UploadMode::Reject => v1::Image {
                status_reason: "checksum mismatch".into(),
                ..image(&r.image, v1::ImageStatus::Killed)
            },
            _ => image(&r.image, v1::ImageStatus::Queued),
        }))
    }

    /// Two pages: "" → img-1, "t1" → img-2.
    async fn list_images(
        &self,
        request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        let token = request.into_inner().page_token;
        self.rec.lock().unwrap().list_tokens.push(token.clone());
        let (id, next) = if token.is_empty() {
            ("img-1", "t1")
        } else {
            ("img-2", "")
        };
        Ok(Response::new(v1::ListImagesResponse {
            images: vec![image(id, v1::ImageStatus::Active)],
            next_page_token: next.into(),
        }))
    }

    async fn delete_image(
        &self,
        request: Request<v1::DeleteImageRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().deletes.push(r.request_id.clone());
        if r.image == "protected" {
            return Err(Status::failed_precondition(
                "image \"protected\" is protected",
            ));
        }
        Ok(Response::new(v1::Empty {}))
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub rec: Arc<Mutex<Record>>,
}

impl Server {
    pub async fn start(upload: UploadMode, download: DownloadMode, content: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rec = Arc::new(Mutex::new(Record::default()));
        let fake = Fake {
            upload,
            download,
            content,
            rec: Arc::clone(&rec),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ImageServiceServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Server { addr, rec }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn uploads(&self) -> Vec<Received> {
        self.rec.lock().unwrap().uploads.clone()
    }
}

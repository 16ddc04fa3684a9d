//! Copying blobs between controllers: the [`BlobPeers`] driver (gRPC to the peers' BlobService,
//! or an in-process fake for tests) and the BlobService the peer listener serves.
//!
//! Whoever receives a blob writes it through [`StreamingWrite`] with the sha256 it was sent
//! under as the expected digest, so a truncated or corrupted transfer is never published.
use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::blob_service_client::BlobServiceClient;
use flotilla_proto::v1::blob_service_server::BlobService;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::blobs::{BlobError, BlobInfo, BlobStore};
use super::stream::{read_chunks, ExpectedDigests, StreamingWrite};
use crate::state::Member;

/// Moves blobs to and from other controllers.
#[tonic::async_trait]
pub trait BlobPeers: Send + Sync + 'static {
    /// Copies the local blob `sha256` to `to`; `Ok` once `to` holds it, verified.
    async fn push(&self, to: &Member, store: &BlobStore, sha256: &str) -> Result<(), String>;
    /// Copies `sha256` from `from` into the local store, verified.
    async fn fetch(
        &self,
        from: &Member,
        store: &BlobStore,
        sha256: &str,
    ) -> Result<BlobInfo, String>;
}

/// The real driver: BlobService on each peer's peer listener (mutual TLS when configured).
pub struct GrpcBlobPeers {
    pub tls: Option<ClientTlsConfig>,
}

impl GrpcBlobPeers {
    fn client(&self, member: &Member) -> Result<BlobServiceClient<Channel>, String> {
        let channel =
            crate::raft::grpc::GrpcTransport::channel(&member.peer_address, self.tls.as_ref())
                .map_err(|e| format!("{}: {e}", member.peer_address))?;
        Ok(BlobServiceClient::new(channel)
            .max_decoding_message_size(4 << 20)
            .max_encoding_message_size(4 << 20))
    }
}

fn local_size(store: &BlobStore, sha256: &str) -> Result<u64, String> {
    let path = store.path_of(sha256).map_err(|e| e.to_string())?;
    std::fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|e| format!("blob {sha256} is not readable here: {e}"))
}

#[tonic::async_trait]
impl BlobPeers for GrpcBlobPeers {
    async fn push(&self, to: &Member, store: &BlobStore, sha256: &str) -> Result<(), String> {
        let size = local_size(store, sha256)?;
        let path = store.path_of(sha256).map_err(|e| e.to_string())?;
        let header = pb::BlobChunk {
            sha256: sha256.to_owned(),
            size,
            data: Vec::new(),
        };
        // A read error ends the stream early; the receiver then sees a short blob and refuses it.
        let chunks = read_chunks(path, 0)
            .map_while(|c| c.ok())
            .map(|data| pb::BlobChunk {
                data,
                ..Default::default()
            });
        let stream = tokio_stream::once(header).chain(chunks);
        let ack = self
            .client(to)?
            .push_blob(stream)
            .await
            .map_err(|s| format!("{}: {}", to.name, s.message()))?
            .into_inner();
        if ack.sha256 != sha256 || ack.size != size {
            return Err(format!("{} acknowledged a different blob", to.name));
        }
        Ok(())
    }

    async fn fetch(
        &self,
        from: &Member,
        store: &BlobStore,
        sha256: &str,
    ) -> Result<BlobInfo, String> {
        let req = pb::FetchBlobRequest {
            sha256: sha256.to_owned(),
            offset: 0,
        };
        let stream = self
            .client(from)?
            .fetch_blob(req)
            .await
            .map_err(|s| format!("{}: {}", from.name, s.message()))?
            .into_inner();
        receive(store, stream, Some(sha256))
            .await
            .map_err(|s| format!("{}: {}", from.name, s.message()))
            .map(|(info, _)| info)
    }
}

/// Stores a blob arriving as header + chunks. With `wanted`, the header must name it. Returns
/// the stored blob and whether it was already present (then the rest of the stream is ignored).
async fn receive<S>(
    store: &BlobStore,
    mut stream: S,
    wanted: Option<&str>,
) -> Result<(BlobInfo, bool), Status>
where
    S: Stream<Item = Result<pb::BlobChunk, Status>> + Unpin,
{
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty blob stream"))??;
    let sha256 = first.sha256.to_ascii_lowercase();
    if wanted.is_some_and(|w| !w.eq_ignore_ascii_case(&sha256)) {
        return Err(Status::data_loss("the peer sent a different blob"));
    }
    let present = store.contains(&sha256).map_err(blob_status)?;
    if present {
        let info = BlobInfo {
            sha256,
            md5: String::new(),
            size: first.size,
        };
        return Ok((info, true));
    }
    let expected = ExpectedDigests {
        sha256: Some(sha256.clone()),
        md5: None,
    };
    let mut writer = StreamingWrite::start(store, first.size, expected).map_err(blob_status)?;
    let mut pending = Some(first.data);
    loop {
        let data = match pending.take() {
            Some(d) => d,
            None => match stream.next().await {
                Some(Ok(c)) => c.data,
                Some(Err(e)) => {
                    writer.abort().await;
                    return Err(e);
                }
                None => break,
            },
        };
        if !data.is_empty() {
            writer.write(data).await.map_err(blob_status)?;
        }
    }
    if writer.size() != first.size {
        let got = writer.size();
        writer.abort().await;
        return Err(Status::data_loss(format!(
            "blob {sha256} ended after {got} of {} bytes",
            first.size
        )));
    }
    let info = writer.finish().await.map_err(blob_status)?;
    Ok((info, false))
}

fn blob_status(e: BlobError) -> Status {
    match e {
        BlobError::NotFound(_) => Status::not_found(e.to_string()),
        BlobError::InvalidDigest(..) => Status::invalid_argument(e.to_string()),
        BlobError::ChecksumMismatch { .. } | BlobError::Corrupt { .. } => {
            Status::data_loss(e.to_string())
        }
        BlobError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        BlobError::Io { .. } | BlobError::WriterFailed => Status::internal(e.to_string()),
    }
}

type ChunkStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

/// The peer-listener BlobService.
pub struct BlobServer {
    pub store: BlobStore,
}

#[tonic::async_trait]
impl BlobService for BlobServer {
    async fn push_blob(
        &self,
        req: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::BlobAck>, Status> {
        let (info, already_present) = receive(&self.store, req.into_inner(), None).await?;
        Ok(Response::new(pb::BlobAck {
            sha256: info.sha256,
            size: info.size,
            already_present,
            present: true,
        }))
    }

    async fn fetch_blob(
        &self,
        req: Request<pb::FetchBlobRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let r = req.into_inner();
        let sha256 = r.sha256.to_ascii_lowercase();
        if !self.store.contains(&sha256).map_err(blob_status)? {
            return Err(Status::not_found(format!("no blob {sha256} here")));
        }
        let size = local_size(&self.store, &sha256).map_err(Status::not_found)?;
        let path = self.store.path_of(&sha256).map_err(blob_status)?;
        let header = Ok(pb::BlobChunk {
            sha256,
            size,
            data: Vec::new(),
        });
        let chunks = read_chunks(path, r.offset).map(|c| match c {
            Ok(data) => Ok(pb::BlobChunk {
                data,
                ..Default::default()
            }),
            Err(e) => Err(Status::internal(format!("reading the blob: {e}"))),
        });
        Ok(Response::new(Box::pin(
            tokio_stream::once(header).chain(chunks),
        )))
    }

    async fn has_blob(
        &self,
        req: Request<pb::FetchBlobRequest>,
    ) -> Result<Response<pb::BlobAck>, Status> {
        let sha256 = req.into_inner().sha256.to_ascii_lowercase();
        let present = self.store.contains(&sha256).map_err(blob_status)?;
        let size = if present {
            local_size(&self.store, &sha256).unwrap_or(0)
        } else {
            0
        };
        Ok(Response::new(pb::BlobAck {
            sha256,
            size,
            already_present: present,
            present,
        }))
    }
}

/// In-process fake: member id → that member's store; copies through the same verified write
/// path. Members listed in `down` refuse every transfer.
#[derive(Default, Clone)]
pub struct LocalBlobPeers {
    pub stores: Arc<parking_lot::Mutex<BTreeMap<u64, BlobStore>>>,
    pub down: Arc<parking_lot::Mutex<std::collections::BTreeSet<u64>>>,
}

impl LocalBlobPeers {
    fn store_of(&self, member: &Member) -> Result<BlobStore, String> {
        if self.down.lock().contains(&member.id) {
            return Err(format!("{} is unreachable", member.name));
        }
        self.stores
            .lock()
            .get(&member.id)
            .cloned()
            .ok_or_else(|| format!("{} has no blob store", member.name))
    }
}

async fn copy(from: &BlobStore, to: &BlobStore, sha256: &str) -> Result<BlobInfo, String> {
    let path = from.path_of(sha256).map_err(|e| e.to_string())?;
    let size = local_size(from, sha256)?;
    let header = pb::BlobChunk {
        sha256: sha256.to_owned(),
        size,
        data: Vec::new(),
    };
    let chunks = read_chunks(path, 0).map(|c| {
        c.map(|data| pb::BlobChunk {
            data,
            ..Default::default()
        })
        .map_err(|e| Status::internal(e.to_string()))
    });
    let stream = tokio_stream::once(Ok(header)).chain(chunks);
    receive(to, Box::pin(stream), Some(sha256))
        .await
        .map(|(info, _)| info)
        .map_err(|s| s.message().to_owned())
}

#[tonic::async_trait]
impl BlobPeers for LocalBlobPeers {
    async fn push(&self, to: &Member, store: &BlobStore, sha256: &str) -> Result<(), String> {
        copy(store, &self.store_of(to)?, sha256).await.map(|_| ())
    }

    async fn fetch(
        &self,
        from: &Member,
        store: &BlobStore,
        sha256: &str,
    ) -> Result<BlobInfo, String> {
        copy(&self.store_of(from)?, store, sha256).await
    }
}

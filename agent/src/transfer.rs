//! Connections to the controllers and the two byte streams the agent moves: base images into
//! the cache (`AgentService.FetchImage`) and saved disks out (`AgentService.UploadSnapshot`).
//!
//! The disks driver is synchronous and reads an image through [`ImageSource`]; [`FetchSource`]
//! is that source for a controller stream: when the driver opens it (inside `spawn_blocking`),
//! an async task on the runtime streams `FetchImage` into a small bounded channel, which the
//! returned reader drains with `blocking_recv`. A broken stream is resumed from the byte
//! offset reached, on the next controller, a few times; the driver verifies size and sha256
//! (I9) whatever happened on the way.
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::TlsMaterial;
use crate::driver::disks::ImageSource;

/// Bytes per message of an upload.
pub const UPLOAD_CHUNK: usize = 1 << 20;
/// Attempts of one image fetch (each resumes where the previous one stopped).
const FETCH_ATTEMPTS: usize = 4;

/// The controllers' peer listeners and the channels to them.
pub struct Controllers {
    addresses: Vec<String>,
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    /// The leader the session is registered with, preferred for transfers.
    current: Mutex<Option<String>>,
}

impl Controllers {
    pub fn new(addresses: Vec<String>, tls: Option<&TlsMaterial>) -> Controllers {
        let tls = tls.map(|t| {
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&t.ca))
                .identity(Identity::from_pem(&t.cert, &t.key))
        });
        Controllers {
            addresses,
            tls,
            channels: Mutex::new(HashMap::new()),
            current: Mutex::new(None),
        }
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// A (lazily connecting) channel to `address`, reused across calls. Needs a runtime.
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("bad controller address {address:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS settings for {address}: {e}"))?;
        }
        let channel = ep.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    pub fn set_current(&self, address: &str) {
        *self.current.lock() = Some(address.to_owned());
    }

    /// Every controller, the session's current one first.
    pub fn preferred(&self) -> Vec<String> {
        let mut out = self.addresses.clone();
        if let Some(current) = self.current.lock().clone() {
            out.retain(|a| *a != current);
            out.insert(0, current);
        }
        out
    }
}

/// The bytes of one image from the controllers, for `Disks::ensure_base`.
pub struct FetchSource {
    pub controllers: Arc<Controllers>,
    pub runtime: tokio::runtime::Handle,
    pub image_id: String,
}

impl ImageSource for FetchSource {
    fn open(&mut self) -> io::Result<Box<dyn Read>> {
        let (tx, rx) = mpsc::channel(4);
        let controllers = self.controllers.clone();
        let image_id = self.image_id.clone();
        self.runtime
            .spawn(async move { feed(&controllers, &image_id, tx).await });
        Ok(Box::new(ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        }))
    }
}

/// Streams the image into `tx`, resuming on other controllers after a break; ends with an
/// error item when it gives up. Stops as soon as the reader is gone.
async fn feed(controllers: &Controllers, image_id: &str, tx: mpsc::Sender<io::Result<Vec<u8>>>) {
    let mut offset = 0u64;
    let mut last_error = String::from("no controller to fetch from");
    let order = controllers.preferred();
    for attempt in 0..FETCH_ATTEMPTS {
        let address = &order[attempt % order.len()];
        let channel = match controllers.channel(address) {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let request = pb::FetchImageRequest {
            image_id: image_id.to_owned(),
            offset,
        };
        let mut stream = match AgentServiceClient::new(channel).fetch_image(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                last_error = format!("{address}: {}", s.message());
                // A refusal (not found, not active) will not change on another try.
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) {
                    break;
                }
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if chunk.offset != offset {
                        last_error = format!(
                            "{address} sent bytes from offset {} where {offset} was next",
                            chunk.offset
                        );
                        break;
                    }
                    offset += chunk.data.len() as u64;
                    if tx.send(Ok(chunk.data)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    last_error = format!("{address}: {}", s.message());
                    tracing::debug!(image_id, offset, "image stream broke: {last_error}");
                    break;
                }
            }
        }
    }
    let _ = tx
        .send(Err(io::Error::other(format!(
            "fetching image {image_id} from the controllers failed: {last_error}"
        ))))
        .await;
}

/// A blocking reader over the chunks [`feed`] delivers.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Uploads a saved disk into the SAVING image of operation `operation_id` (header first, then
/// [`UPLOAD_CHUNK`]-byte messages). Tries the next controller only when one cannot be reached
/// at all; a stream the controller received and refused is final.
pub async fn upload_snapshot(
    controllers: &Controllers,
    operation_id: &str,
    image_id: &str,
    file: &Path,
    size_bytes: u64,
    sha256: &str,
    sent: &Arc<AtomicU64>,
) -> Result<pb::Image, String> {
    let mut last_error = String::new();
    for address in controllers.preferred() {
        sent.store(0, Ordering::Relaxed);
        let counter = sent.clone();
        let channel = controllers.channel(&address)?;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("cannot open the saved disk {}: {e}", file.display()))?;
        let header = pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Header(
                pb::UploadImageHeader {
                    request_id: operation_id.to_owned(),
                    image: image_id.to_owned(),
                    expected_sha256: sha256.to_owned(),
                    size_bytes,
                    ..Default::default()
                },
            )),
        };
        let chunks = futures::stream::unfold(Some(f), move |f| {
            let counter = counter.clone();
            async move {
                let mut f = f?;
                let mut buf = vec![0u8; UPLOAD_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    match f.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            // Ending the stream early makes the controller refuse the size.
                            tracing::error!("reading the saved disk failed: {e}");
                            return None;
                        }
                    }
                }
                if filled == 0 {
                    return None;
                }
                buf.truncate(filled);
                counter.fetch_add(filled as u64, Ordering::Relaxed);
                let msg = pb::UploadImageRequest {
                    data: Some(pb::upload_image_request::Data::Chunk(buf)),
                };
                Some((msg, Some(f)))
            }
        });
        let stream = futures::StreamExt::chain(futures::stream::iter([header]), chunks);
        match AgentServiceClient::new(channel)
            .upload_snapshot(stream)
            .await
        {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && s.metadata().is_empty() => {
                last_error = format!("{address}: {}", s.message());
            }
            Err(s) => return Err(s.message().to_owned()),
        }
    }
    Err(format!("no controller took the upload: {last_error}"))
}

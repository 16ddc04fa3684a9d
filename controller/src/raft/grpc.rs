//! Raft over gRPC: the production [`Transport`] and the `RaftService` peers call.
//!
//! One sender task per peer drains its queue into batches (one RPC carries everything queued
//! while the previous one was in flight). Snapshot messages are streamed in chunks on their own
//! RPC. A failed send is reported to the node (`report_unreachable`), which slows replication
//! to that peer until it answers again; raft retransmits what was lost.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::raft_service_client::RaftServiceClient;
use flotilla_proto::v1::raft_service_server::RaftService;
use flotilla_proto::v1::{Empty, MemberStatus, RaftBatch, SnapshotChunk};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::node::NodeHandle;
use super::transport::Transport;

const QUEUE: usize = 16_384;
const MAX_BATCH: usize = 4_096;
/// Encoded bytes per batch, well under the peer's decoding limit.
const MAX_BATCH_BYTES: usize = 16 << 20;
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest snapshot accepted from a peer.
const MAX_SNAPSHOT_BYTES: usize = 8 << 30;

struct Peer {
    address: String,
    queue: mpsc::Sender<Message>,
}

pub struct GrpcTransport {
    id: u64,
    runtime: tokio::runtime::Handle,
    tls: Option<ClientTlsConfig>,
    node: Arc<Mutex<Option<NodeHandle>>>,
    peers: Mutex<HashMap<u64, Peer>>,
}

impl GrpcTransport {
    pub fn new(id: u64, runtime: tokio::runtime::Handle, tls: Option<ClientTlsConfig>) -> Self {
        GrpcTransport {
            id,
            runtime,
            tls,
            node: Arc::new(Mutex::new(None)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Lets the transport report unreachable peers and snapshot results to the node.
    pub fn attach(&self, node: NodeHandle) {
        *self.node.lock() = Some(node);
    }

    /// A channel to a peer's peer listener (mutual TLS when configured).
    pub fn channel(
        address: &str,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Channel, tonic::transport::Error> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            ep = ep.tls_config(tls.clone())?;
        }
        Ok(ep.connect_lazy())
    }

    pub fn tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref()
    }

    fn spawn_peer(&self, to: u64, address: &str) -> Option<Peer> {
        // Called from the raft thread: lazy channels need a runtime context to be created in.
        let _runtime = self.runtime.enter();
        let channel = match Self::channel(address, self.tls.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer = to, address, "bad peer address: {e}");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let node = self.node.clone();
        let from = self.id;
        self.runtime.spawn(peer_sender(
            from,
            to,
            RaftServiceClient::new(channel),
            rx,
            node,
        ));
        Some(Peer {
            address: address.to_owned(),
            queue: tx,
        })
    }

    fn send_snapshot(&self, msg: Message) {
        let to = msg.to;
        let Some(address) = self.peers.lock().get(&to).map(|p| p.address.clone()) else {
            return;
        };
        let tls = self.tls.clone();
        let node = self.node.clone();
        let from = self.id;
        self.runtime.spawn(async move {
            let ok = match Self::channel(&address, tls.as_ref()) {
                Ok(ch) => stream_snapshot(from, RaftServiceClient::new(ch), &msg).await,
                Err(_) => false,
            };
            if !ok {
                tracing::warn!(peer = to, "sending a snapshot failed; raft will retry");
            }
            if let Some(n) = node.lock().as_ref() {
                n.report_snapshot(to, ok);
            }
        });
    }
}

async fn stream_snapshot(from: u64, mut client: RaftServiceClient<Channel>, msg: &Message) -> bool {
    let bytes = match msg.write_to_bytes() {
        Ok(b) => b,
        Err(_) => return false,
    };
    let total = bytes.len();
    let chunks: Vec<SnapshotChunk> = bytes
        .chunks(SNAPSHOT_CHUNK)
        .enumerate()
        .map(|(i, c)| SnapshotChunk {
            from,
            data: c.to_vec(),
            last: (i + 1) * SNAPSHOT_CHUNK >= total,
        })
        .collect();
    client
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .is_ok()
}

/// Pumps one peer's queue into a long-lived `StepStream` call, reconnecting with backoff when
/// the call ends. Whatever was queued while the peer was unreachable is dropped: raft resends.
async fn peer_sender(
    from: u64,
    to: u64,
    client: RaftServiceClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    node: Arc<Mutex<Option<NodeHandle>>>,
) {
    let mut backoff = Duration::from_millis(20);
    let mut warned = false;
    loop {
        let (tx, stream_rx) = mpsc::channel::<RaftBatch>(64);
        let mut c = client.clone();
        let call = tokio::spawn(async move { c.step_stream(ReceiverStream::new(stream_rx)).await });
        let mut sent_any = false;
        loop {
            let Some(first) = rx.recv().await else {
                call.abort();
                return;
            };
            let mut batch = vec![first];
            let mut bytes = 0usize;
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.compute_size() as usize;
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            let messages = batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            if tx.send(RaftBatch { from, messages }).await.is_err() || call.is_finished() {
                break;
            }
            sent_any = true;
            if warned {
                tracing::info!(peer = to, "peer reachable again");
                warned = false;
            }
            backoff = Duration::from_millis(20);
        }
        let reason = match call.await {
            Ok(Err(status)) => status.message().to_owned(),
            Ok(Ok(_)) => "the peer closed the stream".to_owned(),
            Err(_) => "the stream task ended".to_owned(),
        };
        if !warned && !sent_any {
            tracing::warn!(peer = to, "peer unreachable: {reason}");
            warned = true;
        }
        if let Some(n) = node.lock().as_ref() {
            n.report_unreachable(to);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        while rx.try_recv().is_ok() {}
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            let peers = self.peers.lock();
            if let Some(p) = peers.get(&m.to) {
                // A full queue means the peer is far behind or gone: drop, raft retransmits.
                let _ = p.queue.try_send(m);
            }
        }
    }

    fn set_peers(&self, wanted: BTreeMap<u64, String>) {
        let mut peers = self.peers.lock();
        peers.retain(|id, p| wanted.get(id) == Some(&p.address));
        for (id, address) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = peers.entry(id) {
                if let Some(p) = self.spawn_peer(id, &address) {
                    slot.insert(p);
                }
            }
        }
    }
}

/// Builds this member's status as peers and clients see it.
pub type StatusFn = Arc<dyn Fn() -> MemberStatus + Send + Sync>;

pub struct RaftServer {
    pub node: NodeHandle,
    pub status: StatusFn,
}

type Unit = Result<Response<Empty>, Status>;

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn step(&self, request: Request<RaftBatch>) -> Unit {
        for bytes in request.into_inner().messages {
            let msg = Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            self.node.step(msg);
        }
        Ok(Response::new(Empty {}))
    }

    async fn step_stream(&self, request: Request<Streaming<RaftBatch>>) -> Unit {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            for bytes in batch.messages {
                let msg = Message::parse_from_bytes(&bytes).map_err(|e| {
                    Status::invalid_argument(format!("undecodable raft message: {e}"))
                })?;
                self.node.step(msg);
            }
        }
        Ok(Response::new(Empty {}))
    }

    async fn install_snapshot(&self, request: Request<Streaming<SnapshotChunk>>) -> Unit {
        let mut stream = request.into_inner();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if buf.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(
                    "snapshot larger than the accepted maximum",
                ));
            }
            buf.extend_from_slice(&chunk.data);
            if chunk.last {
                let msg = Message::parse_from_bytes(&buf)
                    .map_err(|e| Status::invalid_argument(format!("undecodable snapshot: {e}")))?;
                self.node.step(msg);
                return Ok(Response::new(Empty {}));
            }
        }
        Err(Status::invalid_argument(
            "snapshot stream ended before its last chunk",
        ))
    }

    async fn peer_status(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<MemberStatus>, Status> {
        Ok(Response::new((self.status)()))
    }
}

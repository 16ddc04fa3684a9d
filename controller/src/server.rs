//! Wires a controller together: storage and Raft node, peer transport, the client and peer
//! gRPC listeners (TLS when configured: peers always mutual), health and reflection.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::raft_service_client::RaftServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::api::auth::Authenticator;
use crate::api::{
    self, AgentApi, Api, ClusterApi, EventApi, FlavorApi, HostApi, IdentityApi, ImageApi,
    NetworkApi, OperationApi, QuotaApi, ServerApi, ServerGroupApi,
};
use crate::config::{TlsConfig, ValidConfig};
use crate::images::peers::{BlobServer, GrpcBlobPeers};
use crate::images::{BlobStore, ImageRuntime, Inspector};
use crate::raft::grpc::{GrpcTransport, RaftServer};
use crate::raft::node::NodeOptions;
use crate::raft::Node;
use crate::state::Member;

/// Wall-clock milliseconds; only the proposing controller reads the clock (I2).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Largest gRPC message accepted (raft batches, big lists).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

struct TlsMaterial {
    server_client_listener: ServerTlsConfig,
    server_peer_listener: ServerTlsConfig,
    client: ClientTlsConfig,
}

fn load_tls(tls: &TlsConfig) -> anyhow::Result<TlsMaterial> {
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let ca = Certificate::from_pem(read(&tls.ca)?);
    let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
    Ok(TlsMaterial {
        server_client_listener: ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(ca.clone())
            .client_auth_optional(!tls.require_client_cert),
        server_peer_listener: ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(ca.clone()),
        client: ClientTlsConfig::new().ca_certificate(ca).identity(identity),
    })
}

struct GrpcPeers {
    tls: Option<ClientTlsConfig>,
}

#[tonic::async_trait]
impl api::PeerDirectory for GrpcPeers {
    async fn peer_status(&self, member: &Member) -> Result<pb::MemberStatus, String> {
        let channel = GrpcTransport::channel(&member.peer_address, self.tls.as_ref())
            .map_err(|e| e.to_string())?;
        let mut client = RaftServiceClient::new(channel);
        client
            .peer_status(pb::Empty {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("{}: {}", member.peer_address, e.message()))
    }
}

/// The image machinery: blobs under `<data_dir>/images`, copied to peers over the peer
/// listener.
fn image_runtime(
    config: &ValidConfig,
    peer_tls: Option<ClientTlsConfig>,
) -> anyhow::Result<ImageRuntime> {
    let settings = &config.images;
    let max_bytes = settings.max_image_gib.saturating_mul(1 << 30);
    let store = BlobStore::open_with_limit(config.data_dir.join("images"), max_bytes)
        .context("opening the image blob store")?;
    let inspector = Inspector {
        qemu_img: settings.qemu_img.clone(),
        ..Inspector::default()
    };
    let peers = Arc::new(GrpcBlobPeers { tls: peer_tls });
    let mut rt = ImageRuntime::new(store, inspector, peers, settings.min_copies, max_bytes);
    rt.gc_grace = std::time::Duration::from_secs(settings.gc_grace_secs);
    rt.maintenance_interval = std::time::Duration::from_secs(settings.maintenance_interval_secs);
    Ok(rt)
}

pub async fn run(config: ValidConfig) -> anyhow::Result<()> {
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let client_listener = tokio::net::TcpListener::bind(config.client_listen)
        .await
        .with_context(|| format!("cannot listen on {} (client_listen)", config.client_listen))?;
    let peer_listener = tokio::net::TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("cannot listen on {} (peer_listen)", config.peer_listen))?;
    let client_tls = tls.as_ref().map(|t| t.client.clone());
    let (inbox_tx, inbox) = std::sync::mpsc::channel();
    let transport = Arc::new(GrpcTransport::new(
        config.id,
        tokio::runtime::Handle::current(),
        client_tls.clone(),
    ));
    let members = config
        .initial_members
        .iter()
        .map(|m| Member {
            id: m.id,
            name: m.name.clone(),
            client_address: m.client_address.clone(),
            peer_address: m.peer_address.clone(),
        })
        .collect();
    let opts = NodeOptions {
        id: config.id,
        data_dir: config.data_dir.clone(),
        initial_members: members,
        join: config.join,
        tuning: config.raft.clone(),
    };
    let (node, thread) = Node::start(opts, transport.clone(), inbox_tx, inbox)?;
    transport.attach(node.clone());

    let api = Api::new(
        node.clone(),
        Arc::new(GrpcPeers {
            tls: client_tls.clone(),
        }),
    );
    let images = ImageApi {
        api: api.clone(),
        runtime: Arc::new(image_runtime(&config, client_tls)?),
    };
    tokio::spawn(api::image_maintenance::run(images.clone()));
    let compute = &config.compute;
    let lease = api::agent_hub::LeaseSettings {
        ttl: std::time::Duration::from_millis(compute.lease_ttl_ms),
        heartbeat_interval: std::time::Duration::from_millis(compute.heartbeat_interval_ms),
        grace: std::time::Duration::from_millis(compute.lease_grace_ms),
    };
    let hub = Arc::new(api::agent_hub::AgentHub::default());
    tokio::spawn(api::agent_hub::run(
        api.clone(),
        hub.clone(),
        lease,
        compute.allocation_ratios,
    ));
    let agents = AgentApi {
        api: api.clone(),
        images: images.runtime.clone(),
        hub: hub.clone(),
        lease,
    };
    if let Some(password) = config.admin_password.clone() {
        if !config.join {
            tokio::spawn(api::bootstrap_admin_when_leader(api.clone(), password));
        }
    }
    let auth = Authenticator::new(node.clone());
    let intercept = move |req| auth.intercept(req);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::identity_service_server::IdentityServiceServer<IdentityApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    macro_rules! authed {
        ($server:ident, $imp:expr) => {
            InterceptedService::new(
                $server::new($imp)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                intercept.clone(),
            )
        };
    }
    use pb::cluster_service_server::ClusterServiceServer;
    use pb::event_service_server::EventServiceServer;
    use pb::flavor_service_server::FlavorServiceServer;
    use pb::host_service_server::HostServiceServer;
    use pb::identity_service_server::IdentityServiceServer;
    use pb::image_service_server::ImageServiceServer;
    use pb::network_service_server::NetworkServiceServer;
    use pb::operation_service_server::OperationServiceServer;
    use pb::quota_service_server::QuotaServiceServer;
    use pb::server_group_service_server::ServerGroupServiceServer;
    use pb::server_service_server::ServerServiceServer;

    let mut client_server = Server::builder()
        .tcp_nodelay(true)
        .layer(crate::api::unimplemented::NameUnimplementedLayer);
    if let Some(t) = &tls {
        client_server = client_server.tls_config(t.server_client_listener.clone())?;
    }
    let client_router = client_server
        .add_service(health)
        .add_service(reflection)
        .add_service(authed!(IdentityServiceServer, IdentityApi(api.clone())))
        .add_service(authed!(FlavorServiceServer, FlavorApi(api.clone())))
        .add_service(authed!(ClusterServiceServer, ClusterApi(api.clone())))
        .add_service(authed!(EventServiceServer, EventApi(api.clone())))
        .add_service(authed!(QuotaServiceServer, QuotaApi(api.clone())))
        .add_service(authed!(ImageServiceServer, images.clone()))
        .add_service(authed!(
            ServerServiceServer,
            ServerApi {
                api: api.clone(),
                hub: hub.clone(),
                ratios: config.compute.allocation_ratios,
            }
        ))
        .add_service(authed!(
            HostServiceServer,
            HostApi {
                api: api.clone(),
                hub: hub.clone(),
                ratios: config.compute.allocation_ratios,
            }
        ))
        .add_service(authed!(OperationServiceServer, OperationApi(api.clone())))
        .add_service(authed!(
            ServerGroupServiceServer,
            ServerGroupApi(api.clone())
        ))
        .add_service(authed!(
            NetworkServiceServer,
            NetworkApi {
                api: api.clone(),
                vni_range: (config.network.vni_min, config.network.vni_max),
            }
        ));

    let status_node = node.clone();
    let raft_server = RaftServer {
        node: node.clone(),
        status: Arc::new(move || api::member_status(&status_node)),
    };
    let mut peer_server = Server::builder().tcp_nodelay(true);
    if let Some(t) = &tls {
        peer_server = peer_server.tls_config(t.server_peer_listener.clone())?;
    }
    let blob_server = BlobServer {
        store: images.runtime.blobs.clone(),
    };
    let peer_router = peer_server
        .add_service(
            pb::raft_service_server::RaftServiceServer::new(raft_server)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::blob_service_server::BlobServiceServer::new(blob_server)
                .max_decoding_message_size(4 << 20),
        )
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(agents)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );

    tracing::info!(
        id = config.id,
        client = %config.client_listen,
        peer = %config.peer_listen,
        tls = tls.is_some(),
        "controller started"
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    // Small request/response exchanges: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
    let incoming = |l: tokio::net::TcpListener| TcpIncoming::from(l).with_nodelay(Some(true));
    let client_incoming = incoming(client_listener);
    let peer_incoming = incoming(peer_listener);
    tokio::select! {
        r = client_router.serve_with_incoming(client_incoming) => r.context("client listener failed")?,
        r = peer_router.serve_with_incoming(peer_incoming) => r.context("peer listener failed")?,
        _ = shutdown => tracing::info!("shutting down"),
    }
    node.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(())
}

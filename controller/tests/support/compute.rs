//! A 3-controller cluster set up for compute tests: admin logged in to the `admin` project,
//! flavor `tiny` (2 vCPUs, 1 GiB), an active raw image `disk`, short leases, and scripted
//! agents ([`super::agent::FakeAgent`]) attached on demand.
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::flavor_service_client::FlavorServiceClient;
use flotilla_proto::v1::host_service_client::HostServiceClient;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use flotilla_proto::v1::image_service_client::ImageServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use tonic::transport::Channel;
use tonic::Status;

use super::agent::FakeAgent;
use super::{request_id, wait_for, with_token, Client, Cluster, Options};

pub const READY: Duration = Duration::from_secs(30);
pub const CALL: Duration = Duration::from_secs(20);
pub const CONVERGE: Duration = Duration::from_secs(30);
pub const ALL: [u64; 3] = [1, 2, 3];

pub struct World {
    pub cluster: Cluster,
    pub client: Client,
    /// The admin user's token scoped to the `admin` project (servers belong to a project).
    pub token: String,
}

impl World {
    pub async fn start() -> World {
        let cluster = Cluster::start(Options {
            extra_toml: "[compute]\nlease_ttl_ms = 2000\nheartbeat_interval_ms = 300\n\
                         lease_grace_ms = 1000\n\n[compute.allocation_ratios]\ncpu = 1.0\n\
                         ram = 1.0\n"
                .into(),
            ..Options::default()
        });
        cluster.wait_ready(&ALL, READY).await;
        let client = cluster.client();
        let login = pb::LoginRequest {
            user: super::ADMIN_USER.into(),
            password: super::ADMIN_PASSWORD.into(),
            project: "admin".into(),
        };
        let token = client
            .call(CALL, |ch| {
                let req = login.clone();
                async move { IdentityServiceClient::new(ch).login(req).await }
            })
            .await
            .expect("project-scoped login")
            .value
            .token;
        let w = World {
            cluster,
            client,
            token,
        };
        let flavor = pb::CreateFlavorRequest {
            request_id: request_id(),
            name: "tiny".into(),
            vcpus: 2,
            ram_mib: 1024,
            disk_gib: 1,
            ..Default::default()
        };
        w.call(|ch, t| {
            let req = with_token(flavor.clone(), &t);
            async move { FlavorServiceClient::new(ch).create_flavor(req).await }
        })
        .await
        .expect("flavor");
        w.image().await;
        w
    }

    /// Calls with the project-scoped admin token, retrying as SDK clients do.
    pub async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, Status>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.client
            .call(CALL, |ch| rpc(ch, self.token.clone()))
            .await
            .map(|a| a.value)
    }

    /// An active raw image named `disk`.
    pub async fn image(&self) {
        let create = pb::CreateImageRequest {
            request_id: request_id(),
            name: "disk".into(),
            disk_format: pb::ImageDiskFormat::Raw as i32,
            ..Default::default()
        };
        let image = self
            .call(|ch, t| {
                let req = with_token(create.clone(), &t);
                async move { ImageServiceClient::new(ch).create_image(req).await }
            })
            .await
            .expect("image");
        let content: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
        let msgs = vec![
            pb::UploadImageRequest {
                data: Some(pb::upload_image_request::Data::Header(
                    pb::UploadImageHeader {
                        image: image.id.clone(),
                        size_bytes: content.len() as u64,
                        ..Default::default()
                    },
                )),
            },
            pb::UploadImageRequest {
                data: Some(pb::upload_image_request::Data::Chunk(content)),
            },
        ];
        let leader = self.cluster.wait_leader(&ALL, READY).await;
        let req = with_token(tokio_stream::iter(msgs), &self.token);
        let up = self
            .client
            .once(leader, |ch| async move {
                ImageServiceClient::new(ch).upload_image(req).await
            })
            .await
            .expect("upload");
        assert_eq!(up.status(), pb::ImageStatus::Active);
    }

    pub fn agent(&self, hostname: &str) -> FakeAgent {
        let peers = ALL
            .iter()
            .map(|&n| self.cluster.node(n).peer_address.clone())
            .collect();
        FakeAgent::start(hostname, peers)
    }

    pub async fn hosts(&self) -> Vec<pb::Host> {
        self.call(|ch, t| async move {
            HostServiceClient::new(ch)
                .list_hosts(with_token(pb::ListHostsRequest::default(), &t))
                .await
        })
        .await
        .expect("hosts")
        .hosts
    }

    pub async fn wait_hosts_up(&self, n: usize) {
        wait_for(READY, "hosts up", || async {
            let up = self
                .hosts()
                .await
                .iter()
                .filter(|h| h.state() == pb::HostState::Up)
                .count();
            (up == n).then_some(()).ok_or(format!("{up} up"))
        })
        .await;
    }

    pub async fn create(&self, name: &str, count: u32, host: &str) -> pb::CreateServerResponse {
        let req = pb::CreateServerRequest {
            request_id: request_id(),
            name: name.into(),
            flavor: "tiny".into(),
            image: "disk".into(),
            max_count: count,
            host: host.into(),
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { ServerServiceClient::new(ch).create_server(req).await }
        })
        .await
        .expect("create server")
    }

    pub async fn server(&self, id: &str) -> Result<pb::Server, Status> {
        let req = pb::GetServerRequest {
            server: id.into(),
            stale: false,
        };
        self.call(|ch, t| {
            let req = with_token(req.clone(), &t);
            async move { ServerServiceClient::new(ch).get_server(req).await }
        })
        .await
    }

    pub async fn wait_status(&self, id: &str, want: pb::ServerStatus) -> pb::Server {
        wait_for(CONVERGE, "server status", || async {
            let s = self.server(id).await.map_err(|e| format!("{e:?}"))?;
            (s.status() == want && s.task_state.is_empty())
                .then_some(s.clone())
                .ok_or(format!("{:?} {:?}", s.status(), s.task_state))
        })
        .await
    }
}

//! A fake compute controller on a loopback port for `tests/server.rs` and `tests/host.rs`:
//! ServerService, OperationService and HostService, plus the ImageService / FlavorService reads
//! the CLI uses for names. Servers and operations follow scripts chosen by server name:
//!
//! * a name containing `bad` (or `half-2`): its boot fails (`no valid host`), the server ends in
//!   ERROR with a fault;
//! * a name containing `flaky`: the first watch of each of its operations breaks (UNAVAILABLE)
//!   after one snapshot;
//! * `missing`: NOT_FOUND;
//! * `gone`: `delete` answers with an operation id that was never recorded and removes the
//!   server at once (as the controller does for a server whose host is down).
//!
//! Hosts: `host evacuate` / `host drain` of any host plan web-1 and db-1 onto cmp2; on a host
//! whose name contains `half`, db-1 fails to move (PARTIALLY_SUCCEEDED).
//!
//! Every operation streams RUNNING snapshots before its terminal one. Every request is recorded.

#![allow(dead_code)]

mod jobs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_proto::v1::flavor_service_server::{FlavorService, FlavorServiceServer};
use flotilla_proto::v1::host_service_server::{HostService, HostServiceServer};
use flotilla_proto::v1::image_service_server::{ImageService, ImageServiceServer};
use flotilla_proto::v1::operation_service_server::{OperationService, OperationServiceServer};
use flotilla_proto::v1::server_service_server::{ServerService, ServerServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Upper bound for one CLI run in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Pause between streamed snapshots.
const STEP: Duration = Duration::from_millis(15);
pub const T0: i64 = 1_714_564_800_000;

#[derive(Default)]
pub struct Record {
    pub creates: Vec<v1::CreateServerRequest>,
    /// (method, request_id, server) of every mutating server call.
    pub actions: Vec<(&'static str, String, String)>,
    pub lists: Vec<v1::ListServersRequest>,
    pub watches: Vec<String>,
    pub backups: Vec<v1::BackupServerRequest>,
    pub snapshots: Vec<v1::CreateServerImageRequest>,
    pub console: Vec<v1::GetConsoleLogRequest>,
    pub op_lists: Vec<v1::ListOperationsRequest>,
    pub host_calls: Vec<String>,
    /// Migrations and evacuations of servers, with their options.
    pub moves: Vec<String>,
    pub name_lookups: Vec<String>,
    /// (server, floating IP, fixed address) of every AddFloatingIp.
    pub floating: Vec<(String, String, String)>,
}

#[derive(Default)]
struct World {
    servers: BTreeMap<String, v1::Server>,
    /// Operation id → the snapshots its watch streams, the last one terminal.
    scripts: BTreeMap<String, Vec<v1::Operation>>,
    /// Operations whose next watch breaks after the first snapshot.
    flaky: Vec<String>,
    next: u32,
}

#[derive(Clone)]
struct Fake {
    world: Arc<Mutex<World>>,
    rec: Arc<Mutex<Record>>,
}

pub fn server(id: &str, name: &str, status: v1::ServerStatus) -> v1::Server {
    v1::Server {
        id: id.into(),
        name: name.into(),
        project_id: "p-1".into(),
        flavor_id: "f-1".into(),
        image_id: "img-1".into(),
        status: status as i32,
        host: "cmp1".into(),
        host_status: v1::HostState::Up as i32,
        placement_generation: 1,
        ..Default::default()
    }
}

fn snapshot(
    id: &str,
    kind: &str,
    server: &str,
    state: v1::OperationState,
    step: &str,
) -> v1::Operation {
    v1::Operation {
        id: id.into(),
        kind: kind.into(),
        resource_type: "server".into(),
        resource_id: server.into(),
        project_id: "p-1".into(),
        user_id: "alice".into(),
        state: state as i32,
        step: step.into(),
        started_at_ms: T0,
        meta: Some(v1::ResourceMeta {
            created_at_ms: T0,
            updated_at_ms: T0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Running, running at the next step, then succeeded or failed with `error`.
fn script(id: &str, kind: &str, server: &str, error: Option<&str>) -> Vec<v1::Operation> {
    use v1::OperationState as S;
    let mut done = snapshot(id, kind, server, S::Succeeded, "done");
    done.finished_at_ms = T0 + 5_000;
    if let Some(error) = error {
        done.state = S::Failed as i32;
        done.step = "spawning".into();
        done.error = error.into();
    }
    vec![
        snapshot(id, kind, server, S::Running, "scheduling"),
        snapshot(id, kind, server, S::Running, "spawning"),
        done,
    ]
}

impl World {
    fn find(&self, key: &str) -> Result<v1::Server, Status> {
        self.servers
            .get(key)
            .or_else(|| self.servers.values().find(|s| s.name == key))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("server {key:?} not found")))
    }

    /// Records an operation on `s`; names decide how it ends.
    fn start(&mut self, kind: &str, s: &v1::Server, fails: bool) -> String {
        self.next += 1;
        let id = format!("op-{}", self.next);
        let error = fails.then_some("no valid host left after 3 failed boot(s)");
        self.scripts
            .insert(id.clone(), script(&id, kind, &s.id, error));
        if s.name.contains("flaky") {
            self.flaky.push(id.clone());
        }
        id
    }
}

impl Fake {
    fn act(&self, method: &'static str, request_id: &str, key: &str) -> Result<String, Status> {
        self.rec
            .lock()
            .unwrap()
            .actions
            .push((method, request_id.to_string(), key.to_string()));
        let mut w = self.world.lock().unwrap();
        let mut s = w.find(key)?;
        let fails = s.name.contains("bad");
        if method == "delete" && s.name == "gone" {
            w.servers.remove(&s.id);
            return Ok("op-never-recorded".into());
        }
        let kind = match method {
            "reboot_hard" => "reboot --hard",
            other => other,
        };
        let op = w.start(kind, &s, fails);
        use v1::ServerStatus as St;
        match (method, fails) {
            (_, true) => {
                s.status = St::Error as i32;
                s.fault = Some(v1::ServerFault {
                    message: "the guest did not come back".into(),
                    code: 13,
                    ..Default::default()
                });
            }
            ("delete", false) => {
                w.servers.remove(&s.id);
                return Ok(op);
            }
            ("stop", false) => s.status = St::Shutoff as i32,
            _ => s.status = St::Active as i32,
        }
        w.servers.insert(s.id.clone(), s);
        Ok(op)
    }
}

#[tonic::async_trait]
impl ServerService for Fake {
    async fn create_server(
        &self,
        request: Request<v1::CreateServerRequest>,
    ) -> Result<Response<v1::CreateServerResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().creates.push(r.clone());
        let count = r.max_count.max(1);
        let mut w = self.world.lock().unwrap();
        let mut response = v1::CreateServerResponse::default();
        for i in 1..=count {
            let name = if count == 1 {
                r.name.clone()
            } else {
                format!("{}-{i}", r.name)
            };
            let id = format!("s-{name}");
            let building = server(&id, &name, v1::ServerStatus::Build);
            let fails = name.contains("bad") || name == "half-2";
            let op = w.start("boot", &building, fails);
            let mut done = building.clone();
            if fails {
                done.status = v1::ServerStatus::Error as i32;
                done.fault = Some(v1::ServerFault {
                    message: "no valid host left after 3 failed boot(s)".into(),
                    code: 8,
                    ..Default::default()
                });
            } else {
                done.status = v1::ServerStatus::Active as i32;
                done.power_state = v1::ServerPowerState::Running as i32;
                done.launched_at_ms = T0 + 5_000;
            }
            w.servers.insert(id, done);
            response.servers.push(v1::Server {
                task_state: "scheduling".into(),
                current_operation_id: op.clone(),
                ..building
            });
            response.operation_ids.push(op);
        }
        Ok(Response::new(response))
    }

    async fn get_server(
        &self,
        request: Request<v1::GetServerRequest>,
    ) -> Result<Response<v1::Server>, Status> {
        let w = self.world.lock().unwrap();
        w.find(&request.into_inner().server).map(Response::new)
    }

    /// Two pages of whatever servers exist: the first one, then the rest.
    async fn list_servers(
        &self,
        request: Request<v1::ListServersRequest>,
    ) -> Result<Response<v1::ListServersResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().lists.push(r.clone());
        let all: Vec<v1::Server> = self
            .world
            .lock()
            .unwrap()
            .servers
            .values()
            .cloned()
            .collect();
        let (servers, next) = if r.page_token.is_empty() && all.len() > 1 {
            (all[..1].to_vec(), "t1".to_string())
        } else if r.page_token.is_empty() {
            (all, String::new())
        } else {
            (all[1..].to_vec(), String::new())
        };
        Ok(Response::new(v1::ListServersResponse {
            servers,
            next_page_token: next,
        }))
    }

    async fn delete_server(
        &self,
        request: Request<v1::DeleteServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        let operation_id = self.act("delete", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn migrate_server(
        &self,
        request: Request<v1::MigrateServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        let key = format!("{} host={}", r.server, r.host);
        self.rec
            .lock()
            .unwrap()
            .moves
            .push(format!("migrate {key}"));
        let operation_id = self.act("migrate", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn live_migrate_server(
        &self,
        request: Request<v1::LiveMigrateServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().moves.push(format!(
            "live_migrate {} host={} block={:?} timeout={}",
            r.server, r.host, r.block_migration, r.timeout_seconds
        ));
        let operation_id = self.act("live_migrate", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn evacuate_server(
        &self,
        request: Request<v1::EvacuateServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().moves.push(format!(
            "evacuate {} host={} force={}",
            r.server, r.host, r.force
        ));
        let operation_id = self.act("evacuate", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn start_server(
        &self,
        request: Request<v1::StartServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        let operation_id = self.act("start", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn stop_server(
        &self,
        request: Request<v1::StopServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        let operation_id = self.act("stop", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn reboot_server(
        &self,
        request: Request<v1::RebootServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        let method = if r.hard { "reboot_hard" } else { "reboot" };
        let operation_id = self.act(method, &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn rebuild_server(
        &self,
        request: Request<v1::RebuildServerRequest>,
    ) -> Result<Response<v1::OperationRef>, Status> {
        let r = request.into_inner();
        let key = format!("{}|{}", r.server, r.image);
        self.rec
            .lock()
            .unwrap()
            .actions
            .push(("rebuild_image", r.request_id.clone(), key));
        let operation_id = self.act("rebuild", &r.request_id, &r.server)?;
        Ok(Response::new(v1::OperationRef { operation_id }))
    }

    async fn lock_server(
        &self,
        request: Request<v1::LockServerRequest>,
    ) -> Result<Response<v1::Server>, Status> {
        let r = request.into_inner();
        self.rec
            .lock()
            .unwrap()
            .actions
            .push(("lock", r.request_id.clone(), r.server.clone()));
        let mut w = self.world.lock().unwrap();
        let mut s = w.find(&r.server)?;
        s.locked = true;
        s.locked_reason = r.reason;
        w.servers.insert(s.id.clone(), s.clone());
        Ok(Response::new(s))
    }

    async fn unlock_server(
        &self,
        request: Request<v1::UnlockServerRequest>,
    ) -> Result<Response<v1::Server>, Status> {
        let r = request.into_inner();
        self.rec
            .lock()
            .unwrap()
            .actions
            .push(("unlock", r.request_id.clone(), r.server.clone()));
        let mut w = self.world.lock().unwrap();
        let mut s = w.find(&r.server)?;
        s.locked = false;
        s.locked_reason.clear();
        w.servers.insert(s.id.clone(), s.clone());
        Ok(Response::new(s))
    }

    /// The image takes the operation's id, as the controller does.
    async fn backup_server(
        &self,
        request: Request<v1::BackupServerRequest>,
    ) -> Result<Response<v1::ServerImageResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().backups.push(r.clone());
        let op = self.act("backup", &r.request_id, &r.server)?;
        Ok(Response::new(v1::ServerImageResponse {
            operation_id: op.clone(),
            image_id: op,
        }))
    }

    async fn create_server_image(
        &self,
        request: Request<v1::CreateServerImageRequest>,
    ) -> Result<Response<v1::ServerImageResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().snapshots.push(r.clone());
        let op = self.act("image create", &r.request_id, &r.server)?;
        Ok(Response::new(v1::ServerImageResponse {
            operation_id: op.clone(),
            image_id: op,
        }))
    }

    async fn get_console_log(
        &self,
        request: Request<v1::GetConsoleLogRequest>,
    ) -> Result<Response<v1::ServerConsoleLog>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().console.push(r.clone());
        self.world.lock().unwrap().find(&r.server)?;
        Ok(Response::new(v1::ServerConsoleLog {
            output: "login: \r\n\u{1b}]0;pwned\u{7}cirros\r\n".into(),
            truncated: true,
        }))
    }

    async fn add_floating_ip(
        &self,
        request: Request<v1::AddFloatingIpRequest>,
    ) -> Result<Response<v1::FloatingIp>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().floating.push((
            r.server.clone(),
            r.floating_ip.clone(),
            r.fixed_address.clone(),
        ));
        Ok(Response::new(v1::FloatingIp {
            id: "fip-1".into(),
            floating_ip_address: r.floating_ip,
            fixed_ip_address: if r.fixed_address.is_empty() {
                "10.0.0.5".into()
            } else {
                r.fixed_address
            },
            port_id: "port-1".into(),
            server_id: r.server,
            ..Default::default()
        }))
    }

    async fn remove_floating_ip(
        &self,
        request: Request<v1::RemoveFloatingIpRequest>,
    ) -> Result<Response<v1::FloatingIp>, Status> {
        let r = request.into_inner();
        Err(Status::failed_precondition(format!(
            "floating IP {} is not associated with server {:?}",
            r.floating_ip, r.server
        )))
    }

    async fn get_diagnostics(
        &self,
        request: Request<v1::GetDiagnosticsRequest>,
    ) -> Result<Response<v1::ServerDiagnostics>, Status> {
        let s = self
            .world
            .lock()
            .unwrap()
            .find(&request.into_inner().server)?;
        Ok(Response::new(v1::ServerDiagnostics {
            server_id: s.id,
            host: s.host,
            power_state: v1::ServerPowerState::Running as i32,
            driver: "libvirt".into(),
            uptime_seconds: 90,
            cpu: Some(v1::ServerCpuDiagnostics {
                vcpus: 1,
                cpu_time_ns: 2_000_000_000,
                vcpu_time_ns: vec![2_000_000_000],
            }),
            nics: vec![v1::ServerNicDiagnostics {
                port_id: "port-1".into(),
                mac_address: "fa:16:3e:00:00:01".into(),
                rx_bytes: 100,
                tx_bytes: 200,
                ..Default::default()
            }],
            collected_at_ms: T0,
            ..Default::default()
        }))
    }

    /// Oldest first, over two pages (the CLI prints newest first).
    async fn list_server_actions(
        &self,
        request: Request<v1::ListServerActionsRequest>,
    ) -> Result<Response<v1::ListServerActionsResponse>, Status> {
        let r = request.into_inner();
        self.world.lock().unwrap().find(&r.server)?;
        let action = |name: &str, at: i64, result: v1::ServerActionResult| v1::ServerAction {
            action: name.into(),
            request_id: format!("r-{name}"),
            user_id: "alice".into(),
            project_id: "p-1".into(),
            start_time_ms: at,
            finish_time_ms: at + 1_000,
            result: result as i32,
            operation_id: format!("op-{name}"),
            ..Default::default()
        };
        let (actions, next) = if r.page_token.is_empty() {
            (
                vec![action("create", T0, v1::ServerActionResult::Success)],
                "t1",
            )
        } else {
            (
                vec![action("stop", T0 + 60_000, v1::ServerActionResult::Error)],
                "",
            )
        };
        Ok(Response::new(v1::ListServerActionsResponse {
            actions,
            next_page_token: next.into(),
        }))
    }
}

#[tonic::async_trait]
impl OperationService for Fake {
    async fn list_operations(
        &self,
        request: Request<v1::ListOperationsRequest>,
    ) -> Result<Response<v1::ListOperationsResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().op_lists.push(r.clone());
        let w = self.world.lock().unwrap();
        // Oldest first (by id), as the controller's pages come; the CLI sorts newest first.
        let mut operations: Vec<v1::Operation> = w
            .scripts
            .values()
            .filter_map(|s| s.last().cloned())
            .filter(|o| r.resource_id.is_empty() || o.resource_id == r.resource_id)
            .filter(|o| r.states.is_empty() || r.states.contains(&o.state))
            .collect();
        for (i, o) in operations.iter_mut().enumerate() {
            o.meta.get_or_insert_with(Default::default).created_at_ms = T0 + i as i64;
        }
        Ok(Response::new(v1::ListOperationsResponse {
            operations,
            next_page_token: String::new(),
        }))
    }

    async fn get_operation(
        &self,
        request: Request<v1::GetOperationRequest>,
    ) -> Result<Response<v1::Operation>, Status> {
        let id = request.into_inner().operation_id;
        let w = self.world.lock().unwrap();
        w.scripts
            .get(&id)
            .and_then(|s| s.last().cloned())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("operation {id:?} not found")))
    }

    /// Answers with the operation's first snapshot, in state CANCELLING.
    async fn cancel_operation(
        &self,
        request: Request<v1::CancelOperationRequest>,
    ) -> Result<Response<v1::Operation>, Status> {
        let id = request.into_inner().operation_id;
        let w = self.world.lock().unwrap();
        let mut op = w
            .scripts
            .get(&id)
            .and_then(|s| s.first().cloned())
            .ok_or_else(|| Status::not_found(format!("operation {id:?} not found")))?;
        op.state = v1::OperationState::Cancelling as i32;
        op.cancellable = false;
        Ok(Response::new(op))
    }

    async fn watch_operation(
        &self,
        request: Request<v1::WatchOperationRequest>,
    ) -> Result<Response<BoxStream<v1::Operation>>, Status> {
        let id = request.into_inner().operation_id;
        self.rec.lock().unwrap().watches.push(id.clone());
        let (snapshots, breaks) = {
            let mut w = self.world.lock().unwrap();
            let snapshots = w
                .scripts
                .get(&id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("operation {id:?} not found")))?;
            let breaks = match w.flaky.iter().position(|f| *f == id) {
                Some(at) => {
                    w.flaky.remove(at);
                    true
                }
                None => false,
            };
            (snapshots, breaks)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for (i, op) in snapshots.into_iter().enumerate() {
                if breaks && i == 1 {
                    let _ = tx.send(Err(Status::unavailable("leader changed"))).await;
                    return;
                }
                if tx.send(Ok(op)).await.is_err() {
                    return;
                }
                tokio::time::sleep(STEP).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

pub fn host(id: &str, hostname: &str) -> v1::Host {
    v1::Host {
        id: id.into(),
        hostname: hostname.into(),
        address: "10.0.0.11".into(),
        state: v1::HostState::Up as i32,
        enabled: true,
        availability_zone: "az1".into(),
        capacity: Some(v1::HostCapacity {
            vcpus: 8,
            ram_mib: 16_384,
            disk_gib: 100,
        }),
        usage: Some(v1::HostCapacity {
            vcpus: 1,
            ram_mib: 512,
            disk_gib: 1,
        }),
        lease_age_ms: 800,
        server_count: 1,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl HostService for Fake {
    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let token = request.into_inner().page_token;
        self.rec
            .lock()
            .unwrap()
            .host_calls
            .push(format!("list {token}"));
        let (hosts, next) = if token.is_empty() {
            (vec![host("h-1", "cmp1")], "t1")
        } else {
            (vec![host("h-2", "cmp2")], "")
        };
        Ok(Response::new(v1::ListHostsResponse {
            hosts,
            next_page_token: next.into(),
        }))
    }

    async fn get_host(
        &self,
        request: Request<v1::GetHostRequest>,
    ) -> Result<Response<v1::Host>, Status> {
        let key = request.into_inner().host;
        self.rec
            .lock()
            .unwrap()
            .host_calls
            .push(format!("get {key}"));
        if key != "cmp1" && key != "h-1" {
            return Err(Status::not_found(format!("host {key:?} not found")));
        }
        Ok(Response::new(host("h-1", "cmp1")))
    }

    async fn enable_host(
        &self,
        request: Request<v1::EnableHostRequest>,
    ) -> Result<Response<v1::Host>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().host_calls.push(format!(
            "enable {} {}",
            r.host,
            !r.request_id.is_empty()
        ));
        Ok(Response::new(host("h-1", &r.host)))
    }

    async fn disable_host(
        &self,
        request: Request<v1::DisableHostRequest>,
    ) -> Result<Response<v1::Host>, Status> {
        let r = request.into_inner();
        self.rec
            .lock()
            .unwrap()
            .host_calls
            .push(format!("disable {} {}", r.host, r.reason));
        let mut h = host("h-1", &r.host);
        h.enabled = false;
        h.disabled_reason = r.reason;
        Ok(Response::new(h))
    }

    async fn evacuate_host(
        &self,
        request: Request<v1::EvacuateHostRequest>,
    ) -> Result<Response<v1::EvacuateHostResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().host_calls.push(format!(
            "evacuate {} live={} parallel={} target={} dry_run={}",
            r.host, r.live, r.parallel, r.target_host, r.dry_run
        ));
        let method = if r.live { "live_migrate" } else { "rebuild" };
        Ok(Response::new(self.host_job(
            "host_evacuate",
            &r.host,
            method,
            r.dry_run,
        )))
    }

    async fn drain_host(
        &self,
        request: Request<v1::DrainHostRequest>,
    ) -> Result<Response<v1::EvacuateHostResponse>, Status> {
        let r = request.into_inner();
        self.rec.lock().unwrap().host_calls.push(format!(
            "drain {} live={} parallel={} dry_run={}",
            r.host, r.live, r.parallel, r.dry_run
        ));
        let method = if r.live {
            "live_migrate"
        } else {
            "cold_migrate"
        };
        Ok(Response::new(self.host_job(
            "host_drain",
            &r.host,
            method,
            r.dry_run,
        )))
    }

    async fn set_host_force_down(
        &self,
        request: Request<v1::SetHostForceDownRequest>,
    ) -> Result<Response<v1::Host>, Status> {
        let r = request.into_inner();
        self.rec
            .lock()
            .unwrap()
            .host_calls
            .push(format!("force_down {} {}", r.host, r.forced_down));
        let mut h = host("h-1", &r.host);
        if r.forced_down {
            h.forced_down = true;
            h.state = v1::HostState::Down as i32;
            h.down_since_ms = T0;
            h.lease_age_ms = -1;
        }
        Ok(Response::new(h))
    }
}

#[tonic::async_trait]
impl ImageService for Fake {
    /// `img-1` is cirros; anything else is a saved image named after its id.
    async fn get_image(
        &self,
        request: Request<v1::GetImageRequest>,
    ) -> Result<Response<v1::Image>, Status> {
        let id = request.into_inner().image;
        self.rec
            .lock()
            .unwrap()
            .name_lookups
            .push(format!("image {id}"));
        let name = if id == "img-1" {
            "cirros".to_string()
        } else {
            format!("saved-{id}")
        };
        Ok(Response::new(v1::Image {
            id,
            name,
            status: v1::ImageStatus::Active as i32,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl FlavorService for Fake {
    async fn get_flavor(
        &self,
        request: Request<v1::GetFlavorRequest>,
    ) -> Result<Response<v1::Flavor>, Status> {
        let id = request.into_inner().flavor;
        self.rec
            .lock()
            .unwrap()
            .name_lookups
            .push(format!("flavor {id}"));
        Ok(Response::new(v1::Flavor {
            id,
            name: "m1.tiny".into(),
            ..Default::default()
        }))
    }
}

pub struct Compute {
    pub addr: SocketAddr,
    pub rec: Arc<Mutex<Record>>,
    world: Arc<Mutex<World>>,
}

impl Compute {
    pub async fn start() -> Compute {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Fake {
            world: Arc::default(),
            rec: Arc::default(),
        };
        let (world, rec) = (Arc::clone(&fake.world), Arc::clone(&fake.rec));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ServerServiceServer::new(fake.clone()))
                .add_service(OperationServiceServer::new(fake.clone()))
                .add_service(HostServiceServer::new(fake.clone()))
                .add_service(ImageServiceServer::new(fake.clone()))
                .add_service(FlavorServiceServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Compute { addr, rec, world }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Adds a server in `status` (by name; id `s-NAME`).
    pub fn add(&self, name: &str, status: v1::ServerStatus) {
        let id = format!("s-{name}");
        self.world
            .lock()
            .unwrap()
            .servers
            .insert(id.clone(), server(&id, name, status));
    }

    pub fn server(&self, key: &str) -> Option<v1::Server> {
        self.world.lock().unwrap().find(key).ok()
    }
}

//! Wires the agent together: drivers, the executor, the command dispatcher and the session,
//! each a task. [`start`] runs them on the current tokio runtime; the binary uses the real
//! drivers ([`Drivers::real`]), tests pass fakes.
//!
//! With `[lease] fence_on_loss` (the default) a fourth task pauses running guests while the host
//! holds no valid lease ([`crate::fence`]).
//!
//! Stopping the agent ([`Running::stop`], or the process exiting) leaves every domain as it is:
//! a new agent adopts what is legitimately its own (I6).
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::commands::Dispatcher;
use crate::config::ValidConfig;
use crate::desired::Mapping;
use crate::driver::disks::{Disks, DisksConfig, ImageSource, QemuImgDisks};
use crate::driver::libvirt::LibvirtHypervisor;
use crate::driver::Hypervisor;
use crate::executor::{self, Fetcher, Host};
use crate::fence;
use crate::session::{self, Link, Register};
use crate::transfer::{Controllers, FetchSource};

/// Why the real drivers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot use libvirt")]
    Hypervisor(#[from] crate::driver::HypervisorError),
    #[error("cannot set up the disk directories")]
    Disks(#[from] crate::driver::disks::DiskError),
}

/// The network reconcile over the host's Open vSwitch, when `[network]` is configured.
fn network_host(config: &ValidConfig) -> Option<Arc<crate::net::converge::NetworkHost>> {
    use crate::driver::ovs::{OvsConfig, OvsVsctl};
    let cfg = config.network.clone()?;
    let vswitch = match OvsVsctl::new(OvsConfig::with_rundir(&cfg.ovs_rundir)) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("networking is off: Open vSwitch tools are missing: {e}");
            return None;
        }
    };
    let routers = crate::net::converge::routers_for(&cfg);
    Some(Arc::new(crate::net::converge::NetworkHost::new(
        cfg,
        Arc::new(vswitch),
        routers,
    )))
}

/// The host's drivers and what they say about the hypervisor.
pub struct Drivers {
    pub hv: Arc<dyn Hypervisor>,
    pub disks: Arc<dyn Disks>,
    /// Reported at registration, e.g. `QEMU 7.2.0`.
    pub hypervisor_version: String,
}

impl Drivers {
    /// libvirt at the configured URI and qemu-img disks under the state directory.
    pub fn real(config: &ValidConfig) -> Result<Drivers, DriverError> {
        let hv = LibvirtHypervisor::connect(&config.libvirt_uri)?;
        let version = hv.hypervisor_version().unwrap_or(0);
        let mut disks = DisksConfig::under(&config.state_dir);
        disks.qemu_img = config.qemu_img.clone();
        let disks = QemuImgDisks::new(disks)?;
        Ok(Drivers {
            hv: Arc::new(hv),
            disks: Arc::new(disks),
            hypervisor_version: format!(
                "{} {}.{}.{}",
                if config.libvirt_uri.starts_with("test:") {
                    "libvirt test driver"
                } else {
                    "QEMU"
                },
                version / 1_000_000,
                version / 1000 % 1000,
                version % 1000
            ),
        })
    }
}

/// Image bytes from the controllers' `FetchImage`.
struct GrpcFetcher {
    controllers: Arc<Controllers>,
    runtime: tokio::runtime::Handle,
}

impl Fetcher for GrpcFetcher {
    fn source(&self, image_id: &str) -> Box<dyn ImageSource + Send> {
        Box::new(FetchSource {
            controllers: self.controllers.clone(),
            runtime: self.runtime.clone(),
            image_id: image_id.to_owned(),
        })
    }
}

/// A started agent. Dropping it stops its tasks (blocking driver calls in flight finish).
pub struct Running {
    pub link: Arc<Link>,
    pub host: Arc<Host>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn stop(self) {}
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the agent on the current runtime.
pub fn start(config: &ValidConfig, drivers: Drivers) -> Running {
    let started = std::time::Instant::now();
    let controllers = Arc::new(Controllers::new(
        config.controllers.clone(),
        config.tls.as_ref(),
    ));
    let mapping = Mapping {
        domain_type: config.domain_type,
        disk_cache: config.disk_cache,
        layout: drivers.disks.layout().clone(),
        state_dir: config.state_dir.clone(),
        console_dir: config.console_dir(),
        kernels: config.kernels.clone(),
        integration_bridge: config
            .network
            .as_ref()
            .map_or_else(|| "br-int".to_string(), |n| n.integration_bridge.clone()),
    };
    let fetcher = Arc::new(GrpcFetcher {
        controllers: controllers.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let host = Arc::new(Host::new(
        drivers.hv,
        drivers.disks,
        fetcher,
        mapping,
        config.shutdown_timeout,
    ));
    let link = Arc::new(Link::default());
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let dispatcher = Arc::new(Dispatcher::new(
        host.clone(),
        link.clone(),
        controllers.clone(),
        config.hostname.clone(),
        config.migration.clone(),
    ));
    let register: Register = {
        let (host, link) = (host.clone(), link.clone());
        let template = pb::AgentRegister {
            hostname: config.hostname.clone(),
            address: config.address.clone(),
            capacity: Some(pb::HostCapacity {
                vcpus: config.capacity.vcpus,
                ram_mib: config.capacity.ram_mib,
                disk_gib: config.capacity.disk_gib,
            }),
            hypervisor_type: config.domain_type.as_str().to_owned(),
            hypervisor_version: drivers.hypervisor_version,
            cpu_model: config.cpu_model.clone(),
            availability_zone: config.availability_zone.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            tunnel_address: config
                .network
                .as_ref()
                .and_then(|n| n.tunnel_local_ip)
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        Arc::new(move || {
            let (host, link, mut reg) = (host.clone(), link.clone(), template.clone());
            async move {
                reg.servers = host.refresh(&link).await;
                reg
            }
            .boxed()
        })
    };
    let mut tasks = vec![
        tokio::spawn(executor::run(
            host.clone(),
            link.clone(),
            config.reconcile_interval,
        )),
        tokio::spawn(dispatcher.run(inbound_rx)),
        tokio::spawn(session::run(
            link.clone(),
            controllers,
            register,
            inbound_tx,
        )),
    ];
    if let Some(net) = network_host(config) {
        tasks.push(tokio::spawn(crate::net::task::run(
            net,
            host.clone(),
            link.clone(),
        )));
    }
    if config.fence_on_loss {
        tasks.push(tokio::spawn(fence::run(
            host.clone(),
            link.clone(),
            started,
        )));
    }
    Running { link, host, tasks }
}

//! Real live migration between two libvirtds, each in its own network and mount namespace
//! ([`flotilla_agent::testbed`]), with QEMU (TCG) guests that print a counter on their serial
//! console every second (`tests/data/make-guest.sh`).
//!
//! 1. The driver's migration conformance suite ([`run_migration_suite`]) on the real driver.
//! 2. Two real agents (real libvirt and qemu-img drivers, each with a fake controller): boot
//!    the counter guest on host A; a live migration whose network is cut halfway (B's veth down,
//!    8 s deadline) is aborted by the agent's deadline, the guest keeps running on A and B is
//!    cleaned with DestroyStale; then a live migration with copied storage moves the guest to
//!    B, where the counter continues (no reboot) and data written to the disk before the
//!    migration is present; the ownership move cleans A and B adopts the domain.
//!
//! Skipped, with the reason printed, when not root or tools are missing (CI runs as root).
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::config::{AgentConfig, HostFacts};
use flotilla_agent::driver::conformance::disks::{image, pattern};
use flotilla_agent::driver::conformance::{
    metadata_xml, run_migration_suite, MigrationFixture, TestDomain,
};
use flotilla_agent::driver::disks::{DiskRef, Disks, DisksConfig, QemuImgDisks};
use flotilla_agent::driver::libvirt::LibvirtHypervisor;
use flotilla_agent::driver::{Hypervisor, PowerState};
use flotilla_agent::render::domain::domain_name;
use flotilla_agent::render::qemu_img::DiskFormat;
use flotilla_agent::service::{self, Drivers, Running};
use flotilla_agent::testbed::{self as two_hosts, run, TwoHosts};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_command::Payload;
use flotilla_proto::v1::controller_message::Msg as Out;
use support::libvirtd::{guest, wait_until};
use support::{wait_for, FakeController};
use uuid::Uuid;

const IMAGE: &str = "img-counter";
const WAIT: Duration = Duration::from_secs(240);

/// Renders bootable TCG domains for the conformance suite, disks made on demand per host.
struct Renderer {
    kernel: PathBuf,
    initrd: PathBuf,
    disks: QemuImgDisks,
    base: PathBuf,
}

impl Renderer {
    fn render(&self, d: &TestDomain) -> String {
        let id = d.server_id;
        let disk = self
            .disks
            .create_overlay(
                DiskRef::root(id, d.generation),
                &self.base,
                DiskFormat::Raw,
                1,
            )
            .expect("overlay")
            .path;
        let log = d
            .console_log
            .as_ref()
            .map(|p| format!("<log file='{}' append='on'/>", p.display()))
            .unwrap_or_default();
        format!(
            "<domain type='qemu'>\
               <name>flotilla-{id}</name><uuid>{id}</uuid>{metadata}\
               <memory unit='MiB'>128</memory><vcpu>1</vcpu>\
               <os><type arch='x86_64' machine='pc'>hvm</type>\
                 <kernel>{kernel}</kernel><initrd>{initrd}</initrd>\
                 <cmdline>console=ttyS0 quiet</cmdline></os>\
               <features><acpi/></features>\
               <devices>\
                 <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                   <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
                 <serial type='pty'>{log}<target port='0'/></serial>\
                 <console type='pty'><target type='serial' port='0'/></console>\
               </devices>\
             </domain>",
            metadata = metadata_xml(id, d.generation),
            kernel = self.kernel.display(),
            initrd = self.initrd.display(),
            disk = disk.display(),
        )
    }
}

fn disks_with_base(dir: &Path, bytes: &[u8]) -> (QemuImgDisks, PathBuf) {
    let disks = QemuImgDisks::new(DisksConfig::under(dir)).unwrap();
    let base = disks
        .ensure_base(&image(bytes, DiskFormat::Raw), &mut || {
            Ok(std::io::Cursor::new(bytes.to_vec()))
        })
        .unwrap();
    (disks, base)
}

fn virsh(uri: &str, args: &[&str]) -> String {
    let mut all = vec!["-c", uri];
    all.extend_from_slice(args);
    run("virsh", &all)
}

/// Tick numbers printed on a console log, in order.
fn ticks(log: &Path) -> Vec<u64> {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_live_migration_between_two_libvirt_hosts() {
    if let Some(reason) = two_hosts::missing_prerequisite() {
        eprintln!("SKIP migration_real: {reason}");
        return;
    }
    // The agents' own account of what they do, with the test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("flotilla_agent=debug"))
        .with_test_writer()
        .try_init();
    let (kernel, initrd) = guest();
    let root = tempfile::Builder::new()
        .prefix("flotilla-migration-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let mut hosts = TwoHosts::start(&root.path().join("hosts"));
    let hv_a = hosts.a().connect();
    let hv_b = hosts.b().connect();
    eprintln!("timing: two hosts up {:.2?}", started.elapsed());
    let (a_uri, b_uri, b_tcp) = (hosts.a().uri(), hosts.b().uri(), hosts.b().tcp_uri());

    // 1. The driver's migration suite.
    let base_bytes = pattern(8 << 20, 42);
    let (disks_a, base_a) = disks_with_base(&root.path().join("suite-a"), &base_bytes);
    let (disks_b, base_b) = disks_with_base(&root.path().join("suite-b"), &base_bytes);
    let src = Renderer {
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        disks: disks_a,
        base: base_a,
    };
    let dst = Renderer {
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        disks: disks_b,
        base: base_b,
    };
    let consoles = root.path().join("consoles");
    std::fs::create_dir_all(&consoles).unwrap();
    tokio::task::block_in_place(|| {
        let render_source = |d: &TestDomain| src.render(d);
        let render_dest = |d: &TestDomain| dst.render(d);
        let slow = |name: &str| {
            virsh(&a_uri, &["migrate-setspeed", name, "1"]);
        };
        let suite = Instant::now();
        run_migration_suite(&MigrationFixture {
            source: &hv_a,
            dest: &hv_b,
            dest_uri: b_tcp.clone(),
            unreachable_uri: "qemu+tcp://127.0.0.1:1/system".into(),
            render_source: &render_source,
            render_dest: &render_dest,
            slow_down: &slow,
            timeout: Duration::from_secs(120),
            dir: consoles.clone(),
        });
        eprintln!(
            "timing: migration conformance suite {:.2?}",
            suite.elapsed()
        );
    });

    // 2. Two agents.
    let a = Agent::start(
        &root.path().join("agent-a"),
        "host-a",
        &hosts.hosts[0].address,
        &a_uri,
        &kernel,
        &initrd,
    )
    .await;
    let b = Agent::start(
        &root.path().join("agent-b"),
        "host-b",
        &hosts.hosts[1].address,
        &b_uri,
        &kernel,
        &initrd,
    )
    .await;
    let id = Uuid::new_v4();
    let sid = id.to_string();
    let name = domain_name(&sid);

    // The root disk made beforehand (the agent adopts it), with data only in the overlay.
    let (disks, base) = disks_with_base(&a.state, &base_bytes);
    let overlay = disks
        .create_overlay(DiskRef::root(id, 1), &base, DiskFormat::Raw, 1)
        .unwrap()
        .path;
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 2M 64k",
            overlay.to_str().unwrap(),
        ],
    );

    a.ctl.set_desired(vec![a.server(id, 1)]).await;
    a.ctl.wait_running(&sid, 1).await;
    let console_a = a.state.join(format!("console/{sid}.log"));
    let boot = Instant::now();
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(120), "tick 3 on A's console", || {
            (ticks(&console_a).len() >= 3).then_some(())
        })
    });
    eprintln!("timing: start to tick 3 on A {:.2?}", boot.elapsed());

    // B prepares (base fetched, empty overlay on the same base, XML for generation 2).
    b.ctl.set_desired(vec![b.incoming(id, 2)]).await;
    let xml = b.prepare(id, "op-cut").await;
    assert!(
        xml.contains(&b.state.join("disks").display().to_string()),
        "{xml}"
    );

    // 2a. The network to B is cut mid-migration; an 8 s deadline aborts it.
    virsh(&a_uri, &["migrate-setspeed", &name, "4"]);
    let cut_started = Instant::now();
    a.command(
        "op-cut",
        "live_migrate",
        live(&hosts.hosts[1].address, id, &xml, 8),
    )
    .await;
    wait_for(WAIT, "a progress report", || async {
        a.progress("op-cut").ok_or_else(|| "none".to_owned())
    })
    .await;
    hosts.b().set_link(false);
    let r = a.finished("op-cut", "live_migrate").await;
    let cut_answer = cut_started.elapsed();
    eprintln!(
        "timing: cut migration answered after {cut_answer:.2?}: {}",
        r.message
    );
    assert!(!r.ok, "{r:?}");
    assert_eq!(
        r.message,
        "live migration did not finish within 8 s; aborted, the server keeps running on host-a"
    );
    assert!(cut_answer < Duration::from_secs(8 + 20), "{cut_answer:?}");
    let info = hv_a.info(&name).unwrap();
    assert_eq!(info.power, PowerState::Running, "{info:?}");
    // With storage being copied, the guest's disk writes go through the mirror to B: while B is
    // unreachable they can stall until QEMU gives the mirror up, and this guest's counter loop
    // writes to its disk every second. So the network comes back first; the counter must then
    // go on (the same run: no reboot, nothing lost).
    let after_cut = *ticks(&console_a).last().unwrap();
    hosts.b().set_link(true);
    tokio::task::block_in_place(|| {
        wait_until(
            Duration::from_secs(120),
            "the counter to go on at A",
            || (ticks(&console_a).last() > Some(&after_cut)).then_some(()),
        )
    });
    let boots = std::fs::read_to_string(&console_a)
        .unwrap_or_default()
        .matches("GUEST-BOOTED")
        .count();
    assert!(boots <= 1, "the guest rebooted on A ({boots} boots)");
    b.command(
        "op-cut",
        "cleanup",
        Payload::DestroyStale(pb::DestroyStaleCommand {
            server_id: sid.clone(),
            current_generation: 1,
        }),
    )
    .await;
    let r = b.finished("op-cut", "cleanup").await;
    assert!(r.ok, "{r:?}");
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(60), "B without the domain", || {
            hv_b.info(&name)
                .is_err_and(|e| e.is_not_found())
                .then_some(())
        })
    });
    assert!(
        !b.state.join(format!("disks/{sid}/2")).exists(),
        "B's disks deleted"
    );

    // 2b. Live migration with copied storage.
    virsh(&a_uri, &["migrate-setspeed", &name, "8796093022207"]);
    let xml = b.prepare(id, "op-live").await;
    let before = *ticks(&console_a).last().unwrap();
    let migrating = Instant::now();
    a.command(
        "op-live",
        "live_migrate",
        live(&hosts.hosts[1].address, id, &xml, 120),
    )
    .await;
    let r = a.finished("op-live", "live_migrate").await;
    let took = migrating.elapsed();
    assert!(
        r.ok,
        "{r:?}\n{}\n{}",
        hosts.hosts[0].logs(),
        hosts.hosts[1].logs()
    );
    eprintln!(
        "timing: live migration with storage (agent step) {took:.2?}: {}",
        r.message
    );
    let jobinfo = virsh(&b_uri, &["domjobinfo", &name, "--completed"]);
    eprintln!("completed job at B:\n{jobinfo}");
    assert!(hv_a.info(&name).unwrap_err().is_not_found(), "gone from A");
    let info = hv_b.info(&name).unwrap();
    assert_eq!(
        (info.power, info.server.unwrap().generation),
        (PowerState::Running, 2)
    );
    let console_b = b.state.join(format!("console/{sid}.log"));
    let at_b = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(30), "ticks on B's console", || {
            let t = ticks(&console_b);
            (t.len() >= 2).then_some(t)
        })
    });
    let text_b = String::from_utf8_lossy(&std::fs::read(&console_b).unwrap()).into_owned();
    eprintln!("counter: last tick at A before migrating {before}, ticks at B {at_b:?}");
    assert!(
        at_b[0] > before,
        "the counter continued ({before} then {at_b:?})"
    );
    assert!(at_b.windows(2).all(|w| w[1] > w[0]), "{at_b:?}");
    // No gap either: B goes on where A's console stopped.
    let a_last = *ticks(&console_a).last().unwrap();
    assert!(
        at_b[0] >= a_last && at_b[0] <= a_last + 2,
        "A stopped at tick {a_last}, B started at {}",
        at_b[0]
    );
    assert!(!text_b.contains("GUEST-BOOTED"), "no reboot at B: {text_b}");

    // Ownership moves: A cleans up, B adopts the running domain.
    a.ctl.set_desired(vec![]).await;
    b.ctl.set_desired(vec![b.server(id, 2)]).await;
    b.ctl.wait_running(&sid, 2).await;
    wait_for(WAIT, "A's disks removed", || async {
        (!a.state.join(format!("disks/{sid}")).exists())
            .then_some(())
            .ok_or_else(|| "still there".to_owned())
    })
    .await;
    // Data written before the migration (only in A's overlay) is in B's copy.
    let overlay_b = b.state.join(format!("disks/{sid}/2/root.qcow2"));
    let read = run(
        "qemu-io",
        &[
            "-r",
            "-U",
            "-f",
            "qcow2",
            "-c",
            "read -P 0x5a 2M 64k",
            overlay_b.to_str().unwrap(),
        ],
    );
    assert!(
        read.contains("read 65536/65536") && !read.contains("fail"),
        "{read}"
    );
    assert_eq!(hv_b.info(&name).unwrap().power, PowerState::Running);

    // 2c. Cold migration back to A (generation 3): shut down at B, started paused, storage
    // copied; it arrives paused and A's planner resumes it once ownership moves (a cold boot).
    a.ctl.set_desired(vec![a.incoming(id, 3)]).await;
    let xml = a.prepare_generation(id, 3, "op-cold").await;
    let boots_before = String::from_utf8_lossy(&std::fs::read(&console_a).unwrap())
        .matches("GUEST-BOOTED")
        .count();
    let cold = Instant::now();
    b.command(
        "op-cold",
        "migrate",
        Payload::Migrate(pb::MigrateCommand {
            server_id: sid.clone(),
            destination_host: "host-a".into(),
            destination_address: hosts.hosts[0].address.clone(),
            destination_domain_xml: xml,
            destination_generation: 3,
            timeout_seconds: 120,
        }),
    )
    .await;
    let r = b.finished("op-cold", "migrate").await;
    assert!(r.ok, "{r:?}");
    eprintln!(
        "timing: cold migration (shutdown 2 s timeout + paused copy) {:.2?}: {}",
        cold.elapsed(),
        r.message
    );
    assert!(hv_b.info(&name).unwrap_err().is_not_found(), "gone from B");
    let info = hv_a.info(&name).unwrap();
    assert_eq!(
        (info.power, info.server.unwrap().generation),
        (PowerState::Paused, 3),
        "{info:?}"
    );
    b.ctl.set_desired(vec![]).await;
    a.ctl.set_desired(vec![a.server(id, 3)]).await;
    a.ctl.wait_running(&sid, 3).await;
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(120), "a cold boot on A", || {
            let text = String::from_utf8_lossy(&std::fs::read(&console_a).unwrap()).into_owned();
            (text.matches("GUEST-BOOTED").count() > boots_before).then_some(())
        })
    });
    let overlay_a = a.state.join(format!("disks/{sid}/3/root.qcow2"));
    let read = run(
        "qemu-io",
        &[
            "-r",
            "-U",
            "-f",
            "qcow2",
            "-c",
            "read -P 0x5a 2M 64k",
            overlay_a.to_str().unwrap(),
        ],
    );
    assert!(
        read.contains("read 65536/65536") && !read.contains("fail"),
        "{read}"
    );
    wait_for(WAIT, "B's disks removed", || async {
        (!b.state.join(format!("disks/{sid}")).exists())
            .then_some(())
            .ok_or_else(|| "still there".to_owned())
    })
    .await;
    drop((a, b));
    drop(hosts);
}

/// `LiveMigrate` of `id` to B.
fn live(address: &str, id: Uuid, xml: &str, timeout_seconds: u32) -> Payload {
    Payload::LiveMigrate(pb::LiveMigrateCommand {
        server_id: id.to_string(),
        destination_host: "host-b".into(),
        destination_address: address.into(),
        block_migration: true,
        timeout_seconds,
        destination_generation: 2,
        destination_domain_xml: xml.into(),
    })
}

/// A real agent with its fake controller.
struct Agent {
    ctl: FakeController,
    state: PathBuf,
    image_sha: String,
    _agent: Running,
}

impl Agent {
    async fn start(
        state: &Path,
        name: &str,
        address: &str,
        uri: &str,
        kernel: &Path,
        initrd: &Path,
    ) -> Agent {
        std::fs::create_dir_all(state).unwrap();
        let ctl = FakeController::start().await;
        let image_sha = ctl.add_image(IMAGE, pattern(8 << 20, 42));
        let text = format!(
            "hostname = \"{name}\"\naddress = \"{address}\"\ncontrollers = [\"{}\"]\n\
             libvirt_uri = \"{uri}\"\nstate_dir = \"{}\"\ndomain_type = \"qemu\"\n\
             disk_cache = \"writeback\"\nreconcile_interval_secs = 1\nshutdown_timeout_secs = 2\n\
             [kernels.counter]\nkernel = \"{}\"\ninitrd = \"{}\"\ncmdline = \"console=ttyS0 quiet\"\n\
             [migration]\nprogress_interval_ms = 250\n",
            ctl.address,
            state.display(),
            kernel.display(),
            initrd.display(),
        );
        let facts = HostFacts {
            hostname: name.into(),
            vcpus: 2,
            ram_mib: 2048,
            disk_gib: 10,
            has_kvm: false,
            cpu_model: "TCG".into(),
        };
        let config = AgentConfig::parse(&text)
            .unwrap()
            .validate_with(&facts)
            .unwrap();
        let hv = LibvirtHypervisor::connect(uri).unwrap();
        let disks = QemuImgDisks::new(DisksConfig::under(state)).unwrap();
        let agent = service::start(
            &config,
            Drivers {
                hv: Arc::new(hv),
                disks: Arc::new(disks),
                hypervisor_version: "QEMU".into(),
            },
        );
        Agent {
            ctl,
            state: state.to_path_buf(),
            image_sha,
            _agent: agent,
        }
    }

    fn server(&self, id: Uuid, generation: u64) -> pb::DesiredServer {
        pb::DesiredServer {
            id: id.to_string(),
            name: "counter".into(),
            project_id: "p".into(),
            vcpus: 1,
            ram_mib: 128,
            root_disk_gib: 1,
            image_id: IMAGE.into(),
            image_sha256: self.image_sha.clone(),
            image_size_bytes: 8 << 20,
            image_disk_format: pb::ImageDiskFormat::Raw as i32,
            placement_generation: generation,
            power_state: pb::ServerPowerState::Running as i32,
            extra_specs: [("flotilla:kernel".to_owned(), "counter".to_owned())].into(),
            ..Default::default()
        }
    }

    fn incoming(&self, id: Uuid, generation: u64) -> pb::DesiredServer {
        pb::DesiredServer {
            incoming_migration: true,
            ..self.server(id, generation)
        }
    }

    async fn command(&self, operation_id: &str, step: &str, payload: Payload) {
        self.ctl
            .send(Out::Command(pb::AgentCommand {
                operation_id: operation_id.into(),
                step: step.into(),
                payload: Some(payload),
            }))
            .await;
    }

    async fn prepare(&self, id: Uuid, operation_id: &str) -> String {
        self.prepare_generation(id, 2, operation_id).await
    }

    async fn prepare_generation(&self, id: Uuid, generation: u64, operation_id: &str) -> String {
        let me = self;
        me.command(
            operation_id,
            "prepare",
            Payload::PrepareMigration(pb::PrepareMigrationCommand {
                server: Some(me.incoming(id, generation)),
                source_host: "host-a".into(),
                source_address: String::new(),
                live: true,
            }),
        )
        .await;
        let r = me.finished(operation_id, "prepare").await;
        assert!(r.ok, "{r:?}");
        r.message
    }

    async fn finished(&self, operation_id: &str, step: &str) -> pb::AgentStepResult {
        wait_for(WAIT, "a finished step result", || async {
            self.ctl
                .with(|c| {
                    c.step_results
                        .iter()
                        .find(|r| r.operation_id == operation_id && r.step == step && r.finished)
                        .cloned()
                })
                .ok_or_else(|| "not yet".to_owned())
        })
        .await
    }

    fn progress(&self, operation_id: &str) -> Option<pb::OperationProgress> {
        self.ctl.with(|c| {
            c.step_results
                .iter()
                .filter(|r| r.operation_id == operation_id && !r.finished)
                .find_map(|r| r.progress.clone())
        })
    }
}

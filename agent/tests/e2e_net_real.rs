//! Real end to end for tenant networking: an in-process controller, two `flotilla-agent`
//! processes, each inside its compute host (network + mount namespace with its own libvirtd
//! and Open vSwitch, VXLAN underlay on `br-phy`, an external segment on `br-ex`; see
//! [`flotilla_agent::testbed`]), and real guests (`tests/data/make-guest.sh`: DHCP on eth0, an
//! echo server on TCP 7, a shell on the serial console). Through the gRPC API:
//!
//! 1. two guests of one tenant on different hosts get their ports' addresses by DHCP and ping
//!    each other over VXLAN; a guest of another tenant (same CIDR, own network) reaches neither;
//! 2. a floating IP makes a guest reachable from the external namespace once a security group
//!    rule allows it; a rule for TCP 7 opens the echo port, deleting it closes it again;
//! 3. the guest is live-migrated to the other host and keeps its address, its floating IP and
//!    its connectivity;
//! 4. that host dies: both guests are evacuated to the first host, get their addresses again
//!    and reach each other, and the floating IP answers there.
//!
//! Prints `timing:` lines. Skipped, with the reason printed, when not root or tools are
//! missing (CI runs it as root).
mod support;

use std::fs;
use std::time::{Duration, Instant};

use flotilla_agent::testbed::{self as two_hosts, find_tool, TwoHosts};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::identity_service_client::IdentityServiceClient;
use flotilla_proto::v1::network_service_client::NetworkServiceClient;
use flotilla_proto::v1::server_service_client::ServerServiceClient;
use support::e2e::*;
use support::libvirtd::guest;
use support::wait_for;

const BOOT: Duration = Duration::from_secs(180);
const NET: Duration = Duration::from_secs(90);

/// The `[network]` part of a test host's agent config.
fn network_config(host: &two_hosts::Host) -> String {
    format!(
        "[network]\ntunnel_local_ip = \"{tunnel}\"\novs_rundir = \"{ovs}\"\n\n\
         [network.bridge_mappings]\nexternal = \"br-ex\"\n",
        tunnel = host.tunnel_address.as_deref().unwrap(),
        ovs = host.ovs_dir().display(),
    )
}

impl Api {
    async fn net<T, F, Fut>(&self, what: &str, rpc: F) -> T
    where
        F: Fn(NetworkServiceClient<tonic::transport::Channel>, String) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(|ch, t| rpc(NetworkServiceClient::new(ch), t))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    async fn network(&self, name: &str, external: bool) -> pb::Network {
        let req = pb::CreateNetworkRequest {
            request_id: request_id(),
            name: name.into(),
            external,
            network_type: if external {
                pb::NetworkType::Flat as i32
            } else {
                0
            },
            physical_network: if external {
                "external".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        self.net("create network", |mut c, t| {
            let req = authed(req.clone(), &t);
            async move { c.create_network(req).await }
        })
        .await
    }

    async fn subnet(&self, network: &str, cidr: &str, pool: Option<(&str, &str)>) -> pb::Subnet {
        let req = pb::CreateSubnetRequest {
            request_id: request_id(),
            network: network.into(),
            name: format!("{network}-v4"),
            cidr: cidr.into(),
            allocation_pools: pool
                .map(|(start, end)| pb::SubnetAllocationPool {
                    start: start.into(),
                    end: end.into(),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        self.net("create subnet", |mut c, t| {
            let req = authed(req.clone(), &t);
            async move { c.create_subnet(req).await }
        })
        .await
    }

    async fn rule(
        &self,
        direction: pb::SecurityGroupRuleDirection,
        protocol: &str,
        port: Option<u32>,
    ) -> pb::SecurityGroupRule {
        let req = pb::CreateSecurityGroupRuleRequest {
            request_id: request_id(),
            security_group: "default".into(),
            direction: direction as i32,
            ethertype: pb::SecurityGroupRuleEthertype::Ipv4 as i32,
            protocol: protocol.into(),
            port_range_min: port,
            port_range_max: port,
            remote_ip_prefix: "0.0.0.0/0".into(),
            ..Default::default()
        };
        self.net("create rule", |mut c, t| {
            let req = authed(req.clone(), &t);
            async move { c.create_security_group_rule(req).await }
        })
        .await
    }

    async fn delete_rule(&self, id: &str) {
        let req = pb::DeleteSecurityGroupRuleRequest {
            request_id: request_id(),
            rule: id.into(),
        };
        self.net("delete rule", |mut c, t| {
            let req = authed(req.clone(), &t);
            async move { c.delete_security_group_rule(req).await }
        })
        .await;
    }

    async fn boot(
        &self,
        name: &str,
        image: &str,
        network: &str,
        host: &str,
        fixed_ip: &str,
    ) -> String {
        let req = pb::CreateServerRequest {
            request_id: request_id(),
            name: name.into(),
            flavor: "e2e".into(),
            image: image.into(),
            host: host.into(),
            networks: vec![pb::ServerNetworkRequest {
                target: Some(pb::server_network_request::Target::Network(network.into())),
                fixed_ip: fixed_ip.into(),
            }],
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = authed(req.clone(), &t);
            async move { ServerServiceClient::new(ch).create_server(req).await }
        })
        .await
        .expect("create server")
        .servers[0]
            .id
            .clone()
    }

    /// The server's fixed address, once the controller has one.
    async fn fixed_ip(&self, id: &str) -> String {
        let s = self.server(id).await.expect("server");
        s.addresses
            .iter()
            .find(|a| a.address_type() == pb::ServerAddressType::Fixed)
            .map(|a| a.ip.clone())
            .unwrap_or_else(|| panic!("no fixed address: {s:?}"))
    }

    async fn add_floating_ip(&self, server: &str) -> String {
        let req = pb::AddFloatingIpRequest {
            request_id: request_id(),
            server: server.into(),
            ..Default::default()
        };
        self.call(|ch, t| {
            let req = authed(req.clone(), &t);
            async move { ServerServiceClient::new(ch).add_floating_ip(req).await }
        })
        .await
        .expect("add floating ip")
        .floating_ip_address
    }

    /// Waits for `needle` on the server's console.
    async fn wait_console(&self, id: &str, needle: &str, within: Duration) -> String {
        wait_for(within, needle, || async {
            let text = self.console(id).await;
            text.contains(needle)
                .then_some(text.clone())
                .ok_or(format!("...{}", tail(&text, 300)))
        })
        .await
    }

    async fn live_migrate_and_wait(&self, id: &str, host: &str) -> pb::Operation {
        let op = self.live_migrate(id, host, 120).await;
        self.wait_operation(&op, BOOT).await
    }
}

/// The guest's serial console pty, held open for the whole test: QEMU only reads what is
/// typed while the pty is connected, and what the guest prints must be drained (its output is
/// on the console log anyway) or it would fill the pty and stall the guest's serial port.
struct Console {
    pty: fs::File,
}

impl Console {
    fn open(host: &two_hosts::Host, server_id: &str) -> Console {
        let out = host.exec(
            "virsh",
            &[
                "-c",
                "qemu:///system",
                "dumpxml",
                &format!("flotilla-{server_id}"),
            ],
        );
        let xml = String::from_utf8_lossy(&out.stdout);
        let path = xml
            .split("<serial type='pty'>")
            .nth(1)
            .and_then(|s| s.split("<source path='").nth(1))
            .and_then(|s| s.split('\'').next())
            .unwrap_or_else(|| panic!("no serial pty in the domain XML: {xml}"))
            .to_string();
        let pty = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("the guest's pty");
        let mut drain = pty.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(std::io::Read::read(&mut drain, &mut buf), Ok(n) if n > 0) {}
        });
        Console { pty }
    }

    /// Types a command (the guest's console shell runs it).
    fn type_line(&mut self, command: &str) {
        use std::io::Write;
        writeln!(self.pty, "{command}").expect("write to the pty");
    }
}

/// From the guest: `ping` the address until it answers; the marker says how it went.
async fn guest_pings(api: &Api, console: &mut Console, id: &str, ip: &str, marker: &str) -> bool {
    // The console echoes the typed line: the outcome is a line of its own, never in the echo.
    let command = format!(
        "if ping -c 3 -W 2 {ip} >/dev/null; then echo {marker}-\"OK\"; else echo {marker}-\"FAIL\"; fi"
    );
    let (ok, fail) = (format!("{marker}-OK"), format!("{marker}-FAIL"));
    let deadline = Instant::now() + NET;
    let mut last = String::new();
    while Instant::now() < deadline {
        // What is typed before the guest's console shell reads (a guest still booting) is
        // lost: type again until an outcome shows.
        console.type_line(&command);
        let typed = Instant::now();
        while typed.elapsed() < Duration::from_secs(10) {
            let text = api.console(id).await;
            if let Some(l) = text.lines().map(str::trim).find(|l| *l == ok || *l == fail) {
                return l == ok;
            }
            last = tail(&text, 200).to_string();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("no outcome of {marker} on the console: ...{last}");
}

/// From the external namespace: does `ip` answer a ping?
fn external_pings(ext: &two_hosts::External, ip: &str) -> bool {
    ext.exec("ping", &["-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// From the external namespace: does TCP `ip`:7 echo a line back?
fn external_echo(ext: &two_hosts::External, ip: &str) -> bool {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/7 || exit 1; echo flotilla-echo >&3; timeout 3 head -n 1 <&3"
    );
    let out = ext.exec("timeout", &["5", "bash", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).contains("flotilla-echo")
}

fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_networks_dhcp_vxlan_isolation_floating_ips_security_groups_and_migration() {
    if let Some(why) = two_hosts::missing_prerequisite() {
        eprintln!("skipping: {why}");
        return;
    }
    for t in [
        "ovs-vswitchd",
        "ovsdb-server",
        "nsenter",
        "nft",
        "arping",
        "ping",
    ] {
        if find_tool(t).is_none() {
            eprintln!("skipping: {t} is not installed (run deploy/install-deps.sh as root)");
            return;
        }
    }
    let (kernel, initrd) = guest();
    let root = tempfile::Builder::new()
        .prefix("flotilla-e2e-net-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = root.path();
    let mut hosts = TwoHosts::start_with_networking(&root.join("hosts"));
    hosts.a().connect();
    hosts.b().connect();
    hosts.check_local_routes();
    let bridge_ip = hosts.hosts[0]
        .address
        .rsplit_once('.')
        .map(|(p, _)| format!("{p}.254"))
        .unwrap();
    let ctl = Controller::start_with_peer(root, &["hA", "hB"], "", &bridge_ip).await;
    let api = &ctl.api;
    let images = root.join("images");
    fs::create_dir_all(&images).unwrap();
    let image = api
        .upload_image_as(
            "guest-disk",
            qcow2(&images, "a.qcow2", "64M"),
            pb::ImageVisibility::Public,
        )
        .await;
    api.create_guest_flavor("e2e").await;
    let (config_a, _) = agent_config(
        root,
        &hosts.hosts[0],
        &ctl,
        &kernel,
        &initrd,
        &network_config(&hosts.hosts[0]),
    );
    let (config_b, _) = agent_config(
        root,
        &hosts.hosts[1],
        &ctl,
        &kernel,
        &initrd,
        &network_config(&hosts.hosts[1]),
    );
    let _agent_a = Agent::start_in(hosts.hosts[0].pid(), &config_a, &root.join("agent-hA.log"));
    let _agent_b = Agent::start_in(hosts.hosts[1].pid(), &config_b, &root.join("agent-hB.log"));
    api.wait_host("hA", pb::HostState::Up, NET).await;
    api.wait_host("hB", pb::HostState::Up, NET).await;

    // The external network (admin) and a tenant network.
    let ext = hosts.external.as_ref().unwrap();
    let ext_prefix = ext.cidr.trim_end_matches(".0/24").to_string();
    let ext_net = api.network("public", true).await;
    api.subnet(
        &ext_net.id,
        &ext.cidr,
        Some((&format!("{ext_prefix}.10"), &format!("{ext_prefix}.50"))),
    )
    .await;
    api.network("tenant-a", false).await;
    api.subnet("tenant-a", "10.60.0.0/24", None).await;

    // Another tenant with the same CIDR.
    let other = other_tenant(api).await;
    other.network("tenant-b", false).await;
    other.subnet("tenant-b", "10.60.0.0/24", None).await;

    let started = Instant::now();
    let g1 = api.boot("g1", &image.id, "tenant-a", "hA", "").await;
    let g2 = api.boot("g2", &image.id, "tenant-a", "hB", "").await;
    let g3 = other
        .boot("g3", &image.id, "tenant-b", "hA", "10.60.0.50")
        .await;
    let (ip1, ip2, ip3) = (
        api.fixed_ip(&g1).await,
        api.fixed_ip(&g2).await,
        other.fixed_ip(&g3).await,
    );
    for (a, id, ip) in [(api, &g1, &ip1), (api, &g2, &ip2), (&other, &g3, &ip3)] {
        a.wait_status(id, pb::ServerStatus::Active, BOOT).await;
        a.wait_console(id, &format!("DHCP-BOUND {ip}"), BOOT).await;
    }
    eprintln!(
        "timing: three guests booted with DHCP addresses in {:.1?}",
        started.elapsed()
    );

    // 1. Over VXLAN between the hosts, and tenant isolation.
    let mut con1 = Console::open(&hosts.hosts[0], &g1);
    let mut con2 = Console::open(&hosts.hosts[1], &g2);
    let mut con3 = Console::open(&hosts.hosts[0], &g3);
    assert!(
        guest_pings(api, &mut con1, &g1, &ip2, "G1-TO-G2").await,
        "g1 (hA) cannot ping g2 (hB)"
    );
    assert!(
        guest_pings(api, &mut con2, &g2, &ip1, "G2-TO-G1").await,
        "g2 cannot ping g1"
    );
    assert!(
        !guest_pings(&other, &mut con3, &g3, &ip1, "G3-TO-G1").await,
        "another tenant reached g1"
    );
    assert!(
        !guest_pings(&other, &mut con3, &g3, &ip2, "G3-TO-G2").await,
        "another tenant reached g2"
    );

    // 2. A floating IP; the default group lets nothing in from outside until a rule does.
    let fip = api.add_floating_ip(&g1).await;
    assert!(
        !eventually(Duration::from_secs(8), || external_pings(ext, &fip)),
        "the default group let ICMP in"
    );
    let icmp = api
        .rule(pb::SecurityGroupRuleDirection::Ingress, "icmp", None)
        .await;
    assert!(
        eventually(NET, || external_pings(ext, &fip)),
        "the floating IP does not answer"
    );
    assert!(!external_echo(ext, &fip), "TCP 7 open without a rule");
    let tcp7 = api
        .rule(pb::SecurityGroupRuleDirection::Ingress, "tcp", Some(7))
        .await;
    assert!(
        eventually(NET, || external_echo(ext, &fip)),
        "the TCP 7 rule did not open the port"
    );
    api.delete_rule(&tcp7.id).await;
    assert!(
        eventually(NET, || !external_echo(ext, &fip)),
        "deleting the rule did not close TCP 7"
    );

    // 3. Live migration keeps address, floating IP and connectivity.
    let started = Instant::now();
    let op = api.live_migrate_and_wait(&g1, "hB").await;
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{op:?}");
    eprintln!(
        "timing: live migration with a port {:.1?}",
        started.elapsed()
    );
    assert_eq!(api.fixed_ip(&g1).await, ip1);
    // Its QEMU (and console pty) is on B now.
    let mut con1 = Console::open(&hosts.hosts[1], &g1);
    assert!(
        eventually(NET, || external_pings(ext, &fip)),
        "the floating IP is lost after the migration"
    );
    assert!(
        guest_pings(api, &mut con2, &g2, &ip1, "G2-TO-G1-AFTER").await,
        "g2 cannot ping g1 after the migration"
    );
    assert!(
        guest_pings(api, &mut con1, &g1, &ip2, "G1-TO-G2-AFTER").await,
        "g1 cannot ping g2 after the migration"
    );

    // 4. Host B dies with both guests: evacuated to A, they keep their addresses (DHCP gives the
    //    rebuilt guests their ports' addresses again) and the floating IP follows.
    let died = Instant::now();
    hosts.hosts[1].power_off();
    api.wait_host("hB", pb::HostState::Down, NET).await;
    let job = api.evacuate_host("hB").await;
    let done = api.wait_operation(&job.operation_id, BOOT).await;
    assert_eq!(done.state(), pb::OperationState::Succeeded, "{done:?}");
    for id in [&g1, &g2] {
        let s = api.wait_status(id, pb::ServerStatus::Active, BOOT).await;
        assert_eq!(s.host, "hA");
    }
    assert_eq!(
        (api.fixed_ip(&g1).await, api.fixed_ip(&g2).await),
        (ip1.clone(), ip2.clone())
    );
    let mut con1 = Console::open(&hosts.hosts[0], &g1);
    let mut con2 = Console::open(&hosts.hosts[0], &g2);
    assert!(
        guest_pings(api, &mut con1, &g1, &ip2, "G1-TO-G2-EVACUATED").await,
        "g1 cannot ping g2 after the evacuation"
    );
    assert!(
        guest_pings(api, &mut con2, &g2, &ip1, "G2-TO-G1-EVACUATED").await,
        "g2 cannot ping g1 after the evacuation"
    );
    assert!(
        eventually(NET, || external_pings(ext, &fip)),
        "the floating IP is lost after the evacuation"
    );
    eprintln!(
        "timing: host death to both guests answering on A {:.1?}",
        died.elapsed()
    );
    let _ = icmp;
}

/// A second project ("other") where admin also has a role; an Api scoped to it.
async fn other_tenant(api: &Api) -> Api {
    let project = pb::CreateProjectRequest {
        request_id: request_id(),
        name: "other".into(),
        ..Default::default()
    };
    api.call(|ch, t| {
        let req = authed(project.clone(), &t);
        async move { IdentityServiceClient::new(ch).create_project(req).await }
    })
    .await
    .expect("create project");
    let role = pb::AddRoleAssignmentRequest {
        request_id: request_id(),
        user: "admin".into(),
        project: "other".into(),
        role: "member".into(),
    };
    api.call(|ch, t| {
        let req = authed(role.clone(), &t);
        async move {
            IdentityServiceClient::new(ch)
                .add_role_assignment(req)
                .await
        }
    })
    .await
    .expect("role");
    let login = pb::LoginRequest {
        user: "admin".into(),
        password: PASSWORD.into(),
        project: "other".into(),
    };
    let token = IdentityServiceClient::new(api.channel.clone())
        .login(login)
        .await
        .expect("login to other")
        .into_inner()
        .token;
    Api {
        channel: api.channel.clone(),
        token,
    }
}

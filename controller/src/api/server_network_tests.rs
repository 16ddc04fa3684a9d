//! Tenant isolation of servers on networks at the API: what a create may attach, by principal.
//! Another project's private network or port is not found; external networks are for admins;
//! a port in use is refused naming its server; ports and fixed IPs go to one server only.
use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::v1 as pb;
use pb::server_network_request::Target;
use tonic::Code;

use super::authz::{Principal, TokenInfo};
use super::desired_tests::{cluster, network, subnet, Sim};
use super::server_network::nic_templates;
use crate::state::*;

fn member(project: &str) -> Principal {
    Principal {
        name: format!("member-of-{project}"),
        user_id: format!("u-{project}"),
        admin: false,
        projects: BTreeMap::from([(project.to_owned(), BTreeSet::from([Role::Member]))]),
        token: Some(TokenInfo {
            token_id: "t".into(),
            project_id: project.into(),
            expires_at_ms: i64::MAX,
        }),
    }
}

fn on(network: &str, fixed_ip: &str) -> pb::ServerNetworkRequest {
    pb::ServerNetworkRequest {
        target: Some(Target::Network(network.into())),
        fixed_ip: fixed_ip.into(),
    }
}

fn port(port: &str) -> pb::ServerNetworkRequest {
    pb::ServerNetworkRequest {
        target: Some(Target::Port(port.into())),
        fixed_ip: String::new(),
    }
}

/// `cluster()` (project p: private n1, external ext, server a on port pa) plus project q, a
/// shared network of p and an unused port `free` of p.
fn world() -> Sim {
    let mut sim = cluster();
    sim.ok(Command::CreateProject {
        id: "q".into(),
        name: "q".into(),
        description: String::new(),
        enabled: true,
        properties: BTreeMap::new(),
    });
    let mut shared = network("shared", NetworkType::Vxlan, "", false);
    if let NetCommand::CreateNetwork(spec) = &mut shared {
        spec.shared = true;
    }
    sim.net(shared);
    sim.net(subnet("s-shared", "shared", "10.8.0.0/24"));
    sim.net(NetCommand::CreatePort(PortSpec {
        id: "free".into(),
        network_id: "n1".into(),
        project_id: "p".into(),
        name: "free".into(),
        description: String::new(),
        mac_address: String::new(),
        fixed_ips: Vec::new(),
        security_group_ids: Vec::new(),
        port_security_enabled: true,
        admin_state_up: true,
        device_owner: String::new(),
        device_id: String::new(),
        default_group_ids: vec![],
    }));
    sim
}

fn code(
    sim: &Sim,
    p: &Principal,
    project: &str,
    nics: &[pb::ServerNetworkRequest],
    count: u32,
) -> Code {
    match nic_templates(&sim.state, p, project, nics, count) {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[test]
fn another_project_cannot_attach_to_a_private_network_or_bind_a_foreign_port() {
    let sim = world();
    let other = member("q");
    assert_eq!(code(&sim, &other, "q", &[on("n1", "")], 1), Code::NotFound);
    assert_eq!(code(&sim, &other, "q", &[port("free")], 1), Code::NotFound);
    assert_eq!(code(&sim, &other, "q", &[port("pa")], 1), Code::NotFound);
    // Shared networks are for everyone; external ones for admins only.
    assert_eq!(code(&sim, &other, "q", &[on("shared", "")], 2), Code::Ok);
    let err = nic_templates(&sim.state, &other, "q", &[on("ext", "")], 1).unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("floating IP"), "{}", err.message());
    let admin = Principal::test_admin();
    assert_eq!(code(&sim, &admin, "q", &[on("ext", "")], 1), Code::Ok);
}

#[test]
fn ports_in_use_and_one_port_or_address_for_many_servers_are_refused_with_reasons() {
    let sim = world();
    let own = member("p");
    assert_eq!(
        code(&sim, &own, "p", &[on("n1", ""), port("free")], 1),
        Code::Ok
    );
    let err = nic_templates(&sim.state, &own, "p", &[port("pa")], 1).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("server a (a)"), "{}", err.message());
    assert_eq!(
        code(&sim, &own, "p", &[port("free")], 2),
        Code::InvalidArgument
    );
    assert_eq!(
        code(&sim, &own, "p", &[on("n1", "10.0.0.9")], 2),
        Code::InvalidArgument
    );
    assert_eq!(
        code(&sim, &own, "p", &[on("n1", "not-an-ip")], 1),
        Code::InvalidArgument
    );
    let nothing = pb::ServerNetworkRequest::default();
    assert_eq!(code(&sim, &own, "p", &[nothing], 1), Code::InvalidArgument);
    assert_eq!(code(&sim, &own, "p", &[on("n1", "10.0.0.9")], 1), Code::Ok);
}

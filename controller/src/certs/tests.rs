use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use super::*;

fn args(dir: &Path, nodes: &[&str], clients: &[&str]) -> GenCertsArgs {
    GenCertsArgs {
        dir: dir.to_owned(),
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        clients: clients.iter().map(|s| s.to_string()).collect(),
        ..GenCertsArgs::default()
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_ca_nodes_and_clients_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let written = write_certs(&args(&dir, &["n1", "n2"], &["admin"])).unwrap();

    assert_eq!(mode(&dir), 0o700);
    for name in ["ca", "n1", "n2", "admin"] {
        assert_eq!(mode(&dir.join(format!("{name}.key"))), 0o600, "{name}.key");
        assert_eq!(mode(&dir.join(format!("{name}.pem"))), 0o644, "{name}.pem");
    }
    let roles: Vec<_> = written
        .iter()
        .map(|w| (w.role, w.name.as_str(), w.reused))
        .collect();
    assert_eq!(
        roles,
        [
            (Role::Ca, CA_COMMON_NAME, false),
            (Role::Node, "n1", false),
            (Role::Node, "n2", false),
            (Role::Client, "admin", false)
        ]
    );
    assert_eq!(written[1].sans, ["n1", "localhost", "127.0.0.1", "::1"]);
    assert!(written[3].sans.is_empty());
    // No temporary files are left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
}

#[test]
fn a_second_run_reuses_the_ca_and_adds_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    write_certs(&args(tmp.path(), &["n1"], &[])).unwrap();
    let ca_before = fs::read(tmp.path().join("ca.pem")).unwrap();
    let key_before = fs::read(tmp.path().join("ca.key")).unwrap();

    let written = write_certs(&args(tmp.path(), &["n4"], &[])).unwrap();
    assert!(written[0].reused);
    assert_eq!(fs::read(tmp.path().join("ca.pem")).unwrap(), ca_before);
    assert_eq!(fs::read(tmp.path().join("ca.key")).unwrap(), key_before);
    assert!(tmp.path().join("n4.pem").is_file());
}

#[test]
fn refuses_to_overwrite_without_force_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write_certs(&args(tmp.path(), &["n1"], &[])).unwrap();
    let n1_before = fs::read(tmp.path().join("n1.pem")).unwrap();

    let err = write_certs(&args(tmp.path(), &["n2", "n1"], &[])).unwrap_err();
    assert!(matches!(&err, CertError::AlreadyExists { path } if path.ends_with("n1.pem")));
    assert!(err.to_string().contains("pass --force"), "{err}");
    assert!(
        !tmp.path().join("n2.pem").exists(),
        "nothing is written on a conflict"
    );

    let mut forced = args(tmp.path(), &["n1"], &[]);
    forced.force = true;
    let written = write_certs(&forced).unwrap();
    assert!(written[1].replaced);
    assert_ne!(fs::read(tmp.path().join("n1.pem")).unwrap(), n1_before);
    assert_eq!(mode(&tmp.path().join("n1.key")), 0o600);
}

#[test]
fn rejects_bad_names_and_sans() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["", "../x", "a/b", "-n", ".hidden", "n 1"] {
        let err = write_certs(&args(tmp.path(), &[bad], &[])).unwrap_err();
        assert!(
            matches!(err, CertError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = write_certs(&args(tmp.path(), &["ca"], &[])).unwrap_err();
    assert!(matches!(err, CertError::ReservedName { .. }));
    let err = write_certs(&args(tmp.path(), &["n1"], &["n1"])).unwrap_err();
    assert!(matches!(err, CertError::DuplicateName { .. }));
    let mut a = args(tmp.path(), &["n1"], &[]);
    a.sans = vec!["not a host".into()];
    assert!(matches!(
        write_certs(&a).unwrap_err(),
        CertError::InvalidSan { .. }
    ));
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn extra_sans_are_added_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = args(tmp.path(), &["n1"], &[]);
    a.sans = vec![
        "10.0.0.5".into(),
        "ctl1.example.org".into(),
        "localhost".into(),
    ];
    let written = write_certs(&a).unwrap();
    assert_eq!(
        written[1].sans,
        [
            "n1",
            "localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.5",
            "ctl1.example.org"
        ]
    );
}

#[test]
fn half_a_ca_or_a_foreign_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_certs(&args(tmp.path(), &[], &[])).unwrap();
    fs::remove_file(tmp.path().join("ca.key")).unwrap();
    let err = write_certs(&args(tmp.path(), &["n1"], &[])).unwrap_err();
    assert!(matches!(err, CertError::IncompleteCa { .. }), "{err}");

    // ca.key from another CA: not a pair.
    let other = tempfile::tempdir().unwrap();
    write_certs(&args(other.path(), &[], &[])).unwrap();
    fs::copy(other.path().join("ca.key"), tmp.path().join("ca.key")).unwrap();
    let err = write_certs(&args(tmp.path(), &["n1"], &[])).unwrap_err();
    assert!(err.to_string().contains("not a pair"), "{err}");

    // A certificate that is not a CA made by gen-certs (a node certificate + its key).
    fs::copy(other.path().join("ca.pem"), tmp.path().join("ca.pem")).unwrap();
    write_certs(&args(other.path(), &["n9"], &[])).unwrap();
    fs::copy(other.path().join("n9.pem"), tmp.path().join("ca.pem")).unwrap();
    fs::copy(other.path().join("n9.key"), tmp.path().join("ca.key")).unwrap();
    let err = write_certs(&args(tmp.path(), &["n1"], &[])).unwrap_err();
    assert!(err.to_string().contains("not made by gen-certs"), "{err}");
}

#[test]
fn base64_round_trips_pem() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
    assert_eq!(base64_decode("aGk=\n").unwrap(), b"hi");
    assert!(base64_decode("aGk").is_none());
    assert!(base64_decode("a=Gk").is_none());
}

/// Serves the gRPC health service over TLS with `server` as identity, the CA as client
/// root (client certificates required), and returns its address.
async fn tls_health_server(dir: &Path, server: &str) -> SocketAddr {
    let read = |f: &str| fs::read(dir.join(f)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&format!("{server}.pem")),
            read(&format!("{server}.key")),
        ))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(health);
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn health_check(
    dir: &Path,
    addr: SocketAddr,
    domain: &str,
    ca_dir: &Path,
    client: &str,
) -> Result<(), String> {
    let read = |d: &Path, f: &str| fs::read(d.join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_dir, "ca.pem")))
        .domain_name(domain)
        .identity(Identity::from_pem(
            read(dir, &format!("{client}.pem")),
            read(dir, &format!("{client}.key")),
        ));
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("{e:?}"))?
        .connect_timeout(StdDuration::from_secs(5))
        .timeout(StdDuration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("check: {e:?}"))
}

/// The real test of the certificates: rustls (through tonic) accepts the node certificate
/// as a server under each of its names and the node and client certificates as client
/// certificates, and rejects what it should.
#[tokio::test]
async fn certificates_pass_mutual_tls_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut a = args(dir, &["n1", "n2"], &["admin"]);
    a.sans = vec!["ctl1.example.org".into()];
    write_certs(&a).unwrap();

    let addr = tls_health_server(dir, "n1").await;
    for domain in ["n1", "localhost", "127.0.0.1", "ctl1.example.org"] {
        health_check(dir, addr, domain, dir, "admin").await.unwrap();
    }
    // A peer node authenticates with its own certificate.
    health_check(dir, addr, "n1", dir, "n2").await.unwrap();
    // A name the certificate does not carry.
    assert!(health_check(dir, addr, "n2", dir, "admin").await.is_err());
    // A server whose certificate comes from another CA.
    let other = tempfile::tempdir().unwrap();
    write_certs(&args(other.path(), &["n1"], &["admin"])).unwrap();
    assert!(health_check(dir, addr, "n1", other.path(), "admin")
        .await
        .is_err());
    // A client whose certificate comes from another CA.
    assert!(health_check(other.path(), addr, "n1", dir, "admin")
        .await
        .is_err());
    // A client certificate cannot serve: rustls rejects it for lacking serverAuth.
    let client_as_server = tls_health_server(dir, "admin").await;
    assert!(health_check(dir, client_as_server, "admin", dir, "n2")
        .await
        .is_err());

    // Certificates issued by a later run (reused CA) verify the same way.
    write_certs(&args(dir, &["n4"], &[])).unwrap();
    health_check(dir, addr, "n1", dir, "n4").await.unwrap();
}

//! TLS: with a CA configured, scheme-less endpoints and leader hints use https, and a client
//! certificate is presented for mutual TLS.

mod common;

use std::path::Path;

use common::{FakeServer, Mode, DEADLINE};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Identity};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf(vec!["127.0.0.1".into()]),
        client: leaf(vec!["operator".into()]),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn mutual_tls_with_leader_hint_uses_https_everywhere() {
    let pki = pki();
    let start = |mode| {
        FakeServer::start_tls(
            mode,
            Identity::from_pem(&pki.server.0, &pki.server.1),
            Some(Certificate::from_pem(&pki.ca_pem)),
        )
    };
    let leader = start(Mode::Answer).await;
    let follower = start(Mode::Unavailable {
        leader: Some(leader.endpoint()),
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let cert = write(dir.path(), "client.pem", &pki.client.0);
    let key = write(dir.path(), "client.key", &pki.client.1);
    let endpoints = follower.endpoint();
    let argv = [
        "flotilla",
        "--endpoints",
        &endpoints,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "project",
        "create",
        "web",
    ];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokio::time::timeout(DEADLINE, flotilla_cli::execute(argv, &mut out, &mut err))
        .await
        .expect("finished before the deadline");
    assert_eq!(code, 0, "stderr: {}", String::from_utf8_lossy(&err));
    assert_eq!(follower.rec.calls().len(), 1);
    assert_eq!(leader.rec.calls().len(), 1);
    assert_eq!(
        follower.rec.calls()[0].request_id,
        leader.rec.calls()[0].request_id
    );
}

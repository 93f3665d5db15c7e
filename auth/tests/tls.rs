//! TLS between a tonic client and server with a CA generated in the test: the right CA
//! connects and calls the health service; a wrong CA, a wrong name or bad files fail clearly.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use stigmer_auth::{TlsError, client_tls, connect, server_tls};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn new_ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

/// A CA, a server certificate for `localhost` signed by it, and an unrelated second CA.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca_params, ca_key, ca_pem) = new_ca("Stigmer Test CA");
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    let (_, _, other_ca_pem) = new_ca("Some Other CA");

    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), other_ca_pem).unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("unrelated.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "hello, not a certificate\n").unwrap();
    Pki { dir }
}

/// A TLS gRPC server with the health service on a loopback port.
async fn serve(cert: &Path, key: &Path) -> SocketAddr {
    let tls = server_tls(cert, key).unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn client_with_the_right_ca_connects_and_calls_health() {
    let pki = pki();
    let addr = serve(&pki.path("server.pem"), &pki.path("server.key")).await;
    // Connect by address, verify by name: the domain override.
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let ca = pki.path("ca.pem");
    let tls = client_tls(Some(&ca), Some("localhost")).unwrap();
    let channel = connect(&endpoint, tls, Some(&ca)).await.unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn client_with_a_wrong_ca_fails_with_a_clear_message() {
    let pki = pki();
    let addr = serve(&pki.path("server.pem"), &pki.path("server.key")).await;
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let ca = pki.path("other-ca.pem");
    let tls = client_tls(Some(&ca), Some("localhost")).unwrap();
    let err = connect(&endpoint, tls, Some(&ca)).await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "TLS handshake with {endpoint} failed: the server certificate is not signed by the \
             configured CA ({}) nor by a system or public root",
            ca.display()
        )
    );

    // Without any CA file: the public roots do not know the test CA either.
    let tls = client_tls(None, Some("localhost")).unwrap();
    let err = connect(&endpoint, tls, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("configure the CA file if the control plane uses a private CA"),
        "{err}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = pki();
    let addr = serve(&pki.path("server.pem"), &pki.path("server.key")).await;
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let ca = pki.path("ca.pem");
    let tls = client_tls(Some(&ca), Some("control-plane.example")).unwrap();
    let err = connect(&endpoint, tls, Some(&ca)).await.unwrap_err();
    assert!(err.to_string().contains("not valid for the name"), "{err}");
}

#[tokio::test]
async fn a_plaintext_server_is_named_as_such() {
    // A plain TCP listener that answers with something that is not TLS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let tls = client_tls(None, Some("localhost")).unwrap();
    let err = connect(&endpoint, tls, None).await.unwrap_err();
    assert!(err.to_string().contains("did not answer with TLS"), "{err}");
}

#[test]
fn bad_ca_files_are_named_in_the_error() {
    let pki = pki();
    let missing = pki.path("missing.pem");
    let err = client_tls(Some(&missing), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("CA file {}: does not exist", missing.display())
    );

    let garbage = pki.path("garbage.pem");
    let err = client_tls(Some(&garbage), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "CA file {}: holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            garbage.display()
        )
    );

    // A directory cannot be read as a file.
    let err = client_tls(Some(pki.dir.path()), None).unwrap_err();
    assert!(matches!(err, TlsError::CaFile { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
}

#[test]
fn bad_server_identities_fail_at_start_up() {
    let pki = pki();
    let err = server_tls(&pki.path("missing.pem"), &pki.path("server.key")).unwrap_err();
    assert!(matches!(err, TlsError::CertFile { .. }), "{err:?}");

    let err = server_tls(&pki.path("server.pem"), &pki.path("garbage.pem")).unwrap_err();
    assert!(matches!(err, TlsError::KeyFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("holds no PEM private key"),
        "{err}"
    );

    // A key that does not belong to the certificate.
    let err = server_tls(&pki.path("server.pem"), &pki.path("unrelated.key")).unwrap_err();
    assert!(matches!(err, TlsError::Identity(_)), "{err:?}");
}

//! TLS serving and JWT bearer authentication, over real gRPC against an in-process server:
//! JWTs signed in the test are accepted on every API next to the static keys, bad ones are
//! refused with UNAUTHENTICATED without echoing them, and a TLS server answers clients that
//! trust its CA and is refused, with a clear message, by clients that do not.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

use serde_json::json;
use stigmer_proto::agent::v1::ListAgentsRequest;
use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use stigmer_proto::agentexecution::v1::GetExecutionRequest;
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use stigmer_proto::runner::v1::HeartbeatRequest;
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use stigmer_server::{JwtAuth, KeySource, ServerConfig, TlsFiles};
use testkit::control_plane::{Bearer, TestControlPlane};
use testkit::pki::{JWT_AUDIENCE, JWT_ISSUER, JwtSigner, TestPki, good_claims, now, with};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn jwt_config(dir: &std::path::Path, signer: &JwtSigner) -> ServerConfig {
    let mut config = ServerConfig::local(dir);
    config.jwt = Some(JwtAuth {
        issuer: Some(JWT_ISSUER.into()),
        audience: Some(JWT_AUDIENCE.into()),
        key: KeySource::PublicKeyPem(signer.public_pem.clone()),
    });
    config
}

/// The status codes of one call on each authenticated service with `token`.
async fn call_all(channel: Channel, token: &str) -> [tonic::Status; 3] {
    let bearer = Bearer(token.to_owned());
    let ok_or = |r: Result<(), tonic::Status>| r.err().unwrap_or_else(|| tonic::Status::ok(""));
    let agents = AgentServiceClient::with_interceptor(channel.clone(), bearer.clone())
        .list_agents(ListAgentsRequest {})
        .await
        .map(|_| ());
    let executions = ExecutionServiceClient::with_interceptor(channel.clone(), bearer.clone())
        .get_execution(GetExecutionRequest { id: "x".into() })
        .await
        .map(|_| ());
    let runners = RunnerServiceClient::with_interceptor(channel, bearer)
        .heartbeat(HeartbeatRequest {
            runner_id: "r".into(),
            held: vec![],
        })
        .await
        .map(|_| ());
    [ok_or(agents), ok_or(executions), ok_or(runners)]
}

#[tokio::test]
async fn valid_jwts_and_static_keys_are_accepted_on_every_api() {
    let dir = tempfile::tempdir().unwrap();
    let signer = JwtSigner::new();
    let cp = TestControlPlane::start_with(jwt_config(dir.path(), &signer), None).await;
    for token in [signer.good_token(), stigmer_proto::LOCAL_API_KEY.to_owned()] {
        for status in call_all(cp.channel().await, &token).await {
            // NotFound (no such execution) is an authenticated answer.
            assert!(
                matches!(status.code(), Code::Ok | Code::NotFound),
                "{status:?}"
            );
        }
    }
}

#[tokio::test]
async fn bad_jwts_are_refused_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let signer = JwtSigner::new();
    let cp = TestControlPlane::start_with(jwt_config(dir.path(), &signer), None).await;
    let other = JwtSigner::new();
    let cases = [
        (
            "expired",
            signer.sign(&with(good_claims(), "exp", json!(now() - 3600))),
            "expired",
        ),
        (
            "wrong audience",
            signer.sign(&with(good_claims(), "aud", json!("someone-else"))),
            "aud",
        ),
        (
            "wrong issuer",
            signer.sign(&with(good_claims(), "iss", json!("https://evil.test"))),
            "iss",
        ),
        ("bad signature", other.sign(&good_claims()), "signature"),
        ("not a key nor a JWT", "wrong-key".to_owned(), ""),
    ];
    for (what, token, reason) in cases {
        for status in call_all(cp.channel().await, &token).await {
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
            assert!(
                status.message().to_lowercase().contains(reason),
                "{what}: the refusal should say why: {status:?}"
            );
            assert!(
                !format!("{status:?}").contains(&token),
                "{what}: the token was echoed"
            );
        }
    }
}

#[tokio::test]
async fn tls_server_answers_its_ca_and_is_refused_by_another() {
    stigmer_auth::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let signer = JwtSigner::new();
    let mut config = jwt_config(dir.path(), &signer);
    config.tls = Some(TlsFiles {
        cert: pki.server_cert(),
        key: pki.server_key(),
    });
    let cp = TestControlPlane::start_with(config, None)
        .await
        .with_client_tls(stigmer_auth::client_tls(Some(&pki.ca()), None).unwrap());

    // Health needs no credentials, over TLS too.
    let health = HealthClient::new(cp.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    for status in call_all(cp.channel().await, &signer.good_token()).await {
        assert!(
            matches!(status.code(), Code::Ok | Code::NotFound),
            "{status:?}"
        );
    }

    let endpoint = cp.endpoint_https();
    let other = pki.other_ca();
    let tls = stigmer_auth::client_tls(Some(&other), None).unwrap();
    let err = stigmer_auth::connect(&endpoint, tls, Some(&other))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not signed by the configured CA") && err.contains("other-ca.pem"),
        "{err}"
    );

    // A plaintext client gets nowhere either.
    let plaintext = Channel::from_shared(cp.endpoint()).unwrap().connect().await;
    if let Ok(channel) = plaintext {
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }
}

#[tokio::test]
async fn bad_tls_files_fail_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let mut config = ServerConfig::local(dir.path());
    config.tls = Some(TlsFiles {
        cert: pki.dir().join("missing.pem"),
        key: pki.server_key(),
    });
    let err = stigmer_server::ControlPlane::open(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");

    let mut config = ServerConfig::local(dir.path());
    config.tls = Some(TlsFiles {
        cert: pki.server_cert(),
        key: pki.ca(),
    });
    let err = stigmer_server::ControlPlane::open(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ca.pem"), "{err}");
}

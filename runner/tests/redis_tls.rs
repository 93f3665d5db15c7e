//! Cloud mode against a Redis that speaks TLS only, as managed Redis services do: a real
//! `redis-server` with `--tls-port` (no plaintext port) and a certificate from a test CA, the
//! control plane in its Redis configuration (in this process, real gRPC on loopback), the real
//! `runner` binary, the Daytona contract server and the scripted LLM standing in for the SaaS
//! parts (neither can be reached from CI).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{DAYTONA_KEY, RUN_TIMEOUT, cloud_env, execution_id};
use stigmer_proto::agentexecution::v1::ExecutionPhase;
use stigmer_server::{RedisSettings, RedisTarget, ServerConfig};
use testkit::control_plane::{TestControlPlane, phase};
use testkit::daytona::{DaytonaOptions, DaytonaServer};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::pki::TestPki;
use testkit::process::ChildProcess;
use testkit::redis::RedisServer;

fn spawn_runner(env: &BTreeMap<String, String>, dir: &Path, name: &str) -> ChildProcess {
    ChildProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_runner")),
        env,
        &dir.join("logs"),
        name,
    )
}

/// Runs a cloud runner with the Redis variables `redis` (no control plane or model: it must
/// not get that far), requires it to exit 1 and returns its stderr.
async fn refused_at_start(
    daytona: &DaytonaServer,
    redis: &[(&str, String)],
    dir: &Path,
    name: &str,
) -> String {
    let env = cloud_env(
        "http://127.0.0.1:1",
        &testkit::pki::unsigned_jwt("runner"),
        daytona,
        "http://127.0.0.1:1",
        redis,
    );
    let mut runner = spawn_runner(&env, dir, name);
    let code = runner.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code.code(), Some(1), "{name}: {}", runner.output());
    runner.stderr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_and_a_runner_work_through_a_tls_only_redis() {
    let pki = TestPki::new();
    let redis = RedisServer::start_tls(&pki);
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    let llm = ScriptedLlm::start(vec![Reply::Text("Done over TLS.".into())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt = testkit::pki::unsigned_jwt("runner");

    // The control plane by URL, trusting the test CA.
    let mut config = ServerConfig::local(dir.path().join("data"));
    config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
    let mut settings = RedisSettings::new(RedisTarget::Url(redis.tls_url()));
    settings.ca_pem = Some(std::fs::read(pki.ca()).expect("CA"));
    config.redis = Some(settings);
    let cp = TestControlPlane::start_with(config, None).await;
    cp.apply_agent("tls", "You answer.").await;

    // The runner by host and port with REDIS_TLS, trusting the same CA from its file.
    let env = cloud_env(
        &cp.endpoint(),
        &jwt,
        &daytona,
        &llm.base_url(),
        &[
            ("REDIS_HOST", redis.host()),
            ("REDIS_PORT", redis.port().to_string()),
            ("REDIS_TLS", "true".into()),
            ("REDIS_CA_FILE", pki.ca().display().to_string()),
        ],
    );
    let mut runner = spawn_runner(&env, dir.path(), "tls-runner");
    runner.wait_ready(common::READY_TIMEOUT).await;
    let banner = runner.stdout();
    assert!(
        banner.contains(&format!("TLS, CAs of {}", pki.ca().display())),
        "the banner does not say how Redis is reached: {banner}"
    );

    let created = cp.create_execution("tls", "", "Say something").await;
    let done = cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        runner.output()
    );
    assert_eq!(llm.request_count(), 1);
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(Duration::from_secs(30)).await;
}

/// A certificate from a CA the runner was not told to trust: the runner stops at start-up
/// (never talks to an impostor), naming the address and the certificate problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_refuses_a_redis_whose_certificate_it_does_not_trust() {
    let pki = TestPki::new();
    let redis = RedisServer::start_tls(&pki);
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("rediss://:s3cret@{}/", redis.addr());
    for (name, ca) in [
        ("wrong-ca", Some(pki.other_ca())),
        // Without REDIS_CA_FILE the system's CAs decide, and none of them signed it.
        ("system-cas", None),
    ] {
        let mut redis_env = vec![("REDIS_URL", url.clone())];
        if let Some(ca) = &ca {
            redis_env.push(("REDIS_CA_FILE", ca.display().to_string()));
        }
        let err = refused_at_start(&daytona, &redis_env, dir.path(), name).await;
        assert!(err.contains(&redis.addr().to_string()), "{name}: {err}");
        assert!(
            err.contains("invalid peer certificate"),
            "{name}: the certificate problem is not named: {err}"
        );
        assert!(
            err.contains("set REDIS_CA_FILE"),
            "{name}: no hint at what to change: {err}"
        );
        assert!(!err.contains("s3cret"), "{name}: the password was printed");
    }
}

/// A name, the Redis variables and what the error must say.
type Case = (&'static str, Vec<(&'static str, String)>, &'static str);

/// Settings that cannot work are refused before any connection, saying what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_tls_settings_are_refused_at_start() {
    let pki = TestPki::new();
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let ca = pki.ca().display().to_string();
    let cases: [Case; 4] = [
        (
            "ca-without-tls",
            vec![
                ("REDIS_URL", "redis://127.0.0.1:1/".into()),
                ("REDIS_CA_FILE", ca.clone()),
            ],
            "not TLS",
        ),
        (
            "tls-flag-with-plain-url",
            vec![
                ("REDIS_URL", "redis://127.0.0.1:1/".into()),
                ("REDIS_TLS", "true".into()),
            ],
            "rediss://",
        ),
        (
            "bad-flag",
            vec![
                ("REDIS_HOST", "127.0.0.1".into()),
                ("REDIS_TLS", "maybe".into()),
            ],
            "REDIS_TLS",
        ),
        (
            "not-a-ca-file",
            vec![
                ("REDIS_URL", "rediss://127.0.0.1:1/".into()),
                ("REDIS_CA_FILE", not_pem.display().to_string()),
            ],
            "no PEM certificate",
        ),
    ];
    for (name, redis_env, expected) in cases {
        let err = refused_at_start(&daytona, &redis_env, dir.path(), name).await;
        assert!(err.contains(expected), "{name}: {err}");
    }
}

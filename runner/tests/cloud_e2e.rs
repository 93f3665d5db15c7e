//! Cloud mode end to end: the real `runner` binary with `MODE=cloud`, the control plane in its
//! Redis configuration (in this process, real gRPC on loopback; plaintext, explicitly allowed),
//! a real `redis-server` started by the test, the Daytona contract server standing in for
//! Daytona, and the scripted LLM server standing in for the Anthropic API (neither SaaS can be
//! reached from CI).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{DAYTONA_KEY, RUN_TIMEOUT, cloud_env, execution_id, status};
use serde_json::json;
use stigmer_proto::agentexecution::v1::{
    CancelExecutionRequest, ExecutionPhase, GetSessionRequest, ToolCallStatus,
};
use stigmer_server::{RedisSettings, RedisTarget, ServerConfig};
use testkit::control_plane::{TestControlPlane, phase};
use testkit::daytona::{DaytonaOptions, DaytonaServer};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::{ChildProcess, free_addr};
use testkit::redis::RedisServer;

fn test_jwt() -> String {
    testkit::pki::unsigned_jwt("runner")
}

fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_mode_runs_an_agent_through_redis_and_daytona() {
    let redis = RedisServer::start();
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: Some("Writing.".into()),
            calls: vec![(
                "write_file".into(),
                json!({"path": "notes.txt", "content": "hello from the cloud"}),
            )],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![("read_file".into(), json!({"path": "notes.txt"}))],
        },
        Reply::Text("It says hello from the cloud.".into()),
        // Second execution: a long command, cancelled through Redis.
        Reply::ToolCalls {
            text: None,
            calls: vec![("run_command".into(), json!({"command": "sleep 30"}))],
        },
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt = test_jwt();
    let mut config = ServerConfig::local(dir.path().join("data"));
    config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
    // Heartbeats are slowed down below, so the lease must outlive them.
    config.lease_ttl = Duration::from_secs(120);
    config.redis = Some(RedisSettings::new(RedisTarget::Url(redis.url())));
    let cp = TestControlPlane::start_with(config, None).await;
    cp.apply_agent("cloudy", "You work in a Daytona sandbox.")
        .await;

    let mut env = cloud_env(
        &cp.endpoint(),
        &jwt,
        &daytona,
        &llm.base_url(),
        &[("REDIS_URL", redis.url())],
    );
    // Slow heartbeats: a cancellation arriving in time proves the Redis channel.
    env.insert("STIGMER_HEARTBEAT_INTERVAL_MS".into(), "60000".into());
    env.insert("LOG_LEVEL".into(), "debug".into());
    let mut runner = ChildProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_runner")),
        &env,
        &dir.path().join("logs"),
        "cloud-runner",
    );
    runner.wait_ready(common::READY_TIMEOUT).await;
    assert!(
        runner.stdout().contains("CLOUD Mode"),
        "{}",
        runner.output()
    );
    assert!(!runner.output().contains(&jwt), "the JWT was printed");

    // 1. Dispatched through Redis, tools run in a Daytona sandbox stored on the session.
    let created = cp
        .create_execution("cloudy", "", "Write a note and read it")
        .await;
    let done = cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        runner.output()
    );
    let s = status(&done);
    assert!(
        s.tool_calls
            .iter()
            .all(|c| c.status() == ToolCallStatus::ToolCallCompleted)
    );
    assert!(s.tool_calls[1].result.contains("hello from the cloud"));
    let session_id = created.spec.as_ref().expect("spec").session_id.clone();
    let session = cp
        .executions()
        .await
        .get_session(GetSessionRequest {
            id: session_id.clone(),
        })
        .await
        .expect("session")
        .into_inner();
    let sandboxes = daytona.sandboxes();
    assert_eq!(sandboxes.len(), 1, "one sandbox for the session");
    assert_eq!(
        session.sandbox_id, sandboxes[0].id,
        "sandbox id stored on the session"
    );
    let root = daytona
        .sandbox_root(&session.sandbox_id)
        .expect("sandbox dir");
    let note = find_file(&root, "notes.txt").expect("notes.txt in the Daytona sandbox");
    assert_eq!(
        std::fs::read_to_string(note).expect("read"),
        "hello from the cloud"
    );

    // 2. Same session: the sandbox is reused; a cancel published on Redis stops it in time.
    let second = cp.create_execution("cloudy", &session_id, "Sleep").await;
    let id = execution_id(&second);
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let e = cp.get_execution(&id).await;
        if status(&e)
            .tool_calls
            .iter()
            .any(|c| c.status() == ToolCallStatus::ToolCallRunning)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tool never started\n{}",
            runner.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cp.executions()
        .await
        .cancel_execution(CancelExecutionRequest {
            id: id.clone(),
            reason: "stop it".into(),
        })
        .await
        .expect("cancel");
    let cancelled = cp.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(
        phase(&cancelled),
        ExecutionPhase::ExecutionCancelled,
        "{}",
        runner.output()
    );
    assert_eq!(
        daytona.sandboxes().len(),
        1,
        "the session's sandbox was reused"
    );

    // 3. Graceful stop keeps the session's sandbox (it belongs to a stored session).
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    let code = runner.wait_exit(RUN_TIMEOUT).await;
    assert!(code.success(), "{}", runner.output());
    assert_eq!(daytona.sandboxes().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_mode_refuses_to_start_without_redis() {
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = free_addr();
    let mut env = cloud_env(
        "http://127.0.0.1:1",
        &test_jwt(),
        &daytona,
        "http://127.0.0.1:1",
        &[("REDIS_URL", format!("redis://:s3cret@{nowhere}"))],
    );
    env.remove("STIGMER_LLM_BASE_URL");
    let mut runner = ChildProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_runner")),
        &env,
        &dir.path().join("logs"),
        "no-redis",
    );
    let code = runner.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code.code(), Some(1), "{}", runner.output());
    let err = runner.stderr();
    assert!(err.contains("Redis"), "{err}");
    assert!(err.contains(&nowhere.to_string()), "{err}");
    assert!(
        !err.contains("s3cret"),
        "the Redis password was printed: {err}"
    );
}

/// Redis restarts (without persistence: the queue, its group and the events streams are gone)
/// while executions run and wait: the runner recreates the group, the control plane puts the
/// lost queue entries back, every execution completes, and none is started twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_and_runs_nothing_twice() {
    use std::sync::{Arc, Mutex};

    let mut redis = RedisServer::start();
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    // First turn of every execution: a slow command; after its result: done. Counts the first
    // turns per message, which is how many times each execution was started.
    let starts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let seen = starts.clone();
    let llm = ScriptedLlm::with_handler(move |req| {
        let body = req.body.to_string();
        if body.contains("tool_result") {
            return Reply::Text("done".into());
        }
        if let Some(at) = body.find("job-") {
            let tag: String = body[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            *seen.lock().expect("lock").entry(tag).or_default() += 1;
        }
        Reply::ToolCalls {
            text: None,
            calls: vec![("run_command".into(), json!({"command": "sleep 0.5"}))],
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt = test_jwt();
    let mut config = ServerConfig::local(dir.path().join("data"));
    config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
    let mut redis_settings = RedisSettings::new(RedisTarget::Url(redis.url()));
    redis_settings.reconcile_interval = Duration::from_millis(500);
    redis_settings.events_block = Duration::from_millis(300);
    config.redis = Some(redis_settings);
    let cp = TestControlPlane::start_with(config, None).await;
    cp.apply_agent("cloudy", "").await;
    let mut env = cloud_env(
        &cp.endpoint(),
        &jwt,
        &daytona,
        &llm.base_url(),
        &[("REDIS_URL", redis.url())],
    );
    env.insert("STIGMER_MAX_CONCURRENCY".into(), "2".into());
    env.insert("STIGMER_HEARTBEAT_INTERVAL_MS".into(), "200".into());
    env.insert("STIGMER_CLAIM_WAIT_MS".into(), "300".into());
    let mut runner = ChildProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_runner")),
        &env,
        &dir.path().join("logs"),
        "restart-runner",
    );
    runner.wait_ready(common::READY_TIMEOUT).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(execution_id(
            &cp.create_execution("cloudy", "", &format!("job-{i}")).await,
        ));
    }
    // Two run, four wait on the queue when Redis goes away.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while starts.lock().expect("lock").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing started\n{}",
            runner.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart();
    for i in 6..8 {
        ids.push(execution_id(
            &cp.create_execution("cloudy", "", &format!("job-{i}")).await,
        ));
    }

    for id in &ids {
        let done = cp.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(
            phase(&done),
            ExecutionPhase::ExecutionCompleted,
            "{id}\n{}",
            runner.output()
        );
    }
    let starts = starts.lock().expect("lock").clone();
    assert_eq!(
        starts.len(),
        ids.len(),
        "every execution started: {starts:?}"
    );
    assert!(
        starts.values().all(|n| *n == 1),
        "an execution started twice: {starts:?}"
    );
}

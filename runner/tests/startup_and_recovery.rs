//! Start-up failures, lease loss and control-plane restarts, with the real `runner` binary.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use stigmer_proto::agentexecution::v1::ExecutionPhase;
use testkit::control_plane::{TestControlPlane, phase};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::free_addr;

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_are_all_reported_and_exit_non_zero() {
    let h = Harness::new(ScriptedLlm::start(vec![]).await).await;
    let env: BTreeMap<String, String> = [
        ("MODE", "hybrid"),
        ("STIGMER_MAX_CONCURRENCY", "0"),
        ("STIGMER_LLM_PROVIDER", "anthropic"),
        ("STIGMER_BACKEND_ENDPOINT", "not an endpoint"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut runner = h.spawn_runner(&env, "bad-config");
    let status = runner.wait_exit(EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(1));
    let err = runner.stderr();
    for needle in [
        "configuration error (4 problem(s))",
        "MODE: unknown mode 'hybrid'; allowed values: local, cloud",
        "STIGMER_MAX_CONCURRENCY",
        "ANTHROPIC_API_KEY",
        "STIGMER_BACKEND_ENDPOINT",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_control_plane_fails_fast_with_the_endpoint_and_a_hint() {
    let h = Harness::new(ScriptedLlm::start(vec![]).await).await;
    let mut env = h.runner_env(Wire::Anthropic);
    let nowhere = free_addr();
    env.insert(
        "STIGMER_BACKEND_ENDPOINT".into(),
        format!("http://{nowhere}"),
    );
    let mut runner = h.spawn_runner(&env, "unreachable");
    let status = runner.wait_exit(EXIT_TIMEOUT).await;
    assert!(!status.success());
    let err = runner.stderr();
    assert!(
        err.contains(&format!(
            "cannot reach the control plane at http://{nowhere}"
        )),
        "{err}"
    );
    assert!(err.contains("stigmer local start"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_fails_fast() {
    let h = Harness::new(ScriptedLlm::start(vec![]).await).await;
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("STIGMER_API_KEY".into(), "not-the-key".into());
    let mut runner = h.spawn_runner(&env, "bad-key");
    let status = runner.wait_exit(EXIT_TIMEOUT).await;
    assert!(!status.success());
    let out = runner.output();
    assert!(out.contains("refused the API key"), "{out}");
    assert!(!out.contains("not-the-key"), "the key was printed");
}

/// The runner freezes (SIGSTOP) past its lease: the control plane marks the execution FAILED
/// "runner lost"; when the runner wakes up it learns the lease is gone, kills the tool and
/// reports nothing (the FAILED state stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_execution_without_overwriting_the_verdict() {
    let llm = ScriptedLlm::start(vec![Reply::ToolCalls {
        text: None,
        calls: vec![(
            "run_command".into(),
            json!({"command": "sleep 120271 & wait"}),
        )],
    }])
    .await;
    let h = Harness::with_control_plane(llm, |dir| {
        let mut c = stigmer_server::ServerConfig::local(dir);
        c.lease_ttl = Duration::from_millis(800);
        c.sweep_interval = Duration::from_millis(100);
        c
    })
    .await;
    h.cp.apply_agent("a", "").await;
    let runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let created = h.cp.create_execution("a", "", "sleep").await;
    let id = execution_id(&created);
    // Found by its command line: inside the command's PID namespace `$!` is not a host pid.
    let pid = testkit::process::wait_for_process("sleep 120271", RUN_TIMEOUT).await;

    runner.signal(nix::sys::signal::Signal::SIGSTOP);
    let failed = h.cp.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(phase(&failed), ExecutionPhase::ExecutionFailed);
    assert!(
        status(&failed).error.contains("runner lost"),
        "{}",
        status(&failed).error
    );
    runner.signal(nix::sys::signal::Signal::SIGCONT);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tool process {pid} kept running after the lease was lost\n{}",
            runner.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = h.cp.get_execution(&id).await;
    assert_eq!(phase(&after), ExecutionPhase::ExecutionFailed);
    assert!(
        runner.stderr().contains("lease lost"),
        "{}",
        runner.output()
    );
}

/// The control plane restarts while a tool runs: the runner keeps its lease (persisted),
/// reconnects, and the execution completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_survives_a_control_plane_restart_mid_execution() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "run_command".into(),
                json!({"command": "touch started; sleep 2; echo slept"}),
            )],
        },
        Reply::Text("done".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let created = h.cp.create_execution("a", "", "sleep a bit").await;
    let id = execution_id(&created);
    let started = h.session_dir(&created).join("started");
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !started.exists() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let Harness { dir, cp, llm: _llm } = h;
    let addr = cp.addr;
    let data_dir = cp.data_dir.clone();
    cp.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cp =
        TestControlPlane::start_with(stigmer_server::ServerConfig::local(&data_dir), Some(addr))
            .await;

    let done = cp.wait_terminal(&id, RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        runner.output()
    );
    assert!(status(&done).tool_calls[0].result.contains("slept"));
    drop(dir);
}

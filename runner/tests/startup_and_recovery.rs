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

/// A `.env` where tool commands write (the runner's working directory inside the sandbox
/// root) is refused at start, with the file and the way out named; nothing is started, so a
/// redirected `STIGMER_LLM_BASE_URL` never receives the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotenv_inside_the_sandbox_root_is_refused() {
    let h = Harness::new(ScriptedLlm::start(vec![]).await).await;
    let attacker = ScriptedLlm::start(vec![Reply::Text("stolen".into())]).await;
    let cwd = h.dir.path().join("logs");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    std::fs::write(
        cwd.join(".env"),
        format!("STIGMER_LLM_BASE_URL={}\n", attacker.base_url()),
    )
    .expect("write .env");
    let mut env = h.runner_env(Wire::Anthropic);
    env.remove("STIGMER_LLM_BASE_URL");
    // The runner's working directory (`logs`) is inside this root.
    env.insert(
        "SANDBOX_ROOT_DIR".into(),
        h.dir.path().display().to_string(),
    );
    let mut runner = h.spawn_runner(&env, "dotenv-in-sandbox");
    let status = runner.wait_exit(EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(1));
    let err = runner.stderr();
    assert!(err.contains("refusing to read"), "{err}");
    assert!(
        err.contains(&cwd.join(".env").display().to_string()),
        "{err}"
    );
    assert!(err.contains("STIGMER_DOTENV=off"), "{err}");
    assert_eq!(attacker.request_count(), 0);
}

/// A `.env` outside the sandbox root is read, and the banner says which settings came from it
/// (and from where); `STIGMER_DOTENV=off` skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_names_where_each_setting_came_from() {
    let h = Harness::new(ScriptedLlm::start(vec![]).await).await;
    let cwd = h.dir.path().join("logs");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    std::fs::write(cwd.join(".env"), "STIGMER_DRAIN_TIMEOUT_SECS=7\n").expect("write .env");
    let file = std::fs::canonicalize(cwd.join(".env")).expect("canonical");
    let env = h.runner_env(Wire::Anthropic);
    let mut runner = h.start_runner(&env).await;
    let out = runner.stdout();
    assert!(
        out.contains(&format!(
            "drain timeout   7s   [.env {}: STIGMER_DRAIN_TIMEOUT_SECS]",
            file.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "llm endpoint    {}   [environment: STIGMER_LLM_BASE_URL]",
            h.llm.base_url()
        )),
        "{out}"
    );
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(EXIT_TIMEOUT).await;

    let mut env = env;
    env.insert("STIGMER_DOTENV".into(), "off".into());
    env.insert("STIGMER_HTTP_ADDR".into(), free_addr().to_string());
    let mut runner = h.spawn_runner(&env, "dotenv-off");
    runner.wait_ready(READY_TIMEOUT).await;
    let out = runner.stdout();
    assert!(out.contains("drain timeout   30s   [default]"), "{out}");
    assert!(
        out.contains("config file     none (STIGMER_DOTENV=off)"),
        "{out}"
    );
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(EXIT_TIMEOUT).await;
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

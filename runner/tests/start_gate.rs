//! The start gate: a runner does nothing for an execution (no model request, no tool call)
//! until the control plane has stored its start. The error paths: the start is refused because
//! the lease is gone, the start cannot be delivered, the execution is cancelled while the start
//! is on its way. The real runner binary talks to the real control plane through
//! `testkit::runner_proxy`, which holds the start or loses calls on the way.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use stigmer_proto::agentexecution::v1::{CancelExecutionRequest, ExecutionPhase};
use testkit::control_plane::phase;
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::ChildProcess;
use testkit::runner_proxy::{Call, HoldPoint, Rpc, RunnerProxy};

const LEASE: Duration = Duration::from_millis(800);

/// A model that asks for one side effect (`echo x >> log.txt`), then is done; counts the
/// requests that start an execution.
async fn model() -> (ScriptedLlm, Arc<AtomicUsize>) {
    let first_turns = Arc::new(AtomicUsize::new(0));
    let counter = first_turns.clone();
    let llm = ScriptedLlm::with_handler(move |req| {
        if req.body.to_string().contains("tool_result") {
            return Reply::Text("done".into());
        }
        counter.fetch_add(1, Ordering::SeqCst);
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "run_command".into(),
                json!({"command": "echo x >> log.txt"}),
            )],
        }
    })
    .await;
    (llm, first_turns)
}

async fn harness() -> (Harness, Arc<AtomicUsize>, RunnerProxy) {
    let (llm, first_turns) = model().await;
    let h = Harness::with_control_plane(llm, |dir| {
        let mut c = stigmer_server::ServerConfig::local(dir);
        c.lease_ttl = LEASE;
        c.sweep_interval = Duration::from_millis(100);
        c
    })
    .await;
    h.cp.apply_agent("a", "").await;
    let proxy = RunnerProxy::start(h.cp.channel().await).await;
    (h, first_turns, proxy)
}

/// One slot, so that it cannot take the execution again while the first attempt waits.
async fn runner_via(h: &Harness, proxy: &RunnerProxy, name: &str) -> ChildProcess {
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("STIGMER_BACKEND_ENDPOINT".into(), proxy.endpoint());
    env.insert("STIGMER_MAX_CONCURRENCY".into(), "1".into());
    let mut runner = h.spawn_runner(&env, name);
    runner.wait_ready(READY_TIMEOUT).await;
    runner
}

async fn wait_log(runner: &ChildProcess, needle: &str) {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !runner.stderr().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "runner never logged {needle:?}\n{}",
            runner.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn side_effects(
    h: &Harness,
    execution: &stigmer_proto::agentexecution::v1::AgentExecution,
) -> usize {
    std::fs::read_to_string(h.session_dir(execution).join("log.txt"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// The first runner's start is held while its heartbeats are lost; its lease expires, the
/// execution goes back to the queue and a second runner runs it. When the held start finally
/// arrives, the control plane refuses it, and the first runner calls neither the model nor a
/// tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refused_because_the_lease_is_gone_runs_nothing() {
    let (h, first_turns, proxy) = harness().await;
    let mut held = proxy.hold(HoldPoint::BeforeForwarding, |call| {
        matches!(call, Call::UpdateStatus(_))
    });
    let first = runner_via(&h, &proxy, "first").await;
    proxy.lose(Rpc::Heartbeat, true);
    let created = h.cp.create_execution("a", "", "go").await;
    let id = execution_id(&created);
    held.wait(RUN_TIMEOUT).await;

    let second = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let done = h.cp.wait_terminal(&id, RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        second.output()
    );

    held.release();
    wait_log(&first, "the control plane refused the start").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first_turns.load(Ordering::SeqCst), 1, "one run only");
    assert_eq!(side_effects(&h, &created), 1);
    assert_eq!(
        h.cp.get_execution(&id).await,
        done,
        "the refused runner changed the execution\n{}",
        first.output()
    );
}

/// Status updates cannot reach the control plane: the runner gives up on the start after the
/// lease's TTL without calling the model; the lease then expires and the execution, never
/// started, runs once the control plane is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_start_gives_the_execution_back() {
    let (h, first_turns, proxy) = harness().await;
    proxy.lose(Rpc::UpdateStatus, true);
    let runner = runner_via(&h, &proxy, "cut-off").await;
    let created = h.cp.create_execution("a", "", "go").await;
    let id = execution_id(&created);
    wait_log(&runner, "could not record the start").await;
    assert_eq!(h.llm.request_count(), 0, "the model was called");
    assert_eq!(
        phase(&h.cp.get_execution(&id).await),
        ExecutionPhase::ExecutionPending
    );

    proxy.lose(Rpc::UpdateStatus, false);
    let done = h.cp.wait_terminal(&id, RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        runner.output()
    );
    assert_eq!(first_turns.load(Ordering::SeqCst), 1);
    assert_eq!(side_effects(&h, &created), 1);
}

/// Cancelled while the start is on its way: the runner stops waiting for it and reports
/// CANCELLED without calling the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_before_the_start_is_recorded_calls_no_model() {
    let (h, _first_turns, proxy) = harness().await;
    let mut held = proxy.hold(HoldPoint::BeforeForwarding, |call| {
        matches!(call, Call::UpdateStatus(_))
    });
    let runner = runner_via(&h, &proxy, "cancelled").await;
    let created = h.cp.create_execution("a", "", "go").await;
    let id = execution_id(&created);
    held.wait(RUN_TIMEOUT).await;
    h.cp.executions()
        .await
        .cancel_execution(CancelExecutionRequest {
            id: id.clone(),
            reason: "not now".into(),
        })
        .await
        .expect("cancel");
    let done = h.cp.wait_terminal(&id, RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCancelled,
        "{}",
        runner.output()
    );
    assert_eq!(status(&done).error, "not now");
    assert_eq!(h.llm.request_count(), 0, "the model was called");
    assert_eq!(side_effects(&h, &created), 0);
}

//! Local mode end to end: the real control plane (in this test process, real gRPC on
//! loopback), the real `runner` binary as a child process, real files and processes in the
//! sandbox, and a scripted LLM server speaking the Anthropic / OpenAI streaming wire formats
//! (a stand-in for the real APIs, which CI cannot reach).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use stigmer_proto::agentexecution::v1::{
    CancelExecutionRequest, ExecutionPhase, MessageType, ToolCallStatus,
};
use testkit::control_plane::phase;
use testkit::llm::{Reply, ScriptedLlm};

fn write_then_read_script() -> Vec<Reply> {
    vec![
        Reply::ToolCalls {
            text: Some("I'll write the note first.".into()),
            calls: vec![(
                "write_file".into(),
                json!({"path": "notes/hello.txt", "content": "hello from the agent"}),
            )],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![("read_file".into(), json!({"path": "notes/hello.txt"}))],
        },
        Reply::Text("The note says: hello from the agent.".into()),
        // Second execution in the same session.
        Reply::Text("You asked me to write a note; I did.".into()),
    ]
}

/// A multi-turn agent writes a file, reads it back and completes; a second execution in the
/// same session sends the first one's conversation to the model.
async fn multi_turn_session(wire: Wire) {
    let llm = ScriptedLlm::start(write_then_read_script()).await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("writer", "You write notes.").await;
    let runner = h.start_runner(&h.runner_env(wire)).await;

    let created =
        h.cp.create_execution("writer", "", "Write a note saying hello")
            .await;
    let id = execution_id(&created);
    let mut phases = Vec::new();
    let done = h.cp.follow(&id, |e| phases.push(phase(e))).await;
    let s = status(&done);
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{s:?}\n{}",
        runner.output()
    );
    assert!(phases.contains(&ExecutionPhase::ExecutionInProgress));

    // Real file in the session's sandbox directory.
    let file = h.session_dir(&created).join("notes/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&file).expect("file written"),
        "hello from the agent"
    );

    // Tool calls went PENDING/RUNNING -> COMPLETED with results; read returned the content.
    assert_eq!(s.tool_calls.len(), 2);
    for call in &s.tool_calls {
        assert_eq!(call.status(), ToolCallStatus::ToolCallCompleted, "{call:?}");
        assert!(!call.started_at.is_empty() && !call.completed_at.is_empty());
    }
    assert!(s.tool_calls[1].result.contains("hello from the agent"));
    let types: Vec<MessageType> = s.messages.iter().map(|m| m.r#type()).collect();
    assert_eq!(types.first(), Some(&MessageType::MessageHuman));
    assert!(types.contains(&MessageType::MessageTool));
    assert_eq!(
        s.messages.last().map(|m| m.content.as_str()),
        Some("The note says: hello from the agent.")
    );
    for t in [&s.started_at, &s.completed_at] {
        assert!(t.ends_with('Z'), "RFC 3339 UTC: {t}");
        t.parse::<jiff::Timestamp>().expect("RFC 3339 timestamp");
    }

    // The model saw the read result in its third request, and the settings were passed.
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 3);
    let third = requests[2].body.to_string();
    assert!(third.contains("hello from the agent"), "{third}");
    let first = &requests[0].body;
    assert_eq!(first["model"], "test-model");
    assert_eq!(first["max_tokens"], 1234);
    assert_eq!(first["temperature"], 0.5);
    assert!(first.to_string().contains("You write notes."));
    match wire {
        Wire::Anthropic => {
            assert_eq!(
                requests[0].headers.get("x-api-key").map(String::as_str),
                Some(TEST_LLM_KEY)
            );
        }
        Wire::OpenAi => assert_eq!(
            requests[0].headers.get("authorization").cloned(),
            Some(format!("Bearer {TEST_LLM_KEY}"))
        ),
    }

    // Second execution in the same session continues the conversation.
    let second =
        h.cp.create_execution(
            "writer",
            &session_id(&created),
            "What did I ask you before?",
        )
        .await;
    let done2 =
        h.cp.wait_terminal(&execution_id(&second), RUN_TIMEOUT)
            .await;
    assert_eq!(phase(&done2), ExecutionPhase::ExecutionCompleted);
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 4);
    let fourth = requests[3].body.to_string();
    assert!(
        fourth.contains("Write a note saying hello"),
        "history missing: {fourth}"
    );
    assert!(
        fourth.contains("The note says: hello from the agent."),
        "{fourth}"
    );
    assert!(fourth.contains("What did I ask you before?"));

    // The banner named the key's source and never printed it.
    let out = runner.output();
    assert!(out.contains("LOCAL Mode"));
    assert!(
        out.contains("llm api key     set   [environment: "),
        "{out}"
    );
    assert!(
        !out.contains(TEST_LLM_KEY),
        "LLM key leaked into the runner's output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_wire_multi_turn_session() {
    multi_turn_session(Wire::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_wire_multi_turn_session() {
    multi_turn_session(Wire::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_tool_call_kills_the_process_group() {
    let llm = ScriptedLlm::start(vec![Reply::ToolCalls {
        text: None,
        calls: vec![(
            "run_command".into(),
            json!({"command": "sleep 314159 & wait"}),
        )],
    }])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("sleeper", "").await;
    let _runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let created = h.cp.create_execution("sleeper", "", "sleep").await;
    let id = execution_id(&created);
    // Found by its command line: inside the command's PID namespace `$!` is not a host pid.
    let pid = testkit::process::wait_for_process("sleep 314159", RUN_TIMEOUT).await;
    assert!(process_alive(pid));

    h.cp.executions()
        .await
        .cancel_execution(CancelExecutionRequest {
            id: id.clone(),
            reason: "changed my mind".into(),
        })
        .await
        .expect("cancel");
    let done = h.cp.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCancelled);
    assert!(status(&done).error.contains("changed my mind"));
    assert_eq!(
        status(&done).tool_calls[0].status(),
        ToolCallStatus::ToolCallFailed
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !process_alive(pid) && testkit::process::pids_running("sleep 314159").is_empty(),
        "grandchild {pid} survived the cancellation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_execution_in_flight_and_takes_no_new_work() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "run_command".into(),
                json!({"command": "touch started; sleep 1; echo done"}),
            )],
        },
        Reply::Text("finished".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let mut runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let first = h.cp.create_execution("a", "", "work").await;
    read_pid_file_exists(&h.session_dir(&first).join("started")).await;

    runner.signal(nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = h.cp.create_execution("a", "", "more work").await;

    let status_code = runner.wait_exit(RUN_TIMEOUT).await;
    assert!(
        status_code.success(),
        "exit {status_code}\n{}",
        runner.output()
    );
    let done = h.cp.get_execution(&execution_id(&first)).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{}",
        runner.output()
    );
    let untouched = h.cp.get_execution(&execution_id(&second)).await;
    assert_eq!(phase(&untouched), ExecutionPhase::ExecutionPending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cancels_what_is_left_with_the_reason() {
    let llm = ScriptedLlm::start(vec![Reply::ToolCalls {
        text: None,
        calls: vec![(
            "run_command".into(),
            json!({"command": "touch started; sleep 60"}),
        )],
    }])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("STIGMER_DRAIN_TIMEOUT_SECS".into(), "1".into());
    let mut runner = h.start_runner(&env).await;
    let first = h.cp.create_execution("a", "", "long work").await;
    read_pid_file_exists(&h.session_dir(&first).join("started")).await;

    runner.signal(nix::sys::signal::Signal::SIGTERM);
    let code = runner.wait_exit(RUN_TIMEOUT).await;
    assert_eq!(code.code(), Some(3), "{}", runner.output());
    let done = h.cp.get_execution(&execution_id(&first)).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCancelled);
    assert!(
        status(&done).error.contains("drain timeout"),
        "{:?}",
        status(&done).error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_never_contacted_in_local_mode() {
    // A listener standing where Redis would be, counting every connection it accepts.
    let redis = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redis_addr = redis.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while redis.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let llm = ScriptedLlm::start(vec![Reply::Text("hi".into())]).await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("REDIS_HOST".into(), redis_addr.ip().to_string());
    env.insert("REDIS_PORT".into(), redis_addr.port().to_string());
    env.insert("REDIS_PASSWORD".into(), "secret".into());
    env.insert("REDIS_URL".into(), format!("redis://{redis_addr}"));
    let mut runner = h.start_runner(&env).await;
    let created = h.cp.create_execution("a", "", "hello").await;
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner.wait_exit(RUN_TIMEOUT).await;

    // The counter works: prove it by connecting once ourselves.
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the runner connected to Redis"
    );
    let _probe = tokio::net::TcpStream::connect(redis_addr)
        .await
        .expect("probe");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_commands_do_not_see_the_runners_environment() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![("run_command".into(), json!({"command": "env"}))],
        },
        Reply::Text("ok".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let _runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let created = h.cp.create_execution("a", "", "show env").await;
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    let result = &status(&done).tool_calls[0].result;
    assert!(result.contains("PATH="), "{result}");
    assert!(
        !result.contains(TEST_LLM_KEY),
        "LLM key leaked into a tool command: {result}"
    );
    assert!(!result.contains("ANTHROPIC_API_KEY"), "{result}");
    assert!(!result.contains("STIGMER_"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_repeating_the_same_tool_call_is_stopped() {
    let same = || Reply::ToolCalls {
        text: None,
        calls: vec![("list_directory".into(), json!({"path": "."}))],
    };
    let llm = ScriptedLlm::start(vec![same(), same(), same(), same()]).await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let _runner = h.start_runner(&h.runner_env(Wire::OpenAi)).await;
    let created = h.cp.create_execution("a", "", "loop").await;
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionFailed);
    assert!(
        status(&done).error.contains("same tool call 3 times"),
        "{}",
        status(&done).error
    );
    assert_eq!(h.llm.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_limit_and_llm_errors_fail_with_the_reason() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![("list_directory".into(), json!({}))],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![("list_directory".into(), json!({"path": "x"}))],
        },
        Reply::Error {
            status: 400,
            retry_after: None,
            message: "prompt is too long".into(),
        },
    ])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("STIGMER_MAX_TURNS".into(), "2".into());
    let _runner = h.start_runner(&env).await;
    let created = h.cp.create_execution("a", "", "go").await;
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionFailed);
    let s = status(&done);
    assert!(s.error.contains("turn limit of 2"), "{}", s.error);
    assert_eq!(
        s.messages.last().map(|m| m.r#type()),
        Some(MessageType::MessageSystem)
    );

    let created = h.cp.create_execution("a", "", "again").await;
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionFailed);
    assert!(
        status(&done).error.contains("prompt is too long"),
        "{}",
        status(&done).error
    );
}

async fn read_pid_file_exists(path: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_the_model_streams_closes_the_stream() {
    let llm = ScriptedLlm::start(vec![Reply::Stall {
        text: "Thinking about".into(),
    }])
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let _runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let created = h.cp.create_execution("a", "", "think hard").await;
    let id = execution_id(&created);
    // The streamed text reaches the status before the model finishes.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let e = h.cp.get_execution(&id).await;
        if status(&e)
            .messages
            .iter()
            .any(|m| m.content.contains("Thinking about"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "streamed text never reached the status"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.llm.open_streams(), 1);
    h.cp.executions()
        .await
        .cancel_execution(CancelExecutionRequest {
            id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect("cancel");
    let done = h.cp.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCancelled);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.llm.open_streams() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the LLM stream stayed open after cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints_report_the_work() {
    let llm = ScriptedLlm::start(vec![Reply::Text("hello".into())]).await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let addr = runner.http_addr.expect("http addr");
    let created = h.cp.create_execution("a", "", "hi").await;
    h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
        .await;
    assert!(
        !h.session_dir(&created).exists(),
        "an execution that called no tool should not create a sandbox"
    );
    let (code, body) = testkit::process::http_get(addr, "/healthz")
        .await
        .expect("healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, metrics) = testkit::process::http_get(addr, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("stigmer_runner_executions_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stigmer_runner_llm_call_duration_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stigmer_runner_claim_wait_seconds"),
        "{metrics}"
    );
    let (code, status_json) = testkit::process::http_get(addr, "/status")
        .await
        .expect("status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&status_json).expect("json");
    assert_eq!(v["in_flight"], 0);
    assert_eq!(v["capacity"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_by_the_configured_slots() {
    // Every execution runs one slow tool call, then ends.
    let llm = ScriptedLlm::with_handler(|req| {
        if req.body.to_string().contains("tool_result") {
            Reply::Text("done".into())
        } else {
            Reply::ToolCalls {
                text: None,
                calls: vec![("run_command".into(), json!({"command": "sleep 0.4"}))],
            }
        }
    })
    .await;
    let h = Harness::new(llm).await;
    h.cp.apply_agent("a", "").await;
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("STIGMER_MAX_CONCURRENCY".into(), "2".into());
    let _runner = h.start_runner(&env).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(execution_id(
            &h.cp.create_execution("a", "", &format!("job {i}")).await,
        ));
    }
    let mut max_running = 0;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let mut running = 0;
        let mut finished = 0;
        for id in &ids {
            match phase(&h.cp.get_execution(id).await) {
                ExecutionPhase::ExecutionInProgress => running += 1,
                p if p.is_terminal() => finished += 1,
                _ => {}
            }
        }
        max_running = max_running.max(running);
        if finished == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "executions did not finish"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(max_running, 2, "expected exactly 2 executions at a time");
    for id in &ids {
        assert_eq!(
            phase(&h.cp.get_execution(id).await),
            ExecutionPhase::ExecutionCompleted
        );
    }
}

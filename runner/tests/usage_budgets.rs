//! Token usage, budgets and exact tool lists end to end: the real control plane (in this
//! process, real gRPC), the real `runner` binary, and the scripted LLM server reporting chosen
//! token counts in each wire format (Anthropic, OpenAI, llama.cpp's timings, none at all).

mod common;

use common::*;
use serde_json::json;
use stigmer_proto::agent::v1::{Agent, ApplyAgentRequest, ModelConfig, ToolList};
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionSpec, CreateExecutionRequest, ExecutionConfig, ExecutionPhase,
    MessageType, TokenUsage, ToolCallStatus,
};
use testkit::control_plane::phase;
use testkit::llm::{Reply, ScriptedLlm, ScriptedUsage, UsageReport};

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> ScriptedUsage {
    ScriptedUsage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        report: UsageReport::Documented,
    }
}

fn agent(name: &str) -> Agent {
    Agent {
        name: name.into(),
        model: Some(ModelConfig::default()),
        ..Default::default()
    }
}

fn tools(names: &[&str]) -> Option<ToolList> {
    Some(ToolList {
        names: names.iter().map(|n| n.to_string()).collect(),
    })
}

async fn apply(h: &Harness, agent: Agent) {
    h.cp.agents()
        .await
        .apply_agent(ApplyAgentRequest { agent: Some(agent) })
        .await
        .expect("apply agent");
}

/// Creates an execution with an optional budget of its own and waits for its end.
async fn run(h: &Harness, agent: &str, budget: Option<u64>) -> AgentExecution {
    let created = create(h, agent, budget).await.expect("create execution");
    h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
        .await
}

async fn create(
    h: &Harness,
    agent: &str,
    budget: Option<u64>,
) -> Result<AgentExecution, tonic::Status> {
    h.cp.executions()
        .await
        .create_execution(CreateExecutionRequest {
            spec: Some(AgentExecutionSpec {
                agent_id: agent.into(),
                message: "go".into(),
                execution_config: budget.map(|b| ExecutionConfig {
                    token_budget: Some(b),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            labels: Default::default(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn metrics(runner: &testkit::process::ChildProcess) -> String {
    let addr = runner.http_addr.expect("http addr");
    let (code, body) = testkit::process::http_get(addr, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(code, 200);
    body
}

fn total(e: &AgentExecution) -> TokenUsage {
    status(e).usage.expect("usage on the finished execution")
}

/// Usage of both turns of an execution that called a tool, cache tokens included, summed on
/// the status, per model and in the runner's Prometheus counters. The AI message's copy of
/// the tool call ends as the top-level call does.
async fn usage_is_summed(wire: Wire) {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: Some("Writing.".into()),
            calls: vec![(
                "write_file".into(),
                json!({"path": "a.txt", "content": "x"}),
            )],
        }
        .with_usage(usage(1200, 30, 1000, 100)),
        Reply::Text("Done.".into()).with_usage(usage(1300, 20, 1200, 0)),
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(&h, agent("counted")).await;
    let runner = h.start_runner(&h.runner_env(wire)).await;
    let done = run(&h, "counted", None).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{:?}\n{}",
        status(&done),
        runner.output()
    );
    // Only Anthropic reports cache writes.
    let (provider, cache_write) = match wire {
        Wire::Anthropic => ("anthropic", 100),
        Wire::OpenAi => ("openai", 0),
    };
    let expected = TokenUsage {
        input_tokens: 2500,
        output_tokens: 50,
        cache_read_tokens: 2200,
        cache_write_tokens: cache_write,
        model_calls: 2,
        calls_without_usage: 0,
    };
    assert_eq!(total(&done), expected);
    let by_model = &status(&done).usage_by_model;
    assert_eq!(by_model.len(), 1, "{by_model:?}");
    assert_eq!(
        (by_model[0].provider.as_str(), by_model[0].model.as_str()),
        (provider, "test-model")
    );
    assert_eq!(by_model[0].usage, Some(expected));
    // Stored, not only streamed.
    let stored = h.cp.get_execution(&execution_id(&done)).await;
    assert_eq!(total(&stored), expected);

    // Tools omitted: every built-in tool was offered.
    let offered = h.llm.requests()[0].body["tools"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(offered, stigmer_proto::rules::BUILTIN_TOOLS.len());

    // The copy inside the AI message is the finished top-level call.
    let s = status(&done);
    assert_eq!(s.tool_calls.len(), 1);
    let call = &s.tool_calls[0];
    assert_eq!(call.status(), ToolCallStatus::ToolCallCompleted);
    let copies: Vec<_> = s
        .messages
        .iter()
        .filter(|m| m.r#type() == MessageType::MessageAi)
        .flat_map(|m| m.tool_calls.iter())
        .collect();
    assert_eq!(copies, [call], "AI message copy differs from the call");
    assert!(!copies[0].started_at.is_empty() && !copies[0].result.is_empty());

    let m = metrics(&runner).await;
    for (kind, n) in [
        ("input", 2500),
        ("output", 50),
        ("cache_read", 2200),
        ("cache_write", cache_write),
    ] {
        let line = format!(
            "stigmer_runner_llm_tokens_total{{provider=\"{provider}\",model=\"test-model\",kind=\"{kind}\"}} {n}"
        );
        assert!(m.contains(&line), "missing {line}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_usage_is_summed_with_cache_tokens() {
    usage_is_summed(Wire::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_usage_is_summed_with_cached_tokens() {
    usage_is_summed(Wire::OpenAi).await;
}

/// llama.cpp reports cached tokens in `timings.cache_n`; a server that reports no usage is
/// counted as such rather than as zero tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_timings_and_absent_usage() {
    let llama = ScriptedUsage {
        report: UsageReport::LlamaCppTimings,
        ..usage(500, 7, 480, 0)
    };
    let absent = ScriptedUsage {
        report: UsageReport::Absent,
        ..usage(999, 999, 999, 0)
    };
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![("list_directory".into(), json!({"path": "."}))],
        }
        .with_usage(llama),
        Reply::Text("Empty.".into()).with_usage(absent),
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(&h, agent("llama")).await;
    let runner = h.start_runner(&h.runner_env(Wire::OpenAi)).await;
    let done = run(&h, "llama", None).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
    assert_eq!(
        total(&done),
        TokenUsage {
            input_tokens: 500,
            output_tokens: 7,
            cache_read_tokens: 480,
            cache_write_tokens: 0,
            model_calls: 2,
            calls_without_usage: 1,
        }
    );
    let m = metrics(&runner).await;
    let line =
        "stigmer_runner_llm_calls_without_usage_total{provider=\"openai\",model=\"test-model\"} 1";
    assert!(m.contains(line), "{m}");
    assert!(
        m.contains("stigmer_runner_llm_tokens_total{provider=\"openai\",model=\"test-model\",kind=\"cache_read\"} 480"),
        "{m}"
    );
}

/// The agent's budget stops the run after the model call that exceeds it, before that turn's
/// tools run; the FAILED execution names the budget and the figures, and carries its usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_budget_fails_the_execution() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "write_file".into(),
                json!({"path": "first.txt", "content": "1"}),
            )],
        }
        .with_usage(usage(600, 10, 0, 0)),
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "write_file".into(),
                json!({"path": "second.txt", "content": "2"}),
            )],
        }
        .with_usage(usage(700, 10, 0, 0)),
        Reply::Text("never asked".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(
        &h,
        Agent {
            token_budget: Some(1000),
            ..agent("capped")
        },
    )
    .await;
    let runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let created = create(&h, "capped", None).await.expect("create");
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionFailed,
        "{}",
        runner.output()
    );
    assert_eq!(
        status(&done).error,
        "token budget exceeded: 1320 tokens used of 1000 (the agent's token_budget; input and \
         output tokens of every model call)"
    );
    assert_eq!(h.llm.request_count(), 2);
    let session = h.session_dir(&created);
    assert!(session.join("first.txt").exists());
    assert!(
        !session.join("second.txt").exists(),
        "the turn past the budget must not run its tools"
    );
    let used = total(&done);
    assert_eq!((used.input_tokens, used.output_tokens), (1300, 20));
    // The unanswered call was not left PENDING in the AI message either.
    for m in &status(&done).messages {
        for copy in &m.tool_calls {
            assert_ne!(copy.status(), ToolCallStatus::ToolCallPending, "{copy:?}");
        }
    }
}

/// The execution's budget replaces the agent's, here a smaller one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_execution_budget_replaces_the_agent_budget() {
    let llm = ScriptedLlm::start(vec![
        Reply::Text("a long answer".into()).with_usage(usage(40, 20, 0, 0)),
        Reply::Text("a long answer".into()).with_usage(usage(40, 20, 0, 0)),
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(
        &h,
        Agent {
            token_budget: Some(1_000_000),
            ..agent("roomy")
        },
    )
    .await;
    let _runner = h.start_runner(&h.runner_env(Wire::OpenAi)).await;
    let done = run(&h, "roomy", Some(50)).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionFailed);
    assert!(
        status(&done)
            .error
            .starts_with("token budget exceeded: 60 tokens used of 50 (the execution's"),
        "{}",
        status(&done).error
    );
    // Without its own budget, the agent's large one lets the same answer complete.
    let done = run(&h, "roomy", None).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
    assert_eq!(total(&done).input_tokens, 40);
}

/// An execution whose only model call fails still ends with its (zero) usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_model_call_leaves_zero_usage() {
    let llm = ScriptedLlm::start(vec![Reply::Error {
        status: 400,
        retry_after: None,
        message: "model not found".into(),
    }])
    .await;
    let h = Harness::new(llm).await;
    apply(&h, agent("unlucky")).await;
    let _runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let done = run(&h, "unlucky", None).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionFailed);
    assert_eq!(total(&done), TokenUsage::default());
    assert!(status(&done).usage_by_model.is_empty());
}

/// `tools: []` sends no tool schema to the model; a list sends exactly those tools.
async fn exact_tool_lists(wire: Wire) {
    let llm = ScriptedLlm::start(vec![
        Reply::Text("no tools".into()),
        Reply::Text("one tool".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(
        &h,
        Agent {
            tools: tools(&[]),
            ..agent("bare")
        },
    )
    .await;
    apply(
        &h,
        Agent {
            tools: tools(&["read_file"]),
            ..agent("reader")
        },
    )
    .await;
    let _runner = h.start_runner(&h.runner_env(wire)).await;
    assert_eq!(
        phase(&run(&h, "bare", None).await),
        ExecutionPhase::ExecutionCompleted
    );
    assert_eq!(
        phase(&run(&h, "reader", None).await),
        ExecutionPhase::ExecutionCompleted
    );
    let requests = h.llm.requests();
    assert!(
        requests[0].body.get("tools").is_none(),
        "tools: [] must send no schemas: {}",
        requests[0].body
    );
    let offered = requests[1].body["tools"].as_array().expect("tools");
    assert_eq!(offered.len(), 1);
    let name = match wire {
        Wire::Anthropic => &offered[0]["name"],
        Wire::OpenAi => &offered[0]["function"]["name"],
    };
    assert_eq!(name, "read_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_exact_tool_lists() {
    exact_tool_lists(Wire::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_exact_tool_lists() {
    exact_tool_lists(Wire::OpenAi).await;
}

/// A session that called tools continues under `tools: []` (the agent re-applied): its earlier
/// tool calls reach the model as text, since the Anthropic API refuses tool blocks in a request
/// that defines no tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_tool_history_continues_without_tools() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "write_file".into(),
                json!({"path": "n.txt", "content": "noted"}),
            )],
        },
        Reply::Text("Saved.".into()),
        Reply::Text("You had me save n.txt.".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(&h, agent("shifty")).await;
    let _runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    let first = run(&h, "shifty", None).await;
    assert_eq!(phase(&first), ExecutionPhase::ExecutionCompleted);
    apply(
        &h,
        Agent {
            tools: tools(&[]),
            ..agent("shifty")
        },
    )
    .await;
    let second =
        h.cp.create_execution("shifty", &session_id(&first), "What did you do?")
            .await;
    let done =
        h.cp.wait_terminal(&execution_id(&second), RUN_TIMEOUT)
            .await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
    let last = h.llm.requests().pop().expect("request").body;
    assert!(last.get("tools").is_none(), "{last}");
    let sent = last["messages"].to_string();
    assert!(
        !sent.contains("tool_use") && !sent.contains("tool_result"),
        "{sent}"
    );
    assert!(sent.contains("[called the tool write_file with"), "{sent}");
    assert!(sent.contains("[tool result: "), "{sent}");
}

/// Bad tool lists and budgets are refused by the control plane with a message that says what
/// to change; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_refuses_bad_tools_and_budgets() {
    let llm = ScriptedLlm::start(vec![]).await;
    let h = Harness::new(llm).await;
    let refused = |a: Agent| async {
        h.cp.agents()
            .await
            .apply_agent(ApplyAgentRequest { agent: Some(a) })
            .await
            .expect_err("refused")
    };
    let err = refused(Agent {
        tools: tools(&["read_file", "shell"]),
        ..agent("bad")
    })
    .await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with(
            "unknown tool 'shell'; the built-in tools are run_command, read_file, write_file"
        ),
        "{}",
        err.message()
    );
    let err = refused(Agent {
        allowed_tools: vec!["browse".into()],
        ..agent("bad")
    })
    .await;
    assert!(err.message().contains("'browse'"), "{}", err.message());
    let err = refused(Agent {
        tools: tools(&["read_file"]),
        allowed_tools: vec!["read_file".into()],
        ..agent("bad")
    })
    .await;
    assert!(err.message().contains("not both"), "{}", err.message());
    for budget in [0, stigmer_proto::rules::MAX_TOKEN_BUDGET + 1] {
        let err = refused(Agent {
            token_budget: Some(budget),
            ..agent("bad")
        })
        .await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            format!(
                "token_budget {budget} is invalid: use a whole number of tokens from 1 to \
                 1000000000, or leave it out for no budget"
            )
        );
    }
    let listed =
        h.cp.agents()
            .await
            .list_agents(stigmer_proto::agent::v1::ListAgentsRequest {})
            .await
            .expect("list")
            .into_inner();
    assert!(listed.agents.is_empty(), "nothing stored: {listed:?}");

    apply(&h, agent("ok")).await;
    for budget in [0, u64::MAX] {
        let err = create(&h, "ok", Some(budget)).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with(&format!(
                "spec.execution_config.token_budget {budget} is invalid"
            )),
            "{}",
            err.message()
        );
    }
}

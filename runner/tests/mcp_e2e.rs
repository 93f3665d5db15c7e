//! MCP tool servers end to end, with real MCP servers from the npm registry that nobody on this
//! project wrote (`@modelcontextprotocol/server-everything` and `server-filesystem`, installed
//! by `scripts/test` into `STIGMER_TEST_MCP_SERVERS`), the real control plane, the real
//! `runner` binary (local mode under confinement, and cloud mode with Redis and the Daytona
//! stand-in) and the scripted model.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;
use stigmer_proto::agent::v1::mcp_server::Transport;
use stigmer_proto::agent::v1::{
    Agent, ApplyAgentRequest, McpHttpServer, McpServer, McpStdioServer, ModelConfig,
};
use stigmer_proto::agentexecution::v1::{
    AgentExecution, CancelExecutionRequest, ExecutionPhase, MessageType, ToolCallStatus,
};
use testkit::control_plane::{TestControlPlane, phase};
use testkit::llm::{Reply, ScriptedLlm};
use testkit::process::pids_running;

/// Where the npm packages are: `$STIGMER_TEST_MCP_SERVERS` (set by `scripts/test`), else the
/// directory `scripts/test` installs into. None (the test is skipped) only outside CI.
fn servers_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("STIGMER_TEST_MCP_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-servers"));
    let present = ["mcp-server-everything", "mcp-server-filesystem"]
        .iter()
        .all(|bin| dir.join("node_modules/.bin").join(bin).exists());
    if present {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the MCP reference servers are not installed in {} (scripts/test installs them)",
        dir.display()
    );
    eprintln!(
        "SKIPPED: MCP reference servers not installed in {}; run scripts/test",
        dir.display()
    );
    None
}

fn bin(dir: &Path, name: &str) -> String {
    dir.join("node_modules/.bin")
        .join(name)
        .display()
        .to_string()
}

fn stdio(name: &str, command: &str, args: &[&str]) -> McpServer {
    McpServer {
        name: name.into(),
        transport: Some(Transport::Stdio(McpStdioServer {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Default::default(),
        })),
        ..Default::default()
    }
}

fn with_env(mut server: McpServer, vars: &[(&str, &str)]) -> McpServer {
    if let Some(Transport::Stdio(s)) = server.transport.as_mut() {
        s.env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }
    server
}

async fn apply(cp: &TestControlPlane, agent: Agent) -> Result<Agent, tonic::Status> {
    cp.agents()
        .await
        .apply_agent(ApplyAgentRequest { agent: Some(agent) })
        .await
        .map(|r| r.into_inner())
}

fn agent(name: &str, env: &[(&str, &str)], servers: Vec<McpServer>) -> Agent {
    Agent {
        name: name.into(),
        instructions: "You use MCP tools.".into(),
        model: Some(ModelConfig::default()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        mcp_servers: servers,
        ..Default::default()
    }
}

/// Host pids of processes whose command line or environment holds `marker` (a confined
/// server's helper carries its plan, arguments included, in its environment).
fn processes_with(marker: &str) -> Vec<i32> {
    let mut pids = pids_running(marker);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            let held = std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| String::from_utf8_lossy(&env).contains(marker));
            if held && testkit::process::process_alive(pid) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

async fn assert_no_process_left(marker: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes of the MCP server outlived the execution: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn marker() -> String {
    format!("mcp-marker-{}", uuid::Uuid::new_v4().simple())
}

fn result_of<'a>(done: &'a AgentExecution, tool: &str) -> Vec<&'a str> {
    status(done)
        .tool_calls
        .iter()
        .filter(|c| c.name == tool)
        .map(|c| {
            if c.result.is_empty() {
                c.error.as_str()
            } else {
                c.result.as_str()
            }
        })
        .collect()
}

async fn wait_tool_running(h: &Harness, id: &str, tool: &str) {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let e = h.cp.get_execution(id).await;
        let running = status(&e)
            .tool_calls
            .iter()
            .any(|c| c.name == tool && c.status() == ToolCallStatus::ToolCallRunning);
        if running {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tool} never ran: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Local mode under confinement: the model calls tools of two stdio servers; the filesystem
/// server writes into the session, cannot reach a directory outside it even when told to, the
/// everything server sees only the variables it was given (with `${NAME}` filled), an image
/// comes back as a summary, and no process of either server outlives the execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_servers_run_confined_in_local_mode() {
    let Some(dir) = servers_dir() else { return };
    let mark = marker();
    let outside = tempfile::tempdir().expect("outside dir");
    std::fs::write(outside.path().join("secret.txt"), "top-secret-outside").expect("secret");
    let outside_path = outside.path().display().to_string();
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: Some("Using MCP tools.".into()),
            calls: vec![
                (
                    "everything__echo".into(),
                    json!({"message": "ping-through-mcp"}),
                ),
                (
                    "files__write_file".into(),
                    json!({"path": "mcp-note.txt", "content": "written by an MCP server"}),
                ),
            ],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![
                ("everything__get-env".into(), json!({})),
                ("everything__get-tiny-image".into(), json!({})),
                (
                    "files__read_text_file".into(),
                    json!({"path": format!("{outside_path}/secret.txt")}),
                ),
            ],
        },
        Reply::Text("All done.".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    let servers = vec![
        with_env(
            stdio(
                "everything",
                &bin(&dir, "mcp-server-everything"),
                &["stdio", &mark],
            ),
            &[("MCP_GREETING", "${GREETING}")],
        ),
        McpServer {
            tools: vec!["write_file".into(), "read_text_file".into()],
            ..stdio(
                "files",
                &bin(&dir, "mcp-server-filesystem"),
                &[".", &outside_path, &mark],
            )
        },
    ];
    apply(
        &h.cp,
        agent("mcp-local", &[("GREETING", "hello-from-env")], servers),
    )
    .await
    .expect("agent applied");
    let runner = h.start_runner(&h.runner_env(Wire::Anthropic)).await;
    assert!(
        runner.stdout().contains("enforced:"),
        "confinement expected: {}",
        runner.output()
    );

    let created =
        h.cp.create_execution("mcp-local", "", "Use your MCP tools")
            .await;
    let done =
        h.cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT)
            .await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{:?}\n{}",
        status(&done),
        runner.output()
    );
    assert_eq!(
        result_of(&done, "everything__echo"),
        ["Echo: ping-through-mcp"]
    );
    let note = h.session_dir(&created).join("mcp-note.txt");
    assert_eq!(
        std::fs::read_to_string(&note).expect("the filesystem server wrote into the session"),
        "written by an MCP server"
    );
    let env = result_of(&done, "everything__get-env").join("");
    assert!(env.contains("hello-from-env"), "{env}");
    assert!(
        !env.contains(TEST_LLM_KEY),
        "the runner's key leaked: {env}"
    );
    assert!(
        env.contains(&h.session_dir(&created).display().to_string()),
        "HOME is the session: {env}"
    );
    let image = result_of(&done, "everything__get-tiny-image").join("");
    assert!(image.contains("[image image/png, "), "{image}");
    // Confined, the server cannot read outside the session, although its arguments allow it.
    let secret = status(&done)
        .tool_calls
        .iter()
        .find(|c| c.name == "files__read_text_file")
        .expect("read call");
    assert_eq!(
        secret.status(),
        ToolCallStatus::ToolCallFailed,
        "{secret:?}"
    );
    assert!(!secret.error.contains("top-secret-outside"), "{secret:?}");

    // The model was offered the servers' tools by their namespaced names, the allow-list
    // applied, the built-in tools still there.
    let first = h.llm.requests()[0].body.to_string();
    for offered in [
        "everything__echo",
        "files__write_file",
        "files__read_text_file",
        "run_command",
    ] {
        assert!(
            first.contains(&format!("\"{offered}\"")),
            "{offered} not offered"
        );
    }
    assert!(
        !first.contains("files__list_directory"),
        "allow-list ignored"
    );
    assert_no_process_left(&mark).await;
}

/// A server that cannot be found, one that exits at once, one that never answers and one
/// whose variable is not set are each reported to the model and in the status, and the
/// execution goes on with the server that works; a call slower than the tool timeout, an
/// oversized result and a server killed during a call are tool errors the model reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_failures_are_readable_and_the_execution_continues() {
    let Some(dir) = servers_dir() else { return };
    let mark = marker();
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "everything__trigger-long-running-operation".into(),
                json!({"duration": 30, "steps": 2}),
            )],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "everything__echo".into(),
                json!({"message": "x".repeat(3000)}),
            )],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "everything__trigger-long-running-operation".into(),
                json!({"duration": 20, "steps": 4}),
            )],
        },
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "everything__echo".into(),
                json!({"message": "still there?"}),
            )],
        },
        Reply::Text("I coped.".into()),
    ])
    .await;
    let h = Harness::new(llm).await;
    let servers = vec![
        stdio("missing", "/nonexistent/mcp-server", &[]),
        stdio(
            "crashes",
            "/bin/sh",
            &["-c", "echo boom-on-stderr >&2; exit 3"],
        ),
        McpServer {
            start_timeout_secs: 1,
            ..stdio("slow", "/bin/sh", &["-c", "sleep 30"])
        },
        with_env(
            stdio("unset", "/bin/true", &[]),
            &[("X", "${NOT_SET_ANYWHERE}")],
        ),
        stdio(
            "everything",
            &bin(&dir, "mcp-server-everything"),
            &["stdio", &mark],
        ),
    ];
    apply(&h.cp, agent("mcp-errors", &[], servers))
        .await
        .expect("agent applied");
    let mut env = h.runner_env(Wire::OpenAi);
    env.insert("STIGMER_TOOL_TIMEOUT_SECS".into(), "3".into());
    env.insert("STIGMER_TOOL_OUTPUT_LIMIT".into(), "512".into());
    let runner = h.start_runner(&env).await;

    let created =
        h.cp.create_execution("mcp-errors", "", "Try your tools")
            .await;
    let id = execution_id(&created);
    // Third model turn: kill the server while its call runs.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while h.llm.request_count() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            runner.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_tool_running(&h, &id, "everything__trigger-long-running-operation").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for pid in pids_running(&mark) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let done = h.cp.wait_terminal(&id, RUN_TIMEOUT).await;
    let s = status(&done);
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{s:?}\n{}",
        runner.output()
    );
    let system: Vec<&str> = s
        .messages
        .iter()
        .filter(|m| m.r#type() == MessageType::MessageSystem)
        .map(|m| m.content.as_str())
        .collect();
    let expect = [
        "MCP server 'missing' was not started: its command '/nonexistent/mcp-server' does not exist",
        "MCP server 'crashes' failed during start-up",
        "MCP server 'slow' did not finish starting and listing its tools within 1s",
        "MCP server 'unset' was not started: its env.X uses ${NOT_SET_ANYWHERE}",
    ];
    for text in expect {
        assert!(
            system.iter().any(|m| m.contains(text)),
            "no system message '{text}': {system:#?}"
        );
    }
    let crashed = system
        .iter()
        .find(|m| m.contains("'crashes'"))
        .expect("crash message");
    assert!(
        crashed.contains("exited with code 3") && crashed.contains("boom-on-stderr"),
        "{crashed}"
    );
    // The model was told too, in its instructions.
    let first = h.llm.requests()[0].body.to_string();
    assert!(
        first.contains("MCP server 'slow' did not finish"),
        "{first}"
    );

    let calls = &s.tool_calls;
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(calls[0].status(), ToolCallStatus::ToolCallFailed);
    assert!(
        calls[0]
            .error
            .contains("did not answer the call of 'trigger-long-running-operation' within 3s"),
        "{:?}",
        calls[0]
    );
    assert_eq!(calls[1].status(), ToolCallStatus::ToolCallCompleted);
    assert!(
        calls[1].result.len() < 1024,
        "not bounded: {}",
        calls[1].result.len()
    );
    assert!(calls[1].result.contains("bytes"), "{}", calls[1].result);
    assert_eq!(calls[2].status(), ToolCallStatus::ToolCallFailed);
    assert!(
        calls[2].error.contains("MCP server 'everything' is gone"),
        "{:?}",
        calls[2]
    );
    assert_eq!(calls[3].status(), ToolCallStatus::ToolCallFailed);
    assert!(calls[3].error.contains("'everything'"), "{:?}", calls[3]);
    assert_no_process_left(&mark).await;
}

/// How an execution with a running MCP call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The user cancels it.
    Cancel,
    /// The runner drains (SIGTERM) and its drain timeout cancels the execution.
    Drain,
    /// The model fails (a 400 on the next turn): the execution is FAILED.
    ModelFails,
    /// The runner is killed outright (SIGKILL: no cleanup runs in the runner); the confined
    /// server's helper sees its status channel's reader gone and ends it.
    KillRunner,
}

/// However the execution ends, no process of its stdio server survives.
async fn server_ends_with_the_execution(end: End) {
    let Some(dir) = servers_dir() else { return };
    let mark = marker();
    let (duration, next) = match end {
        // A short call, then a model error.
        End::ModelFails => (1, 400),
        _ => (60, 200),
    };
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "everything__trigger-long-running-operation".into(),
                json!({"duration": duration, "steps": 1}),
            )],
        },
        Reply::Error {
            status: next,
            retry_after: None,
            message: "the model refuses".into(),
        },
    ])
    .await;
    let h = Harness::new(llm).await;
    apply(
        &h.cp,
        agent(
            "mcp-end",
            &[],
            vec![stdio(
                "everything",
                &bin(&dir, "mcp-server-everything"),
                &["stdio", &mark],
            )],
        ),
    )
    .await
    .expect("agent applied");
    let mut env = h.runner_env(Wire::Anthropic);
    env.insert("STIGMER_DRAIN_TIMEOUT_SECS".into(), "1".into());
    let mut runner = h.start_runner(&env).await;
    assert!(
        runner.stdout().contains("enforced:"),
        "confinement expected: {}",
        runner.output()
    );
    let created = h.cp.create_execution("mcp-end", "", "Wait").await;
    let id = execution_id(&created);
    wait_tool_running(&h, &id, "everything__trigger-long-running-operation").await;
    assert!(!processes_with(&mark).is_empty(), "the server runs");
    let expected = match end {
        End::Cancel => {
            h.cp.executions()
                .await
                .cancel_execution(CancelExecutionRequest {
                    id: id.clone(),
                    reason: "user stop".into(),
                })
                .await
                .expect("cancel");
            Some(ExecutionPhase::ExecutionCancelled)
        }
        End::Drain => {
            runner.signal(nix::sys::signal::Signal::SIGTERM);
            Some(ExecutionPhase::ExecutionCancelled)
        }
        End::ModelFails => Some(ExecutionPhase::ExecutionFailed),
        End::KillRunner => {
            runner.signal(nix::sys::signal::Signal::SIGKILL);
            runner.wait_exit(Duration::from_secs(10)).await;
            None
        }
    };
    if let Some(expected) = expected {
        let done = h.cp.wait_terminal(&id, RUN_TIMEOUT).await;
        assert_eq!(phase(&done), expected, "{end:?}: {}", runner.output());
    }
    assert_no_process_left(&mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_the_server() {
    server_ends_with_the_execution(End::Cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_stops_the_server() {
    server_ends_with_the_execution(End::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_execution_stops_the_server() {
    server_ends_with_the_execution(End::ModelFails).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_leaves_no_server() {
    server_ends_with_the_execution(End::KillRunner).await;
}

/// The control plane in its cloud configuration refuses an agent with a stdio server, saying
/// why; an HTTP server (the everything server in its Streamable HTTP mode) works in cloud
/// mode, with its header filled from the agent's env.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_works_in_cloud_mode_and_stdio_is_refused() {
    use stigmer_server::{RedisSettings, RedisTarget, ServerConfig};
    use testkit::daytona::{DaytonaOptions, DaytonaServer};
    use testkit::process::{ChildProcess, free_addr};
    use testkit::redis::RedisServer;

    let Some(dir) = servers_dir() else { return };
    let redis = RedisServer::start();
    let daytona = DaytonaServer::start(DaytonaOptions::new(DAYTONA_KEY)).await;
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![("web__get-sum".into(), json!({"a": 20, "b": 22}))],
        },
        Reply::Text("It is 42.".into()),
    ])
    .await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let jwt = testkit::pki::unsigned_jwt("runner");
    let mut config = ServerConfig::local(tmp.path().join("data"));
    config.api_keys = vec![stigmer_proto::LOCAL_API_KEY.to_string(), jwt.clone()];
    config.redis = Some(RedisSettings::new(RedisTarget::Url(redis.url())));
    let cp = TestControlPlane::start_with(config, None).await;

    let refused = apply(
        &cp,
        agent(
            "cloud-stdio",
            &[],
            vec![stdio("files", &bin(&dir, "mcp-server-filesystem"), &["."])],
        ),
    )
    .await
    .expect_err("stdio refused in cloud mode");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("cannot run in cloud mode")
            && refused.message().contains("Daytona"),
        "{}",
        refused.message()
    );

    // The everything server over Streamable HTTP, on a free port of this machine.
    let port = free_addr().port();
    let _server = tokio::process::Command::new(bin(&dir, "mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the everything server over HTTP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the HTTP MCP server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = McpServer {
        name: "web".into(),
        transport: Some(Transport::Http(McpHttpServer {
            url: format!("http://127.0.0.1:{port}/mcp"),
            headers: [("X-Api-Key".to_string(), "${WEB_KEY}".to_string())].into(),
        })),
        tools: vec!["get-sum".into()],
        start_timeout_secs: 20,
        ..Default::default()
    };
    apply(
        &cp,
        agent("cloud-http", &[("WEB_KEY", "k-123")], vec![http]),
    )
    .await
    .expect("http accepted in cloud mode");
    let env = cloud_env(
        &cp.endpoint(),
        &jwt,
        &daytona,
        &llm.base_url(),
        &[("REDIS_URL", redis.url())],
    );
    let mut runner = ChildProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_runner")),
        &env,
        &tmp.path().join("logs"),
        "cloud-runner",
    );
    runner.wait_ready(READY_TIMEOUT).await;
    let created = cp.create_execution("cloud-http", "", "Add 20 and 22").await;
    let done = cp.wait_terminal(&execution_id(&created), RUN_TIMEOUT).await;
    assert_eq!(
        phase(&done),
        ExecutionPhase::ExecutionCompleted,
        "{:?}\n{}",
        status(&done),
        runner.output()
    );
    let sum = result_of(&done, "web__get-sum").join("");
    assert!(sum.contains("42"), "{sum}");
    let offered = llm.requests()[0].body.to_string();
    assert!(offered.contains("\"web__get-sum\""), "{offered}");
    assert!(!offered.contains("web__echo"), "allow-list ignored");
}

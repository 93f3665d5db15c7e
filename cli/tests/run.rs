//! `stigmer agent apply` and `stigmer run` against a platform started by `stigmer local
//! start`, with a scripted LLM server standing in for the model API: live output, exit
//! codes by phase, and Ctrl-C cancelling the execution on the server.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;
use testkit::llm::{Reply, ScriptedLlm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_shows_tool_calls_live_and_exits_by_phase() {
    let llm = ScriptedLlm::start(vec![
        // 1: completes after a tool call.
        Reply::ToolCalls {
            text: Some("Writing the haiku.".into()),
            calls: vec![(
                "write_file".into(),
                json!({"path": "haiku.txt", "content": "old pond / a frog jumps in / splash"}),
            )],
        },
        Reply::Text("Done: haiku.txt holds the haiku.".into()),
        // 2: the model API refuses the request: FAILED.
        Reply::Error {
            status: 400,
            retry_after: None,
            message: "model not found".into(),
        },
    ])
    .await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;

    let agent = p.dir.path().join("writer.yaml");
    std::fs::write(
        &agent,
        "name: writer\ninstructions: You write short poems into files.\n\
         tools: [write_file, read_file]\n",
    )
    .expect("agent file");
    let applied = p
        .cli(&["agent", "apply", "-f", &agent.display().to_string()])
        .await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));

    // MCP servers: mistakes are refused with the reason, by the file parser or the server.
    for (servers, reason) in [
        ("  gh__x: {url: https://h/mcp}\n", "contains \"__\""),
        ("  files: {command: \"\"}\n", "stdio.command is empty"),
        (
            "  web: {url: ftp://h/mcp}\n",
            "not an http:// or https:// URL",
        ),
        ("  files: {command: x, netwrk: allow}\n", "netwrk"),
        ("  files: {command: x, network: internet}\n", "allow"),
    ] {
        let bad = p.dir.path().join("bad-mcp.yaml");
        std::fs::write(&bad, format!("name: mcp-agent\nmcp_servers:\n{servers}"))
            .expect("agent file");
        let refused = p
            .cli(&["agent", "apply", "-f", &bad.display().to_string()])
            .await;
        assert_ne!(
            refused.status.code(),
            Some(0),
            "{servers}: {}",
            text(&refused)
        );
        assert!(
            text(&refused).contains(reason),
            "{servers}: {}",
            text(&refused)
        );
    }

    // No --endpoint: `run` finds the platform through STIGMER_HOME.
    let mut args = vec!["run", "--agent", "writer", "Write a haiku to haiku.txt"];
    let out = p
        .command(args.clone())
        .env("STIGMER_HOME", p.data_dir())
        .output()
        .await
        .expect("run");
    let shown = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(shown.contains("Writing the haiku."), "{shown}");
    assert!(shown.contains("-> write_file("), "tool call shown: {shown}");
    assert!(shown.contains("haiku.txt"), "{shown}");
    assert!(
        shown.contains("Done: haiku.txt holds the haiku."),
        "{shown}"
    );
    let sessions = p.data_dir().join("workspace");
    let written: Vec<_> = std::fs::read_dir(&sessions)
        .expect("workspace")
        .flatten()
        .map(|e| e.path().join("haiku.txt"))
        .filter(|f| f.exists())
        .collect();
    assert_eq!(written.len(), 1, "the file is in the session's sandbox");

    args[3] = "This one fails";
    let failed = p.cli(&args).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("FAILED") || text(&failed).contains("failed"),
        "{}",
        text(&failed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_execution_on_the_server() {
    let llm = ScriptedLlm::start(vec![Reply::Stall {
        text: "Thinking very slowly".into(),
    }])
    .await;
    let p = Platform::new(Wire::Anthropic, &llm.base_url()).with_key();
    p.start(&[]).await;

    let run = p
        .command(["--endpoint", &p.endpoint(), "run", "Never finish"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let pid = run.id().expect("pid") as i32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while llm.request_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no model call\n{}",
            p.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the CLI see the streamed text, then interrupt it like a terminal would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(pid, Signal::SIGINT);
    let out = tokio::time::timeout(Duration::from_secs(30), run.wait_with_output())
        .await
        .expect("run ended")
        .expect("output");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(stderr(&out).contains("cancelling"), "{}", text(&out));

    let list = p
        .cli(&["-o", "json", "execution", "list", "--phase", "cancelled"])
        .await;
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let cancelled: Vec<serde_json::Value> = stdout(&list)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(cancelled.len(), 1, "{}", text(&list));
    assert_eq!(cancelled[0]["phase"], "EXECUTION_CANCELLED");
    // The runner hung up on the model: the cancellation reached it, not just the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while llm.open_streams() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the model stream stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = p.local(&["status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(stdout(&status).contains("in-flight 0"), "{}", text(&status));
}

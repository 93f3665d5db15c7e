//! Through the real `stigmer` binary against a platform it started (`stigmer local start`),
//! with the scripted LLM server reporting chosen token counts: the token summary of `run` and
//! `execution get`, budgets, exact tool lists, what `agent apply` refuses, and
//! `SANDBOX_ROOT_DIR` from the environment.

mod common;

use common::*;
use serde_json::json;
use testkit::llm::{Reply, ScriptedLlm, ScriptedUsage, UsageReport};

fn usage(input: u64, output: u64, cache_read: u64) -> ScriptedUsage {
    ScriptedUsage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: 0,
        report: UsageReport::Documented,
    }
}

fn write(p: &Platform, name: &str, text: &str) -> String {
    let path = p.dir.path().join(name);
    std::fs::write(&path, text).expect("agent file");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_budgets_and_tool_lists_through_the_cli() {
    let llm = ScriptedLlm::start(vec![
        // 1: `run` with tools: [] — one answer, counted.
        Reply::Text("Nothing to do.".into()).with_usage(usage(1200, 34, 1000)),
        // 2: `run --token-budget 50` — past it after the first call.
        Reply::ToolCalls {
            text: None,
            calls: vec![("write_todos".into(), json!({"todos": []}))],
        }
        .with_usage(usage(40, 20, 0)),
    ])
    .await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;

    // Refused before anything is sent, naming what is wrong.
    let bad = write(&p, "bad.yaml", "name: bad\ntools: [read_file, shell]\n");
    let out = p.cli(&["agent", "apply", "-f", &bad]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("tools: unknown tool 'shell'; the built-in tools are run_command"),
        "{}",
        text(&out)
    );
    let zero = write(&p, "zero.yaml", "name: zero\ntoken_budget: 0\n");
    let out = p.cli(&["agent", "apply", "-f", &zero]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("token_budget 0 is invalid: use a whole number of tokens"),
        "{}",
        text(&out)
    );
    let out = p.cli(&["agent", "list"]).await;
    assert!(stdout(&out).contains("no agents yet"), "{}", text(&out));

    let bare = write(
        &p,
        "bare.yaml",
        "name: bare\ninstructions: Answer briefly.\ntools: []\ntoken_budget: 100000\n",
    );
    let out = p.cli(&["agent", "apply", "-f", &bare]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = p.cli(&["-o", "json", "agent", "get", "bare"]).await;
    let agent: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("agent json");
    assert_eq!(agent["tools"], json!([]));
    assert_eq!(agent["token_budget"], 100000);

    // The end summary names the tokens; no tool schema went to the model.
    let out = p.cli(&["run", "--agent", "bare", "Anything to do?"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(
        stdout(&out)
            .contains("== COMPLETED\n   tokens: 1200 in (1000 cached), 34 out; 1 model call\n"),
        "{}",
        text(&out)
    );
    let request = &llm.requests()[0].body;
    assert!(request.get("tools").is_none(), "{request}");

    // `execution get` carries the usage, in total and per model.
    let list = p.cli(&["-o", "json", "execution", "list"]).await;
    let first: serde_json::Value =
        serde_json::from_str(stdout(&list).lines().next().expect("one")).expect("json");
    let id = first["id"].as_str().expect("id").to_string();
    let got = p.cli(&["execution", "get", &id]).await;
    assert_eq!(got.status.code(), Some(0), "{}", text(&got));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&got)).expect("pretty json");
    assert_eq!(shown["usage"]["input_tokens"], 1200);
    assert_eq!(shown["usage"]["cache_read_tokens"], 1000);
    assert_eq!(shown["usage"]["output_tokens"], 34);
    assert_eq!(shown["usage_by_model"][0]["model"], "test-model");
    assert_eq!(shown["usage_by_model"][0]["provider"], "openai");

    // A bad budget on the command line is refused by the CLI itself.
    let out = p
        .cli(&["run", "--agent", "bare", "--token-budget", "0", "hi"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--token-budget"), "{}", text(&out));

    // The execution's budget replaces the agent's: FAILED, exit 1, the figures shown.
    let todo = write(&p, "todo.yaml", "name: todo\ntools: [write_todos]\n");
    let out = p.cli(&["agent", "apply", "-f", &todo]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = p
        .cli(&["run", "--agent", "todo", "--token-budget", "50", "Plan"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "== FAILED: token budget exceeded: 60 tokens used of 50 (the execution's token_budget"
        ),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("   tokens: 40 in, 20 out; 1 model call"),
        "{}",
        text(&out)
    );
    assert_eq!(llm.request_count(), 2);
}

/// `SANDBOX_ROOT_DIR` in the environment of `stigmer local start` is where sessions go (it
/// used to be ignored for `<data-dir>/workspace`), and the start says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_start_honours_sandbox_root_dir() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls {
            text: None,
            calls: vec![(
                "write_file".into(),
                json!({"path": "where.txt", "content": "here"}),
            )],
        },
        Reply::Text("Written.".into()),
    ])
    .await;
    let mut p = Platform::new(Wire::Anthropic, &llm.base_url()).with_key();
    let sessions = p.dir.path().join("my sessions");
    p.env
        .insert("SANDBOX_ROOT_DIR".into(), sessions.display().to_string());

    // The data directory itself is refused, before anything starts.
    let mut refused = Platform::new(Wire::Anthropic, &llm.base_url()).with_key();
    let data_dir = refused.data_dir().display().to_string();
    refused.env.insert("SANDBOX_ROOT_DIR".into(), data_dir);
    let out = refused.run(refused.start_args(&[])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("is or contains the data directory"),
        "{}",
        text(&out)
    );
    assert!(!refused.data_dir().join("run").join("state.json").exists());

    let started = p.start(&[]).await;
    assert!(
        stdout(&started).contains(&format!("  sandbox root   {}\n", sessions.display())),
        "{}",
        text(&started)
    );
    assert_eq!(p.state()["sandbox_root"], sessions.display().to_string());
    let status = p.local(&["status"]).await;
    assert!(
        stdout(&status).contains(&format!("sandbox root   {}", sessions.display())),
        "{}",
        text(&status)
    );

    let out = p.cli(&["run", "Write where.txt"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    let written: Vec<_> = std::fs::read_dir(&sessions)
        .expect("the sandbox root exists")
        .flatten()
        .map(|e| e.path().join("where.txt"))
        .filter(|f| f.exists())
        .collect();
    assert_eq!(written.len(), 1, "the session is under SANDBOX_ROOT_DIR");
    let default_root = p.data_dir().join("workspace");
    let in_default = std::fs::read_dir(&default_root)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(in_default, 0, "nothing under {}", default_root.display());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&sessions)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "created private");
}

//! The tools end to end through `execute`, against a real sandbox directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::sandbox::{SandboxRoot, truncation_marker};

struct Fixture {
    _tmp: tempfile::TempDir,
    sandbox: Sandbox,
    session: PathBuf,
    env: BTreeMap<String, String>,
    cancel: CancellationToken,
    limits: ToolLimits,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = SandboxRoot::new(tmp.path()).expect("root");
        let sandbox = root.open("tools").expect("session");
        let session = root.path().join("tools");
        Self {
            _tmp: tmp,
            sandbox,
            session,
            env: BTreeMap::new(),
            cancel: CancellationToken::new(),
            limits: ToolLimits::default(),
        }
    }

    fn ctx(&self) -> ToolContext<'_> {
        ToolContext {
            sandbox: &self.sandbox,
            env: &self.env,
            cancel: &self.cancel,
            limits: &self.limits,
            network: crate::sandbox::Network::None,
        }
    }

    async fn call(&self, name: &str, input: Value) -> ToolOutcome {
        execute(name, &input, &self.ctx())
            .await
            .expect("tool call is not cancelled")
    }

    async fn ok(&self, name: &str, input: Value) -> String {
        let outcome = self.call(name, input).await;
        assert!(!outcome.is_error, "{name} failed: {}", outcome.output);
        outcome.output
    }

    async fn err(&self, name: &str, input: Value) -> String {
        let outcome = self.call(name, input).await;
        assert!(outcome.is_error, "{name} should fail: {}", outcome.output);
        assert_eq!(outcome.effect, ToolEffect::None);
        outcome.output
    }

    fn write(&self, rel: &str, contents: &str) {
        let path = self.session.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent");
        }
        std::fs::write(path, contents).expect("write fixture file");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.session.join(rel)).expect("read fixture file")
    }
}

// ---- specs ----

#[test]
fn executions_share_the_built_in_schemas() {
    // Each execution asks for its specs; the schemas must be one copy for all of them (see
    // BENCHMARKS.md, capacity: per-execution copies were most of an idle execution's memory).
    let first = specs(&[]).expect("specs");
    let second = specs_for(stigmer_proto::rules::ToolChoice::Only(&[
        "read_file".to_owned()
    ]))
    .expect("specs");
    let read_file = first
        .iter()
        .find(|s| s.name == "read_file")
        .expect("read_file");
    assert!(std::sync::Arc::ptr_eq(
        &read_file.input_schema,
        &second[0].input_schema
    ));
}

#[test]
fn specs_default_to_all_tools_in_order() {
    let all = specs(&[]).expect("all specs");
    let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ALL_TOOLS);
    for spec in &all {
        assert!(
            spec.description.len() > 40,
            "{} needs a description",
            spec.name
        );
        let schema = &spec.input_schema;
        assert_eq!(schema["type"], "object", "{}", spec.name);
        assert_eq!(schema["additionalProperties"], false, "{}", spec.name);
        let properties = schema["properties"].as_object().expect("properties");
        for required in schema["required"].as_array().expect("required") {
            let required = required.as_str().expect("required name");
            assert!(
                properties.contains_key(required),
                "{}: required {required} is not a property",
                spec.name
            );
        }
    }
}

#[test]
fn specs_follow_the_allowed_list() {
    let allowed = vec![
        "write_todos".to_owned(),
        "read_file".to_owned(),
        "read_file".to_owned(),
    ];
    let names: Vec<_> = specs(&allowed)
        .expect("specs")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["write_todos", "read_file"]);
}

#[test]
fn an_explicit_empty_choice_offers_no_tool_and_unset_offers_all() {
    use stigmer_proto::rules::ToolChoice;
    assert!(specs_for(ToolChoice::Only(&[])).expect("none").is_empty());
    let all = specs_for(ToolChoice::AllBuiltIn).expect("all");
    assert_eq!(all.len(), ALL_TOOLS.len());
    let one = specs_for(ToolChoice::Only(&["edit_file".to_owned()])).expect("one");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "edit_file");
}

#[test]
fn specs_refuse_unknown_tools_listing_the_known_ones() {
    let err = specs(&["read_file".to_owned(), "browse_web".to_owned()]).expect_err("unknown");
    assert!(matches!(&err, ToolError::UnknownTool { name } if name == "browse_web"));
    assert_eq!(
        err.to_string(),
        "unknown tool 'browse_web'; known tools: run_command, read_file, write_file, \
         edit_file, list_directory, write_todos"
    );
}

#[test]
fn required_fields_match_the_inputs() {
    let required = |name: &str| -> Vec<String> {
        let spec = specs(&[name.to_owned()]).expect("spec").remove(0);
        spec.input_schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(required("run_command"), ["command"]);
    assert_eq!(required("read_file"), ["path"]);
    assert_eq!(required("write_file"), ["path", "content"]);
    assert_eq!(required("edit_file"), ["path", "old_string", "new_string"]);
    assert!(required("list_directory").is_empty());
    assert_eq!(required("write_todos"), ["todos"]);
}

// ---- input validation ----

#[tokio::test]
async fn non_object_input_is_an_error_outcome_for_every_tool() {
    let f = Fixture::new();
    for name in ALL_TOOLS {
        for input in [json!("ls -la"), json!(null), json!([1, 2]), json!(3)] {
            let out = f.err(name, input.clone()).await;
            assert!(
                out.starts_with(&format!("input for {name} must be a JSON object")),
                "{name} {input}: {out}"
            );
        }
    }
}

#[tokio::test]
async fn missing_wrong_and_unknown_fields_are_explained() {
    let f = Fixture::new();
    let out = f.err("read_file", json!({})).await;
    assert_eq!(out, "invalid input for read_file: missing field `path`");
    let out = f
        .err("write_file", json!({"path": "a", "content": 5}))
        .await;
    assert!(
        out.contains("invalid type: integer `5`, expected a string"),
        "{out}"
    );
    let out = f
        .err(
            "edit_file",
            json!({"path": "a", "old_string": "x", "new_string": "y", "replaceAll": true}),
        )
        .await;
    assert!(out.contains("unknown field `replaceAll`"), "{out}");
}

#[tokio::test]
async fn unknown_tool_is_reported_to_the_model() {
    let f = Fixture::new();
    let out = f.err("browse_web", json!({})).await;
    assert!(out.starts_with("unknown tool 'browse_web'"), "{out}");
}

// ---- run_command ----

#[tokio::test]
async fn run_command_reports_exit_code_and_output() {
    let f = Fixture::new();
    let out = f.ok("run_command", json!({"command": "echo hi"})).await;
    assert_eq!(out, "exit code: 0\nhi\n");
    let out = f
        .err("run_command", json!({"command": "echo bad >&2; exit 2"}))
        .await;
    assert_eq!(out, "exit code: 2\nbad\n");
}

#[tokio::test]
async fn run_command_passes_the_agent_env() {
    let mut f = Fixture::new();
    f.env.insert("GREETING".into(), "bonjour".into());
    let out = f
        .ok("run_command", json!({"command": "echo $GREETING"}))
        .await;
    assert_eq!(out, "exit code: 0\nbonjour\n");
}

#[tokio::test]
async fn run_command_times_out_and_clamps_the_timeout() {
    let mut f = Fixture::new();
    f.limits.max_command_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let out = f
        .err(
            "run_command",
            json!({"command": "echo started; sleep 30", "timeout_secs": 100}),
        )
        .await;
    assert!(start.elapsed() < Duration::from_secs(10), "clamped to 1s");
    assert_eq!(out, "timed out after 1s\nstarted\n");
    let out = f
        .err("run_command", json!({"command": "true", "timeout_secs": 0}))
        .await;
    assert_eq!(out, "timeout_secs must be at least 1");
    let out = f.err("run_command", json!({"command": "  "})).await;
    assert_eq!(out, "command must not be empty");
}

#[tokio::test]
async fn run_command_output_is_capped() {
    let mut f = Fixture::new();
    f.limits.output_limit = 1024;
    let out = f
        .ok("run_command", json!({"command": "yes | head -c 1000000"}))
        .await;
    assert!(out.contains(&truncation_marker(1_000_000 - 1024)), "{out}");
    assert!(out.len() <= "exit code: 0\n".len() + 1024 + truncation_marker(998_976).len());
}

#[tokio::test]
async fn cancellation_stops_the_execution() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let input = json!({"command": "sleep 30"});
    let start = Instant::now();
    let (result, ()) = tokio::join!(execute("run_command", &input, &ctx), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.cancel.cancel();
    });
    assert!(matches!(result, Err(ToolError::Cancelled)), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Once cancelled, no tool runs at all.
    let result = execute("write_file", &json!({"path": "a", "content": "x"}), &ctx).await;
    assert!(matches!(result, Err(ToolError::Cancelled)));
    assert!(!f.session.join("a").exists());
}

// ---- read_file ----

#[tokio::test]
async fn read_file_returns_contents_and_windows() {
    let f = Fixture::new();
    f.write("notes.txt", "one\ntwo\nthree\nfour\n");
    assert_eq!(
        f.ok("read_file", json!({"path": "notes.txt"})).await,
        "one\ntwo\nthree\nfour\n"
    );
    assert_eq!(
        f.ok(
            "read_file",
            json!({"path": "notes.txt", "offset": 2, "limit": 2})
        )
        .await,
        "two\nthree\n[lines 2-3 of 4; use offset and limit to read other lines]"
    );
    let out = f
        .err("read_file", json!({"path": "notes.txt", "offset": 0}))
        .await;
    assert!(out.contains("1-based"), "{out}");
}

#[tokio::test]
async fn read_file_errors_are_outcomes() {
    let f = Fixture::new();
    assert_eq!(
        f.err("read_file", json!({"path": "missing.txt"})).await,
        "'missing.txt' does not exist"
    );
    assert_eq!(
        f.err("read_file", json!({"path": "../x"})).await,
        "path '../x' is outside the sandbox"
    );
    assert_eq!(
        f.err("read_file", json!({"path": "a/../../x"})).await,
        "path 'a/../../x' is outside the sandbox"
    );
    assert_eq!(
        f.err("read_file", json!({"path": "/etc/passwd"})).await,
        "path '/etc/passwd' is outside the sandbox"
    );
}

#[tokio::test]
async fn a_symlink_made_by_run_command_cannot_be_read_through() {
    let f = Fixture::new();
    f.ok("run_command", json!({"command": "ln -s / escape"}))
        .await;
    assert_eq!(
        f.err("read_file", json!({"path": "escape/etc/hostname"}))
            .await,
        "path 'escape/etc/hostname' is outside the sandbox"
    );
    assert_eq!(
        f.err(
            "write_file",
            json!({"path": "escape/tmp/pwned", "content": "x"})
        )
        .await,
        "path 'escape/tmp/pwned' is outside the sandbox"
    );
    assert!(!PathBuf::from("/tmp/pwned").exists());
}

#[tokio::test]
async fn read_file_output_is_capped() {
    let mut f = Fixture::new();
    f.limits.output_limit = 100;
    f.write("big.txt", &"z".repeat(10_000));
    let out = f.ok("read_file", json!({"path": "big.txt"})).await;
    assert_eq!(
        out,
        format!(
            "{}{}{}",
            "z".repeat(50),
            truncation_marker(9_900),
            "z".repeat(50)
        )
    );
}

#[tokio::test]
async fn too_large_file_points_to_run_command() {
    let f = Fixture::new();
    let big = std::fs::File::create(f.session.join("huge.log")).expect("create");
    big.set_len(crate::sandbox::MAX_READ_BYTES + 1)
        .expect("sparse");
    let inputs = [
        ("read_file", json!({"path": "huge.log"})),
        (
            "edit_file",
            json!({"path": "huge.log", "old_string": "a", "new_string": "b"}),
        ),
    ];
    for (tool, input) in inputs {
        let out = f.err(tool, input).await;
        assert!(out.starts_with("'huge.log' is 8388609 bytes"), "{out}");
        assert!(out.ends_with("to look at parts of it"), "{out}");
    }
}

// ---- write_file ----

#[tokio::test]
async fn write_file_creates_parents_and_reports_bytes() {
    let f = Fixture::new();
    let out = f
        .ok(
            "write_file",
            json!({"path": "src/lib.rs", "content": "héllo"}),
        )
        .await;
    assert_eq!(out, "wrote 6 bytes to src/lib.rs");
    assert_eq!(f.read("src/lib.rs"), "héllo");
}

// ---- edit_file ----

#[tokio::test]
async fn edit_file_replaces_a_unique_string() {
    let f = Fixture::new();
    f.write("main.rs", "fn main() {\n    println!(\"hi\");\n}\n");
    let out = f
        .ok(
            "edit_file",
            json!({"path": "main.rs", "old_string": "\"hi\"", "new_string": "\"bye\""}),
        )
        .await;
    assert_eq!(out, "replaced 1 occurrence in main.rs");
    assert_eq!(
        f.read("main.rs"),
        "fn main() {\n    println!(\"bye\");\n}\n"
    );
}

#[tokio::test]
async fn edit_file_refuses_an_ambiguous_string_and_leaves_the_file() {
    let f = Fixture::new();
    f.write("a.txt", "x = 1\nx = 1\nx = 1\n");
    let out = f
        .err(
            "edit_file",
            json!({"path": "a.txt", "old_string": "x = 1", "new_string": "x = 2"}),
        )
        .await;
    assert_eq!(
        out,
        "old_string occurs 3 times in a.txt; include more context to make it unique, or set \
         replace_all"
    );
    assert_eq!(f.read("a.txt"), "x = 1\nx = 1\nx = 1\n");
}

#[tokio::test]
async fn edit_file_replace_all_reports_the_count() {
    let f = Fixture::new();
    f.write("a.txt", "x = 1\nx = 1\nx = 1\n");
    let out = f
        .ok(
            "edit_file",
            json!({"path": "a.txt", "old_string": "x = 1", "new_string": "x = 2", "replace_all": true}),
        )
        .await;
    assert_eq!(out, "replaced 3 occurrences in a.txt");
    assert_eq!(f.read("a.txt"), "x = 2\nx = 2\nx = 2\n");
}

#[tokio::test]
async fn edit_file_refuses_missing_empty_and_identical_strings() {
    let f = Fixture::new();
    f.write("a.txt", "alpha\n");
    let edit =
        |old: &str, new: &str| json!({"path": "a.txt", "old_string": old, "new_string": new});
    let out = f.err("edit_file", edit("beta", "gamma")).await;
    assert!(
        out.starts_with("old_string was not found in a.txt"),
        "{out}"
    );
    let out = f.err("edit_file", edit("", "gamma")).await;
    assert!(out.starts_with("old_string must not be empty"), "{out}");
    let out = f.err("edit_file", edit("alpha", "alpha")).await;
    assert!(out.contains("identical"), "{out}");
    let out = f
        .err(
            "edit_file",
            json!({"path": "nope.txt", "old_string": "a", "new_string": "b"}),
        )
        .await;
    assert_eq!(out, "'nope.txt' does not exist");
    assert_eq!(f.read("a.txt"), "alpha\n");
}

#[tokio::test]
async fn edit_file_refuses_binary_files() {
    let f = Fixture::new();
    std::fs::write(f.session.join("bin"), [0xff, 0xfe, b'a']).expect("write");
    let out = f
        .err(
            "edit_file",
            json!({"path": "bin", "old_string": "a", "new_string": "b"}),
        )
        .await;
    assert!(out.contains("not valid UTF-8"), "{out}");
}

// ---- list_directory ----

#[tokio::test]
async fn list_directory_defaults_to_the_working_directory() {
    let f = Fixture::new();
    f.write("b.txt", "12345");
    f.write("a/inner.txt", "x");
    let out = f.ok("list_directory", json!({})).await;
    // `.tmp` exists only once a command ran; none has here.
    assert_eq!(out, "a/\nb.txt (5 bytes)");
    assert_eq!(
        f.ok("list_directory", json!({"path": "a"})).await,
        "inner.txt (1 bytes)"
    );
    assert_eq!(
        f.err("list_directory", json!({"path": ".."})).await,
        "path '..' is outside the sandbox"
    );
}

#[tokio::test]
async fn list_directory_escapes_names_that_would_forge_lines() {
    let f = Fixture::new();
    f.write("a\nsecret.txt (12 bytes)", "hello");
    f.write("real.txt", "x");
    f.write("\x1b]0;title\x07bell", "");
    let out = f.ok("list_directory", json!({})).await;
    assert_eq!(
        out,
        "\\x1b]0;title\\x07bell (0 bytes)\n\
         a\\nsecret.txt (12 bytes) (5 bytes)\n\
         real.txt (1 bytes)"
    );
    assert_eq!(out.lines().count(), 3, "one line per entry");
}

// ---- paths in messages ----

#[tokio::test]
async fn paths_in_confirmations_and_errors_are_escaped() {
    let f = Fixture::new();
    let out = f
        .ok(
            "write_file",
            json!({"path": "new\nline.txt", "content": "abc"}),
        )
        .await;
    assert_eq!(out, "wrote 3 bytes to new\\nline.txt");
    assert_eq!(f.read("new\nline.txt"), "abc");
    let out = f
        .ok(
            "edit_file",
            json!({"path": "new\nline.txt", "old_string": "b", "new_string": "B"}),
        )
        .await;
    assert_eq!(out, "replaced 1 occurrence in new\\nline.txt");
    assert_eq!(
        f.err("read_file", json!({"path": "gone\u{1b}[2J.txt"}))
            .await,
        "'gone\\x1b[2J.txt' does not exist"
    );
}

// ---- hard links ----

#[tokio::test]
async fn file_tools_refuse_a_hard_link_to_a_file_outside() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().expect("another tempdir");
    let secret = outside.path().join("credentials");
    std::fs::write(&secret, "token = 1").expect("outside file");
    std::fs::hard_link(&secret, f.session.join("notes.txt")).expect("hard link");
    let refused = "'notes.txt' has 2 hard links, some outside this session; file tools refuse it";
    assert_eq!(
        f.err("read_file", json!({"path": "notes.txt"})).await,
        refused
    );
    assert_eq!(
        f.err(
            "write_file",
            json!({"path": "notes.txt", "content": "pwned"})
        )
        .await,
        refused
    );
    assert_eq!(
        f.err(
            "edit_file",
            json!({"path": "notes.txt", "old_string": "1", "new_string": "2"})
        )
        .await,
        refused
    );
    assert_eq!(
        std::fs::read_to_string(&secret).expect("outside"),
        "token = 1"
    );
}

#[tokio::test]
async fn file_tools_accept_hard_links_within_the_session() {
    let f = Fixture::new();
    f.write("a.txt", "one");
    std::fs::create_dir(f.session.join("sub")).expect("sub");
    std::fs::hard_link(f.session.join("a.txt"), f.session.join("sub/b.txt")).expect("link");
    assert_eq!(f.ok("read_file", json!({"path": "sub/b.txt"})).await, "one");
    f.ok(
        "edit_file",
        json!({"path": "sub/b.txt", "old_string": "one", "new_string": "two"}),
    )
    .await;
    f.ok("write_file", json!({"path": "a.txt", "content": "three"}))
        .await;
    assert_eq!(f.read("sub/b.txt"), "three");
}

// ---- edit_file memory bound ----

#[tokio::test]
async fn edit_file_refuses_a_result_above_the_read_limit() {
    let f = Fixture::new();
    // 1 MiB of one-byte matches, each replaced by 10 bytes: 10 MiB, above the 8 MiB limit.
    let original = "a".repeat(1024 * 1024);
    f.write("big.txt", &original);
    let out = f
        .err(
            "edit_file",
            json!({"path": "big.txt", "old_string": "a", "new_string": "0123456789",
                   "replace_all": true}),
        )
        .await;
    assert_eq!(
        out,
        "the edit would make big.txt 10485760 bytes, more than the 8388608-byte limit for a \
         file the tools read or edit; replace fewer occurrences or a shorter text"
    );
    assert_eq!(f.read("big.txt"), original, "the file is left as it was");
}

// ---- write_todos ----

#[tokio::test]
async fn write_todos_returns_the_effect() {
    let f = Fixture::new();
    let outcome = f
        .call(
            "write_todos",
            json!({"todos": [{"content": "write tests", "status": "in_progress"}]}),
        )
        .await;
    assert!(!outcome.is_error);
    assert_eq!(
        outcome.effect,
        ToolEffect::Todos(vec![TodoUpdate {
            id: "todo-1".into(),
            content: "write tests".into(),
            status: TodoStatus::TodoInProgress,
        }])
    );
    let out = f
        .err(
            "write_todos",
            json!({"todos": [{"content": "x", "status": "finished"}]}),
        )
        .await;
    assert!(out.contains("'finished' is not one of"), "{out}");
}

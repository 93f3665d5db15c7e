//! The Daytona client, sandbox and pool against the testkit's contract server over real HTTP
//! on loopback. The server stands in for Daytona, which CI cannot reach.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::daytona::{DaytonaOptions, DaytonaServer, Fault};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::sandbox::{CommandOutput, CommandRequest, Sandbox, SandboxError};

const KEY: &str = "dtn_test_key";
const START_DELAY: Duration = Duration::from_millis(150);

async fn server() -> DaytonaServer {
    server_with(|_| {}).await
}

async fn server_with(tune: impl FnOnce(&mut DaytonaOptions)) -> DaytonaServer {
    let mut options = DaytonaOptions::new(KEY);
    options.start_delay = START_DELAY;
    tune(&mut options);
    DaytonaServer::start(options).await
}

fn settings(server: &DaytonaServer, key: &str) -> DaytonaSettings {
    crate::llm::ensure_crypto_provider();
    DaytonaSettings {
        api_url: server.api_url(),
        api_key: key.to_owned().into(),
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        retry_backoff: Duration::from_millis(10),
    }
}

fn client(server: &DaytonaServer) -> DaytonaClient {
    DaytonaClient::new(settings(server, KEY)).expect("client")
}

fn pool(server: &DaytonaServer) -> DaytonaSandboxes {
    let mut settings = DaytonaPoolSettings::new(Some("dev-tools".to_owned()));
    settings.start_timeout = Duration::from_secs(5);
    DaytonaSandboxes::new(client(server), settings)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

async fn open_new(pool: &DaytonaSandboxes, session: &str) -> Sandbox {
    let (sandbox, created) = pool.open(session, None, "runner-1").await.expect("open");
    assert!(created);
    sandbox
}

async fn run(sandbox: &Sandbox, command: &str, timeout: Duration, limit: usize) -> CommandOutput {
    let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
    let cancel = CancellationToken::new();
    sandbox
        .run_command(CommandRequest {
            network: crate::sandbox::Network::None,
            command,
            timeout,
            env: &env,
            cancel: &cancel,
            output_limit: limit,
        })
        .await
        .expect("command")
}

#[tokio::test]
async fn create_returns_at_once_and_wait_polls_until_started() {
    let server = server().await;
    let client = client(&server);
    let began = Instant::now();
    let made = client
        .create_sandbox(&CreateSandbox {
            snapshot: Some("dev-tools".into()),
            ..CreateSandbox::default()
        })
        .await
        .expect("create");
    assert_eq!(made.state, SandboxState::Creating);
    let info = client
        .wait_until_started(&made.id, soon())
        .await
        .expect("start");
    assert_eq!(info.state, SandboxState::Started);
    assert!(began.elapsed() >= START_DELAY);
    let polls = server.count("GET", &format!("/api/sandbox/{}", made.id));
    assert!(polls >= 2, "polled {polls} times");
    assert_eq!(server.sandboxes()[0].snapshot.as_deref(), Some("dev-tools"));
}

#[tokio::test]
async fn wait_gives_up_at_the_deadline() {
    let server = server_with(|o| o.start_delay = Duration::from_secs(30)).await;
    let client = client(&server);
    let made = client
        .create_sandbox(&CreateSandbox::default())
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_millis(300);
    let err = client
        .wait_until_started(&made.id, deadline)
        .await
        .expect_err("never starts");
    assert!(matches!(err, DaytonaError::StartTimeout { .. }), "{err}");
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_asked_wait() {
    let server = server().await;
    let retry_after = Fault::TooManyRequests {
        retry_after: "1".into(),
    };
    server.inject("POST", "/api/sandbox", retry_after, 1);
    let began = Instant::now();
    client(&server)
        .create_sandbox(&CreateSandbox::default())
        .await
        .expect("create after a 429");
    assert_eq!(server.count("POST", "/api/sandbox"), 2);
    assert!(
        began.elapsed() >= Duration::from_millis(950),
        "Retry-After ignored"
    );
}

#[tokio::test]
async fn server_errors_are_retried_up_to_the_attempt_limit() {
    let server = server().await;
    let client = client(&server);
    let made = client
        .create_sandbox(&CreateSandbox::default())
        .await
        .expect("create");
    let path = format!("/api/sandbox/{}", made.id);
    server.inject("GET", &path, Fault::Status(502), 2);
    client
        .get_sandbox(&made.id)
        .await
        .expect("third attempt works");
    assert_eq!(server.count("GET", &path), 3);

    server.inject("GET", &path, Fault::Status(500), 10);
    let err = client.get_sandbox(&made.id).await.expect_err("exhausted");
    assert!(
        matches!(err, DaytonaError::RetriesExhausted { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(err.status(), Some(500));
    assert_eq!(server.count("GET", &path), 7);
}

#[tokio::test]
async fn a_command_is_not_replayed_after_a_server_error() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let path = format!("/toolbox/{}/process/execute", sandbox.id());
    server.inject("POST", &path, Fault::Status(500), 1);
    let cancel = CancellationToken::new();
    let err = sandbox
        .run_command(CommandRequest {
            network: crate::sandbox::Network::None,
            command: "true",
            timeout: Duration::from_secs(5),
            env: &BTreeMap::new(),
            cancel: &cancel,
            output_limit: 100,
        })
        .await
        .expect_err("500 surfaces");
    assert!(matches!(err, SandboxError::Daytona(_)), "{err}");
    assert_eq!(server.count("POST", &path), 1);
}

#[tokio::test]
async fn unauthorized_names_the_key_variable_and_is_not_retried() {
    let server = server().await;
    let client = DaytonaClient::new(settings(&server, "wrong")).expect("client");
    let err = client
        .create_sandbox(&CreateSandbox::default())
        .await
        .expect_err("bad key");
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(text.contains("Invalid credentials"), "{text}");
    assert!(text.contains("DAYTONA_API_KEY"), "{text}");
    assert!(!text.contains("wrong"), "{text}");
    assert_eq!(server.count("POST", "/api/sandbox"), 1);
}

#[tokio::test]
async fn the_key_is_sent_as_bearer_and_never_debug_printed() {
    let server = server().await;
    let settings = settings(&server, KEY);
    assert!(!format!("{settings:?}").contains(KEY));
    let client = DaytonaClient::new(settings).expect("client");
    assert!(!format!("{client:?}").contains(KEY));
    // The server refuses any request without exactly this bearer header.
    client
        .list_sandboxes(&BTreeMap::new())
        .await
        .expect("authorised");
}

#[tokio::test]
async fn missing_sandbox_is_a_distinct_error_with_the_api_message() {
    let server = server().await;
    let err = client(&server)
        .get_sandbox("sbx-missing")
        .await
        .expect_err("missing");
    match &err {
        DaytonaError::SandboxNotFound { id, message } => {
            assert_eq!(id, "sbx-missing");
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("expected SandboxNotFound, got {other:?}"),
    }
    assert!(err.is_sandbox_gone());
}

#[tokio::test]
async fn error_state_fails_the_wait_with_its_reason() {
    let server = server().await;
    server.fail_next_create("no capacity in region");
    let client = client(&server);
    let made = client
        .create_sandbox(&CreateSandbox::default())
        .await
        .expect("create");
    let err = client
        .wait_until_started(&made.id, soon())
        .await
        .expect_err("error state");
    match &err {
        DaytonaError::SandboxFailed { state, reason, .. } => {
            assert_eq!(state, "error");
            assert_eq!(reason, "no capacity in region");
        }
        other => panic!("expected SandboxFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_sandbox_that_fails_to_start_is_deleted_and_reported() {
    let server = server().await;
    server.fail_next_create("snapshot pull failed");
    let pool = pool(&server);
    let err = pool.open("s1", None, "runner-1").await.expect_err("fails");
    assert!(err.to_string().contains("snapshot pull failed"), "{err}");
    assert!(server.sandboxes().is_empty(), "failed sandbox left behind");
    assert!(pool.remembered().is_empty());
}

#[tokio::test]
async fn commands_report_exit_codes_output_env_and_cwd() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let out = run(
        &sandbox,
        "echo out; echo err >&2; echo \"$GREETING\"; pwd; exit 3",
        Duration::from_secs(10),
        10_000,
    )
    .await;
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out);
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[..3], ["out", "err", "hi"], "{}", out.output);
    assert!(lines[3].ends_with(DEFAULT_WORK_DIR), "{}", out.output);
    let quoted = run(
        &sandbox,
        "printf '%s' \"it's\"",
        Duration::from_secs(10),
        100,
    )
    .await;
    assert_eq!(quoted.output, "it's");
    assert_eq!(quoted.exit_code, Some(0));
}

#[tokio::test]
async fn command_timeout_is_reported_as_timed_out() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let began = Instant::now();
    let out = run(&sandbox, "sleep 30", Duration::from_millis(500), 100).await;
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn cancellation_stops_waiting_for_the_command() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let began = Instant::now();
    let result = sandbox
        .run_command(CommandRequest {
            network: crate::sandbox::Network::None,
            command: "sleep 30",
            timeout: Duration::from_secs(30),
            env: &BTreeMap::new(),
            cancel: &cancel,
            output_limit: 100,
        })
        .await;
    assert!(matches!(result, Err(SandboxError::Cancelled)), "{result:?}");
    assert!(began.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn output_is_capped_with_a_marker() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let out = run(
        &sandbox,
        "head -c 10000 /dev/zero | tr '\\0' x",
        Duration::from_secs(10),
        100,
    )
    .await;
    assert_eq!(out.truncated_bytes, 9_900);
    assert!(
        out.output.contains("[... 9900 bytes truncated ...]"),
        "{}",
        out.output
    );
    assert!(out.output.len() < 200);
}

#[tokio::test]
async fn files_round_trip_through_the_toolbox() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    sandbox
        .write_file("src/deep/a.txt", b"hello\n")
        .await
        .expect("write");
    sandbox
        .write_file("b.bin", &[0, 159, 146, 150])
        .await
        .expect("write");
    assert_eq!(
        sandbox.read_file("src/deep/a.txt").await.expect("read"),
        b"hello\n"
    );
    let absolute = format!("{DEFAULT_WORK_DIR}/b.bin");
    assert_eq!(
        sandbox.read_file(&absolute).await.expect("read"),
        [0, 159, 146, 150]
    );
    let root = server.sandbox_root(sandbox.id()).expect("root");
    let on_disk = root.join("home/daytona/workspace/src/deep/a.txt");
    assert_eq!(std::fs::read(on_disk).expect("on disk"), b"hello\n");
    // Commands see what the file tools wrote.
    let out = run(&sandbox, "cat src/deep/a.txt", Duration::from_secs(10), 100).await;
    assert_eq!(out.output, "hello\n");
}

#[tokio::test]
async fn list_dir_is_sorted_with_kinds_and_sizes() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    sandbox.write_file("zeta.txt", b"123").await.expect("write");
    sandbox.write_file("alpha/x", b"").await.expect("write");
    let entries = sandbox.list_dir(".").await.expect("list");
    let summary: Vec<(&str, bool, u64)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.is_dir, if e.is_dir { 0 } else { e.size }))
        .collect();
    assert_eq!(summary, [("alpha", true, 0), ("zeta.txt", false, 3)]);
}

#[tokio::test]
async fn listed_names_are_escaped() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    sandbox.write_file("real.txt", b"1").await.expect("write");
    let root = server.sandbox_root(sandbox.id()).expect("root");
    let work_dir = root.join("home/daytona/workspace");
    std::fs::write(work_dir.join("a\nsecret.txt (12 bytes)"), b"1").expect("forged name");
    std::fs::write(work_dir.join("\x1b[2Jb"), b"1").expect("escape sequence");
    let entries = sandbox.list_dir(".").await.expect("list");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["\\x1b[2Jb", "a\\nsecret.txt (12 bytes)", "real.txt"]
    );
}

#[tokio::test]
async fn missing_files_are_not_found() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let err = sandbox.read_file("nope.txt").await.expect_err("missing");
    assert!(
        matches!(err, SandboxError::NotFound { ref path } if path == "nope.txt"),
        "{err}"
    );
    let err = sandbox.list_dir("nodir").await.expect_err("missing");
    assert!(matches!(err, SandboxError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn paths_outside_the_work_dir_are_refused_before_any_request() {
    let server = server().await;
    let pool = pool(&server);
    let sandbox = open_new(&pool, "s1").await;
    let before = server.requests().len();
    for path in [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "/home/daytona/workspace2/x",
    ] {
        let err = sandbox.read_file(path).await.expect_err("escape");
        assert!(
            matches!(err, SandboxError::PathEscape { .. }),
            "{path}: {err}"
        );
        let err = sandbox.write_file(path, b"x").await.expect_err("escape");
        assert!(
            matches!(err, SandboxError::PathEscape { .. }),
            "{path}: {err}"
        );
        let err = sandbox.list_dir(path).await.expect_err("escape");
        assert!(
            matches!(err, SandboxError::PathEscape { .. }),
            "{path}: {err}"
        );
    }
    assert_eq!(server.requests().len(), before);
}

#[tokio::test]
async fn a_session_reuses_its_sandbox() {
    let server = server().await;
    let pool = pool(&server);
    let first = open_new(&pool, "s1").await;
    let (again, created) = pool
        .open("s1", Some(first.id()), "runner-1")
        .await
        .expect("reopen");
    assert!(!created);
    assert_eq!(again.id(), first.id());
    assert_eq!(server.count("POST", "/api/sandbox"), 1);
    let labels = &server.sandboxes()[0].labels;
    assert_eq!(labels.get(LABEL_SESSION).map(String::as_str), Some("s1"));
    assert_eq!(
        labels.get(LABEL_RUNNER).map(String::as_str),
        Some("runner-1")
    );
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    assert!(again.describe().contains(first.id()));
}

#[tokio::test]
async fn a_stopped_sandbox_is_started_again() {
    let server = server().await;
    let pool = pool(&server);
    let first = open_new(&pool, "s1").await;
    server.stop(first.id());
    let (again, created) = pool
        .open("s1", Some(first.id()), "runner-1")
        .await
        .expect("reopen");
    assert!(!created);
    assert_eq!(again.id(), first.id());
    assert_eq!(
        server.count("POST", &format!("/api/sandbox/{}/start", first.id())),
        1
    );
    assert_eq!(server.sandboxes()[0].state, "started");
}

#[tokio::test]
async fn a_sandbox_deleted_behind_our_back_is_recreated() {
    let server = server().await;
    let pool = pool(&server);
    let first = open_new(&pool, "s1").await;
    assert!(server.delete_behind_our_back(first.id()));
    let (again, created) = pool
        .open("s1", Some(first.id()), "runner-1")
        .await
        .expect("recreate");
    assert!(created);
    assert_ne!(again.id(), first.id());
    let out = run(&again, "echo ok", Duration::from_secs(10), 100).await;
    assert_eq!(out.output, "ok\n");
}

#[tokio::test]
async fn cleanup_deletes_only_what_this_runner_made_and_does_not_keep() {
    let server = server().await;
    let ours = pool(&server);
    let theirs = pool(&server);
    let kept = open_new(&ours, "s1").await;
    let dropped = open_new(&ours, "s2").await;
    let (foreign, _) = theirs.open("s3", None, "runner-2").await.expect("open");
    let report = ours.cleanup_unowned(&["s1".to_owned()]).await;
    assert_eq!(report.deleted, [dropped.id().to_owned()]);
    assert!(report.failed.is_empty());
    let mut left: Vec<String> = server.sandboxes().into_iter().map(|s| s.id).collect();
    left.sort();
    let mut expected = vec![kept.id().to_owned(), foreign.id().to_owned()];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(ours.remembered(), [(kept.id().to_owned(), "s1".to_owned())]);
}

#[tokio::test]
async fn listing_follows_cursor_pages_and_filters_by_label() {
    let server = server_with(|o| o.page_size = 2).await;
    let client = client(&server);
    let labelled = |session: &str| CreateSandbox {
        labels: BTreeMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_SESSION.to_owned(), session.to_owned()),
        ]),
        ..CreateSandbox::default()
    };
    for session in ["a", "b", "c"] {
        client
            .create_sandbox(&labelled(session))
            .await
            .expect("create");
    }
    client
        .create_sandbox(&CreateSandbox::default())
        .await
        .expect("unlabelled");
    let managed = BTreeMap::from([(LABEL_MANAGED.to_owned(), "true".to_owned())]);
    let listed = client.list_sandboxes(&managed).await.expect("list");
    assert_eq!(listed.len(), 3);
    assert_eq!(server.count("GET", "/api/sandbox"), 2);
}

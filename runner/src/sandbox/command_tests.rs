//! Commands as real processes: exit codes, environment, output cap, and that nothing a
//! command starts survives a timeout, a cancellation or a dropped future.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    sandbox: Sandbox,
    session: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = SandboxRoot::new(tmp.path()).expect("root");
    let sandbox = root.open("cmd").expect("session");
    let session = root.path().join("cmd");
    Fixture {
        _tmp: tmp,
        sandbox,
        session,
    }
}

async fn run(
    sandbox: &Sandbox,
    command: &str,
    timeout: Duration,
    env: &BTreeMap<String, String>,
    cancel: &CancellationToken,
    output_limit: usize,
) -> Result<CommandOutput, SandboxError> {
    sandbox
        .run_command(CommandRequest {
            network: crate::sandbox::Network::None,
            command,
            timeout,
            env,
            cancel,
            output_limit,
        })
        .await
}

async fn run_simple(sandbox: &Sandbox, command: &str) -> CommandOutput {
    run(
        sandbox,
        command,
        Duration::from_secs(30),
        &BTreeMap::new(),
        &CancellationToken::new(),
        64 * 1024,
    )
    .await
    .expect("command runs")
}

/// Starts a grandchild that would live for minutes and records its pid in `pid`.
const SPAWNS_GRANDCHILD: &str = "sleep 300 & echo $! > pid; wait";

/// A process is gone when it no longer exists or is a zombie: in a container whose pid 1 does
/// not reap orphans, a killed grandchild stays a zombie forever.
fn is_gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.trim().chars().next());
    state.is_none() || state == Some('Z')
}

async fn gone_within(pid: i32, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if is_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    is_gone(pid)
}

async fn wait_for_pid(file: &Path) -> i32 {
    for _ in 0..250 {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} was never written", file.display());
}

#[tokio::test]
async fn reports_output_and_exit_code() {
    let f = fixture();
    let ok = run_simple(&f.sandbox, "echo hello").await;
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.output, "hello\n");
    assert!(!ok.timed_out);
    assert_eq!(ok.truncated_bytes, 0);

    let failed = run_simple(&f.sandbox, "echo oops >&2; exit 3").await;
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.output, "oops\n", "stderr is part of the output");
}

#[tokio::test]
async fn runs_in_the_session_directory_with_stdin_closed() {
    let f = fixture();
    let out = run_simple(&f.sandbox, "pwd; cat; echo after-cat").await;
    assert_eq!(
        out.output,
        format!("{}\nafter-cat\n", f.session.display()),
        "cwd is the session and stdin is empty"
    );
}

#[tokio::test]
async fn environment_is_minimal_and_never_the_runners() {
    let f = fixture();
    let env = BTreeMap::from([("AGENT_VAR".to_owned(), "from-agent".to_owned())]);
    let out = run(
        &f.sandbox,
        "env",
        Duration::from_secs(10),
        &env,
        &CancellationToken::new(),
        64 * 1024,
    )
    .await
    .expect("env runs");
    let seen: BTreeMap<&str, &str> = out
        .output
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();

    let expected = ["PATH", "HOME", "LANG", "TMPDIR", "AGENT_VAR"];
    // Set by the shell itself, not inherited.
    let shell_added = ["PWD", "OLDPWD", "SHLVL", "_"];
    for key in seen.keys() {
        assert!(
            expected.contains(key) || shell_added.contains(key),
            "unexpected variable {key} in the command environment"
        );
    }
    assert_eq!(seen.get("AGENT_VAR"), Some(&"from-agent"));
    assert_eq!(seen.get("PATH"), Some(&"/usr/local/bin:/usr/bin:/bin"));
    assert_eq!(seen.get("HOME").map(PathBuf::from), Some(f.session.clone()));
    assert_eq!(
        seen.get("TMPDIR").map(PathBuf::from),
        Some(f.session.join(".tmp"))
    );
    assert!(f.session.join(".tmp").is_dir());

    // Make sure this test could fail: the test process has variables the command must not see.
    let foreign: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !expected.contains(&k.as_str()) && !shell_added.contains(&k.as_str()))
        .collect();
    assert!(
        !foreign.is_empty(),
        "the test process should have variables of its own"
    );
    let leaked: Vec<&String> = foreign
        .iter()
        .filter(|k| seen.contains_key(k.as_str()))
        .collect();
    assert!(leaked.is_empty(), "leaked: {leaked:?}");
}

#[tokio::test]
async fn request_env_overrides_the_base() {
    let f = fixture();
    let env = BTreeMap::from([("LANG".to_owned(), "fr_FR.UTF-8".to_owned())]);
    let out = run(
        &f.sandbox,
        "echo $LANG",
        Duration::from_secs(10),
        &env,
        &CancellationToken::new(),
        1024,
    )
    .await
    .expect("runs");
    assert_eq!(out.output, "fr_FR.UTF-8\n");
}

#[tokio::test]
async fn output_is_capped_with_an_exact_marker() {
    let f = fixture();
    let out = run(
        &f.sandbox,
        "yes | head -c 1000000",
        Duration::from_secs(30),
        &BTreeMap::new(),
        &CancellationToken::new(),
        1024,
    )
    .await
    .expect("runs");
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.truncated_bytes, 1_000_000 - 1024);
    let marker = truncation_marker(1_000_000 - 1024);
    assert!(
        out.output.contains("[... 998976 bytes truncated ...]"),
        "{}",
        out.output
    );
    assert_eq!(out.output.len(), 1024 + marker.len());
    assert!(out.output.starts_with("y\ny\n"));
    assert!(out.output.ends_with("y\ny\n"));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let f = fixture();
    let start = Instant::now();
    let out = run(
        &f.sandbox,
        SPAWNS_GRANDCHILD,
        Duration::from_millis(500),
        &BTreeMap::new(),
        &CancellationToken::new(),
        1024,
    )
    .await
    .expect("a timeout is not an error");
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert!(start.elapsed() < Duration::from_secs(10));
    let pid = wait_for_pid(&f.session.join("pid")).await;
    assert!(
        gone_within(pid, Duration::from_secs(5)).await,
        "grandchild {pid} survived the timeout"
    );
}

#[tokio::test]
async fn cancellation_kills_the_group_and_returns_promptly() {
    let f = fixture();
    let cancel = CancellationToken::new();
    let env = BTreeMap::new();
    let running = run(
        &f.sandbox,
        SPAWNS_GRANDCHILD,
        Duration::from_secs(300),
        &env,
        &cancel,
        1024,
    );
    let pid_file = f.session.join("pid");
    let canceller = async {
        let pid = wait_for_pid(&pid_file).await;
        assert!(!is_gone(pid), "grandchild should be running before cancel");
        cancel.cancel();
        (pid, Instant::now())
    };
    let (result, (pid, cancelled_at)) = tokio::join!(running, canceller);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
    assert!(matches!(result, Err(SandboxError::Cancelled)), "{result:?}");
    assert!(
        gone_within(pid, Duration::from_secs(5)).await,
        "grandchild {pid} survived cancellation"
    );
}

#[tokio::test]
async fn already_cancelled_request_runs_nothing() {
    let f = fixture();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = run(
        &f.sandbox,
        "touch ran",
        Duration::from_secs(10),
        &BTreeMap::new(),
        &cancel,
        1024,
    )
    .await;
    assert!(matches!(result, Err(SandboxError::Cancelled)));
    assert!(!f.session.join("ran").exists());
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let f = fixture();
    let sandbox = f.sandbox.clone();
    let task = tokio::spawn(async move {
        let env = BTreeMap::new();
        let cancel = CancellationToken::new();
        run(
            &sandbox,
            SPAWNS_GRANDCHILD,
            Duration::from_secs(300),
            &env,
            &cancel,
            1024,
        )
        .await
    });
    let pid = wait_for_pid(&f.session.join("pid")).await;
    assert!(
        !is_gone(pid),
        "grandchild should be running before the drop"
    );
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    assert!(
        gone_within(pid, Duration::from_secs(5)).await,
        "grandchild {pid} survived the dropped future"
    );
}

#[tokio::test]
async fn background_child_does_not_make_the_command_hang() {
    let f = fixture();
    let start = Instant::now();
    let out = run_simple(&f.sandbox, "sleep 100 & echo $! > pid; echo done").await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.exit_code, Some(0));
    assert!(!out.timed_out);
    assert_eq!(out.output, "done\n");
    let pid = wait_for_pid(&f.session.join("pid")).await;
    assert!(
        gone_within(pid, Duration::from_secs(5)).await,
        "background child {pid} outlived its command"
    );
}

#[tokio::test]
async fn output_written_just_before_exit_is_kept() {
    let f = fixture();
    let out = run_simple(&f.sandbox, "seq 1 20000 | tail -n 1; echo err >&2").await;
    assert_eq!(out.output, "20000\nerr\n");
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_order() {
    let f = fixture();
    let out = run_simple(&f.sandbox, "echo 1; echo 2 >&2; echo 3; echo 4 >&2").await;
    assert_eq!(out.output, "1\n2\n3\n4\n");
}

#[tokio::test]
async fn a_finished_command_does_not_wait_for_the_drain_deadline() {
    // If the runner kept a copy of the pipe's write end, every command would only end when
    // the drain deadline passed.
    let f = fixture();
    let start = Instant::now();
    for _ in 0..4 {
        assert_eq!(run_simple(&f.sandbox, "true").await.exit_code, Some(0));
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "4 commands took {:?}",
        start.elapsed()
    );
}

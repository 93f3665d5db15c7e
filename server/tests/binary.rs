//! The `stigmer-server` binary: start-up line, configuration from the environment, clear
//! failures, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

use std::process::Stdio;
use std::time::Duration;

use stigmer_proto::agent::v1::ListAgentsRequest;
use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PATIENCE: Duration = Duration::from_secs(10);

fn server_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stigmer-server"));
    command
        .args(args)
        .env_remove("STIGMER_SERVER_LISTEN")
        .env_remove("STIGMER_DATA_DIR")
        .env_remove("STIGMER_SERVER_API_KEYS")
        .env("LOG_LEVEL", "INFO")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Reads the announcement line and returns the address in it.
async fn announced_addr(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("no start-up line")
        .unwrap();
    line.trim()
        .strip_prefix("stigmer-server listening on ")
        .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"))
        .to_string()
}

async fn failure(mut command: Command) -> String {
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the server did not exit")
        .unwrap();
    assert!(!output.status.success(), "expected a failure exit");
    assert!(output.stdout.is_empty(), "nothing announced on failure");
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test]
async fn announces_its_address_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let mut command = server_command(&["--listen", "127.0.0.1:0"]);
    command
        .env("STIGMER_DATA_DIR", &data_dir)
        .env("STIGMER_SERVER_API_KEYS", "key-one, key-two");
    let mut child = command.spawn().unwrap();
    let addr = announced_addr(&mut child).await;
    assert!(data_dir.join("stigmer.db").exists());

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);
    for (key, accepted) in [
        ("key-one", true),
        ("key-two", true),
        ("dummy-local-key", false),
    ] {
        let mut agents = AgentServiceClient::new(channel.clone());
        let mut request = tonic::Request::new(ListAgentsRequest {});
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert_eq!(agents.list_agents(request).await.is_ok(), accepted, "{key}");
    }

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("no exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(!stderr.contains("key-one"), "API keys must not be logged");
}

#[tokio::test]
async fn a_port_in_use_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut command = server_command(&["--listen", &addr]);
    command.arg("--data-dir").arg(dir.path());
    let stderr = failure(command).await;
    assert!(
        stderr.contains(&format!(
            "address {addr} is in use: is another stigmer-server running?"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn an_unusable_data_dir_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut command = server_command(&["--listen", "127.0.0.1:0"]);
    command.arg("--data-dir").arg(&file);
    let stderr = failure(command).await;
    assert!(stderr.contains("cannot create data directory"), "{stderr}");
}

/// Starts `stigmer-server` with `args` under `umask 000` (so that only modes the server sets
/// explicitly can make its files private) and returns it with its announced address.
async fn start_under_open_umask(args: &[&str]) -> (Child, String) {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_stigmer-server"))
        .args(args)
        .env_remove("STIGMER_SERVER_LISTEN")
        .env_remove("STIGMER_DATA_DIR")
        .env_remove("STIGMER_SERVER_API_KEYS")
        .env_remove("STIGMER_SERVER_RUNNER_KEY_FILE")
        .env_remove("STIGMER_SERVER_CLIENT_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let addr = announced_addr(&mut child).await;
    (child, addr)
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

/// The data directory (and a missing parent) is created 0700 and the database with its WAL
/// and shared-memory files 0600, even when the umask would allow everything.
#[tokio::test]
async fn the_data_dir_is_0700_and_the_database_files_0600() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("home");
    let data_dir = parent.join("data");
    let data = data_dir.to_str().unwrap();
    let (mut child, addr) =
        start_under_open_umask(&["--listen", "127.0.0.1:0", "--data-dir", data]).await;
    // A write, so that the WAL and shared-memory files exist while it runs.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut agents = AgentServiceClient::new(channel);
    let mut request = tonic::Request::new(stigmer_proto::agent::v1::ApplyAgentRequest {
        agent: Some(stigmer_proto::agent::v1::Agent {
            name: "private".into(),
            instructions: "x".into(),
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer dummy-local-key".parse().unwrap());
    agents.apply_agent(request).await.unwrap();

    assert_eq!(mode(&parent), 0o700, "a created parent");
    assert_eq!(mode(&data_dir), 0o700);
    for file in ["stigmer.db", "stigmer.db-wal", "stigmer.db-shm"] {
        assert_eq!(mode(&data_dir.join(file)), 0o600, "{file}");
    }
    child.kill().await.unwrap();
}

/// Role keys from files: the client key opens the agent and execution APIs but cannot
/// `Claim`; the runner key can `Claim` but not use the client APIs; the well-known local key
/// no longer opens anything.
#[tokio::test]
async fn role_keys_from_files_open_their_api_only() {
    use stigmer_proto::agentexecution::v1::ListExecutionsRequest;
    use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
    use stigmer_proto::runner::v1::ClaimRequest;
    use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let runner_file = dir.path().join("runner.key");
    let client_file = dir.path().join("client.key");
    std::fs::write(&runner_file, "runner-key-7d1f\n").unwrap();
    std::fs::write(&client_file, "client-key-93ab\n").unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_under_open_umask(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--runner-key-file",
        runner_file.to_str().unwrap(),
        "--client-key-file",
        client_file.to_str().unwrap(),
    ])
    .await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    }
    let claim = |key: &str| {
        let mut runners = RunnerServiceClient::new(channel.clone());
        let request = with_key(
            ClaimRequest {
                runner_id: "r1".into(),
                max_executions: 1,
                wait_ms: 0,
                ..Default::default()
            },
            key,
        );
        async move { runners.claim(request).await.map(|_| ()) }
    };
    let list = |key: &str| {
        let mut agents = AgentServiceClient::new(channel.clone());
        let mut executions = ExecutionServiceClient::new(channel.clone());
        let agents_request = with_key(ListAgentsRequest {}, key);
        let executions_request = with_key(ListExecutionsRequest::default(), key);
        async move {
            let a = agents.list_agents(agents_request).await.map(|_| ());
            let e = executions
                .list_executions(executions_request)
                .await
                .map(|_| ());
            (a, e)
        }
    };
    let code = |result: Result<(), tonic::Status>| result.err().map(|s| s.code());

    // The client key: client APIs yes, Claim no.
    let (a, e) = list("client-key-93ab").await;
    assert_eq!((code(a), code(e)), (None, None));
    let refused = claim("client-key-93ab").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("client key"), "{refused:?}");
    assert!(!refused.message().contains("client-key-93ab"));

    // The runner key: Claim yes, client APIs no.
    claim("runner-key-7d1f").await.unwrap();
    let (a, e) = list("runner-key-7d1f").await;
    assert_eq!(
        (code(a), code(e)),
        (Some(Code::PermissionDenied), Some(Code::PermissionDenied))
    );

    // The well-known key opens nothing once role keys are configured.
    assert_eq!(
        code(claim("dummy-local-key").await),
        Some(Code::Unauthenticated)
    );
    let (a, _) = list("dummy-local-key").await;
    assert_eq!(code(a), Some(Code::Unauthenticated));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_key_file_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("runner.key");
    let mut command = server_command(&["--listen", "127.0.0.1:0"]);
    command
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--runner-key-file")
        .arg(&missing);
    let stderr = failure(command).await;
    assert!(
        stderr.contains(&format!("key file {}", missing.display())),
        "{stderr}"
    );
}

/// A numeric setting outside its range, from a flag or from the environment, is refused
/// before anything starts (exit 2, naming it and the range); a zero sweep interval would
/// otherwise reach `tokio::time::interval`, which panics on a zero period.
#[tokio::test]
async fn numeric_settings_out_of_range_are_refused_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let no_env: Vec<(&str, &str)> = Vec::new();
    let cases = [
        (
            vec!["--sweep-interval-ms", "0"],
            no_env.clone(),
            "10..=60000",
        ),
        (
            vec![],
            vec![("STIGMER_SWEEP_INTERVAL_MS", "0")],
            "10..=60000",
        ),
        (
            vec!["--lease-ttl-secs", "18446744073709551615"],
            no_env,
            "1..=3600",
        ),
    ];
    for (args, env, range) in cases {
        let mut command = server_command(&["--listen", "127.0.0.1:0", "--data-dir", data]);
        command.args(&args).envs(env.iter().copied());
        let output = tokio::time::timeout(PATIENCE, command.output())
            .await
            .expect("the server did not exit")
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing announced");
        assert!(stderr.contains(range), "{stderr}");
        assert!(!data_dir.exists(), "the data directory was created");
    }
}

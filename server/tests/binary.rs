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

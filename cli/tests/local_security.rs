//! What `stigmer local` does against other local users and a hostile (prompt-injected)
//! model, end to end with the real binaries: the platform's own client and runner keys,
//! processes whose environment and memory same-uid processes cannot read, and no runner
//! configuration from files a tool command could have written.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use stigmer_proto::agent::v1::ListAgentsRequest;
use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use stigmer_proto::runner::v1::ClaimRequest;
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use testkit::llm::{Reply, ScriptedLlm};
use tonic::Code;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

fn key(p: &Platform, role: &str) -> String {
    let path = p.data_dir().join(format!("{role}.key"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    request
}

/// `local start` creates a random client key and a separate runner key, private (0600), and
/// reuses them on the next start. The runner claims with the runner key and the CLI finds the
/// client key by itself; neither key opens the other's API, and the well-known local key
/// opens nothing. The database is private too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_has_private_client_and_runner_keys() {
    let llm = ScriptedLlm::start(vec![
        Reply::Text("First answer.".into()),
        Reply::Text("Second answer.".into()),
    ])
    .await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;

    let (client, runner) = (key(&p, "client"), key(&p, "runner"));
    assert!(client.starts_with("stigmer-client-"), "{client}");
    assert!(runner.starts_with("stigmer-runner-"), "{runner}");
    assert_ne!(client, runner);
    for file in ["client.key", "runner.key", "data/stigmer.db"] {
        assert_eq!(mode(&p.data_dir().join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&p.data_dir()), 0o700);
    assert_eq!(mode(&p.data_dir().join("data")), 0o700);

    // End to end: the runner claims with its key, the CLI uses the client key it found.
    let out = p.cli(&["run", "Say something"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(stdout(&out).contains("First answer."), "{}", text(&out));

    // The well-known key, given explicitly, is refused.
    let out = p
        .cli(&["--api-key", stigmer_proto::LOCAL_API_KEY, "agent", "list"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("refused the API key"),
        "{}",
        text(&out)
    );

    // Over gRPC: a client key cannot Claim; the runner key cannot use the client APIs.
    let channel = tonic::transport::Channel::from_shared(p.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let claim = |key: &str| {
        let mut runners = RunnerServiceClient::new(channel.clone());
        let request = with_key(
            ClaimRequest {
                runner_id: "rogue".into(),
                max_executions: 1,
                wait_ms: 0,
                ..Default::default()
            },
            key,
        );
        async move { runners.claim(request).await.map(|_| ()) }
    };
    let refused = claim(&client).await.expect_err("a client key cannot claim");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = claim(stigmer_proto::LOCAL_API_KEY)
        .await
        .expect_err("the well-known key cannot claim");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = AgentServiceClient::new(channel.clone())
        .list_agents(with_key(ListAgentsRequest {}, &runner))
        .await
        .expect_err("a runner key cannot list agents");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Neither key is on a command line, or in the logs and state.
    let pids = ["supervisor", "server", "runner"].map(|c| p.pid(c).expect("pid"));
    for pid in pids {
        let cmdline = proc_entries(pid, "cmdline").join(" ");
        assert!(
            !cmdline.contains(&client) && !cmdline.contains(&runner),
            "pid {pid}: {cmdline}"
        );
    }
    for file in [
        "logs/supervisor.log",
        "logs/server.log",
        "logs/runner.log",
        "run/state.json",
    ] {
        let text = std::fs::read_to_string(p.data_dir().join(file)).unwrap_or_default();
        assert!(
            !text.contains(&client) && !text.contains(&runner),
            "a platform key is in {file}"
        );
    }

    // The next start reuses both keys.
    let stop = p.local(&["stop"]).await;
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    p.start(&[]).await;
    assert_eq!((key(&p, "client"), key(&p, "runner")), (client, runner));
    let out = p.cli(&["run", "Again"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(stdout(&out).contains("Second answer."), "{}", text(&out));
}

/// A key file someone else could have read (or planted) is refused, by `local start` and by
/// the client commands, with what to do about it; nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_open_to_others_are_refused() {
    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;
    let stop = p.local(&["stop"]).await;
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));

    let client_file = p.data_dir().join("client.key");
    std::fs::set_permissions(&client_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = p.run(p.start_args(&[])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("refusing to use {}", client_file.display())),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
    assert!(p.pid("supervisor").is_none(), "nothing started");

    // A client command refuses it too, before sending it anywhere.
    let out = p.run(["agent", "list"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("refusing to use"), "{}", text(&out));

    std::fs::set_permissions(&client_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOT CHECKED: a key file owned by another user (needs root to set up)");
        return;
    }
    let runner_file = p.data_dir().join("runner.key");
    nix::unistd::chown(&runner_file, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let out = p.run(p.start_args(&[])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("belongs to uid 65534"),
        "{}",
        text(&out)
    );
    assert!(p.pid("supervisor").is_none(), "nothing started");
}

/// A command for `program` running as this user without any capability: through `setpriv`
/// dropping every capability when the test runs as root (as CI does), directly otherwise.
fn without_capabilities(program: &str) -> std::process::Command {
    if nix::unistd::geteuid().is_root() {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--",
            program,
        ]);
        cmd
    } else {
        std::process::Command::new(program)
    }
}

/// Runs `program args` as a same-uid process without any capability (a tool command).
fn unprivileged(program: &str, args: &[&str]) -> std::process::Output {
    without_capabilities(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (setpriv is in util-linux): {e}"))
}

/// The start of a readable mapping of `pid`, from the test's own view of /proc (a root test
/// may read every process's maps; an unprivileged one only dumpable processes').
fn mapped_address(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()
        .and_then(|maps| {
            maps.lines()
                .find(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|p| p.starts_with('r'))
                })
                .and_then(|l| l.split('-').next())
                .and_then(|start| u64::from_str_radix(start, 16).ok())
        })
        .unwrap_or(0x400000)
}

/// Reads 16 bytes of `pid`'s memory at a mapped address, as an unprivileged process.
fn read_mem(pid: i32) -> std::process::Output {
    let skip = format!("skip={}", mapped_address(pid));
    let input = format!("if=/proc/{pid}/mem");
    unprivileged(
        "dd",
        &[
            &input,
            "bs=16",
            "count=1",
            &skip,
            "iflag=skip_bytes",
            "status=none",
        ],
    )
}

/// Same-uid processes without CAP_SYS_PTRACE (a tool command) cannot read the environment
/// (where the LLM key and the runner key are) or the memory of the supervisor, the control
/// plane or the runner; the same reader can read a dumpable process of the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_processes_are_not_dumpable() {
    // The reader really is unprivileged.
    let caps = unprivileged("grep", &["CapEff", "/proc/self/status"]);
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("0000000000000000"),
        "the reader has capabilities: {}",
        String::from_utf8_lossy(&caps.stdout)
    );

    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    // The platform runs without capabilities too: a reader lacking capabilities its target
    // holds is refused whatever the target's dumpable flag, which would prove nothing.
    let mut start = without_capabilities(STIGMER);
    start
        .args(p.start_args(&["--foreground"]))
        .env_clear()
        .envs(&p.env)
        .current_dir(p.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let supervisor = tokio::process::Command::from(start)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let supervisor_pid = supervisor.id().expect("pid") as i32;
    p.wait_state("running", |s| s["phase"] == "running").await;

    // The control: a dumpable process of the same user and capabilities, with a marker in its
    // environment.
    let mut control = without_capabilities("sleep")
        .arg("60")
        .env("STIGMER_TEST_MARKER", "visible")
        .spawn()
        .expect("sleep");
    let control_pid = control.id() as i32;
    // Until setpriv has dropped its capabilities and become `sleep`, a reader without
    // capabilities is refused for that reason alone.
    let became_sleep = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{control_pid}/comm"))
        .map(|c| c.trim() != "sleep")
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < became_sleep,
            "the control never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let environ = unprivileged("cat", &[&format!("/proc/{control_pid}/environ")]);
    assert!(
        environ.status.success()
            && String::from_utf8_lossy(&environ.stdout).contains("STIGMER_TEST_MARKER=visible"),
        "the control's environment must be readable: {:?}",
        environ
    );
    let mem = read_mem(control_pid);
    assert!(
        mem.status.success() && mem.stdout.len() == 16,
        "the control's memory must be readable: {mem:?}"
    );

    for (name, pid) in [
        ("supervisor", supervisor_pid),
        ("control plane", p.pid("server").expect("server pid")),
        ("runner", p.pid("runner").expect("runner pid")),
    ] {
        let environ = unprivileged("cat", &[&format!("/proc/{pid}/environ")]);
        assert!(
            !environ.status.success() && environ.stdout.is_empty(),
            "the {name}'s environment was readable"
        );
        assert!(
            String::from_utf8_lossy(&environ.stderr).contains("Permission denied"),
            "{name}: {}",
            String::from_utf8_lossy(&environ.stderr)
        );
        let mem = read_mem(pid);
        assert!(
            !mem.status.success() && mem.stdout.is_empty(),
            "the {name}'s memory was readable"
        );
        assert!(
            String::from_utf8_lossy(&mem.stderr).contains("Permission denied"),
            "{name}: {}",
            String::from_utf8_lossy(&mem.stderr)
        );
    }

    let _ = control.kill();
    let _ = control.wait();
    kill(supervisor_pid, Signal::SIGINT);
    let out = tokio::time::timeout(Duration::from_secs(60), supervisor.wait_with_output())
        .await
        .expect("stopped in time")
        .expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A hostile command wrote a `.env` redirecting `STIGMER_LLM_BASE_URL` into the runner's
/// working directory and into the workspace (and one sits where `start` is typed). On the next
/// `stigmer local start` the key still goes to the real endpoint only, and the runner's banner
/// shows that endpoint with where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotenv_written_by_a_command_is_never_read() {
    let real = ScriptedLlm::start(vec![Reply::Text("From the real model.".into())]).await;
    let attacker = ScriptedLlm::start(vec![Reply::Text("From the attacker.".into())]).await;
    let mut p = Platform::new(Wire::OpenAi, &real.base_url());
    // The user's endpoint comes from OLLAMA_BASE_URL, which STIGMER_LLM_BASE_URL (set only
    // in the planted files) would override.
    p.env.remove("STIGMER_LLM_BASE_URL");
    p.env.insert("STIGMER_LLM_PROVIDER".into(), "ollama".into());
    p.env.insert("OLLAMA_BASE_URL".into(), real.base_url());
    p.env.insert("STIGMER_LLM_API_KEY".into(), TEST_KEY.into());
    let planted = format!(
        "STIGMER_LLM_BASE_URL={}/v1\nOLLAMA_BASE_URL={}\n",
        attacker.base_url(),
        attacker.base_url()
    );
    for dir in [
        p.data_dir().join("runner"),
        p.data_dir().join("workspace"),
        p.dir.path().to_path_buf(),
    ] {
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(".env"), &planted).expect("plant .env");
    }
    p.start(&[]).await;
    let out = p.cli(&["run", "Hello"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        p.all_logs()
    );
    assert!(
        stdout(&out).contains("From the real model."),
        "{}",
        text(&out)
    );
    assert_eq!(attacker.request_count(), 0, "the key went to the attacker");
    let requests = real.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    let log = p.log("runner");
    assert!(
        log.contains(&format!(
            "llm endpoint    {}   [environment: OLLAMA_BASE_URL]",
            real.base_url()
        )),
        "{log}"
    );
    assert!(
        log.contains("config file     none (STIGMER_DOTENV=off)"),
        "{log}"
    );
}

/// `local status` shows which sandbox layers the runner enforces, or says it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_runner_sandbox() {
    let llm = ScriptedLlm::start(vec![]).await;
    let p = Platform::new(Wire::OpenAi, &llm.base_url()).with_key();
    p.start(&[]).await;
    let addr = p.state()["runner"]["addr"]
        .as_str()
        .expect("runner addr")
        .to_string();
    let reported: serde_json::Value = runner_status_json(&addr).await;
    let status = p.local(&["status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let shown = stdout(&status);
    let json = p
        .run(
            ["-o", "json", "local", "--data-dir"]
                .iter()
                .map(|s| s.to_string())
                .chain([p.data_dir().display().to_string(), "status".into()]),
        )
        .await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    match reported.get("sandbox") {
        // The runner reports its layers: shown as it says.
        Some(sandbox) => {
            let mode = sandbox["mode"].as_str().expect("mode");
            assert!(
                shown.contains(&format!("  sandbox        {mode} — enforced: ")),
                "{shown}"
            );
            assert_eq!(&json["runner"]["sandbox"], sandbox);
        }
        None => {
            assert!(
                shown
                    .contains("  sandbox        unknown (this runner does not report its sandbox)"),
                "{shown}"
            );
            assert_eq!(json["runner"]["sandbox"], serde_json::Value::Null);
        }
    }
}

/// The runner's `/status` as JSON.
async fn runner_status_json(addr: &str) -> serde_json::Value {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let (code, body) = testkit::process::http_get(addr, "/status")
        .await
        .expect("the runner answers /status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

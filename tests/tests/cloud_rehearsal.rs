//! The cloud-mode workload stack on loopback, without a cluster (runs in CI): a real
//! `redis-server`, the real `stigmer-server` binary with exactly the environment the cluster
//! test gives its pod, the Python Daytona stand-in and scripted LLM the cluster test deploys
//! (on this machine's `python3`), and the real `runner` binary with the environment the
//! operator builds for a cloud AgentRunner (its ConfigMap, Secret references and fields
//! resolved as the kubelet would; only the metrics port is moved off 8080, since pods have
//! their own network). Daytona and a hosted LLM cannot be reached from CI: the stand-ins speak
//! their documented wire formats.
//!
//! It proves that what `a_cloud_mode_pod_runs_an_execution` deploys works together: an
//! execution is claimed through Redis, its tool call runs in the Daytona stand-in, it
//! completes, and a runner told to stop (SIGTERM, as the kubelet does on pod deletion) while
//! busy finishes it first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::cloud_stack::{
    AGENT_YAML, CloudStack, DAYTONA_SCRIPT, Endpoints, LLM_SCRIPT, container_env, secret_objects,
};
use nix::sys::signal::Signal;
use operator::AgentRunner;
use operator::config::OperatorConfig;
use serde_json::json;
use stigmer_contract::env as vars;
use testkit::process::{ChildProcess, free_addr, http_get};
use testkit::redis::RedisServer;

const STEP: Duration = Duration::from_secs(60);

/// The directory of this build's binaries; `runner`, `stigmer-server` and `stigmer` are built
/// there when missing (`cargo test -p e2e` alone does not build other packages' binaries).
fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile dir")
            .to_path_buf();
        testkit::process::ensure_built(
            &dir,
            &["runner", "stigmer-server", "stigmer"],
            &["runner", "runner-sandbox", "stigmer-server", "stigmer"],
            env!("CARGO_MANIFEST_DIR"),
        );
        dir
    })
}

fn python3() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("python3"))
            .find(|p| p.is_file())
    });
    found.expect("python3 is needed for the Daytona stand-in and the scripted LLM")
}

/// Polls `GET path` on `addr` until it answers 200.
async fn wait_http(addr: std::net::SocketAddr, path: &str, what: &str, p: &mut ChildProcess) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if http_get(addr, path).await.is_some_and(|(c, _)| c == 200) {
            return;
        }
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            panic!("{what} exited with {status}\n{}", p.output());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not up\n{}",
            p.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `stigmer` as a user of this control plane runs it.
struct Cli {
    env: BTreeMap<String, String>,
}

impl Cli {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin_dir().join("stigmer"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `stigmer args` to the end; its stdout, or a panic with both streams.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn stigmer");
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).await.expect("write stdin");
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("stigmer {args:?} still running after 120 s"))
            .expect("wait stigmer");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "stigmer {args:?} exited with {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// The runner's environment as the operator builds it for a cloud AgentRunner of `stack`.
fn operator_runner_env(stack: &CloudStack, e: &Endpoints) -> BTreeMap<String, String> {
    let runner: AgentRunner = serde_json::from_value(json!({
        "apiVersion": "agentic.stigmer.ai/v1alpha1", "kind": "AgentRunner",
        "metadata": {"name": "rehearsal", "namespace": "e2e", "uid": "rehearsal-uid"},
        "spec": stack.agentrunner_spec(e),
    }))
    .expect("AgentRunner");
    let config = OperatorConfig {
        default_image_tag: "rehearsal".into(),
        ..Default::default()
    };
    let valid = operator::validate::validate(&runner, &config).expect("valid AgentRunner");
    let digest = operator::secrets::resolve(&runner, &secret_objects(&stack.runner_secrets()))
        .expect("every referenced Secret present");
    let desired = operator::build::build(&valid, &digest);
    let pod = desired.deployment.spec.template.spec.expect("pod spec");
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "runner")
        .expect("runner container");
    let config_maps = BTreeMap::from([(
        desired.config_map.metadata.name.clone().unwrap_or_default(),
        desired.config_map.data.clone().unwrap_or_default(),
    )]);
    let fields = BTreeMap::from([("metadata.name", "rehearsal-pod-0".to_owned())]);
    container_env(container, &config_maps, &stack.runner_secrets(), &fields)
        .expect("the kubelet could build this environment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_stack_runs_an_execution_and_drains_on_loopback() {
    let bins = bin_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let stack = CloudStack::new();
    let redis = RedisServer::start();
    let (cp_addr, daytona_addr, llm_addr) = (free_addr(), free_addr(), free_addr());
    let e = Endpoints {
        backend: format!("http://{cp_addr}"),
        redis_host: "127.0.0.1".into(),
        redis_port: redis.port(),
        daytona_api: format!("http://{daytona_addr}/api"),
        llm_base: format!("http://{llm_addr}/v1"),
    };

    // The control plane, as its pod runs it.
    let files = dir.path().join("control-plane-files");
    std::fs::create_dir_all(&files).expect("files dir");
    for (name, content) in stack.control_plane_files() {
        std::fs::write(files.join(name), content).expect("key file");
    }
    let cp_env = stack.control_plane_env(
        &e,
        &cp_addr.to_string(),
        &dir.path().join("data").display().to_string(),
        &files.display().to_string(),
    );
    let mut cp = ChildProcess::spawn(
        &bins.join("stigmer-server"),
        &cp_env,
        &logs,
        "stigmer-server",
    );

    // The stand-ins, from the very scripts the cluster test mounts.
    let py = python3();
    let daytona_script = dir.path().join("daytona.py");
    let llm_script = dir.path().join("llm.py");
    std::fs::write(&daytona_script, DAYTONA_SCRIPT).expect("daytona script");
    std::fs::write(&llm_script, LLM_SCRIPT).expect("llm script");
    let daytona_env = stack.daytona_env(
        daytona_addr.port(),
        &dir.path().join("sandboxes").display().to_string(),
    );
    let mut daytona = ChildProcess::spawn_args(
        &py,
        &["-u", &daytona_script.display().to_string()],
        &daytona_env,
        &logs,
        "daytona",
    );
    let llm_env = BTreeMap::from([("LLM_PORT".to_owned(), llm_addr.port().to_string())]);
    let mut llm = ChildProcess::spawn_args(
        &py,
        &["-u", &llm_script.display().to_string()],
        &llm_env,
        &logs,
        "llm",
    );
    wait_http(
        daytona_addr,
        "/healthz",
        "the Daytona stand-in",
        &mut daytona,
    )
    .await;
    wait_http(llm_addr, "/", "the scripted LLM", &mut llm).await;

    // The runner, with the environment the operator gives its pod.
    let mut env = operator_runner_env(&stack, &e);
    assert_eq!(env.get(vars::MODE).map(String::as_str), Some("cloud"));
    env.insert(vars::HTTP_ADDR.to_owned(), free_addr().to_string());
    env.insert("HOME".to_owned(), dir.path().display().to_string());
    let mut runner = ChildProcess::spawn(&bins.join("runner"), &env, &logs, "runner");
    runner.wait_ready(STEP).await;
    if let Some(status) = cp.child.try_wait().expect("try_wait") {
        panic!("the control plane exited with {status}\n{}", cp.output());
    }

    let cli = Cli {
        env: BTreeMap::from([
            ("STIGMER_BACKEND_ENDPOINT".to_owned(), e.backend.clone()),
            ("STIGMER_API_KEY".to_owned(), stack.client_key.clone()),
            ("HOME".to_owned(), dir.path().display().to_string()),
            (
                "STIGMER_HOME".to_owned(),
                dir.path().join("cli-home").display().to_string(),
            ),
        ]),
    };
    cli.run(&["agent", "apply", "-f", "-"], Some(AGENT_YAML))
        .await;
    let out = cli.run(&["run", "--agent", "e2e", "say ok"], None).await;
    assert!(
        out.contains("e2e-done"),
        "the model's answer is missing: {out}\n{}",
        runner.output()
    );
    assert!(
        daytona.stderr().contains("/process/execute"),
        "the tool call did not run in the Daytona stand-in\n{}",
        daytona.output()
    );

    // Busy, then told to stop: the runner finishes the execution before it exits.
    let follower = {
        let mut cmd = cli.command(&["run", "--agent", "e2e", "slow"]);
        cmd.stdin(Stdio::null());
        cmd.spawn().expect("spawn the follower")
    };
    let busy = async {
        loop {
            let listed = cli
                .run(
                    &["-o", "json", "execution", "list", "--phase", "in-progress"],
                    None,
                )
                .await;
            if listed.contains("IN_PROGRESS") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(STEP, busy)
        .await
        .expect("an execution in progress");
    runner.signal(Signal::SIGTERM);
    let followed = tokio::time::timeout(Duration::from_secs(120), follower.wait_with_output())
        .await
        .expect("the drained execution ends")
        .expect("wait follower");
    let out = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.status.success() && out.contains("e2e-done"),
        "the execution did not complete through the drain ({}): {out}\n{}\n{}",
        followed.status,
        String::from_utf8_lossy(&followed.stderr),
        runner.output()
    );
    let status = runner.wait_exit(STEP).await;
    assert!(
        status.success(),
        "the drained runner exited with {status}\n{}",
        runner.output()
    );
}

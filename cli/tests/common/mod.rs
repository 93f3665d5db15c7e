//! Shared set-up for the CLI's end-to-end tests: the real `stigmer`, `stigmer-server` and
//! `runner` binaries as processes, each test with its own data directory and ports, and the
//! scripted LLM server standing in for the Anthropic/OpenAI APIs that CI cannot reach.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

pub const STIGMER: &str = env!("CARGO_BIN_EXE_stigmer");
pub const TEST_KEY: &str = "sk-test-cli-key-7f3a9c";

/// The directory holding `stigmer`, where `local start` looks for the other two binaries.
/// They are built here when missing (`cargo test -p stigmer` alone does not build them;
/// `cargo test --workspace` does).
pub fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(STIGMER).parent().expect("bin dir").to_path_buf();
        testkit::process::ensure_built(
            &dir,
            &["runner", "stigmer-server"],
            &["runner", "stigmer-server"],
            env!("CARGO_MANIFEST_DIR"),
        );
        dir
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Anthropic,
    OpenAi,
}

/// One `stigmer local` platform in a temporary data directory. Dropping it stops whatever
/// still runs, so a failing test leaves no processes behind.
pub struct Platform {
    pub dir: TempDir,
    pub env: BTreeMap<String, String>,
    pub wire: Wire,
}

impl Platform {
    /// The environment of a user who chose `wire` and pointed it at `llm_base_url`, without
    /// the key (see [`Platform::with_key`]).
    pub fn new(wire: Wire, llm_base_url: &str) -> Self {
        bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_string(), v.to_string());
        };
        set("PATH", &std::env::var("PATH").unwrap_or_default());
        // Never the developer's own ~/.stigmer.
        set("HOME", &dir.path().display().to_string());
        // Client commands find the platform (its endpoint and client key) here, as `local`
        // commands do with --data-dir.
        set(
            "STIGMER_HOME",
            &dir.path().join("stigmer-home").display().to_string(),
        );
        set("STIGMER_LLM_MODEL", "test-model");
        set("STIGMER_HEARTBEAT_INTERVAL_MS", "200");
        set("STIGMER_CLAIM_WAIT_MS", "1000");
        set("STIGMER_STATUS_FLUSH_MS", "50");
        set("STIGMER_DRAIN_TIMEOUT_SECS", "20");
        // The runner at debug level (where a leaked key would most likely show), without
        // the transport crates' chatter.
        set(
            "RUST_LOG",
            "debug,h2=warn,hyper=warn,hyper_util=warn,tower=warn,reqwest=warn",
        );
        match wire {
            Wire::Anthropic => {
                set("STIGMER_LLM_PROVIDER", "anthropic");
                set("STIGMER_LLM_BASE_URL", llm_base_url);
            }
            Wire::OpenAi => {
                set("STIGMER_LLM_PROVIDER", "openai");
                set("STIGMER_LLM_BASE_URL", &format!("{llm_base_url}/v1"));
            }
        }
        Self { dir, env, wire }
    }

    /// The key in the environment, under the provider's variable.
    pub fn with_key(mut self) -> Self {
        let var = match self.wire {
            Wire::Anthropic => "ANTHROPIC_API_KEY",
            Wire::OpenAi => "OPENAI_API_KEY",
        };
        self.env.insert(var.into(), TEST_KEY.into());
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("stigmer-home")
    }

    /// `stigmer local start` arguments with short timings, and `extra` (which wins over a
    /// default of the same flag).
    pub fn start_args(&self, extra: &[&str]) -> Vec<String> {
        let data_dir = self.data_dir().display().to_string();
        let defaults = [
            ("--data-dir", data_dir.as_str()),
            ("--port", "0"),
            ("--wait-timeout", "40"),
            ("--health-interval-ms", "200"),
            ("--restart-backoff-ms", "100"),
            ("--restart-backoff-max-ms", "400"),
            ("--runner-stop-timeout-secs", "30"),
            ("--server-stop-timeout-secs", "5"),
        ];
        let mut args = vec!["local".to_string(), "start".to_string()];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.push(flag.to_string());
                args.push(value.to_string());
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// A `stigmer` command with exactly this platform's environment.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = tokio::process::Command::new(STIGMER);
        cmd.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    pub async fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let fut = self.command(args).output();
        tokio::time::timeout(Duration::from_secs(120), fut)
            .await
            .expect("stigmer finished in time")
            .expect("run stigmer")
    }

    /// `stigmer local start` (detached); asserts that it succeeded.
    pub async fn start(&self, extra: &[&str]) -> Output {
        let out = self.run(self.start_args(extra)).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "start failed\n{}\n{}",
            text(&out),
            self.all_logs()
        );
        out
    }

    /// `stigmer local <args> --data-dir <this>`.
    pub async fn local(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = vec![
            "local".into(),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        self.run(all).await
    }

    /// A client command against this platform's control plane.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = vec!["--endpoint".into(), self.endpoint()];
        all.extend(args.iter().map(|s| s.to_string()));
        self.run(all).await
    }

    pub fn state(&self) -> Value {
        let path = self.data_dir().join("run/state.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("state is JSON")
    }

    pub fn endpoint(&self) -> String {
        self.state()["endpoint"]
            .as_str()
            .expect("endpoint")
            .to_string()
    }

    pub fn pid(&self, component: &str) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join(format!("run/{component}.pid")))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.data_dir().join(format!("logs/{component}.log")))
            .unwrap_or_default()
    }

    /// Every file under `logs/`, rotated ones included, for failure messages and greps.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.data_dir().join("logs")) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                out.push_str(&format!(
                    "--- {} ---\n{}\n",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                ));
            }
        }
        out
    }

    /// Polls the state file until `check` holds.
    pub async fn wait_state(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let path = self.data_dir().join("run/state.json");
            if let Some(state) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                && check(&state)
            {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}\nstate: {}\n{}",
                std::fs::read_to_string(&path).unwrap_or_default(),
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // Best effort, blocking: the test is over, and nothing may outlive it.
        let _ = std::process::Command::new(STIGMER)
            .args(["local", "--data-dir"])
            .arg(self.data_dir())
            .args(["stop", "--timeout", "5"])
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// stdout and stderr, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    testkit::process::process_alive(pid)
}

pub async fn wait_dead(pid: i32, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still alive after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal");
}

/// The NUL-separated entries of `/proc/<pid>/<file>` (`cmdline`, `environ`).
pub fn proc_entries(pid: i32, file: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/{file}")).expect("read /proc");
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).to_string())
        .collect()
}

/// The id printed by `stigmer run --detach`.
pub fn detached_id(out: &Output) -> String {
    let id = stdout(out).trim().to_string();
    assert!(!id.is_empty(), "no id printed\n{}", text(out));
    id
}

/// `stigmer -o json execution get ID`, parsed.
pub async fn execution(platform: &Platform, id: &str) -> Value {
    let out = platform.cli(&["-o", "json", "execution", "get", id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_str(stdout(&out).trim()).expect("execution JSON")
}

pub async fn wait_phase(platform: &Platform, id: &str, phase: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = execution(platform, id).await;
        if e["phase"] == phase {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {phase}: {e}\n{}",
            platform.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

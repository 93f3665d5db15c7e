//! Real child processes for tests: spawn with a clean environment, capture output to files,
//! wait for readiness over HTTP, signal, and wait with a timeout.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// A free loopback port (bound then released; good enough for tests).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr")
}

pub struct ChildProcess {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub http_addr: Option<SocketAddr>,
}

impl ChildProcess {
    /// Spawns `bin` with exactly `env` (plus PATH), output captured under `log_dir`.
    pub fn spawn(bin: &Path, env: &BTreeMap<String, String>, log_dir: &Path, name: &str) -> Self {
        Self::spawn_args(bin, &[], env, log_dir, name)
    }

    /// [`ChildProcess::spawn`] with arguments.
    pub fn spawn_args(
        bin: &Path,
        args: &[&str],
        env: &BTreeMap<String, String>,
        log_dir: &Path,
        name: &str,
    ) -> Self {
        std::fs::create_dir_all(log_dir).expect("log dir");
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout = std::fs::File::create(&stdout_path).expect("stdout file");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .current_dir(log_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let http_addr = env.get("STIGMER_HTTP_ADDR").and_then(|a| a.parse().ok());
        Self {
            child,
            stdout_path,
            stderr_path,
            http_addr,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("child still running") as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("send signal");
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Polls `GET /readyz` until 200, failing with the process output if it exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let addr = self
            .http_addr
            .expect("STIGMER_HTTP_ADDR set for this child");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "process exited with {status} before it was ready\n{}",
                    self.output()
                );
            }
            if http_get(addr, "/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready within {timeout:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("process still running after {timeout:?}\n{}", self.output()),
        }
    }
}

/// A minimal HTTP/1.1 GET over a raw socket: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// True while a process with this pid runs. A zombie counts as gone: it was killed, and on
/// machines whose pid 1 does not reap orphans it stays a zombie.
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Host pids of live processes whose command line contains `marker` (arguments joined by
/// spaces). Confined commands run in their own PID namespace, where `$$` and `$!` are not the
/// host's pids, so tests find their processes by a unique marker instead.
pub fn pids_running(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && process_alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let line: Vec<u8> = raw
                        .iter()
                        .map(|b| if *b == 0 { b' ' } else { *b })
                        .collect();
                    String::from_utf8_lossy(&line).contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Waits until a process whose command line contains `marker` runs; returns its host pid.
pub async fn wait_for_process(marker: &str, timeout: Duration) -> i32 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // The shell whose -c script holds the marker matches too; prefer the exact program.
        if let Some(pid) = pids_running(marker).into_iter().max() {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no process running '{marker}' appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `profile_dir` (`target/<profile>`, where cargo puts this build's binaries), after building
/// `packages` there when one of `bins` is missing: `cargo test -p X` builds only X's own
/// binaries (`cargo test --workspace` builds them all). `manifest_dir` is the calling crate's.
pub fn ensure_built(profile_dir: &Path, packages: &[&str], bins: &[&str], manifest_dir: &str) {
    if bins.iter().all(|b| profile_dir.join(b).exists()) {
        return;
    }
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build")
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(manifest_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build of {packages:?} failed");
}

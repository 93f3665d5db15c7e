//! `stigmer local status`: is the platform up, and how are its parts? Reads the supervisor's
//! state file and asks the components themselves (gRPC health, the runner's `/status`).
//! Exit status: 0 running and healthy, 1 not running, 3 running but degraded.

use std::net::SocketAddr;

use serde_json::json;

use super::health::{self, RunnerStatus, ServerHealth};
use super::state::State;
use super::{LocalError, Paths, pidfile};
use crate::args::{Component, Output};

pub const EXIT_NOT_RUNNING: u8 = 1;
pub const EXIT_DEGRADED: u8 = 3;

pub async fn run(paths: &Paths, output: Output) -> Result<u8, LocalError> {
    let state = State::read(&paths.state_file()).ok();
    let Some(supervisor_pid) = pidfile::running_supervisor(paths) else {
        not_running(paths, state.as_ref(), output);
        return Ok(EXIT_NOT_RUNNING);
    };
    let Some(state) = state.filter(|s| s.supervisor_pid == supervisor_pid) else {
        match output {
            Output::Text => {
                println!("stigmer local: starting (supervisor pid {supervisor_pid}; no state yet)")
            }
            Output::Json => println!(
                "{}",
                json!({"running": true, "healthy": false, "supervisor_pid": supervisor_pid})
            ),
        }
        return Ok(EXIT_DEGRADED);
    };
    let server = if state.endpoint.is_empty() {
        ServerHealth::Unreachable
    } else {
        health::server_health(&state.endpoint).await
    };
    let runner_addr: Option<SocketAddr> = state
        .runner
        .addr
        .as_deref()
        .and_then(|a| a.parse().ok())
        .filter(|_| state.runner.pid.is_some());
    let (ready, runner) = match runner_addr {
        Some(addr) => (
            health::runner_ready(addr).await,
            health::runner_status(addr).await,
        ),
        None => (false, None),
    };
    let healthy = server == ServerHealth::Serving && ready && !state.runner.gave_up();
    match output {
        Output::Text => print_text(&state, server, ready, runner.as_ref()),
        Output::Json => println!(
            "{}",
            json!({
                "running": true,
                "healthy": healthy,
                "phase": state.phase,
                "supervisor_pid": state.supervisor_pid,
                "started_at": state.started_at,
                "endpoint": state.endpoint,
                "data_dir": state.data_dir,
                "logs_dir": state.logs_dir,
                "llm": state.llm,
                "server": {
                    "pid": state.server.pid,
                    "health": server.as_str(),
                    "state": state.server.phase,
                    "restarts": state.server.restarts,
                    "last_exit": state.server.last_exit,
                },
                "runner": {
                    "pid": state.runner.pid,
                    "state": state.runner.phase,
                    "ready": ready,
                    "restarts": state.runner.restarts,
                    "gave_up": state.runner.gave_up(),
                    "last_exit": state.runner.last_exit,
                    "health_addr": state.runner.addr,
                    "in_flight": runner.as_ref().map(|r| r.in_flight),
                    "capacity": runner.as_ref().map(|r| r.capacity),
                    "connected": runner.as_ref().map(|r| r.connected),
                    "draining": runner.as_ref().map(|r| r.draining),
                    // null when the runner does not report it (or cannot be reached).
                    "sandbox": runner.as_ref().and_then(|r| r.sandbox.as_ref()),
                },
                "message": state.message,
            })
        ),
    }
    Ok(if healthy { 0 } else { EXIT_DEGRADED })
}

fn print_text(state: &State, server: ServerHealth, ready: bool, runner: Option<&RunnerStatus>) {
    println!(
        "stigmer local: running (supervisor pid {}, since {})",
        state.supervisor_pid, state.started_at
    );
    println!("  endpoint       {}", state.endpoint);
    println!(
        "  control plane  {} (pid {}{})",
        server.as_str(),
        opt(state.server.pid),
        restarts(state.server.restarts)
    );
    let r = &state.runner;
    let runner_line = if r.gave_up() {
        format!(
            "gave up after {} restarts (last: {})",
            r.restarts,
            r.last_exit.as_deref().unwrap_or("?")
        )
    } else if r.pid.is_none() {
        format!(
            "{} (last exit: {}{})",
            r.phase,
            r.last_exit.as_deref().unwrap_or("?"),
            restarts(r.restarts)
        )
    } else {
        let load = runner
            .map(|s| {
                format!(
                    ", in-flight {} of {}{}",
                    s.in_flight,
                    s.capacity,
                    if s.draining { ", draining" } else { "" }
                )
            })
            .unwrap_or_default();
        format!(
            "{} (pid {}{}{load}, health http://{})",
            if ready { "ready" } else { "not ready" },
            opt(r.pid),
            restarts(r.restarts),
            r.addr.as_deref().unwrap_or("?")
        )
    };
    println!("  runner         {runner_line}");
    println!("  sandbox        {}", sandbox_line(runner));
    println!("  LLM            {}", state.llm);
    println!("  data dir       {}", state.data_dir);
    if !state.sandbox_root.is_empty() {
        println!("  sandbox root   {}", state.sandbox_root);
    }
    println!("  logs           {}", state.logs_dir);
    if let Some(message) = &state.message {
        println!("  note           {message}");
    }
}

/// What the runner says it enforces, or why that is not known.
fn sandbox_line(runner: Option<&RunnerStatus>) -> String {
    match runner {
        None => "unknown (the runner did not answer)".into(),
        Some(status) => match &status.sandbox {
            Some(sandbox) => sandbox.summary(),
            None => "unknown (this runner does not report its sandbox)".into(),
        },
    }
}

fn not_running(paths: &Paths, state: Option<&State>, output: Output) {
    let stale: Vec<String> = Component::ALL
        .iter()
        .filter(|c| paths.pid_file(**c).exists())
        .map(|c| paths.pid_file(*c).display().to_string())
        .collect();
    match output {
        Output::Text => {
            println!(
                "stigmer local is not running (data dir {})",
                paths.root().display()
            );
            if let Some(s) = state {
                let phase = serde_json::to_value(s.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                println!("  last run       {phase} (started {})", s.started_at);
                if let Some(m) = &s.message {
                    println!("  note           {m}");
                }
            }
            if !stale.is_empty() {
                println!(
                    "  stale PID files (a crashed supervisor?): {}; `stigmer local stop` or the next start cleans them up",
                    stale.join(", ")
                );
            }
            println!("Start it with `stigmer local start`.");
        }
        Output::Json => println!(
            "{}",
            json!({
                "running": false,
                "healthy": false,
                "data_dir": paths.root(),
                "last_state": state,
                "stale_pid_files": stale,
            })
        ),
    }
}

fn opt(pid: Option<u32>) -> String {
    pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}

fn restarts(n: u32) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", restarts {n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::health::{MissingLayer, SandboxStatus};

    #[test]
    fn the_sandbox_line_says_what_is_known() {
        assert_eq!(sandbox_line(None), "unknown (the runner did not answer)");
        let mut status = RunnerStatus::default();
        assert_eq!(
            sandbox_line(Some(&status)),
            "unknown (this runner does not report its sandbox)"
        );
        status.sandbox = Some(SandboxStatus {
            mode: "strict".into(),
            enforced: vec!["landlock".into(), "seccomp".into()],
            missing: vec![MissingLayer {
                layer: "namespaces".into(),
                reason: "unprivileged user namespaces are disabled".into(),
            }],
            landlock_abi: 6,
            private_proc: false,
        });
        assert_eq!(
            sandbox_line(Some(&status)),
            "strict — enforced: landlock (ABI 6), seccomp; missing: namespaces \
             (unprivileged user namespaces are disabled)"
        );
    }
}

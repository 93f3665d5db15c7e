//! `stigmer local stop`: asks the supervisor to stop (it drains the runner, then stops the
//! control plane) and waits; forces after a timeout. Without a live supervisor it stops
//! whatever a crashed one left behind and removes stale PID files.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::state::State;
use super::{LocalError, Paths, pidfile};
use crate::args::{Component, Output, StopArgs};

pub async fn run(paths: &Paths, args: StopArgs, output: Output) -> Result<u8, LocalError> {
    let state = State::read(&paths.state_file()).ok();
    let mut killed = false;
    let outcome = match supervisor_pid(paths).await {
        Some(pid) if pid > 0 => {
            let timeout = Duration::from_secs(
                args.timeout
                    .or(state.as_ref().map(|s| s.stop_timeout_secs))
                    .unwrap_or(60),
            );
            say(
                output,
                &format!(
                    "stopping stigmer local (supervisor pid {pid}): the runner drains in-flight \
                     executions first (up to {}s)",
                    timeout.as_secs()
                ),
            );
            pidfile::signal(pid, Signal::SIGTERM)?;
            if !pidfile::wait_gone(pid, timeout).await {
                say(output, "still running after the timeout: forcing");
                killed = true;
                // The supervisor's second-signal path forces the runner out quickly; SIGKILL
                // is the last resort, after which its children are stopped below.
                pidfile::signal(pid, Signal::SIGTERM)?;
                if !pidfile::wait_gone(pid, Duration::from_secs(10)).await {
                    pidfile::signal(pid, Signal::SIGKILL)?;
                    pidfile::wait_gone(pid, Duration::from_secs(5)).await;
                }
            }
            "stopped"
        }
        Some(_) => {
            return Err(LocalError::StartFailed(format!(
                "a supervisor holds {} but its PID file is missing; stop it by hand",
                paths.lock_file().display()
            )));
        }
        None => "not running",
    };
    // Whatever is left: children of a crashed or killed supervisor, and stale PID files.
    let names = [
        (
            Component::Runner,
            binary_name(state.as_ref().map(|s| s.runner.binary.as_str()), "runner"),
        ),
        (
            Component::Server,
            binary_name(
                state.as_ref().map(|s| s.server.binary.as_str()),
                "stigmer-server",
            ),
        ),
    ];
    if pidfile::running_supervisor(paths).is_none() {
        for note in pidfile::clean_stale(paths, &names, Duration::from_secs(10)).await? {
            killed |= note.contains("killed");
            say(output, &note);
        }
    }
    match output {
        Output::Text => println!("stigmer local {outcome} ({})", paths.root().display()),
        Output::Json => println!(
            "{}",
            serde_json::json!({"result": outcome, "forced": killed, "data_dir": paths.root()})
        ),
    }
    Ok(u8::from(killed))
}

/// The live supervisor's PID. A supervisor that has just taken the lock may not have written
/// its PID file yet: give it a moment.
async fn supervisor_pid(paths: &Paths) -> Option<u32> {
    for _ in 0..20 {
        match pidfile::running_supervisor(paths) {
            Some(0) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return other,
        }
    }
    Some(0)
}

fn binary_name(recorded: Option<&str>, default: &str) -> String {
    recorded
        .filter(|b| !b.is_empty())
        .and_then(|b| std::path::Path::new(b).file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| default.to_string())
}

fn say(output: Output, message: &str) {
    if output == Output::Text {
        eprintln!("{message}");
    }
}

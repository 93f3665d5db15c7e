//! `stigmer local ...`: the control plane and a supervised runner on this machine.
//!
//! `start` (without `--foreground`) re-executes itself as a detached supervisor
//! (`local start --foreground --detached-child`) and waits until the state file says both
//! components are healthy. The supervisor owns the children: it starts `stigmer-server` and
//! `runner`, pipes their output into rotated log files, restarts a runner that dies, and on
//! SIGTERM/SIGINT drains the runner before it stops the control plane. `stop`, `status` and
//! `logs` only read the files under the data directory and signal the supervisor.

mod binaries;
mod health;
mod logs;
mod paths;
mod pidfile;
mod restart;
mod secrets;
mod start;
mod state;
mod status;
mod stop;
mod supervisor;

use std::path::{Path, PathBuf};

use crate::args::{LocalArgs, LocalCommand, Output};

pub use paths::Paths;

/// What can go wrong in `stigmer local`, each with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A setting the user must change (exit 2).
    #[error("{0}")]
    Config(String),
    #[error(
        "stigmer local is already running (supervisor pid {pid}, endpoint {endpoint}); \
         see `stigmer local status`, or stop it with `stigmer local stop`"
    )]
    AlreadyRunning { pid: u32, endpoint: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {what} ({}): {source}", path.display())]
    Spawn {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    StartFailed(String),
    #[error("{0}")]
    Signal(String),
}

impl LocalError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LocalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::Config(_) => 2,
            _ => 1,
        }
    }
}

pub async fn run(args: LocalArgs, api_key: &str, output: Output) -> Result<u8, LocalError> {
    let paths = Paths::resolve(args.data_dir.as_deref())?;
    match args.command {
        LocalCommand::Start(start) => start::run(paths, start, api_key, output).await,
        LocalCommand::Restart(start) => start::restart(paths, start, api_key, output).await,
        LocalCommand::Stop(stop) => stop::run(&paths, stop, output).await,
        LocalCommand::Status => status::run(&paths, output).await,
        LocalCommand::Logs(logs) => logs::run(&paths, logs).await,
    }
}

/// The endpoint of a running `stigmer local` platform under the default data directory, so
/// that `stigmer run` finds a platform started with `--port` without being told.
pub fn running_endpoint() -> Option<String> {
    let home = std::env::var_os("STIGMER_HOME").map(PathBuf::from);
    let paths = Paths::resolve(home.as_deref()).ok()?;
    pidfile::running_supervisor(&paths)?;
    state::State::read(&paths.state_file())
        .ok()
        .map(|s| s.endpoint)
        .filter(|e| !e.is_empty())
}

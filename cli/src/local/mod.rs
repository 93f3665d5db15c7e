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
mod keys;
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
pub use secrets::Secret;

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
    /// A key file someone else may know: exit 2, the user must fix or remove it.
    #[error("refusing to use {}: {reason}", path.display())]
    UnsafeKeyFile { path: PathBuf, reason: String },
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
            LocalError::Config(_) | LocalError::UnsafeKeyFile { .. } => 2,
            _ => 1,
        }
    }
}

pub async fn run(args: LocalArgs, output: Output) -> Result<u8, LocalError> {
    if matches!(
        args.command,
        LocalCommand::Start(_) | LocalCommand::Restart(_)
    ) {
        // First thing: this process will hold the LLM key (typed, or in its environment) and
        // the platform's keys. Non-dumpable, its /proc/<pid>/environ and /mem and ptrace are
        // refused to same-uid processes without CAP_SYS_PTRACE, such as tool commands. A
        // detached supervisor is a new exec (dumpable again) and gets here too.
        nix::sys::prctl::set_dumpable(false).map_err(|e| {
            LocalError::StartFailed(format!(
                "cannot make the process non-dumpable (PR_SET_DUMPABLE): {e}"
            ))
        })?;
    }
    let paths = Paths::resolve(args.data_dir.as_deref())?;
    match args.command {
        LocalCommand::Start(start) => start::run(paths, start, output).await,
        LocalCommand::Restart(start) => start::restart(paths, start, output).await,
        LocalCommand::Stop(stop) => stop::run(&paths, stop, output).await,
        LocalCommand::Status => status::run(&paths, output).await,
        LocalCommand::Logs(logs) => logs::run(&paths, logs).await,
    }
}

/// The client key of the `stigmer local` platform under the default data directory
/// (`STIGMER_HOME`, else `~/.stigmer`), for client commands given no `--api-key`. Only for an
/// endpoint on this machine (loopback): the key is never sent anywhere else. `None` when
/// there is no such key (no platform was started there: the runner-alone flow with the
/// well-known key); an error when the file exists but is not private.
pub fn client_key(endpoint: &str) -> Result<Option<Secret>, LocalError> {
    if !is_loopback(endpoint) {
        return Ok(None);
    }
    let home = std::env::var_os("STIGMER_HOME").map(PathBuf::from);
    let Ok(paths) = Paths::resolve(home.as_deref()) else {
        return Ok(None);
    };
    let path = keys::Role::Client.file(&paths);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => keys::read(&path).map(Some),
    }
}

/// `http://127.0.0.1:50051`, `localhost:50051`, `[::1]:50051`: this machine.
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        for local in [
            "http://127.0.0.1:50051",
            "localhost:50051",
            "http://LOCALHOST:1/",
            "http://[::1]:50051",
            "127.0.0.2:9",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "https://api.example.com:443",
            "10.0.0.1:50051",
            "http://[2001:db8::1]:1",
            "localhost.example.com:1",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}

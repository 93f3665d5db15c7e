//! The supervisor's state file (`run/state.json`): what `status` shows and what a detaching
//! `start` waits on. It never holds a secret: only whether the LLM key is set.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LocalError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Children are being started; not healthy yet.
    Starting,
    /// Both started and healthy once (a runner may be restarting since).
    Running,
    /// Draining the runner, then stopping the control plane.
    Stopping,
    Stopped,
    /// Start failed; `message` says why.
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentState {
    pub pid: Option<u32>,
    /// Server: the gRPC listen address; runner: its health HTTP address.
    pub addr: Option<String>,
    /// `starting`, `running`, `restarting`, `gave_up`, `stopped`.
    pub state: String,
    /// Unexpected exits that were followed by a restart.
    pub restarts: u32,
    pub gave_up: bool,
    /// How the last instance ended, e.g. "exit status 1" or "killed by SIGKILL".
    pub last_exit: Option<String>,
    /// The binary, so that a later start can recognise an orphan of this one.
    pub binary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    pub supervisor_pid: u32,
    /// RFC 3339.
    pub started_at: String,
    pub endpoint: String,
    pub data_dir: String,
    pub logs_dir: String,
    pub llm: String,
    pub server: ComponentState,
    pub runner: ComponentState,
    /// How long `stop` should wait for the supervisor before forcing.
    pub stop_timeout_secs: u64,
    /// Why the start failed, or what the supervisor last gave up on.
    pub message: Option<String>,
}

impl State {
    pub fn read(path: &Path) -> Result<State, LocalError> {
        let text = std::fs::read_to_string(path).map_err(|e| LocalError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            LocalError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Written to a temporary file and renamed, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), LocalError> {
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| LocalError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let state = State {
            phase: Phase::Running,
            supervisor_pid: 10,
            started_at: "2026-01-01T00:00:00Z".into(),
            endpoint: "http://127.0.0.1:50051".into(),
            data_dir: "/d".into(),
            logs_dir: "/d/logs".into(),
            llm: "anthropic; key set (ANTHROPIC_API_KEY)".into(),
            server: ComponentState {
                pid: Some(11),
                state: "running".into(),
                ..Default::default()
            },
            runner: ComponentState {
                pid: Some(12),
                restarts: 2,
                state: "running".into(),
                ..Default::default()
            },
            stop_timeout_secs: 60,
            message: None,
        };
        state.write(&path).expect("write");
        assert_eq!(State::read(&path).expect("read"), state);
        let raw = std::fs::read_to_string(&path).expect("raw");
        assert!(raw.contains("\"phase\": \"running\""));
    }
}

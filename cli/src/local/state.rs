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

/// Where one child (the control plane or the runner) is. Serialized as the `state` string
/// that `run/state.json` has always carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildPhase {
    #[default]
    #[serde(rename = "starting")]
    Starting,
    #[serde(rename = "running")]
    Running,
    /// Exited unexpectedly; a restart is scheduled.
    #[serde(rename = "restarting")]
    Restarting,
    /// Exited too often within the restart window: no further restart.
    #[serde(rename = "gave_up")]
    GaveUp,
    #[serde(rename = "stopped")]
    Stopped,
    /// Alive, and its health check answers "not serving" (the control plane).
    #[serde(rename = "not serving")]
    NotServing,
    /// Alive, but its health check does not answer (the control plane).
    #[serde(rename = "unreachable")]
    Unreachable,
}

impl ChildPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildPhase::Starting => "starting",
            ChildPhase::Running => "running",
            ChildPhase::Restarting => "restarting",
            ChildPhase::GaveUp => "gave_up",
            ChildPhase::Stopped => "stopped",
            ChildPhase::NotServing => "not serving",
            ChildPhase::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for ChildPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One child as `state.json` records it. On disk it keeps the `gave_up` flag next to the
/// `state` string, for readers of the file (and files written before the phase was typed);
/// in memory the flag is the phase [`ChildPhase::GaveUp`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ComponentFile", into = "ComponentFile")]
pub struct ComponentState {
    pub pid: Option<u32>,
    /// Server: the gRPC listen address; runner: its health HTTP address.
    pub addr: Option<String>,
    pub phase: ChildPhase,
    /// Unexpected exits that were followed by a restart.
    pub restarts: u32,
    /// How the last instance ended, e.g. "exit status 1" or "killed by SIGKILL".
    pub last_exit: Option<String>,
    /// The binary, so that a later start can recognise an orphan of this one.
    pub binary: String,
}

impl ComponentState {
    pub fn gave_up(&self) -> bool {
        self.phase == ChildPhase::GaveUp
    }
}

/// The on-disk shape of [`ComponentState`], field for field as it has always been written.
#[derive(Serialize, Deserialize)]
struct ComponentFile {
    pid: Option<u32>,
    addr: Option<String>,
    state: ChildPhase,
    restarts: u32,
    gave_up: bool,
    last_exit: Option<String>,
    binary: String,
}

impl From<ComponentFile> for ComponentState {
    fn from(f: ComponentFile) -> Self {
        Self {
            pid: f.pid,
            addr: f.addr,
            // Earlier supervisors wrote `"state": "stopped"` with `gave_up` still set after a
            // stop: the flag is what `status` went by.
            phase: if f.gave_up {
                ChildPhase::GaveUp
            } else {
                f.state
            },
            restarts: f.restarts,
            last_exit: f.last_exit,
            binary: f.binary,
        }
    }
}

impl From<ComponentState> for ComponentFile {
    fn from(c: ComponentState) -> Self {
        Self {
            gave_up: c.gave_up(),
            pid: c.pid,
            addr: c.addr,
            state: c.phase,
            restarts: c.restarts,
            last_exit: c.last_exit,
            binary: c.binary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    pub supervisor_pid: u32,
    /// RFC 3339.
    pub started_at: String,
    pub endpoint: String,
    pub data_dir: String,
    /// Where session directories are (absent in files of older supervisors).
    #[serde(default)]
    pub sandbox_root: String,
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
            sandbox_root: "/tmp/sd/workspace".into(),
            data_dir: "/d".into(),
            logs_dir: "/d/logs".into(),
            llm: "anthropic; key set (ANTHROPIC_API_KEY)".into(),
            server: ComponentState {
                pid: Some(11),
                phase: ChildPhase::Running,
                ..Default::default()
            },
            runner: ComponentState {
                pid: Some(12),
                restarts: 2,
                phase: ChildPhase::GaveUp,
                ..Default::default()
            },
            stop_timeout_secs: 60,
            message: None,
        };
        state.write(&path).expect("write");
        assert_eq!(State::read(&path).expect("read"), state);
        let raw = std::fs::read_to_string(&path).expect("raw");
        assert!(raw.contains("\"phase\": \"running\""));
        assert!(raw.contains("\"state\": \"gave_up\""), "{raw}");
        assert!(raw.contains("\"gave_up\": true"), "{raw}");
    }

    /// A state file as supervisors wrote it before the phase was typed: every value of the
    /// old `state` string, and a runner given up on and then stopped.
    #[test]
    fn old_state_files_still_parse() {
        let file = |server: &str, runner: &str, gave_up: bool| {
            format!(
                r#"{{
  "phase": "stopped",
  "supervisor_pid": 10,
  "started_at": "2026-01-01T00:00:00Z",
  "endpoint": "http://127.0.0.1:50051",
  "data_dir": "/d",
  "logs_dir": "/d/logs",
  "llm": "anthropic; key set (ANTHROPIC_API_KEY)",
  "server": {{"pid": 11, "addr": "127.0.0.1:50051", "state": "{server}", "restarts": 0,
              "gave_up": false, "last_exit": null, "binary": "/bin/stigmer-server"}},
  "runner": {{"pid": null, "addr": "127.0.0.1:4000", "state": "{runner}", "restarts": 3,
              "gave_up": {gave_up}, "last_exit": "killed by SIGKILL", "binary": "/bin/runner"}},
  "stop_timeout_secs": 60,
  "message": null
}}"#
            )
        };
        let cases = [
            ("starting", ChildPhase::Starting),
            ("running", ChildPhase::Running),
            ("restarting", ChildPhase::Restarting),
            ("gave_up", ChildPhase::GaveUp),
            ("stopped", ChildPhase::Stopped),
            ("not serving", ChildPhase::NotServing),
            ("unreachable", ChildPhase::Unreachable),
        ];
        for (text, phase) in cases {
            let state: State = serde_json::from_str(&file(text, "running", false)).expect(text);
            assert_eq!(state.server.phase, phase, "{text}");
            assert_eq!(phase.to_string(), text);
            assert_eq!(state.server.gave_up(), phase == ChildPhase::GaveUp);
            assert_eq!(state.runner.phase, ChildPhase::Running);
            assert_eq!(state.runner.restarts, 3);
            assert_eq!(state.runner.binary, "/bin/runner");
        }
        let stopped_after_giving_up: State =
            serde_json::from_str(&file("stopped", "stopped", true)).expect("gave up");
        assert!(stopped_after_giving_up.runner.gave_up());
        assert_eq!(stopped_after_giving_up.server.phase, ChildPhase::Stopped);
        assert!(serde_json::from_str::<State>(&file("exploded", "running", false)).is_err());
    }
}

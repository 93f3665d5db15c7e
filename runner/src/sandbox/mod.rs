//! Where tool calls run. Local mode: a directory per session under the sandbox root
//! (`filesystem`). Cloud mode adds a Daytona sandbox behind the same `Sandbox` enum.
//!
//! INTERFACE (kept stable for the agent loop and tools): `SandboxRoot::new`,
//! `SandboxRoot::open_session`, `Sandbox::{run_command, read_file, write_file, list_dir}`,
//! `CommandRequest`, `CommandOutput`, `DirEntry`, `SandboxError`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A command for the sandbox to run with `sh -c` in the session directory.
pub struct CommandRequest<'a> {
    pub command: &'a str,
    pub timeout: Duration,
    /// Added to the minimal base environment (never the runner's own environment).
    pub env: &'a BTreeMap<String, String>,
    pub cancel: &'a CancellationToken,
    /// Bytes of merged stdout+stderr kept; the rest is counted and replaced by a marker.
    pub output_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// None when killed by a signal (timeout included).
    pub exit_code: Option<i32>,
    /// Merged stdout and stderr, capped, with a marker saying how much was cut.
    pub output: String,
    pub timed_out: bool,
    /// Bytes dropped by the cap.
    pub truncated_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

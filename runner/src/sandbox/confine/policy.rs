//! What one confined command may do: the plan the runner hands to the helper process.
//!
//! The runner decides once, at start, which layers the kernel grants (`probe`); every command
//! then carries the same layers in its [`CommandPlan`], and the helper applies each of them or
//! refuses to run the command. A layer the probe found working is never silently skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The confinement layers, in the order the helper applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// User, PID, mount, IPC and UTS namespaces (and network when the agent has none): a
    /// private view of the filesystem and of processes; ending the command ends them all.
    Namespaces,
    /// Landlock: file access limited to the session (read-write) and system directories
    /// (read-only), TCP refused without network, no signals or abstract sockets outside.
    Landlock,
    /// seccomp: ptrace, process memory access, mounts, bpf, keyrings, perf events, io_uring,
    /// nested user namespaces, kernel modules and (without network) IP sockets refused.
    Seccomp,
    /// Resource limits: processes, file size, CPU time, open files, no core dumps.
    Limits,
    /// A cgroup for the command: process count and memory, enforced by the kernel for root
    /// too, and a sure way to find every process it started.
    Cgroup,
}

impl Layer {
    pub const ALL: [Layer; 5] = [
        Layer::Namespaces,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::Limits,
        Layer::Cgroup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Namespaces => "namespaces",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::Limits => "limits",
            Layer::Cgroup => "cgroup",
        }
    }

    /// Whether `strict` mode requires it. A cgroup can only be had as root or with a delegated
    /// subtree, and the other layers already bound processes (per-command user namespace), so
    /// strict does not insist on it.
    pub fn required_by_strict(self) -> bool {
        !matches!(self, Layer::Cgroup)
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an agent's commands may use the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No IP networking at all (the default).
    #[default]
    None,
    /// The host's network, as the runner's user has it.
    Allow,
}

impl Network {
    /// The agent's setting; unset means none.
    pub fn of_agent(agent: &stigmer_proto::agent::v1::Agent) -> Self {
        use stigmer_proto::agent::v1::NetworkAccess;
        match agent.sandbox.as_ref().map(|s| s.network()) {
            Some(NetworkAccess::Allow) => Network::Allow,
            _ => Network::None,
        }
    }
}

/// Bounds on what one command may consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Processes (and threads) the command may run at once.
    pub max_processes: u64,
    /// Largest file the command may write, in bytes.
    pub max_file_bytes: u64,
    /// CPU seconds per process.
    pub cpu_secs: u64,
    /// Open files per process.
    pub max_open_files: u64,
    /// Size of the private `/tmp` (namespaces only), in bytes.
    pub tmp_bytes: u64,
    /// Memory of all the command's processes together, in bytes (cgroup only).
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_processes: 256,
            max_file_bytes: 1 << 30,
            cpu_secs: 600,
            max_open_files: 1024,
            tmp_bytes: 512 << 20,
            memory_bytes: 2 << 30,
        }
    }
}

/// Where the command's cgroup goes: a parent directory per controller hierarchy (one for
/// cgroup v2, one each for `pids` and `memory` on v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupParent {
    V2(PathBuf),
    V1 {
        pids: PathBuf,
        memory: Option<PathBuf>,
    },
}

/// Everything the helper needs to run one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandPlan {
    pub command: String,
    /// The session directory: the command's cwd and only writable place.
    pub session_dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub layers: Vec<Layer>,
    pub network: Network,
    /// Readable (and executable) beside the session: system directories and extra paths.
    pub read_paths: Vec<PathBuf>,
    pub limits: Limits,
    pub cgroup: Option<CgroupParent>,
    /// The command's cgroup directory name under the parent, chosen by the runner
    /// (`cmd-<runner pid>-<n>`) so that it can remove it afterwards.
    pub cgroup_name: String,
    /// The helper's own deadline, a backstop for the runner's (which kills it first).
    pub timeout_ms: u64,
    /// Print what was enforced (Landlock ABI, ...) as one line before running the command;
    /// used by the start-up probe only.
    pub report: bool,
    /// A long-lived server talking over its stdin and stdout (an MCP stdio server) instead of
    /// a one-shot command: the plan comes in [`PLAN_ENV`], the helper's stdin and stdout are
    /// the server's, its stderr goes to the status channel, there is no deadline, and the
    /// lifeline is the status channel itself (the runner closing its read end).
    #[serde(default)]
    pub stdio: bool,
}

impl CommandPlan {
    pub fn has(&self, layer: Layer) -> bool {
        self.layers.contains(&layer)
    }
}

/// The variable a stdio plan is passed in (to the helper and to its init), because their
/// stdin is the server's.
pub const PLAN_ENV: &str = "STIGMER_SANDBOX_PLAN";

/// The helper's status channel (its stderr, separate from the command's output) carries: the
/// probe's report, a setup error, and finally the command's exit code. The runner takes the
/// end of that channel as the end of the command, so the kernel's teardown of the command's
/// namespaces (which waits for an RCU grace period) happens after, off the tool call's path.
pub const EXIT_PREFIX: &str = "stigmer-sandbox-exit: ";
/// The line a probing helper prints before the command runs.
pub const REPORT_PREFIX: &str = "stigmer-sandbox-report: ";
/// The prefix of a helper's own error message; it then exits with [`SETUP_FAILED_EXIT`].
pub const ERROR_PREFIX: &str = "stigmer-sandbox: ";
/// The helper's exit code when it could not confine the command (nothing was run).
pub const SETUP_FAILED_EXIT: i32 = 125;

/// What a probing helper found out, beyond "it worked".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The Landlock ABI in force (0: none).
    pub landlock_abi: i32,
    /// Landlock enforced every requested right (false: best effort on an older kernel).
    pub landlock_full: bool,
    /// A fresh `/proc` could be mounted in the PID namespace.
    pub proc_mounted: bool,
}

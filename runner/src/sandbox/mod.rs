//! Where tool calls run. Local mode: a directory per session under the sandbox root
//! (`filesystem`). Cloud mode adds a Daytona sandbox behind the same `Sandbox` enum.
//!
//! INTERFACE (kept stable for the agent loop and tools): `SandboxRoot::new`,
//! `SandboxRoot::open`, `Sandbox::{id, describe, run_command, read_file, write_file, list_dir}`,
//! `CommandRequest`, `CommandOutput`, `DirEntry`, `SandboxError`.
//!
//! What is confined: every path the file tools touch resolves beneath the session directory
//! (cap-std), symlinks included. Commands run through `confine`: namespaces, Landlock,
//! seccomp, resource limits and a cgroup, each where the kernel grants it (README, "What the
//! sandbox guarantees"); with `STIGMER_SANDBOX=off` they run as the runner's user with only a
//! minimal environment and their own process group.

mod capped;
mod command;
#[cfg(test)]
mod command_tests;
pub mod confine;
pub mod daytona;
mod filesystem;
#[cfg(test)]
mod fs_tests;
mod paths;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use capped::{CappedBuffer, cap_text, truncation_marker};
pub use command::BASE_PATH;
pub use confine::{Confinement, Network};
pub use daytona::DaytonaSandbox;
pub use filesystem::{FsSandbox, MAX_READ_BYTES};
pub use server::{ServerProcess, ServerRequest};

/// A command for the sandbox to run with `sh -c` in the session directory.
pub struct CommandRequest<'a> {
    pub command: &'a str,
    pub timeout: Duration,
    /// Added to the minimal base environment (never the runner's own environment).
    pub env: &'a BTreeMap<String, String>,
    pub cancel: &'a CancellationToken,
    /// Bytes of merged stdout+stderr kept; the rest is counted and replaced by a marker.
    pub output_limit: usize,
    /// Whether the command may use the network (the agent's `sandbox.network`).
    pub network: Network,
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

/// Why a sandbox operation failed. The messages are written for the model as much as for
/// operators: tools pass them back verbatim.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox root '{}' is unusable: {reason}", path.display())]
    RootUnusable { path: PathBuf, reason: String },
    #[error(
        "invalid sandbox id '{id}': {reason} (allowed: 1-128 letters, digits, '.', '_', '-', \
         not starting with '.')"
    )]
    InvalidId { id: String, reason: &'static str },
    #[error("path '{path}' is outside the sandbox")]
    PathEscape { path: String },
    #[error("invalid path '{path}': {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("'{path}' does not exist")]
    NotFound { path: String },
    #[error("'{path}' is a directory, not a file")]
    IsADirectory { path: String },
    #[error("'{path}' is not a directory")]
    NotADirectory { path: String },
    #[error("'{path}' is not a regular file")]
    NotARegularFile { path: String },
    #[error("'{path}' is {size} bytes, more than the {limit}-byte limit for reading a file")]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("'{path}' has {links} hard links, some outside this session; file tools refuse it")]
    HardLinked { path: String, links: u64 },
    #[error(
        "'{path}' has {links} hard links, and the session holds more than {limit} entries to \
         look for them in; file tools refuse it"
    )]
    LinkScanTooLarge {
        path: String,
        links: u64,
        limit: usize,
    },
    #[error("{action} '{path}' failed: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the command: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the command failed: {source}")]
    Wait {
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking sandbox task failed: {source}")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("cancelled")]
    Cancelled,
    /// The command could not be confined as this runner requires, so it did not run.
    #[error("the sandbox could not confine the command, so it was not run: {reason}")]
    Confinement { reason: String },
    /// Cloud mode cannot run a process that talks over stdin and stdout.
    #[error(
        "stdio MCP servers cannot run in cloud mode: the Daytona toolbox API runs one-shot \
         commands only (no stdin to talk to a server over); use an HTTP MCP server"
    )]
    NoInteractiveProcess,
    /// Cloud mode: the Daytona API or the sandbox's toolbox failed.
    #[error(transparent)]
    Daytona(#[from] daytona::DaytonaError),
}

/// The directory under which every session gets its own directory.
#[derive(Debug)]
pub struct SandboxRoot {
    path: PathBuf,
    dir: cap_std::fs::Dir,
    confinement: std::sync::Arc<Confinement>,
}

/// Where the start-up probe runs its test commands: not a valid session id, so no session
/// ever shares it.
const PROBE_DIR: &str = ".sandbox-probe";

impl SandboxRoot {
    /// Creates `root` if missing (private to the user: 0700, like every directory it creates
    /// on the way) and checks that it is a writable directory. A root that exists already is
    /// left as its owner made it.
    pub fn new(root: &Path) -> Result<Self, SandboxError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let unusable = |reason: String| SandboxError::RootUnusable {
            path: root.to_path_buf(),
            reason,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(filesystem::PRIVATE_DIR_MODE)
            .create(root)
            .map_err(|e| unusable(format!("cannot create it: {e}")))?;
        let path = root
            .canonicalize()
            .map_err(|e| unusable(format!("cannot resolve it: {e}")))?;
        if !path.is_dir() {
            return Err(unusable("it is not a directory".into()));
        }
        nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| unusable(format!("it is not writable: {e}")))?;
        // The one use of ambient authority: everything else resolves beneath this handle.
        let dir = cap_std::fs::Dir::open_ambient_dir(&path, cap_std::ambient_authority())
            .map_err(|e| unusable(format!("cannot open it: {e}")))?;
        Ok(Self {
            path,
            dir,
            confinement: std::sync::Arc::new(Confinement::off()),
        })
    }

    /// Commands of every session opened from now on run under `confinement`.
    pub fn set_confinement(&mut self, confinement: Confinement) {
        self.confinement = std::sync::Arc::new(confinement);
    }

    pub fn confinement(&self) -> &Confinement {
        &self.confinement
    }

    /// The directory the start-up probe runs in (created, empty of anything that matters).
    pub fn probe_dir(&self) -> Result<PathBuf, SandboxError> {
        match self.dir.create_dir(PROBE_DIR) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(SandboxError::Io {
                    action: "creating the sandbox probe directory",
                    path: self.path.join(PROBE_DIR).display().to_string(),
                    source,
                });
            }
        }
        Ok(self.path.join(PROBE_DIR))
    }

    /// The canonical root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if needed) the directory of session `sandbox_id`.
    pub fn open(&self, sandbox_id: &str) -> Result<Sandbox, SandboxError> {
        validate_id(sandbox_id)?;
        FsSandbox::open(&self.dir, &self.path, sandbox_id, self.confinement.clone())
            .map(Sandbox::Filesystem)
    }
}

fn validate_id(id: &str) -> Result<(), SandboxError> {
    let invalid = |reason| SandboxError::InvalidId {
        id: id.to_owned(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > 128 {
        return Err(invalid("it is longer than 128 characters"));
    }
    if id.starts_with('.') {
        return Err(invalid("it starts with '.'"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !id.chars().all(allowed) {
        return Err(invalid("it contains a character that is not allowed"));
    }
    Ok(())
}

/// A session's sandbox. Tools talk to this, not to a concrete kind.
#[derive(Debug, Clone)]
pub enum Sandbox {
    Filesystem(FsSandbox),
    Daytona(DaytonaSandbox),
}

impl Sandbox {
    pub fn id(&self) -> &str {
        match self {
            Self::Filesystem(fs) => fs.id(),
            Self::Daytona(remote) => remote.id(),
        }
    }

    /// Where the sandbox is, for logs and for telling the model.
    pub fn describe(&self) -> String {
        match self {
            Self::Filesystem(fs) => format!("directory {}", fs.path().display()),
            Self::Daytona(remote) => remote.describe(),
        }
    }

    pub async fn run_command(
        &self,
        req: CommandRequest<'_>,
    ) -> Result<CommandOutput, SandboxError> {
        match self {
            Self::Filesystem(fs) => fs.run_command(req).await,
            Self::Daytona(remote) => remote.run_command(req).await,
        }
    }

    /// Starts a long-lived server talking over stdin and stdout (local mode only).
    pub async fn spawn_server(
        &self,
        req: ServerRequest<'_>,
    ) -> Result<ServerProcess, SandboxError> {
        match self {
            Self::Filesystem(fs) => fs.spawn_server(req).await,
            Self::Daytona(_) => Err(SandboxError::NoInteractiveProcess),
        }
    }

    /// The whole file; refused above [`MAX_READ_BYTES`].
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        match self {
            Self::Filesystem(fs) => fs.read_file(path).await,
            Self::Daytona(remote) => remote.read_file(path).await,
        }
    }

    /// Creates or replaces the file, creating missing parent directories.
    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        match self {
            Self::Filesystem(fs) => fs.write_file(path, contents).await,
            Self::Daytona(remote) => remote.write_file(path, contents).await,
        }
    }

    /// Entries sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
        match self {
            Self::Filesystem(fs) => fs.list_dir(path).await,
            Self::Daytona(remote) => remote.list_dir(path).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        for good in ["s1", "session_01.a-b", "A", &"x".repeat(128)] {
            assert!(validate_id(good).is_ok(), "{good} should be accepted");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "a b",
            "a\0",
            "é",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate_id(bad), Err(SandboxError::InvalidId { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn root_is_created_and_canonical() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = SandboxRoot::new(&tmp.path().join("a/../b")).expect("root");
        assert_eq!(
            root.path(),
            tmp.path().canonicalize().expect("canonical").join("b")
        );
        assert!(root.path().is_dir());
    }

    #[test]
    fn root_that_is_a_file_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let err = SandboxRoot::new(&file).expect_err("a file is not a root");
        assert!(matches!(err, SandboxError::RootUnusable { .. }), "{err}");
    }

    #[test]
    fn open_creates_the_session_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = SandboxRoot::new(tmp.path()).expect("root");
        let sandbox = root.open("sess-1").expect("open");
        assert_eq!(sandbox.id(), "sess-1");
        assert!(root.path().join("sess-1").is_dir());
        assert!(sandbox.describe().contains("sess-1"));
        // Opening again reuses the directory.
        root.open("sess-1").expect("reopen");
        let err = root.open("../evil").expect_err("bad id");
        assert!(
            err.to_string().contains("invalid sandbox id '../evil'"),
            "{err}"
        );
    }
}

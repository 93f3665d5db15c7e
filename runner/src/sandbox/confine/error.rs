//! Why the helper could not confine a command. Printed (with [`super::policy::ERROR_PREFIX`])
//! on the command's output, where the runner turns it into the tool's error.

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("invalid plan from the runner: {0}")]
    Plan(String),
    #[error("{action}: {source}")]
    Sys {
        action: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} '{path}': {source}")]
    Path {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("capabilities: {0}")]
    Capabilities(String),
    #[error("the started process has no id")]
    NoPid,
}

impl HelperError {
    pub fn sys(action: &'static str, source: nix::errno::Errno) -> Self {
        Self::Sys { action, source }
    }

    pub fn io(action: &'static str, source: std::io::Error) -> Self {
        Self::Io { action, source }
    }

    pub fn path(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Path {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}

/// A helper stage's exit code: the command's, or, when the stage failed, its reason on the
/// status channel (stderr) and [`super::policy::SETUP_FAILED_EXIT`].
pub fn exit_code(result: Result<i32, HelperError>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}{e}", super::policy::ERROR_PREFIX);
            super::policy::SETUP_FAILED_EXIT
        }
    }
}

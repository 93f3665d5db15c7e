//! Errors of the Daytona client. None carries the API key: request headers never enter an error
//! and error bodies are redacted before they are stored.

use std::time::Duration;

/// Where the key is configured, for messages about authentication failures.
const KEY_VARIABLE: &str = "DAYTONA_API_KEY";

#[derive(Debug, thiserror::Error)]
pub enum DaytonaError {
    /// Daytona refused the request; `message` (and `code`) come from its error JSON.
    #[error(
        "Daytona answered HTTP {status} to {operation}{code}: {message}{hint}",
        code = code_suffix(code.as_deref()),
        hint = status_hint(*status)
    )]
    Api {
        operation: &'static str,
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The sandbox does not exist (any more): deleted, expired, or never created.
    #[error("Daytona sandbox '{id}' was not found: {message}")]
    SandboxNotFound { id: String, message: String },
    /// The toolbox stopped the command at its timeout (HTTP 408) and killed its process group.
    #[error("the command did not finish within {timeout_s} s in the Daytona sandbox")]
    CommandTimedOut { timeout_s: u64 },
    /// The sandbox ended in a state it cannot leave by itself (`error`, `build_failed`, gone).
    #[error("Daytona sandbox '{id}' is in state '{state}': {reason}")]
    SandboxFailed {
        id: String,
        state: String,
        reason: String,
    },
    #[error("Daytona sandbox '{id}' did not start within {waited:?} (last state '{state}')")]
    StartTimeout {
        id: String,
        state: String,
        waited: Duration,
    },
    #[error("Daytona still failing after {attempts} attempts at {operation}; last error: {last}")]
    RetriesExhausted {
        operation: &'static str,
        attempts: u32,
        last: Box<DaytonaError>,
    },
    /// No response: connection refused, DNS, TLS, timeout, reset.
    #[error("cannot reach Daytona at {endpoint} for {operation}: {detail} (check DAYTONA_API_URL)")]
    Transport {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("the answer to {operation} is larger than {limit} bytes")]
    TooLarge {
        operation: &'static str,
        limit: usize,
    },
    #[error("unreadable Daytona answer to {operation}: {detail}")]
    Decode {
        operation: &'static str,
        detail: String,
    },
    #[error("invalid Daytona configuration: {0}")]
    Config(String),
}

impl DaytonaError {
    /// The HTTP status of an API error, also through `RetriesExhausted`.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::SandboxNotFound { .. } => Some(404),
            Self::CommandTimedOut { .. } => Some(408),
            Self::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Whether the sandbox is gone, so that a new one should be made.
    pub fn is_sandbox_gone(&self) -> bool {
        match self {
            Self::SandboxNotFound { .. } => true,
            Self::RetriesExhausted { last, .. } => last.is_sandbox_gone(),
            _ => false,
        }
    }
}

fn code_suffix(code: Option<&str>) -> String {
    code.map(|c| format!(" ({c})")).unwrap_or_default()
}

fn status_hint(status: u16) -> String {
    match status {
        401 => format!(" (check {KEY_VARIABLE})"),
        403 => format!(" (the key in {KEY_VARIABLE} lacks permission for this organization)"),
        429 => " (rate limited or over the organization's quota)".to_owned(),
        _ => String::new(),
    }
}

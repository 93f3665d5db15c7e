//! Errors of the LLM clients. None of them carries the API key: HTTP error bodies are redacted
//! before they are stored, and request headers never enter an error.

/// Where the key can be set, for messages about authentication failures.
const KEY_VARIABLES: &str = "STIGMER_LLM_API_KEY or ANTHROPIC_API_KEY";

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider refused the request with an HTTP error; `message` comes from its error JSON.
    #[error("{provider} API answered HTTP {status} ({kind}): {message}{hint}", hint = status_hint(*.status))]
    Api {
        provider: &'static str,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("{provider} API still failing after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        provider: &'static str,
        attempts: u32,
        last: Box<LlmError>,
    },
    /// The request did not get a response (connection refused, DNS, timeout, reset).
    #[error("cannot reach the LLM endpoint {endpoint}: {detail}")]
    Transport {
        endpoint: String,
        detail: String,
        /// Connect and timeout failures before any response: safe to send again.
        retryable: bool,
    },
    /// The response had started streaming, then broke: an SSE `error` event, an error chunk, a
    /// read failure, an idle timeout or an early end.
    #[error("LLM stream failed ({kind}): {message}")]
    Stream { kind: String, message: String },
    /// The provider answered something this client cannot read.
    #[error("unreadable LLM response: {0}")]
    Decode(String),
    #[error("invalid LLM configuration: {0}")]
    Config(String),
    /// The request could not be written as JSON (never expected: every part is text or JSON
    /// already); reported rather than sending something malformed.
    #[error("cannot encode the request to the model: {0}")]
    Encode(String),
}

impl LlmError {
    /// Whether sending the same request again may succeed: 408, 409, 429 and 5xx answers, and
    /// transport failures before a response. Stream failures are not: text already reached the
    /// caller, so only the caller can decide to run the turn again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => is_retryable_status(*status),
            Self::Transport { retryable, .. } => *retryable,
            Self::RetriesExhausted { .. }
            | Self::Stream { .. }
            | Self::Decode(_)
            | Self::Config(_)
            | Self::Encode(_) => false,
        }
    }

    /// The HTTP status of a provider error, also through `RetriesExhausted`.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500..=599)
}

fn status_hint(status: u16) -> String {
    match status {
        401 => format!(" (check the API key in {KEY_VARIABLES})"),
        403 => format!(" (the API key in {KEY_VARIABLES} lacks permission for this model or API)"),
        404 => " (check the model name and the base URL)".to_owned(),
        413 => " (the conversation is too large for one request)".to_owned(),
        _ => String::new(),
    }
}

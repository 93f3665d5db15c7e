//! LLM providers over their real wire formats: the Anthropic Messages API and OpenAI-compatible
//! chat completions (OpenAI, Ollama, vLLM, LM Studio). Both stream; both retry.
//!
//! INTERFACE (kept stable for the agent loop): `LlmSettings`, `LlmClient::new`,
//! `LlmClient::stream_turn`, `LlmRequest`, `ToolSpec`, `AssistantTurn`, `StopReason`, `LlmError`.

mod anthropic;
mod error;
mod http;
mod openai;
pub(crate) mod retry;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use stigmer_contract::Secret;

use crate::conversation::{Block, Message};

pub use error::LlmError;

/// Which wire format and defaults to use: the runner's contract (see `stigmer-contract`).
pub use stigmer_contract::Provider;

/// Connection settings for one provider. `base_url` is already resolved (override, provider
/// default, or OLLAMA_BASE_URL) by the config module.
#[derive(Clone)]
pub struct LlmSettings {
    pub provider: Provider,
    /// e.g. `https://api.anthropic.com`, `http://localhost:11434`, `http://127.0.0.1:9999/v1`.
    pub base_url: String,
    /// None for Ollama; never logged.
    pub api_key: Option<Secret>,
    /// Per-request timeout for connecting and for the gap between streamed chunks.
    pub request_timeout: Duration,
    /// Attempts for retryable failures (408/409/429/5xx, connection errors) before a stream starts.
    pub max_attempts: u32,
}

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the input object; shared, because every execution offers the same
    /// built-in tools and a request only borrows it.
    pub input_schema: Arc<serde_json::Value>,
}

pub struct LlmRequest<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    /// Anthropic: send the assistant turn back as is to continue.
    PauseTurn,
    Refusal,
    ContextWindowExceeded,
    Other(String),
}

/// Token counts of one model call, the same whatever the wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every prompt token the model read, cached ones included (OpenAI's `prompt_tokens`;
    /// Anthropic's `input_tokens` plus its cache reads and writes, which it counts apart).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` served from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Part of `input_tokens` written to the prompt cache (Anthropic only).
    pub cache_write_tokens: u64,
    /// Whether the answer carried usage at all; servers that do not report it leave every
    /// count at zero, which must not read as "free".
    pub reported: bool,
}

/// One complete assistant turn, assembled from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AssistantTurn {
    /// Text and tool-use blocks in the order the model produced them.
    pub content: Vec<Block>,
    pub stop_reason: StopReason,
    pub usage: Usage,
}

/// Installs rustls' ring provider as the process default, which reqwest (built without a
/// provider of its own) needs before the first client. Safe to call any number of times.
pub fn ensure_crypto_provider() {
    // Err means a provider is installed already (ours from an earlier call, or the process's
    // own choice); either way TLS works, so there is nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Anthropic,
    OpenAi,
}

/// A streaming client for one provider. Cheap to share by reference; reuses connections.
pub struct LlmClient {
    provider: Provider,
    wire: Wire,
    http: http::Http,
}

impl std::fmt::Debug for LlmClient {
    // By hand, so that the key can never end up in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("provider", &self.provider)
            .field("endpoint", &self.http.endpoint())
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    pub fn new(settings: LlmSettings) -> Result<Self, LlmError> {
        ensure_crypto_provider();
        let api_key = settings
            .api_key
            .map(|k| k.expose().to_owned())
            .filter(|k| !k.trim().is_empty());
        let (wire, endpoint, headers) = match settings.provider {
            Provider::Anthropic => {
                let key = api_key.as_deref().ok_or_else(|| {
                    LlmError::Config(
                        "the anthropic provider needs an API key: set STIGMER_LLM_API_KEY or ANTHROPIC_API_KEY"
                            .to_owned(),
                    )
                })?;
                let headers = anthropic::headers(key)?;
                (
                    Wire::Anthropic,
                    anthropic::endpoint(&settings.base_url),
                    headers,
                )
            }
            Provider::OpenAi | Provider::Ollama => {
                let headers = openai::headers(api_key.as_deref())?;
                (Wire::OpenAi, openai::endpoint(&settings.base_url), headers)
            }
        };
        check_endpoint(&settings.base_url, &endpoint)?;
        let http = http::Http::new(
            settings.provider.as_str(),
            endpoint,
            headers,
            api_key,
            settings.request_timeout,
            settings.max_attempts,
        )?;
        Ok(Self {
            provider: settings.provider,
            wire,
            http,
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The full URL requests go to, for logs and the start-up banner (it holds no secret).
    pub fn endpoint(&self) -> &str {
        self.http.endpoint()
    }

    /// Streams one assistant turn: `on_text` gets each text delta as it arrives, and the
    /// assembled turn comes back at the end. To cancel, drop the future: that closes the HTTP
    /// stream.
    pub async fn stream_turn(
        &self,
        req: &LlmRequest<'_>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<AssistantTurn, LlmError> {
        // Encoded at once and only the bytes kept (for retries): no JSON tree of the
        // request stays alive while the model answers.
        let body = match self.wire {
            Wire::Anthropic => serde_json::to_vec(&anthropic::request_body(req)),
            Wire::OpenAi => serde_json::to_vec(&openai::request_body(req)),
        }
        .map_err(|e| LlmError::Encode(e.to_string()))?;
        tracing::debug!(
            provider = self.provider.as_str(),
            endpoint = self.endpoint(),
            model = req.model,
            messages = req.messages.len(),
            tools = req.tools.len(),
            "LLM request"
        );
        let response = self.http.open_stream(body.into()).await?;
        let events = self.http.events(response);
        match self.wire {
            Wire::Anthropic => anthropic::read_turn(events, on_text).await,
            Wire::OpenAi => openai::read_turn(events, on_text).await,
        }
    }
}

/// Refuses base URLs that cannot work, before the first request rather than at it.
fn check_endpoint(base: &str, endpoint: &str) -> Result<(), LlmError> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| {
        LlmError::Config(format!("the LLM base URL {base:?} is not a valid URL: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LlmError::Config(format!(
            "the LLM base URL {base:?} must start with http:// or https://"
        )));
    }
    // The endpoint is logged and shown in the banner, so it must not hold credentials.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LlmError::Config(
            "the LLM base URL must not contain credentials; put the key in STIGMER_LLM_API_KEY"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Tool input from the accumulated JSON text. Empty means a tool without parameters;
/// unparseable input is kept as the raw string so the tool layer can tell the model what it sent.
pub(crate) fn parse_tool_input(raw: &str) -> serde_json::Value {
    if raw.trim().is_empty() {
        return serde_json::json!({});
    }
    serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
}

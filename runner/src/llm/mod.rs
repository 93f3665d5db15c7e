//! LLM providers over their real wire formats: the Anthropic Messages API and OpenAI-compatible
//! chat completions (OpenAI, Ollama, vLLM, LM Studio). Both stream; both retry.
//!
//! INTERFACE (kept stable for the agent loop): `LlmSettings`, `LlmClient::new`,
//! `LlmClient::stream_turn`, `LlmRequest`, `ToolSpec`, `AssistantTurn`, `StopReason`, `LlmError`.

use std::time::Duration;

use crate::conversation::{Block, Message};

/// Which wire format and defaults to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Anthropic,
    OpenAi,
    Ollama,
}

impl Provider {
    pub const ALLOWED: &'static str = "anthropic, openai, ollama";

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "anthropic" => Some(Self::Anthropic),
            "openai" => Some(Self::OpenAi),
            "ollama" => Some(Self::Ollama),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
            Self::Ollama => "ollama",
        }
    }
}

/// Connection settings for one provider. `base_url` is already resolved (override, provider
/// default, or OLLAMA_BASE_URL) by the config module.
#[derive(Clone)]
pub struct LlmSettings {
    pub provider: Provider,
    /// e.g. `https://api.anthropic.com`, `http://localhost:11434`, `http://127.0.0.1:9999/v1`.
    pub base_url: String,
    /// None for Ollama; never logged.
    pub api_key: Option<String>,
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
    /// JSON Schema of the input object.
    pub input_schema: serde_json::Value,
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One complete assistant turn, assembled from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AssistantTurn {
    /// Text and tool-use blocks in the order the model produced them.
    pub content: Vec<Block>,
    pub stop_reason: StopReason,
    pub usage: Usage,
}

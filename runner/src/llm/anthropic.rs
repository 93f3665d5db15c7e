//! The Anthropic Messages API: request body, headers, and the SSE event stream.

use std::collections::BTreeMap;
use std::pin::pin;

use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AssistantTurn, LlmError, LlmRequest, StopReason, Usage, parse_tool_input};
use crate::conversation::{Block, Message, Role};

const API_VERSION: &str = "2023-06-01";

/// `{base}/v1/messages`, accepting a base that already names `/v1`.
pub(crate) fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

pub(crate) fn headers(api_key: &str) -> Result<HeaderMap, LlmError> {
    let mut key = HeaderValue::from_str(api_key).map_err(|_| {
        LlmError::Config("the API key contains characters not allowed in an HTTP header".to_owned())
    })?;
    key.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", key);
    headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(headers)
}

/// The request body. It borrows the tools' schemas (shared by every execution) instead of
/// copying them into a JSON tree of its own: a thousand executions waiting for the model
/// would otherwise each hold such a copy.
#[derive(Serialize)]
pub(crate) struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<Value>,
    stream: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    system: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
}

pub(crate) fn request_body<'a>(req: &LlmRequest<'a>) -> Body<'a> {
    Body {
        model: req.model,
        max_tokens: req.max_tokens,
        messages: req.messages.iter().map(message_json).collect(),
        stream: true,
        system: req.system,
        tools: req
            .tools
            .iter()
            .map(|t| Tool {
                name: &t.name,
                description: &t.description,
                input_schema: &t.input_schema,
            })
            .collect(),
        temperature: req.temperature,
    }
}

fn message_json(m: &Message) -> Value {
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let content = m.content.iter().filter_map(block_json).collect::<Vec<_>>();
    json!({"role": role, "content": content})
}

fn block_json(b: &Block) -> Option<Value> {
    Some(match b {
        // The API refuses empty text blocks; they carry nothing anyway.
        Block::Text(t) if t.is_empty() => return None,
        Block::Text(t) => json!({"type": "text", "text": t}),
        Block::ToolUse { id, name, input } => {
            // The API requires an object; a model's unparseable input (kept as a string so the
            // tool layer could report it) is sent back as `{}` to keep the history valid, and
            // the tool result already says what went wrong.
            let input = if input.is_object() {
                input.clone()
            } else {
                json!({})
            };
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => json!({"type": "tool_result", "tool_use_id": tool_use_id,
                    "content": content, "is_error": is_error}),
    })
}

pub(crate) fn stop_reason(s: &str) -> StopReason {
    match s {
        "end_turn" => StopReason::EndTurn,
        "tool_use" => StopReason::ToolUse,
        "max_tokens" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "pause_turn" => StopReason::PauseTurn,
        "refusal" => StopReason::Refusal,
        "model_context_window_exceeded" => StopReason::ContextWindowExceeded,
        other => StopReason::Other(other.to_owned()),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: ContentDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorBody,
    },
    /// New event types must not break old clients (the API documents this).
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// `usage` of `message_start` and `message_delta`. Anthropic counts cache reads and writes
/// apart from `input_tokens`; every field is cumulative, so the last value seen is the total.
#[derive(Deserialize, Default)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

/// The raw counts as far as the stream has told them.
#[derive(Default)]
struct UsageSeen {
    reported: bool,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl UsageSeen {
    fn apply(&mut self, usage: Option<WireUsage>) {
        let Some(usage) = usage else { return };
        self.reported = true;
        let latest = |slot: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        latest(&mut self.input, usage.input_tokens);
        latest(&mut self.output, usage.output_tokens);
        latest(&mut self.cache_read, usage.cache_read_input_tokens);
        latest(&mut self.cache_write, usage.cache_creation_input_tokens);
    }

    /// Normalised: `input_tokens` holds every prompt token, as OpenAI's `prompt_tokens` does.
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_write),
            output_tokens: self.output,
            cache_read_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            reported: self.reported,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    /// Thinking and server-tool blocks: not part of our conversation model.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDelta {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

enum Partial {
    Text(String),
    Tool {
        id: String,
        name: String,
        json: String,
        input: Option<Value>,
    },
    Skipped,
}

/// The turn as far as the stream has told it.
#[derive(Default)]
pub(crate) struct TurnState {
    blocks: BTreeMap<usize, Partial>,
    stop_reason: Option<StopReason>,
    usage: UsageSeen,
    finished: bool,
}

impl TurnState {
    /// Applies one SSE event's data.
    pub(crate) fn apply(
        &mut self,
        data: &str,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), LlmError> {
        let event: StreamEvent = serde_json::from_str(data)
            .map_err(|e| LlmError::Decode(format!("Anthropic stream event {data:?}: {e}")))?;
        match event {
            StreamEvent::MessageStart { message } => self.usage.apply(message.usage),
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => self.start_block(index, content_block, on_text),
            StreamEvent::ContentBlockDelta { index, delta } => self.delta(index, delta, on_text)?,
            StreamEvent::ContentBlockStop { index } => self.stop_block(index),
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(stop_reason(&reason));
                }
                self.usage.apply(usage);
            }
            StreamEvent::MessageStop => self.finished = true,
            StreamEvent::Error { error } => {
                return Err(LlmError::Stream {
                    kind: error.kind,
                    message: error.message,
                });
            }
            StreamEvent::Ping | StreamEvent::Unknown => {}
        }
        Ok(())
    }

    fn start_block(
        &mut self,
        index: usize,
        block: StartBlock,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) {
        let partial = match block {
            StartBlock::Text { text } => {
                if !text.is_empty() {
                    on_text(&text);
                }
                Partial::Text(text)
            }
            StartBlock::ToolUse { id, name } => Partial::Tool {
                id,
                name,
                json: String::new(),
                input: None,
            },
            StartBlock::Other => Partial::Skipped,
        };
        self.blocks.insert(index, partial);
    }

    fn delta(
        &mut self,
        index: usize,
        delta: ContentDelta,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), LlmError> {
        let block = self.blocks.get_mut(&index).ok_or_else(|| {
            LlmError::Decode(format!(
                "Anthropic stream: delta for block {index} that never started"
            ))
        })?;
        match (block, delta) {
            (Partial::Text(text), ContentDelta::TextDelta { text: piece }) => {
                on_text(&piece);
                text.push_str(&piece);
            }
            (Partial::Tool { json, .. }, ContentDelta::InputJsonDelta { partial_json }) => {
                json.push_str(&partial_json)
            }
            (Partial::Skipped, _) | (_, ContentDelta::Other) => {}
            _ => {
                return Err(LlmError::Decode(format!(
                    "Anthropic stream: delta type does not match block {index}"
                )));
            }
        }
        Ok(())
    }

    fn stop_block(&mut self, index: usize) {
        if let Some(Partial::Tool { json, input, .. }) = self.blocks.get_mut(&index) {
            *input = Some(parse_tool_input(json));
        }
    }

    pub(crate) fn finish(self) -> Result<AssistantTurn, LlmError> {
        if !self.finished {
            return Err(LlmError::Stream {
                kind: "incomplete".to_owned(),
                message: "stream ended early, before message_stop; the answer is incomplete"
                    .to_owned(),
            });
        }
        let content = self
            .blocks
            .into_values()
            .filter_map(|partial| match partial {
                Partial::Text(text) if !text.is_empty() => Some(Block::Text(text)),
                Partial::Tool {
                    id,
                    name,
                    json,
                    input,
                } => Some(Block::ToolUse {
                    id,
                    name,
                    input: input.unwrap_or_else(|| parse_tool_input(&json)),
                }),
                _ => None,
            })
            .collect();
        Ok(AssistantTurn {
            content,
            stop_reason: self
                .stop_reason
                .unwrap_or_else(|| StopReason::Other("missing".to_owned())),
            usage: self.usage.usage(),
        })
    }
}

pub(crate) async fn read_turn(
    events: impl Stream<Item = Result<Event, LlmError>>,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<AssistantTurn, LlmError> {
    let mut events = pin!(events);
    let mut state = TurnState::default();
    while let Some(event) = events.next().await {
        state.apply(&event?.data, on_text)?;
        if state.finished {
            break;
        }
    }
    state.finish()
}

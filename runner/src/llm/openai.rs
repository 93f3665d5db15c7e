//! OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, LM Studio): request body, headers,
//! and the streamed `data:` chunks.

use std::collections::BTreeMap;
use std::pin::pin;

use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AssistantTurn, LlmError, LlmRequest, StopReason, Usage, parse_tool_input};
use crate::conversation::{Block, Message, Role};

/// `{base}/v1/chat/completions`, or `{base}/chat/completions` when the base names `/v1`
/// already (as Ollama's documented `http://localhost:11434/v1` does).
pub(crate) fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// Local servers (Ollama, vLLM) run without a key: no Authorization header then.
pub(crate) fn headers(api_key: Option<&str>) -> Result<HeaderMap, LlmError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(key) = api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            LlmError::Config(
                "the API key contains characters not allowed in an HTTP header".to_owned(),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// The request body. It borrows the tools' schemas (shared by every execution) instead of
/// copying them into a JSON tree of its own: a thousand executions waiting for the model
/// would otherwise each hold such a copy.
#[derive(Serialize)]
pub(crate) struct Body<'a> {
    model: &'a str,
    messages: Vec<Value>,
    max_tokens: u32,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct Tool<'a> {
    r#type: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

pub(crate) fn request_body<'a>(req: &LlmRequest<'a>) -> Body<'a> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for m in req.messages {
        push_message(&mut messages, m);
    }
    Body {
        model: req.model,
        messages,
        max_tokens: req.max_tokens,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        tools: req
            .tools
            .iter()
            .map(|t| Tool {
                r#type: "function",
                function: Function {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.input_schema,
                },
            })
            .collect(),
        temperature: req.temperature,
    }
}

fn push_message(out: &mut Vec<Value>, m: &Message) {
    match m.role {
        Role::User => push_user(out, m),
        Role::Assistant => out.push(assistant_json(m)),
    }
}

/// Tool results become `role: tool` messages; they go first because the API wants them right
/// after the assistant message that asked for them.
fn push_user(out: &mut Vec<Value>, m: &Message) {
    let mut texts = Vec::new();
    for block in &m.content {
        match block {
            Block::ToolResult {
                tool_use_id,
                content,
                ..
            } => out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content})),
            Block::Text(t) => texts.push(t.as_str()),
            // A user message never carries tool calls; nothing to send for one.
            Block::ToolUse { .. } => {}
        }
    }
    if !texts.is_empty() {
        out.push(json!({"role": "user", "content": texts.join("")}));
    }
}

fn assistant_json(m: &Message) -> Value {
    let text = m.text();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() { Value::Null } else { json!(text) },
    });
    let calls = m
        .tool_uses()
        .map(|(id, name, input)| {
            json!({"id": id, "type": "function",
                   "function": {"name": name, "arguments": arguments_text(input)}})
        })
        .collect::<Vec<_>>();
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    message
}

/// Unparseable arguments were kept as the raw string: send back exactly what the model wrote.
fn arguments_text(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn stop_reason(s: &str) -> StopReason {
    match s {
        "stop" => StopReason::EndTurn,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "length" => StopReason::MaxTokens,
        "content_filter" => StopReason::Refusal,
        other => StopReason::Other(other.to_owned()),
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// llama.cpp's server: `cache_n` is the prompt tokens it reused from its cache, the only
    /// report of them in versions without `prompt_tokens_details`.
    #[serde(default)]
    timings: Option<LlamaTimings>,
}

#[derive(Deserialize)]
struct LlamaTimings {
    #[serde(default)]
    cache_n: Option<u64>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// `usage` of the last chunk when `stream_options.include_usage` is asked for. `prompt_tokens`
/// includes the cached ones, which `prompt_tokens_details.cached_tokens` counts (OpenAI, vLLM,
/// recent llama.cpp).
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// The usage as far as the stream has told it; servers may repeat it (vLLM's continuous
/// usage stats), so the last report wins.
#[derive(Default)]
struct UsageSeen {
    usage: Option<WireUsage>,
    llama_cache_n: Option<u64>,
}

impl UsageSeen {
    fn apply(&mut self, chunk_usage: Option<WireUsage>, timings: Option<LlamaTimings>) {
        if let Some(usage) = chunk_usage {
            self.usage = Some(usage);
        }
        if let Some(n) = timings.and_then(|t| t.cache_n) {
            self.llama_cache_n = Some(n);
        }
    }

    fn usage(&self) -> Usage {
        let Some(usage) = &self.usage else {
            return Usage::default();
        };
        let cached = usage
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(self.llama_cache_n)
            .unwrap_or(0);
        Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            // Part of the prompt, never more, whatever a server sends.
            cache_read_tokens: cached.min(usage.prompt_tokens),
            cache_write_tokens: 0,
            reported: true,
        }
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// The turn as far as the stream has told it.
#[derive(Default)]
pub(crate) struct TurnState {
    text: String,
    calls: BTreeMap<usize, PartialCall>,
    finish_reason: Option<String>,
    usage: UsageSeen,
    done: bool,
}

impl TurnState {
    /// Applies one `data:` payload.
    pub(crate) fn apply(
        &mut self,
        data: &str,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), LlmError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| LlmError::Decode(format!("chat completion chunk {data:?}: {e}")))?;
        if let Some(error) = stream_error(&value) {
            return Err(error);
        }
        let chunk: Chunk = serde_json::from_value(value)
            .map_err(|e| LlmError::Decode(format!("chat completion chunk {data:?}: {e}")))?;
        self.usage.apply(chunk.usage, chunk.timings);
        // We ask for one choice; others (n > 1 by a proxy's default) are ignored.
        let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) else {
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            self.apply_delta(delta, on_text);
        }
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    fn apply_delta(&mut self, delta: Delta, on_text: &mut (dyn FnMut(&str) + Send)) {
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            on_text(&text);
            self.text.push_str(&text);
        }
        for call in delta.tool_calls.unwrap_or_default() {
            let index = call
                .index
                .unwrap_or_else(|| self.unindexed_slot(call.id.as_deref()));
            let partial = self.calls.entry(index).or_default();
            if let Some(id) = call.id.filter(|id| !id.is_empty()) {
                partial.id = id;
            }
            if let Some(function) = call.function {
                if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                    partial.name = name;
                }
                if let Some(arguments) = function.arguments {
                    partial.arguments.push_str(&arguments);
                }
            }
        }
    }

    /// Some servers (older Ollama) send whole calls without an index: a new id starts a new
    /// call, anything else continues the last one.
    fn unindexed_slot(&self, id: Option<&str>) -> usize {
        let last = self.calls.last_key_value();
        match (last, id) {
            (None, _) => 0,
            (Some((&index, call)), Some(id)) if !id.is_empty() && id != call.id => index + 1,
            (Some((&index, _)), _) => index,
        }
    }

    /// Whether the stream said all it had to say: `[DONE]`.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    pub(crate) fn finish(self) -> Result<AssistantTurn, LlmError> {
        // A server that closes after finish_reason without `[DONE]` still sent a whole answer.
        let Some(reason) = self.finish_reason else {
            return Err(LlmError::Stream {
                kind: "incomplete".to_owned(),
                message: "stream ended early, before a finish_reason; the answer is incomplete"
                    .to_owned(),
            });
        };
        let mut content = Vec::with_capacity(self.calls.len() + 1);
        if !self.text.is_empty() {
            content.push(Block::Text(self.text));
        }
        content.extend(self.calls.into_iter().map(|(index, call)| Block::ToolUse {
            // The tool result must name the call; invent a stable id when a server sent none.
            id: if call.id.is_empty() {
                format!("call_{index}")
            } else {
                call.id
            },
            name: call.name,
            input: parse_tool_input(&call.arguments),
        }));
        Ok(AssistantTurn {
            content,
            stop_reason: stop_reason(&reason),
            usage: self.usage.usage(),
        })
    }
}

/// `{"error": {...}}` (OpenAI, Ollama) or `{"object": "error", ...}` (vLLM) inside a 200 stream.
fn stream_error(value: &Value) -> Option<LlmError> {
    let error = match (&value["error"], value["object"].as_str()) {
        (Value::Null, Some("error")) => value,
        (Value::Null, _) => return None,
        (error, _) => error,
    };
    let message = error["message"]
        .as_str()
        .or_else(|| error.as_str())
        .unwrap_or("no message")
        .to_owned();
    let kind = error["type"]
        .as_str()
        .or_else(|| error["code"].as_str())
        .unwrap_or("error")
        .to_owned();
    Some(LlmError::Stream { kind, message })
}

pub(crate) async fn read_turn(
    events: impl Stream<Item = Result<Event, LlmError>>,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<AssistantTurn, LlmError> {
    let mut events = pin!(events);
    let mut state = TurnState::default();
    while let Some(event) = events.next().await {
        state.apply(&event?.data, on_text)?;
        if state.is_done() {
            break;
        }
    }
    state.finish()
}

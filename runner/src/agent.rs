//! The agent loop: call the model, run the tools it asks for in the sandbox, feed the results
//! back, until the model ends its turn, a limit is hit, or the execution is interrupted.
//! Every step is mirrored into the execution status through the reporter.

use std::collections::BTreeMap;
use std::time::Instant;

use stigmer_proto::agentexecution::v1::{
    AgentExecutionStatus, AgentMessage, MessageType, TodoItem, ToolCall, ToolCallStatus,
};
use tokio_util::sync::CancellationToken;

use crate::conversation::{Block, Message, Role};
use crate::llm::{AssistantTurn, LlmClient, LlmRequest, StopReason, ToolSpec};
use crate::metrics::{LlmLabels, Metrics, ToolLabels};
use crate::sandboxes::SessionSandbox;
use crate::status::{StatusReporter, now};
use crate::tools::{self, TodoUpdate, ToolContext, ToolEffect, ToolError, ToolLimits, ToolOutcome};

/// Model parameters after applying execution, agent and runner defaults.
#[derive(Debug, Clone)]
pub struct ModelParams {
    pub model: String,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

pub struct AgentRun<'a> {
    pub llm: &'a LlmClient,
    pub params: ModelParams,
    pub system: String,
    pub tools: Vec<ToolSpec>,
    /// Opened on the first tool call: an execution that calls no tool needs no sandbox.
    pub sandbox: &'a SessionSandbox<'a>,
    pub env: BTreeMap<String, String>,
    /// Whether the agent's commands may use the network.
    pub network: crate::sandbox::Network,
    pub limits: &'a ToolLimits,
    pub max_turns: u32,
    pub max_repeated_tool_calls: u32,
    pub cancel: &'a CancellationToken,
    pub status: &'a StatusReporter,
    pub metrics: &'a Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentOutcome {
    Completed,
    Failed(String),
    Interrupted,
}

/// Consecutive identical tool calls: a model stuck in a loop.
#[derive(Default)]
struct RepeatDetector {
    last: Option<String>,
    count: u32,
}

impl RepeatDetector {
    /// Returns how many times in a row this exact call has now been made.
    fn observe(&mut self, name: &str, input: &serde_json::Value) -> u32 {
        let key = format!("{name} {input}");
        if self.last.as_deref() == Some(key.as_str()) {
            self.count += 1;
        } else {
            self.last = Some(key);
            self.count = 1;
        }
        self.count
    }
}

impl AgentRun<'_> {
    /// Runs until done; `conversation` ends with the last complete exchange.
    pub async fn run(&self, conversation: &mut Vec<Message>) -> AgentOutcome {
        let mut repeats = RepeatDetector::default();
        for _ in 0..self.max_turns {
            let turn = match self.model_turn(conversation).await {
                Ok(turn) => turn,
                Err(outcome) => return outcome,
            };
            let message = Message {
                role: Role::Assistant,
                content: turn.content.clone(),
            };
            let has_tool_calls = message.tool_uses().next().is_some();
            conversation.push(message.clone());
            match (&turn.stop_reason, has_tool_calls) {
                (StopReason::PauseTurn, _) => continue,
                (StopReason::MaxTokens, true) => {
                    return AgentOutcome::Failed(format!(
                        "the model's answer was cut off at max_tokens ({}) in the middle of a \
                         tool call; raise the agent's max_tokens or STIGMER_LLM_MAX_TOKENS",
                        self.params.max_tokens
                    ));
                }
                (StopReason::Refusal, _) => {
                    return AgentOutcome::Failed("the model refused to continue".into());
                }
                (StopReason::ContextWindowExceeded, _) => {
                    return AgentOutcome::Failed(
                        "the conversation no longer fits the model's context window; \
                         start a new session"
                            .into(),
                    );
                }
                (_, true) => {
                    if let Err(outcome) = self.run_tools(&message, conversation, &mut repeats).await
                    {
                        return outcome;
                    }
                }
                (_, false) => return AgentOutcome::Completed,
            }
        }
        AgentOutcome::Failed(format!(
            "turn limit of {} reached before the agent finished (STIGMER_MAX_TURNS)",
            self.max_turns
        ))
    }

    async fn model_turn(&self, conversation: &[Message]) -> Result<AssistantTurn, AgentOutcome> {
        let request = LlmRequest {
            model: &self.params.model,
            system: &self.system,
            messages: conversation,
            tools: &self.tools,
            max_tokens: self.params.max_tokens,
            temperature: self.params.temperature,
        };
        let mut ai_index: Option<usize> = None;
        let status = self.status;
        let mut on_text = |delta: &str| {
            status.update(|s| append_ai_text(s, &mut ai_index, delta));
        };
        let started = Instant::now();
        let result = tokio::select! {
            r = self.llm.stream_turn(&request, &mut on_text) => r,
            _ = self.cancel.cancelled() => return Err(AgentOutcome::Interrupted),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .llm_calls
            .get_or_create(&LlmLabels {
                provider: self.llm.provider().as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        let turn = result.map_err(|e| AgentOutcome::Failed(format!("LLM call failed: {e}")))?;
        self.status
            .update(|s| record_ai_message(s, &mut ai_index, &turn));
        Ok(turn)
    }

    async fn run_tools(
        &self,
        message: &Message,
        conversation: &mut Vec<Message>,
        repeats: &mut RepeatDetector,
    ) -> Result<(), AgentOutcome> {
        let mut results = Vec::new();
        for (id, name, input) in message.tool_uses() {
            let seen = repeats.observe(name, input);
            if seen >= self.max_repeated_tool_calls {
                return Err(AgentOutcome::Failed(format!(
                    "the model made the same tool call {seen} times in a row ({name} {input}); \
                     stopping a loop that makes no progress"
                )));
            }
            results.push(self.run_tool(id, name, input).await?);
        }
        conversation.push(Message {
            role: Role::User,
            content: results,
        });
        Ok(())
    }

    async fn run_tool(
        &self,
        id: &str,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<Block, AgentOutcome> {
        self.status.update(|s| {
            let mut call = ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                args: Some(json_to_struct(input)),
                status: ToolCallStatus::ToolCallRunning as i32,
                started_at: now(),
                ..Default::default()
            };
            upsert_tool_call(s, &mut call);
        });
        let started = Instant::now();
        let result = if self.tools.iter().any(|t| t.name == name) {
            let sandbox = self.sandbox.get().await.map_err(AgentOutcome::Failed)?;
            let ctx = ToolContext {
                sandbox,
                env: &self.env,
                cancel: self.cancel,
                limits: self.limits,
                network: self.network,
            };
            tools::execute(name, input, &ctx).await
        } else {
            // The model may name a tool it was not offered; it gets an answer it can act on.
            Ok(ToolOutcome {
                output: format!(
                    "tool '{name}' is not available to this agent; available: {}",
                    self.tools
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                is_error: true,
                effect: ToolEffect::None,
            })
        };
        let outcome = match &result {
            Ok(o) if o.is_error => "error",
            Ok(_) => "ok",
            Err(_) => "interrupted",
        };
        self.metrics
            .tool_calls
            .get_or_create(&ToolLabels {
                tool: name.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(o) => o,
            Err(ToolError::Cancelled) => return Err(AgentOutcome::Interrupted),
            Err(e) => return Err(AgentOutcome::Failed(format!("tool {name} failed: {e}"))),
        };
        if self.cancel.is_cancelled() {
            return Err(AgentOutcome::Interrupted);
        }
        self.status.update(|s| {
            record_tool_result(s, id, &outcome.output, outcome.is_error, &outcome.effect)
        });
        Ok(Block::ToolResult {
            tool_use_id: id.to_string(),
            content: outcome.output,
            is_error: outcome.is_error,
        })
    }
}

fn append_ai_text(s: &mut AgentExecutionStatus, ai_index: &mut Option<usize>, delta: &str) {
    let index = *ai_index.get_or_insert_with(|| {
        s.messages.push(AgentMessage {
            r#type: MessageType::MessageAi as i32,
            timestamp: now(),
            ..Default::default()
        });
        s.messages.len() - 1
    });
    if let Some(m) = s.messages.get_mut(index) {
        m.content.push_str(delta);
    }
}

/// Makes the AI message exact (the streamed text may have been partial) and lists the tool
/// calls it asked for, each PENDING.
fn record_ai_message(
    s: &mut AgentExecutionStatus,
    ai_index: &mut Option<usize>,
    turn: &AssistantTurn,
) {
    let text: String = turn
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<ToolCall> = turn
        .content
        .iter()
        .filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some(ToolCall {
                id: id.clone(),
                name: name.clone(),
                args: Some(json_to_struct(input)),
                status: ToolCallStatus::ToolCallPending as i32,
                ..Default::default()
            }),
            _ => None,
        })
        .collect();
    if text.is_empty() && calls.is_empty() && ai_index.is_none() {
        return;
    }
    append_ai_text(s, ai_index, "");
    if let Some(m) = ai_index.and_then(|i| s.messages.get_mut(i)) {
        m.content = text;
        m.tool_calls = calls.clone();
    }
    for mut call in calls {
        upsert_tool_call(s, &mut call);
    }
}

fn upsert_tool_call(s: &mut AgentExecutionStatus, call: &mut ToolCall) {
    match s.tool_calls.iter_mut().find(|c| c.id == call.id) {
        Some(existing) => {
            existing.status = call.status;
            if !call.started_at.is_empty() {
                existing.started_at = std::mem::take(&mut call.started_at);
            }
        }
        None => s.tool_calls.push(call.clone()),
    }
}

fn record_tool_result(
    s: &mut AgentExecutionStatus,
    id: &str,
    output: &str,
    is_error: bool,
    effect: &ToolEffect,
) {
    let finished = now();
    let mut snapshot = None;
    if let Some(call) = s.tool_calls.iter_mut().find(|c| c.id == id) {
        call.status = if is_error {
            ToolCallStatus::ToolCallFailed as i32
        } else {
            ToolCallStatus::ToolCallCompleted as i32
        };
        call.result = output.to_string();
        if is_error {
            call.error = first_line(output);
        }
        call.completed_at = finished.clone();
        snapshot = Some(call.clone());
    }
    s.messages.push(AgentMessage {
        r#type: MessageType::MessageTool as i32,
        content: output.to_string(),
        timestamp: finished.clone(),
        tool_calls: snapshot.into_iter().collect(),
        ..Default::default()
    });
    if let ToolEffect::Todos(todos) = effect {
        apply_todos(s, todos, &finished);
    }
}

/// `write_todos` replaces the list; items keep their creation time across updates.
fn apply_todos(s: &mut AgentExecutionStatus, todos: &[TodoUpdate], at: &str) {
    let mut next = std::collections::HashMap::new();
    for t in todos {
        let previous = s.todos.get(&t.id);
        let unchanged =
            previous.is_some_and(|p| p.content == t.content && p.status == t.status as i32);
        next.insert(
            t.id.clone(),
            TodoItem {
                id: t.id.clone(),
                content: t.content.clone(),
                status: t.status as i32,
                created_at: previous.map_or_else(|| at.to_string(), |p| p.created_at.clone()),
                updated_at: if unchanged {
                    previous.map_or_else(|| at.to_string(), |p| p.updated_at.clone())
                } else {
                    at.to_string()
                },
            },
        );
    }
    s.todos = next;
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

/// Tool arguments as a protobuf Struct; a non-object input is wrapped as `{"input": ...}`.
pub fn json_to_struct(value: &serde_json::Value) -> prost_types::Struct {
    match value {
        serde_json::Value::Object(map) => prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        other => prost_types::Struct {
            fields: [("input".to_string(), json_to_value(other))].into(),
        },
    }
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Drops a trailing assistant message whose tool calls never got results (an interrupted
/// turn), so the stored history is one the providers accept on the next execution.
pub fn trim_unanswered(conversation: &mut Vec<Message>) {
    if let Some(last) = conversation.last()
        && last.role == Role::Assistant
        && last.tool_uses().next().is_some()
    {
        conversation.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stigmer_proto::agentexecution::v1::TodoStatus;

    #[test]
    fn repeat_detector_counts_consecutive_identical_calls_only() {
        let mut d = RepeatDetector::default();
        let a = serde_json::json!({"path": "a"});
        let b = serde_json::json!({"path": "b"});
        assert_eq!(d.observe("read_file", &a), 1);
        assert_eq!(d.observe("read_file", &a), 2);
        assert_eq!(d.observe("read_file", &b), 1);
        assert_eq!(d.observe("read_file", &a), 1);
        assert_eq!(d.observe("list_directory", &a), 1);
    }

    #[test]
    fn streamed_text_is_appended_to_one_ai_message() {
        let mut s = AgentExecutionStatus::default();
        let mut idx = None;
        append_ai_text(&mut s, &mut idx, "Hel");
        append_ai_text(&mut s, &mut idx, "lo");
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.messages[0].content, "Hello");
        assert_eq!(s.messages[0].r#type, MessageType::MessageAi as i32);
    }

    #[test]
    fn tool_call_moves_from_pending_to_completed_with_result() {
        let mut s = AgentExecutionStatus::default();
        let mut idx = None;
        let turn = AssistantTurn {
            content: vec![
                Block::Text("writing".into()),
                Block::ToolUse {
                    id: "t1".into(),
                    name: "write_file".into(),
                    input: serde_json::json!({"path": "a", "content": "x"}),
                },
            ],
            stop_reason: StopReason::ToolUse,
            usage: Default::default(),
        };
        record_ai_message(&mut s, &mut idx, &turn);
        assert_eq!(
            s.tool_calls[0].status,
            ToolCallStatus::ToolCallPending as i32
        );
        assert_eq!(s.messages[0].tool_calls.len(), 1);
        let mut running = ToolCall {
            id: "t1".into(),
            status: ToolCallStatus::ToolCallRunning as i32,
            started_at: "t".into(),
            ..Default::default()
        };
        upsert_tool_call(&mut s, &mut running);
        assert_eq!(s.tool_calls.len(), 1);
        assert_eq!(
            s.tool_calls[0].status,
            ToolCallStatus::ToolCallRunning as i32
        );
        record_tool_result(&mut s, "t1", "wrote 1 bytes", false, &ToolEffect::None);
        let call = &s.tool_calls[0];
        assert_eq!(call.status, ToolCallStatus::ToolCallCompleted as i32);
        assert_eq!(call.result, "wrote 1 bytes");
        assert!(!call.completed_at.is_empty());
        assert_eq!(s.messages[1].r#type, MessageType::MessageTool as i32);
        record_tool_result(&mut s, "t1", "boom\nmore", true, &ToolEffect::None);
        assert_eq!(
            s.tool_calls[0].status,
            ToolCallStatus::ToolCallFailed as i32
        );
        assert_eq!(s.tool_calls[0].error, "boom");
    }

    #[test]
    fn todos_replace_the_list_and_keep_creation_time() {
        let mut s = AgentExecutionStatus::default();
        let first = vec![TodoUpdate {
            id: "todo-1".into(),
            content: "plan".into(),
            status: TodoStatus::TodoPending,
        }];
        apply_todos(&mut s, &first, "t1");
        let second = vec![
            TodoUpdate {
                id: "todo-1".into(),
                content: "plan".into(),
                status: TodoStatus::TodoCompleted,
            },
            TodoUpdate {
                id: "todo-2".into(),
                content: "build".into(),
                status: TodoStatus::TodoInProgress,
            },
        ];
        apply_todos(&mut s, &second, "t2");
        let t1 = &s.todos["todo-1"];
        assert_eq!(t1.created_at, "t1");
        assert_eq!(t1.updated_at, "t2");
        assert_eq!(t1.status, TodoStatus::TodoCompleted as i32);
        assert_eq!(s.todos["todo-2"].created_at, "t2");
    }

    #[test]
    fn trailing_unanswered_tool_call_is_trimmed() {
        let mut c = vec![
            Message::user_text("hi"),
            Message {
                role: Role::Assistant,
                content: vec![Block::ToolUse {
                    id: "t".into(),
                    name: "x".into(),
                    input: serde_json::json!({}),
                }],
            },
        ];
        trim_unanswered(&mut c);
        assert_eq!(c.len(), 1);
        trim_unanswered(&mut c);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn json_becomes_struct() {
        let s = json_to_struct(&serde_json::json!({"a": [1, "x", null], "b": {"c": true}}));
        assert_eq!(s.fields.len(), 2);
        let wrapped = json_to_struct(&serde_json::json!("raw"));
        assert!(wrapped.fields.contains_key("input"));
    }
}

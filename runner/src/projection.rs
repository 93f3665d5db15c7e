//! The status projection: the agent loop's events ([`Event`]) written onto the execution's
//! status proto (messages, tool calls, todos), through the status reporter.

use std::sync::{Mutex, PoisonError};

use stigmer_proto::agentexecution::v1::{
    AgentExecutionStatus, AgentMessage, MessageType, ModelUsage, TodoItem, TokenUsage, ToolCall,
    ToolCallStatus,
};

use crate::agent::{Event, Events};
use crate::conversation::Block;
use crate::live::ExecutionText;
use crate::llm::{AssistantTurn, Usage};
use crate::status::{StatusReporter, now};
use crate::tools::{TodoUpdate, ToolEffect};

/// Mirrors the loop into the status reporter.
pub struct StatusProjection<'a> {
    status: &'a StatusReporter,
    /// The current turn's AI message in the status, once it has one.
    ai_index: Mutex<Option<usize>>,
    /// Where streamed text also goes at once, for live subscribers.
    live: Option<ExecutionText>,
}

impl<'a> StatusProjection<'a> {
    pub fn new(status: &'a StatusReporter) -> Self {
        Self {
            status,
            ai_index: Mutex::new(None),
            live: None,
        }
    }

    pub fn with_live_text(mut self, live: ExecutionText) -> Self {
        self.live = Some(live);
        self
    }
}

impl Events for StatusProjection<'_> {
    fn record(&self, event: Event<'_>) {
        let mut ai_index = self.ai_index.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::TurnStarted => *ai_index = None,
            Event::TextDelta(delta) => self.status.update(|s| {
                let (index, offset) = append_ai_text(s, &mut ai_index, delta);
                if let Some(live) = &self.live {
                    live.appended(index, offset, delta);
                }
            }),
            Event::Turn(turn) => self
                .status
                .update(|s| record_ai_message(s, &mut ai_index, turn)),
            Event::ToolStarted { id, name, input } => self.status.update(|s| {
                let mut call = ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    args: Some(json_to_struct(input)),
                    status: ToolCallStatus::ToolCallRunning as i32,
                    started_at: now(),
                    ..Default::default()
                };
                upsert_tool_call(s, &mut call);
            }),
            Event::ToolFinished { id, outcome } => self.status.update(|s| {
                record_tool_result(s, id, &outcome.output, outcome.is_error, &outcome.effect)
            }),
            Event::Usage {
                provider,
                model,
                usage,
            } => self.status.update(|s| add_usage(s, provider, model, usage)),
        }
    }
}

/// Appends to the turn's AI message (created on the first text); returns the message's index
/// and the byte offset the text landed at.
fn append_ai_text(
    s: &mut AgentExecutionStatus,
    ai_index: &mut Option<usize>,
    delta: &str,
) -> (usize, usize) {
    let index = *ai_index.get_or_insert_with(|| {
        s.messages.push(AgentMessage {
            r#type: MessageType::MessageAi as i32,
            timestamp: now(),
            ..Default::default()
        });
        s.messages.len() - 1
    });
    let mut offset = 0;
    if let Some(m) = s.messages.get_mut(index) {
        offset = m.content.len();
        m.content.push_str(delta);
    }
    (index, offset)
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
    sync_message_copies(s, Some(&call.id));
}

/// The AI message that asked for a tool call holds a copy of it; the copy follows the
/// top-level call (status, times, result), so that readers of either see the same thing.
/// `None` syncs every call (at the end of an execution).
pub fn sync_message_copies(s: &mut AgentExecutionStatus, id: Option<&str>) {
    let AgentExecutionStatus {
        messages,
        tool_calls,
        ..
    } = s;
    for message in messages
        .iter_mut()
        .filter(|m| m.r#type == MessageType::MessageAi as i32)
    {
        for copy in &mut message.tool_calls {
            if id.is_some_and(|id| id != copy.id) {
                continue;
            }
            if let Some(call) = tool_calls.iter().find(|c| c.id == copy.id) {
                copy.clone_from(call);
            }
        }
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
    sync_message_copies(s, Some(id));
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

/// Adds one model call's tokens to the execution's totals and to its model's.
fn add_usage(s: &mut AgentExecutionStatus, provider: &str, model: &str, usage: &Usage) {
    add_to(s.usage.get_or_insert_with(TokenUsage::default), usage);
    let index = match s
        .usage_by_model
        .iter()
        .position(|m| m.provider == provider && m.model == model)
    {
        Some(i) => i,
        None => {
            s.usage_by_model.push(ModelUsage {
                provider: provider.to_string(),
                model: model.to_string(),
                usage: None,
            });
            s.usage_by_model.len() - 1
        }
    };
    if let Some(entry) = s.usage_by_model.get_mut(index) {
        add_to(entry.usage.get_or_insert_with(TokenUsage::default), usage);
    }
}

fn add_to(total: &mut TokenUsage, usage: &Usage) {
    total.model_calls = total.model_calls.saturating_add(1);
    if !usage.reported {
        total.calls_without_usage = total.calls_without_usage.saturating_add(1);
        return;
    }
    total.input_tokens = total.input_tokens.saturating_add(usage.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(usage.output_tokens);
    total.cache_read_tokens = total
        .cache_read_tokens
        .saturating_add(usage.cache_read_tokens);
    total.cache_write_tokens = total
        .cache_write_tokens
        .saturating_add(usage.cache_write_tokens);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::StopReason;
    use stigmer_proto::agentexecution::v1::TodoStatus;

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
        assert_eq!(
            s.messages[0].tool_calls[0], s.tool_calls[0],
            "copy follows RUNNING"
        );
        record_tool_result(&mut s, "t1", "wrote 1 bytes", false, &ToolEffect::None);
        let call = &s.tool_calls[0];
        assert_eq!(call.status, ToolCallStatus::ToolCallCompleted as i32);
        assert_eq!(call.result, "wrote 1 bytes");
        assert!(!call.completed_at.is_empty());
        // The AI message's copy is the top-level call, result and times included.
        assert_eq!(&s.messages[0].tool_calls[0], call);
        assert_eq!(s.messages[1].r#type, MessageType::MessageTool as i32);
        record_tool_result(&mut s, "t1", "boom\nmore", true, &ToolEffect::None);
        assert_eq!(
            s.tool_calls[0].status,
            ToolCallStatus::ToolCallFailed as i32
        );
        assert_eq!(s.tool_calls[0].error, "boom");
    }

    #[test]
    fn usage_is_summed_in_total_and_per_model() {
        let mut s = AgentExecutionStatus::default();
        let call = |input, output, cache_read, cache_write| Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            reported: true,
        };
        add_usage(&mut s, "anthropic", "a", &call(100, 10, 80, 5));
        add_usage(&mut s, "anthropic", "a", &call(200, 20, 150, 0));
        add_usage(&mut s, "anthropic", "b", &call(1, 2, 0, 0));
        add_usage(&mut s, "anthropic", "b", &Usage::default());
        let total = s.usage.expect("usage");
        assert_eq!(
            (total.input_tokens, total.output_tokens),
            (301, 32),
            "{total:?}"
        );
        assert_eq!(
            (total.cache_read_tokens, total.cache_write_tokens),
            (230, 5)
        );
        assert_eq!((total.model_calls, total.calls_without_usage), (4, 1));
        assert_eq!(s.usage_by_model.len(), 2);
        let a = s.usage_by_model[0].usage.expect("a");
        assert_eq!(
            (s.usage_by_model[0].model.as_str(), a.input_tokens),
            ("a", 300)
        );
        let b = s.usage_by_model[1].usage.expect("b");
        assert_eq!(
            (b.model_calls, b.calls_without_usage, b.output_tokens),
            (2, 1, 2)
        );
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
    fn json_becomes_struct() {
        let s = json_to_struct(&serde_json::json!({"a": [1, "x", null], "b": {"c": true}}));
        assert_eq!(s.fields.len(), 2);
        let wrapped = json_to_struct(&serde_json::json!("raw"));
        assert!(wrapped.fields.contains_key("input"));
    }
}

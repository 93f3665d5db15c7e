//! Turns successive (cumulative) execution states into what a person watching should see:
//! streamed AI text, tool calls with arguments and short results, todo changes, and the final
//! phase. Pure: it only remembers what it already printed. What it returns is safe for a
//! terminal (see [`crate::terminal`]): the model and its tools are not trusted to send
//! escape sequences to the user's screen.
//!
//! Live text deltas (`SubscribeLive`) print ahead of the states: each names its message and
//! byte offset, so text already printed is skipped, text past a hole waits for the next state
//! (which holds all of it), and text of a later message waits until the states before it
//! were shown (so tool results stay in order).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::terminal;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionStatus, ExecutionPhase, MessageType, TextDelta, TodoStatus,
    TokenUsage, ToolCall, ToolCallStatus,
};

const RESULT_PREVIEW: usize = 120;

/// Bytes of live text kept for messages the states have not reached yet; beyond it the text
/// comes from the states alone.
const AHEAD_LIMIT: usize = 1 << 20;

#[derive(Default)]
pub struct Renderer {
    /// Index of the first message not completely printed.
    message: usize,
    /// Bytes of that message already printed.
    offset: usize,
    /// Live text of later messages, waiting for the states before it.
    ahead: Vec<TextDelta>,
    tool_calls: HashMap<String, i32>,
    todos: Vec<(String, String, i32)>,
    finished: bool,
}

impl Renderer {
    /// The text to print for this state, given everything printed before.
    pub fn render(&mut self, e: &AgentExecution) -> String {
        let mut out = String::new();
        let Some(status) = e.status.as_ref() else {
            return out;
        };
        self.messages(&mut out, status);
        for call in &status.tool_calls {
            self.tool_call(&mut out, call);
        }
        self.todos(&mut out, status);
        if status.phase().is_terminal() && !self.finished {
            self.finished = true;
            self.ahead.clear();
            self.end_line(&mut out);
            let _ = writeln!(out, "{}", final_line(status.phase(), &status.error));
            out.push_str(&usage_lines(status));
        }
        let waiting = std::mem::take(&mut self.ahead);
        for delta in waiting {
            out.push_str(&self.new_text(&delta));
        }
        terminal::safe(&out).into_owned()
    }

    /// The text to print for a live delta, given everything printed before.
    pub fn text(&mut self, delta: &TextDelta) -> String {
        terminal::safe(&self.new_text(delta)).into_owned()
    }

    /// The part of `delta` not printed yet, as the model sent it.
    fn new_text(&mut self, delta: &TextDelta) -> String {
        let index = usize::try_from(delta.message_index).unwrap_or(usize::MAX);
        if self.finished || index < self.message {
            return String::new();
        }
        if index > self.message {
            let held: usize = self.ahead.iter().map(|d| d.text.len()).sum();
            if held + delta.text.len() <= AHEAD_LIMIT {
                self.ahead.push(delta.clone());
            }
            return String::new();
        }
        let offset = usize::try_from(delta.offset).unwrap_or(usize::MAX);
        let end = offset.saturating_add(delta.text.len());
        // A hole before it (the next state fills it), or nothing new.
        if offset > self.offset || end <= self.offset {
            return String::new();
        }
        let Some(new) = delta.text.get(self.offset - offset..) else {
            return String::new();
        };
        self.offset = end;
        new.to_string()
    }

    fn messages(
        &mut self,
        out: &mut String,
        s: &stigmer_proto::agentexecution::v1::AgentExecutionStatus,
    ) {
        while let Some(m) = s.messages.get(self.message) {
            let is_last = self.message + 1 == s.messages.len();
            match m.r#type() {
                MessageType::MessageAi => {
                    let text = unprinted(&m.content, self.offset);
                    out.push_str(text);
                    self.offset += text.len();
                    if is_last && !s.phase().is_terminal() {
                        return;
                    }
                    self.end_line(out);
                }
                MessageType::MessageHuman => {
                    let _ = writeln!(out, "> {}", m.content);
                }
                // The final line carries the error of a terminal state.
                MessageType::MessageSystem if !s.phase().is_terminal() => {
                    let _ = writeln!(out, "! {}", m.content);
                }
                _ => {}
            }
            self.message += 1;
            self.offset = 0;
        }
    }

    fn end_line(&mut self, out: &mut String) {
        if self.offset > 0 {
            out.push('\n');
            self.offset = 0;
        }
    }

    fn tool_call(&mut self, out: &mut String, call: &ToolCall) {
        let previous = self.tool_calls.insert(call.id.clone(), call.status);
        if previous == Some(call.status) {
            return;
        }
        let announced = matches!(previous, Some(p) if p == ToolCallStatus::ToolCallRunning as i32);
        match call.status() {
            ToolCallStatus::ToolCallRunning => {
                self.end_line(out);
                let _ = writeln!(out, "  -> {}({})", call.name, args_preview(call));
            }
            ToolCallStatus::ToolCallCompleted | ToolCallStatus::ToolCallFailed => {
                self.end_line(out);
                if !announced {
                    let _ = writeln!(out, "  -> {}({})", call.name, args_preview(call));
                }
                let (mark, text) = if call.status() == ToolCallStatus::ToolCallFailed {
                    (
                        "x",
                        if call.error.is_empty() {
                            &call.result
                        } else {
                            &call.error
                        },
                    )
                } else {
                    ("ok", &call.result)
                };
                let _ = writeln!(out, "     {mark}: {}", preview(text));
            }
            _ => {}
        }
    }

    fn todos(
        &mut self,
        out: &mut String,
        s: &stigmer_proto::agentexecution::v1::AgentExecutionStatus,
    ) {
        let mut todos: Vec<_> = s
            .todos
            .values()
            .map(|t| (t.id.clone(), t.content.clone(), t.status))
            .collect();
        todos.sort();
        if todos == self.todos {
            return;
        }
        self.end_line(out);
        let _ = writeln!(out, "  todos:");
        for (_, content, status) in &todos {
            let mark = match TodoStatus::try_from(*status) {
                Ok(TodoStatus::TodoCompleted) => "[x]",
                Ok(TodoStatus::TodoInProgress) => "[~]",
                Ok(TodoStatus::TodoCancelled) => "[-]",
                _ => "[ ]",
            };
            let _ = writeln!(out, "    {mark} {content}");
        }
        self.todos = todos;
    }
}

/// `content` from byte `offset` on (from the next character when the offset falls inside one:
/// the final text may differ from what streamed).
fn unprinted(content: &str, offset: usize) -> &str {
    (offset..=content.len())
        .find_map(|at| content.get(at..))
        .unwrap_or_default()
}

fn final_line(phase: ExecutionPhase, error: &str) -> String {
    match phase {
        ExecutionPhase::ExecutionCompleted => "== COMPLETED".to_string(),
        ExecutionPhase::ExecutionFailed => format!("== FAILED: {error}"),
        ExecutionPhase::ExecutionCancelled => format!("== CANCELLED: {error}"),
        other => format!("== {}", other.as_str_name()),
    }
}

/// The end summary's token lines: the total, then each model when there were several.
fn usage_lines(s: &AgentExecutionStatus) -> String {
    let Some(total) = &s.usage else {
        return String::new();
    };
    let mut out = format!("   tokens: {}\n", usage_text(total));
    if s.usage_by_model.len() > 1 {
        for m in &s.usage_by_model {
            let usage = m.usage.unwrap_or_default();
            let _ = writeln!(
                out,
                "     {} ({}): {}",
                m.model,
                m.provider,
                usage_text(&usage)
            );
        }
    }
    out
}

/// "1320 in (1000 cached, 300 written to cache), 42 out; 2 model calls".
fn usage_text(u: &TokenUsage) -> String {
    let mut cache = Vec::new();
    if u.cache_read_tokens > 0 {
        cache.push(format!("{} cached", u.cache_read_tokens));
    }
    if u.cache_write_tokens > 0 {
        cache.push(format!("{} written to cache", u.cache_write_tokens));
    }
    let cache = if cache.is_empty() {
        String::new()
    } else {
        format!(" ({})", cache.join(", "))
    };
    let calls = match u.model_calls {
        1 => "1 model call".to_string(),
        n => format!("{n} model calls"),
    };
    let unreported = match u.calls_without_usage {
        0 => String::new(),
        n => format!(", {n} without usage reported (not counted)"),
    };
    format!(
        "{} in{cache}, {} out; {calls}{unreported}",
        u.input_tokens, u.output_tokens
    )
}

fn args_preview(call: &ToolCall) -> String {
    let json = call
        .args
        .as_ref()
        .map(crate::json::struct_to_json)
        .unwrap_or_default();
    preview(&json.to_string())
}

/// First line, at most RESULT_PREVIEW characters.
fn preview(text: &str) -> String {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let mut short: String = first.chars().take(RESULT_PREVIEW).collect();
    let more_lines = text.lines().filter(|l| !l.trim().is_empty()).count() > 1;
    if first.chars().count() > RESULT_PREVIEW || more_lines {
        short.push_str(" ...");
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use stigmer_proto::agentexecution::v1::{AgentExecutionStatus, AgentMessage};

    fn state(
        phase: ExecutionPhase,
        messages: Vec<(MessageType, &str)>,
        calls: Vec<ToolCall>,
    ) -> AgentExecution {
        AgentExecution {
            status: Some(AgentExecutionStatus {
                phase: phase as i32,
                messages: messages
                    .into_iter()
                    .map(|(t, c)| AgentMessage {
                        r#type: t as i32,
                        content: c.into(),
                        ..Default::default()
                    })
                    .collect(),
                tool_calls: calls,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_end_summary_shows_the_tokens() {
        use stigmer_proto::agentexecution::v1::ModelUsage;
        let mut r = Renderer::default();
        let mut done = state(ExecutionPhase::ExecutionCompleted, vec![], vec![]);
        let usage = |input, output, cache_read, calls| TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            model_calls: calls,
            ..Default::default()
        };
        if let Some(s) = done.status.as_mut() {
            s.usage = Some(TokenUsage {
                cache_write_tokens: 7,
                calls_without_usage: 1,
                ..usage(1320, 42, 1000, 3)
            });
            s.usage_by_model = vec![
                ModelUsage {
                    provider: "anthropic".into(),
                    model: "big".into(),
                    usage: Some(usage(1300, 40, 1000, 2)),
                },
                ModelUsage {
                    provider: "anthropic".into(),
                    model: "small".into(),
                    usage: Some(usage(20, 2, 0, 1)),
                },
            ];
        }
        assert_eq!(
            r.render(&done),
            "== COMPLETED\n   tokens: 1320 in (1000 cached, 7 written to cache), 42 out; \
             3 model calls, 1 without usage reported (not counted)\n     \
             big (anthropic): 1300 in (1000 cached), 40 out; 2 model calls\n     \
             small (anthropic): 20 in, 2 out; 1 model call\n"
        );
    }

    #[test]
    fn streamed_text_is_printed_once_as_it_grows() {
        let mut r = Renderer::default();
        let p = ExecutionPhase::ExecutionInProgress;
        let a = r.render(&state(
            p,
            vec![
                (MessageType::MessageHuman, "hi"),
                (MessageType::MessageAi, "Hel"),
            ],
            vec![],
        ));
        assert_eq!(a, "> hi\nHel");
        let b = r.render(&state(
            p,
            vec![
                (MessageType::MessageHuman, "hi"),
                (MessageType::MessageAi, "Hello"),
            ],
            vec![],
        ));
        assert_eq!(b, "lo");
        let c = r.render(&state(
            ExecutionPhase::ExecutionCompleted,
            vec![
                (MessageType::MessageHuman, "hi"),
                (MessageType::MessageAi, "Hello"),
            ],
            vec![],
        ));
        assert_eq!(c, "\n== COMPLETED\n");
        assert_eq!(
            r.render(&state(ExecutionPhase::ExecutionCompleted, vec![], vec![])),
            ""
        );
    }

    fn delta(index: u32, offset: u64, text: &str) -> TextDelta {
        TextDelta {
            execution_id: "e".into(),
            message_index: index,
            offset,
            text: text.into(),
        }
    }

    #[test]
    fn live_text_prints_once_in_order_with_the_states() {
        let mut r = Renderer::default();
        let p = ExecutionPhase::ExecutionInProgress;
        assert_eq!(
            r.render(&state(p, vec![(MessageType::MessageHuman, "hi")], vec![])),
            "> hi\n"
        );
        assert_eq!(r.text(&delta(1, 0, "Héllo")), "Héllo");
        assert_eq!(
            r.text(&delta(1, 3, "llo, w")),
            ", w",
            "overlap printed once"
        );
        assert_eq!(
            r.text(&delta(1, 30, "later")),
            "",
            "text after a hole waits"
        );
        assert_eq!(r.text(&delta(3, 0, "Next")), "", "a later message waits");
        let s = state(
            p,
            vec![
                (MessageType::MessageHuman, "hi"),
                (MessageType::MessageAi, "Héllo, world"),
                (MessageType::MessageTool, "result"),
            ],
            vec![],
        );
        // The state fills the hole, ends the message, then the waiting text follows.
        assert_eq!(r.render(&s), "orld\nNext");
        assert_eq!(r.text(&delta(3, 4, " turn")), " turn");
        let done = state(
            ExecutionPhase::ExecutionCompleted,
            vec![
                (MessageType::MessageHuman, "hi"),
                (MessageType::MessageAi, "Héllo, world"),
                (MessageType::MessageTool, "result"),
                (MessageType::MessageAi, "Next turn."),
            ],
            vec![],
        );
        assert_eq!(r.render(&done), ".\n== COMPLETED\n");
        assert_eq!(r.text(&delta(3, 10, "late")), "");
    }

    #[test]
    fn tool_calls_show_arguments_then_a_short_result() {
        let mut r = Renderer::default();
        let mut call = ToolCall {
            id: "t1".into(),
            name: "read_file".into(),
            args: Some(prost_types::Struct {
                fields: [(
                    "path".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("a.txt".into())),
                    },
                )]
                .into(),
            }),
            status: ToolCallStatus::ToolCallRunning as i32,
            ..Default::default()
        };
        let p = ExecutionPhase::ExecutionInProgress;
        let a = r.render(&state(p, vec![], vec![call.clone()]));
        assert_eq!(a, "  -> read_file({\"path\":\"a.txt\"})\n");
        call.status = ToolCallStatus::ToolCallCompleted as i32;
        call.result = "line one\nline two".into();
        let b = r.render(&state(p, vec![], vec![call.clone()]));
        assert_eq!(b, "     ok: line one ...\n");
        assert_eq!(r.render(&state(p, vec![], vec![call])), "");
    }

    #[test]
    fn failure_shows_the_error() {
        let mut r = Renderer::default();
        let mut s = state(
            ExecutionPhase::ExecutionFailed,
            vec![(MessageType::MessageSystem, "boom")],
            vec![],
        );
        if let Some(st) = s.status.as_mut() {
            st.error = "boom".into();
        }
        assert_eq!(r.render(&s), "== FAILED: boom\n");
    }

    #[test]
    fn a_hostile_model_cannot_send_escape_sequences_to_the_terminal() {
        let mut r = Renderer::default();
        let p = ExecutionPhase::ExecutionInProgress;
        // Live text: clear the screen, then a window-title sequence split across two deltas.
        assert_eq!(
            r.text(&delta(0, 0, "hi\x1b[2J\x1b]0;")),
            "hi\\x1b[2J\\x1b]0;"
        );
        assert_eq!(r.text(&delta(0, 10, "t\x07\r")), "t\\x07\\x0d");
        // The cumulative state carries the same text plus more; only the rest is printed.
        let ai = "hi\x1b[2J\x1b]0;t\x07\r\u{202e}!";
        let out = r.render(&state(p, vec![(MessageType::MessageAi, ai)], vec![]));
        assert_eq!(out, "\\u{202e}!");
        // A tool result (a crafted file the model had `cat`) is shown escaped too.
        let call = ToolCall {
            id: "t1".into(),
            name: "run_command".into(),
            status: ToolCallStatus::ToolCallCompleted as i32,
            result: "\x1b[8mhidden\x1b[0m".into(),
            ..Default::default()
        };
        let out = r.render(&state(p, vec![(MessageType::MessageAi, ai)], vec![call]));
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(out.contains("\\x1b[8mhidden\\x1b[0m"), "{out:?}");
    }
}

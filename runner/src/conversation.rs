//! The provider-neutral conversation the agent loop keeps, and its mapping to the stored
//! session history (`ConversationMessage`). Providers translate it to their wire formats.

use stigmer_proto::agentexecution::v1::{
    ContentBlock, ConversationMessage, content_block, conversation_message,
};

/// Who said a message. Tool results travel in user messages, as the Anthropic API requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn user_text(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![Block::Text(text.into())],
        }
    }

    /// The tool calls this (assistant) message asks for, in order.
    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &serde_json::Value)> {
        self.content.iter().filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }

    /// All text blocks joined.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }
}

/// Rewrites earlier tool calls and results as text, for a request that offers no tools: the
/// Anthropic API refuses tool blocks in a request without tool definitions, which a session
/// would otherwise hit when its agent is re-applied with `tools: []`.
pub fn tool_blocks_as_text(messages: &mut [Message]) {
    for block in messages.iter_mut().flat_map(|m| m.content.iter_mut()) {
        let text = match block {
            Block::Text(_) => continue,
            Block::ToolUse { name, input, .. } => {
                format!("[called the tool {name} with {input}]\n")
            }
            Block::ToolResult {
                content, is_error, ..
            } => {
                let error = if *is_error { " (an error)" } else { "" };
                format!("[tool result{error}: {content}]\n")
            }
        };
        *block = Block::Text(text);
    }
}

/// Why a stored history message could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history message {index} has no role")]
    MissingRole { index: usize },
    #[error("history message {index} has an empty content block")]
    EmptyBlock { index: usize },
    #[error("history message {index}: tool input is not JSON: {source}")]
    ToolInput {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
}

pub fn to_proto(messages: &[Message]) -> Vec<ConversationMessage> {
    messages.iter().map(message_to_proto).collect()
}

fn message_to_proto(m: &Message) -> ConversationMessage {
    let role = match m.role {
        Role::User => conversation_message::Role::User,
        Role::Assistant => conversation_message::Role::Assistant,
    };
    ConversationMessage {
        role: role as i32,
        content: m.content.iter().map(block_to_proto).collect(),
    }
}

fn block_to_proto(b: &Block) -> ContentBlock {
    let block = match b {
        Block::Text(t) => content_block::Block::Text(t.clone()),
        Block::ToolUse { id, name, input } => {
            content_block::Block::ToolUse(content_block::ToolUse {
                id: id.clone(),
                name: name.clone(),
                input_json: input.to_string(),
            })
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => content_block::Block::ToolResult(content_block::ToolResult {
            tool_use_id: tool_use_id.clone(),
            content: content.clone(),
            is_error: *is_error,
        }),
    };
    ContentBlock { block: Some(block) }
}

pub fn from_proto(history: &[ConversationMessage]) -> Result<Vec<Message>, HistoryError> {
    history
        .iter()
        .enumerate()
        .map(|(index, m)| message_from_proto(index, m))
        .collect()
}

fn message_from_proto(index: usize, m: &ConversationMessage) -> Result<Message, HistoryError> {
    let role = match conversation_message::Role::try_from(m.role) {
        Ok(conversation_message::Role::User) => Role::User,
        Ok(conversation_message::Role::Assistant) => Role::Assistant,
        _ => return Err(HistoryError::MissingRole { index }),
    };
    let content = m
        .content
        .iter()
        .map(|b| block_from_proto(index, b))
        .collect::<Result<_, _>>()?;
    Ok(Message { role, content })
}

fn block_from_proto(index: usize, b: &ContentBlock) -> Result<Block, HistoryError> {
    match &b.block {
        Some(content_block::Block::Text(t)) => Ok(Block::Text(t.clone())),
        Some(content_block::Block::ToolUse(u)) => Ok(Block::ToolUse {
            id: u.id.clone(),
            name: u.name.clone(),
            input: serde_json::from_str(&u.input_json)
                .map_err(|source| HistoryError::ToolInput { index, source })?,
        }),
        Some(content_block::Block::ToolResult(r)) => Ok(Block::ToolResult {
            tool_use_id: r.tool_use_id.clone(),
            content: r.content.clone(),
            is_error: r.is_error,
        }),
        None => Err(HistoryError::EmptyBlock { index }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_through_proto() {
        let messages = vec![
            Message::user_text("hi"),
            Message {
                role: Role::Assistant,
                content: vec![
                    Block::Text("let me look".into()),
                    Block::ToolUse {
                        id: "t1".into(),
                        name: "read_file".into(),
                        input: serde_json::json!({"path": "a.txt"}),
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: "t1".into(),
                    content: "hello".into(),
                    is_error: false,
                }],
            },
        ];
        let back = from_proto(&to_proto(&messages)).expect("valid history");
        assert_eq!(back, messages);
    }

    #[test]
    fn tool_blocks_become_text() {
        let mut messages = vec![
            Message {
                role: Role::Assistant,
                content: vec![
                    Block::Text("Reading.".into()),
                    Block::ToolUse {
                        id: "t1".into(),
                        name: "read_file".into(),
                        input: serde_json::json!({"path": "a"}),
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: "t1".into(),
                    content: "no such file".into(),
                    is_error: true,
                }],
            },
        ];
        tool_blocks_as_text(&mut messages);
        assert_eq!(messages[0].role, Role::Assistant);
        assert_eq!(
            messages[0].text(),
            "Reading.[called the tool read_file with {\"path\":\"a\"}]\n"
        );
        assert_eq!(messages[1].role, Role::User);
        assert_eq!(
            messages[1].text(),
            "[tool result (an error): no such file]\n"
        );
        assert!(messages.iter().all(|m| m.tool_uses().next().is_none()));
    }

    #[test]
    fn history_without_role_is_refused() {
        let bad = vec![ConversationMessage {
            role: 0,
            content: vec![],
        }];
        assert!(matches!(
            from_proto(&bad),
            Err(HistoryError::MissingRole { index: 0 })
        ));
    }
}

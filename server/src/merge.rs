//! How a runner's status update is folded into the stored status.
//!
//! Runners send the full, cumulative status each time, as Stigmer's server expects: a
//! non-empty list or map replaces the stored one, and scalar fields overwrite only when set.
//! An empty list therefore means "unchanged", never "cleared".

use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::AgentExecutionStatus;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("unknown execution phase {0}")]
    UnknownPhase(i32),
    #[error("execution already ended ({0})")]
    AlreadyTerminal(&'static str),
    #[error("an execution in progress cannot go back to EXECUTION_PENDING")]
    BackToPending,
}

/// Merges `update` into `stored`; `now` (RFC 3339) fills `completed_at` when the execution
/// ends, unless the update carries it. (`started_at` is stamped by `transitions::start`, the
/// one place that defines the start.)
pub fn merge_status(
    stored: &AgentExecutionStatus,
    update: AgentExecutionStatus,
    now: &str,
) -> Result<AgentExecutionStatus, MergeError> {
    let current = stored.phase();
    if current.is_terminal() {
        return Err(MergeError::AlreadyTerminal(current.as_str_name()));
    }
    let phase = match update.phase {
        0 => current,
        raw => ExecutionPhase::try_from(raw).map_err(|_| MergeError::UnknownPhase(raw))?,
    };
    // Going back to PENDING would make a lost runner's execution look never started, and
    // lease expiry would then run its side effects a second time.
    if phase == ExecutionPhase::ExecutionPending && current != ExecutionPhase::ExecutionPending {
        return Err(MergeError::BackToPending);
    }

    let mut merged = stored.clone();
    merged.phase = phase.into();
    replace_if_non_empty(&mut merged.messages, update.messages);
    replace_if_non_empty(&mut merged.tool_calls, update.tool_calls);
    replace_if_non_empty(
        &mut merged.sub_agent_executions,
        update.sub_agent_executions,
    );
    if !update.todos.is_empty() {
        merged.todos = update.todos;
    }
    // Cumulative on the runner, like the lists: set replaces, unset leaves it.
    if update.usage.is_some() {
        merged.usage = update.usage;
    }
    replace_if_non_empty(&mut merged.usage_by_model, update.usage_by_model);
    overwrite_if_set(&mut merged.error, update.error);
    overwrite_if_set(&mut merged.started_at, update.started_at);
    overwrite_if_set(&mut merged.completed_at, update.completed_at);

    if phase.is_terminal() && merged.completed_at.is_empty() {
        merged.completed_at = now.to_string();
    }
    Ok(merged)
}

fn replace_if_non_empty<T>(stored: &mut Vec<T>, update: Vec<T>) {
    if !update.is_empty() {
        *stored = update;
    }
}

fn overwrite_if_set(stored: &mut String, update: String) {
    if !update.is_empty() {
        *stored = update;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use stigmer_proto::agentexecution::v1::{
        AgentMessage, MessageType, SubAgentExecution, TodoItem, ToolCall,
    };

    use super::*;

    const NOW: &str = "2026-01-02T03:04:05.006Z";

    fn message(content: &str) -> AgentMessage {
        AgentMessage {
            r#type: MessageType::MessageAi.into(),
            content: content.into(),
            ..Default::default()
        }
    }

    fn status(phase: ExecutionPhase) -> AgentExecutionStatus {
        AgentExecutionStatus {
            phase: phase.into(),
            ..Default::default()
        }
    }

    fn running() -> AgentExecutionStatus {
        AgentExecutionStatus {
            messages: vec![message("one")],
            tool_calls: vec![ToolCall {
                id: "t1".into(),
                ..Default::default()
            }],
            sub_agent_executions: vec![SubAgentExecution {
                id: "sub".into(),
                ..Default::default()
            }],
            todos: HashMap::from([("1".to_string(), TodoItem::default())]),
            error: "earlier".into(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            ..status(ExecutionPhase::ExecutionInProgress)
        }
    }

    #[test]
    fn empty_update_changes_nothing() {
        let stored = running();
        let merged = merge_status(&stored, AgentExecutionStatus::default(), NOW).unwrap();
        assert_eq!(merged, stored);
    }

    #[test]
    fn non_empty_lists_and_maps_replace_the_stored_ones() {
        let update = AgentExecutionStatus {
            messages: vec![message("one"), message("two")],
            tool_calls: vec![ToolCall::default(), ToolCall::default()],
            sub_agent_executions: vec![SubAgentExecution::default()],
            todos: HashMap::from([("2".to_string(), TodoItem::default())]),
            ..Default::default()
        };
        let merged = merge_status(&running(), update.clone(), NOW).unwrap();
        assert_eq!(merged.messages, update.messages);
        assert_eq!(merged.tool_calls, update.tool_calls);
        assert_eq!(merged.sub_agent_executions, update.sub_agent_executions);
        assert_eq!(merged.todos, update.todos);
        // Scalars that were not set keep their stored values.
        assert_eq!(merged.error, "earlier");
        assert_eq!(merged.phase(), ExecutionPhase::ExecutionInProgress);
    }

    #[test]
    fn usage_replaces_when_set_and_is_kept_when_not() {
        use stigmer_proto::agentexecution::v1::{ModelUsage, TokenUsage};
        let usage = TokenUsage {
            input_tokens: 10,
            output_tokens: 2,
            model_calls: 1,
            ..Default::default()
        };
        let update = AgentExecutionStatus {
            usage: Some(usage),
            usage_by_model: vec![ModelUsage {
                provider: "openai".into(),
                model: "m".into(),
                usage: Some(usage),
            }],
            ..Default::default()
        };
        let merged = merge_status(&running(), update.clone(), NOW).unwrap();
        assert_eq!(merged.usage, Some(usage));
        assert_eq!(merged.usage_by_model, update.usage_by_model);
        let again = merge_status(&merged, AgentExecutionStatus::default(), NOW).unwrap();
        assert_eq!(again.usage, Some(usage));
        assert_eq!(again.usage_by_model, update.usage_by_model);
    }

    #[test]
    fn set_scalars_overwrite() {
        let update = AgentExecutionStatus {
            error: "boom".into(),
            started_at: "2026-01-01T09:00:00.000Z".into(),
            completed_at: "2026-01-01T10:00:00.000Z".into(),
            ..status(ExecutionPhase::ExecutionFailed)
        };
        let merged = merge_status(&running(), update, NOW).unwrap();
        assert_eq!(merged.error, "boom");
        assert_eq!(merged.started_at, "2026-01-01T09:00:00.000Z");
        assert_eq!(merged.completed_at, "2026-01-01T10:00:00.000Z");
        assert_eq!(merged.phase(), ExecutionPhase::ExecutionFailed);
        assert_eq!(merged.messages, running().messages);
    }

    #[test]
    fn starting_is_not_the_merge_s_business() {
        let pending = status(ExecutionPhase::ExecutionPending);
        let started =
            merge_status(&pending, status(ExecutionPhase::ExecutionInProgress), NOW).unwrap();
        assert_eq!(started.phase(), ExecutionPhase::ExecutionInProgress);
        assert!(
            started.started_at.is_empty(),
            "transitions::start stamps it"
        );
        assert!(started.completed_at.is_empty());
    }

    #[test]
    fn ending_sets_completed_at_when_absent() {
        let merged =
            merge_status(&running(), status(ExecutionPhase::ExecutionCompleted), NOW).unwrap();
        assert_eq!(merged.completed_at, NOW);
        assert_eq!(merged.started_at, running().started_at);
    }

    #[test]
    fn refuses_updates_after_the_end() {
        let done = status(ExecutionPhase::ExecutionCancelled);
        assert_eq!(
            merge_status(&done, running(), NOW),
            Err(MergeError::AlreadyTerminal("EXECUTION_CANCELLED"))
        );
    }

    #[test]
    fn refuses_unknown_phases_and_going_back_to_pending() {
        let update = AgentExecutionStatus {
            phase: 42,
            ..Default::default()
        };
        assert_eq!(
            merge_status(&running(), update, NOW),
            Err(MergeError::UnknownPhase(42))
        );
        assert_eq!(
            merge_status(&running(), status(ExecutionPhase::ExecutionPending), NOW),
            Err(MergeError::BackToPending)
        );
        let pending = status(ExecutionPhase::ExecutionPending);
        assert!(merge_status(&pending, status(ExecutionPhase::ExecutionPending), NOW).is_ok());
    }
}

//! Phase changes the server applies itself: the start of an execution (the one definition of
//! "started"), and the endings it decides on its own (cancellation of unstarted work, a lost
//! runner), as opposed to the ones runners report through status updates.

use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::{AgentExecutionStatus, AgentMessage, MessageType};

use crate::store::ExecutionRecord;

pub const DEFAULT_CANCEL_REASON: &str = "cancelled by user";

/// Whether the execution has started. This is the one definition the lease-expiry rule
/// (`leases::expire`) and claims by id read: a started execution whose runner disappears is
/// failed ("runner lost") and never handed out again, because its tool calls may have had side
/// effects; one that never started goes back to the queue. The store's dispatch queries say
/// the same in SQL (`phase = 1`, EXECUTION_PENDING).
pub fn has_started(status: &AgentExecutionStatus) -> bool {
    status.phase() != ExecutionPhase::ExecutionPending
}

/// Starts an execution: applied to every status update accepted from the runner holding the
/// lease, whatever it carries, so that the first accepted update is the start. Runners send
/// that update, and wait for its answer, before their first model request, so a runner that
/// disappears has either started nothing or is known to have started.
pub fn start(status: &mut AgentExecutionStatus, now: &str) {
    if status.phase() == ExecutionPhase::ExecutionPending {
        status.phase = ExecutionPhase::ExecutionInProgress.into();
    }
    if status.started_at.is_empty() {
        status.started_at = now.to_string();
    }
}

/// Cancels an execution that no runner is working on.
pub fn cancel(record: &mut ExecutionRecord, reason: &str, now: &str) {
    finish(
        &mut record.status,
        ExecutionPhase::ExecutionCancelled,
        reason,
        format!("Execution cancelled: {reason}"),
        now,
    );
    record.lease = None;
}

/// Fails an execution whose runner stopped renewing its lease after starting it. It is not
/// run again: its tool calls may already have had side effects.
pub fn fail_runner_lost(record: &mut ExecutionRecord, now: &str) {
    let runner = record.claimed_by.as_deref().unwrap_or("unknown");
    let error = format!("runner lost: lease expired (runner {runner})");
    let message = format!(
        "Execution failed: {error}. It was not retried because its tool calls may have had \
         side effects."
    );
    fail(record, &error, message, now);
}

/// Fails an execution for a reason found by the server.
pub fn fail(record: &mut ExecutionRecord, error: &str, message: String, now: &str) {
    finish(
        &mut record.status,
        ExecutionPhase::ExecutionFailed,
        error,
        message,
        now,
    );
    record.lease = None;
}

fn finish(
    status: &mut AgentExecutionStatus,
    phase: ExecutionPhase,
    error: &str,
    message: String,
    now: &str,
) {
    status.phase = phase.into();
    status.error = error.to_string();
    if status.completed_at.is_empty() {
        status.completed_at = now.to_string();
    }
    status.messages.push(AgentMessage {
        r#type: MessageType::MessageSystem.into(),
        content: message,
        timestamp: now.to_string(),
        ..Default::default()
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use stigmer_proto::agentexecution::v1::{AgentExecutionSpec, ExecutionMetadata};

    use super::*;
    use crate::store::LeaseRecord;

    const NOW: &str = "2026-01-02T03:04:05.006Z";

    fn held() -> ExecutionRecord {
        let mut record =
            ExecutionRecord::new(ExecutionMetadata::default(), AgentExecutionSpec::default());
        record.claimed_by = Some("runner-7".into());
        record.lease = Some(LeaseRecord {
            id: "l".into(),
            expires_at_ms: 1,
        });
        record
    }

    #[test]
    fn any_accepted_update_starts_once() {
        let mut status = AgentExecutionStatus {
            phase: ExecutionPhase::ExecutionPending.into(),
            ..Default::default()
        };
        assert!(!has_started(&status));
        start(&mut status, NOW);
        assert!(has_started(&status));
        assert_eq!(status.phase(), ExecutionPhase::ExecutionInProgress);
        assert_eq!(status.started_at, NOW);
        start(&mut status, "2030-01-01T00:00:00.000Z");
        assert_eq!(status.started_at, NOW, "started_at is stamped once");
    }

    #[test]
    fn a_direct_ending_keeps_its_phase_and_is_started() {
        let mut status = AgentExecutionStatus {
            phase: ExecutionPhase::ExecutionFailed.into(),
            ..Default::default()
        };
        start(&mut status, NOW);
        assert_eq!(status.phase(), ExecutionPhase::ExecutionFailed);
        assert!(has_started(&status));
    }

    #[test]
    fn cancel_ends_with_reason_and_system_message() {
        let mut record = held();
        cancel(&mut record, "not needed", NOW);
        assert_eq!(record.phase(), ExecutionPhase::ExecutionCancelled);
        assert_eq!(record.status.error, "not needed");
        assert_eq!(record.status.completed_at, NOW);
        assert_eq!(record.lease, None);
        let last = record.status.messages.last().unwrap();
        assert_eq!(last.r#type(), MessageType::MessageSystem);
        assert!(last.content.contains("not needed"));
    }

    #[test]
    fn lost_runner_fails_with_its_id() {
        let mut record = held();
        fail_runner_lost(&mut record, NOW);
        assert_eq!(record.phase(), ExecutionPhase::ExecutionFailed);
        assert_eq!(
            record.status.error,
            "runner lost: lease expired (runner runner-7)"
        );
        assert_eq!(record.status.completed_at, NOW);
        assert_eq!(record.lease, None);
        assert_eq!(
            record.status.messages.last().unwrap().r#type(),
            MessageType::MessageSystem
        );
    }
}

//! Lease rules: whether a runner still holds an execution, and what happens when a lease
//! runs out.

use std::fmt;

use stigmer_proto::ExecutionPhase;

use crate::clock::Now;
use crate::store::{ExecutionRecord, LeaseState, StoreError, Tx};
use crate::transitions;

/// Why a runner no longer holds an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRefusal {
    NotFound,
    Ended {
        phase: ExecutionPhase,
        error: String,
    },
    /// The lease ran out and the never-started execution went back to the queue.
    Released,
    HeldByAnother,
    Expired,
}

impl fmt::Display for LeaseRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("execution not found"),
            Self::Ended { phase, error } if error.is_empty() => {
                write!(f, "execution already ended ({})", phase.as_str_name())
            }
            Self::Ended { phase, error } => {
                write!(
                    f,
                    "execution already ended ({}: {error})",
                    phase.as_str_name()
                )
            }
            Self::Released => f.write_str("lease expired; the execution went back to the queue"),
            Self::HeldByAnother => f.write_str("execution is held by another lease"),
            Self::Expired => f.write_str("lease expired"),
        }
    }
}

/// A lease is held while it is the execution's current lease, has not run out, and the
/// execution has not ended. Expiry counts from the stored deadline, not from when the sweep
/// notices, so a late runner is refused even before the sweep acts.
pub fn check(state: Option<&LeaseState>, lease_id: &str, now: Now) -> Result<(), LeaseRefusal> {
    let state = state.ok_or(LeaseRefusal::NotFound)?;
    if state.phase.is_terminal() {
        return Err(LeaseRefusal::Ended {
            phase: state.phase,
            error: state.error.clone(),
        });
    }
    let lease = state.lease.as_ref().ok_or(LeaseRefusal::Released)?;
    if lease.id != lease_id {
        return Err(LeaseRefusal::HeldByAnother);
    }
    if lease.expires_at_ms <= now.ms {
        return Err(LeaseRefusal::Expired);
    }
    Ok(())
}

pub fn state_of(record: &ExecutionRecord) -> LeaseState {
    LeaseState {
        phase: record.phase(),
        lease: record.lease.clone(),
        cancel_reason: record.cancel_reason.clone(),
        error: record.status.error.clone(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Never started: free for another runner.
    Requeued,
    /// Ended by the server (failed or cancelled).
    Ended,
}

/// Applies the expiry rule to an execution whose lease ran out: a requested cancellation
/// wins; never started (`transitions::has_started`) goes back to the queue, so it runs at
/// least once; started fails as "runner lost", so its tool calls run at most once.
pub fn expire(record: &mut ExecutionRecord, now: Now) -> Expiry {
    let now_text = now.rfc3339();
    if let Some(reason) = record.cancel_reason.clone() {
        transitions::cancel(record, &reason, &now_text);
        return Expiry::Ended;
    }
    if !transitions::has_started(&record.status) {
        record.lease = None;
        record.claimed_by = None;
        return Expiry::Requeued;
    }
    transitions::fail_runner_lost(record, &now_text);
    Expiry::Ended
}

/// What one pass over expired leases changed.
#[derive(Debug, Default)]
pub struct ExpiredLeases {
    pub requeued: usize,
    /// The executions counted in `requeued` (cloud mode queues them again).
    pub requeued_ids: Vec<String>,
    pub ended: Vec<ExecutionRecord>,
}

/// Applies the expiry rule to every execution whose lease ran out by `now`.
pub fn expire_all(tx: &Tx<'_>, now: Now) -> Result<ExpiredLeases, StoreError> {
    let mut outcome = ExpiredLeases::default();
    for id in tx.expired_leases(now.ms)? {
        let Some(mut record) = tx.execution(&id)? else {
            continue;
        };
        let runner = record.claimed_by.clone().unwrap_or_default();
        let expiry = expire(&mut record, now);
        tx.save_execution(&mut record)?;
        match expiry {
            Expiry::Requeued => {
                tracing::info!(execution = %id, %runner, "lease expired before start; execution requeued");
                outcome.requeued += 1;
                outcome.requeued_ids.push(id.clone());
            }
            Expiry::Ended => {
                tracing::warn!(
                    execution = %id,
                    %runner,
                    phase = record.phase().as_str_name(),
                    "lease expired; execution ended"
                );
                outcome.ended.push(record);
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use stigmer_proto::agentexecution::v1::{AgentExecutionSpec, ExecutionMetadata};

    use super::*;
    use crate::store::LeaseRecord;

    fn held(phase: ExecutionPhase) -> ExecutionRecord {
        let mut record =
            ExecutionRecord::new(ExecutionMetadata::default(), AgentExecutionSpec::default());
        record.status.phase = phase.into();
        record.claimed_by = Some("r1".into());
        record.lease = Some(LeaseRecord {
            id: "lease".into(),
            expires_at_ms: 100,
        });
        record
    }

    #[test]
    fn holds_a_current_unexpired_lease() {
        let state = state_of(&held(ExecutionPhase::ExecutionInProgress));
        assert_eq!(check(Some(&state), "lease", Now { ms: 99 }), Ok(()));
    }

    #[test]
    fn refuses_with_the_reason() {
        let now = Now { ms: 50 };
        assert_eq!(check(None, "lease", now), Err(LeaseRefusal::NotFound));

        let state = state_of(&held(ExecutionPhase::ExecutionInProgress));
        assert_eq!(
            check(Some(&state), "other", now),
            Err(LeaseRefusal::HeldByAnother)
        );
        assert_eq!(
            check(Some(&state), "lease", Now { ms: 100 }),
            Err(LeaseRefusal::Expired)
        );

        let mut record = held(ExecutionPhase::ExecutionPending);
        record.lease = None;
        assert_eq!(
            check(Some(&state_of(&record)), "lease", now),
            Err(LeaseRefusal::Released)
        );

        let mut record = held(ExecutionPhase::ExecutionInProgress);
        transitions::fail_runner_lost(&mut record, "t");
        let refusal = check(Some(&state_of(&record)), "lease", now).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "execution already ended (EXECUTION_FAILED: runner lost: lease expired (runner r1))"
        );
    }

    #[test]
    fn never_started_work_is_requeued() {
        let mut record = held(ExecutionPhase::ExecutionPending);
        assert_eq!(expire(&mut record, Now { ms: 200 }), Expiry::Requeued);
        assert_eq!(record.phase(), ExecutionPhase::ExecutionPending);
        assert_eq!(record.lease, None);
        assert_eq!(record.claimed_by, None);
    }

    #[test]
    fn started_work_fails() {
        let mut record = held(ExecutionPhase::ExecutionInProgress);
        assert_eq!(expire(&mut record, Now { ms: 200 }), Expiry::Ended);
        assert_eq!(record.phase(), ExecutionPhase::ExecutionFailed);
        assert!(record.status.error.starts_with("runner lost"));
        assert_eq!(record.lease, None);
    }

    #[test]
    fn requested_cancellation_wins() {
        for phase in [
            ExecutionPhase::ExecutionPending,
            ExecutionPhase::ExecutionInProgress,
        ] {
            let mut record = held(phase);
            record.cancel_reason = Some("stop".into());
            assert_eq!(expire(&mut record, Now { ms: 200 }), Expiry::Ended);
            assert_eq!(record.phase(), ExecutionPhase::ExecutionCancelled);
            assert_eq!(record.status.error, "stop");
        }
    }
}

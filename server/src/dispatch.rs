//! Handing pending executions to runners: claims with leases and long-polling.
//!
//! The store is the queue (pending, unclaimed executions in creation order), so there is no
//! in-memory queue to rebuild after a restart. Waiting runners park on a [`Notify`]; every
//! event that can make one execution dispatchable (created, its session freed, requeued after
//! a lease expiry) wakes one waiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message;
use stigmer_proto::runner::v1::{ClaimedExecution, Lease, RefusedClaim};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::{self, Now};
use crate::leases::{self, Expiry};
use crate::store::{ExecutionRecord, LeaseRecord, Store, StoreError, Tx};
use crate::transitions;

/// More than this per claim would only hold work back from other runners.
pub const MAX_CLAIM_BATCH: usize = 256;
/// A claim answer stops growing past this size (it always carries at least one execution),
/// so that long session histories do not exceed a runner's 4 MiB default message limit.
const CLAIM_RESPONSE_BUDGET: usize = 3 * 1024 * 1024;

pub struct Dispatcher {
    store: Arc<Store>,
    lease_ttl: Duration,
    work: Notify,
    shutdown: CancellationToken,
}

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub runner_id: String,
    pub max_executions: usize,
    pub wait: Duration,
}

/// What a claim did: executions handed out, and any the server had to fail instead.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    pub claimed: Vec<ClaimedExecution>,
    pub failed: Vec<ExecutionRecord>,
    /// Stopped at the response size budget with work left.
    pub truncated: bool,
    /// Claims by id only: executions that were not handed out, and why.
    pub refused: Vec<RefusedClaim>,
}

#[derive(Debug, thiserror::Error)]
enum ClaimError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the claiming request went away")]
    Abandoned,
}

impl Dispatcher {
    pub fn new(store: Arc<Store>, lease_ttl: Duration, shutdown: CancellationToken) -> Self {
        Self {
            store,
            lease_ttl,
            work: Notify::new(),
            shutdown,
        }
    }

    /// Tells waiting runners that `count` executions may have become dispatchable.
    pub fn wake(&self, count: usize) {
        for _ in 0..count {
            self.work.notify_one();
        }
    }

    /// Claims up to `max_executions`, waiting up to `wait` for the first one. Returns nothing
    /// when the wait ends empty-handed or the server shuts down.
    pub async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let deadline = Instant::now() + request.wait;
        loop {
            // Registered before looking, so a wake-up between the look and the wait is kept.
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let outcome = self.try_claim(&request).await?;
            if !outcome.claimed.is_empty() || !outcome.failed.is_empty() {
                if outcome.truncated || outcome.claimed.len() == request.max_executions {
                    // There may be more; let the next waiter look.
                    self.work.notify_one();
                }
                return Ok(outcome);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(ClaimOutcome::default()),
                () = self.shutdown.cancelled() => return Ok(ClaimOutcome::default()),
            }
        }
    }

    /// Cloud dispatch: claims exactly `ids` (delivered to the runner by the Redis queue) for
    /// `runner_id`, without waiting. What cannot be handed out is listed in `refused`; a
    /// refusal is `settled` when the execution is finished, so its queue entry can be acked.
    pub async fn claim_ids(
        &self,
        runner_id: String,
        ids: Vec<String>,
    ) -> Result<ClaimOutcome, StoreError> {
        let ttl = self.lease_ttl;
        self.store
            .write(move |tx| claim_ids_in(tx, &runner_id, &ids, ttl, Now::read()))
            .await
    }

    async fn try_claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        // If the caller goes away before the claim runs on the writer thread, roll it back
        // rather than hand out executions nobody will receive. (Going away after that is
        // covered by the lease: unstarted work returns to the queue when it expires.)
        let wanted = Arc::new(AtomicBool::new(true));
        let _guard = ClearOnDrop(Arc::clone(&wanted));
        let request = request.clone();
        let ttl = self.lease_ttl;
        let result = self
            .store
            .write(move |tx| {
                let outcome = claim_in(tx, &request, ttl, Now::read())?;
                if wanted.load(Ordering::Acquire) {
                    Ok(outcome)
                } else {
                    Err(ClaimError::Abandoned)
                }
            })
            .await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(ClaimError::Store(err)) => Err(err),
            Err(ClaimError::Abandoned) => Ok(ClaimOutcome::default()),
        }
    }
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn refused(id: &str, reason: impl Into<String>, settled: bool) -> RefusedClaim {
    RefusedClaim {
        execution_id: id.to_string(),
        reason: reason.into(),
        settled,
    }
}

fn claim_ids_in(
    tx: &Tx<'_>,
    runner_id: &str,
    ids: &[String],
    ttl: Duration,
    now: Now,
) -> Result<ClaimOutcome, StoreError> {
    let mut outcome = ClaimOutcome::default();
    let expires_at_ms = now.plus(ttl);
    for id in ids {
        let Some(mut record) = tx.execution(id)? else {
            // Nothing will ever run it: the entry can go.
            outcome
                .refused
                .push(refused(id, "execution not found", true));
            continue;
        };
        if let Some(lease) = &record.lease
            && lease.expires_at_ms <= now.ms
            && !record.phase().is_terminal()
        {
            // The lease ran out before the sweep noticed: apply the same rule here, so a
            // started execution is failed ("runner lost") rather than silently run again.
            match leases::expire(&mut record, now) {
                Expiry::Requeued => tx.save_execution(&mut record)?,
                Expiry::Ended => {
                    tx.save_execution(&mut record)?;
                    outcome.refused.push(refused(
                        id,
                        format!("execution ended: {}", record.status.error),
                        true,
                    ));
                    outcome.failed.push(record);
                    continue;
                }
            }
        }
        let phase = record.phase();
        if phase.is_terminal() {
            outcome.refused.push(refused(
                id,
                format!("execution already ended ({})", phase.as_str_name()),
                true,
            ));
            continue;
        }
        if record.lease.is_some() {
            outcome
                .refused
                .push(refused(id, "execution is held under a live lease", false));
            continue;
        }
        if transitions::has_started(&record.status) || record.claimed_by.is_some() {
            outcome.refused.push(refused(
                id,
                format!("execution is not dispatchable ({})", phase.as_str_name()),
                false,
            ));
            continue;
        }
        if !tx.session_turn(id, &record.spec.session_id)? {
            // An earlier execution of the session runs or waits first; the queue entry stays
            // pending and is delivered again later.
            outcome.refused.push(refused(
                id,
                "an earlier execution of the session goes first",
                false,
            ));
            continue;
        }
        if let Some(claimed) = hand_out(tx, &mut record, runner_id, ttl, expires_at_ms, now)? {
            outcome.claimed.push(claimed);
        } else {
            outcome.refused.push(refused(
                id,
                format!("execution failed: {}", record.status.error),
                true,
            ));
            outcome.failed.push(record);
        }
    }
    Ok(outcome)
}

/// Gives `record` a new lease for `runner_id`, or fails it when its agent or session is gone
/// (then returns `None`).
fn hand_out(
    tx: &Tx<'_>,
    record: &mut ExecutionRecord,
    runner_id: &str,
    ttl: Duration,
    expires_at_ms: i64,
    now: Now,
) -> Result<Option<ClaimedExecution>, StoreError> {
    let Some((claimed, lease)) = offer(tx, record, ttl, expires_at_ms, now)? else {
        return Ok(None);
    };
    take(tx, record, runner_id, lease)?;
    tracing::debug!(execution = %record.id(), runner = %runner_id, "claimed by id");
    Ok(Some(claimed))
}

/// The claim a runner would receive for `record` and the lease behind it, not yet saved (a
/// claim may still be left out of a full response). When the agent or the session is gone the
/// execution is failed and saved instead, and `None` returned: deleting an agent is refused
/// while it has live executions, so this only happens to a store edited by hand, and failing
/// beats blocking the queue.
fn offer(
    tx: &Tx<'_>,
    record: &mut ExecutionRecord,
    ttl: Duration,
    expires_at_ms: i64,
    now: Now,
) -> Result<Option<(ClaimedExecution, LeaseRecord)>, StoreError> {
    let agent = tx.agent(&record.spec.agent_id)?;
    let session = tx.session(&record.spec.session_id)?;
    let (Some(agent), Some(session)) = (agent, session) else {
        let error = format!(
            "agent '{}' or its session no longer exists",
            record.spec.agent_id
        );
        transitions::fail(
            record,
            &error,
            format!("Execution failed: {error}"),
            &now.rfc3339(),
        );
        tx.save_execution(record)?;
        return Ok(None);
    };
    let lease = LeaseRecord {
        id: uuid::Uuid::new_v4().to_string(),
        expires_at_ms,
    };
    let claimed = ClaimedExecution {
        execution: Some(record.to_execution()),
        agent: Some(agent),
        session: Some(session),
        lease: Some(Lease {
            lease_id: lease.id.clone(),
            expires_at: clock::rfc3339(expires_at_ms),
            ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
        }),
    };
    Ok(Some((claimed, lease)))
}

/// Records that `runner_id` holds `record` under `lease`.
fn take(
    tx: &Tx<'_>,
    record: &mut ExecutionRecord,
    runner_id: &str,
    lease: LeaseRecord,
) -> Result<(), StoreError> {
    record.claimed_by = Some(runner_id.to_string());
    record.lease = Some(lease);
    tx.save_execution(record)
}

fn claim_in(
    tx: &Tx<'_>,
    request: &ClaimRequest,
    ttl: Duration,
    now: Now,
) -> Result<ClaimOutcome, StoreError> {
    let mut outcome = ClaimOutcome::default();
    let expires_at_ms = now.plus(ttl);
    let mut response_size = 0;
    for id in tx.dispatchable(request.max_executions)? {
        let Some(mut record) = tx.execution(&id)? else {
            continue;
        };
        let Some((claimed, lease)) = offer(tx, &mut record, ttl, expires_at_ms, now)? else {
            outcome.failed.push(record);
            continue;
        };
        response_size += claimed.encoded_len();
        if response_size > CLAIM_RESPONSE_BUDGET && !outcome.claimed.is_empty() {
            outcome.truncated = true;
            break;
        }
        take(tx, &mut record, &request.runner_id, lease)?;
        tracing::debug!(execution = %id, runner = %request.runner_id, "claimed");
        outcome.claimed.push(claimed);
    }
    Ok(outcome)
}

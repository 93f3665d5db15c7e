//! One round of cloud dispatch: take entries from the queue (stale ones first, then new
//! ones), claim exactly those executions from the control plane, and settle the queue:
//! entries the control plane refused as finished are acked at once; claimed ones are acked
//! by the worker after it stored the terminal status ([`RedisDispatch::ack`]).

use std::time::Duration;

use stigmer_proto::runner::v1::{ClaimRequest, ClaimedExecution, RefusedClaim};

use super::connection::{Redis, RedisError};
use super::queue::{QueueConsumer, QueueEntry};
use crate::client::ControlPlane;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("claiming queued executions failed: {0}")]
    Claim(#[from] tonic::Status),
}

/// A claimed execution and the queue entry to ack once its terminal status is stored.
#[derive(Debug)]
pub struct ClaimedEntry {
    pub entry_id: String,
    pub execution: ClaimedExecution,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct DispatchRound {
    pub claimed: Vec<ClaimedEntry>,
    /// Refused and not finished (held by a live lease elsewhere, or waiting for an earlier
    /// execution of its session): the entries stay pending and come back after `min_idle`.
    pub deferred: Vec<RefusedClaim>,
    /// Entries acked this round without running anything (finished or malformed).
    pub settled: usize,
}

#[derive(Clone)]
pub struct RedisDispatch {
    queue: QueueConsumer,
    runner_id: String,
    min_idle: Duration,
}

impl RedisDispatch {
    /// Creates the consumer group if needed. `runner_id` is sent with claims; the consumer
    /// name comes from the settings (normally the same id).
    pub async fn new(redis: &Redis, runner_id: impl Into<String>) -> Result<Self, RedisError> {
        let queue = QueueConsumer::new(redis);
        queue.ensure_group().await?;
        Ok(Self {
            queue,
            runner_id: runner_id.into(),
            min_idle: redis.settings().min_idle,
        })
    }

    pub fn queue(&self) -> &QueueConsumer {
        &self.queue
    }

    /// Call only with `free_slots > 0`. Reclaims entries of dead consumers first (they are
    /// older), otherwise blocks up to `block` for new ones, then claims them.
    pub async fn round(
        &self,
        client: &ControlPlane,
        free_slots: usize,
        block: Duration,
    ) -> Result<DispatchRound, DispatchError> {
        let entries = match self.take(free_slots, block).await {
            Err(e) if e.is_missing_group() => {
                tracing::warn!(
                    "the queue's consumer group is gone (Redis lost its data?); recreating it"
                );
                self.queue.ensure_group().await?;
                self.take(free_slots, block).await?
            }
            other => other?,
        };
        self.claim(client, entries).await
    }

    async fn take(
        &self,
        free_slots: usize,
        block: Duration,
    ) -> Result<Vec<QueueEntry>, RedisError> {
        let entries = self.queue.reclaim_stale(self.min_idle, free_slots).await?;
        if !entries.is_empty() {
            return Ok(entries);
        }
        self.queue.read(free_slots, block).await
    }

    /// Claims the executions of `entries` and acks the entries that are settled.
    pub async fn claim(
        &self,
        client: &ControlPlane,
        entries: Vec<QueueEntry>,
    ) -> Result<DispatchRound, DispatchError> {
        let mut round = DispatchRound::default();
        let (entries, malformed): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|entry| !entry.execution_id.is_empty());
        let mut to_ack: Vec<String> = malformed.into_iter().map(|e| e.entry_id).collect();
        if !entries.is_empty() {
            let response = client
                .claim(ClaimRequest {
                    runner_id: self.runner_id.clone(),
                    max_executions: u32::try_from(entries.len()).unwrap_or(u32::MAX),
                    wait_ms: 0,
                    execution_ids: entries.iter().map(|e| e.execution_id.clone()).collect(),
                })
                .await?;
            // The same execution may sit in the queue twice (re-queued after a lease expiry):
            // each claimed execution takes the first matching entry, the rest are refused.
            let mut unmatched = entries;
            for execution in response.executions {
                let id = execution.execution_id();
                if let Some(pos) = unmatched.iter().position(|e| e.execution_id == id) {
                    let entry = unmatched.remove(pos);
                    round.claimed.push(ClaimedEntry {
                        entry_id: entry.entry_id,
                        execution,
                    });
                }
            }
            for refusal in response.refused {
                let Some(pos) = unmatched
                    .iter()
                    .position(|e| e.execution_id == refusal.execution_id)
                else {
                    continue;
                };
                let entry = unmatched.remove(pos);
                if refusal.settled {
                    tracing::debug!(execution = %refusal.execution_id, reason = %refusal.reason, "queue entry settled");
                    to_ack.push(entry.entry_id);
                } else {
                    tracing::debug!(execution = %refusal.execution_id, reason = %refusal.reason, "queued execution deferred");
                    round.deferred.push(refusal);
                }
            }
        }
        round.settled = to_ack.len();
        self.queue.ack(&to_ack).await?;
        Ok(round)
    }

    /// Acks the entry of an execution whose terminal status the control plane stored.
    pub async fn ack(&self, entry_id: &str) -> Result<(), RedisError> {
        self.queue.ack(&[entry_id.to_string()]).await.map(|_| ())
    }

    /// Keeps the entries of in-flight executions from being reclaimed; call on every
    /// heartbeat.
    pub async fn keep_fresh(&self, entry_ids: &[String]) -> Result<(), RedisError> {
        self.queue.keep_fresh(entry_ids).await.map(|_| ())
    }
}

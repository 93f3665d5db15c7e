//! How executions reach this runner, chosen once at start from the mode: local mode long-polls
//! the control plane's `Claim`; cloud mode reads the Redis queue, publishes its presence and
//! listens for cancellations. The worker calls the same four steps either way: `claim`,
//! `on_heartbeat`, `settle` and `shutdown`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use stigmer_auth::keyfile::TokenSource;
use stigmer_proto::runner::v1::{ClaimRequest, ClaimedExecution};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::ControlPlane;
use crate::config::Config;
use crate::http::Health;
use crate::inflight::{Ending, ExecHandle, InFlight, Interrupt, cancel_reason};
use crate::redis::{CancelListener, Presence, PresenceRecord, Redis, RedisDispatch};

/// A claimed execution and, from the queue, its entry (acknowledged once the terminal status
/// is stored).
pub type Claimed = (ClaimedExecution, Option<String>);

pub enum Dispatch {
    /// Local: the control plane's long-poll `Claim`.
    LongPoll,
    /// Cloud: the Redis queue.
    Queue(Box<QueueDispatch>),
}

/// Cloud mode's Redis side: the queue, presence, and where cancellations are published.
pub struct QueueDispatch {
    /// Kept so that the token file keeps being watched while the runner lives.
    pub token: TokenSource,
    pub redis: Redis,
    pub queue: RedisDispatch,
    pub presence: Presence,
}

impl Dispatch {
    /// Claims up to `free` executions.
    pub async fn claim(
        &self,
        client: &ControlPlane,
        config: &Config,
        free: usize,
    ) -> Result<Vec<Claimed>, String> {
        match self {
            Dispatch::LongPoll => {
                let request = ClaimRequest {
                    runner_id: config.runner_id.clone(),
                    max_executions: free as u32,
                    wait_ms: config.claim_wait.as_millis() as u32,
                    execution_ids: Vec::new(),
                };
                let response = client.claim(request).await.map_err(|s| s.to_string())?;
                Ok(response.executions.into_iter().map(|e| (e, None)).collect())
            }
            Dispatch::Queue(q) => {
                let round = q
                    .queue
                    .round(client, free, config.claim_wait)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(round
                    .claimed
                    .into_iter()
                    .map(|c| (c.execution, Some(c.entry_id)))
                    .collect())
            }
        }
    }

    /// Background work of the dispatch, stopped by `stop`: cloud mode's cancellation listener
    /// (a cancellation published on Redis reaches the runner holding the execution at once;
    /// heartbeats carry it too, later).
    pub fn spawn_listeners(
        &self,
        inflight: Arc<InFlight>,
        stop: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        match self {
            Dispatch::LongPoll => None,
            Dispatch::Queue(q) => {
                let listener = CancelListener::spawn(&q.redis, stop);
                Some(tokio::spawn(cancel_loop(listener, inflight)))
            }
        }
    }

    /// At every heartbeat, cloud mode keeps the queue entries of held executions from being
    /// reclaimed and refreshes this runner's presence record.
    pub async fn on_heartbeat(&self, config: &Config, health: &Health, inflight: &InFlight) {
        let Dispatch::Queue(q) = self else {
            return;
        };
        let entries = inflight.entry_ids();
        if !entries.is_empty()
            && let Err(e) = q.queue.keep_fresh(&entries).await
        {
            tracing::warn!(error = %e, "could not refresh the queue entries of held executions");
        }
        let record = PresenceRecord {
            id: config.runner_id.clone(),
            pod: config.pod_name.clone(),
            capacity: config.max_concurrency as u32,
            in_flight: inflight.len() as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            draining: health.draining.load(Ordering::Relaxed),
            updated_at: crate::status::now(),
        };
        if let Err(e) = q.presence.publish(&record).await {
            tracing::warn!(error = %e, "could not publish presence");
        }
    }

    /// After an execution ended: its queue entry is acknowledged once the terminal status is
    /// stored. A lost lease is not acknowledged: the control plane settles it when the entry
    /// is reclaimed.
    pub async fn settle(&self, handle: &ExecHandle, ending: &Ending) {
        let (Dispatch::Queue(q), Some(entry)) = (self, handle.entry_id.as_deref()) else {
            return;
        };
        if matches!(ending, Ending::Lost(_)) {
            return;
        }
        if let Err(e) = q.queue.ack(entry).await {
            tracing::warn!(execution_id = %handle.execution_id, error = %e, "could not acknowledge the queue entry; it will be settled when reclaimed");
        }
    }

    /// At shutdown, cloud mode leaves the presence set.
    pub async fn shutdown(&self, runner_id: &str) {
        if let Dispatch::Queue(q) = self
            && let Err(e) = q.presence.remove(runner_id).await
        {
            tracing::warn!(error = %e, "could not remove the presence record");
        }
    }
}

async fn cancel_loop(mut listener: CancelListener, inflight: Arc<InFlight>) {
    while let Some(notice) = listener.recv().await {
        if inflight.interrupt(
            &notice.execution_id,
            Interrupt::Cancelled(cancel_reason(&notice.reason)),
        ) {
            tracing::info!(execution_id = %notice.execution_id, "cancellation received through Redis");
        }
    }
}

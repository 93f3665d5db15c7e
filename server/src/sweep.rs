//! The periodic pass that applies the lease-expiry rule, so that work held by a runner that
//! disappeared is requeued or ended without anyone asking.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::api::Shared;
use crate::clock::Now;
use crate::leases::{self, ExpiredLeases};
use crate::store::StoreError;

pub async fn run(shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_reconcile = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        if let Err(err) = sweep_once(&shared).await {
            tracing::error!(error = %err, "lease sweep failed; retrying on the next tick");
        }
        shared.broadcaster.prune();
        shared.live.prune();
        if let Some(cloud) = &shared.cloud
            && last_reconcile.elapsed() >= cloud.reconcile_interval
        {
            last_reconcile = Instant::now();
            if let Err(err) = cloud.reconcile(&shared.store).await {
                tracing::warn!(error = %err, "checking the Redis queue failed; retrying later");
            }
        }
    }
}

/// Applies the expiry rule once and tells runners and subscribers what changed.
pub async fn sweep_once(shared: &Shared) -> Result<ExpiredLeases, StoreError> {
    let expired = shared
        .store
        .write(|tx| leases::expire_all(tx, Now::read()))
        .await?;
    shared.dispatcher.wake(expired.requeued);
    shared.ended(&expired.ended);
    if let Some(cloud) = &shared.cloud {
        // Never started, so another runner may take it: put it on the queue again.
        for id in &expired.requeued_ids {
            cloud.enqueue(id).await;
        }
        cloud.retry_unqueued().await;
    }
    Ok(expired)
}

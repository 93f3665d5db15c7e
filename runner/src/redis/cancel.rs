//! Cancellation over pub/sub: the control plane publishes `{"execution_id", "reason"}` on
//! `<prefix>:cancel`; every runner listens and cancels the execution if it holds it. Pub/sub
//! is fire-and-forget, so heartbeat answers still carry cancellations; this only makes them
//! immediate.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::connection::Redis;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CancelNotice {
    pub execution_id: String,
    #[serde(default)]
    pub reason: String,
}

/// Receives cancellation notices; a background task keeps the subscription alive across
/// Redis restarts. The task ends when `shutdown` is cancelled or the listener is dropped.
pub struct CancelListener {
    notices: mpsc::Receiver<CancelNotice>,
    subscribed: watch::Receiver<bool>,
}

impl CancelListener {
    pub fn spawn(redis: &Redis, shutdown: CancellationToken) -> Self {
        let (tx, notices) = mpsc::channel(256);
        let (subscribed_tx, subscribed) = watch::channel(false);
        let client = redis.client.clone();
        let channel = redis.settings().cancel_channel();
        let addr = redis.addr().to_string();
        tokio::spawn(async move {
            let mut delay = RECONNECT_MIN;
            loop {
                let session = listen(&client, &channel, &tx, &subscribed_tx);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = session => match result {
                        Ok(Ended::ListenerDropped) => return,
                        Ok(Ended::ConnectionLost) => {
                            tracing::warn!(redis = %addr, "cancel subscription lost; resubscribing");
                            delay = RECONNECT_MIN;
                        }
                        Err(err) => {
                            tracing::warn!(redis = %addr, error = %err, "cannot subscribe to cancellations; retrying");
                        }
                    },
                }
                let _ = subscribed_tx.send(false);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        });
        Self {
            notices,
            subscribed,
        }
    }

    /// The next notice; `None` once the listener stopped (shutdown).
    pub async fn recv(&mut self) -> Option<CancelNotice> {
        self.notices.recv().await
    }

    /// Waits until the subscription is active (useful at start-up and in tests).
    pub async fn wait_subscribed(&mut self) {
        let _ = self.subscribed.wait_for(|subscribed| *subscribed).await;
    }
}

enum Ended {
    ConnectionLost,
    ListenerDropped,
}

async fn listen(
    client: &redis::Client,
    channel: &str,
    tx: &mpsc::Sender<CancelNotice>,
    subscribed: &watch::Sender<bool>,
) -> Result<Ended, redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let _ = subscribed.send(true);
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        match serde_json::from_slice::<CancelNotice>(message.get_payload_bytes()) {
            Ok(notice) if !notice.execution_id.is_empty() => {
                if tx.send(notice).await.is_err() {
                    return Ok(Ended::ListenerDropped);
                }
            }
            Ok(_) | Err(_) => {
                tracing::warn!(channel, "ignoring a malformed cancellation notice");
            }
        }
    }
    Ok(Ended::ConnectionLost)
}

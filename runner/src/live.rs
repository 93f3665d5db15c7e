//! Live model text: every text delta goes to the control plane as it arrives, for
//! `SubscribeLive` clients, ahead of the cumulative status (which stays coalesced for storage).
//!
//! One sender task per runner. Executions hand deltas over through a bounded queue without
//! waiting; the task sends whatever queued up while its previous call was on its way in one
//! `PublishText` call (consecutive pieces of one message merged), so a busy runner makes few
//! calls and an idle one sends each delta at once. When the control plane is slower than the
//! model, the queue fills and deltas are dropped: the runner never waits for live text, and a
//! follower sees the hole in the offsets and gets the text from the next cumulative status.

use std::sync::Arc;

use stigmer_proto::agentexecution::v1::TextDelta;
use stigmer_proto::runner::v1::PublishTextRequest;
use tokio::sync::mpsc;

use crate::client::ControlPlane;
use crate::http::Health;

/// Deltas waiting for the sender task. A delta is a few tokens: this is seconds of text of
/// every execution at once, and an empty slot costs a pointer or so.
const QUEUE: usize = 4096;

/// Deltas per call, at most (the control plane accepts up to 4096).
const BATCH: usize = 1024;

/// The runner's handle on the sender task; cheap to clone.
#[derive(Clone)]
pub struct LiveText {
    queue: mpsc::Sender<TextDelta>,
    health: Arc<Health>,
}

impl LiveText {
    /// Starts the sender task; it ends when the last handle is dropped.
    pub fn start(client: ControlPlane, runner_id: String, health: Arc<Health>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(forward(receiver, client, runner_id, health.clone()));
        Self { queue, health }
    }

    /// Queues a delta; drops it when the queue is full (never waits).
    pub fn send(&self, delta: TextDelta) {
        if self.queue.try_send(delta).is_err() {
            self.health.metrics.live_text("dropped");
        }
    }
}

async fn forward(
    mut receiver: mpsc::Receiver<TextDelta>,
    client: ControlPlane,
    runner_id: String,
    health: Arc<Health>,
) {
    let metrics = &health.metrics;
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let deltas = merge(std::mem::take(&mut batch));
        let count = deltas.len() as u64;
        let sent = client
            .publish_text(PublishTextRequest {
                runner_id: runner_id.clone(),
                deltas,
            })
            .await;
        match sent {
            Ok(()) => metrics.live_text_sent(count),
            Err(status) => {
                // Best effort by design: the cumulative status carries the same text.
                metrics.live_text("failed");
                tracing::debug!(error = %status, "live text not delivered");
            }
        }
    }
}

/// Joins consecutive deltas that continue each other (same execution and message, offsets
/// adjacent): fewer, larger deltas for the same bytes of text.
fn merge(deltas: Vec<TextDelta>) -> Vec<TextDelta> {
    let mut merged: Vec<TextDelta> = Vec::with_capacity(deltas.len());
    for delta in deltas {
        if let Some(last) = merged.last_mut()
            && last.execution_id == delta.execution_id
            && last.message_index == delta.message_index
            && last.offset + last.text.len() as u64 == delta.offset
        {
            last.text.push_str(&delta.text);
            continue;
        }
        merged.push(delta);
    }
    merged
}

/// One execution's side: which execution the text belongs to.
pub struct ExecutionText {
    live: LiveText,
    execution_id: String,
}

impl ExecutionText {
    pub fn new(live: LiveText, execution_id: String) -> Self {
        Self { live, execution_id }
    }

    /// `text` was appended to message `message_index` at byte `offset` of its content.
    pub fn appended(&self, message_index: usize, offset: usize, text: &str) {
        if text.is_empty() {
            return;
        }
        self.live.send(TextDelta {
            execution_id: self.execution_id.clone(),
            message_index: u32::try_from(message_index).unwrap_or(u32::MAX),
            offset: offset as u64,
            text: text.to_string(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn delta(id: &str, index: u32, offset: u64, text: &str) -> TextDelta {
        TextDelta {
            execution_id: id.into(),
            message_index: index,
            offset,
            text: text.into(),
        }
    }

    #[test]
    fn merges_only_pieces_that_continue_each_other() {
        let merged = merge(vec![
            delta("a", 1, 0, "Hel"),
            delta("a", 1, 3, "lo"),
            delta("b", 1, 0, "x"),
            delta("a", 1, 5, " you"),
            delta("a", 1, 20, "later"),
            delta("a", 3, 25, "next message"),
        ]);
        let texts: Vec<_> = merged
            .iter()
            .map(|d| (d.execution_id.as_str(), d.offset, d.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                ("a", 0, "Hello"),
                ("b", 0, "x"),
                ("a", 5, " you"),
                ("a", 20, "later"),
                ("a", 25, "next message")
            ]
        );
    }
}

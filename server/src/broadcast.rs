//! Live execution state for subscribers.
//!
//! One `watch` channel per execution that somebody is subscribed to. A watch channel holds
//! only the latest value, so publishing never waits for a slow subscriber and a subscriber
//! that falls behind skips intermediate states but still sees the latest one (every state is
//! cumulative). Channels exist only while they have subscribers and the execution is live.
//!
//! Publishing happens after the store commit and outside its lock, so two updates may publish
//! out of order; the stored version decides which one is newer.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::Stream;
use stigmer_proto::agentexecution::v1::AgentExecution;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::secrets;
use crate::store::ExecutionRecord;

#[derive(Clone, Default)]
pub struct Snapshot {
    version: i64,
    /// Already masked for clients; `None` until the first state is known.
    execution: Option<Arc<AgentExecution>>,
}

impl Snapshot {
    #[cfg(test)]
    pub(crate) fn new(version: i64, execution: AgentExecution) -> Self {
        Self {
            version,
            execution: Some(Arc::new(execution)),
        }
    }

    pub(crate) fn execution(&self) -> Option<Arc<AgentExecution>> {
        self.execution.clone()
    }
}

#[derive(Default)]
pub struct Broadcaster {
    channels: Mutex<HashMap<String, watch::Sender<Snapshot>>>,
}

pub type ExecutionStream =
    Pin<Box<dyn Stream<Item = Result<AgentExecution, tonic::Status>> + Send + 'static>>;

impl Broadcaster {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Snapshot>>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the record's state to its subscribers, if any.
    pub fn publish(&self, record: &ExecutionRecord) {
        let Some(sender) = self.channels().get(record.id()).cloned() else {
            return;
        };
        let snapshot = Snapshot {
            version: record.version,
            execution: Some(Arc::new(secrets::masked(record.to_execution()))),
        };
        sender.send_if_modified(|current| {
            if snapshot.version > current.version {
                *current = snapshot;
                true
            } else {
                false
            }
        });
        if record.phase().is_terminal() || sender.receiver_count() == 0 {
            self.remove_if_same(record.id(), &sender);
        }
    }

    /// Registers a subscriber before its first read of the store, so that no update committed
    /// after that read can be missed. Call [`Broadcaster::publish`] with what the read found.
    pub fn subscribe(&self, id: &str) -> watch::Receiver<Snapshot> {
        self.channels()
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(Snapshot::default()).0)
            .subscribe()
    }

    /// Drops the channel of an execution that turned out not to exist, once its would-be
    /// subscriber has dropped its receiver.
    pub fn forget(&self, id: &str) {
        let mut channels = self.channels();
        if channels
            .get(id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(id);
        }
    }

    /// Drops channels whose subscribers all went away.
    pub fn prune(&self) {
        self.channels()
            .retain(|_, sender| sender.receiver_count() > 0);
    }

    #[cfg(test)]
    pub fn channel_count(&self) -> usize {
        self.channels().len()
    }

    fn remove_if_same(&self, id: &str, sender: &watch::Sender<Snapshot>) {
        let mut channels = self.channels();
        if channels
            .get(id)
            .is_some_and(|current| current.same_channel(sender))
        {
            channels.remove(id);
        }
    }
}

/// The stream a subscriber reads: the current state first, then each newer state it gets to,
/// ending after a terminal state. Ends with UNAVAILABLE when the server shuts down.
pub fn stream(
    mut receiver: watch::Receiver<Snapshot>,
    shutdown: CancellationToken,
) -> ExecutionStream {
    receiver.mark_changed();
    let state = Some((receiver, shutdown));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut receiver, shutdown) = state?;
        loop {
            tokio::select! {
                changed = receiver.changed() => {
                    // The channel closes only after its last state was seen, or at shutdown.
                    changed.ok()?;
                }
                () = shutdown.cancelled() => {
                    let status = tonic::Status::unavailable("server is shutting down");
                    return Some((Err(status), None));
                }
            }
            let Some(execution) = receiver.borrow_and_update().execution.clone() else {
                continue;
            };
            let terminal = execution
                .status
                .as_ref()
                .is_some_and(|status| status.phase().is_terminal());
            let next = (!terminal).then_some((receiver, shutdown));
            return Some((Ok(Arc::unwrap_or_clone(execution)), next));
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::StreamExt;
    use stigmer_proto::ExecutionPhase;
    use stigmer_proto::agentexecution::v1::{AgentExecutionSpec, ExecutionMetadata};

    use super::*;

    fn record(version: i64, phase: ExecutionPhase) -> ExecutionRecord {
        let mut record = ExecutionRecord::new(
            ExecutionMetadata {
                id: "e".into(),
                ..Default::default()
            },
            AgentExecutionSpec::default(),
        );
        record.version = version;
        record.status.phase = phase.into();
        record
    }

    fn phase(item: Option<Result<AgentExecution, tonic::Status>>) -> ExecutionPhase {
        item.unwrap().unwrap().status.unwrap().phase()
    }

    #[tokio::test]
    async fn older_versions_never_replace_newer_ones() {
        let broadcaster = Broadcaster::default();
        let mut stream = stream(broadcaster.subscribe("e"), CancellationToken::new());
        broadcaster.publish(&record(3, ExecutionPhase::ExecutionInProgress));
        broadcaster.publish(&record(2, ExecutionPhase::ExecutionPending));
        assert_eq!(
            phase(stream.next().await),
            ExecutionPhase::ExecutionInProgress
        );
        broadcaster.publish(&record(4, ExecutionPhase::ExecutionCompleted));
        assert_eq!(
            phase(stream.next().await),
            ExecutionPhase::ExecutionCompleted
        );
        assert!(stream.next().await.is_none());
        assert_eq!(broadcaster.channel_count(), 0);
    }

    #[tokio::test]
    async fn a_late_reader_gets_the_latest_state() {
        let broadcaster = Broadcaster::default();
        let mut stream = stream(broadcaster.subscribe("e"), CancellationToken::new());
        for version in 2..50 {
            broadcaster.publish(&record(version, ExecutionPhase::ExecutionInProgress));
        }
        broadcaster.publish(&record(50, ExecutionPhase::ExecutionFailed));
        assert_eq!(phase(stream.next().await), ExecutionPhase::ExecutionFailed);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn publishing_without_subscribers_keeps_nothing() {
        let broadcaster = Broadcaster::default();
        broadcaster.publish(&record(2, ExecutionPhase::ExecutionInProgress));
        assert_eq!(broadcaster.channel_count(), 0);
        drop(broadcaster.subscribe("e"));
        broadcaster.publish(&record(3, ExecutionPhase::ExecutionInProgress));
        assert_eq!(broadcaster.channel_count(), 0);
        drop(broadcaster.subscribe("e"));
        broadcaster.prune();
        assert_eq!(broadcaster.channel_count(), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_the_stream() {
        let broadcaster = Broadcaster::default();
        let shutdown = CancellationToken::new();
        let mut stream = stream(broadcaster.subscribe("e"), shutdown.clone());
        shutdown.cancel();
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }
}

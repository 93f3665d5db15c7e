//! The gRPC services and what they share.

pub mod agents;
pub mod executions;
mod mcp;
pub mod runner;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stigmer_proto::agentexecution::v1::TextDelta;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::broadcast::Broadcaster;
use crate::cloud::Cloud;
use crate::dispatch::Dispatcher;
use crate::leases::LeaseRefusal;
use crate::live::LiveText;
use crate::store::{ExecutionRecord, Store, StoreError};

/// State behind every service.
pub struct Shared {
    pub store: Arc<Store>,
    pub broadcaster: Broadcaster,
    /// Local mode's live text (cloud mode carries it on the events streams).
    pub live: LiveText,
    pub dispatcher: Dispatcher,
    pub lease_ttl: Duration,
    pub max_claim_wait: Duration,
    pub shutdown: CancellationToken,
    /// Cloud mode: the Redis queue, cancellation channel and events streams.
    pub cloud: Option<Arc<Cloud>>,
}

impl Shared {
    pub fn new(
        store: Arc<Store>,
        lease_ttl: Duration,
        max_claim_wait: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            dispatcher: Dispatcher::new(Arc::clone(&store), lease_ttl, shutdown.clone()),
            store,
            broadcaster: Broadcaster::default(),
            live: LiveText::default(),
            lease_ttl,
            max_claim_wait,
            shutdown,
            cloud: None,
        }
    }

    /// A new state of a live execution: to local subscribers, and in cloud mode to its events
    /// stream for subscribers on any replica.
    pub fn publish(&self, record: &ExecutionRecord) {
        self.broadcaster.publish(record);
        if record.phase().is_terminal() {
            self.live.end(record.id());
        }
        if let Some(cloud) = &self.cloud {
            cloud.publish_event(record);
        }
    }

    /// Live model text from a runner: to local live subscribers, or in cloud mode onto the
    /// execution's events stream (in order with its states) for subscribers on any replica.
    pub fn publish_text(&self, delta: TextDelta) {
        match &self.cloud {
            Some(cloud) => cloud.publish_text(&delta),
            None => self.live.publish(delta),
        }
    }

    /// After executions ended: show subscribers the final state, and wake runners since each
    /// ending may free a session with more work queued.
    pub fn ended(&self, records: &[ExecutionRecord]) {
        for record in records {
            self.publish(record);
            if let Some(cloud) = &self.cloud {
                cloud.enqueue_session_successor(&self.store, &record.spec.session_id);
            }
        }
        self.dispatcher.wake(records.len());
    }
}

/// Why a request failed, as the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub fn lease(refusal: LeaseRefusal) -> Self {
        Self::FailedPrecondition(format!("lease not held: {refusal}"))
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidArgument(message) => Status::invalid_argument(message),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::Store(err) => {
                // The detail may name files and SQL; it goes to the log, not to the client.
                tracing::error!(error = %err, "request failed in the store");
                Status::internal("internal storage error")
            }
            ApiError::Internal(message) => {
                tracing::error!(error = %message, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// Runs `work` as a task of its own so that it finishes even if the caller goes away: tonic
/// drops a handler as soon as its client cancels, and once a change is committed, subscribers
/// and waiting runners must still hear of it.
pub async fn to_completion<T, F>(work: F) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(work)
        .await
        .map_err(|err| ApiError::Internal(format!("request task failed: {err}")))?
}

pub type ApiResult<T> = Result<tonic::Response<T>, Status>;

pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if value.trim().is_empty() {
        Err(ApiError::invalid(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

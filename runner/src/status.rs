//! Reports an execution's cumulative status to the control plane.
//!
//! The first update is the start: [`StatusReporter::start`] sends it and waits until the
//! control plane has stored it (IN_PROGRESS with `started_at`) before anything else happens, so
//! that a runner that dies afterwards is known to have started and is never replaced by a second
//! run of the same tool calls. After that, every change goes into one in-memory status; a single
//! flusher task per execution sends the latest snapshot at most once per interval. Because each
//! update carries the full status (the server replaces lists and maps), coalescing loses nothing
//! and keeps a chatty model from flooding the control plane. One flusher also keeps updates in
//! order.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionStatus, ConversationMessage,
};
use stigmer_proto::runner::v1::UpdateStatusRequest;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::ControlPlane;
use crate::http::Health;
use crate::inflight::{ExecHandle, Interrupt};

/// RFC 3339 UTC, e.g. `2026-01-19T03:00:00.123Z`.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// How long the final (terminal) status keeps being retried while the control plane is
/// unreachable. Past this, the lease expires and the server records the runner as lost.
const FINAL_RETRY_BUDGET: Duration = Duration::from_secs(60);

struct State {
    status: AgentExecutionStatus,
    dirty: bool,
}

struct Shared {
    client: ControlPlane,
    handle: Arc<ExecHandle>,
    state: Mutex<State>,
    notify: Notify,
    interval: Duration,
    health: Arc<Health>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a status that is still a valid message.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send(
        &self,
        status: AgentExecutionStatus,
        history: Option<Vec<ConversationMessage>>,
    ) -> Result<AgentExecution, tonic::Status> {
        let result = self
            .client
            .update_status(UpdateStatusRequest {
                execution_id: self.handle.execution_id.clone(),
                lease_id: self.handle.lease_id.clone(),
                status: Some(status),
                replace_session_history: history.is_some(),
                session_history: history.unwrap_or_default(),
            })
            .await;
        self.health
            .metrics
            .status_update(if result.is_ok() { "ok" } else { "error" });
        result
    }
}

/// The lease is gone: the server refused the update because another runner or the lease
/// sweeper owns the execution now.
fn is_lease_lost(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition | tonic::Code::NotFound
    )
}

/// Why an execution was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The lease is gone: the execution belongs to someone else now; do nothing for it.
    #[error("the control plane refused the start; the lease is gone: {0}")]
    LeaseLost(String),
    /// Cancelled, lost or shut down while the start was on its way.
    #[error("interrupted before the start was recorded")]
    Interrupted,
    /// The control plane could not be reached in time. Nothing ran; once this runner stops
    /// renewing the lease it expires, and the control plane requeues the execution (or, if the
    /// start did arrive and only the answer was lost, fails it as "runner lost").
    #[error("could not record the start within {budget:?}: {last}")]
    Undelivered { budget: Duration, last: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the control plane no longer accepts updates for this execution: {0}")]
    LeaseLost(String),
    #[error("could not deliver the final status within {budget:?}: {last}")]
    Undelivered { budget: Duration, last: String },
}

pub struct StatusReporter {
    shared: Arc<Shared>,
    stop: CancellationToken,
    flusher: Option<JoinHandle<()>>,
}

impl StatusReporter {
    /// A reporter holding `initial` (the start: IN_PROGRESS, `started_at`, the user's
    /// message). Nothing is sent until [`StatusReporter::start`].
    pub fn new(
        client: ControlPlane,
        handle: Arc<ExecHandle>,
        initial: AgentExecutionStatus,
        interval: Duration,
        health: Arc<Health>,
    ) -> Self {
        let shared = Arc::new(Shared {
            client,
            handle,
            state: Mutex::new(State {
                status: initial,
                dirty: false,
            }),
            notify: Notify::new(),
            interval,
            health,
        });
        Self {
            shared,
            stop: CancellationToken::new(),
            flusher: None,
        }
    }

    /// Sends the start and returns once the control plane has stored it; only then may the
    /// execution do anything (model requests, tool calls). One round trip when the control
    /// plane answers; retried through blips for up to `budget` (the lease's TTL: past it the
    /// lease is gone anyway). Stops waiting when the execution is interrupted. Starts the
    /// flusher on success.
    pub async fn start(&mut self, budget: Duration) -> Result<(), StartError> {
        let status = self.snapshot();
        let cancel = self.shared.handle.cancel.clone();
        deliver(
            &self.shared,
            status,
            None,
            budget,
            Some(&cancel),
            "start not recorded yet; nothing runs until it is",
        )
        .await
        .map_err(|failure| match failure {
            Failure::LeaseLost(message) => StartError::LeaseLost(message),
            Failure::Interrupted => StartError::Interrupted,
            Failure::Undelivered(last) => StartError::Undelivered { budget, last },
        })?;
        self.flusher = Some(tokio::spawn(flush_loop(
            self.shared.clone(),
            self.stop.clone(),
        )));
        Ok(())
    }

    /// Changes the status; the flusher sends it soon.
    pub fn update(&self, change: impl FnOnce(&mut AgentExecutionStatus)) {
        {
            let mut state = self.shared.state();
            change(&mut state.status);
            state.dirty = true;
        }
        self.shared.notify.notify_one();
    }

    pub fn snapshot(&self) -> AgentExecutionStatus {
        self.shared.state().status.clone()
    }

    async fn stop_flusher(&mut self) {
        self.stop.cancel();
        if let Some(flusher) = self.flusher.take()
            && let Err(e) = flusher.await
        {
            tracing::error!(error = %e, "status flusher panicked");
        }
    }

    /// Stops reporting without a final update (the lease is lost: someone else owns it).
    pub async fn abandon(mut self) {
        self.stop_flusher().await;
    }

    /// Applies the terminal change and delivers it, retrying while the control plane is
    /// unreachable, so that a terminal state is not lost to a blip. `history`, when given, is
    /// the session's new conversation, stored with it (before the session is freed).
    pub async fn finish(
        mut self,
        history: Option<Vec<ConversationMessage>>,
        change: impl FnOnce(&mut AgentExecutionStatus),
    ) -> Result<AgentExecution, ReportError> {
        self.stop_flusher().await;
        let status = {
            let mut state = self.shared.state();
            change(&mut state.status);
            state.dirty = false;
            state.status.clone()
        };
        deliver(
            &self.shared,
            status,
            history,
            FINAL_RETRY_BUDGET,
            None,
            "final status not delivered yet",
        )
        .await
        .map_err(|failure| match failure {
            Failure::LeaseLost(message) => ReportError::LeaseLost(message),
            // Without a cancellation token the delivery is never interrupted.
            Failure::Interrupted | Failure::Undelivered(_) => ReportError::Undelivered {
                budget: FINAL_RETRY_BUDGET,
                last: failure.to_string(),
            },
        })
    }
}

/// Why a status could not be delivered.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("lease lost: {0}")]
    LeaseLost(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Undelivered(String),
}

/// Sends `status` until the control plane stores it, retrying through blips (100 ms doubling
/// to 5 s) for up to `budget`; a refused lease ends it at once, and so does `cancel`. The one
/// retry loop of the start and of the final report.
async fn deliver(
    shared: &Shared,
    status: AgentExecutionStatus,
    history: Option<Vec<ConversationMessage>>,
    budget: Duration,
    cancel: Option<&CancellationToken>,
    waiting: &'static str,
) -> Result<AgentExecution, Failure> {
    let interrupted = async {
        match cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(interrupted);
    let deadline = Instant::now() + budget;
    let mut backoff = Duration::from_millis(100);
    loop {
        let sent = tokio::select! {
            sent = shared.send(status.clone(), history.clone()) => sent,
            () = &mut interrupted => return Err(Failure::Interrupted),
        };
        match sent {
            Ok(execution) => return Ok(execution),
            Err(s) if is_lease_lost(&s) => return Err(Failure::LeaseLost(s.message().to_string())),
            Err(s) if Instant::now() + backoff > deadline => {
                return Err(Failure::Undelivered(s.to_string()));
            }
            Err(s) => {
                tracing::warn!(
                    execution_id = %shared.handle.execution_id,
                    error = %s,
                    retry_in_ms = backoff.as_millis() as u64,
                    "{waiting}"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut interrupted => return Err(Failure::Interrupted),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Drop for StatusReporter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn flush_loop(shared: Arc<Shared>, stop: CancellationToken) {
    // The start was just sent: it counts as this interval's update, so an execution that ends
    // within one interval costs the control plane two updates (start and end), not three. Its
    // text reaches live subscribers meanwhile (`live`).
    let mut last_sent = Instant::now();
    loop {
        tokio::select! {
            _ = shared.notify.notified() => {}
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep_until(last_sent + shared.interval) => {}
            _ = stop.cancelled() => return,
        }
        let snapshot = {
            let mut state = shared.state();
            if !state.dirty {
                continue;
            }
            state.dirty = false;
            state.status.clone()
        };
        last_sent = Instant::now();
        match shared.send(snapshot, None).await {
            Ok(_) => {}
            Err(s) if is_lease_lost(&s) => {
                shared
                    .handle
                    .interrupt(Interrupt::Lost(s.message().to_string()));
                return;
            }
            Err(s) => {
                // Keep the change pending; the next tick (or the final update) carries it.
                tracing::warn!(
                    execution_id = %shared.handle.execution_id,
                    error = %s,
                    "status update failed; will retry"
                );
                shared.state().dirty = true;
                shared.notify.notify_one();
            }
        }
    }
}

//! RunnerService: how runners take work, keep it, and report on it.

use std::sync::Arc;
use std::time::Duration;

use stigmer_proto::agentexecution::v1::{AgentExecution, Session};
use stigmer_proto::runner::v1::runner_service_server::RunnerService;
use stigmer_proto::runner::v1::{
    CancellationRequest, ClaimRequest, ClaimResponse, HeartbeatRequest, HeartbeatResponse,
    HeldExecution, LostLease, PublishTextRequest, PublishTextResponse, UpdateSessionRequest,
    UpdateStatusRequest,
};
use tonic::{Request, Response};

use super::{ApiError, ApiResult, Shared, required, to_completion};
use crate::clock::{self, Now};
use crate::dispatch::{self, MAX_CLAIM_BATCH};
use crate::leases;
use crate::merge::merge_status;
use crate::secrets::masked;
use crate::store::{ExecutionRecord, Tx};
use crate::transitions;

pub struct RunnerApi {
    shared: Arc<Shared>,
}

impl RunnerApi {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl RunnerService for RunnerApi {
    async fn claim(&self, request: Request<ClaimRequest>) -> ApiResult<ClaimResponse> {
        let ClaimRequest {
            runner_id,
            max_executions,
            wait_ms,
            execution_ids,
        } = request.into_inner();
        required("runner_id", &runner_id)?;
        if !execution_ids.is_empty() {
            if execution_ids.len() > MAX_CLAIM_BATCH {
                return Err(ApiError::invalid(format!(
                    "at most {MAX_CLAIM_BATCH} execution_ids per claim"
                ))
                .into());
            }
            let outcome = self
                .shared
                .dispatcher
                .claim_ids(runner_id, execution_ids)
                .await
                .map_err(ApiError::from)?;
            self.shared.ended(&outcome.failed);
            return Ok(Response::new(ClaimResponse {
                executions: outcome.claimed,
                refused: outcome.refused,
            }));
        }
        if max_executions == 0 {
            return Err(ApiError::invalid("max_executions must be at least 1").into());
        }
        let request = dispatch::ClaimRequest {
            runner_id,
            max_executions: usize::try_from(max_executions)
                .unwrap_or(MAX_CLAIM_BATCH)
                .min(MAX_CLAIM_BATCH),
            wait: Duration::from_millis(u64::from(wait_ms)).min(self.shared.max_claim_wait),
        };
        let outcome = self
            .shared
            .dispatcher
            .claim(request)
            .await
            .map_err(ApiError::from)?;
        self.shared.ended(&outcome.failed);
        Ok(Response::new(ClaimResponse {
            executions: outcome.claimed,
            refused: Vec::new(),
        }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> ApiResult<HeartbeatResponse> {
        let HeartbeatRequest { runner_id, held } = request.into_inner();
        required("runner_id", &runner_id)?;
        let now = Now::read();
        let expires_at_ms = now.plus(self.shared.lease_ttl);
        if held.is_empty() {
            return Ok(Response::new(HeartbeatResponse {
                expires_at: clock::rfc3339(expires_at_ms),
                ..Default::default()
            }));
        }
        let response = self
            .shared
            .store
            .write(move |tx| heartbeat_in(tx, &held, now, expires_at_ms))
            .await?;
        for lost in &response.lost {
            tracing::info!(
                execution = %lost.execution_id,
                runner = %runner_id,
                reason = %lost.reason,
                "heartbeat for a lease the runner no longer holds"
            );
        }
        Ok(Response::new(response))
    }

    async fn update_status(
        &self,
        request: Request<UpdateStatusRequest>,
    ) -> ApiResult<AgentExecution> {
        let UpdateStatusRequest {
            execution_id,
            lease_id,
            status,
            session_history,
            replace_session_history,
        } = request.into_inner();
        required("execution_id", &execution_id)?;
        required("lease_id", &lease_id)?;
        let status = status.ok_or_else(|| ApiError::invalid("status is required"))?;
        let history = replace_session_history.then_some(session_history);
        let shared = Arc::clone(&self.shared);
        let record = to_completion(async move {
            let ttl = shared.lease_ttl;
            let record = shared
                .store
                .write(move |tx| {
                    let now = Now::read();
                    let mut record = held_execution(tx, &execution_id, &lease_id, now)?;
                    let now_text = now.rfc3339();
                    if let Some(history) = history {
                        save_history(tx, &record, history, &now_text)?;
                    }
                    record.status = merge_status(&record.status, status, &now_text)
                        .map_err(|err| ApiError::invalid(err.to_string()))?;
                    // An accepted update from the lease holder is the start, whatever it
                    // carries; the answer is the runner's proof that it may act.
                    transitions::start(&mut record.status, &now_text);
                    if record.phase().is_terminal() {
                        record.lease = None;
                    } else if let Some(lease) = record.lease.as_mut() {
                        // A status update is as good a sign of life as a heartbeat.
                        lease.expires_at_ms = now.plus(ttl);
                    }
                    tx.save_execution(&mut record)?;
                    Ok::<_, ApiError>(record)
                })
                .await?;
            if record.phase().is_terminal() {
                tracing::debug!(
                    execution = %record.id(),
                    phase = record.phase().as_str_name(),
                    "execution ended"
                );
                shared.ended(std::slice::from_ref(&record));
            } else {
                shared.publish(&record);
            }
            Ok(record)
        })
        .await?;
        Ok(Response::new(masked(record.to_execution())))
    }

    async fn update_session(&self, request: Request<UpdateSessionRequest>) -> ApiResult<Session> {
        let UpdateSessionRequest {
            execution_id,
            lease_id,
            session_id,
            sandbox_id,
            history,
            replace_history,
        } = request.into_inner();
        required("execution_id", &execution_id)?;
        required("lease_id", &lease_id)?;
        required("session_id", &session_id)?;
        let ttl = self.shared.lease_ttl;
        let session = self
            .shared
            .store
            .write(move |tx| {
                let now = Now::read();
                let record = held_execution(tx, &execution_id, &lease_id, now)?;
                if record.spec.session_id != session_id {
                    return Err(ApiError::invalid(format!(
                        "session '{session_id}' is not the session of execution '{execution_id}'"
                    )));
                }
                let mut session = tx.session(&session_id)?.ok_or_else(|| {
                    ApiError::NotFound(format!("session '{session_id}' not found"))
                })?;
                if !sandbox_id.is_empty() {
                    session.sandbox_id = sandbox_id;
                }
                if replace_history {
                    session.history = history;
                }
                session.updated_at = now.rfc3339();
                tx.put_session(&session)?;
                tx.renew_lease(&execution_id, now.plus(ttl))?;
                Ok::<_, ApiError>(session)
            })
            .await?;
        Ok(Response::new(session))
    }

    /// Never touches the store: live text is news only (the cumulative status stores it), so
    /// it costs one map lookup per delta. The lease is not checked per delta for the same
    /// reason; only callers with the runner role get here.
    async fn publish_text(
        &self,
        request: Request<PublishTextRequest>,
    ) -> ApiResult<PublishTextResponse> {
        let PublishTextRequest { runner_id, deltas } = request.into_inner();
        required("runner_id", &runner_id)?;
        if deltas.len() > MAX_TEXT_DELTAS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_TEXT_DELTAS} deltas per call, got {}",
                deltas.len()
            ))
            .into());
        }
        if let Some(position) = deltas.iter().position(|d| d.execution_id.is_empty()) {
            return Err(
                ApiError::invalid(format!("deltas[{position}].execution_id is required")).into(),
            );
        }
        for delta in deltas {
            self.shared.publish_text(delta);
        }
        Ok(Response::new(PublishTextResponse {}))
    }
}

/// Stores the history carried by a status update. The status must still land when the session
/// is gone (deleted meanwhile): a missing session is logged, not an error.
fn save_history(
    tx: &Tx<'_>,
    record: &ExecutionRecord,
    history: Vec<stigmer_proto::agentexecution::v1::ConversationMessage>,
    now: &str,
) -> Result<(), ApiError> {
    let session_id = &record.spec.session_id;
    let Some(mut session) = tx.session(session_id)? else {
        tracing::warn!(execution = %record.id(), session = %session_id, "session gone; history not saved");
        return Ok(());
    };
    session.history = history;
    session.updated_at = now.to_string();
    tx.put_session(&session)?;
    Ok(())
}

/// Deltas one `PublishText` call may carry; a runner sends what queued up since its last call.
pub const MAX_TEXT_DELTAS: usize = 4096;

/// The execution, if the runner presenting `lease_id` still holds it.
fn held_execution(
    tx: &Tx<'_>,
    execution_id: &str,
    lease_id: &str,
    now: Now,
) -> Result<ExecutionRecord, ApiError> {
    let record = tx.execution(execution_id)?;
    let state = record.as_ref().map(leases::state_of);
    leases::check(state.as_ref(), lease_id, now).map_err(ApiError::lease)?;
    record.ok_or_else(|| ApiError::lease(leases::LeaseRefusal::NotFound))
}

fn heartbeat_in(
    tx: &Tx<'_>,
    held: &[HeldExecution],
    now: Now,
    expires_at_ms: i64,
) -> Result<HeartbeatResponse, ApiError> {
    let mut response = HeartbeatResponse {
        expires_at: clock::rfc3339(expires_at_ms),
        ..Default::default()
    };
    for held in held {
        let state = tx.lease_state(&held.execution_id)?;
        match leases::check(state.as_ref(), &held.lease_id, now) {
            Ok(()) => {
                tx.renew_lease(&held.execution_id, expires_at_ms)?;
                if let Some(reason) = state.and_then(|state| state.cancel_reason) {
                    response.cancellations.push(CancellationRequest {
                        execution_id: held.execution_id.clone(),
                        reason,
                    });
                }
            }
            Err(refusal) => response.lost.push(LostLease {
                execution_id: held.execution_id.clone(),
                reason: refusal.to_string(),
            }),
        }
    }
    Ok(response)
}

//! ExecutionService: what clients do with executions and sessions.

use std::sync::Arc;

use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::execution_service_server::ExecutionService;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, CancelExecutionRequest, CreateExecutionRequest, ExecutionMetadata,
    GetExecutionRequest, GetSessionRequest, ListExecutionsRequest, ListExecutionsResponse, Session,
    SubscribeExecutionRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response};

use super::{ApiError, ApiResult, Shared, required, to_completion};
use crate::broadcast::{self, ExecutionStream, Snapshot};
use crate::clock::Now;
use crate::cloud::Cloud;
use crate::live::{self, EventStream};
use crate::secrets::masked;
use crate::store::{ExecutionFilter, ExecutionRecord, Tx};
use crate::transitions::{self, DEFAULT_CANCEL_REASON};

const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;

pub struct ExecutionApi {
    shared: Arc<Shared>,
}

impl ExecutionApi {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn read_execution(&self, id: &str) -> Result<ExecutionRecord, ApiError> {
        let lookup = id.to_string();
        self.shared
            .store
            .read(move |tx| tx.execution(&lookup).map_err(ApiError::from))
            .await?
            .ok_or_else(|| execution_not_found(id))
    }

    /// Cloud mode: a cursor on the execution's events stream, taken before the store read so
    /// that nothing committed after it is missed (any replica may have stored the next state).
    async fn events_cursor(&self, cloud: &Cloud, id: &str) -> Result<String, tonic::Status> {
        cloud.events_cursor(id).await.map_err(|err| {
            tracing::warn!(execution = %id, error = %err, "cannot read the events stream");
            tonic::Status::unavailable("live events are unavailable")
        })
    }

    /// Local mode: the stored execution and a state receiver subscribed before the read, so an
    /// update committed after the read still arrives; the subscription is dropped on error.
    async fn subscribe_and_read(
        &self,
        id: &str,
    ) -> Result<(watch::Receiver<Snapshot>, ExecutionRecord), ApiError> {
        let receiver = self.shared.broadcaster.subscribe(id);
        match self.read_execution(id).await {
            Ok(record) => {
                self.shared.broadcaster.publish(&record);
                Ok((receiver, record))
            }
            Err(e) => {
                drop(receiver);
                self.shared.broadcaster.forget(id);
                Err(e)
            }
        }
    }
}

/// What a cancellation request did.
enum Cancellation {
    /// Already ended: nothing to do.
    Unchanged,
    /// Nobody held it: cancelled on the spot.
    Ended,
    /// A runner holds it: it learns on its next heartbeat and reports CANCELLED itself.
    Requested,
}

#[tonic::async_trait]
impl ExecutionService for ExecutionApi {
    async fn create_execution(
        &self,
        request: Request<CreateExecutionRequest>,
    ) -> ApiResult<AgentExecution> {
        let CreateExecutionRequest { spec, labels } = request.into_inner();
        let mut spec = spec.ok_or_else(|| ApiError::invalid("spec is required"))?;
        required("spec.agent_id", &spec.agent_id)?;
        if spec.message.trim().is_empty() {
            return Err(ApiError::invalid("spec.message must not be empty").into());
        }
        let budget = spec.execution_config.as_ref().and_then(|c| c.token_budget);
        stigmer_proto::rules::check_token_budget(
            "spec.execution_config.token_budget",
            budget.map(i128::from),
        )
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let now = Now::read().rfc3339();
        let metadata = ExecutionMetadata {
            id: format!("exec-{}", uuid::Uuid::now_v7()),
            labels,
            created_at: now.clone(),
            ..Default::default()
        };
        let shared = Arc::clone(&self.shared);
        let record = to_completion(async move {
            let record = shared
                .store
                .write(move |tx| {
                    if tx.agent(&spec.agent_id)?.is_none() {
                        return Err(ApiError::NotFound(format!(
                            "agent '{}' not found; apply it first",
                            spec.agent_id
                        )));
                    }
                    spec.session_id = session_for(tx, &spec.session_id, &spec.agent_id, &now)?;
                    let record = ExecutionRecord::new(metadata, spec);
                    tx.insert_execution(&record)?;
                    Ok(record)
                })
                .await?;
            shared.dispatcher.wake(1);
            if let Some(cloud) = &shared.cloud {
                cloud.enqueue(record.id()).await;
            }
            Ok(record)
        })
        .await?;
        tracing::debug!(
            execution = %record.id(),
            agent = %record.spec.agent_id,
            session = %record.spec.session_id,
            "execution created"
        );
        Ok(Response::new(masked(record.to_execution())))
    }

    async fn get_execution(
        &self,
        request: Request<GetExecutionRequest>,
    ) -> ApiResult<AgentExecution> {
        let id = required("id", &request.get_ref().id)?.to_string();
        let record = self
            .shared
            .store
            .read(move |tx| tx.execution(&id)?.ok_or_else(|| execution_not_found(&id)))
            .await?;
        Ok(Response::new(masked(record.to_execution())))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> ApiResult<ListExecutionsResponse> {
        let filter = filter_from(request.into_inner())?;
        let executions = self
            .shared
            .store
            .read(move |tx| tx.list_executions(&filter).map_err(ApiError::from))
            .await?;
        Ok(Response::new(ListExecutionsResponse {
            executions: executions.into_iter().map(masked).collect(),
        }))
    }

    async fn cancel_execution(
        &self,
        request: Request<CancelExecutionRequest>,
    ) -> ApiResult<AgentExecution> {
        let CancelExecutionRequest { id, reason } = request.into_inner();
        required("id", &id)?;
        let reason = match reason.trim() {
            "" => DEFAULT_CANCEL_REASON.to_string(),
            reason => reason.to_string(),
        };
        let now = Now::read().rfc3339();
        let shared = Arc::clone(&self.shared);
        let record = to_completion(async move {
            let (record, cancellation) = shared
                .store
                .write(move |tx| cancel_in(tx, &id, reason, &now))
                .await?;
            match cancellation {
                Cancellation::Unchanged => {}
                Cancellation::Ended => {
                    tracing::info!(execution = %record.id(), "execution cancelled before it was claimed");
                    shared.ended(std::slice::from_ref(&record));
                }
                Cancellation::Requested => {
                    tracing::info!(execution = %record.id(), "cancellation requested from its runner");
                    if let (Some(cloud), Some(reason)) = (&shared.cloud, &record.cancel_reason) {
                        cloud.publish_cancel(record.id(), reason).await;
                    }
                }
            }
            Ok(record)
        })
        .await?;
        Ok(Response::new(masked(record.to_execution())))
    }

    type SubscribeStream = ExecutionStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeExecutionRequest>,
    ) -> ApiResult<Self::SubscribeStream> {
        let id = required("id", &request.get_ref().id)?.to_string();
        if let Some(cloud) = &self.shared.cloud {
            let cursor = self.events_cursor(cloud, &id).await?;
            let record = self.read_execution(&id).await?;
            return Ok(Response::new(cloud.follow(
                record,
                cursor,
                Arc::clone(&self.shared.store),
                self.shared.shutdown.clone(),
            )));
        }
        let (receiver, _) = self.subscribe_and_read(&id).await?;
        Ok(Response::new(broadcast::stream(
            receiver,
            self.shared.shutdown.clone(),
        )))
    }

    type SubscribeLiveStream = EventStream;

    async fn subscribe_live(
        &self,
        request: Request<SubscribeExecutionRequest>,
    ) -> ApiResult<Self::SubscribeLiveStream> {
        let id = required("id", &request.get_ref().id)?.to_string();
        if let Some(cloud) = &self.shared.cloud {
            // As `subscribe`; text entries share the events stream.
            let cursor = self.events_cursor(cloud, &id).await?;
            let record = self.read_execution(&id).await?;
            return Ok(Response::new(cloud.follow_live(
                record,
                cursor,
                Arc::clone(&self.shared.store),
                self.shared.shutdown.clone(),
            )));
        }
        // The text channel too before the read, so that no text after it is missed.
        let text = self.shared.live.subscribe(&id);
        let (receiver, record) = match self.subscribe_and_read(&id).await {
            Ok(found) => found,
            Err(e) => {
                drop(text);
                self.shared.live.prune();
                return Err(e.into());
            }
        };
        if record.phase().is_terminal() {
            self.shared.live.end(&id);
        }
        Ok(Response::new(live::stream(
            receiver,
            text,
            self.shared.shutdown.clone(),
        )))
    }

    async fn get_session(&self, request: Request<GetSessionRequest>) -> ApiResult<Session> {
        let id = required("id", &request.get_ref().id)?.to_string();
        let session = self
            .shared
            .store
            .read(move |tx| {
                tx.session(&id)?
                    .ok_or_else(|| ApiError::NotFound(format!("session '{id}' not found")))
            })
            .await?;
        Ok(Response::new(session))
    }
}

fn execution_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("execution '{id}' not found"))
}

/// The session a new execution joins: the given one, which must belong to the same agent, or
/// a new one whose sandbox is named after it.
fn session_for(
    tx: &Tx<'_>,
    session_id: &str,
    agent_id: &str,
    now: &str,
) -> Result<String, ApiError> {
    if session_id.is_empty() {
        let id = format!("sess-{}", uuid::Uuid::now_v7());
        tx.put_session(&Session {
            id: id.clone(),
            agent_id: agent_id.to_string(),
            sandbox_id: id.clone(),
            history: Vec::new(),
            created_at: now.to_string(),
            updated_at: now.to_string(),
        })?;
        return Ok(id);
    }
    let session = tx
        .session(session_id)?
        .ok_or_else(|| ApiError::NotFound(format!("session '{session_id}' not found")))?;
    if session.agent_id != agent_id {
        return Err(ApiError::invalid(format!(
            "session '{session_id}' belongs to agent '{}', not '{agent_id}'",
            session.agent_id
        )));
    }
    Ok(session.id)
}

fn cancel_in(
    tx: &Tx<'_>,
    id: &str,
    reason: String,
    now: &str,
) -> Result<(ExecutionRecord, Cancellation), ApiError> {
    let mut record = tx.execution(id)?.ok_or_else(|| execution_not_found(id))?;
    if record.phase().is_terminal() {
        return Ok((record, Cancellation::Unchanged));
    }
    if record.lease.is_none() {
        transitions::cancel(&mut record, &reason, now);
        tx.save_execution(&mut record)?;
        return Ok((record, Cancellation::Ended));
    }
    // The first reason given is the one the runner reports.
    if record.cancel_reason.is_none() {
        record.cancel_reason = Some(reason);
        tx.save_execution(&mut record)?;
    }
    Ok((record, Cancellation::Requested))
}

fn filter_from(request: ListExecutionsRequest) -> Result<ExecutionFilter, ApiError> {
    let non_empty = |value: String| (!value.is_empty()).then_some(value);
    for &phase in &request.phases {
        match ExecutionPhase::try_from(phase) {
            Ok(ExecutionPhase::Unspecified) | Err(_) => {
                return Err(ApiError::invalid(format!(
                    "unknown phase {phase} in filter"
                )));
            }
            Ok(_) => {}
        }
    }
    let limit = match request.limit {
        0 => DEFAULT_LIST_LIMIT,
        limit => limit.min(MAX_LIST_LIMIT),
    };
    Ok(ExecutionFilter {
        agent_id: non_empty(request.agent_id),
        session_id: non_empty(request.session_id),
        phases: request.phases,
        limit,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn list_limit_defaults_and_caps() {
        let limit = |limit| {
            filter_from(ListExecutionsRequest {
                limit,
                ..Default::default()
            })
            .unwrap()
            .limit
        };
        assert_eq!(limit(0), 100);
        assert_eq!(limit(7), 7);
        assert_eq!(limit(5000), 1000);
    }

    #[test]
    fn list_filter_refuses_unknown_phases() {
        for phase in [0, 99] {
            let request = ListExecutionsRequest {
                phases: vec![phase],
                ..Default::default()
            };
            assert!(matches!(
                filter_from(request),
                Err(ApiError::InvalidArgument(_))
            ));
        }
    }
}

//! The runner API: claims and long-polls, leases, heartbeats, status and session updates.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::time::{Duration, Instant};

use common::*;
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::{
    AgentExecutionStatus, CancelExecutionRequest, ContentBlock, ConversationMessage,
    GetSessionRequest, MessageType, TodoItem, content_block,
};
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use stigmer_proto::runner::v1::{
    ClaimRequest, HeartbeatRequest, HeartbeatResponse, HeldExecution, UpdateSessionRequest,
    UpdateStatusRequest,
};
use tonic::Code;

async fn heartbeat(
    server: &TestServer,
    runner: &str,
    held: &[(String, String)],
) -> HeartbeatResponse {
    server
        .runners()
        .heartbeat(HeartbeatRequest {
            runner_id: runner.into(),
            held: held
                .iter()
                .map(|(execution_id, lease_id)| HeldExecution {
                    execution_id: execution_id.clone(),
                    lease_id: lease_id.clone(),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn held(claimed: &stigmer_proto::runner::v1::ClaimedExecution) -> (String, String) {
    (claimed_id(claimed), lease_id(claimed))
}

#[tokio::test]
async fn claim_hands_out_work_with_agent_session_and_lease() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let agent = apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;

    let claimed = claim_one(&server, "runner-1").await;
    assert_eq!(claimed.execution.as_ref().unwrap(), &execution);
    assert_eq!(claimed.agent.as_ref().unwrap(), &agent);
    let session = claimed.session.as_ref().unwrap();
    assert_eq!(session.id, session_of(&execution));
    let lease = claimed.lease.as_ref().unwrap();
    assert_eq!(lease.lease_id.len(), 36, "a uuid: {}", lease.lease_id);
    assert_eq!(lease.ttl_ms, 400);
    assert!(lease.expires_at.ends_with('Z'));

    // Claimed but not started: still pending, and not handed out twice.
    assert_eq!(
        phase(&get(&server, &id(&execution)).await),
        ExecutionPhase::ExecutionPending
    );
    assert!(claim(&server, "runner-2", 5, 0).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn claim_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut runners = server.runners();
    let no_runner = runners
        .claim(ClaimRequest {
            runner_id: String::new(),
            max_executions: 1,
            wait_ms: 0,
            execution_ids: Vec::new(),
        })
        .await;
    assert!(
        assert_code(no_runner, Code::InvalidArgument)
            .message()
            .contains("runner_id")
    );
    let no_slots = runners
        .claim(ClaimRequest {
            runner_id: "r".into(),
            max_executions: 0,
            wait_ms: 0,
            execution_ids: Vec::new(),
        })
        .await;
    assert!(
        assert_code(no_slots, Code::InvalidArgument)
            .message()
            .contains("max_executions")
    );
    server.stop().await;
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_work_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let mut runners = server.runners();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        runners
            .claim(ClaimRequest {
                runner_id: "runner-1".into(),
                max_executions: 1,
                wait_ms: 4000,
                execution_ids: Vec::new(),
            })
            .await
            .map(|response| response.into_inner().executions)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !waiting.is_finished(),
        "claim returned before any work existed"
    );
    let execution = create(&server, "alpha", "").await;
    let claimed = waiting.await.unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed_id(&claimed[0]), id(&execution));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn long_poll_ends_empty_after_wait_ms_and_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    // The cap is far from the requested wait so that a loaded machine cannot blur the two.
    config.max_claim_wait = Duration::from_millis(1_000);
    let server = TestServer::start(config).await;

    let started = Instant::now();
    assert!(claim(&server, "runner-1", 1, 150).await.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_millis(900), "{waited:?}");

    let started = Instant::now();
    assert!(claim(&server, "runner-1", 1, 60_000).await.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1_000), "{waited:?}");
    assert!(
        waited < Duration::from_secs(4),
        "capped by max_claim_wait: {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_runner_that_disconnects_while_waiting_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    // Long enough that a wrongly claimed execution could not come back through expiry.
    config.lease_ttl = Duration::from_secs(30);
    let server = TestServer::start(config).await;
    apply_agent(&server, "alpha").await;
    let channel = server.connect().await;
    let waiting = tokio::spawn(async move {
        RunnerServiceClient::with_interceptor(channel, bearer())
            .claim(ClaimRequest {
                runner_id: "gone".into(),
                max_executions: 1,
                wait_ms: 4000,
                execution_ids: Vec::new(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    waiting.abort();
    let _ = waiting.await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let execution = create(&server, "alpha", "").await;
    let claimed = claim(&server, "runner-2", 1, 1000).await;
    assert_eq!(
        claimed.len(),
        1,
        "the execution went to the runner that left"
    );
    assert_eq!(claimed_id(&claimed[0]), id(&execution));
    server.stop().await;
}

#[tokio::test]
async fn claim_honours_max_executions_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id(&create(&server, "alpha", "").await));
    }
    let first: Vec<String> = claim(&server, "runner-1", 2, 0)
        .await
        .iter()
        .map(claimed_id)
        .collect();
    assert_eq!(first, ids[..2]);
    let rest: Vec<String> = claim(&server, "runner-2", 10, 0)
        .await
        .iter()
        .map(claimed_id)
        .collect();
    assert_eq!(rest, ids[2..]);
    server.stop().await;
}

#[tokio::test]
async fn executions_of_one_session_run_one_at_a_time_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let first = create(&server, "alpha", "").await;
    let session = session_of(&first);
    let second = create(&server, "alpha", &session).await;
    let third = create(&server, "alpha", &session).await;
    let other = create(&server, "alpha", "").await;

    let claimed = claim(&server, "runner-1", 10, 0).await;
    let claimed_ids: Vec<String> = claimed.iter().map(claimed_id).collect();
    assert_eq!(claimed_ids, [id(&first), id(&other)]);
    let first_claim = claimed.into_iter().next().unwrap();

    // Started, still running: the session stays busy.
    report(&server, &first_claim, ExecutionPhase::ExecutionInProgress).await;
    assert!(claim(&server, "runner-2", 10, 100).await.is_empty());

    // A waiting runner gets the next one as soon as the first ends.
    let mut runners = server.runners();
    let waiting = tokio::spawn(async move {
        runners
            .claim(ClaimRequest {
                runner_id: "runner-2".into(),
                max_executions: 10,
                wait_ms: 4000,
                execution_ids: Vec::new(),
            })
            .await
            .map(|response| response.into_inner().executions)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    report(&server, &first_claim, ExecutionPhase::ExecutionCompleted).await;
    let next = waiting.await.unwrap().unwrap();
    assert_eq!(
        next.iter().map(claimed_id).collect::<Vec<_>>(),
        [id(&second)]
    );
    assert_eq!(next[0].session.as_ref().unwrap().id, session);
    // The third waits for the second.
    assert!(claim(&server, "runner-3", 10, 0).await.is_empty());
    report(&server, &next[0], ExecutionPhase::ExecutionFailed).await;
    let last = claim(&server, "runner-3", 10, 0).await;
    assert_eq!(
        last.iter().map(claimed_id).collect::<Vec<_>>(),
        [id(&third)]
    );
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_renew_leases_past_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    report(&server, &claimed, ExecutionPhase::ExecutionInProgress).await;

    // Three TTLs long, kept alive only by heartbeats.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let response = heartbeat(&server, "runner-1", &[held(&claimed)]).await;
        assert!(response.lost.is_empty(), "{:?}", response.lost);
        assert!(response.cancellations.is_empty());
        assert!(response.expires_at.ends_with('Z'));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = report(&server, &claimed, ExecutionPhase::ExecutionCompleted).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_reports_cancellation_and_the_runner_reports_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    report(&server, &claimed, ExecutionPhase::ExecutionInProgress).await;

    let after_cancel = server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id(&execution),
            reason: "user pressed stop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // A runner holds it, so it keeps running until the runner stops it.
    assert_eq!(phase(&after_cancel), ExecutionPhase::ExecutionInProgress);

    let response = heartbeat(&server, "runner-1", &[held(&claimed)]).await;
    assert!(response.lost.is_empty());
    assert_eq!(response.cancellations.len(), 1);
    assert_eq!(response.cancellations[0].execution_id, id(&execution));
    assert_eq!(response.cancellations[0].reason, "user pressed stop");

    let cancelled = server
        .runners()
        .update_status(UpdateStatusRequest {
            execution_id: id(&execution),
            lease_id: lease_id(&claimed),
            status: Some(AgentExecutionStatus {
                phase: ExecutionPhase::ExecutionCancelled.into(),
                error: "user pressed stop".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&cancelled), ExecutionPhase::ExecutionCancelled);
    assert!(!status(&cancelled).completed_at.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_reports_leases_the_runner_no_longer_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    create(&server, "alpha", "").await;
    let claimed = claim(&server, "runner-1", 2, 0).await;
    let (running, finished) = (&claimed[0], &claimed[1]);
    report(&server, finished, ExecutionPhase::ExecutionCompleted).await;

    let response = heartbeat(
        &server,
        "runner-1",
        &[
            held(running),
            (claimed_id(running), "not-my-lease".into()),
            held(finished),
            ("exec-unknown".into(), "lease".into()),
        ],
    )
    .await;
    let reasons: Vec<(String, String)> = response
        .lost
        .into_iter()
        .map(|lost| (lost.execution_id, lost.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                claimed_id(running),
                "execution is held by another lease".to_string()
            ),
            (
                claimed_id(finished),
                "execution already ended (EXECUTION_COMPLETED)".to_string()
            ),
            (
                "exec-unknown".to_string(),
                "execution not found".to_string()
            ),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn updates_without_the_lease_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    let mut runners = server.runners();

    let mut wrong = phase_update(&claimed, ExecutionPhase::ExecutionInProgress, vec![]);
    wrong.lease_id = "not-the-lease".into();
    let status = assert_code(runners.update_status(wrong).await, Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "lease not held: execution is held by another lease"
    );

    let mut unknown = phase_update(&claimed, ExecutionPhase::ExecutionInProgress, vec![]);
    unknown.execution_id = "exec-unknown".into();
    assert_code(
        runners.update_status(unknown).await,
        Code::FailedPrecondition,
    );

    report(&server, &claimed, ExecutionPhase::ExecutionCompleted).await;
    let late = phase_update(&claimed, ExecutionPhase::ExecutionFailed, vec![]);
    let status = assert_code(runners.update_status(late).await, Code::FailedPrecondition);
    assert!(status.message().contains("already ended"), "{status:?}");

    let mut no_status = phase_update(&claimed, ExecutionPhase::ExecutionFailed, vec![]);
    no_status.status = None;
    assert_code(
        runners.update_status(no_status).await,
        Code::InvalidArgument,
    );
    server.stop().await;
}

#[tokio::test]
async fn update_with_an_expired_lease_is_refused_even_before_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.lease_ttl = Duration::from_millis(150);
    // The sweep must not get there first: this is about the lease deadline itself.
    config.sweep_interval = Duration::from_secs(60);
    let server = TestServer::start(config).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = phase_update(&claimed, ExecutionPhase::ExecutionInProgress, vec![]);
    let status = assert_code(
        server.runners().update_status(late).await,
        Code::FailedPrecondition,
    );
    assert_eq!(status.message(), "lease not held: lease expired");
    server.stop().await;
}

#[tokio::test]
async fn status_updates_merge_and_stamp_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    let mut runners = server.runners();

    let mut update = phase_update(
        &claimed,
        ExecutionPhase::ExecutionInProgress,
        ai_messages(2, 3),
    );
    update.status.as_mut().unwrap().todos.insert(
        "t1".into(),
        TodoItem {
            id: "t1".into(),
            content: "plan".into(),
            ..Default::default()
        },
    );
    let started = runners.update_status(update).await.unwrap().into_inner();
    let started_at = status(&started).started_at.clone();
    assert!(!started_at.is_empty());
    assert_eq!(status(&started).messages.len(), 2);

    // Empty lists and unset scalars leave the stored values alone.
    let unchanged = runners
        .update_status(UpdateStatusRequest {
            status: Some(AgentExecutionStatus::default()),
            ..phase_update(&claimed, ExecutionPhase::Unspecified, vec![])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.status, started.status);

    let done = runners
        .update_status(phase_update(
            &claimed,
            ExecutionPhase::ExecutionCompleted,
            ai_messages(3, 3),
        ))
        .await
        .unwrap()
        .into_inner();
    let done_status = status(&done);
    assert_eq!(
        done_status.messages.len(),
        3,
        "a non-empty list replaces the stored one"
    );
    assert_eq!(done_status.todos.len(), 1);
    assert_eq!(done_status.started_at, started_at);
    assert!(!done_status.completed_at.is_empty());
    assert_eq!(get(&server, &claimed_id(&claimed)).await, done);

    let back = phase_update(&claimed, ExecutionPhase::ExecutionPending, vec![]);
    assert_code(runners.update_status(back).await, Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn going_back_to_pending_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    report(&server, &claimed, ExecutionPhase::ExecutionInProgress).await;
    let back = phase_update(&claimed, ExecutionPhase::ExecutionPending, vec![]);
    assert_code(
        server.runners().update_status(back).await,
        Code::InvalidArgument,
    );
    server.stop().await;
}

#[tokio::test]
async fn runners_update_their_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let other = create(&server, "alpha", "").await;
    let execution = create(&server, "alpha", "").await;
    let claims = claim(&server, "runner-1", 2, 0).await;
    let claimed = claims
        .iter()
        .find(|c| claimed_id(c) == id(&execution))
        .unwrap();
    let history = vec![ConversationMessage {
        role: 1,
        content: vec![ContentBlock {
            block: Some(content_block::Block::Text("hello".into())),
        }],
    }];
    let request = |session_id: String, sandbox_id: &str, replace_history| UpdateSessionRequest {
        execution_id: id(&execution),
        lease_id: lease_id(claimed),
        session_id,
        sandbox_id: sandbox_id.into(),
        history: history.clone(),
        replace_history,
    };
    let mut runners = server.runners();

    let wrong = runners
        .update_session(request(session_of(&other), "", true))
        .await;
    assert_code(wrong, Code::InvalidArgument);
    let mut no_lease = request(session_of(&execution), "", true);
    no_lease.lease_id = "nope".into();
    assert_code(
        runners.update_session(no_lease).await,
        Code::FailedPrecondition,
    );

    let sandbox_only = runners
        .update_session(request(session_of(&execution), "daytona-123", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sandbox_only.sandbox_id, "daytona-123");
    assert!(sandbox_only.history.is_empty());

    let with_history = runners
        .update_session(request(session_of(&execution), "", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        with_history.sandbox_id, "daytona-123",
        "empty sandbox_id keeps the stored one"
    );
    assert_eq!(with_history.history, history);
    let stored = server
        .executions()
        .get_session(GetSessionRequest {
            id: session_of(&execution),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored, with_history);
    server.stop().await;
}

#[tokio::test]
async fn expired_never_started_work_goes_to_another_runner() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let first = claim_one(&server, "runner-1").await;

    // runner-1 goes silent; runner-2 is waiting and gets it once the lease expires.
    let started = Instant::now();
    let second = claim(&server, "runner-2", 1, 3000).await;
    assert_eq!(second.len(), 1);
    assert_eq!(claimed_id(&second[0]), id(&execution));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(lease_id(&second[0]), lease_id(&first));

    let response = heartbeat(&server, "runner-1", &[held(&first)]).await;
    assert_eq!(response.lost.len(), 1);
    let late = phase_update(&first, ExecutionPhase::ExecutionInProgress, vec![]);
    assert_code(
        server.runners().update_status(late).await,
        Code::FailedPrecondition,
    );
    let running = report(&server, &second[0], ExecutionPhase::ExecutionInProgress).await;
    assert_eq!(phase(&running), ExecutionPhase::ExecutionInProgress);
    server.stop().await;
}

#[tokio::test]
async fn expired_started_work_fails_as_runner_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    report(&server, &claimed, ExecutionPhase::ExecutionInProgress).await;

    let ended = wait_for_end(&server, &id(&execution)).await;
    assert_eq!(phase(&ended), ExecutionPhase::ExecutionFailed);
    let ended_status = status(&ended);
    assert_eq!(
        ended_status.error,
        "runner lost: lease expired (runner runner-1)"
    );
    assert!(!ended_status.completed_at.is_empty());
    assert_eq!(
        ended_status.messages.last().unwrap().r#type(),
        MessageType::MessageSystem
    );
    // Not re-run.
    assert!(claim(&server, "runner-2", 1, 100).await.is_empty());
    let response = heartbeat(&server, "runner-1", &[held(&claimed)]).await;
    assert!(
        response.lost[0].reason.contains("runner lost"),
        "{:?}",
        response.lost
    );
    server.stop().await;
}

/// "Started" is the first status update the control plane accepts from the lease holder,
/// whatever it carries: even one without a phase starts the execution (IN_PROGRESS with
/// `started_at`), and from then on a lost lease fails it rather than handing it out again.
#[tokio::test]
async fn the_first_accepted_update_is_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    let held = get(&server, &id(&execution)).await;
    assert_eq!(phase(&held), ExecutionPhase::ExecutionPending);
    assert!(status(&held).started_at.is_empty());

    let started = server
        .runners()
        .update_status(phase_update(
            &claimed,
            ExecutionPhase::Unspecified,
            ai_messages(1, 3),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&started), ExecutionPhase::ExecutionInProgress);
    assert!(!status(&started).started_at.is_empty());

    let ended = wait_for_end(&server, &id(&execution)).await;
    assert_eq!(phase(&ended), ExecutionPhase::ExecutionFailed);
    assert!(
        status(&ended).error.starts_with("runner lost"),
        "{}",
        status(&ended).error
    );
    assert!(claim(&server, "runner-2", 1, 100).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn expired_work_with_a_cancellation_request_ends_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    claim_one(&server, "runner-1").await;
    server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id(&execution),
            reason: "stop it".into(),
        })
        .await
        .unwrap();
    let ended = wait_for_end(&server, &id(&execution)).await;
    assert_eq!(phase(&ended), ExecutionPhase::ExecutionCancelled);
    assert_eq!(status(&ended).error, "stop it");
    assert!(claim(&server, "runner-2", 1, 100).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn large_claims_are_split_to_fit_a_default_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let big = "x".repeat(1_500_000);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = server
            .executions()
            .create_execution(stigmer_proto::agentexecution::v1::CreateExecutionRequest {
                spec: Some(spec("alpha", "", &big)),
                labels: Default::default(),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(id(&created));
    }
    // Default client limits (4 MiB) still decode every answer.
    let first: Vec<String> = claim(&server, "runner-1", 10, 0)
        .await
        .iter()
        .map(claimed_id)
        .collect();
    assert_eq!(first, ids[..2]);
    let rest: Vec<String> = claim(&server, "runner-1", 10, 0)
        .await
        .iter()
        .map(claimed_id)
        .collect();
    assert_eq!(rest, ids[2..]);
    server.stop().await;
}

#[tokio::test]
async fn status_updates_may_exceed_the_default_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    create(&server, "alpha", "").await;
    let claimed = claim_one(&server, "runner-1").await;
    let mut runners = server.runners().max_decoding_message_size(16 * 1024 * 1024);
    let update = phase_update(
        &claimed,
        ExecutionPhase::ExecutionInProgress,
        ai_messages(6, 1024 * 1024),
    );
    let merged = runners.update_status(update).await.unwrap().into_inner();
    assert_eq!(status(&merged).messages.len(), 6);
    server.stop().await;
}

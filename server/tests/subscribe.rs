//! Live execution state: Subscribe streams.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::time::Duration;

use common::*;
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, CancelExecutionRequest, SubscribeExecutionRequest,
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

async fn subscribe(executions: &mut Executions, id: &str) -> Streaming<AgentExecution> {
    executions
        .subscribe(SubscribeExecutionRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<AgentExecution>) -> Option<AgentExecution> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("no state arrived in time")
        .map(|item| item.unwrap())
}

#[tokio::test]
async fn starts_with_the_current_state_follows_updates_and_ends_after_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let mut stream = subscribe(&mut server.executions(), &id(&execution)).await;
    assert_eq!(next(&mut stream).await.unwrap(), execution);

    let claimed = claim_one(&server, "runner-1").await;
    let mut runners = server.runners();
    let running = runners
        .update_status(phase_update(
            &claimed,
            ExecutionPhase::ExecutionInProgress,
            ai_messages(1, 5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await.unwrap(), running);
    let more = runners
        .update_status(phase_update(
            &claimed,
            ExecutionPhase::Unspecified,
            ai_messages(2, 5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await.unwrap(), more);
    let done = report(&server, &claimed, ExecutionPhase::ExecutionCompleted).await;
    assert_eq!(next(&mut stream).await.unwrap(), done);
    assert_eq!(
        next(&mut stream).await,
        None,
        "the stream ends after the terminal state"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_ended_execution_yields_its_final_state_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let cancelled = server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id(&execution),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = subscribe(&mut server.executions(), &id(&execution)).await;
    assert_eq!(next(&mut stream).await.unwrap(), cancelled);
    assert_eq!(next(&mut stream).await, None);
    server.stop().await;
}

#[tokio::test]
async fn cancelling_pending_work_ends_open_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let mut stream = subscribe(&mut server.executions(), &id(&execution)).await;
    assert_eq!(next(&mut stream).await.unwrap(), execution);
    server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id(&execution),
            reason: "no longer needed".into(),
        })
        .await
        .unwrap();
    let ended = next(&mut stream).await.unwrap();
    assert_eq!(phase(&ended), ExecutionPhase::ExecutionCancelled);
    assert_eq!(next(&mut stream).await, None);
    server.stop().await;
}

#[tokio::test]
async fn unknown_executions_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let result = server
        .executions()
        .subscribe(SubscribeExecutionRequest {
            id: "exec-nope".into(),
        })
        .await;
    assert_eq!(
        assert_code(result, Code::NotFound).message(),
        "execution 'exec-nope' not found"
    );
    server.stop().await;
}

/// A subscriber that never reads must not hold up the runner's updates nor other
/// subscribers, and when it finally reads it ends with the latest state. The states are
/// large so that they overflow HTTP/2 flow control and socket buffers: a subscriber feed
/// with a bounded queue that waits for space would stall here.
#[tokio::test]
async fn a_subscriber_that_never_reads_blocks_nobody_and_ends_with_the_latest_state() {
    const UPDATES: usize = 24;
    const MESSAGE_SIZE: usize = 100 * 1024;

    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.lease_ttl = Duration::from_secs(30);
    let server = TestServer::start(config).await;
    apply_agent(&server, "alpha").await;
    let execution = create(&server, "alpha", "").await;
    let execution_id = id(&execution);

    // Its own connection, as a separate client would have: flow control is per connection.
    let mut slow_client =
        ExecutionServiceClient::with_interceptor(server.connect().await, bearer());
    let mut slow = subscribe(&mut slow_client, &execution_id).await;

    let mut fast = subscribe(&mut server.executions(), &execution_id).await;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(item) = fast.next().await {
            seen.push(item.unwrap());
        }
        seen
    });

    let claimed = claim_one(&server, "runner-1").await;
    let mut runners = server.runners();
    let updates = async {
        for count in 1..=UPDATES {
            runners
                .update_status(phase_update(
                    &claimed,
                    ExecutionPhase::ExecutionInProgress,
                    ai_messages(count, MESSAGE_SIZE),
                ))
                .await
                .unwrap();
        }
        runners
            .update_status(phase_update(
                &claimed,
                ExecutionPhase::ExecutionCompleted,
                ai_messages(UPDATES + 1, MESSAGE_SIZE),
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let done = tokio::time::timeout(PATIENCE, updates)
        .await
        .expect("updates stalled behind a subscriber that does not read");

    let seen = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("a reading subscriber stalled behind one that does not read")
        .unwrap();
    assert_eq!(seen.last(), Some(&done));

    let mut slow_seen = Vec::new();
    while let Some(item) = next(&mut slow).await {
        slow_seen.push(item);
    }
    assert_eq!(
        slow_seen.last(),
        Some(&done),
        "the slow subscriber ends with the latest state"
    );
    assert_eq!(status(&done).messages.len(), UPDATES + 1);
    assert!(
        slow_seen.len() < UPDATES + 2,
        "the slow subscriber got every state ({}), so it never fell behind and this test \
         proved nothing",
        slow_seen.len()
    );
    server.stop().await;
}

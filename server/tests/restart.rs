//! Persistence and recovery across a restart on the same data directory.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::time::Duration;

use common::*;
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agent::v1::ListAgentsRequest;
use stigmer_proto::agentexecution::v1::{
    ContentBlock, ConversationMessage, GetSessionRequest, ListExecutionsRequest, content_block,
};
use stigmer_proto::runner::v1::{HeartbeatRequest, HeldExecution, UpdateSessionRequest};

#[tokio::test]
async fn state_survives_a_restart_and_leases_follow_the_expiry_rule() {
    let dir = tempfile::tempdir().unwrap();
    let short_lease = Duration::from_millis(500);
    let mut first_config = fast_config(dir.path());
    first_config.lease_ttl = short_lease;

    // First run: one execution started, one claimed but not started, one never claimed.
    let server = TestServer::start(first_config).await;
    apply_agent(&server, "alpha").await;
    let started = create(&server, "alpha", "").await;
    let not_started = create(&server, "alpha", "").await;
    let claims = claim(&server, "runner-1", 2, 0).await;
    assert_eq!(claims.len(), 2);
    report(&server, &claims[0], ExecutionPhase::ExecutionInProgress).await;
    let queued = create(&server, "alpha", "").await;
    server.stop().await;

    // Down for longer than the leases.
    tokio::time::sleep(short_lease + Duration::from_millis(100)).await;

    let mut long_lease = fast_config(dir.path());
    long_lease.lease_ttl = Duration::from_secs(30);
    let server = TestServer::start(long_lease.clone()).await;
    let agents = server
        .agents()
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].name, "alpha");
    let all = server
        .executions()
        .list_executions(ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .executions;
    assert_eq!(all.len(), 3);

    // Started before the restart: failed, not re-run. Recovery runs before serving, so this
    // holds on the very first request.
    let lost = get(&server, &id(&started)).await;
    assert_eq!(phase(&lost), ExecutionPhase::ExecutionFailed);
    assert_eq!(
        status(&lost).error,
        "runner lost: lease expired (runner runner-1)"
    );

    // Never started (claimed or not): dispatched again, oldest first.
    let again = claim(&server, "runner-2", 10, 0).await;
    let again_ids: Vec<String> = again.iter().map(claimed_id).collect();
    assert_eq!(again_ids, [id(&not_started), id(&queued)]);
    let resumed = &again[0];
    report(&server, resumed, ExecutionPhase::ExecutionInProgress).await;
    let history = vec![ConversationMessage {
        role: 1,
        content: vec![ContentBlock {
            block: Some(content_block::Block::Text("hello".into())),
        }],
    }];
    server
        .runners()
        .update_session(UpdateSessionRequest {
            execution_id: claimed_id(resumed),
            lease_id: lease_id(resumed),
            session_id: session_of(&not_started),
            sandbox_id: "box-1".into(),
            history: history.clone(),
            replace_history: true,
        })
        .await
        .unwrap();
    server.stop().await;

    // Third run, while runner-2's lease is still live: its claim is kept.
    let server = TestServer::start(long_lease).await;
    let kept = get(&server, &id(&not_started)).await;
    assert_eq!(phase(&kept), ExecutionPhase::ExecutionInProgress);
    let heartbeat = server
        .runners()
        .heartbeat(HeartbeatRequest {
            runner_id: "runner-2".into(),
            held: vec![HeldExecution {
                execution_id: claimed_id(resumed),
                lease_id: lease_id(resumed),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(heartbeat.lost.is_empty(), "{:?}", heartbeat.lost);
    assert!(
        claim(&server, "runner-3", 10, 0).await.is_empty(),
        "nothing is handed out twice"
    );
    let session = server
        .executions()
        .get_session(GetSessionRequest {
            id: session_of(&not_started),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.sandbox_id, "box-1");
    assert_eq!(session.history, history);
    let done = report(&server, resumed, ExecutionPhase::ExecutionCompleted).await;
    assert_eq!(phase(&done), ExecutionPhase::ExecutionCompleted);
    server.stop().await;
}

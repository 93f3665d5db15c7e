//! The execution API as clients use it: create, get, list, sessions, cancel, secrets.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use std::collections::HashMap;

use common::*;
use stigmer_proto::ExecutionPhase;
use stigmer_proto::agentexecution::v1::{
    CancelExecutionRequest, CreateExecutionRequest, GetExecutionRequest, GetSessionRequest,
    ListExecutionsRequest, MessageType, RuntimeEnvValue, SubscribeExecutionRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn create_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    apply_agent(&server, "beta").await;
    let other_session = session_of(&create(&server, "beta", "").await);
    let mut executions = server.executions();

    let cases = [
        (None, Code::InvalidArgument, "spec is required".to_string()),
        (
            Some(spec("alpha", "", "  ")),
            Code::InvalidArgument,
            "spec.message must not be empty".to_string(),
        ),
        (
            Some(spec("", "", "hi")),
            Code::InvalidArgument,
            "spec.agent_id is required".to_string(),
        ),
        (
            Some(spec("ghost", "", "hi")),
            Code::NotFound,
            "agent 'ghost' not found; apply it first".to_string(),
        ),
        (
            Some(spec("alpha", "sess-nope", "hi")),
            Code::NotFound,
            "session 'sess-nope' not found".to_string(),
        ),
        (
            Some(spec("alpha", &other_session, "hi")),
            Code::InvalidArgument,
            format!("session '{other_session}' belongs to agent 'beta', not 'alpha'"),
        ),
    ];
    for (spec, code, message) in cases {
        let result = executions
            .create_execution(CreateExecutionRequest {
                spec,
                labels: HashMap::new(),
            })
            .await;
        assert_eq!(assert_code(result, code).message(), message);
    }
    server.stop().await;
}

#[tokio::test]
async fn create_opens_or_joins_sessions_and_get_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let mut executions = server.executions();

    let first = executions
        .create_execution(CreateExecutionRequest {
            spec: Some(spec("alpha", "", "hello")),
            labels: HashMap::from([("team".to_string(), "core".to_string())]),
        })
        .await
        .unwrap()
        .into_inner();
    let metadata = first.metadata.clone().unwrap();
    assert!(metadata.id.starts_with("exec-"), "{}", metadata.id);
    assert!(metadata.created_at.ends_with('Z'));
    assert_eq!(metadata.labels["team"], "core");
    assert_eq!(phase(&first), ExecutionPhase::ExecutionPending);

    let session_id = session_of(&first);
    assert!(session_id.starts_with("sess-"), "{session_id}");
    let session = executions
        .get_session(GetSessionRequest {
            id: session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.agent_id, "alpha");
    assert_eq!(
        session.sandbox_id, session_id,
        "sandbox named after the session"
    );
    assert!(session.history.is_empty());

    let second = create(&server, "alpha", &session_id).await;
    assert_eq!(session_of(&second), session_id);
    assert_ne!(id(&second), id(&first));

    assert_eq!(get(&server, &id(&first)).await, first);
    let missing = executions
        .get_execution(GetExecutionRequest {
            id: "exec-nope".into(),
        })
        .await;
    assert_eq!(
        assert_code(missing, Code::NotFound).message(),
        "execution 'exec-nope' not found"
    );
    let missing = executions
        .get_session(GetSessionRequest {
            id: "sess-nope".into(),
        })
        .await;
    assert_code(missing, Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn list_filters_newest_first_with_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    apply_agent(&server, "beta").await;
    let a1 = create(&server, "alpha", "").await;
    let a2 = create(&server, "alpha", &session_of(&a1)).await;
    let b1 = create(&server, "beta", "").await;
    let a3 = create(&server, "alpha", "").await;
    // Put one of them in progress so that phase filters have something to tell apart.
    let claimed = claim_one(&server, "runner-1").await;
    assert_eq!(claimed_id(&claimed), id(&a1));
    report(&server, &claimed, ExecutionPhase::ExecutionInProgress).await;

    let list = |request: ListExecutionsRequest| {
        let mut executions = server.executions();
        async move {
            executions
                .list_executions(request)
                .await
                .unwrap()
                .into_inner()
                .executions
                .iter()
                .map(id)
                .collect::<Vec<_>>()
        }
    };
    let all = list(ListExecutionsRequest::default()).await;
    assert_eq!(all, [id(&a3), id(&b1), id(&a2), id(&a1)]);
    let alpha = list(ListExecutionsRequest {
        agent_id: "alpha".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(alpha, [id(&a3), id(&a2), id(&a1)]);
    let session = list(ListExecutionsRequest {
        session_id: session_of(&a1),
        ..Default::default()
    })
    .await;
    assert_eq!(session, [id(&a2), id(&a1)]);
    let running = list(ListExecutionsRequest {
        phases: vec![ExecutionPhase::ExecutionInProgress.into()],
        ..Default::default()
    })
    .await;
    assert_eq!(running, [id(&a1)]);
    let pending_alpha = list(ListExecutionsRequest {
        agent_id: "alpha".into(),
        phases: vec![ExecutionPhase::ExecutionPending.into()],
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(pending_alpha, [id(&a3)]);

    let bad = server
        .executions()
        .list_executions(ListExecutionsRequest {
            phases: vec![17],
            ..Default::default()
        })
        .await;
    assert_code(bad, Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn cancelling_unclaimed_work_ends_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let mut executions = server.executions();
    let with_reason = create(&server, "alpha", "").await;
    let without_reason = create(&server, "alpha", "").await;

    let cancelled = executions
        .cancel_execution(CancelExecutionRequest {
            id: id(&with_reason),
            reason: "wrong question".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&cancelled), ExecutionPhase::ExecutionCancelled);
    let ended = status(&cancelled);
    assert_eq!(ended.error, "wrong question");
    assert!(!ended.completed_at.is_empty());
    let last = ended.messages.last().unwrap();
    assert_eq!(last.r#type(), MessageType::MessageSystem);
    assert!(last.content.contains("wrong question"), "{}", last.content);
    assert_eq!(get(&server, &id(&with_reason)).await, cancelled);

    let cancelled = executions
        .cancel_execution(CancelExecutionRequest {
            id: id(&without_reason),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&cancelled).error, "cancelled by user");

    // Cancelling again changes nothing; cancelled work is never handed out.
    let again = executions
        .cancel_execution(CancelExecutionRequest {
            id: id(&with_reason),
            reason: "other".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&again).error, "wrong question");
    assert!(claim(&server, "runner-1", 10, 0).await.is_empty());

    let missing = executions
        .cancel_execution(CancelExecutionRequest {
            id: "exec-nope".into(),
            reason: String::new(),
        })
        .await;
    assert_code(missing, Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn secret_runtime_env_is_masked_for_clients_and_full_for_runners() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    apply_agent(&server, "alpha").await;
    let env = |value: &str, is_secret| RuntimeEnvValue {
        value: value.into(),
        is_secret,
    };
    let mut request_spec = spec("alpha", "", "deploy");
    request_spec.runtime_env = HashMap::from([
        ("API_TOKEN".to_string(), env("s3cret-value", true)),
        ("REGION".to_string(), env("eu-west-1", false)),
    ]);
    let mut executions = server.executions();
    let created = executions
        .create_execution(CreateExecutionRequest {
            spec: Some(request_spec.clone()),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let masked = HashMap::from([
        ("API_TOKEN".to_string(), env("***", true)),
        ("REGION".to_string(), env("eu-west-1", false)),
    ]);
    let subscribed = executions
        .subscribe(SubscribeExecutionRequest { id: id(&created) })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let listed = executions
        .list_executions(ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .executions
        .remove(0);
    for seen in [
        &created,
        &get(&server, &id(&created)).await,
        &listed,
        &subscribed,
    ] {
        assert_eq!(seen.spec.as_ref().unwrap().runtime_env, masked);
    }

    let claimed = claim_one(&server, "runner-1").await;
    let runner_view = claimed.execution.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(runner_view.runtime_env, request_spec.runtime_env);
    server.stop().await;
}

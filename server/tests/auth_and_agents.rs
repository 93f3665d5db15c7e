//! Authentication and the agent API, over real gRPC against an in-process server.

#![allow(clippy::unwrap_used)] // Tests panic on purpose when something is off.

mod common;

use common::*;
use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use stigmer_proto::agent::v1::{
    Agent, ApplyAgentRequest, DeleteAgentRequest, GetAgentRequest, ListAgentsRequest, ModelConfig,
};
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use stigmer_proto::agentexecution::v1::{CancelExecutionRequest, GetExecutionRequest};
use stigmer_proto::runner::v1::HeartbeatRequest;
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn every_api_refuses_missing_wrong_or_malformed_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let headers = [
        None,
        Some("Bearer wrong-key".to_string()),
        Some(format!("Basic {KEY}")),
        Some(KEY.to_string()),
        Some(format!("Bearer {KEY}x")),
    ];
    for header in headers {
        let auth = Auth(header.clone());
        let agents = AgentServiceClient::with_interceptor(server.channel(), auth.clone())
            .list_agents(ListAgentsRequest {})
            .await;
        let executions = ExecutionServiceClient::with_interceptor(server.channel(), auth.clone())
            .get_execution(GetExecutionRequest { id: "x".into() })
            .await;
        let runners = RunnerServiceClient::with_interceptor(server.channel(), auth)
            .heartbeat(HeartbeatRequest {
                runner_id: "r".into(),
                held: vec![],
            })
            .await;
        for status in [
            assert_code(agents, Code::Unauthenticated),
            assert_code(executions, Code::Unauthenticated),
            assert_code(runners, Code::Unauthenticated),
        ] {
            assert_eq!(
                status.message(),
                "missing or invalid bearer token",
                "{header:?}"
            );
        }
    }
    // The right key works on the same channel.
    server
        .agents()
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn any_configured_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.api_keys = vec!["first".into(), "second".into()];
    let server = TestServer::start(config).await;
    for key in ["first", "second"] {
        let auth = Auth(Some(format!("Bearer {key}")));
        AgentServiceClient::with_interceptor(server.channel(), auth)
            .list_agents(ListAgentsRequest {})
            .await
            .unwrap();
    }
    let refused = server.agents().list_agents(ListAgentsRequest {}).await;
    assert_code(refused, Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn health_answers_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut health = HealthClient::new(server.channel());
    for service in [
        "",
        "stigmer.agent.v1.AgentService",
        "stigmer.agentexecution.v1.ExecutionService",
        "stigmer.runner.v1.RunnerService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_code(unknown, Code::NotFound);
    server.stop().await;
}

fn agent(name: &str, provider: &str, temperature: Option<f32>) -> ApplyAgentRequest {
    ApplyAgentRequest {
        agent: Some(Agent {
            name: name.into(),
            model: Some(ModelConfig {
                provider: provider.into(),
                temperature,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn apply_refuses_invalid_agents() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut agents = server.agents();
    let cases = [
        (agent("", "", None), "agent name is required"),
        (
            agent("Bad_Name", "", None),
            "agent name 'Bad_Name' is invalid",
        ),
        (agent("-lead", "", None), "invalid"),
        (agent(&"a".repeat(64), "", None), "invalid"),
        (
            agent("ok", "gemini", None),
            "model.provider 'gemini' is not supported",
        ),
        (
            agent("ok", "openai", Some(2.5)),
            "model.temperature 2.5 is out of range",
        ),
        (agent("ok", "openai", Some(-1.0)), "out of range"),
        (ApplyAgentRequest { agent: None }, "agent is required"),
    ];
    for (request, expected) in cases {
        let status = assert_code(agents.apply_agent(request).await, Code::InvalidArgument);
        assert!(status.message().contains(expected), "{status:?}");
    }
    assert!(
        agents
            .list_agents(ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn apply_get_list_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut agents = server.agents();

    let first = agents
        .apply_agent(agent("writer", "anthropic", Some(0.5)))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created_at.ends_with('Z'), "{}", first.created_at);
    assert_eq!(first.created_at, first.updated_at);
    apply_agent(&server, "analyst").await;

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut changed = agent("writer", "ollama", None);
    changed.agent.as_mut().unwrap().instructions = "Write tersely.".into();
    let updated = agents.apply_agent(changed).await.unwrap().into_inner();
    assert_eq!(
        updated.created_at, first.created_at,
        "created_at kept on update"
    );
    assert!(updated.updated_at > first.updated_at);

    let fetched = agents
        .get_agent(GetAgentRequest {
            name: "writer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, updated);
    assert_eq!(fetched.model.unwrap().provider, "ollama");

    let names: Vec<String> = agents
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .map(|agent| agent.name)
        .collect();
    assert_eq!(names, ["analyst", "writer"]);

    let missing = agents
        .get_agent(GetAgentRequest {
            name: "ghost".into(),
        })
        .await;
    assert_eq!(
        assert_code(missing, Code::NotFound).message(),
        "agent 'ghost' not found"
    );
    let missing = agents
        .delete_agent(DeleteAgentRequest {
            name: "ghost".into(),
        })
        .await;
    assert!(
        assert_code(missing, Code::NotFound)
            .message()
            .contains("'ghost'")
    );

    // An agent with work that has not ended cannot be deleted.
    let execution = create(&server, "writer", "").await;
    let refused = agents
        .delete_agent(DeleteAgentRequest {
            name: "writer".into(),
        })
        .await;
    assert_code(refused, Code::FailedPrecondition);
    server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id(&execution),
            reason: String::new(),
        })
        .await
        .unwrap();
    agents
        .delete_agent(DeleteAgentRequest {
            name: "writer".into(),
        })
        .await
        .unwrap();
    let gone = agents
        .get_agent(GetAgentRequest {
            name: "writer".into(),
        })
        .await;
    assert_code(gone, Code::NotFound);
    server.stop().await;
}

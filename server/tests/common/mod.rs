//! An in-process server on an ephemeral loopback port, with authenticated gRPC clients and
//! helpers for the steps most tests share.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use stigmer_proto::ExecutionPhase;
use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use stigmer_proto::agent::v1::{Agent, ApplyAgentRequest};
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionSpec, AgentExecutionStatus, AgentMessage, CreateExecutionRequest,
    GetExecutionRequest, MessageType, SubscribeExecutionRequest,
};
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use stigmer_proto::runner::v1::{ClaimRequest, ClaimedExecution, UpdateStatusRequest};
use stigmer_server::{ServerConfig, ServerError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const KEY: &str = "dummy-local-key";
/// Upper bound for waiting on something the server does in the background.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Adds `authorization: <value>` when set.
#[derive(Clone)]
pub struct Auth(pub Option<String>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        Ok(request)
    }
}

pub type Agents = AgentServiceClient<InterceptedService<Channel, Auth>>;
pub type Executions = ExecutionServiceClient<InterceptedService<Channel, Auth>>;
pub type Runners = RunnerServiceClient<InterceptedService<Channel, Auth>>;

/// Short leases and sweeps so that expiry tests take well under a second.
pub fn fast_config(dir: &Path) -> ServerConfig {
    let mut config = ServerConfig::local(dir);
    config.lease_ttl = Duration::from_millis(400);
    config.sweep_interval = Duration::from_millis(25);
    config.max_claim_wait = Duration::from_secs(5);
    config
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    channel: Channel,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stigmer_server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            addr,
            stop: Some(stop),
            task,
            channel,
        }
    }

    /// Stops gracefully and checks that the server ended cleanly and promptly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.channel);
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked");
        result.expect("server failed");
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A fresh connection, for tests that need one of their own (e.g. to drop it).
    pub async fn connect(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn agents(&self) -> Agents {
        AgentServiceClient::with_interceptor(self.channel(), bearer())
    }

    pub fn executions(&self) -> Executions {
        ExecutionServiceClient::with_interceptor(self.channel(), bearer())
    }

    pub fn runners(&self) -> Runners {
        RunnerServiceClient::with_interceptor(self.channel(), bearer())
    }
}

pub fn bearer() -> Auth {
    Auth(Some(format!("Bearer {KEY}")))
}

pub async fn apply_agent(server: &TestServer, name: &str) -> Agent {
    server
        .agents()
        .apply_agent(ApplyAgentRequest {
            agent: Some(Agent {
                name: name.into(),
                instructions: "Be helpful.".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn spec(agent: &str, session: &str, message: &str) -> AgentExecutionSpec {
    AgentExecutionSpec {
        agent_id: agent.into(),
        session_id: session.into(),
        message: message.into(),
        ..Default::default()
    }
}

pub async fn create(server: &TestServer, agent: &str, session: &str) -> AgentExecution {
    server
        .executions()
        .create_execution(CreateExecutionRequest {
            spec: Some(spec(agent, session, "hello")),
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn get(server: &TestServer, id: &str) -> AgentExecution {
    server
        .executions()
        .get_execution(GetExecutionRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

pub async fn claim(
    server: &TestServer,
    runner: &str,
    max: u32,
    wait_ms: u32,
) -> Vec<ClaimedExecution> {
    server
        .runners()
        .claim(ClaimRequest {
            runner_id: runner.into(),
            max_executions: max,
            wait_ms,
            execution_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .executions
}

pub async fn claim_one(server: &TestServer, runner: &str) -> ClaimedExecution {
    let mut claimed = claim(server, runner, 1, 2000).await;
    assert_eq!(claimed.len(), 1, "expected one execution to claim");
    claimed.remove(0)
}

pub fn id(execution: &AgentExecution) -> String {
    execution.metadata.as_ref().unwrap().id.clone()
}

pub fn session_of(execution: &AgentExecution) -> String {
    execution.spec.as_ref().unwrap().session_id.clone()
}

pub fn phase(execution: &AgentExecution) -> ExecutionPhase {
    execution.status.as_ref().unwrap().phase()
}

pub fn status(execution: &AgentExecution) -> &AgentExecutionStatus {
    execution.status.as_ref().unwrap()
}

pub fn claimed_id(claimed: &ClaimedExecution) -> String {
    id(claimed.execution.as_ref().unwrap())
}

pub fn lease_id(claimed: &ClaimedExecution) -> String {
    claimed.lease.as_ref().unwrap().lease_id.clone()
}

pub fn ai_messages(count: usize, size: usize) -> Vec<AgentMessage> {
    (0..count)
        .map(|i| AgentMessage {
            r#type: MessageType::MessageAi.into(),
            content: format!("{i}:{}", "x".repeat(size)),
            ..Default::default()
        })
        .collect()
}

pub fn phase_update(
    claimed: &ClaimedExecution,
    phase: ExecutionPhase,
    messages: Vec<AgentMessage>,
) -> UpdateStatusRequest {
    UpdateStatusRequest {
        execution_id: claimed_id(claimed),
        lease_id: lease_id(claimed),
        status: Some(AgentExecutionStatus {
            phase: phase.into(),
            messages,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn report(
    server: &TestServer,
    claimed: &ClaimedExecution,
    phase: ExecutionPhase,
) -> AgentExecution {
    server
        .runners()
        .update_status(phase_update(claimed, phase, Vec::new()))
        .await
        .unwrap()
        .into_inner()
}

/// Follows the execution until it ends, and returns its final state.
pub async fn wait_for_end(server: &TestServer, id: &str) -> AgentExecution {
    let mut stream = server
        .executions()
        .subscribe(SubscribeExecutionRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    let read_all = async {
        while let Some(item) = stream.next().await {
            last = Some(item.unwrap());
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("execution did not end in time");
    let last = last.expect("subscription yielded nothing");
    assert!(
        phase(&last).is_terminal(),
        "stream ended before a terminal state"
    );
    last
}

pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
) -> tonic::Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

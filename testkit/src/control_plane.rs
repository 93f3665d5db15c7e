//! A real control plane (stigmer-server's library) on an ephemeral loopback port, with
//! authenticated clients for tests. It can be stopped and started again on the same data
//! directory to test restart safety.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stigmer_proto::agent::v1::agent_service_client::AgentServiceClient;
use stigmer_proto::agent::v1::{Agent, ApplyAgentRequest, ModelConfig};
use stigmer_proto::agentexecution::v1::execution_service_client::ExecutionServiceClient;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, AgentExecutionSpec, CreateExecutionRequest, ExecutionPhase,
    GetExecutionRequest, SubscribeExecutionRequest,
};
use stigmer_server::ServerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

/// Adds the bearer key to every call.
#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("bad key"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

pub type Agents = AgentServiceClient<InterceptedService<Channel, Bearer>>;
pub type Executions = ExecutionServiceClient<InterceptedService<Channel, Bearer>>;

pub struct TestControlPlane {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// Set for a server started with TLS: the helpers then connect to [`Self::endpoint_https`].
    client_tls: Option<ClientTlsConfig>,
}

impl TestControlPlane {
    /// Starts on 127.0.0.1:0 with the local key and the given lease settings.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(ServerConfig::local(data_dir), None).await
    }

    /// Starts with a custom config; `addr` reuses a previous port (for restarts).
    pub async fn start_with(config: ServerConfig, addr: Option<SocketAddr>) -> Self {
        let bind = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = bind_retrying(bind).await;
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let data_dir = config.data_dir.clone();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            stigmer_server::serve(config, listener, async move { signal.cancelled().await })
                .await
                .expect("control plane serves");
        });
        Self {
            addr,
            data_dir,
            stop,
            task: Some(task),
            client_tls: None,
        }
    }

    /// For a server configured with TLS: the helpers (`agents()`, `executions()`, ...) connect
    /// with these settings (typically trusting the test CA) to [`Self::endpoint_https`].
    pub fn with_client_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.client_tls = Some(tls);
        self
    }

    /// The plaintext endpoint (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The TLS endpoint by name (`https://localhost:PORT`), as test certificates are issued
    /// for `localhost`.
    pub fn endpoint_https(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Graceful stop; returns when the server has released its port and database.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("control plane task");
        }
    }

    pub async fn channel(&self) -> Channel {
        let endpoint = match &self.client_tls {
            None => Channel::from_shared(self.endpoint()).expect("endpoint"),
            Some(tls) => Channel::from_shared(self.endpoint_https())
                .expect("endpoint")
                .tls_config(tls.clone())
                .expect("client TLS settings"),
        };
        endpoint.connect().await.expect("connect to control plane")
    }

    pub async fn agents(&self) -> Agents {
        AgentServiceClient::with_interceptor(
            self.channel().await,
            Bearer(stigmer_proto::LOCAL_API_KEY.into()),
        )
    }

    pub async fn executions(&self) -> Executions {
        ExecutionServiceClient::with_interceptor(
            self.channel().await,
            Bearer(stigmer_proto::LOCAL_API_KEY.into()),
        )
    }

    /// Applies an agent with the given instructions and no model overrides.
    pub async fn apply_agent(&self, name: &str, instructions: &str) -> Agent {
        self.agents()
            .await
            .apply_agent(ApplyAgentRequest {
                agent: Some(Agent {
                    name: name.into(),
                    instructions: instructions.into(),
                    model: Some(ModelConfig::default()),
                    ..Default::default()
                }),
            })
            .await
            .expect("apply agent")
            .into_inner()
    }

    pub async fn create_execution(
        &self,
        agent: &str,
        session_id: &str,
        message: &str,
    ) -> AgentExecution {
        self.executions()
            .await
            .create_execution(CreateExecutionRequest {
                spec: Some(AgentExecutionSpec {
                    agent_id: agent.into(),
                    session_id: session_id.into(),
                    message: message.into(),
                    ..Default::default()
                }),
                labels: Default::default(),
            })
            .await
            .expect("create execution")
            .into_inner()
    }

    pub async fn get_execution(&self, id: &str) -> AgentExecution {
        self.executions()
            .await
            .get_execution(GetExecutionRequest { id: id.into() })
            .await
            .expect("get execution")
            .into_inner()
    }

    /// Follows the execution's stream until it is terminal; returns the last state.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> AgentExecution {
        tokio::time::timeout(timeout, self.follow(id, |_| {}))
            .await
            .unwrap_or_else(|_| panic!("execution {id} not terminal within {timeout:?}"))
    }

    /// Streams every state to `seen` until the terminal one, which it returns.
    pub async fn follow(&self, id: &str, mut seen: impl FnMut(&AgentExecution)) -> AgentExecution {
        let mut stream = self
            .executions()
            .await
            .subscribe(SubscribeExecutionRequest { id: id.into() })
            .await
            .expect("subscribe")
            .into_inner();
        let mut last = None;
        while let Some(item) = stream.message().await.expect("stream item") {
            seen(&item);
            last = Some(item);
        }
        let last = last.expect("stream ended without any state");
        assert!(
            phase(&last).is_terminal(),
            "stream ended before a terminal state: {:?}",
            phase(&last)
        );
        last
    }

    /// Waits until the execution reaches `wanted` (polling; for non-terminal phases).
    pub async fn wait_phase(
        &self,
        id: &str,
        wanted: ExecutionPhase,
        timeout: Duration,
    ) -> AgentExecution {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = self.get_execution(id).await;
            if phase(&e) == wanted {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "execution {id} is {:?}, not {wanted:?}, after {timeout:?}",
                phase(&e)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn phase(e: &AgentExecution) -> ExecutionPhase {
    e.status
        .as_ref()
        .map(|s| s.phase())
        .unwrap_or(ExecutionPhase::Unspecified)
}

/// A restarted server reuses its port; the old socket may linger for a moment.
async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    let mut last = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr}: {last:?}");
}

//! The gRPC client to the control plane's runner API, with the bearer key on every call.

use std::time::Duration;

use stigmer_proto::agentexecution::v1::{AgentExecution, Session};
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use stigmer_proto::runner::v1::{
    ClaimRequest, ClaimResponse, HeartbeatRequest, HeartbeatResponse, UpdateSessionRequest,
    UpdateStatusRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
pub struct BearerAuth {
    value: MetadataValue<Ascii>,
}

impl BearerAuth {
    pub fn new(key: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {key}")
            .parse()
            .map_err(|_| ClientError::InvalidKey)?;
        Ok(Self { value })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(req)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("STIGMER_API_KEY contains characters that cannot be sent in a gRPC header")]
    InvalidKey,
    #[error("'{endpoint}' is not a valid control plane endpoint: {source}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "cannot reach the control plane at {endpoint}: {detail}\n  \
         Start it with `stigmer local start` (or `cargo run -p stigmer-server`), \
         or point STIGMER_BACKEND_ENDPOINT at a running one."
    )]
    Unreachable { endpoint: String, detail: String },
    #[error(
        "the control plane at {endpoint} refused the API key: {message}\n  \
         Set STIGMER_API_KEY to a key it accepts (local mode: dummy-local-key)."
    )]
    Unauthenticated { endpoint: String, message: String },
    #[error("control plane call failed: {0}")]
    Rpc(#[from] tonic::Status),
}

type Inner = RunnerServiceClient<InterceptedService<Channel, BearerAuth>>;

/// A cheap-to-clone handle on the runner API.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Inner,
    endpoint: String,
}

impl ControlPlane {
    /// Connects and proves the key is accepted, failing fast with an actionable message.
    pub async fn connect(
        endpoint: &str,
        api_key: &str,
        runner_id: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let auth = BearerAuth::new(api_key)?;
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|source| ClientError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                source,
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                endpoint: endpoint.to_string(),
                detail: error_chain(&e),
            })?;
        let client = Self {
            inner: RunnerServiceClient::with_interceptor(channel, auth),
            endpoint: endpoint.to_string(),
        };
        client.check_key(runner_id).await?;
        Ok(client)
    }

    /// An empty heartbeat: cheap, authenticated, and changes nothing on the server.
    async fn check_key(&self, runner_id: &str) -> Result<(), ClientError> {
        match self
            .heartbeat(HeartbeatRequest {
                runner_id: runner_id.to_string(),
                held: Vec::new(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                Err(ClientError::Unauthenticated {
                    endpoint: self.endpoint.clone(),
                    message: s.message().to_string(),
                })
            }
            Err(s) if s.code() == tonic::Code::Unavailable => Err(ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: s.message().to_string(),
            }),
            Err(s) => Err(ClientError::Rpc(s)),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<ClaimResponse, tonic::Status> {
        Ok(self.inner.clone().claim(req).await?.into_inner())
    }

    pub async fn heartbeat(
        &self,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, tonic::Status> {
        Ok(self.inner.clone().heartbeat(req).await?.into_inner())
    }

    pub async fn update_status(
        &self,
        req: UpdateStatusRequest,
    ) -> Result<AgentExecution, tonic::Status> {
        Ok(self.inner.clone().update_status(req).await?.into_inner())
    }

    pub async fn update_session(
        &self,
        req: UpdateSessionRequest,
    ) -> Result<Session, tonic::Status> {
        Ok(self.inner.clone().update_session(req).await?.into_inner())
    }
}

/// `a: b: c` from an error and its sources, for one-line messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

//! The gRPC client to the control plane's runner API, with the bearer key on every call.

use std::time::Duration;

use std::path::Path;
use stigmer_proto::agentexecution::v1::{AgentExecution, Session};
use stigmer_proto::runner::v1::runner_service_client::RunnerServiceClient;
use stigmer_proto::runner::v1::{
    ClaimRequest, ClaimResponse, HeartbeatRequest, HeartbeatResponse, PublishTextRequest,
    UpdateSessionRequest, UpdateStatusRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;

use stigmer_auth::keyfile::TokenSource;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Statuses are cumulative and the server answers an update with the merged execution: allow
/// large ones (the server accepts up to 64 MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Adds `authorization: Bearer <key>` to every request. In cloud mode the key comes from a
/// token source that follows a rotated key file, so each call reads the current token.
#[derive(Clone)]
pub enum BearerAuth {
    Static(MetadataValue<Ascii>),
    Rotating(TokenSource),
}

impl BearerAuth {
    pub fn new(key: &str) -> Result<Self, ClientError> {
        header_value(key)
            .map(Self::Static)
            .ok_or(ClientError::InvalidKey)
    }
}

fn header_value(key: &str) -> Option<MetadataValue<Ascii>> {
    format!("Bearer {key}").parse().ok()
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = match self {
            BearerAuth::Static(v) => v.clone(),
            BearerAuth::Rotating(source) => header_value(&source.current()).ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "the API token holds characters not allowed in a header",
                )
            })?,
        };
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// How to reach the control plane.
pub struct Connection<'a> {
    pub endpoint: &'a str,
    pub auth: BearerAuth,
    /// Cloud mode: TLS with these roots; the CA file is named in handshake errors.
    pub tls: Option<(ClientTlsConfig, Option<&'a Path>)>,
    pub runner_id: &'a str,
    pub timeout: Duration,
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
    #[error("{0}")]
    Tls(#[from] stigmer_auth::tls::TlsError),
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
    pub async fn connect(c: Connection<'_>) -> Result<Self, ClientError> {
        let endpoint = c.endpoint;
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|source| ClientError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                source,
            })?
            .connect_timeout(c.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let mut ca_file = None;
        if let Some((tls, ca)) = c.tls {
            ca_file = ca;
            builder = builder
                .tls_config(tls)
                .map_err(|source| ClientError::InvalidEndpoint {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
        }
        let channel = builder.connect().await.map_err(|e| match ca_file {
            Some(_) => ClientError::Tls(stigmer_auth::tls::explain_connect_error(
                endpoint, ca_file, &e,
            )),
            None => ClientError::Unreachable {
                endpoint: endpoint.to_string(),
                detail: stigmer_contract::error_chain(&e),
            },
        })?;
        let client = Self {
            inner: RunnerServiceClient::with_interceptor(channel, c.auth)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            endpoint: endpoint.to_string(),
        };
        client.check_key(c.runner_id).await?;
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

    pub async fn publish_text(&self, req: PublishTextRequest) -> Result<(), tonic::Status> {
        self.inner.clone().publish_text(req).await?;
        Ok(())
    }
}

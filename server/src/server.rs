//! Wiring: open the store, recover, serve the gRPC services until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stigmer_auth::{JwtError, TlsError, Verifier, VerifierConfig};
use stigmer_proto::agent::v1::agent_service_server::AgentServiceServer;
use stigmer_proto::agentexecution::v1::execution_service_server::ExecutionServiceServer;
use stigmer_proto::runner::v1::runner_service_server::RunnerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::Shared;
use crate::api::agents::AgentApi;
use crate::api::executions::ExecutionApi;
use crate::api::runner::RunnerApi;
use crate::auth::{Api, Authenticated, BearerAuth, Role};
use crate::cloud::{Cloud, CloudError};
use crate::config::{ConfigError, ServerConfig};
use crate::data_dir::{self, DataDirError};
use crate::store::{Store, StoreError};
use crate::sweep;

/// Detects runners and clients that vanished without closing their connection, so that
/// their long-polls and streams end.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

/// Statuses are cumulative, so a long execution's updates outgrow gRPC's 4 MiB default.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("recovering leases after start-up failed: {0}")]
    Recovery(#[source] StoreError),
    #[error(transparent)]
    Redis(#[from] CloudError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("JWT verification key: {0}")]
    Jwt(#[source] JwtError),
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// An opened, recovered control plane, ready to serve. Opening before binding the port lets
/// a caller report store problems before it announces an address.
pub struct ControlPlane {
    shared: Arc<Shared>,
    auth: BearerAuth,
    tls: Option<ServerTlsConfig>,
    sweep_interval: Duration,
}

impl ControlPlane {
    /// Opens the store in `config.data_dir` and applies the lease rules to what the previous
    /// run left: expired claims are requeued or ended; live ones are kept, since their runner
    /// may still be alive and heartbeating.
    pub async fn open(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        // Credentials and TLS files are checked before the store is touched: a typo in a path
        // must not cost a lease recovery pass.
        let tls = config
            .tls
            .as_ref()
            .map(|files| stigmer_auth::server_tls(&files.cert, &files.key))
            .transpose()?;
        let verifier = match &config.jwt {
            None => None,
            Some(jwt) => {
                stigmer_auth::ensure_crypto_provider();
                let verifier = Verifier::new(VerifierConfig {
                    issuer: jwt.issuer.clone(),
                    audience: jwt.audience.clone(),
                    key: Some(jwt.key.clone()),
                })
                .map_err(ServerError::Jwt)?;
                // A wrong JWKS URL fails start-up rather than every call.
                verifier.prefetch().await.map_err(ServerError::Jwt)?;
                tracing::info!(checks = %verifier.checks_made(), "JWT bearer tokens accepted");
                Some(Arc::new(verifier))
            }
        };
        let auth = BearerAuth::new(
            config
                .api_keys
                .iter()
                .map(|key| (key.as_str(), Role::Any))
                .chain(
                    config
                        .runner_keys
                        .iter()
                        .map(|key| (key.as_str(), Role::Runner)),
                )
                .chain(
                    config
                        .client_keys
                        .iter()
                        .map(|key| (key.as_str(), Role::Client)),
                ),
            verifier,
        );
        // Private from the start: the database holds agents' env and secret runtime env.
        data_dir::prepare(&config.data_dir)?;
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|err| StoreError::Task(err.to_string()))??;
        tracing::info!(database = %store.path().display(), "store opened");
        let mut shared = Shared::new(
            Arc::new(store),
            config.lease_ttl,
            config.max_claim_wait,
            CancellationToken::new(),
        );
        if let Some(settings) = &config.redis {
            let cloud = Cloud::connect(settings, shared.shutdown.clone()).await?;
            shared.cloud = Some(Arc::new(cloud));
        }
        let shared = Arc::new(shared);
        let recovered = sweep::sweep_once(&shared)
            .await
            .map_err(ServerError::Recovery)?;
        if recovered.requeued + recovered.ended.len() > 0 {
            tracing::info!(
                requeued = recovered.requeued,
                ended = recovered.ended.len(),
                "applied lease expiry to claims left by the previous run"
            );
        }
        if let Some(cloud) = &shared.cloud
            && let Err(err) = cloud.reconcile(&shared.store).await
        {
            // Not fatal: the sweep tries again.
            tracing::warn!(error = %err, "checking the Redis queue at start-up failed");
        }
        Ok(Self {
            shared,
            auth,
            tls,
            sweep_interval: config.sweep_interval,
        })
    }

    pub fn database_path(&self) -> PathBuf {
        self.shared.store.path().to_path_buf()
    }

    /// Serves on `listener` until `shutdown` resolves, then stops gracefully: long-polls
    /// return empty, subscriptions end with UNAVAILABLE, in-flight calls finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let auth = self.auth;
        let shared = self.shared;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls).map_err(ServerError::Serve)?;
        }
        let sweeper = tokio::spawn(sweep::run(Arc::clone(&shared), self.sweep_interval));

        let token = shared.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
            set_health(&health, ServingStatus::NotServing).await;
            token.cancel();
        };
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let result = builder
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
            .add_service(health_service)
            .add_service(Authenticated::new(
                AgentServiceServer::new(AgentApi::new(Arc::clone(&shared))),
                auth.clone(),
                Api::Client,
            ))
            .add_service(Authenticated::new(
                ExecutionServiceServer::new(ExecutionApi::new(Arc::clone(&shared)))
                    .max_decoding_message_size(MAX_MESSAGE_SIZE),
                auth.clone(),
                Api::Client,
            ))
            .add_service(Authenticated::new(
                RunnerServiceServer::new(RunnerApi::new(Arc::clone(&shared)))
                    .max_decoding_message_size(MAX_MESSAGE_SIZE),
                auth,
                Api::Runner,
            ))
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        shared.shutdown.cancel();
        if let Err(err) = sweeper.await {
            tracing::error!(error = %err, "lease sweep task failed");
        }
        tracing::info!("stopped");
        result.map_err(ServerError::Serve)
    }
}

/// Opens the store in `config.data_dir`, recovers, and serves on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    ControlPlane::open(config)
        .await?
        .serve(listener, shutdown)
        .await
}

/// "" (the whole server) and each service by name, as probes and clients may ask for either.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in [
        "",
        <AgentServiceServer<AgentApi> as NamedService>::NAME,
        <ExecutionServiceServer<ExecutionApi> as NamedService>::NAME,
        <RunnerServiceServer<RunnerApi> as NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

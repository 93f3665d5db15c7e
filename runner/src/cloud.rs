//! Cloud mode's parts, built only when `MODE=cloud`: the JWT source (verified, re-read when its
//! file changes), TLS to the control plane, Redis (dispatch, cancellation, presence) and the
//! Daytona sandbox pool. Each fails fast at start-up with a message naming what to fix.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stigmer_auth::jwt::{JwtError, KeySource, Verifier, VerifierConfig};
use stigmer_auth::keyfile::{TokenSource, TokenSourceError};
use stigmer_auth::tls::{TlsError, client_tls};
use tonic::transport::ClientTlsConfig;

use crate::client::BearerAuth;
use crate::config::Config;
use crate::config::cloud::{CloudConfig, TokenOrigin};
use crate::dispatch::QueueDispatch;
use crate::redis::{Presence, RedisDispatch, RedisError, RedisSettings, connect};
use crate::sandbox::daytona::{
    DaytonaClient, DaytonaError, DaytonaPoolSettings, DaytonaSandboxes, DaytonaSettings,
};
use crate::sandboxes::DaytonaPool;

/// How often a token file is re-read.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(30);
const JWKS_REFRESH: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum CloudStartError {
    #[error("JWT check: {0}")]
    Jwt(#[from] JwtError),
    #[error("STIGMER_JWT_PUBLIC_KEY_FILE {path}: {source}")]
    PublicKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API token: {0}")]
    Token(#[from] TokenSourceError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("Daytona: {0}")]
    Daytona(#[from] DaytonaError),
}

/// Cloud mode's dispatch (JWT, Redis queue, presence) and sandboxes (the Daytona pool).
pub async fn start(
    config: &Config,
    cloud: &CloudConfig,
) -> Result<(QueueDispatch, DaytonaPool), CloudStartError> {
    let token = token_source(cloud).await?;
    // The watcher ends by itself when the last clone of the source is dropped.
    drop(token.watch(TOKEN_FILE_POLL));
    let mut redis_settings = RedisSettings::new(cloud.redis.clone(), config.runner_id.clone())
        .with_heartbeat(config.heartbeat_interval);
    redis_settings.ca_pem = cloud.redis_ca.as_ref().map(|(_, pem)| pem.clone());
    let redis = connect(redis_settings).await?;
    let queue = RedisDispatch::new(&redis, config.runner_id.clone()).await?;
    let presence = Presence::new(&redis, config.heartbeat_interval * 3);
    let mut settings = DaytonaSettings::new(cloud.daytona.api_key.expose());
    settings.api_url = cloud.daytona.api_url.clone();
    let client = DaytonaClient::new(settings)?;
    let sandboxes = DaytonaSandboxes::new(
        client,
        DaytonaPoolSettings::new(Some(cloud.daytona.snapshot.clone())),
    );
    let dispatch = QueueDispatch {
        token,
        redis,
        queue,
        presence,
    };
    Ok((dispatch, DaytonaPool::new(sandboxes)))
}

/// The control plane's credential in cloud mode: the JWT, re-read when its file changes.
pub fn bearer(dispatch: &QueueDispatch) -> BearerAuth {
    BearerAuth::Rotating(dispatch.token.clone())
}

/// TLS settings for an `https://` endpoint, with the CA file they trust (cloud mode's
/// `STIGMER_BACKEND_CA_FILE`, else the system roots).
pub fn tls_for(
    config: &Config,
) -> Result<Option<(ClientTlsConfig, Option<&std::path::Path>)>, TlsError> {
    if !config.backend_endpoint.starts_with("https://") {
        return Ok(None);
    }
    let ca = config.cloud().and_then(|c| c.ca_file.as_deref());
    client_tls(ca, None).map(|tls| Some((tls, ca)))
}

async fn token_source(cloud: &CloudConfig) -> Result<TokenSource, CloudStartError> {
    let key = match (&cloud.jwt.jwks_url, &cloud.jwt.public_key_file) {
        (Some(url), _) => Some(KeySource::Jwks {
            url: url.clone(),
            refresh: JWKS_REFRESH,
        }),
        (None, Some(path)) => Some(KeySource::PublicKeyPem(
            std::fs::read_to_string(path).map_err(|source| CloudStartError::PublicKey {
                path: path.clone(),
                source,
            })?,
        )),
        (None, None) => None,
    };
    let verifier = Verifier::new(VerifierConfig {
        issuer: cloud.jwt.issuer.clone(),
        audience: cloud.jwt.audience.clone(),
        key,
    })?;
    verifier.prefetch().await?;
    let verifier = Arc::new(verifier);
    Ok(match &cloud.token {
        TokenOrigin::Env(token) => {
            TokenSource::from_static(token.expose().to_owned(), verifier).await?
        }
        TokenOrigin::File(path) => TokenSource::from_file(path.clone(), verifier).await?,
    })
}

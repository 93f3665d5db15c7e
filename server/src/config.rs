//! Server configuration shared by the library API and the binary.

use std::path::PathBuf;
use std::time::Duration;

use stigmer_auth::KeySource;
use stigmer_proto::LOCAL_API_KEY;

/// How the control plane runs. Build one with [`ServerConfig::local`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory that holds `stigmer.db`; created when missing.
    pub data_dir: PathBuf,
    /// Bearer tokens accepted on every API call (the health service excepted).
    pub api_keys: Vec<String>,
    /// Bearer tokens accepted on the runner API only (`Claim`, `Heartbeat`, ...).
    pub runner_keys: Vec<String>,
    /// Bearer tokens accepted on the agent and execution APIs only: a client holding one
    /// cannot claim executions (and so never sees secret runtime env).
    pub client_keys: Vec<String>,
    /// How long a claim stays valid without a heartbeat or status update.
    pub lease_ttl: Duration,
    /// Upper bound for a runner's long-poll `wait_ms`.
    pub max_claim_wait: Duration,
    /// How often expired leases are looked for.
    pub sweep_interval: Duration,
    /// Cloud dispatch and live events through Redis (see REDIS.md). `None` (the default):
    /// the in-process queue and broadcaster only, and no Redis connection at all.
    pub redis: Option<RedisSettings>,
    /// Serve TLS with this certificate and key. `None`: plaintext gRPC (local mode, or TLS
    /// terminated in front of the server).
    pub tls: Option<TlsFiles>,
    /// Also accept JWTs verified with this key, besides the static `api_keys`.
    pub jwt: Option<JwtAuth>,
}

/// PEM files of the server's TLS identity; both are read and checked against each other at
/// start-up, so a bad pair fails before the port is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a bearer JWT must satisfy: a signature by `key`, a valid `exp`/`nbf`, and, when set,
/// this issuer and audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuth {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub key: KeySource,
}

pub use stigmer_redis::RedisTarget;

/// The control plane's Redis settings; build with [`RedisSettings::new`] and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// PEM CAs a TLS connection trusts instead of the system's (REDIS_CA_FILE).
    pub ca_pem: Option<Vec<u8>>,
    /// Prefix of every key and channel (`<prefix>:queue`, `<prefix>:events:<id>`, ...).
    pub key_prefix: String,
    /// Start-up ping attempts before giving up with a clear error.
    pub connect_attempts: u32,
    pub connect_retry_delay: Duration,
    /// How long an execution's events stream is kept after its terminal state.
    pub events_ttl: Duration,
    /// How long one blocking read of an events stream waits before Subscribe re-checks the
    /// store (a safety net for an event that could not be written).
    pub events_block: Duration,
    /// How often the queue stream is checked against the store, re-adding dispatchable
    /// executions Redis lost (a restart without persistence, a crash before the XADD).
    pub reconcile_interval: Duration,
}

impl RedisSettings {
    pub fn new(target: RedisTarget) -> Self {
        Self {
            target,
            ca_pem: None,
            key_prefix: "stigmer".into(),
            connect_attempts: 10,
            connect_retry_delay: Duration::from_secs(1),
            events_ttl: Duration::from_secs(3600),
            events_block: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// Local-mode defaults: the well-known local key, 30 s leases, 30 s long-polls, 1 s sweeps.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            api_keys: vec![LOCAL_API_KEY.to_string()],
            runner_keys: Vec::new(),
            client_keys: Vec::new(),
            lease_ttl: Duration::from_secs(30),
            max_claim_wait: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(1),
            redis: None,
            tls: None,
            jwt: None,
        }
    }

    /// Refuses settings that would make the server unusable rather than merely slow.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let all = || {
            self.api_keys
                .iter()
                .chain(&self.runner_keys)
                .chain(&self.client_keys)
        };
        if all().next().is_none() {
            return Err(ConfigError::NoApiKeys);
        }
        if all().any(|key| key.trim().is_empty()) {
            return Err(ConfigError::EmptyApiKey);
        }
        // One key in two roles would open both APIs and defeat the separation.
        if self
            .runner_keys
            .iter()
            .any(|key| self.client_keys.contains(key) || self.api_keys.contains(key))
            || self
                .client_keys
                .iter()
                .any(|key| self.api_keys.contains(key))
        {
            return Err(ConfigError::KeyInTwoRoles);
        }
        for (name, value) in [
            ("lease_ttl", self.lease_ttl),
            ("sweep_interval", self.sweep_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        // Leases are reported to runners as u32 milliseconds.
        if self.lease_ttl > Duration::from_millis(u64::from(u32::MAX)) {
            return Err(ConfigError::LeaseTooLong);
        }
        if let Some(tls) = &self.tls {
            // An empty path is what a half-set pair of environment variables produces.
            match (
                tls.cert.as_os_str().is_empty(),
                tls.key.as_os_str().is_empty(),
            ) {
                (false, true) => return Err(ConfigError::TlsCertWithoutKey),
                (true, false) => return Err(ConfigError::TlsKeyWithoutCert),
                (true, true) => return Err(ConfigError::TlsEmpty),
                (false, false) => {}
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("at least one API key is required")]
    NoApiKeys,
    #[error("API keys must not be empty")]
    EmptyApiKey,
    #[error(
        "the same key is configured in two roles (runner, client, any); give each role its own key"
    )]
    KeyInTwoRoles,
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("lease_ttl must fit in u32 milliseconds")]
    LeaseTooLong,
    #[error("a TLS certificate was given without its private key (--tls-key)")]
    TlsCertWithoutKey,
    #[error("a TLS private key was given without its certificate (--tls-cert)")]
    TlsKeyWithoutCert,
    #[error("TLS is enabled but neither the certificate nor the key file is named")]
    TlsEmpty,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_defaults() {
        let config = ServerConfig::local("/tmp/x");
        assert_eq!(config.api_keys, vec!["dummy-local-key".to_string()]);
        assert_eq!(config.lease_ttl, Duration::from_secs(30));
        assert_eq!(config.max_claim_wait, Duration::from_secs(30));
        assert_eq!(config.sweep_interval, Duration::from_secs(1));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn rejects_unusable_settings() {
        let mut config = ServerConfig::local("/tmp/x");
        config.api_keys.clear();
        assert_eq!(config.validate(), Err(ConfigError::NoApiKeys));
        config.api_keys = vec![" ".into()];
        assert_eq!(config.validate(), Err(ConfigError::EmptyApiKey));
        config.api_keys = vec!["k".into()];
        config.runner_keys = vec!["k".into()];
        assert_eq!(config.validate(), Err(ConfigError::KeyInTwoRoles));
        config.api_keys.clear();
        config.client_keys = vec!["k".into()];
        assert_eq!(config.validate(), Err(ConfigError::KeyInTwoRoles));
        config.client_keys = vec!["c".into()];
        assert_eq!(config.validate(), Ok(()), "role keys alone are enough");
        config.runner_keys = vec!["".into()];
        assert_eq!(config.validate(), Err(ConfigError::EmptyApiKey));
        config.runner_keys = vec!["k".into()];
        config.lease_ttl = Duration::ZERO;
        assert_eq!(
            config.validate(),
            Err(ConfigError::ZeroDuration("lease_ttl"))
        );
    }

    #[test]
    fn tls_needs_both_files() {
        let mut config = ServerConfig::local("/tmp/x");
        config.tls = Some(TlsFiles {
            cert: "c.pem".into(),
            key: PathBuf::new(),
        });
        assert_eq!(config.validate(), Err(ConfigError::TlsCertWithoutKey));
        config.tls = Some(TlsFiles {
            cert: PathBuf::new(),
            key: "k.pem".into(),
        });
        assert_eq!(config.validate(), Err(ConfigError::TlsKeyWithoutCert));
        config.tls = Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        });
        assert_eq!(config.validate(), Ok(()));
    }
}

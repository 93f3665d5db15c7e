//! Connecting to Redis: settings, a start-up ping with bounded retries, and the two
//! connections the runner needs (commands, and blocking reads).

use std::fmt;
use std::time::Duration;

use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use stigmer_redis::RedisTarget;

/// Everything the runner's Redis side needs. Build with [`RedisSettings::new`] and adjust.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// PEM CAs a TLS connection trusts instead of the system's (REDIS_CA_FILE).
    pub ca_pem: Option<Vec<u8>>,
    /// Prefix of every key and channel (`<prefix>:queue`, `<prefix>:cancel`, ...).
    pub key_prefix: String,
    /// Consumer group on the queue stream shared by all runners.
    pub group: String,
    /// This runner's consumer name in the group; stable for the process (the runner id).
    pub consumer: String,
    /// An entry pending this long without being kept fresh belongs to a dead consumer and may
    /// be reclaimed. Longer than a few heartbeats, so a live runner never loses its entries.
    pub min_idle: Duration,
    /// Start-up ping attempts before giving up.
    pub connect_attempts: u32,
    /// Pause between start-up attempts.
    pub connect_retry_delay: Duration,
    /// Response timeout for ordinary commands (the blocking connection has none).
    pub response_timeout: Duration,
}

/// Missed heartbeats after which a pending entry belongs to a dead consumer.
pub const MIN_IDLE_HEARTBEATS: u32 = 20;

impl RedisSettings {
    pub fn new(target: RedisTarget, consumer: impl Into<String>) -> Self {
        Self {
            target,
            ca_pem: None,
            key_prefix: "stigmer".into(),
            group: "runners".into(),
            consumer: consumer.into(),
            min_idle: Duration::from_secs(60),
            connect_attempts: 5,
            connect_retry_delay: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
        }
    }

    /// Sets `min_idle` to [`MIN_IDLE_HEARTBEATS`] heartbeats of this runner (60 s with the
    /// default 3 s), so that a dead runner's entries come back as soon as it is clearly gone,
    /// and a live one, which refreshes them on every heartbeat, never loses them.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.min_idle = heartbeat * MIN_IDLE_HEARTBEATS;
        self
    }

    pub fn queue_key(&self) -> String {
        format!("{}:queue", self.key_prefix)
    }

    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.key_prefix)
    }

    pub fn presence_key(&self, runner_id: &str) -> String {
        format!("{}:runner:{runner_id}", self.key_prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis address: {0}")]
    InvalidAddress(String),
    #[error(transparent)]
    Unreachable(#[from] stigmer_redis::Unreachable),
    #[error("Redis {op} failed: {source}")]
    Command {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis answered {op} with an unexpected reply: {detail}")]
    Reply { op: &'static str, detail: String },
}

impl RedisError {
    pub(crate) fn command(op: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Command { op, source }
    }

    /// The consumer group (or the stream) is gone: Redis lost its data (a restart without
    /// persistence, a flush).
    pub fn is_missing_group(&self) -> bool {
        matches!(self, Self::Command { source, .. } if source.code() == Some("NOGROUP"))
    }
}

/// A connected Redis: a [`ConnectionManager`] for commands and a second one with no response
/// timeout for blocking reads. Both reconnect by themselves after Redis restarts. Cheap to
/// clone.
#[derive(Clone)]
pub struct Redis {
    pub(crate) client: Client,
    pub(crate) commands: ConnectionManager,
    pub(crate) blocking: ConnectionManager,
    pub(crate) settings: RedisSettings,
    addr: String,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis").field("addr", &self.addr).finish()
    }
}

impl Redis {
    /// `host:port`, safe to log.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// A connection manager for ordinary commands.
    pub fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }
}

/// Connects and pings, retrying a bounded number of times, then fails naming `host:port`
/// (never the password), so a misconfigured runner stops at start-up instead of idling.
pub async fn connect(settings: RedisSettings) -> Result<Redis, RedisError> {
    let (client, addr) = settings
        .target
        .client_trusting(settings.ca_pem.as_deref())
        .map_err(|e| RedisError::InvalidAddress(e.0))?;
    let (commands, blocking) = stigmer_redis::connect_with_retry(
        &client,
        &addr,
        settings.connect_attempts,
        settings.connect_retry_delay,
        || open_pair(&client, &settings),
    )
    .await?;
    tracing::info!(redis = %addr, "connected to Redis");
    Ok(Redis {
        client,
        commands,
        blocking,
        settings,
        addr,
    })
}

async fn open_pair(
    client: &Client,
    settings: &RedisSettings,
) -> Result<(ConnectionManager, ConnectionManager), redis::RedisError> {
    // `connect_with_retry` has pinged with a plain connection first.
    let base = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_max_delay(Duration::from_secs(2));
    let mut commands = client
        .get_connection_manager_with_config(
            base.clone()
                .set_response_timeout(Some(settings.response_timeout)),
        )
        .await?;
    // XREADGROUP BLOCK waits longer than any sensible response timeout: this connection has
    // none, and is used for nothing else so a blocked read never delays other commands.
    let blocking = client
        .get_connection_manager_with_config(base.set_response_timeout(None))
        .await?;
    let _: String = redis::cmd("PING").query_async(&mut commands).await?;
    Ok((commands, blocking))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let target = RedisTarget::HostPort {
            host: "redis".into(),
            port: 6379,
            password: Some("s3cret".into()),
            tls: false,
        };
        assert!(!format!("{target:?}").contains("s3cret"));
        let url = RedisTarget::Url("redis://:s3cret@redis:6379/".into());
        assert!(!format!("{url:?}").contains("s3cret"));
        let (_, addr) = target.client().unwrap();
        assert_eq!(addr, "redis:6379");
        let (_, addr) = url.client().unwrap();
        assert_eq!(addr, "redis:6379");
    }

    #[test]
    fn target_from_parts() {
        let url = RedisTarget::from_parts(
            Some("redis://r/".into()),
            Some("h".into()),
            None,
            None,
            false,
        );
        assert!(matches!(url, Some(RedisTarget::Url(u)) if u == "redis://r/"));
        let host = RedisTarget::from_parts(
            Some(" ".into()),
            Some("h".into()),
            None,
            Some("".into()),
            true,
        );
        assert!(matches!(
            host,
            Some(RedisTarget::HostPort { host, port: 6379, password: None, tls: true }) if host == "h"
        ));
        assert!(RedisTarget::from_parts(None, None, Some(1), Some("p".into()), false).is_none());
    }

    #[test]
    fn keys_follow_the_prefix() {
        let settings = RedisSettings::new(RedisTarget::Url("redis://x/".into()), "r1");
        assert_eq!(settings.queue_key(), "stigmer:queue");
        assert_eq!(settings.cancel_channel(), "stigmer:cancel");
        assert_eq!(settings.presence_key("r1"), "stigmer:runner:r1");
    }
}

//! The start-up connection loop shared by the runner and the control plane: a plain
//! connection and PING first, then whatever the caller opens, retried a bounded number of
//! times so that a misconfigured process stops at start-up (naming `host:port`, never the
//! password) instead of idling.

use std::future::Future;
use std::time::Duration;

use redis::{AsyncConnectionConfig, Client};

/// Redis did not answer within the start-up attempts.
#[derive(Debug, thiserror::Error)]
#[error("Redis at {addr} is unreachable after {attempts} attempts: {source}{hint}")]
pub struct Unreachable {
    /// `host:port`, safe to show.
    pub addr: String,
    pub attempts: u32,
    #[source]
    pub source: redis::RedisError,
    /// What to change, when the error tells (empty otherwise).
    pub hint: &'static str,
}

/// A certificate the client does not trust is a setting to fix, not an outage to wait out.
fn hint(error: &redis::RedisError) -> &'static str {
    if error
        .to_string()
        .to_ascii_lowercase()
        .contains("certificate")
    {
        " (the server's TLS certificate is not trusted: set REDIS_CA_FILE to the PEM file of the \
         CA that signed it)"
    } else {
        ""
    }
}

/// Pings `client` once and then runs `open` (the caller's connections), up to `attempts` times
/// (at least once) with `delay` between attempts.
///
/// The plain PING comes first because a connection manager retries internally for seconds;
/// the bounded start-up retries belong here.
pub async fn connect_with_retry<T, F, Fut>(
    client: &Client,
    addr: &str,
    attempts: u32,
    delay: Duration,
    mut open: F,
) -> Result<T, Unreachable>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, redis::RedisError>>,
{
    let attempts = attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match ping_once(client).await {
            Ok(()) => open().await,
            Err(err) => Err(err),
        };
        match result {
            Ok(value) => return Ok(value),
            Err(source) if attempt >= attempts => {
                return Err(Unreachable {
                    addr: addr.to_owned(),
                    attempts,
                    hint: hint(&source),
                    source,
                });
            }
            Err(err) => {
                tracing::warn!(redis = %addr, attempt, error = %err, "Redis not reachable yet; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One connection attempt and PING, without retries.
async fn ping_once(client: &Client) -> Result<(), redis::RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_after_the_attempts_naming_the_address_only() {
        // Port 1 on loopback refuses at once: nothing listens there.
        let target = crate::RedisTarget::Url("redis://:hunter2@127.0.0.1:1".into());
        let (client, addr) = target.client().expect("client");
        let mut opened = 0;
        let err = connect_with_retry(&client, &addr, 2, Duration::from_millis(10), || {
            opened += 1;
            async { Ok(()) }
        })
        .await
        .expect_err("nothing listens");
        assert_eq!(err.attempts, 2);
        assert_eq!(opened, 0, "open runs only after a PING answered");
        let text = err.to_string();
        assert!(
            text.starts_with("Redis at 127.0.0.1:1 is unreachable after 2 attempts"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}

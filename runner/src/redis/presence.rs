//! Runner presence: `<prefix>:runner:<runner_id>` holds a JSON record of the runner, written
//! on every heartbeat with a TTL of about three heartbeats, so a dead runner disappears by
//! itself.

use std::time::Duration;

use redis::AsyncCommands;
use serde::Serialize;

use super::connection::{Redis, RedisError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceRecord {
    pub id: String,
    pub pod: String,
    pub capacity: u32,
    pub in_flight: u32,
    pub version: String,
    pub draining: bool,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

#[derive(Clone)]
pub struct Presence {
    redis: Redis,
    ttl: Duration,
}

impl Presence {
    /// `ttl`: about three heartbeat intervals.
    pub fn new(redis: &Redis, ttl: Duration) -> Self {
        Self {
            redis: redis.clone(),
            ttl,
        }
    }

    pub async fn publish(&self, record: &PresenceRecord) -> Result<(), RedisError> {
        let key = self.redis.settings().presence_key(&record.id);
        let json = serde_json::to_string(record).map_err(|err| RedisError::Reply {
            op: "presence encode",
            detail: err.to_string(),
        })?;
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.redis.commands();
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(RedisError::command("SET presence"))?;
        Ok(())
    }

    /// Removes the record at shutdown, so dashboards do not wait for the TTL.
    pub async fn remove(&self, runner_id: &str) -> Result<(), RedisError> {
        let key = self.redis.settings().presence_key(runner_id);
        let mut conn = self.redis.commands();
        let _: u64 = conn
            .del(&key)
            .await
            .map_err(RedisError::command("DEL presence"))?;
        Ok(())
    }
}

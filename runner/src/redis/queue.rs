//! The dispatch queue: a Redis stream (`<prefix>:queue`, one entry `execution_id=<id>` per
//! execution) read through one consumer group shared by all runners. Delivery is at least
//! once: an entry stays pending for its consumer until acked, and entries of a consumer that
//! stopped keeping them fresh are reclaimed by another with XAUTOCLAIM.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::connection::{Redis, RedisError};

/// The stream field that carries the execution id.
pub const EXECUTION_ID_FIELD: &str = "execution_id";

/// One delivered queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The stream entry id, needed to ack it.
    pub entry_id: String,
    /// Empty when the entry is malformed (it should then just be acked).
    pub execution_id: String,
}

impl QueueEntry {
    fn from_stream(id: &StreamId) -> Self {
        Self {
            entry_id: id.id.clone(),
            execution_id: id.get::<String>(EXECUTION_ID_FIELD).unwrap_or_default(),
        }
    }
}

#[derive(Clone)]
pub struct QueueConsumer {
    redis: Redis,
    stream: String,
    group: String,
    consumer: String,
}

impl QueueConsumer {
    pub fn new(redis: &Redis) -> Self {
        let settings = redis.settings();
        Self {
            stream: settings.queue_key(),
            group: settings.group.clone(),
            consumer: settings.consumer.clone(),
            redis: redis.clone(),
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Creates the consumer group (and the stream) if missing; every runner calls this at
    /// start-up, so an existing group (BUSYGROUP) is success.
    pub async fn ensure_group(&self) -> Result<(), RedisError> {
        let mut conn = self.redis.commands();
        let result: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            Err(source) => Err(RedisError::Command {
                op: "XGROUP CREATE",
                source,
            }),
        }
    }

    /// Reads up to `count` new entries, blocking up to `block` for the first. Call it only
    /// with free slots: every entry read is pending for this consumer until acked.
    pub async fn read(&self, count: usize, block: Duration) -> Result<Vec<QueueEntry>, RedisError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.blocking.clone();
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .map_err(RedisError::command("XREADGROUP"))?;
        Ok(reply
            .map(|reply| {
                reply
                    .keys
                    .iter()
                    .flat_map(|key| key.ids.iter().map(QueueEntry::from_stream))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Acknowledges entries: they leave this consumer's pending list for good, and are
    /// deleted from the stream, so that the stream holds only work not yet done (it stays
    /// small, and the control plane can tell which executions are queued).
    pub async fn ack(&self, entry_ids: &[String]) -> Result<usize, RedisError> {
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.redis.commands();
        let (acked, _deleted): (usize, usize) = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(entry_ids)
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry_ids)
            .query_async(&mut conn)
            .await
            .map_err(RedisError::command("XACK"))?;
        Ok(acked)
    }

    /// Resets the idle time of entries this runner holds (XCLAIM to itself, JUSTID so the
    /// delivery count is untouched), so that no other runner reclaims them. Call it on every
    /// heartbeat for the entries of in-flight executions. Returns the ids still pending.
    pub async fn keep_fresh(&self, entry_ids: &[String]) -> Result<Vec<String>, RedisError> {
        if entry_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.commands();
        redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(entry_ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .map_err(RedisError::command("XCLAIM"))
    }

    /// Takes over up to `count` entries that have been pending for at least `min_idle` with
    /// any consumer (one that died, or was cut off long enough to stop keeping them fresh).
    pub async fn reclaim_stale(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<QueueEntry>, RedisError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.commands();
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut start = "0-0".to_string();
        let mut entries = Vec::new();
        // XAUTOCLAIM scans the pending list in pages; a full pass ends when the cursor is 0-0.
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(min_idle_ms)
                .arg(&start)
                .arg("COUNT")
                .arg(count - entries.len())
                .query_async(&mut conn)
                .await
                .map_err(RedisError::command("XAUTOCLAIM"))?;
            entries.extend(reply.claimed.iter().map(QueueEntry::from_stream));
            if reply.next_stream_id == "0-0" || entries.len() >= count {
                break;
            }
            start = reply.next_stream_id;
        }
        Ok(entries)
    }

    /// How many entries are pending (delivered, not acked) in the group, for metrics/tests.
    pub async fn pending_count(&self) -> Result<u64, RedisError> {
        let mut conn = self.redis.commands();
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(&mut conn)
            .await
            .map_err(RedisError::command("XPENDING"))?;
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
                other => Err(RedisError::Reply {
                    op: "XPENDING",
                    detail: format!("{other:?}"),
                }),
            },
            other => Err(RedisError::Reply {
                op: "XPENDING",
                detail: format!("{other:?}"),
            }),
        }
    }
}

//! Cloud mode's Redis side of the control plane (keys in REDIS.md): executions are queued on
//! a stream that runners read through a consumer group, cancellations are published, and every
//! state change goes to a per-execution events stream that any control-plane replica follows
//! to serve `Subscribe`. The store stays the source of truth; Redis only carries news of it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client};
use stigmer_proto::agentexecution::v1::{
    AgentExecution, ExecutionEvent, TextDelta, execution_event,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broadcast::ExecutionStream;
use crate::config::RedisSettings;
use crate::live::{self, EventStream, GapCheck};
use crate::secrets;
use crate::store::{ExecutionRecord, Store, StoreError};

/// Entries kept per events stream (approximate trim: cheap for Redis).
const EVENTS_MAXLEN: usize = 1000;
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// State changes waiting to be written to events streams.
const EVENTS_BACKLOG: usize = 10_000;
/// At most this many executions are re-queued by one reconciliation pass.
const RECONCILE_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("invalid Redis address: {0}")]
    InvalidAddress(String),
    #[error(transparent)]
    Unreachable(#[from] stigmer_redis::Unreachable),
    #[error("reading the store for the Redis queue: {0}")]
    Store(#[source] StoreError),
    #[error("Redis {op} failed: {source}")]
    Command {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

fn command(op: &'static str) -> impl FnOnce(redis::RedisError) -> CloudError {
    move |source| CloudError::Command { op, source }
}

/// What to append to an execution's events stream.
struct Event {
    id: String,
    kind: EventKind,
}

enum EventKind {
    State {
        version: i64,
        /// The masked execution, protobuf-encoded.
        execution: Vec<u8>,
        terminal: bool,
    },
    /// A protobuf-encoded `TextDelta` (live text, for `SubscribeLive`).
    Text(Vec<u8>),
}

/// Events written to Redis in one pipeline (one round trip) when they queue up.
const EVENTS_BATCH: usize = 256;

/// What a follower of an events stream passes on.
enum Item {
    State {
        terminal: bool,
        execution: Box<AgentExecution>,
    },
    Text(TextDelta),
    Gap,
}

pub struct Cloud {
    client: Client,
    commands: ConnectionManager,
    prefix: String,
    events: mpsc::Sender<Event>,
    /// Ids whose XADD to the queue failed; the sweep retries them.
    unqueued: Mutex<Vec<String>>,
    events_block: Duration,
    pub(crate) reconcile_interval: Duration,
}

impl Cloud {
    /// Connects with bounded retries, then fails naming `host:port` (never the password).
    /// Spawns the task that writes events streams in order; it ends with `shutdown`.
    pub async fn connect(
        settings: &RedisSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, CloudError> {
        let (client, addr) = settings
            .target
            .client_trusting(settings.ca_pem.as_deref())
            .map_err(|e| CloudError::InvalidAddress(e.0))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let commands = stigmer_redis::connect_with_retry(
            &client,
            &addr,
            settings.connect_attempts,
            settings.connect_retry_delay,
            || async {
                let mut conn = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(conn)
            },
        )
        .await?;
        tracing::info!(redis = %addr, "connected to Redis: cloud dispatch and events");
        let (events, receiver) = mpsc::channel(EVENTS_BACKLOG);
        tokio::spawn(write_events(
            commands.clone(),
            settings.key_prefix.clone(),
            settings.events_ttl,
            receiver,
            shutdown,
        ));
        Ok(Self {
            client,
            commands,
            prefix: settings.key_prefix.clone(),
            events,
            unqueued: Mutex::new(Vec::new()),
            events_block: settings.events_block,
            reconcile_interval: settings.reconcile_interval,
        })
    }

    fn queue_key(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    fn events_key(&self, id: &str) -> String {
        events_key(&self.prefix, id)
    }

    fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Makes `id` available to runners. A failure is remembered and retried by the sweep,
    /// since the execution is already stored and must not stay invisible to runners.
    pub async fn enqueue(&self, id: &str) {
        if let Err(err) = self.try_enqueue(id).await {
            tracing::error!(execution = %id, error = %err, "cannot queue execution; retrying on the next sweep");
            self.unqueued
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(id.to_string());
        }
    }

    async fn try_enqueue(&self, id: &str) -> Result<(), CloudError> {
        let mut conn = self.commands.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.queue_key())
            .arg("*")
            .arg("execution_id")
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(command("XADD queue"))?;
        tracing::debug!(execution = %id, "queued");
        Ok(())
    }

    /// Queues every dispatchable execution that has no entry on the queue stream: after a
    /// crash between the store commit and the XADD, or after Redis lost its data. Runners
    /// delete acked entries, so the stream holds only work not yet done. A duplicate entry
    /// (an XADD racing this pass) is harmless: the claim refuses the second delivery.
    pub async fn reconcile(&self, store: &Arc<Store>) -> Result<usize, CloudError> {
        let mut conn = self.commands.clone();
        let queued: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.queue_key())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(command("XRANGE queue"))?;
        let queued: std::collections::HashSet<String> = queued
            .ids
            .iter()
            .filter_map(|entry| entry.get::<String>("execution_id"))
            .collect();
        let dispatchable = store
            .read(|tx| tx.dispatchable(RECONCILE_LIMIT))
            .await
            .map_err(CloudError::Store)?;
        let mut added = 0;
        for id in dispatchable.iter().filter(|id| !queued.contains(*id)) {
            self.try_enqueue(id).await?;
            added += 1;
        }
        if added > 0 {
            tracing::info!(
                queued = added,
                "queued executions missing from the Redis queue"
            );
        }
        Ok(added)
    }

    /// After an execution ended, the next pending execution of its session may start; its
    /// queue entry may have been refused while the session was busy (and would only come
    /// back after the runners' reclaim idle time), so queue it again now.
    pub fn enqueue_session_successor(self: &Arc<Self>, store: &Arc<Store>, session_id: &str) {
        let cloud = Arc::clone(self);
        let store = Arc::clone(store);
        let session_id = session_id.to_string();
        tokio::spawn(async move {
            let next = store.read(move |tx| tx.next_in_session(&session_id)).await;
            match next {
                Ok(Some(id)) => cloud.enqueue(&id).await,
                Ok(None) => {}
                Err(err) => {
                    let err: StoreError = err;
                    tracing::warn!(error = %err, "cannot look up the next execution of a session");
                }
            }
        });
    }

    /// Retries the XADDs that failed.
    pub async fn retry_unqueued(&self) {
        let ids =
            std::mem::take(&mut *self.unqueued.lock().unwrap_or_else(PoisonError::into_inner));
        for id in ids {
            self.enqueue(&id).await;
        }
    }

    /// Tells every runner at once; the runner holding the execution stops it. Best effort:
    /// heartbeat answers carry the cancellation as well.
    pub async fn publish_cancel(&self, id: &str, reason: &str) {
        let payload = serde_json::json!({ "execution_id": id, "reason": reason }).to_string();
        let mut conn = self.commands.clone();
        let result: Result<u64, _> = redis::cmd("PUBLISH")
            .arg(self.cancel_channel())
            .arg(payload)
            .query_async(&mut conn)
            .await;
        if let Err(err) = result {
            tracing::warn!(execution = %id, error = %err, "cannot publish cancellation; the runner hears of it on its next heartbeat");
        }
    }

    /// Appends the record's state to its events stream (in order, by a background task).
    pub fn publish_event(&self, record: &ExecutionRecord) {
        self.queue_event(Event {
            id: record.id().to_string(),
            kind: EventKind::State {
                version: record.version,
                execution: secrets::masked(record.to_execution()).encode_to_vec(),
                terminal: record.phase().is_terminal(),
            },
        });
    }

    /// Appends live text to the execution's events stream, behind the states before it.
    pub fn publish_text(&self, delta: &TextDelta) {
        self.queue_event(Event {
            id: delta.execution_id.clone(),
            kind: EventKind::Text(delta.encode_to_vec()),
        });
    }

    fn queue_event(&self, event: Event) {
        // Full only while Redis is slow or unreachable: dropping then bounds memory, live
        // followers see a gap in the text offsets, and subscribers still reach every state
        // through their periodic store check.
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            tracing::warn!(execution = %event.id, "events backlog full; dropping a live event");
        }
    }

    /// The id of the newest entry of the execution's events stream ("0-0" when empty). Read
    /// before the store, so that following from it misses no change committed after the read.
    pub async fn events_cursor(&self, id: &str) -> Result<String, CloudError> {
        let mut conn = self.commands.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.events_key(id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(command("XREVRANGE events"))?;
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |entry| entry.id.clone()))
    }

    /// A dedicated connection for one subscriber's blocking reads: XREAD BLOCK would hold up
    /// every other command on a shared connection, and outlasts the usual response timeout.
    async fn blocking_connection(&self) -> Result<MultiplexedConnection, CloudError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(command("connect for XREAD"))
    }

    /// Subscribe in cloud mode: `current` (just read from the store) first, then every newer
    /// state from the events stream after `cursor`, ending after a terminal state.
    pub fn follow(
        self: &Arc<Self>,
        current: ExecutionRecord,
        cursor: String,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> ExecutionStream {
        let follow = self.follower(current, cursor, store, shutdown, false);
        Box::pin(futures_util::stream::unfold(
            Some(follow),
            |state| async move {
                let mut state = state?;
                loop {
                    return match state.next().await {
                        Ok(Some(Item::State { execution, .. })) => {
                            Some((Ok(*execution), Some(state)))
                        }
                        Ok(Some(Item::Text(_) | Item::Gap)) => continue,
                        Ok(None) => None,
                        Err(status) => Some((Err(status), None)),
                    };
                }
            },
        ))
    }

    /// `SubscribeLive` in cloud mode: as [`Cloud::follow`], with the text deltas between the
    /// states and a gap marker where the stream's offsets show text missing.
    pub fn follow_live(
        self: &Arc<Self>,
        current: ExecutionRecord,
        cursor: String,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> EventStream {
        let follow = self.follower(current, cursor, store, shutdown, true);
        Box::pin(futures_util::stream::unfold(
            Some(follow),
            |state| async move {
                let mut state = state?;
                let event = match state.next().await {
                    Ok(Some(Item::State { execution, .. })) => ExecutionEvent {
                        event: Some(execution_event::Event::Execution(*execution)),
                    },
                    Ok(Some(Item::Text(delta))) => live::text_event(delta),
                    Ok(Some(Item::Gap)) => live::gap_event(0),
                    Ok(None) => return None,
                    Err(status) => return Some((Err(status), None)),
                };
                Some((Ok(event), Some(state)))
            },
        ))
    }

    fn follower(
        self: &Arc<Self>,
        current: ExecutionRecord,
        cursor: String,
        store: Arc<Store>,
        shutdown: CancellationToken,
        live: bool,
    ) -> Follow {
        Follow {
            cloud: Arc::clone(self),
            store,
            id: current.id().to_string(),
            cursor,
            version: current.version,
            ended: false,
            queued: VecDeque::from([Item::State {
                terminal: current.phase().is_terminal(),
                execution: Box::new(secrets::masked(current.to_execution())),
            }]),
            conn: None,
            shutdown,
            live: live.then(GapCheck::default),
        }
    }
}

struct Follow {
    cloud: Arc<Cloud>,
    store: Arc<Store>,
    id: String,
    cursor: String,
    /// Newest version sent; older or equal entries are skipped.
    version: i64,
    ended: bool,
    queued: VecDeque<Item>,
    conn: Option<MultiplexedConnection>,
    shutdown: CancellationToken,
    /// `SubscribeLive`: pass text on, checking its offsets; `None` skips text entries.
    live: Option<GapCheck>,
}

impl Follow {
    async fn next(&mut self) -> Result<Option<Item>, tonic::Status> {
        loop {
            if let Some(item) = self.queued.pop_front() {
                if let Item::State {
                    terminal: true,
                    execution,
                } = &item
                {
                    // Text the subscriber missed goes out before the state that ends its stream.
                    let tail = self
                        .live
                        .as_mut()
                        .map(|g| g.tail(execution))
                        .unwrap_or_default();
                    if !tail.is_empty() {
                        self.queued.push_front(item);
                        for delta in tail.into_iter().rev() {
                            self.queued.push_front(Item::Text(delta));
                        }
                        continue;
                    }
                    self.ended = true;
                    self.queued.clear();
                }
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                result = self.read() => result?,
                () = shutdown.cancelled() => {
                    return Err(tonic::Status::unavailable("server is shutting down"));
                }
            }
        }
    }

    /// One blocking read of the events stream; on a timeout, the store is looked at in case an
    /// event could not be written.
    async fn read(&mut self) -> Result<(), tonic::Status> {
        let unavailable = |err: CloudError| {
            tracing::warn!(execution = %self.id, error = %err, "following the events stream failed");
            tonic::Status::unavailable("live events are unavailable; subscribe again")
        };
        if self.conn.is_none() {
            self.conn = Some(
                self.cloud
                    .blocking_connection()
                    .await
                    .map_err(unavailable)?,
            );
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let block_ms = u64::try_from(self.cloud.events_block.as_millis())
            .unwrap_or(5000)
            .max(1);
        let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.cloud.events_key(&self.id))
            .arg(&self.cursor)
            .query_async(conn)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(source) => {
                self.conn = None;
                return Err(unavailable(CloudError::Command {
                    op: "XREAD events",
                    source,
                }));
            }
        };
        let entries = reply
            .map(|reply| {
                reply
                    .keys
                    .into_iter()
                    .flat_map(|key| key.ids)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if entries.is_empty() {
            return self.check_store().await;
        }
        for entry in entries {
            self.cursor = entry.id.clone();
            if let Some(gaps) = self.live.as_mut()
                && let Some(bytes) = entry.get::<Vec<u8>>("text")
            {
                match TextDelta::decode(bytes.as_slice()) {
                    Ok(delta) => {
                        if gaps.before(&delta) {
                            self.queued.push_back(Item::Gap);
                        }
                        self.queued.push_back(Item::Text(delta));
                    }
                    Err(_) => tracing::warn!(execution = %self.id, "skipping undecodable text"),
                }
                continue;
            }
            let version = entry.get::<i64>("version").unwrap_or_default();
            let Some(bytes) = entry.get::<Vec<u8>>("execution") else {
                continue;
            };
            if version <= self.version {
                continue;
            }
            let Ok(execution) = AgentExecution::decode(bytes.as_slice()) else {
                tracing::warn!(execution = %self.id, "skipping an undecodable event");
                continue;
            };
            self.version = version;
            let terminal = execution
                .status
                .as_ref()
                .is_some_and(|s| s.phase().is_terminal());
            self.queued.push_back(Item::State {
                terminal,
                execution: Box::new(execution),
            });
            if terminal {
                break;
            }
        }
        Ok(())
    }

    async fn check_store(&mut self) -> Result<(), tonic::Status> {
        let id = self.id.clone();
        let record =
            self.store
                .read(move |tx| tx.execution(&id))
                .await
                .map_err(|err: StoreError| {
                    tracing::error!(error = %err, "reading an execution for a subscriber failed");
                    tonic::Status::internal("internal storage error")
                })?;
        if let Some(record) = record
            && record.version > self.version
        {
            self.version = record.version;
            self.queued.push_back(Item::State {
                terminal: record.phase().is_terminal(),
                execution: Box::new(secrets::masked(record.to_execution())),
            });
        }
        Ok(())
    }
}

fn events_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:events:{id}")
}

async fn write_events(
    mut conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    mut events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
    let mut batch = Vec::with_capacity(EVENTS_BATCH);
    loop {
        // Whatever queued up while the last pipeline was on its way goes in the next one, in
        // order: one round trip for many events under load, no waiting when idle.
        let received = tokio::select! {
            received = events.recv_many(&mut batch, EVENTS_BATCH) => received,
            () = shutdown.cancelled() => 0,
        };
        if received == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for event in batch.drain(..) {
            let key = events_key(&prefix, &event.id);
            let xadd = pipe
                .cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(EVENTS_MAXLEN)
                .arg("*");
            match event.kind {
                EventKind::State {
                    version,
                    execution,
                    terminal,
                } => {
                    xadd.arg("version")
                        .arg(version)
                        .arg("execution")
                        .arg(execution)
                        .ignore();
                    if terminal {
                        // Late subscribers still find the end for a while; then the key goes.
                        pipe.cmd("EXPIRE").arg(&key).arg(ttl_secs).ignore();
                    }
                }
                EventKind::Text(delta) => {
                    xadd.arg("text").arg(delta).ignore();
                }
            }
        }
        let result: Result<(), _> = pipe.query_async(&mut conn).await;
        if let Err(err) = result {
            tracing::warn!(events = received, error = %err, "cannot write to the events streams; subscribers fall back to the store");
        }
    }
}

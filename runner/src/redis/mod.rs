//! Cloud mode's Redis: the dispatch queue (a stream read by the `runners` consumer group),
//! cancellation (pub/sub) and runner presence (a key with a TTL). Keys are listed in
//! `REDIS.md` at the repository root. Nothing here is created in local mode.
//!
//! Wiring in the worker (cloud mode only):
//!
//! ```text
//! start:      let redis = connect(RedisSettings::new(target, runner_id)).await?;   // fail fast
//!             let dispatch = RedisDispatch::new(&redis, runner_id).await?;        // XGROUP CREATE
//!             let mut cancels = CancelListener::spawn(&redis, shutdown.clone());
//!             let presence = Presence::new(&redis, 3 * heartbeat_interval);
//! dispatch:   with free > 0 slots: let round = dispatch.round(&client, free, block).await?;
//!             run each round.claimed (ClaimedEntry { entry_id, execution }), remembering entry_id;
//!             after its terminal status was stored: dispatch.ack(&entry_id).await
//! heartbeat:  dispatch.keep_fresh(&entry_ids_in_flight).await; presence.publish(&record).await
//! cancel:     while let Some(n) = cancels.recv().await { cancel n.execution_id if held }
//! shutdown:   presence.remove(runner_id).await (unacked entries come back to other runners)
//! ```

pub mod cancel;
pub mod connection;
pub mod dispatch;
pub mod presence;
pub mod queue;

pub use cancel::{CancelListener, CancelNotice};
pub use connection::{Redis, RedisError, RedisSettings, RedisTarget, connect};
pub use dispatch::{ClaimedEntry, DispatchError, DispatchRound, RedisDispatch};
pub use presence::{Presence, PresenceRecord};
pub use queue::{QueueConsumer, QueueEntry};

//! Cloud mode's Redis: the dispatch queue (a stream read by the `runners` consumer group),
//! cancellation (pub/sub) and runner presence (a key with a TTL). Keys are listed in
//! `REDIS.md` at the repository root. Nothing here is created in local mode.

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

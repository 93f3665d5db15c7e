//! Per-object retry delays for failed reconciles: exponential and capped, so one broken
//! AgentRunner (an apiserver refusing its apply, a webhook down) is retried quickly at first
//! and then rarely, without slowing the retries of any other AgentRunner.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// First retry delay after a failure.
pub const INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay: a broken object is still retried this often.
pub const MAX: Duration = Duration::from_secs(300);

/// Consecutive failures per object, and the delay each one earns:
/// `initial`, `2 × initial`, `4 × initial`, … up to `max`. A success forgets the object, and
/// so does silence: an object that has not failed for twice `max` was deleted (a failing one
/// is retried, and fails again, at least every `max`), and deletions never reach the
/// reconciler, so without that the map would keep every AgentRunner that ever failed.
#[derive(Debug)]
pub struct ErrorBackoff<K> {
    initial: Duration,
    max: Duration,
    failures: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: Eq + Hash> Default for ErrorBackoff<K> {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

impl<K: Eq + Hash> ErrorBackoff<K> {
    /// Delays from `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The delay after the `n`th consecutive failure (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        // 2^31 seconds is far past any sensible cap; saturating keeps a long failure streak
        // from overflowing.
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: K) -> Duration {
        let now = Instant::now();
        let forget_after = self.max.saturating_mul(2);
        let n = {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            failures.retain(|_, (_, last)| now.duration_since(*last) < forget_after);
            let (n, last) = failures.entry(key).or_insert((0, now));
            *n = n.saturating_add(1);
            *last = now;
            *n
        };
        self.delay(n)
    }

    /// Forgets the failures of `key`: its next failure waits `initial` again.
    pub fn succeeded(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Objects with failures on record.
    pub fn tracked(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: &[u64]) -> Vec<Duration> {
        d.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn delays_double_from_one_second_up_to_five_minutes() {
        let b = ErrorBackoff::default();
        let seq: Vec<Duration> = (0..12).map(|_| b.failed("a")).collect();
        assert_eq!(
            seq,
            secs(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300])
        );
    }

    #[test]
    fn a_long_failure_streak_stays_at_the_cap() {
        let b: ErrorBackoff<&str> = ErrorBackoff::default();
        assert_eq!(b.delay(32), MAX);
        assert_eq!(b.delay(u32::MAX), MAX);
    }

    #[test]
    fn success_resets_only_that_object() {
        let b = ErrorBackoff::default();
        for _ in 0..4 {
            b.failed("a");
            b.failed("b");
        }
        b.succeeded(&"a");
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("b"), Duration::from_secs(16));
        b.succeeded(&"a");
        b.succeeded(&"b");
        assert_eq!(b.tracked(), 0, "successes forget the objects");
    }

    #[test]
    fn an_object_silent_for_twice_the_cap_is_forgotten() {
        let b = ErrorBackoff::new(Duration::from_millis(1), Duration::from_millis(20));
        b.failed("deleted");
        b.failed("alive");
        std::thread::sleep(Duration::from_millis(60));
        b.failed("alive");
        assert_eq!(b.tracked(), 1, "the deleted object's streak is gone");
        assert_eq!(
            b.failed("deleted"),
            Duration::from_millis(1),
            "it starts over if it comes back"
        );
    }
}

//! When to restart a child that exited unexpectedly: exponential backoff, and a bounded
//! number of restarts within a sliding window, after which the supervisor gives up (a child
//! that keeps dying needs a person, not a hot loop). Pure: time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Restarts allowed within `window`; the next exit after that gives up.
    pub max_restarts: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    GiveUp,
}

#[derive(Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// When the restarts still inside the window happened.
    recent: VecDeque<Instant>,
    total: u32,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Restarts done since the supervisor started.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The child exited at `now`: restart it (after a delay) or give up. The delay doubles
    /// with each restart still inside the window, so a child that ran fine for a long time
    /// and then crashed once comes back quickly.
    pub fn on_exit(&mut self, now: Instant) -> Decision {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.policy.window)
        {
            self.recent.pop_front();
        }
        let in_window = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if in_window >= self.policy.max_restarts {
            return Decision::GiveUp;
        }
        let factor = 2u32.saturating_pow(in_window.min(31));
        let delay = self
            .policy
            .initial_backoff
            .saturating_mul(factor)
            .min(self.policy.max_backoff);
        self.recent.push_back(now);
        self.total += 1;
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            max_restarts: 4,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        let delays: Vec<_> = (0..5)
            .map(|i| t.on_exit(start + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            delays,
            [
                Decision::RestartAfter(Duration::from_secs(1)),
                Decision::RestartAfter(Duration::from_secs(2)),
                Decision::RestartAfter(Duration::from_secs(4)),
                Decision::RestartAfter(Duration::from_secs(5)),
                Decision::GiveUp,
            ]
        );
        assert_eq!(t.total(), 4);
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        for i in 0..4 {
            assert!(matches!(
                t.on_exit(start + Duration::from_secs(i)),
                Decision::RestartAfter(_)
            ));
        }
        // Long after: the window is empty again and the backoff starts over.
        assert_eq!(
            t.on_exit(start + Duration::from_secs(600)),
            Decision::RestartAfter(Duration::from_secs(1))
        );
        assert_eq!(t.total(), 5);
    }

    #[test]
    fn zero_restarts_means_give_up_at_once() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 0,
            ..policy()
        });
        assert_eq!(t.on_exit(Instant::now()), Decision::GiveUp);
    }
}

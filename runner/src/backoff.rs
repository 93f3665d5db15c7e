//! HTTP retry timing shared by the runner's HTTP clients (the LLM providers, Daytona):
//! exponential backoff with jitter, and the server's `retry-after`. What is retried, and how
//! often, stays with each client.

use std::time::Duration;

/// A server asking for longer than this is treated as "later", not as "wait a long time".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Share of the nominal backoff that jitter may take away, to spread clients apart.
const JITTER_SHARE: f64 = 0.25;

/// Exponential backoff between a first and a maximum wait; each client (the LLM clients,
/// Daytona) retries on its own time scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Wait before the attempt after `failed_attempt` (1-based). `jitter` in `[0, 1]`.
    pub(crate) fn delay(
        &self,
        failed_attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(MAX_RETRY_AFTER);
        }
        let doublings = failed_attempt.saturating_sub(1).min(16);
        let nominal = self.first.saturating_mul(1 << doublings).min(self.max);
        nominal.mul_f64(1.0 - JITTER_SHARE * jitter.clamp(0.0, 1.0))
    }
}

/// `retry-after` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some proxies send fractional seconds; the cap keeps from_secs_f64 in range.
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let when = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let wait = when.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_policies_double_between_their_own_bounds() {
        let fast = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(fast.delay(1, None, 0.0), Duration::from_millis(100));
        assert_eq!(fast.delay(4, None, 0.0), Duration::from_millis(800));
        assert_eq!(fast.delay(5, None, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2015-10-21T07:28:00Z".parse().expect("valid timestamp");
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-4", now), None);
    }
}

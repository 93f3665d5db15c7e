//! Retry policy for opening a stream. Only the request up to the response status is retried:
//! once the body is being read, text may have reached the caller and a retry would repeat it.

use std::future::Future;
use std::time::Duration;

use super::LlmError;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A provider asking for longer than this is treated as "later", not as "wait a long time".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Share of the nominal backoff that jitter may take away, to spread clients apart.
const JITTER_SHARE: f64 = 0.25;

/// One failed attempt, with the wait the server asked for (if it did).
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: LlmError,
    pub retry_after: Option<Duration>,
}

impl From<LlmError> for Failure {
    fn from(error: LlmError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// Exponential backoff between a first and a maximum wait. Shared with other HTTP clients of
/// the runner (Daytona), which retry on their own time scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The LLM clients' policy: 500 ms doubling up to 8 s.
    pub(crate) const LLM: Self = Self {
        first: FIRST_BACKOFF,
        max: MAX_BACKOFF,
    };

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

/// Wait before the attempt after `failed_attempt` (1-based). `jitter` in `[0, 1]`.
pub(crate) fn backoff_delay(
    failed_attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    Backoff::LLM.delay(failed_attempt, retry_after, jitter)
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

/// Runs `attempt` up to `max_attempts` times (at least once) while it fails retryably.
pub(crate) async fn run<T, F, Fut>(
    provider: &'static str,
    max_attempts: u32,
    mut attempt: F,
) -> Result<T, LlmError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let max_attempts = max_attempts.max(1);
    let mut number = 1;
    loop {
        let failure = match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        if !failure.error.is_retryable() {
            return Err(failure.error);
        }
        if number >= max_attempts {
            return Err(LlmError::RetriesExhausted {
                provider,
                attempts: number,
                last: Box::new(failure.error),
            });
        }
        let wait = backoff_delay(number, failure.retry_after, fastrand::f64());
        tracing::warn!(
            provider,
            status = failure.error.status(),
            attempt = number,
            max_attempts,
            wait_ms = wait.as_millis() as u64,
            error = %failure.error,
            "LLM request failed, retrying"
        );
        tokio::time::sleep(wait).await;
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second() {
        assert_eq!(backoff_delay(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(2, None, 0.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(3, None, 0.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(4, None, 0.0), Duration::from_secs(4));
    }

    #[test]
    fn backoff_is_capped_at_eight_seconds() {
        assert_eq!(backoff_delay(5, None, 0.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(40, None, 0.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(u32::MAX, None, 0.0), Duration::from_secs(8));
    }

    #[test]
    fn jitter_only_shortens_the_wait_by_a_quarter_at_most() {
        assert_eq!(backoff_delay(1, None, 1.0), Duration::from_millis(375));
        assert_eq!(backoff_delay(5, None, 1.0), Duration::from_secs(6));
        // Out-of-range jitter must not produce a longer or negative wait.
        assert_eq!(backoff_delay(1, None, 7.0), Duration::from_millis(375));
        assert_eq!(backoff_delay(1, None, -3.0), Duration::from_millis(500));
    }

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
    fn retry_after_wins_over_backoff_and_is_capped() {
        let asked = Some(Duration::from_secs(3));
        assert_eq!(backoff_delay(1, asked, 0.5), Duration::from_secs(3));
        assert_eq!(backoff_delay(1, Some(Duration::ZERO), 0.5), Duration::ZERO);
        let huge = Some(Duration::from_secs(3600));
        assert_eq!(backoff_delay(1, huge, 0.5), Duration::from_secs(60));
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

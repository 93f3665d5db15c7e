//! Retry policy for opening a stream. Only the request up to the response status is retried:
//! once the body is being read, text may have reached the caller and a retry would repeat it.

use std::future::Future;
use std::time::Duration;

use super::LlmError;
use crate::backoff::Backoff;

/// The LLM clients' policy: 500 ms doubling up to 8 s.
const LLM_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(8),
};

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

/// Wait before the attempt after `failed_attempt` (1-based). `jitter` in `[0, 1]`.
pub(crate) fn backoff_delay(
    failed_attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    LLM_BACKOFF.delay(failed_attempt, retry_after, jitter)
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
    fn retry_after_wins_over_backoff_and_is_capped() {
        let asked = Some(Duration::from_secs(3));
        assert_eq!(backoff_delay(1, asked, 0.5), Duration::from_secs(3));
        assert_eq!(backoff_delay(1, Some(Duration::ZERO), 0.5), Duration::ZERO);
        let huge = Some(Duration::from_secs(3600));
        assert_eq!(backoff_delay(1, huge, 0.5), Duration::from_secs(60));
    }
}

//! Wall-clock time in the two forms the server needs: milliseconds for lease arithmetic in the
//! store, RFC 3339 UTC text for the API.

use std::time::Duration;

use jiff::Timestamp;

/// One reading of the clock, so that every timestamp written by one operation agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub ms: i64,
}

impl Now {
    pub fn read() -> Self {
        Self {
            ms: Timestamp::now().as_millisecond(),
        }
    }

    pub fn rfc3339(self) -> String {
        rfc3339(self.ms)
    }

    pub fn plus(self, duration: Duration) -> i64 {
        let add = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.ms.saturating_add(add)
    }
}

/// Fixed millisecond precision keeps the text the same width, so it also sorts by time.
pub fn rfc3339(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{ts:.3}"),
        // Out of jiff's range only for absurd lease arithmetic; clamp rather than fail.
        Err(_) => format!("{:.3}", Timestamp::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_123_456_789_120), "2005-08-07T23:19:49.120Z");
    }

    #[test]
    fn adds_durations() {
        let now = Now { ms: 1000 };
        assert_eq!(now.plus(Duration::from_millis(250)), 1250);
    }
}

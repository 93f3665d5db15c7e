//! A byte buffer that keeps the head and the tail of a stream within a fixed budget.
//!
//! Command output and tool results go back to the model, whose context is precious: the start
//! of an output usually says what ran and the end says how it finished, so both are kept and
//! the middle is replaced by a marker saying how much was cut. Memory never grows past the
//! budget, however much a command writes.

use std::collections::VecDeque;

/// Keeps at most `limit` bytes: the first half as written, the second half as a sliding tail.
#[derive(Debug, Clone)]
pub struct CappedBuffer {
    head: Vec<u8>,
    head_cap: usize,
    tail: VecDeque<u8>,
    tail_cap: usize,
    dropped: u64,
}

impl CappedBuffer {
    pub fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        let tail_cap = limit - head_cap;
        Self {
            head: Vec::new(),
            head_cap,
            tail: VecDeque::new(),
            tail_cap,
            dropped: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let take = room.min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        self.push_tail(data);
    }

    fn push_tail(&mut self, data: &[u8]) {
        if data.len() >= self.tail_cap {
            // The chunk alone fills the tail: everything older goes.
            let skipped = data.len() - self.tail_cap;
            self.dropped += (self.tail.len() + skipped) as u64;
            self.tail.clear();
            self.tail.extend(&data[skipped..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(data);
    }

    /// Bytes written but not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept bytes as text (lossy UTF-8), with a marker where bytes were cut.
    pub fn into_string(self) -> String {
        let (tail_a, tail_b) = self.tail.as_slices();
        let mut tail = Vec::with_capacity(self.tail.len());
        tail.extend_from_slice(tail_a);
        tail.extend_from_slice(tail_b);
        let head = String::from_utf8_lossy(&self.head);
        let tail = String::from_utf8_lossy(&tail);
        if self.dropped == 0 {
            return format!("{head}{tail}");
        }
        format!("{head}{}{tail}", truncation_marker(self.dropped))
    }
}

/// The text put where bytes were cut.
pub fn truncation_marker(dropped: u64) -> String {
    format!("\n[... {dropped} bytes truncated ...]\n")
}

/// Caps an already complete text the same way command output is capped.
pub fn cap_text(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut buf = CappedBuffer::new(limit);
    buf.push(text.as_bytes());
    buf.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_limit() {
        let mut buf = CappedBuffer::new(10);
        buf.push(b"abc");
        buf.push(b"defg");
        assert_eq!(buf.dropped(), 0);
        assert_eq!(buf.into_string(), "abcdefg");
    }

    #[test]
    fn exactly_the_limit_is_not_truncated() {
        let mut buf = CappedBuffer::new(6);
        buf.push(b"abcdef");
        assert_eq!(buf.dropped(), 0);
        assert_eq!(buf.into_string(), "abcdef");
    }

    #[test]
    fn keeps_head_and_tail_with_marker() {
        let mut buf = CappedBuffer::new(6);
        buf.push(b"0123456789");
        assert_eq!(buf.dropped(), 4);
        assert_eq!(buf.into_string(), "012\n[... 4 bytes truncated ...]\n789");
    }

    #[test]
    fn tail_slides_across_many_small_writes() {
        let mut buf = CappedBuffer::new(4);
        for b in b"abcdefghij" {
            buf.push(&[*b]);
        }
        assert_eq!(buf.dropped(), 6);
        assert_eq!(buf.into_string(), "ab\n[... 6 bytes truncated ...]\nij");
    }

    #[test]
    fn chunk_larger_than_tail_replaces_it() {
        let mut buf = CappedBuffer::new(4);
        buf.push(b"ab");
        buf.push(b"cd");
        buf.push(b"efghijkl");
        assert_eq!(buf.dropped(), 8);
        assert_eq!(buf.into_string(), "ab\n[... 8 bytes truncated ...]\nkl");
    }

    #[test]
    fn memory_stays_within_the_limit() {
        let mut buf = CappedBuffer::new(100);
        for _ in 0..1000 {
            buf.push(&[b'x'; 1000]);
        }
        assert!(buf.head.len() + buf.tail.len() <= 100);
        assert_eq!(buf.dropped(), 1_000_000 - 100);
    }

    #[test]
    fn zero_limit_keeps_only_the_marker() {
        let mut buf = CappedBuffer::new(0);
        buf.push(b"abc");
        assert_eq!(buf.into_string(), truncation_marker(3));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut buf = CappedBuffer::new(10);
        buf.push(&[b'a', 0xff, b'b']);
        assert_eq!(buf.into_string(), "a\u{fffd}b");
    }

    #[test]
    fn cap_text_leaves_short_text_alone_and_cuts_long_text() {
        assert_eq!(cap_text("short", 10), "short");
        let capped = cap_text(&"y".repeat(50), 10);
        assert_eq!(
            capped,
            format!("yyyyy{}yyyyy", truncation_marker(40)),
            "head and tail of 5 bytes each"
        );
    }
}

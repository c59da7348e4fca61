//! Bounded per-session output buffer addressed by absolute byte offsets,
//! serving the official `GetOutput` polling styles:
//!
//! * `execute()` asks `offset 0, limit N` every 200 ms and needs the
//!   *newest* N bytes, so offset 0 with a limit means "the tail";
//! * streaming asks `offset = bytes received so far, limit 0` and needs
//!   everything after that offset.

use std::collections::VecDeque;

/// The answer to one `GetOutput`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSlice {
    pub data: Vec<u8>,
    /// Bytes seen since the session started (including evicted ones).
    pub total_bytes: u64,
    /// More bytes exist after this slice.
    pub has_more: bool,
}

/// Keeps the last `capacity` bytes of a session's output.
#[derive(Debug)]
pub struct OutputRing {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Absolute offset one past the newest byte.
    total: u64,
}

impl OutputRing {
    /// An empty ring; memory grows with output up to `capacity`.
    pub fn new(capacity: usize) -> Self {
        OutputRing {
            buf: VecDeque::new(),
            capacity: capacity.max(1),
            total: 0,
        }
    }

    /// Appends output, evicting the oldest bytes beyond capacity.
    pub fn push(&mut self, data: &[u8]) {
        self.total = self.total.saturating_add(data.len() as u64);
        let data = if data.len() > self.capacity {
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Absolute offset of the oldest byte still kept.
    pub fn oldest(&self) -> u64 {
        self.total - self.buf.len() as u64
    }

    /// `GetOutput` semantics: `offset == 0 && limit > 0` → the newest
    /// `limit` bytes; otherwise from `offset` (clamped to the oldest byte
    /// kept) up to `limit` bytes, or `max` when `limit == 0`.
    pub fn read(&self, offset: u64, limit: usize, max: usize) -> OutputSlice {
        let limit = if limit == 0 { max } else { limit.min(max) };
        let (start, end) = if offset == 0 && limit > 0 && limit < self.buf.len() {
            (self.buf.len() - limit, self.buf.len())
        } else {
            let start = offset.clamp(self.oldest(), self.total) - self.oldest();
            let start = usize::try_from(start).unwrap_or(self.buf.len());
            (start, start.saturating_add(limit).min(self.buf.len()))
        };
        OutputSlice {
            data: self.buf.range(start..end).copied().collect(),
            total_bytes: self.total,
            has_more: end < self.buf.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024 * 1024;

    #[test]
    fn offset_zero_with_limit_returns_the_tail() {
        let mut r = OutputRing::new(100);
        r.push(b"hello ");
        r.push(b"world");
        let s = r.read(0, 5, MAX);
        assert_eq!(s.data, b"world");
        assert_eq!(s.total_bytes, 11);
        assert!(!s.has_more);
        assert_eq!(r.read(0, 500, MAX).data, b"hello world");
    }

    #[test]
    fn offset_with_limit_zero_streams_from_offset() {
        let mut r = OutputRing::new(100);
        r.push(b"hello world");
        assert_eq!(r.read(6, 0, MAX).data, b"world");
        assert_eq!(r.read(0, 0, MAX).data, b"hello world");
        let s = r.read(11, 0, MAX);
        assert!(s.data.is_empty());
        assert_eq!(s.total_bytes, 11);
        assert!(
            r.read(50, 0, MAX).data.is_empty(),
            "offset beyond the end is empty"
        );
    }

    #[test]
    fn limits_cap_the_slice_and_report_has_more() {
        let mut r = OutputRing::new(100);
        r.push(b"0123456789");
        let s = r.read(2, 3, MAX);
        assert_eq!(s.data, b"234");
        assert!(s.has_more);
        let s = r.read(2, 0, 4);
        assert_eq!(s.data, b"2345", "limit 0 means the server maximum");
        assert!(s.has_more);
    }

    #[test]
    fn eviction_keeps_absolute_offsets() {
        let mut r = OutputRing::new(8);
        r.push(b"abcdef");
        r.push(b"ghijkl");
        assert_eq!(r.total(), 12);
        assert_eq!(r.oldest(), 4);
        assert_eq!(
            r.read(0, 0, MAX).data,
            b"efghijkl",
            "old offsets clamp to the oldest byte kept"
        );
        assert_eq!(r.read(10, 0, MAX).data, b"kl");
        assert_eq!(r.read(0, 3, MAX).data, b"jkl");
        r.push(b"0123456789abcdef");
        assert_eq!(r.total(), 28);
        assert_eq!(
            r.read(0, 0, MAX).data,
            b"89abcdef",
            "a chunk larger than the ring keeps its tail"
        );
    }

    #[test]
    fn empty_ring_reads_empty() {
        let r = OutputRing::new(8);
        let s = r.read(0, 20480, MAX);
        assert!(s.data.is_empty());
        assert_eq!(s.total_bytes, 0);
        assert!(!s.has_more);
    }
}

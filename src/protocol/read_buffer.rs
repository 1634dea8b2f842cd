//! A receive buffer for frame streams that is zero-filled only when it grows, never on
//! every read (zeroing a 64 KiB chunk per request is a visible share of server CPU), and
//! that compacts consumed bytes only when it needs room.

/// Bytes received and not yet consumed are `bytes[start..end]`.
#[derive(Debug, Default)]
pub struct ReadBuffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    pub fn with_capacity(capacity_bytes: usize) -> Self {
        ReadBuffer {
            bytes: vec![0; capacity_bytes],
            start: 0,
            end: 0,
        }
    }

    /// Received bytes not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Drop `n` bytes from the front of [`filled`](Self::filled).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consumed more than was filled");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for at least `min_bytes` more, moving unconsumed bytes to the front or
    /// growing (zero-filled once) if needed.
    pub fn spare(&mut self, min_bytes: usize) -> &mut [u8] {
        if self.bytes.len() - self.end < min_bytes && self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.bytes.len() - self.end < min_bytes {
            self.bytes.resize(self.end + min_bytes, 0);
        }
        &mut self.bytes[self.end..]
    }

    /// With nothing buffered and more than `above` bytes of room, go back to `keep`
    /// bytes (a large frame's room is not held by a connection that went quiet).
    pub fn release_room(&mut self, above: usize, keep: usize) {
        if self.start == self.end && self.bytes.len() > above {
            self.bytes = vec![0; keep];
            self.start = 0;
            self.end = 0;
        }
    }

    /// Mark `n` bytes of the last [`spare`](Self::spare) slice as received.
    pub fn advance(&mut self, n: usize) {
        assert!(self.end + n <= self.bytes.len(), "advanced past the buffer");
        self.end += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_consumes_compacts_and_grows() {
        let mut b = ReadBuffer::with_capacity(8);
        b.spare(4)[..4].copy_from_slice(b"abcd");
        b.advance(4);
        assert_eq!(b.filled(), b"abcd");
        b.consume(3);
        assert_eq!(b.filled(), b"d");
        let room = b.spare(7);
        assert!(room.len() >= 7, "compaction makes room");
        room[..7].copy_from_slice(b"efghijk");
        b.advance(7);
        assert_eq!(b.filled(), b"defghijk");
        b.spare(100)[..3].copy_from_slice(b"xyz");
        b.advance(3);
        assert_eq!(b.filled(), b"defghijkxyz");
        b.consume(11);
        assert!(b.filled().is_empty());
        b.release_room(50, 8);
        assert!(b.spare(1).len() <= 8, "an empty buffer gives its room back");
        b.spare(4)[..4].copy_from_slice(b"abcd");
        b.advance(4);
        b.release_room(0, 1);
        assert_eq!(b.filled(), b"abcd", "a buffer holding bytes keeps them");
    }
}

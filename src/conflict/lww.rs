//! Last-write-wins cells: the highest HLC timestamp wins; ties go to the delete, then to
//! the larger value bytes, so every replica picks the same survivor.
//!
//! This module owns that total order and the cell's byte layout. It must never consult
//! anything but the two cells (no clock, no replica identity): the survivor is a pure
//! function of the versions, which is what makes the merge a semilattice. The known
//! anomaly of the mode is deliberate: of two concurrent writes exactly one survives and
//! the other is lost without any client having seen it (use causal mode to keep both).

use super::codec::Reader;
use super::{DecodeError, Hlc};

/// A value or tombstone (`value: None`) stamped by its coordinator.
///
/// Byte layout (all integers little-endian), as written by [`LwwCell::encode`]:
///
/// ```text
/// offset size  field
/// 0      8     timestamp: Hlc as u64
/// 8      1     flag: 0 = tombstone (nothing follows), 1 = value
/// 9      4     value length in bytes (flag 1 only)
/// 13     len   value bytes           (flag 1 only)
/// ```
///
/// The layout has no version byte of its own: it is versioned by the [`super::KeyState`]
/// tag byte in front of it (a new layout gets a new tag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LwwCell {
    pub timestamp: Hlc,
    pub value: Option<Vec<u8>>,
}

/// The deterministic total order used by [`merge`]: timestamp, then delete over put,
/// then larger value bytes. Two cells of equal rank are equal.
fn rank(c: &LwwCell) -> (Hlc, bool, Option<&[u8]>) {
    (c.timestamp, c.value.is_none(), c.value.as_deref())
}

/// The survivor of `a` and `b` (a clone of it). Prefer [`LwwCell::merge_into`] or
/// [`merge_owned`] on hot paths: they clone nothing or only what must change.
pub fn merge(a: &LwwCell, b: &LwwCell) -> LwwCell {
    if rank(a) >= rank(b) {
        a.clone()
    } else {
        b.clone()
    }
}

/// The survivor of `a` and `b`, consuming both: no allocation.
pub fn merge_owned(a: LwwCell, b: LwwCell) -> LwwCell {
    if rank(&a) >= rank(&b) {
        a
    } else {
        b
    }
}

impl LwwCell {
    /// A live value written at `timestamp`.
    pub fn put(timestamp: Hlc, value: Vec<u8>) -> Self {
        Self {
            timestamp,
            value: Some(value),
        }
    }

    /// A tombstone written at `timestamp`.
    pub fn delete(timestamp: Hlc) -> Self {
        Self {
            timestamp,
            value: None,
        }
    }

    /// `self` beats `other` in the LWW order (strictly).
    pub fn wins_over(&self, other: &LwwCell) -> bool {
        rank(self) > rank(other)
    }

    /// `self = merge(self, other)`, touching `self` only when `other` wins (and then
    /// reusing `self`'s buffer for the bytes).
    pub fn merge_into(&mut self, other: &LwwCell) {
        if other.wins_over(self) {
            self.timestamp = other.timestamp;
            self.value.clone_from(&other.value);
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.0.to_le_bytes());
        match &self.value {
            None => out.push(0),
            Some(v) => {
                // Values are limited to 16 MiB by config long before this; a larger one
                // here is a bug upstream, and a silent truncation would corrupt data.
                let len = u32::try_from(v.len()).unwrap_or_else(|_| {
                    panic!("LWW value of {} bytes exceeds u32 length", v.len())
                });
                out.push(1);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let timestamp = Hlc(r.u64()?);
        let value = match r.u8()? {
            0 => None,
            1 => {
                let len = r.u32()? as usize;
                // `take` checks `len` against the remaining bytes before copying, so a
                // forged length cannot make us allocate.
                Some(r.take(len)?.to_vec())
            }
            _ => return Err(DecodeError::Invalid("lww value flag")),
        };
        Ok(LwwCell { timestamp, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented LWW anomaly: two concurrent puts, one survives, the other is gone.
    #[test]
    fn concurrent_puts_exactly_one_survives() {
        let a = LwwCell::put(Hlc::new(100, 0), b"alice".to_vec());
        let b = LwwCell::put(Hlc::new(100, 1), b"bob".to_vec());
        assert_eq!(merge(&a, &b), b);
        assert_eq!(merge(&b, &a), b);
        // Same timestamp: the larger value bytes win, on every replica.
        let c = LwwCell::put(Hlc::new(100, 1), b"carol".to_vec());
        assert_eq!(merge(&b, &c), c);
        assert_eq!(merge(&c, &b), c);
    }

    #[test]
    fn delete_wins_a_timestamp_tie() {
        let put = LwwCell::put(Hlc::new(5, 0), b"zzz".to_vec());
        let del = LwwCell::delete(Hlc::new(5, 0));
        assert_eq!(merge(&put, &del), del);
        assert_eq!(merge(&del, &put), del);
        let newer_put = LwwCell::put(Hlc::new(5, 1), Vec::new());
        assert_eq!(merge(&del, &newer_put), newer_put);
    }

    #[test]
    fn merge_into_matches_merge() {
        let a = LwwCell::put(Hlc::new(1, 0), b"a".to_vec());
        let b = LwwCell::put(Hlc::new(2, 0), b"b".to_vec());
        let mut x = a.clone();
        x.merge_into(&b);
        assert_eq!(x, merge(&a, &b));
        let mut y = b.clone();
        y.merge_into(&a);
        assert_eq!(y, b);
        assert_eq!(merge_owned(a, b.clone()), b);
    }
}

//! Versions and their merge: hybrid-logical-clock timestamps, last-write-wins cells and
//! causal (dotted-version-vector) states (DESIGN.md §7).
//!
//! This module owns the one rule by which two states of a key combine. The storage
//! engine (memtable, flush, compaction), the coordinator (read merge, read repair) and
//! replica writes all call [`merge`]; none of them may compare versions on their own.
//! It is pure: no I/O, no clock (callers pass `now`), no global RNG.
//!
//! The byte encoding of a [`KeyState`] ([`KeyState::encode`]) is stored on disk (commit
//! log, SSTables, hints) and sent between peers, so it is versioned and stable.

pub mod causal;
pub mod hlc;
pub mod lww;

pub use causal::{CausalContext, CausalState, Dot, Sibling};
pub use hlc::{Hlc, HlcClock};
pub use lww::LwwCell;

/// Which conflict rule a cluster runs (config key `conflict_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    /// Last write wins on HLC timestamps.
    Lww,
    /// Dotted version vectors; concurrent writes become siblings.
    Causal,
}

/// Everything a replica stores for one key: the value's version metadata and the value
/// (or tombstone). Both modes are a join-semilattice under [`merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    Lww(LwwCell),
    Causal(CausalState),
}

/// Error decoding a stored or received [`KeyState`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("key state truncated: needed {needed} bytes, had {had}")]
    Truncated { needed: usize, had: usize },
    #[error("unknown key state tag {0}")]
    UnknownTag(u8),
    #[error("key state has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("key state field invalid: {0}")]
    Invalid(&'static str),
}

/// Merge two states of the same key. Commutative, associative and idempotent; the
/// result is identical on every replica whatever order states arrive in.
///
/// States of different modes never meet in a correctly configured cluster (the mode is
/// cluster-wide and checked at join); if they do, the causal state wins so that no
/// sibling is dropped silently.
pub fn merge(a: &KeyState, b: &KeyState) -> KeyState {
    match (a, b) {
        (KeyState::Lww(x), KeyState::Lww(y)) => KeyState::Lww(lww::merge(x, y)),
        (KeyState::Causal(x), KeyState::Causal(y)) => KeyState::Causal(causal::merge(x, y)),
        (KeyState::Causal(x), KeyState::Lww(_)) | (KeyState::Lww(_), KeyState::Causal(x)) => {
            KeyState::Causal(x.clone())
        }
    }
}

impl KeyState {
    /// Tag bytes stored on disk and on the wire; explicit, stable numbers.
    const TAG_LWW: u8 = 1;
    const TAG_CAUSAL: u8 = 2;

    /// A live (non-tombstone) value exists.
    pub fn has_live_value(&self) -> bool {
        match self {
            KeyState::Lww(c) => c.value.is_some(),
            KeyState::Causal(s) => s.siblings.iter().any(|s| s.value.is_some()),
        }
    }

    /// Only deletes remain: a tombstone the compactor may drop after `gc_grace`.
    pub fn is_tombstone(&self) -> bool {
        !self.has_live_value()
    }

    /// Smallest and largest HLC timestamp carried (SSTable stats, tombstone GC).
    pub fn timestamp_range(&self) -> (Hlc, Hlc) {
        match self {
            KeyState::Lww(c) => (c.timestamp, c.timestamp),
            KeyState::Causal(s) => s.timestamp_range(),
        }
    }

    /// Approximate heap bytes, for memtable accounting.
    pub fn size_bytes(&self) -> usize {
        match self {
            KeyState::Lww(c) => 16 + c.value.as_ref().map_or(0, Vec::len),
            KeyState::Causal(s) => s.size_bytes(),
        }
    }

    /// Stable binary encoding: one tag byte, then the mode's own layout.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KeyState::Lww(c) => {
                out.push(Self::TAG_LWW);
                c.encode(out);
            }
            KeyState::Causal(s) => {
                out.push(Self::TAG_CAUSAL);
                s.encode(out);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_bytes() + 16);
        self.encode(&mut out);
        out
    }

    /// Decode exactly `bytes` (trailing bytes are an error).
    pub fn decode(bytes: &[u8]) -> Result<KeyState, DecodeError> {
        let (&tag, rest) = bytes
            .split_first()
            .ok_or(DecodeError::Truncated { needed: 1, had: 0 })?;
        let mut reader = codec::Reader::new(rest);
        let state = match tag {
            Self::TAG_LWW => KeyState::Lww(LwwCell::decode(&mut reader)?),
            Self::TAG_CAUSAL => KeyState::Causal(CausalState::decode(&mut reader)?),
            other => return Err(DecodeError::UnknownTag(other)),
        };
        reader.finish()?;
        Ok(state)
    }
}

/// Little-endian primitive reader shared by the decoders of this module.
pub(crate) mod codec {
    use super::DecodeError;

    pub struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(bytes: &'a [u8]) -> Self {
            Self { bytes }
        }
        pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
            if self.bytes.len() < n {
                return Err(DecodeError::Truncated {
                    needed: n,
                    had: self.bytes.len(),
                });
            }
            let (head, tail) = self.bytes.split_at(n);
            self.bytes = tail;
            Ok(head)
        }
        pub fn u8(&mut self) -> Result<u8, DecodeError> {
            Ok(self.take(1)?[0])
        }
        pub fn u32(&mut self) -> Result<u32, DecodeError> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        pub fn u64(&mut self) -> Result<u64, DecodeError> {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        }
        pub fn finish(self) -> Result<(), DecodeError> {
            if self.bytes.is_empty() {
                Ok(())
            } else {
                Err(DecodeError::TrailingBytes(self.bytes.len()))
            }
        }
    }
}

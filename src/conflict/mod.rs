//! Versions and their merge: hybrid-logical-clock timestamps, last-write-wins cells and
//! causal (dotted-version-vector) states (docs/design.md §7).
//!
//! This module owns the one rule by which two states of a key combine, and is the one
//! place where versions are created (an [`HlcClock`] timestamp for LWW, a new dot via
//! [`causal::write`] in causal mode). The storage engine (memtable, flush, compaction),
//! the coordinator (read merge, read repair) and replica writes all call [`merge`] (or
//! [`KeyState::merge_into`], [`merge_all`]); none of them may compare versions on their
//! own. It is pure: no I/O, no clock (callers pass `now_ms`), no global RNG.
//!
//! # Version model
//!
//! Two orders exist and must never be confused:
//!
//! - **Sequence number** (not defined here): the local, per-shard storage order in which
//!   a shard applied writes (commit log position, memtable/SSTable recency). It says
//!   which record a shard wrote later, nothing about which version is newer, and never
//!   leaves the shard.
//! - **Version** (defined here): carried with the value in its [`KeyState`], identical
//!   on every replica. In LWW mode the version is the coordinator's [`Hlc`] timestamp
//!   with a deterministic tie-break; in causal mode it is the set of siblings' [`Dot`]s
//!   plus the [`CausalContext`]. Which state wins is decided by [`merge`] on versions
//!   alone; storage order only decides which records must be merged.
//!
//! Because [`merge`] is a join (commutative, associative, idempotent) and canonical,
//! replicas that have received the same set of states hold `==` states and identical
//! bytes, whatever order or how many times the states arrived.
//!
//! The byte encoding of a [`KeyState`] ([`KeyState::encode`]) is stored on disk (commit
//! log, SSTables, hints) and sent between peers, so it is versioned and stable: a tag
//! byte selects the mode's layout (documented on [`LwwCell`] and [`CausalState`]); a new
//! layout gets a new tag or a new inner version byte, never a silent change.

pub mod causal;
pub mod hlc;
pub mod lww;

pub use causal::{Actor, CausalContext, CausalState, Dot, Sibling, TooManySiblings, WriteError};
pub use hlc::{ClockSkewError, Hlc, HlcClock};
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
        // Clone only the winner, not `a` followed by an overwrite.
        (KeyState::Lww(x), KeyState::Lww(y)) => KeyState::Lww(lww::merge(x, y)),
        _ => {
            let mut out = a.clone();
            out.merge_into(b);
            out
        }
    }
}

/// Merge any number of states of the same key (read merge across replicas, compaction
/// of several runs). `None` for no states.
pub fn merge_all<'a>(states: impl IntoIterator<Item = &'a KeyState>) -> Option<KeyState> {
    let mut states = states.into_iter();
    let mut out = states.next()?.clone();
    for state in states {
        out.merge_into(state);
    }
    Some(out)
}

impl KeyState {
    /// Tag bytes stored on disk and on the wire; explicit, stable numbers.
    const TAG_LWW: u8 = 1;
    const TAG_CAUSAL: u8 = 2;

    /// `self = merge(self, other)` in place. In LWW mode this clones nothing unless
    /// `other` wins; in causal mode it clones only the siblings taken from `other`.
    pub fn merge_into(&mut self, other: &KeyState) {
        match (&mut *self, other) {
            (KeyState::Lww(x), KeyState::Lww(y)) => x.merge_into(y),
            (KeyState::Causal(x), KeyState::Causal(y)) => x.merge_into(y),
            (KeyState::Causal(_), KeyState::Lww(_)) => {}
            (KeyState::Lww(_), KeyState::Causal(y)) => *self = KeyState::Causal(y.clone()),
        }
    }

    /// `merge(self, other)`, consuming both: no value bytes copied.
    pub fn merge_owned(self, other: KeyState) -> KeyState {
        match (self, other) {
            (KeyState::Lww(x), KeyState::Lww(y)) => KeyState::Lww(lww::merge_owned(x, y)),
            (KeyState::Causal(x), KeyState::Causal(y)) => {
                KeyState::Causal(causal::merge_owned(x, y))
            }
            (KeyState::Causal(x), KeyState::Lww(_)) | (KeyState::Lww(_), KeyState::Causal(x)) => {
                KeyState::Causal(x)
            }
        }
    }

    /// The live values a read returns: at most one in LWW mode, every live sibling (in
    /// dot order) in causal mode.
    pub fn live_values(&self) -> Vec<&[u8]> {
        match self {
            KeyState::Lww(c) => c.value.as_deref().into_iter().collect(),
            KeyState::Causal(s) => s.live_values(),
        }
    }

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
        pub fn remaining(&self) -> usize {
            self.bytes.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_all_of_nothing_is_none() {
        assert_eq!(merge_all(std::iter::empty::<&KeyState>()), None);
    }

    #[test]
    fn mixed_modes_keep_the_causal_state_whatever_the_order() {
        let lww = KeyState::Lww(LwwCell::put(Hlc::new(9, 0), b"x".to_vec()));
        let actor = Actor {
            node_id: 1,
            generation: 1,
        };
        let causal_state = causal::write(
            &CausalState::new(),
            &CausalContext::new(),
            actor,
            Hlc::new(1, 0),
            Some(b"y".to_vec()),
            4,
        )
        .expect("write");
        let causal = KeyState::Causal(causal_state);
        assert_eq!(merge(&lww, &causal), causal);
        assert_eq!(merge(&causal, &lww), causal);
        assert_eq!(merge_all([&lww, &causal, &lww]), Some(causal.clone()));
        assert_eq!(lww.clone().merge_owned(causal.clone()), causal);
        assert_eq!(causal.live_values(), vec![b"y".as_slice()]);
        assert_eq!(lww.live_values(), vec![b"x".as_slice()]);
    }
}

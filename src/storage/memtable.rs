//! The memtable: one shard's in-memory, ordered map of recent writes (docs/design.md
//! §5.2).
//!
//! It owns the newest state of every key written since the last flush, merged through
//! [`crate::conflict::merge`] (the one merge rule), and the byte accounting that decides
//! when it is full. When full, the shard freezes it into a [`FrozenMemtable`] that the
//! flush path writes to an SSTable while a fresh [`Memtable`] takes writes.
//!
//! It must never compare versions itself, never do I/O, and never be shared between
//! shards (it is `!Send` once frozen: an `Rc`).
//!
//! # Key order and the two numbers of an entry
//!
//! The memtable key is the plain user key, ordered by unsigned byte-wise comparison
//! (`Ord` of `[u8]`: lexicographic, a proper prefix sorts first). There is exactly one
//! entry per key: a later write to the same key is merged into it, not stored beside it.
//! SSTables are written in the same order, so [`Memtable::iter`] is the flush order.
//!
//! Entries live in a hash map and the key order in a B-tree set beside it, both holding
//! the same shared key: a point read is one hash probe instead of a B-tree descent that
//! chases a heap pointer at every comparison, an overwrite touches only the hash map, and
//! the order is kept up as keys arrive, so a flush never stops the shard to sort.
//!
//! Each [`Entry`] carries two different orders, kept apart on purpose:
//! - `seq`: the per-shard write sequence number, the local order in which this shard
//!   applied writes (commit-log order). It says nothing about which value wins.
//! - the value's version, inside the [`KeyState`] (HLC timestamp in LWW mode, dots and
//!   causal context in causal mode). Only `merge` looks at it.

use crate::conflict::{merge, KeyState};
use ahash::AHashMap;
use std::collections::BTreeSet;
use std::mem::size_of;
use std::rc::Rc;

/// One key's state in the memtable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Largest per-shard write sequence number merged into this entry (local order).
    pub seq: u64,
    /// The merged state: value(s) or tombstone, with their versions.
    pub state: KeyState,
}

/// Bytes charged per entry on top of its key and [`KeyState::size_bytes`]: the shared
/// key's two handles (hash map and order set) and its reference counts, the [`Entry`]
/// itself, and a share of a hash table's spare slots and of a B-tree node. In-memory
/// accounting only; it never reaches disk.
pub const ENTRY_OVERHEAD_BYTES: usize = 2 * size_of::<Key>() + 16 + size_of::<Entry>() + 48;

// The overhead must at least cover what the two maps store inline per entry.
const _: () = assert!(ENTRY_OVERHEAD_BYTES >= 2 * size_of::<Key>() + 16 + size_of::<Entry>());

/// A key shared by the hash map and the order set.
type Key = Rc<[u8]>;

/// The mutable memtable of one shard. See the module doc for the key order.
#[derive(Debug, Default)]
pub struct Memtable {
    entries: AHashMap<Key, Entry>,
    /// Every key of `entries`, in key order.
    order: BTreeSet<Key>,
    /// Sum over entries of `charge(key, state)`.
    size_bytes: usize,
    /// Smallest and largest `seq` applied, if any.
    seq_range: Option<(u64, u64)>,
}

/// Accounted size of one entry.
fn charge(key: &[u8], state: &KeyState) -> usize {
    key.len() + state.size_bytes() + ENTRY_OVERHEAD_BYTES
}

impl Memtable {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable with room for `keys` entries, so that filling it to about the
    /// size of the last one never stops a write to grow (and copy) the hash table.
    pub fn with_capacity(keys: usize) -> Self {
        Memtable {
            entries: AHashMap::with_capacity(keys),
            ..Self::default()
        }
    }

    /// Merge `state` into the entry of `key`, recording `seq` as the write's local
    /// sequence number.
    ///
    /// Precondition: `seq` is not smaller than any `seq` applied before (writes reach
    /// the memtable in commit-log order; several keys of one batch may share a `seq`).
    pub fn apply(&mut self, key: &[u8], state: KeyState, seq: u64) {
        if let Some((_, max_seq)) = self.seq_range {
            assert!(
                seq >= max_seq,
                "memtable writes must arrive in sequence order: seq {seq} after {max_seq}"
            );
        }
        self.seq_range = Some(match self.seq_range {
            None => (seq, seq),
            Some((min_seq, _)) => (min_seq, seq),
        });

        match self.entries.get_mut(key) {
            Some(entry) => {
                let old_charge = charge(key, &entry.state);
                entry.state = merge(&entry.state, &state);
                entry.seq = seq;
                let new_charge = charge(key, &entry.state);
                // Subtract first: the old charge is part of the running total.
                self.size_bytes = self.size_bytes - old_charge + new_charge;
            }
            None => {
                self.size_bytes += charge(key, &state);
                let shared: Key = Rc::from(key);
                self.order.insert(shared.clone());
                self.entries.insert(shared, Entry { seq, state });
            }
        }
    }

    /// The merged state of `key`, if written since the last flush.
    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        self.entries.get(key).map(|entry| &entry.state)
    }

    /// The entry of `key` with its sequence number.
    pub fn get_entry(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Approximate memory used, in bytes: keys + states + [`ENTRY_OVERHEAD_BYTES`] each.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Smallest and largest sequence number applied, `None` when nothing was applied.
    pub fn seq_range(&self) -> Option<(u64, u64)> {
        self.seq_range
    }

    /// All entries in key order (the flush order).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> + '_ {
        self.order.iter().map(|key| {
            let entry = &self.entries[key];
            (&key[..], entry)
        })
    }

    /// All entries in no particular order (cheaper than [`Memtable::iter`]).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&[u8], &Entry)> + '_ {
        self.entries.iter().map(|(key, entry)| (&key[..], entry))
    }

    /// Freeze for flushing. `covers_segment_id` is the id of the last commit-log segment
    /// holding writes of this memtable: the shard rolls the commit log to a new segment
    /// when it freezes, so every segment with id ≤ `covers_segment_id` is fully in this
    /// memtable or in older ones.
    pub fn freeze(self, covers_segment_id: u64) -> FrozenMemtable {
        self.check_invariants();
        FrozenMemtable {
            inner: Rc::new(Frozen {
                table: self,
                covers_segment_id,
            }),
        }
    }

    /// Recompute the accounting from scratch and compare. O(n): for tests and freeze.
    pub fn check_invariants(&self) {
        let recomputed: usize = self
            .entries
            .iter()
            .map(|(key, entry)| charge(key, &entry.state))
            .sum();
        assert_eq!(
            recomputed, self.size_bytes,
            "memtable size accounting drifted"
        );
        assert_eq!(
            self.order.len(),
            self.entries.len(),
            "key order set drifted"
        );
        assert!(self.order.iter().all(|key| self.entries.contains_key(key)));
        if let Some((min_seq, max_seq)) = self.seq_range {
            assert!(min_seq <= max_seq);
            assert!(self
                .entries
                .values()
                .all(|entry| (min_seq..=max_seq).contains(&entry.seq)));
        } else {
            assert!(self.entries.is_empty());
        }
    }
}

#[derive(Debug)]
struct Frozen {
    table: Memtable,
    covers_segment_id: u64,
}

/// An immutable memtable waiting to be (or being) flushed. Cheap to clone (`Rc`): the
/// read path and the flush task share it until the SSTable is live in the manifest.
#[derive(Clone, Debug)]
pub struct FrozenMemtable {
    inner: Rc<Frozen>,
}

impl FrozenMemtable {
    /// Last commit-log segment id whose writes this memtable covers (inclusive). Once its
    /// SSTable is in the manifest, segments up to this id may be recycled (provided older
    /// frozen memtables are flushed too).
    pub fn covers_segment_id(&self) -> u64 {
        self.inner.covers_segment_id
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        self.inner.table.get(key)
    }

    pub fn get_entry(&self, key: &[u8]) -> Option<&Entry> {
        self.inner.table.get_entry(key)
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.table.size_bytes()
    }

    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.table.is_empty()
    }

    pub fn seq_range(&self) -> Option<(u64, u64)> {
        self.inner.table.seq_range()
    }

    /// All entries in key order (the order an SSTable is written in).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> + '_ {
        self.inner.table.iter()
    }

    /// All entries in no particular order.
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&[u8], &Entry)> + '_ {
        self.inner.table.iter_unordered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflict::{Hlc, LwwCell};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn put(ts: u64, value: &[u8]) -> KeyState {
        KeyState::Lww(LwwCell {
            timestamp: Hlc(ts),
            value: Some(value.to_vec()),
        })
    }

    fn delete(ts: u64) -> KeyState {
        KeyState::Lww(LwwCell {
            timestamp: Hlc(ts),
            value: None,
        })
    }

    #[test]
    fn newer_version_wins_whatever_the_apply_order() {
        let mut m = Memtable::new();
        m.apply(b"k", put(10, b"new"), 1);
        m.apply(b"k", put(5, b"old"), 2);
        assert_eq!(m.get(b"k"), Some(&put(10, b"new")));
        // The local order still records the later write.
        assert_eq!(m.get_entry(b"k").map(|e| e.seq), Some(2));
        assert_eq!(m.len(), 1);
        m.check_invariants();
    }

    #[test]
    fn delete_replaces_value_and_shrinks_accounting() {
        let mut m = Memtable::new();
        m.apply(b"k", put(1, &[7u8; 1000]), 1);
        let with_value = m.size_bytes();
        assert_eq!(with_value, 1 + 16 + 1000 + ENTRY_OVERHEAD_BYTES);
        m.apply(b"k", delete(2), 2);
        assert_eq!(m.get(b"k"), Some(&delete(2)));
        assert_eq!(m.size_bytes(), 1 + 16 + ENTRY_OVERHEAD_BYTES);
        m.check_invariants();
    }

    #[test]
    fn iteration_is_plain_byte_order() {
        let mut m = Memtable::new();
        for (seq, key) in [&b"b"[..], b"a\xff", b"", b"a", b"\x00"].iter().enumerate() {
            m.apply(key, put(1, b"v"), seq as u64);
        }
        let keys: Vec<&[u8]> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b""[..], b"\x00", b"a", b"a\xff", b"b"]);
    }

    #[test]
    #[should_panic(expected = "sequence order")]
    fn out_of_order_seq_is_rejected() {
        let mut m = Memtable::new();
        m.apply(b"a", put(1, b"v"), 5);
        m.apply(b"b", put(1, b"v"), 4);
    }

    #[test]
    fn frozen_memtable_is_shared_and_keeps_segment_id() {
        let mut m = Memtable::new();
        m.apply(b"a", put(1, b"x"), 3);
        m.apply(b"b", delete(2), 4);
        let size = m.size_bytes();
        let frozen = m.freeze(17);
        let reader = frozen.clone();
        assert_eq!(reader.covers_segment_id(), 17);
        assert_eq!(reader.get(b"a"), Some(&put(1, b"x")));
        assert_eq!(reader.get(b"c"), None);
        assert_eq!(reader.seq_range(), Some((3, 4)));
        assert_eq!(frozen.size_bytes(), size);
        assert_eq!(frozen.iter().count(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Against a model: a BTreeMap folding every write through `merge`.
        #[test]
        fn matches_merge_model(
            writes in prop::collection::vec(
                (prop::collection::vec(0u8..4, 0..3), 0u64..20, prop::option::of(prop::collection::vec(any::<u8>(), 0..40))),
                0..200,
            )
        ) {
            let mut m = Memtable::new();
            let mut model: BTreeMap<Vec<u8>, KeyState> = BTreeMap::new();
            for (seq, (key, ts, value)) in writes.into_iter().enumerate() {
                let state = KeyState::Lww(LwwCell { timestamp: Hlc(ts), value });
                m.apply(&key, state.clone(), seq as u64);
                let merged = match model.get(&key) {
                    Some(old) => merge(old, &state),
                    None => state,
                };
                model.insert(key, merged);
            }
            m.check_invariants();
            prop_assert_eq!(m.len(), model.len());
            let got: Vec<(Vec<u8>, KeyState)> =
                m.iter().map(|(k, e)| (k.to_vec(), e.state.clone())).collect();
            let want: Vec<(Vec<u8>, KeyState)> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}

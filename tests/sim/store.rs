//! A node's durable key store as the simulator sees it: states merged in and visible at
//! once, made durable by an explicit sync that takes simulated time, and partly lost on
//! a crash. The [`NodeStore`] trait is the seam where the real storage engine (over
//! `MemDisk` with `power_loss`) plugs in later; [`ModelStore`] is the stand-in.
//!
//! It must never decide which version wins: every merge goes through the merge function
//! the node passes in (the real `conflict::merge`, or a planted buggy one).

use ringkv::cluster::{RngLike, SplitMix64};
use ringkv::conflict::KeyState;
use std::collections::BTreeMap;

pub type Key = Vec<u8>;
pub type MergeFn = fn(&KeyState, &KeyState) -> KeyState;

/// What the simulator needs from a node's storage.
pub trait NodeStore {
    /// The key's state as reads see it (unsynced writes included, as in a memtable).
    fn get(&self, key: &[u8]) -> Option<KeyState>;
    /// Merge `state` into `key`. Visible at once; durable only once a sync that began
    /// after this call completes. Returns the write's local sequence number.
    fn apply(&mut self, key: &[u8], state: &KeyState, merge: MergeFn) -> u64;
    /// Start a group commit: returns the sequence number it will make durable.
    fn begin_sync(&mut self) -> u64;
    /// The group commit that began with `through_seq` finished.
    fn complete_sync(&mut self, through_seq: u64);
    /// Highest sequence number known durable.
    fn durable_seq(&self) -> u64;
    /// Highest sequence number applied.
    fn last_seq(&self) -> u64;
    /// The process died (or the power went): unsynced writes are lost, except a random
    /// prefix that happened to reach the disk; the record after that prefix is torn.
    fn crash(&mut self, rng: &mut SplitMix64);
    /// (flushes, torn writes, records lost) so far, for the run summary.
    fn counters(&self) -> (u64, u64, u64) {
        (0, 0, 0)
    }
}

/// The simulator's own model of a commit log plus memtable: a durable map, and the
/// unsynced records in log order on top of it.
#[derive(Default)]
pub struct ModelStore {
    durable: BTreeMap<Key, KeyState>,
    /// Records not yet synced, in sequence order: (seq, key, merged state after apply).
    unsynced: Vec<(u64, Key, KeyState)>,
    visible: BTreeMap<Key, KeyState>,
    last_seq: u64,
    durable_seq: u64,
    /// Records lost to crashes, torn ones included (for stats only).
    pub lost_records: u64,
    pub torn_writes: u64,
}

impl NodeStore for ModelStore {
    fn get(&self, key: &[u8]) -> Option<KeyState> {
        self.visible.get(key).cloned()
    }

    fn apply(&mut self, key: &[u8], state: &KeyState, merge: MergeFn) -> u64 {
        let merged = match self.visible.get(key) {
            Some(old) => merge(old, state),
            None => state.clone(),
        };
        self.last_seq += 1;
        self.visible.insert(key.to_vec(), merged.clone());
        self.unsynced.push((self.last_seq, key.to_vec(), merged));
        self.last_seq
    }

    fn begin_sync(&mut self) -> u64 {
        self.last_seq
    }

    fn complete_sync(&mut self, through_seq: u64) {
        assert!(through_seq <= self.last_seq, "sync beyond the log end");
        let split = self
            .unsynced
            .partition_point(|(seq, _, _)| *seq <= through_seq);
        // The log records carry the merged state, so replaying them in order onto the
        // durable map reproduces what was visible at `through_seq`.
        for (_, key, state) in self.unsynced.drain(..split) {
            self.durable.insert(key, state);
        }
        self.durable_seq = self.durable_seq.max(through_seq);
    }

    fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn counters(&self) -> (u64, u64, u64) {
        (0, self.torn_writes, self.lost_records)
    }

    fn crash(&mut self, rng: &mut SplitMix64) {
        // A prefix of the unsynced tail may have reached the platter before the crash;
        // the record right after it is torn and discarded by recovery, the rest never
        // left the page cache.
        let survivors = rng.below(self.unsynced.len() as u64 + 1) as usize;
        let tail = self.unsynced.split_off(survivors);
        self.lost_records += tail.len() as u64;
        for (_, key, state) in self.unsynced.drain(..) {
            self.durable.insert(key, state);
        }
        self.visible = self.durable.clone();
        self.torn_writes += u64::from(!tail.is_empty());
        // Sequence numbers keep growing across the crash so stale sync completions of
        // the previous life can never mark new records durable.
        self.durable_seq = self.last_seq;
        self.invariants();
    }
}

impl ModelStore {
    pub fn invariants(&self) {
        assert!(self.durable_seq <= self.last_seq);
        assert!(self
            .unsynced
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[1].0 <= self.last_seq));
    }
}

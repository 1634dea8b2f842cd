//! One simulated node's hinted handoff, the sim's counterpart of `src/server/hints.rs`:
//! the real pure [`HintBook`] (window and bytes bounds, token-bucket paced replay,
//! per-target in-flight limit, backoff, timeouts) over the real durable
//! [`HintLog`] on the node's own in-memory disk ([`MemDisk`], a directory apart from
//! the store's), plus the hint payloads the book does not hold.
//!
//! **Durability is modelled, not assumed.** A hint admitted by the book is first queued
//! as an *append in progress*; the node's hint group commit ([`NodeHints::begin_commit`]
//! / [`NodeHints::complete_commit`]) takes simulated time (the same sync latency as the
//! store), and only when it completes are the hints appended to the log (a write-through
//! write on the `MemDisk`), inserted into the book, and their stand-in acks sent.
//! Delivered markers are queued the same way. A crash loses every queued append and
//! marker; half the time it lands in the middle of the commit (`halt_after(0)`: the
//! first queued record's write is in flight when power fails) and the torn write is cut
//! at a random length, as `EngineStore` does for the commit log. The log is
//! then recovered (`RecoveryPolicy::TolerateCorruptTail`) and the book rebuilt from what
//! it recovered, exactly as a restarting server does. So: a stand-in never acks a hint
//! that a crash can lose, a hint whose marker was lost is replayed again (at least once),
//! and a hint whose append never completed may or may not survive (never acked, so
//! either is correct).
//!
//! It must never decide what to replay or when (that is the book), and never read a
//! clock or an RNG of its own (`now_ms` and the world's seeded RNG come in).

use futures_lite::future::block_on;
use ringkv::cluster::hints::{
    Admission, HintBook, HintEffect, HintLimits, HintMeta, ReplayOutcome, TargetStats,
};
use ringkv::cluster::{NodeId, RngLike, SplitMix64};
use ringkv::conflict::KeyState;
use ringkv::storage::commitlog::RecoveryPolicy;
use ringkv::storage::hintlog::HintLog;
use ringkv::storage::mem_disk::MemDisk;
use std::collections::BTreeMap;

use crate::network::HintOrigin;
use crate::store::Key;

/// Hint log segment size: small, so a run rolls and releases segments.
const HINT_SEGMENT_BYTES: u64 = 4 * 4096;

/// A hint admitted by the book whose append has not completed yet.
struct PendingAppend {
    target: NodeId,
    created_ms: u64,
    key: Key,
    state: KeyState,
    /// Who waits for the hint to be durable (a stand-in's coordinator), if anyone.
    reply: Option<(NodeId, HintOrigin)>,
}

/// Cumulative counters over the node's lives (the book's own reset on a crash).
#[derive(Clone, Copy, Debug, Default)]
pub struct HintCounters {
    pub stored: u64,
    /// Of those, stored as a sloppy-quorum stand-in (and acked to a coordinator).
    pub stand_in: u64,
    pub delivered: u64,
    pub skipped_window: u64,
    pub skipped_bytes: u64,
    /// Appends queued when the node crashed (never acked, lost or not).
    pub appends_cut: u64,
    pub torn_writes: u64,
    /// Hints the log gave back on reopening.
    pub recovered: u64,
}

pub struct NodeHints {
    disk: MemDisk,
    log: HintLog<MemDisk>,
    book: HintBook,
    /// The mutation of every hint in the book, by hint id.
    payloads: BTreeMap<u64, (Key, KeyState)>,
    appends: Vec<PendingAppend>,
    /// Ids the book delivered whose marker is not written yet.
    markers: Vec<u64>,
    /// The group commit in flight: (tag, appends it covers, markers it covers).
    commit_in_flight: Option<(u64, usize, usize)>,
    next_commit_tag: u64,
    /// When the armed book wake-up timer fires, if one is armed.
    pub wake_at_ms: Option<u64>,
    counters: HintCounters,
    /// Something changed since the last [`NodeHints::invariants`] check.
    dirty: bool,
    /// What `set_target_up` last told the book, per target.
    reported_up: BTreeMap<NodeId, bool>,
}

impl NodeHints {
    pub fn new(limits: HintLimits) -> Self {
        let disk = MemDisk::with_label("sim-hints");
        let (log, recovered) = open_log(&disk);
        assert!(recovered.pending.is_empty(), "a fresh hint log has hints");
        Self {
            disk,
            log,
            book: HintBook::new(limits),
            payloads: BTreeMap::new(),
            appends: Vec::new(),
            markers: Vec::new(),
            commit_in_flight: None,
            next_commit_tag: 0,
            wake_at_ms: None,
            counters: HintCounters::default(),
            dirty: true,
            reported_up: BTreeMap::new(),
        }
    }

    /// Liveness of `target` as the node's failure detector sees it.
    pub fn set_target_up(&mut self, target: NodeId, up: bool, now_ms: u64) {
        // Repeating the current state is harmless to the book; skipping it saves the
        // invariant check after every gossip step.
        if self.reported_up.insert(target, up) != Some(up) {
            self.dirty = true;
            self.book.set_target_up(target, up, now_ms);
        }
    }

    /// Ask the book whether a hint of this mutation for `target` may be stored; if so
    /// queue its append (durable once a group commit completes). The refusal is
    /// returned (the book has counted it and flagged the target as needing repair).
    pub fn admit(
        &mut self,
        target: NodeId,
        key: Key,
        state: KeyState,
        now_ms: u64,
        reply: Option<(NodeId, HintOrigin)>,
    ) -> Result<(), Admission> {
        self.dirty = true;
        let size_bytes = (key.len() + state.to_bytes().len()) as u64;
        match self.book.admit(target, size_bytes, now_ms) {
            Admission::Store => {
                self.appends.push(PendingAppend {
                    target,
                    created_ms: now_ms,
                    key,
                    state,
                    reply,
                });
                Ok(())
            }
            refused => {
                match refused {
                    Admission::SkippedWindow => self.counters.skipped_window += 1,
                    _ => self.counters.skipped_bytes += 1,
                }
                Err(refused)
            }
        }
    }

    /// Start a group commit of everything queued, unless one is in flight or nothing is
    /// queued; returns its tag (the caller schedules its completion).
    pub fn begin_commit(&mut self) -> Option<u64> {
        if self.commit_in_flight.is_some() || (self.appends.is_empty() && self.markers.is_empty()) {
            return None;
        }
        self.next_commit_tag += 1;
        let tag = self.next_commit_tag;
        self.commit_in_flight = Some((tag, self.appends.len(), self.markers.len()));
        self.dirty = true;
        Some(tag)
    }

    /// The group commit `tag` completed: its hints are appended durably and enter the
    /// book, its markers are written. Returns the stand-in acks now due. A stale tag (a
    /// commit of a previous life) does nothing.
    pub fn complete_commit(&mut self, tag: u64) -> Vec<(NodeId, HintOrigin)> {
        let Some((in_flight, appends, markers)) = self.commit_in_flight else {
            return Vec::new();
        };
        if in_flight != tag {
            return Vec::new();
        }
        self.commit_in_flight = None;
        self.dirty = true;
        let mut replies = Vec::new();
        for append in self.appends.drain(..appends) {
            let state_bytes = append.state.to_bytes();
            let id = block_on(self.log.append(
                append.target,
                append.created_ms,
                &append.key,
                &state_bytes,
            ))
            .unwrap_or_else(|e| panic!("hint log append failed: {e}"));
            self.book.insert(HintMeta {
                id,
                target: append.target,
                created_ms: append.created_ms,
                size_bytes: (append.key.len() + state_bytes.len()) as u64,
            });
            let previous = self.payloads.insert(id, (append.key, append.state));
            assert!(previous.is_none(), "hint id {id} reused");
            self.counters.stored += 1;
            if let Some(reply) = append.reply {
                self.counters.stand_in += 1;
                replies.push(reply);
            }
        }
        let delivered: Vec<u64> = self.markers.drain(..markers).collect();
        if !delivered.is_empty() {
            block_on(self.log.mark_delivered(&delivered))
                .unwrap_or_else(|e| panic!("hint log marker failed: {e}"));
        }
        replies
    }

    /// What to replay now: (hint id, target, key, state) for each replay the book allows.
    pub fn poll(&mut self, now_ms: u64) -> Vec<(u64, NodeId, Key, KeyState)> {
        let mut replays = Vec::new();
        // Polling an empty book only moves its token bucket.
        self.dirty |= self.book.pending_count() > 0;
        for effect in self.book.poll(now_ms) {
            match effect {
                HintEffect::Replay { id, target } => {
                    let Some((key, state)) = self.payloads.get(&id) else {
                        panic!("book replays hint {id} with no payload");
                    };
                    replays.push((id, target, key.clone(), state.clone()));
                }
                HintEffect::Delete { ids } => self.on_delete(ids),
            }
        }
        replays
    }

    /// The answer to a replay of hint `id`.
    pub fn on_replay_result(&mut self, id: u64, outcome: ReplayOutcome, now_ms: u64) {
        self.dirty = true;
        for effect in self.book.on_replay_result(id, outcome, now_ms) {
            match effect {
                HintEffect::Delete { ids } => self.on_delete(ids),
                HintEffect::Replay { .. } => panic!("a replay result asked for a replay"),
            }
        }
    }

    fn on_delete(&mut self, ids: Vec<u64>) {
        for id in &ids {
            assert!(
                self.payloads.remove(id).is_some(),
                "delete of unknown hint {id}"
            );
        }
        self.counters.delivered += ids.len() as u64;
        self.markers.extend(ids);
    }

    pub fn next_wake_ms(&self, now_ms: u64) -> Option<u64> {
        self.book.next_wake_ms(now_ms)
    }

    /// Hints not yet delivered: in the book, or admitted and still being appended.
    pub fn pending(&self) -> usize {
        self.book.pending_count() + self.appends.len()
    }

    /// Hints admitted whose append has not completed.
    pub fn appends_in_progress(&self) -> usize {
        self.appends.len()
    }

    pub fn stats(&self) -> BTreeMap<NodeId, TargetStats> {
        self.book.stats()
    }

    pub fn counters(&self) -> HintCounters {
        self.counters
    }

    /// The process died: the book, the payloads and every queued append and marker are
    /// gone; the disk loses what was not synced (see the module doc), and the log is
    /// recovered into a fresh book, as on a restart.
    pub fn crash(&mut self, rng: &mut SplitMix64) {
        self.counters.appends_cut += self.appends.len() as u64;
        let queued = !self.appends.is_empty() || !self.markers.is_empty();
        if queued && rng.chance(1, 2) {
            // Power fails inside the group commit: the write of the first queued record
            // is cut (the segment is write-through, so that write is the commit).
            self.disk.halt_after(0);
            if let Some(append) = self.appends.first() {
                let _ = block_on(self.log.append(
                    append.target,
                    append.created_ms,
                    &append.key,
                    &append.state.to_bytes(),
                ));
            } else {
                let _ = block_on(self.log.mark_delivered(&self.markers));
            }
        }
        match self.disk.last_unsynced_write() {
            Some(write) => {
                let keep_bytes = rng.below(write.len as u64 + 1) as usize;
                self.disk.power_loss_tearing(keep_bytes);
                self.counters.torn_writes += 1;
            }
            None => self.disk.power_loss(),
        }
        let (log, recovered) = open_log(&self.disk);
        self.log = log;
        self.book = HintBook::new(self.book.limits().clone());
        self.payloads.clear();
        self.appends.clear();
        self.markers.clear();
        self.commit_in_flight = None;
        self.wake_at_ms = None;
        self.reported_up.clear();
        self.counters.recovered += recovered.pending.len() as u64;
        for hint in recovered.pending {
            let state = KeyState::decode(&hint.state)
                .unwrap_or_else(|e| panic!("recovered hint {} undecodable: {e}", hint.id));
            self.book.insert(HintMeta {
                id: hint.id,
                target: hint.target,
                created_ms: hint.created_ms,
                size_bytes: hint.size_bytes(),
            });
            self.payloads.insert(hint.id, (hint.key, state));
        }
        self.invariants();
    }

    /// [`NodeHints::invariants`] if anything changed since the last check (the world
    /// calls this after every step of the node).
    pub fn check_if_changed(&mut self) {
        if std::mem::take(&mut self.dirty) {
            self.invariants();
        }
    }

    /// The book's and the log's own invariants, and their agreement: every hint in the
    /// book has its payload and is pending in the log; the log's other pending hints are
    /// exactly those delivered whose marker is still queued.
    pub fn invariants(&self) {
        self.book.invariants();
        self.log.invariants();
        assert_eq!(
            self.payloads.len(),
            self.book.pending_count(),
            "hint payloads vs book"
        );
        assert_eq!(
            self.log.stats().pending_count,
            (self.book.pending_count() + self.markers.len()) as u64,
            "hint log pending vs book + queued markers"
        );
        if let Some((_, appends, markers)) = self.commit_in_flight {
            assert!(appends <= self.appends.len() && markers <= self.markers.len());
        }
    }
}

fn open_log(disk: &MemDisk) -> (HintLog<MemDisk>, ringkv::storage::hintlog::Recovered) {
    block_on(HintLog::open(
        disk.clone(),
        RecoveryPolicy::TolerateCorruptTail,
        HINT_SEGMENT_BYTES,
    ))
    .unwrap_or_else(|e| panic!("hint log failed to open: {e}"))
}

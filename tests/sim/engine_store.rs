//! [`NodeStore`] over the real storage engine (`Engine<MemDisk>`): commit log, memtables,
//! SSTables, manifest and compaction, on an in-memory disk whose power loss drops what
//! was not synced and can tear the last write.
//!
//! The engine runs in `periodic` sync mode so that an append returns once buffered and
//! the simulator's group-commit timer decides when `sync` happens (batch mode would make
//! every write durable before it is visible, and leave the sim no window to crash in).
//! There is no glommio executor here: MemDisk completes every future immediately, so
//! `block_on` drives them. Maintenance is done inline: every frozen memtable is flushed
//! right after the write that froze it, and a compaction is tried after each flush.
//!
//! The engine always merges with `conflict::merge`; a planted merge bug only reaches the
//! coordinator's read merge on these nodes.

use futures_lite::future::block_on;
use ringkv::cluster::{RngLike, SplitMix64};
use ringkv::conflict::{ConflictMode, KeyState};
use ringkv::storage::commitlog::{CommitLogConfig, SyncMode};
use ringkv::storage::engine::{Engine, EngineOptions};
use ringkv::storage::mem_disk::MemDisk;

use crate::store::{MergeFn, NodeStore};

pub struct EngineStore {
    disk: MemDisk,
    engine: Engine<MemDisk>,
    options: EngineOptions,
    last_seq: u64,
    durable_seq: u64,
    pub flushes: u64,
    pub torn_writes: u64,
}

impl EngineStore {
    pub fn new(mode: ConflictMode) -> Self {
        let base = EngineOptions::for_tests();
        let options = EngineOptions {
            commitlog: CommitLogConfig {
                segment_size_bytes: 16 * 1024,
                // The period is never used: the simulator calls `sync` itself.
                sync: SyncMode::Periodic { period_ms: 1_000 },
            },
            // Small, so a short run flushes SSTables and releases segments.
            memtable_size_bytes: 2 * 1024,
            conflict_mode: mode,
            ..base
        };
        let disk = MemDisk::with_label("sim");
        let engine = Self::open(&disk, &options);
        Self {
            disk,
            engine,
            options,
            last_seq: 0,
            durable_seq: 0,
            flushes: 0,
            torn_writes: 0,
        }
    }

    fn open(disk: &MemDisk, options: &EngineOptions) -> Engine<MemDisk> {
        match block_on(Engine::open(disk.clone(), options.clone())) {
            Ok((engine, _report)) => engine,
            Err(e) => panic!("engine failed to open after a crash: {e}"),
        }
    }
}

impl NodeStore for EngineStore {
    fn get(&self, key: &[u8]) -> Option<KeyState> {
        block_on(self.engine.read(key)).unwrap_or_else(|e| panic!("engine read failed: {e}"))
    }

    fn apply(&mut self, key: &[u8], state: &KeyState, _merge: MergeFn) -> u64 {
        block_on(self.engine.write(key, state.clone()))
            .unwrap_or_else(|e| panic!("engine write failed: {e}"));
        // No maintenance task runs here, so flush what the write froze before the next
        // write could wait on backpressure forever.
        while block_on(self.engine.flush_one()).unwrap_or_else(|e| panic!("flush failed: {e}")) {
            self.flushes += 1;
            block_on(self.engine.compact_once(false))
                .unwrap_or_else(|e| panic!("compaction failed: {e}"));
        }
        self.last_seq += 1;
        self.last_seq
    }

    fn begin_sync(&mut self) -> u64 {
        self.last_seq
    }

    fn complete_sync(&mut self, through_seq: u64) {
        assert!(through_seq <= self.last_seq, "sync beyond the log end");
        block_on(self.engine.sync()).unwrap_or_else(|e| panic!("engine sync failed: {e}"));
        // The real sync happens now, so it covers every write applied so far.
        self.durable_seq = self.last_seq;
    }

    fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn counters(&self) -> (u64, u64, u64) {
        (self.flushes, self.torn_writes, 0)
    }

    fn crash(&mut self, rng: &mut SplitMix64) {
        // The commit log buffers unsynced records in memory; to crash in the middle of
        // a group commit, cut the sync's write-through write in flight (halt at it),
        // then tear it.
        if self.last_seq > self.durable_seq && rng.chance(1, 2) {
            self.disk.halt_after(0);
            let _ = block_on(self.engine.sync());
        }
        match self.disk.last_unsynced_write() {
            Some(write) => {
                let keep_bytes = rng.below(write.len as u64 + 1) as usize;
                self.disk.power_loss_tearing(keep_bytes);
                self.torn_writes += 1;
            }
            None => self.disk.power_loss(),
        }
        self.engine = Self::open(&self.disk, &self.options);
        self.durable_seq = self.last_seq;
    }
}

//! The engine of one shard: assembles the commit log, memtables, SSTables, manifest,
//! block cache and compaction into `write` / `read` (docs/design.md §5).
//!
//! Write path: encode a record → commit log append (in `batch` mode this returns after
//! the group commit's durable write) → merge into the active memtable → when it is full,
//! freeze it and wake the maintenance task. Read path: active memtable, frozen
//! memtables and every SSTable that may hold the key; the states found are combined
//! with [`conflict::merge`] (a join, so order does not matter and nothing is lost when
//! replicas delivered versions out of timestamp order).
//!
//! Durability bookkeeping: every memtable remembers the oldest commit-log segment that
//! holds one of its records. After a flush, the manifest's replay point becomes the
//! oldest segment still referenced by an unflushed memtable, and only segments below it
//! are released. Replaying a segment twice is harmless: merge is idempotent.
//!
//! Must never: acknowledge a write before its record is durable (batch mode), release
//! a segment whose records are not in a live SSTable named by a durable manifest, or
//! keep accepting writes after the commit log failed a sync.

use super::cache::BlockCache;
use super::commitlog::{
    CommitLog, CommitLogConfig, CommitLogError, RecoveryPolicy, SegmentId, SyncMode,
};
use super::compaction::{self, CompactionConfig, CompactionTask, TableSummary};
use super::disk::Disk;
use super::manifest::{Manifest, ManifestError};
use super::memtable::{FrozenMemtable, Memtable};
use super::sstable::{Sstable, SstableBuilder, SstableError, SstableInfo};
use crate::config::{CommitlogSync, Config};
use crate::conflict::{ConflictMode, KeyState};
use crate::event::Event;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Settings of one shard's engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub commitlog: CommitLogConfig,
    pub memtable_size_bytes: usize,
    pub block_cache_size_bytes: usize,
    pub sstable_block_size_bytes: usize,
    pub compaction: CompactionConfig,
    pub conflict_mode: ConflictMode,
    /// Largest number of frozen memtables waiting for flush before writes wait.
    pub max_frozen_memtables: usize,
}

impl EngineOptions {
    pub fn from_config(config: &Config) -> Self {
        let sync = match config.commitlog_sync {
            CommitlogSync::Batch => SyncMode::Batch,
            CommitlogSync::Periodic => SyncMode::Periodic {
                period_ms: config.commitlog_sync_period_ms,
            },
        };
        let compaction = CompactionConfig {
            gc_grace_seconds: config.gc_grace_seconds,
            ..CompactionConfig::default()
        };
        EngineOptions {
            commitlog: CommitLogConfig {
                segment_size_bytes: config.commitlog_segment_size_bytes,
                sync,
            },
            memtable_size_bytes: config.memtable_size_bytes as usize,
            block_cache_size_bytes: config.block_cache_size_bytes as usize,
            sstable_block_size_bytes: config.sstable_block_size_bytes as usize,
            compaction,
            conflict_mode: config.conflict_mode,
            max_frozen_memtables: 4,
        }
    }

    /// Small settings for tests: tiny memtables and segments, so flushes, compactions
    /// and segment releases happen after a few writes.
    pub fn for_tests() -> Self {
        EngineOptions {
            commitlog: CommitLogConfig {
                segment_size_bytes: 64 * 1024,
                sync: SyncMode::Batch,
            },
            memtable_size_bytes: 16 * 1024,
            block_cache_size_bytes: 256 * 1024,
            sstable_block_size_bytes: 4096,
            compaction: CompactionConfig {
                min_sstable_size_bytes: 4096,
                ..CompactionConfig::default()
            },
            conflict_mode: ConflictMode::Lww,
            max_frozen_memtables: 4,
        }
    }
}

/// Everything that can go wrong in the engine, with the file at fault where known.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    CommitLog(#[from] CommitLogError),
    #[error(transparent)]
    Sstable(#[from] SstableError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("commit log record at position {index} is corrupt: {reason}")]
    BadRecord { index: usize, reason: String },
    #[error(
        "the engine stopped accepting writes after a failed commit log sync; restart the node"
    )]
    Failed,
}

/// What `open` found and did; logged at startup.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub records_replayed: u64,
    pub sstables: usize,
    pub torn_tail: Option<String>,
    /// Periodic mode: writes since the last periodic sync that power loss took (a hole
    /// in the newest commit log segment, and everything after it).
    pub lost_since_sync: Option<String>,
    pub orphans_removed: usize,
}

impl fmt::Display for OpenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered_records={} sstables={}",
            self.records_replayed, self.sstables
        )?;
        if let Some(t) = &self.torn_tail {
            write!(f, " torn_tail=\"{t}\"")?;
        }
        if let Some(t) = &self.lost_since_sync {
            write!(f, " lost_since_sync=\"{t}\"")?;
        }
        if self.orphans_removed > 0 {
            write!(f, " orphans_removed={}", self.orphans_removed)?;
        }
        Ok(())
    }
}

/// Engine counters, cheap to copy (sent between shards for `status`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    /// SSTable bytes plus memtable bytes.
    pub data_bytes: u64,
    pub sstables: u64,
    pub memtable_bytes: u64,
    pub frozen_memtables: u64,
    pub flushes: u64,
    pub compactions: u64,
    pub writes: u64,
    pub reads: u64,
    /// Commit log appends, group commits and bytes written (from its stats).
    pub commitlog_appends: u64,
    pub commitlog_group_commits: u64,
    pub commitlog_group_commit_micros: u64,
    pub commitlog_bytes_written: u64,
}

/// One page of [`Engine::scan_page`]: merged states in key order, and whether keys
/// after the last one may still match.
#[derive(Debug, Default)]
pub struct ScanPage {
    pub entries: Vec<(Vec<u8>, KeyState)>,
    pub more: bool,
}

/// The smallest matching keys seen so far during a scan, at most `limit_keys`, each
/// with the merge of every version seen of it. Once full, only a key smaller than the
/// largest kept one gets in (evicting it), so the kept set only moves down: a key
/// dropped once (or refused) is larger than everything kept from then on, and every key
/// finally kept was merged from every source.
struct ScanWindow {
    kept: std::collections::BTreeMap<Vec<u8>, KeyState>,
    limit_keys: usize,
    /// A matching key was refused or evicted: the page is not the end.
    more: bool,
}

impl ScanWindow {
    fn offer(&mut self, key: &[u8], state: impl FnOnce() -> Option<KeyState>) {
        if let Some(have) = self.kept.remove(key) {
            let merged = match state() {
                Some(s) => have.merge_owned(s),
                None => have,
            };
            self.kept.insert(key.to_vec(), merged);
            return;
        }
        if self.kept.len() >= self.limit_keys {
            match self.kept.last_key_value() {
                Some((largest, _)) if key < largest.as_slice() => {
                    self.kept.pop_last();
                    self.more = true;
                }
                _ => {
                    self.more = true;
                    return;
                }
            }
        }
        if let Some(s) = state() {
            self.kept.insert(key.to_vec(), s);
        }
        assert!(self.kept.len() <= self.limit_keys, "scan window overflow");
    }
}

/// A commit-log record: one key and its new state.
///
/// Layout (little-endian): `key_len u32 | key | KeyState::encode`. The commit log adds
/// its own framing (length, CRC32C, segment generation); this is only the payload.
fn encode_record(key: &[u8], state: &KeyState, out: &mut Vec<u8>) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    state.encode(out);
}

fn decode_record(bytes: &[u8]) -> Result<(&[u8], KeyState), String> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("record shorter than its key length")?;
    let key_len = u32::from_le_bytes(len_bytes) as usize;
    let key = bytes
        .get(4..4 + key_len)
        .ok_or("record shorter than its key")?;
    let state = KeyState::decode(&bytes[4 + key_len..]).map_err(|e| e.to_string())?;
    Ok((key, state))
}

fn sstable_name(id: u64) -> String {
    format!("sstable-{id:020}.sst")
}

fn parse_sstable_name(name: &str) -> Option<u64> {
    name.strip_prefix("sstable-")?
        .strip_suffix(".sst")?
        .parse()
        .ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A memtable and the oldest commit-log segment holding one of its records.
struct Active {
    table: Memtable,
    min_segment: Option<u64>,
}

struct Frozen {
    table: FrozenMemtable,
    min_segment: Option<u64>,
}

struct State<D: Disk> {
    active: Active,
    /// Oldest first.
    frozen: Vec<Frozen>,
    /// Live SSTables, newest (highest id) first.
    tables: Vec<Rc<Sstable<D>>>,
    manifest: Manifest,
    /// Table ids taking part in a running compaction.
    compacting: Vec<u64>,
}

struct Inner<D: Disk> {
    disk: D,
    log: CommitLog<D>,
    cache: Rc<BlockCache>,
    options: EngineOptions,
    state: RefCell<State<D>>,
    next_seq: Cell<u64>,
    /// Wakes the maintenance task (a memtable was frozen, a table was added).
    work: RefCell<Option<std::task::Waker>>,
    work_pending: Cell<bool>,
    /// Wakes writers waiting for a flush when too many memtables are frozen.
    flushed: RefCell<Vec<std::task::Waker>>,
    stats: RefCell<EngineStats>,
}

/// One shard's storage engine. Cheap to clone (shared `Rc`); never leaves its thread.
pub struct Engine<D: Disk> {
    inner: Rc<Inner<D>>,
}

impl<D: Disk> Clone for Engine<D> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Disk + Clone> Engine<D> {
    /// Open (or create) the engine in `disk`: load the manifest, open its SSTables,
    /// remove orphans, replay the commit log into a memtable.
    pub async fn open(disk: D, options: EngineOptions) -> Result<(Self, OpenReport), EngineError> {
        options
            .compaction
            .validate()
            .map_err(|reason| EngineError::Io {
                context: "invalid compaction settings".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
            })?;
        let mut report = OpenReport::default();
        let manifest = match Manifest::load(&disk).await? {
            Some(m) => {
                m.check_conflict_mode(&disk, options.conflict_mode)?;
                m
            }
            None => Manifest::new(options.conflict_mode),
        };
        let cache = Rc::new(BlockCache::new(options.block_cache_size_bytes));
        let mut tables = Vec::new();
        for summary in manifest.tables().iter().rev() {
            let table =
                Sstable::open(&disk, &sstable_name(summary.id), summary.id, cache.clone()).await?;
            tables.push(Rc::new(table));
        }
        report.sstables = tables.len();
        // SSTable files not in the manifest are leftovers of a flush or compaction that
        // crashed before its manifest update: never live, safe to remove.
        let live: Vec<u64> = manifest.tables().iter().map(|t| t.id).collect();
        let names = disk.list().await.map_err(|source| EngineError::Io {
            context: "cannot list data directory".into(),
            source,
        })?;
        for name in names {
            if let Some(id) = parse_sstable_name(&name) {
                if !live.contains(&id) {
                    disk.remove(&name).await.map_err(|source| EngineError::Io {
                        context: format!("cannot remove orphan {name}"),
                        source,
                    })?;
                    report.orphans_removed += 1;
                }
            }
        }
        if report.orphans_removed > 0 {
            disk.sync_dir().await.map_err(|source| EngineError::Io {
                context: "cannot sync data directory".into(),
                source,
            })?;
        }

        // Replay straight into the memtable; the first undecodable record stops it.
        let mut active = Active {
            table: Memtable::new(),
            min_segment: None,
        };
        let mut seq = 0u64;
        let mut bad_record: Option<EngineError> = None;
        let (log, recovery) = CommitLog::open_with(
            disk.clone(),
            options.commitlog,
            RecoveryPolicy::TolerateCorruptTail,
            |segment, payload| {
                if bad_record.is_some() {
                    return;
                }
                match decode_record(payload) {
                    Ok((key, state)) => {
                        seq += 1;
                        active.table.apply(key, state, seq);
                        active.min_segment =
                            Some(active.min_segment.map_or(segment.0, |m| m.min(segment.0)));
                    }
                    Err(reason) => {
                        bad_record = Some(EngineError::BadRecord {
                            index: seq as usize,
                            reason,
                        });
                    }
                }
            },
        )
        .await?;
        if let Some(e) = bad_record {
            return Err(e);
        }
        report.records_replayed = seq;
        if let Some(torn) = &recovery.torn_tail {
            let text = format!(
                "{} at offset {}: {} bytes dropped ({})",
                torn.file, torn.offset, torn.bytes_dropped, torn.reason
            );
            tracing::warn!(torn_tail = %text, "commit log tail was torn or corrupt; discarded");
            report.torn_tail = Some(text);
        }
        if let Some(hole) = &recovery.unsynced_hole {
            let text = format!(
                "{} at offset {}: {} bytes in {} later batches dropped",
                hole.file, hole.offset, hole.bytes_dropped, hole.batches_dropped
            );
            tracing::warn!(
                lost_since_sync = %text,
                "commit log: writes since the last periodic sync lost to power loss; discarded"
            );
            report.lost_since_sync = Some(text);
        }
        let inner = Rc::new(Inner {
            disk,
            log,
            cache,
            options,
            state: RefCell::new(State {
                active,
                frozen: Vec::new(),
                tables,
                manifest,
                compacting: Vec::new(),
            }),
            next_seq: Cell::new(seq + 1),
            work: RefCell::new(None),
            work_pending: Cell::new(false),
            flushed: RefCell::new(Vec::new()),
            stats: RefCell::new(EngineStats::default()),
        });
        let engine = Engine { inner };
        // A memtable recovered over its limit is flushed before serving.
        if engine.inner.state.borrow().active.table.size_bytes()
            >= engine.inner.options.memtable_size_bytes
        {
            engine.freeze_active().await?;
            while engine.flush_one().await? {}
        }
        Ok((engine, report))
    }

    /// Store `state` for `key` (merged with what is there). In `batch` mode this
    /// returns after the record is durable in the commit log.
    pub async fn write(&self, key: &[u8], state: KeyState) -> Result<(), EngineError> {
        let inner = &self.inner;
        if inner.log.is_failed() {
            return Err(EngineError::Failed);
        }
        // Backpressure: don't let frozen memtables pile up faster than flushes drain them.
        std::future::poll_fn(|cx| {
            if inner.state.borrow().frozen.len() < inner.options.max_frozen_memtables {
                std::task::Poll::Ready(())
            } else {
                inner.flushed.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        let mut record = Vec::with_capacity(key.len() + state.size_bytes() + 32);
        encode_record(key, &state, &mut record);
        let segment = inner.log.append(&record).await?.0;
        // In the commit log (synced in batch mode, written in periodic): now visible to reads.
        let seq = inner.next_seq.get();
        inner.next_seq.set(seq + 1);
        let full = {
            let mut st = inner.state.borrow_mut();
            let active = &mut st.active;
            active.table.apply(key, state, seq);
            active.min_segment = Some(active.min_segment.map_or(segment, |m| m.min(segment)));
            active.table.size_bytes() >= inner.options.memtable_size_bytes
        };
        inner.stats.borrow_mut().writes += 1;
        if full {
            self.freeze_active().await?;
        }
        Ok(())
    }

    /// The merged state of `key` across memtables and SSTables, if any.
    pub async fn read(&self, key: &[u8]) -> Result<Option<KeyState>, EngineError> {
        let inner = &self.inner;
        inner.stats.borrow_mut().reads += 1;
        let (mut merged, candidates) = {
            let st = inner.state.borrow();
            let mut merged: Option<KeyState> = st.active.table.get(key).cloned();
            for frozen in st.frozen.iter().rev() {
                if let Some(s) = frozen.table.get(key) {
                    merged = Some(match merged {
                        Some(m) => m.merge_owned(s.clone()),
                        None => s.clone(),
                    });
                }
            }
            let candidates: Vec<Rc<Sstable<D>>> = st
                .tables
                .iter()
                .filter(|t| t.may_contain(key))
                .cloned()
                .collect();
            (merged, candidates)
        };
        for table in candidates {
            if let Some(s) = table.get(key).await? {
                merged = Some(match merged {
                    Some(m) => m.merge_owned(s),
                    None => s,
                });
            }
        }
        Ok(merged)
    }

    /// One page of a scan over every key of the engine (memtables and SSTables):
    /// the first `limit_keys` keys in key order that are greater than `after_key` (all,
    /// when None) and for which `wanted(key)` holds, each with its merged state,
    /// tombstones included (those compaction has not purged yet, under `gc_grace`).
    /// The page is then cut to about `limit_bytes` (never below one key); `more` says
    /// whether matching keys may follow the last one.
    ///
    /// Cost: every page reads every SSTable from its start (tables have no seek), so a
    /// page costs a pass over the engine. Range streaming uses it with filters on the
    /// key's token; keys are hashed, so a token range is scattered across key order and
    /// no key-ordered seek would help it anyway.
    pub async fn scan_page(
        &self,
        after_key: Option<&[u8]>,
        mut wanted: impl FnMut(&[u8]) -> bool,
        limit_keys: usize,
        limit_bytes: usize,
    ) -> Result<ScanPage, EngineError> {
        assert!(limit_keys >= 1, "a scan page holds at least one key");
        let mut window = ScanWindow {
            kept: std::collections::BTreeMap::new(),
            limit_keys,
            more: false,
        };
        let mut matches = |key: &[u8]| after_key.is_none_or(|after| key > after) && wanted(key);
        // Memtables and the table list are taken in one borrow: a flush that runs while
        // the tables are read moves data from a memtable already scanned into a table
        // not in the list, so nothing is missed.
        let tables: Vec<Rc<Sstable<D>>> = {
            let st = self.inner.state.borrow();
            for (key, entry) in st.active.table.iter_unordered() {
                if matches(key) {
                    window.offer(key, || Some(entry.state.clone()));
                }
            }
            for frozen in &st.frozen {
                for (key, entry) in frozen.table.iter_unordered() {
                    if matches(key) {
                        window.offer(key, || Some(entry.state.clone()));
                    }
                }
            }
            st.tables.clone()
        };
        for table in &tables {
            let mut iter = table.iter();
            while let Some((key, value)) = iter.next_raw().await? {
                if !matches(&key) {
                    continue;
                }
                let mut bad = None;
                window.offer(&key, || match KeyState::decode(&value) {
                    Ok(state) => Some(state),
                    Err(e) => {
                        bad = Some(e);
                        None
                    }
                });
                if let Some(e) = bad {
                    return Err(EngineError::Io {
                        context: format!("scan of {}", table.path()),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("undecodable state of a key: {e}"),
                        ),
                    });
                }
            }
        }
        let mut page = ScanPage {
            entries: Vec::with_capacity(window.kept.len()),
            more: window.more,
        };
        let mut bytes = 0usize;
        for (key, state) in window.kept {
            let size = key.len() + state.size_bytes();
            if !page.entries.is_empty() && bytes + size > limit_bytes {
                page.more = true;
                break;
            }
            bytes += size;
            page.entries.push((key, state));
        }
        Ok(page)
    }

    /// Make everything buffered durable (periodic mode's timer, and shutdown).
    pub async fn sync(&self) -> Result<(), EngineError> {
        self.inner.log.sync().await?;
        Ok(())
    }

    /// Sync the commit log before the process exits.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        self.sync().await
    }

    pub fn stats(&self) -> EngineStats {
        let st = self.inner.state.borrow();
        let mut stats = *self.inner.stats.borrow();
        stats.sstables = st.tables.len() as u64;
        stats.memtable_bytes = st.active.table.size_bytes() as u64;
        stats.frozen_memtables = st.frozen.len() as u64;
        let frozen_bytes: u64 = st.frozen.iter().map(|f| f.table.size_bytes() as u64).sum();
        let table_bytes: u64 = st.manifest.tables().iter().map(|t| t.size_bytes).sum();
        stats.data_bytes = table_bytes + stats.memtable_bytes + frozen_bytes;
        let log = self.inner.log.stats();
        stats.commitlog_appends = log.appends;
        stats.commitlog_group_commits = log.group_commits;
        stats.commitlog_group_commit_micros = log.group_commit_micros;
        stats.commitlog_bytes_written = log.bytes_written;
        stats
    }

    /// Freeze the active memtable (if non-empty), roll the commit log to a new segment,
    /// and wake the maintenance task.
    async fn freeze_active(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let covers = inner.log.current_segment().0;
        {
            let mut st = inner.state.borrow_mut();
            if st.active.table.is_empty() {
                return Ok(());
            }
            let keys = st.active.table.len();
            let old = std::mem::replace(
                &mut st.active,
                Active {
                    table: Memtable::with_capacity(keys),
                    min_segment: None,
                },
            );
            st.frozen.push(Frozen {
                table: old.table.freeze(covers),
                min_segment: old.min_segment,
            });
        }
        inner.log.roll().await?;
        self.wake_maintenance();
        Ok(())
    }

    fn wake_maintenance(&self) {
        self.inner.work_pending.set(true);
        if let Some(w) = self.inner.work.borrow_mut().take() {
            w.wake();
        }
    }

    /// Freeze the active memtable and flush every frozen one (admin `flush`, tests).
    pub async fn flush(&self) -> Result<(), EngineError> {
        self.freeze_active().await?;
        while self.flush_one().await? {}
        Ok(())
    }

    /// Flush the oldest frozen memtable to an SSTable. Returns false if none is frozen.
    pub async fn flush_one(&self) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let Some(frozen) = inner.state.borrow().frozen.first().map(|f| f.table.clone()) else {
            return Ok(false);
        };
        let id = inner.state.borrow_mut().manifest.allocate_sstable_id();
        let name = sstable_name(id);
        let mut builder = SstableBuilder::new(inner.options.sstable_block_size_bytes, frozen.len())
            .created_at_ms(now_ms());
        for (key, entry) in frozen.iter() {
            builder.add(key, &entry.state);
        }
        let max_seq = frozen.seq_range().map_or(0, |(_, max)| max);
        let info = builder.finish(&inner.disk, &name).await?;
        self.sync_dir().await?;
        let table = Rc::new(Sstable::open(&inner.disk, &name, id, inner.cache.clone()).await?);
        let summary = summary_of(id, &info, max_seq);
        // The replay point: the oldest segment still referenced by an unflushed memtable.
        let new_manifest = {
            let st = inner.state.borrow();
            let remaining = st
                .frozen
                .iter()
                .skip(1)
                .filter_map(|f| f.min_segment)
                .chain(st.active.min_segment);
            let replay_from = remaining
                .min()
                .unwrap_or_else(|| inner.log.current_segment().0);
            st.manifest.apply_flush(summary, replay_from)?
        };
        new_manifest.store(&inner.disk).await?;
        let replay_from = new_manifest.log_replay_from_segment();
        {
            let mut st = inner.state.borrow_mut();
            st.manifest = new_manifest;
            st.frozen.remove(0);
            st.tables.insert(0, table);
        }
        inner.stats.borrow_mut().flushes += 1;
        for w in inner.flushed.borrow_mut().drain(..) {
            w.wake();
        }
        inner.log.release_before(SegmentId(replay_from)).await?;
        Ok(true)
    }

    async fn sync_dir(&self) -> Result<(), EngineError> {
        self.inner
            .disk
            .sync_dir()
            .await
            .map_err(|source| EngineError::Io {
                context: "cannot sync data directory".into(),
                source,
            })
    }

    /// Plan and run one compaction. Returns false when the planner found nothing to do.
    pub async fn compact_once(&self, major: bool) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let task = {
            let st = inner.state.borrow();
            let candidates: Vec<TableSummary> = st
                .manifest
                .tables()
                .iter()
                .filter(|t| !st.compacting.contains(&t.id))
                .cloned()
                .collect();
            if major {
                compaction::plan_major(&candidates, &inner.options.compaction, now_ms())
            } else {
                compaction::plan_size_tiered(&candidates, &inner.options.compaction, now_ms())
            }
        };
        let Some(task) = task else { return Ok(false) };
        inner
            .state
            .borrow_mut()
            .compacting
            .extend(task.inputs.iter().copied());
        let result = self.run_compaction(&task).await;
        inner
            .state
            .borrow_mut()
            .compacting
            .retain(|id| !task.inputs.contains(id));
        result.map(|()| true)
    }

    async fn run_compaction(&self, task: &CompactionTask) -> Result<(), EngineError> {
        let inner = &self.inner;
        let (inputs, outside) = {
            let st = inner.state.borrow();
            let inputs: Vec<Rc<Sstable<D>>> = st
                .tables
                .iter()
                .filter(|t| task.inputs.contains(&t.id()))
                .cloned()
                .collect();
            let outside: Vec<TableSummary> = st
                .manifest
                .tables()
                .iter()
                .filter(|t| !task.inputs.contains(&t.id))
                .cloned()
                .collect();
            (inputs, outside)
        };
        let expected: u64 = inputs.iter().map(|t| t.info().stats.entry_count).sum();
        let mut iters = Vec::with_capacity(inputs.len());
        for t in &inputs {
            iters.push(t.iter());
        }
        // K-way merge by key: heads[i] is the next entry of input i.
        let mut heads = Vec::with_capacity(iters.len());
        for it in iters.iter_mut() {
            heads.push(it.next().await?);
        }
        let id = inner.state.borrow_mut().manifest.allocate_sstable_id();
        let name = sstable_name(id);
        let mut builder =
            SstableBuilder::new(inner.options.sstable_block_size_bytes, expected as usize)
                .created_at_ms(now_ms());
        let now = now_ms();
        let gc_grace = inner.options.compaction.gc_grace_seconds;
        while let Some(min_key) = heads.iter().flatten().map(|(k, _)| k.clone()).min() {
            let mut merged: Option<KeyState> = None;
            for (i, head) in heads.iter_mut().enumerate() {
                if head.as_ref().is_some_and(|(k, _)| *k == min_key) {
                    if let Some((_, state)) = head.take() {
                        merged = Some(match merged {
                            Some(m) => m.merge_owned(state),
                            None => state,
                        });
                    }
                    *head = iters[i].next().await?;
                }
            }
            let Some(state) = merged else { continue };
            if task.drop_tombstones && state.is_tombstone() {
                let (_, newest) = state.timestamp_range();
                if compaction::can_drop_tombstone(&min_key, newest, now, gc_grace, &outside) {
                    continue;
                }
            }
            builder.add(&min_key, &state);
        }
        drop(iters);
        let outputs = if builder.is_empty() {
            Vec::new()
        } else {
            let info = builder.finish(&inner.disk, &name).await?;
            self.sync_dir().await?;
            vec![(
                summary_of(id, &info, 0),
                Rc::new(Sstable::open(&inner.disk, &name, id, inner.cache.clone()).await?),
            )]
        };
        let new_manifest = inner
            .state
            .borrow()
            .manifest
            .apply_compaction(task, outputs.iter().map(|(s, _)| s.clone()).collect())?;
        new_manifest.store(&inner.disk).await?;
        {
            let mut st = inner.state.borrow_mut();
            st.manifest = new_manifest;
            st.tables.retain(|t| !task.inputs.contains(&t.id()));
            for (_, table) in outputs {
                st.tables.push(table);
            }
            st.tables.sort_by_key(|t| std::cmp::Reverse(t.id()));
        }
        // Inputs are no longer live in the durable manifest: remove their files. Readers
        // holding an `Rc` keep their open file until they finish.
        for input in &inputs {
            inner.cache.remove_table(input.id());
            inner
                .disk
                .remove(&sstable_name(input.id()))
                .await
                .map_err(|source| EngineError::Io {
                    context: format!("cannot remove compacted {}", sstable_name(input.id())),
                    source,
                })?;
        }
        self.sync_dir().await?;
        inner.stats.borrow_mut().compactions += 1;
        Ok(())
    }

    /// Background loop (run in the shard's low-share task queue): flush frozen
    /// memtables, then compact while the planner finds work. Returns when `stop` is set.
    pub async fn run_maintenance(&self, stop: &Event) {
        loop {
            let woken = futures_lite::future::or(
                async {
                    std::future::poll_fn(|cx| {
                        if self.inner.work_pending.replace(false) {
                            std::task::Poll::Ready(())
                        } else {
                            *self.inner.work.borrow_mut() = Some(cx.waker().clone());
                            std::task::Poll::Pending
                        }
                    })
                    .await;
                    true
                },
                async {
                    stop.wait().await;
                    false
                },
            )
            .await;
            if !woken {
                return;
            }
            loop {
                match self.flush_one().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "memtable flush failed; will retry on the next write");
                        break;
                    }
                }
            }
            loop {
                match self.compact_once(false).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "compaction failed");
                        break;
                    }
                }
            }
        }
    }
}

fn summary_of(id: u64, info: &SstableInfo, created_seq: u64) -> TableSummary {
    TableSummary {
        id,
        size_bytes: info.file_size_bytes,
        min_key: info.stats.first_key.clone(),
        max_key: info.stats.last_key.clone(),
        min_timestamp: info.stats.min_timestamp,
        max_timestamp: info.stats.max_timestamp,
        tombstones: info.stats.tombstone_count,
        entries: info.stats.entry_count,
        created_seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflict::{Hlc, LwwCell};
    use crate::storage::mem_disk::MemDisk;
    use futures_lite::future::block_on;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn cell(ts: u64, value: Option<u8>) -> KeyState {
        KeyState::Lww(LwwCell {
            timestamp: Hlc(ts),
            value: value.map(|v| vec![v]),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Paging through the engine with `scan_page` (flushes mixed into the writes, so
        /// versions of a key sit in SSTables and memtables at once) yields exactly the
        /// wanted keys of the model, each with its newest state, tombstones included.
        #[test]
        fn scan_pages_match_the_model(
            writes in proptest::collection::vec((0u8..60, proptest::option::of(any::<u8>()), any::<bool>()), 1..120),
            limit_keys in 1usize..9,
            limit_bytes in 1usize..200,
            modulus in 1u8..4,
        ) {
            block_on(async {
                let mut options = EngineOptions::for_tests();
                options.memtable_size_bytes = 1 << 20;
                let (engine, _) = Engine::open(MemDisk::new(), options).await.unwrap();
                let mut model: BTreeMap<Vec<u8>, KeyState> = BTreeMap::new();
                for (ts, (key, value, flush)) in writes.into_iter().enumerate() {
                    let key = vec![key];
                    let state = cell(ts as u64 + 1, value);
                    engine.write(&key, state.clone()).await.unwrap();
                    model.insert(key, state);
                    if flush {
                        engine.flush().await.unwrap();
                    }
                }
                let wanted = |key: &[u8]| key[0].is_multiple_of(modulus);
                let mut after: Option<Vec<u8>> = None;
                let mut seen = Vec::new();
                for _ in 0..200 {
                    let page = engine
                        .scan_page(after.as_deref(), wanted, limit_keys, limit_bytes)
                        .await
                        .unwrap();
                    assert!(page.entries.len() <= limit_keys);
                    if let Some((last, _)) = page.entries.last() {
                        after = Some(last.clone());
                    }
                    let more = page.more;
                    seen.extend(page.entries);
                    if !more {
                        break;
                    }
                }
                let expected: Vec<(Vec<u8>, KeyState)> = model
                    .into_iter()
                    .filter(|(k, _)| wanted(k))
                    .collect();
                assert_eq!(seen, expected);
            });
        }
    }
}

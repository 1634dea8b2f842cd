//! The manifest: which SSTables of a shard are live, and the engine metadata that must
//! survive restarts (docs/design.md §4.5).
//!
//! It owns the file `MANIFEST` in the shard's data directory and the only way of
//! replacing it: write a complete new copy under a temporary name, fdatasync it, rename
//! it over `MANIFEST`, fsync the directory. A power loss at any point leaves either the
//! previous or the new manifest, never none and never a mix. Edits are pure
//! ([`Manifest::apply_flush`], [`Manifest::apply_compaction`]) and return a new value;
//! only [`Manifest::store`] and [`Manifest::load`] touch the [`Disk`].
//!
//! It must never treat a corrupt, truncated or unknown-version manifest as empty: that
//! would forget live SSTables and resurrect or lose data. Such a file is an error naming
//! the file and what is wrong, and the shard refuses to start.

use super::compaction::{apply_compaction_result, ApplyError, CompactionTask, TableSummary};
use super::disk::{align_up, Disk, DiskFile, ALIGN};
use crate::conflict::{ConflictMode, Hlc};
use std::collections::BTreeSet;
use std::io;

/// Name of the current manifest in the shard's data directory.
pub const MANIFEST_FILE: &str = "MANIFEST";

/// Prefix and suffix of the temporary names a new manifest is written under.
const TEMP_PREFIX: &str = "MANIFEST-";
const TEMP_SUFFIX: &str = ".tmp";

/// First 8 bytes of every manifest file.
pub const MANIFEST_MAGIC: [u8; 8] = *b"RKVMANIF";
/// The manifest format version this build writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Bytes of the fixed header before the payload.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted, so a corrupt length cannot make us allocate without bound
/// (a manifest of 100 000 tables with 64 KiB key bounds would still fit).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;

const _: () = assert!(HEADER_LEN <= ALIGN);
const _: () = assert!(MAX_PAYLOAD_BYTES <= u32::MAX as usize);

/// Conflict mode codes stored in the payload: explicit, stable numbers.
const CONFLICT_MODE_LWW: u8 = 1;
const CONFLICT_MODE_CAUSAL: u8 = 2;

/// The live state of one shard's storage engine, as persisted in `MANIFEST`.
///
/// # File layout (format version 1)
///
/// All integers little-endian. The file is written as whole [`ALIGN`]-byte blocks: the
/// header, the payload, then zero padding up to the next multiple of [`ALIGN`].
///
/// Header, [`HEADER_LEN`] = 24 bytes:
///
/// | offset | size | field                                                        |
/// |-------:|-----:|--------------------------------------------------------------|
/// | 0      | 8    | magic `RKVMANIF` ([`MANIFEST_MAGIC`])                        |
/// | 8      | 4    | format version, u32 (= 1)                                    |
/// | 12     | 4    | reserved, u32, must be 0                                     |
/// | 16     | 4    | payload length in bytes, u32 (≤ [`MAX_PAYLOAD_BYTES`])       |
/// | 20     | 4    | CRC32C (Castagnoli) of header bytes 0..20 followed by the payload |
///
/// Payload (version 1), starting at offset 24:
///
/// | size | field                                                                 |
/// |-----:|-----------------------------------------------------------------------|
/// | 8    | generation, u64: incremented by every edit                            |
/// | 8    | next SSTable id, u64: every live id is smaller                        |
/// | 8    | log replay start segment id, u64 (see [`Manifest::log_replay_from_segment`]) |
/// | 1    | conflict mode, u8: 1 = lww, 2 = causal                                |
/// | 4    | table count `n`, u32                                                  |
/// | …    | `n` table records, ascending by id                                    |
///
/// Table record:
///
/// | size | field                                         |
/// |-----:|-----------------------------------------------|
/// | 8    | id, u64                                       |
/// | 8    | size in bytes, u64                            |
/// | 8    | entries, u64                                  |
/// | 8    | tombstones, u64                               |
/// | 8    | created seq, u64                              |
/// | 8    | min timestamp, u64 (HLC)                      |
/// | 8    | max timestamp, u64 (HLC)                      |
/// | 4    | min key length `a`, u32                       |
/// | `a`  | min key bytes                                 |
/// | 4    | max key length `b`, u32                       |
/// | `b`  | max key bytes                                 |
///
/// A file is rejected (never read as empty) when: it is shorter than the header or than
/// header + payload length; the magic differs; the version is not 1; the reserved field
/// is not 0; the CRC does not match; the payload does not parse exactly; or the decoded
/// state breaks an invariant (ids unique and ascending, all below the next id, min key ≤
/// max key, min timestamp ≤ max timestamp, tombstones ≤ entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    generation: u64,
    next_sstable_id: u64,
    log_replay_from_segment: u64,
    conflict_mode: ConflictMode,
    /// Sorted by id.
    tables: Vec<TableSummary>,
}

/// Error loading, storing or editing a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path}: {op} failed: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("manifest {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "manifest {path} has format version {found}; this build reads only version {supported}"
    )]
    UnsupportedVersion {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("manifest {path} was written in conflict mode {found:?} but the node is configured for {configured:?}")]
    ConflictModeMismatch {
        path: String,
        found: ConflictMode,
        configured: ConflictMode,
    },
    #[error("invalid manifest edit: {0}")]
    InvalidEdit(String),
    #[error("invalid manifest edit: {0}")]
    Apply(#[from] ApplyError),
}

fn io_error(path: String, op: &'static str) -> impl FnOnce(io::Error) -> ManifestError {
    move |source| ManifestError::Io { path, op, source }
}

impl Manifest {
    /// The manifest of a brand-new shard: no tables, ids from 1, replay from segment 0.
    pub fn new(conflict_mode: ConflictMode) -> Self {
        Self {
            generation: 0,
            next_sstable_id: 1,
            log_replay_from_segment: 0,
            conflict_mode,
            tables: Vec::new(),
        }
    }

    /// Incremented by every edit; names the temporary file of a store.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The id the next new SSTable will get; every live id is smaller.
    pub fn next_sstable_id(&self) -> u64 {
        self.next_sstable_id
    }

    /// Every write in commit-log segments with a smaller id is in a live SSTable:
    /// recovery replays segments from this id on, and smaller ones may be recycled.
    pub fn log_replay_from_segment(&self) -> u64 {
        self.log_replay_from_segment
    }

    pub fn conflict_mode(&self) -> ConflictMode {
        self.conflict_mode
    }

    /// Live SSTables, ascending by id.
    pub fn tables(&self) -> &[TableSummary] {
        &self.tables
    }

    /// Reserve an id for a new SSTable (flush or compaction output). In memory only: it
    /// becomes durable with the next [`store`](Self::store). A crash before that leaves
    /// an orphan file whose id is not below the stored `next_sstable_id`; the engine
    /// removes SSTable files that are not live when it starts.
    pub fn allocate_sstable_id(&mut self) -> u64 {
        let id = self.next_sstable_id;
        self.next_sstable_id = id
            .checked_add(1)
            .unwrap_or_else(|| panic!("SSTable ids exhausted"));
        id
    }

    /// Fail when the node's configured conflict mode differs from the stored one: the
    /// stored states would be merged by the wrong rule.
    pub fn check_conflict_mode<D: Disk>(
        &self,
        disk: &D,
        configured: ConflictMode,
    ) -> Result<(), ManifestError> {
        if self.conflict_mode == configured {
            Ok(())
        } else {
            Err(ManifestError::ConflictModeMismatch {
                path: disk.path_of(MANIFEST_FILE),
                found: self.conflict_mode,
                configured,
            })
        }
    }

    /// A flushed memtable became `table`; commit-log segments below
    /// `log_replay_from_segment` are now all in SSTables. The replay point never moves
    /// backwards. Pure.
    pub fn apply_flush(
        &self,
        table: TableSummary,
        log_replay_from_segment: u64,
    ) -> Result<Manifest, ManifestError> {
        if self.tables.iter().any(|t| t.id == table.id) {
            return Err(ApplyError::OutputIdInUse(table.id).into());
        }
        let mut next = self.with_log_replay_from_segment(log_replay_from_segment)?;
        next.tables.push(table);
        next.tables.sort_by_key(|t| t.id);
        next.check_allocated()?;
        Ok(next)
    }

    /// Move the replay point forward without a new table (e.g. an empty memtable was
    /// frozen). Pure.
    pub fn with_log_replay_from_segment(
        &self,
        log_replay_from_segment: u64,
    ) -> Result<Manifest, ManifestError> {
        if log_replay_from_segment < self.log_replay_from_segment {
            return Err(ManifestError::InvalidEdit(format!(
                "log replay point would move back from segment {} to {}",
                self.log_replay_from_segment, log_replay_from_segment
            )));
        }
        let mut next = self.clone();
        next.generation += 1;
        next.log_replay_from_segment = log_replay_from_segment;
        Ok(next)
    }

    /// A compaction finished: its inputs are replaced by `outputs`. Pure.
    pub fn apply_compaction(
        &self,
        task: &CompactionTask,
        outputs: Vec<TableSummary>,
    ) -> Result<Manifest, ManifestError> {
        let mut next = self.clone();
        next.generation += 1;
        next.tables = apply_compaction_result(&self.tables, task, outputs)?;
        next.check_allocated()?;
        Ok(next)
    }

    /// New tables must have ids from [`allocate_sstable_id`](Self::allocate_sstable_id).
    fn check_allocated(&self) -> Result<(), ManifestError> {
        match self.tables.iter().find(|t| t.id >= self.next_sstable_id) {
            Some(t) => Err(ManifestError::InvalidEdit(format!(
                "SSTable id {} was not allocated (next id is {})",
                t.id, self.next_sstable_id
            ))),
            None => Ok(()),
        }
    }

    /// Everything a decoded or about-to-be-written manifest must satisfy.
    fn check_invariants(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for pair in self.tables.windows(2) {
            if pair[0].id >= pair[1].id {
                return Err(format!(
                    "SSTable ids not ascending: {} then {}",
                    pair[0].id, pair[1].id
                ));
            }
        }
        for t in &self.tables {
            if !seen.insert(t.id) {
                return Err(format!("SSTable id {} listed twice", t.id));
            }
            if t.id >= self.next_sstable_id {
                return Err(format!(
                    "SSTable id {} is not below the next id {}",
                    t.id, self.next_sstable_id
                ));
            }
            if t.min_key > t.max_key {
                return Err(format!("SSTable {} has min key above max key", t.id));
            }
            if t.min_timestamp > t.max_timestamp {
                return Err(format!(
                    "SSTable {} has min timestamp above max timestamp",
                    t.id
                ));
            }
            if t.tombstones > t.entries {
                return Err(format!(
                    "SSTable {} has more tombstones ({}) than entries ({})",
                    t.id, t.tombstones, t.entries
                ));
            }
            if t.min_key.len() > MAX_PAYLOAD_BYTES || t.max_key.len() > MAX_PAYLOAD_BYTES {
                return Err(format!("SSTable {} has an oversized key bound", t.id));
            }
        }
        Ok(())
    }

    /// The complete file image: header, payload, zero padding to a multiple of [`ALIGN`].
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        self.check_invariants()
            .map_err(ManifestError::InvalidEdit)?;
        let mut payload = Vec::new();
        payload.extend_from_slice(&self.generation.to_le_bytes());
        payload.extend_from_slice(&self.next_sstable_id.to_le_bytes());
        payload.extend_from_slice(&self.log_replay_from_segment.to_le_bytes());
        payload.push(match self.conflict_mode {
            ConflictMode::Lww => CONFLICT_MODE_LWW,
            ConflictMode::Causal => CONFLICT_MODE_CAUSAL,
        });
        let count = u32::try_from(self.tables.len())
            .map_err(|_| ManifestError::InvalidEdit("too many SSTables".to_string()))?;
        payload.extend_from_slice(&count.to_le_bytes());
        for t in &self.tables {
            for n in [
                t.id,
                t.size_bytes,
                t.entries,
                t.tombstones,
                t.created_seq,
                t.min_timestamp.0,
                t.max_timestamp.0,
            ] {
                payload.extend_from_slice(&n.to_le_bytes());
            }
            for key in [&t.min_key, &t.max_key] {
                // check_invariants bounded key lengths below MAX_PAYLOAD_BYTES < u32::MAX.
                payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
                payload.extend_from_slice(key);
            }
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ManifestError::InvalidEdit(format!(
                "manifest payload of {} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
                payload.len()
            )));
        }

        let mut file = Vec::with_capacity(align_up(HEADER_LEN + payload.len()));
        file.extend_from_slice(&MANIFEST_MAGIC);
        file.extend_from_slice(&MANIFEST_FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&file), &payload);
        file.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(file.len(), HEADER_LEN);
        file.extend_from_slice(&payload);
        file.resize(align_up(file.len()), 0);
        assert_eq!(file.len() % ALIGN, 0);
        Ok(file)
    }

    /// Parse a whole file image. `path` is only used in error messages.
    pub fn decode(bytes: &[u8], path: &str) -> Result<Manifest, ManifestError> {
        let corrupt = |reason: String| ManifestError::Corrupt {
            path: path.to_string(),
            reason,
        };
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!(
                "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let mut header = Cursor::new(&bytes[..HEADER_LEN]);
        let magic = header.take(8).map_err(&corrupt)?;
        if magic != MANIFEST_MAGIC {
            return Err(corrupt(format!(
                "bad magic {magic:02x?}, expected {MANIFEST_MAGIC:02x?} (\"RKVMANIF\")"
            )));
        }
        let version = header.u32().map_err(&corrupt)?;
        if version != MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                path: path.to_string(),
                found: version,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        let reserved = header.u32().map_err(&corrupt)?;
        if reserved != 0 {
            return Err(corrupt(format!(
                "reserved header field is {reserved:#x}, expected 0"
            )));
        }
        let payload_len = header.u32().map_err(&corrupt)? as usize;
        let stored_crc = header.u32().map_err(&corrupt)?;
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(corrupt(format!(
                "payload length {payload_len} exceeds the limit of {MAX_PAYLOAD_BYTES}"
            )));
        }
        let end = HEADER_LEN + payload_len;
        if bytes.len() < end {
            return Err(corrupt(format!(
                "truncated: header says {payload_len} payload bytes, file has {}",
                bytes.len() - HEADER_LEN
            )));
        }
        let payload = &bytes[HEADER_LEN..end];
        let computed_crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..20]), payload);
        if computed_crc != stored_crc {
            return Err(corrupt(format!(
                "CRC32C mismatch: stored {stored_crc:#010x}, computed {computed_crc:#010x}"
            )));
        }

        let manifest = Self::decode_payload(payload).map_err(&corrupt)?;
        manifest
            .check_invariants()
            .map_err(|reason| corrupt(format!("invalid content: {reason}")))?;
        Ok(manifest)
    }

    fn decode_payload(payload: &[u8]) -> Result<Manifest, String> {
        let mut r = Cursor::new(payload);
        let generation = r.u64()?;
        let next_sstable_id = r.u64()?;
        let log_replay_from_segment = r.u64()?;
        let conflict_mode = match r.u8()? {
            CONFLICT_MODE_LWW => ConflictMode::Lww,
            CONFLICT_MODE_CAUSAL => ConflictMode::Causal,
            other => return Err(format!("unknown conflict mode code {other}")),
        };
        let count = r.u32()? as usize;
        // Each record takes at least 64 bytes, so a huge count fails here, not in alloc.
        let mut tables = Vec::with_capacity(count.min(r.remaining() / 64));
        for _ in 0..count {
            let id = r.u64()?;
            let size_bytes = r.u64()?;
            let entries = r.u64()?;
            let tombstones = r.u64()?;
            let created_seq = r.u64()?;
            let min_timestamp = Hlc(r.u64()?);
            let max_timestamp = Hlc(r.u64()?);
            let min_len = r.u32()? as usize;
            let min_key = r.take(min_len)?.to_vec();
            let max_len = r.u32()? as usize;
            let max_key = r.take(max_len)?.to_vec();
            tables.push(TableSummary {
                id,
                size_bytes,
                min_key,
                max_key,
                min_timestamp,
                max_timestamp,
                tombstones,
                entries,
                created_seq,
            });
        }
        if r.remaining() != 0 {
            return Err(format!(
                "{} unexpected bytes after the last table record",
                r.remaining()
            ));
        }
        Ok(Manifest {
            generation,
            next_sstable_id,
            log_replay_from_segment,
            conflict_mode,
            tables,
        })
    }

    /// Read the current manifest. `Ok(None)` only when there is no `MANIFEST` file at
    /// all (a new shard); a `MANIFEST` that cannot be read or decoded is an error.
    /// Leftover temporary files of an interrupted store are ignored.
    pub async fn load<D: Disk>(disk: &D) -> Result<Option<Manifest>, ManifestError> {
        let path = disk.path_of(MANIFEST_FILE);
        let names = disk
            .list()
            .await
            .map_err(io_error(disk.path_of(""), "list directory"))?;
        if !names.iter().any(|n| n == MANIFEST_FILE) {
            return Ok(None);
        }
        let file = disk
            .open(MANIFEST_FILE)
            .await
            .map_err(io_error(path.clone(), "open"))?;
        let read = async {
            let size = file.size().await?;
            let size = usize::try_from(size).map_err(|_| io::Error::other("file too large"))?;
            if size > align_up(HEADER_LEN + MAX_PAYLOAD_BYTES) {
                return Ok(Err(size));
            }
            let bytes = file.read_at(0, align_up(size)).await?;
            Ok(Ok(bytes))
        }
        .await;
        let closed = file.close().await;
        let bytes = read.map_err(io_error(path.clone(), "read"))?;
        closed.map_err(io_error(path.clone(), "close"))?;
        match bytes {
            Ok(bytes) => Self::decode(&bytes, &path).map(Some),
            Err(size) => Err(ManifestError::Corrupt {
                path,
                reason: format!("file is {size} bytes, larger than any valid manifest"),
            }),
        }
    }

    /// Durably replace the current manifest with `self`: write `MANIFEST-<generation>.tmp`
    /// in whole aligned blocks, fdatasync it, rename it over `MANIFEST`, fsync the
    /// directory. The rename replaces the old manifest in one step, so there is no old
    /// file left to remove. On error the new manifest may or may not have become current
    /// (the directory sync may have failed after the rename): the caller must treat it as
    /// fatal for the shard, not retry and assume either outcome.
    pub async fn store<D: Disk>(&self, disk: &D) -> Result<(), ManifestError> {
        let image = self.encode()?;
        let temp = format!("{TEMP_PREFIX}{}{TEMP_SUFFIX}", self.generation);
        let temp_path = disk.path_of(&temp);

        // Temporary files left by an interrupted store were never renamed, so they are
        // never current; remove them so a retry of the same generation can create its
        // name. Their removal need not be durable: they are ignored on load.
        let names = disk
            .list()
            .await
            .map_err(io_error(disk.path_of(""), "list directory"))?;
        for stale in names.iter().filter(|n| is_temp_name(n)) {
            disk.remove(stale)
                .await
                .map_err(io_error(disk.path_of(stale), "remove stale temporary file"))?;
        }

        let file = disk
            .create(&temp)
            .await
            .map_err(io_error(temp_path.clone(), "create"))?;
        let written = async {
            file.write_at(0, &image).await?;
            file.sync().await
        }
        .await;
        let closed = file.close().await;
        written.map_err(io_error(temp_path.clone(), "write and sync"))?;
        closed.map_err(io_error(temp_path.clone(), "close"))?;

        disk.rename(&temp, MANIFEST_FILE)
            .await
            .map_err(io_error(temp_path, "rename over MANIFEST"))?;
        disk.sync_dir()
            .await
            .map_err(io_error(disk.path_of(""), "sync directory"))?;
        Ok(())
    }
}

fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|generation| {
            !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Little-endian reader over a byte slice; errors are human-readable reasons.
struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "payload truncated at byte {}: needed {n} more bytes, had {}",
                self.offset,
                self.remaining()
            ));
        }
        let slice = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: u64) -> TableSummary {
        TableSummary {
            id,
            size_bytes: 1000 * id,
            min_key: format!("key{id:03}").into_bytes(),
            max_key: format!("key{:03}", id + 50).into_bytes(),
            min_timestamp: Hlc::new(1_700_000_000_000, 1),
            max_timestamp: Hlc::new(1_700_000_000_500, 0),
            tombstones: id,
            entries: 10 * id,
            created_seq: 100 + id,
        }
    }

    fn sample() -> Manifest {
        let mut m = Manifest::new(ConflictMode::Lww);
        let a = m.allocate_sstable_id();
        let m = m.apply_flush(summary(a), 3).expect("flush");
        let mut m = m;
        let b = m.allocate_sstable_id();
        m.apply_flush(summary(b), 5).expect("flush")
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = sample();
        let image = m.encode().expect("encode");
        assert_eq!(image.len(), ALIGN);
        assert!(image[..8] == MANIFEST_MAGIC);
        let back = Manifest::decode(&image, "MANIFEST").expect("decode");
        assert_eq!(back, m);
        assert_eq!(back.generation(), 2);
        assert_eq!(back.next_sstable_id(), 3);
        assert_eq!(back.log_replay_from_segment(), 5);
    }

    #[test]
    fn large_manifest_spans_several_blocks() {
        let mut m = Manifest::new(ConflictMode::Causal);
        for _ in 0..200 {
            let id = m.allocate_sstable_id();
            m = m.apply_flush(summary(id), 0).expect("flush");
        }
        let image = m.encode().expect("encode");
        assert!(image.len() > ALIGN);
        assert_eq!(image.len() % ALIGN, 0);
        assert_eq!(Manifest::decode(&image, "M").expect("decode"), m);
    }

    #[test]
    fn every_single_bit_flip_in_header_or_payload_is_rejected() {
        let image = sample().encode().expect("encode");
        let payload_len = u32::from_le_bytes([image[16], image[17], image[18], image[19]]);
        let covered = HEADER_LEN + payload_len as usize;
        for byte in 0..covered {
            for bit in 0..8 {
                let mut bad = image.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    Manifest::decode(&bad, "M").is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn edits_keep_invariants() {
        let m = sample();
        assert!(matches!(
            m.with_log_replay_from_segment(1),
            Err(ManifestError::InvalidEdit(_))
        ));
        // An id that was never allocated.
        assert!(matches!(
            m.apply_flush(summary(99), 6),
            Err(ManifestError::InvalidEdit(_))
        ));
        // An id already live.
        assert!(matches!(
            m.apply_flush(summary(1), 6),
            Err(ManifestError::Apply(ApplyError::OutputIdInUse(1)))
        ));
        let mut m = m;
        let out = m.allocate_sstable_id();
        let task = CompactionTask {
            inputs: vec![1, 2],
            drop_tombstones: false,
        };
        let compacted = m
            .apply_compaction(&task, vec![summary(out)])
            .expect("compaction applies");
        let ids: Vec<u64> = compacted.tables().iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![out]);
        assert_eq!(compacted.generation(), m.generation() + 1);
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert!(is_temp_name("MANIFEST-7.tmp"));
        assert!(is_temp_name("MANIFEST-0012.tmp"));
        assert!(!is_temp_name("MANIFEST"));
        assert!(!is_temp_name("MANIFEST-.tmp"));
        assert!(!is_temp_name("MANIFEST-x.tmp"));
        assert!(!is_temp_name("sst-MANIFEST-1.tmp"));
    }
}

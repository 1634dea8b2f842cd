//! Writing one SSTable: entries arrive in strictly increasing key order, are packed into
//! aligned data blocks in memory, and [`SstableBuilder::finish`] writes the whole file
//! with aligned direct-I/O writes and fdatasyncs it.
//!
//! The builder holds the table in memory until `finish` (like mini-lsm); callers that
//! produce large outputs (compaction) cut tables at a target size using
//! [`SstableBuilder::estimated_size_bytes`]. It never syncs the directory or records the
//! table anywhere: that is the caller's job once `finish` returned.

use std::time::{SystemTime, UNIX_EPOCH};

use super::block::{append_entry, close_block, closed_len};
use super::bloom::{key_hash, Bloom, BLOOM_SEED};
use super::format::{encode_index, encode_stats, Footer, IndexEntry, Stats, FOOTER_LEN};
use super::{Result, SstableError, SstableErrorKind, SstableInfo, FORMAT_VERSION};
use crate::conflict::{Hlc, KeyState};
use crate::storage::disk::{align_up, Disk, DiskFile, ALIGN};
use zerocopy::IntoBytes;

/// Largest single write handed to the disk, to bound the bounce buffer of a DMA write.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(ALIGN));

/// Builds one SSTable. Keys must be added in strictly increasing byte order.
pub struct SstableBuilder {
    block_size_bytes: usize,
    /// The file being built: closed blocks (padded) and the open block's entries.
    file: Vec<u8>,
    /// Start of the open block in `file`, ALIGN-aligned.
    block_start: usize,
    /// Entry offsets of the open block, relative to `block_start`.
    block_offsets: Vec<u32>,
    block_first_key: Vec<u8>,
    index: Vec<IndexEntry>,
    key_hashes: Vec<u64>,
    first_key: Option<Vec<u8>>,
    last_key: Vec<u8>,
    tombstone_count: u64,
    min_timestamp: Hlc,
    max_timestamp: Hlc,
    created_at_ms: Option<u64>,
}

impl SstableBuilder {
    /// `block_size_bytes`: target unpadded size of a data block (an entry larger than
    /// that gets a block of its own); `expected_keys` sizes internal buffers.
    pub fn new(block_size_bytes: usize, expected_keys: usize) -> Self {
        assert!(
            block_size_bytes >= 64,
            "block size {block_size_bytes} too small"
        );
        Self {
            block_size_bytes,
            file: Vec::new(),
            block_start: 0,
            block_offsets: Vec::new(),
            block_first_key: Vec::new(),
            index: Vec::new(),
            key_hashes: Vec::with_capacity(expected_keys),
            first_key: None,
            last_key: Vec::new(),
            tombstone_count: 0,
            min_timestamp: Hlc(u64::MAX),
            max_timestamp: Hlc(0),
            created_at_ms: None,
        }
    }

    /// Stamp the table with this creation time instead of the wall clock at `finish`
    /// (deterministic tests and fixtures).
    pub fn created_at_ms(mut self, created_at_ms: u64) -> Self {
        self.created_at_ms = Some(created_at_ms);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.first_key.is_none()
    }

    pub fn entry_count(&self) -> u64 {
        self.key_hashes.len() as u64
    }

    /// Roughly the size of the file `finish` will write.
    pub fn estimated_size_bytes(&self) -> usize {
        self.file.len() + self.index.len() * 64 + self.key_hashes.len() * 2 + 2 * ALIGN
    }

    /// Append one entry. Panics if `key` is not greater than the previous key: that is
    /// a caller bug that would make the table unsearchable.
    pub fn add(&mut self, key: &[u8], state: &KeyState) {
        if self.first_key.is_some() {
            assert!(
                key > self.last_key.as_slice(),
                "SSTable keys must be strictly increasing"
            );
        }
        let mut entry_start = self.file.len();
        append_entry(&mut self.file, key, |out| state.encode(out));
        let entries_with_this = self.block_offsets.len() + 1;
        let would_be_len = closed_len(self.file.len(), self.block_start, entries_with_this);
        if !self.block_offsets.is_empty() && would_be_len > self.block_size_bytes {
            // The entry overflows the open block: close the block before it and move the
            // entry (already encoded) to the start of a fresh block.
            let entry = self.file.split_off(entry_start);
            self.close_open_block();
            entry_start = self.file.len();
            self.file.extend_from_slice(&entry);
        }
        if self.block_offsets.is_empty() {
            self.block_first_key.clear();
            self.block_first_key.extend_from_slice(key);
        }
        let offset_in_block = u32::try_from(entry_start - self.block_start).unwrap_or(u32::MAX);
        assert!(offset_in_block < u32::MAX, "block too large");
        self.block_offsets.push(offset_in_block);

        self.key_hashes.push(key_hash(key, BLOOM_SEED));
        if state.is_tombstone() {
            self.tombstone_count += 1;
        }
        let (min, max) = state.timestamp_range();
        self.min_timestamp = self.min_timestamp.min(min);
        self.max_timestamp = self.max_timestamp.max(max);
        if self.first_key.is_none() {
            self.first_key = Some(key.to_vec());
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
    }

    /// Close the open block (its last key is `self.last_key`) and start a new one at the
    /// next aligned offset.
    fn close_open_block(&mut self) {
        let len = close_block(&mut self.file, self.block_start, &self.block_offsets);
        self.index.push(IndexEntry {
            offset: self.block_start as u64,
            len,
            first_key: self.block_first_key.as_slice().into(),
            last_key: self.last_key.as_slice().into(),
        });
        self.block_offsets.clear();
        self.block_start = self.file.len();
        assert!(self.block_start.is_multiple_of(ALIGN));
    }

    /// Write the table as `name` on `disk` (which must not exist yet), fdatasync it and
    /// close it. The caller syncs the directory and records the table. On error the
    /// partial file is removed on a best-effort basis; it is in no manifest either way.
    pub async fn finish<D: Disk>(mut self, disk: &D, name: &str) -> Result<SstableInfo> {
        let path = disk.path_of(name);
        let Some(first_key) = self.first_key.take() else {
            return Err(SstableError::new(path, SstableErrorKind::Empty));
        };
        if !self.block_offsets.is_empty() {
            self.close_open_block();
        }
        let created_at_ms = self.created_at_ms.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let stats = Stats {
            entry_count: self.key_hashes.len() as u64,
            tombstone_count: self.tombstone_count,
            min_timestamp: self.min_timestamp,
            max_timestamp: self.max_timestamp,
            created_at_ms,
            first_key,
            last_key: std::mem::take(&mut self.last_key),
        };

        let mut file = self.file;
        let index_offset = file.len();
        assert!(index_offset.is_multiple_of(ALIGN));
        encode_index(&self.index, &mut file);
        let bloom_offset = file.len();
        Bloom::build(&self.key_hashes).encode(&mut file);
        let stats_offset = file.len();
        encode_stats(&stats, &mut file);
        let stats_end = file.len();
        let footer = Footer::new(
            index_offset as u64,
            (bloom_offset - index_offset) as u64,
            (stats_offset - bloom_offset) as u64,
            (stats_end - stats_offset) as u64,
        );
        file.resize(align_up(stats_end + FOOTER_LEN) - FOOTER_LEN, 0);
        file.extend_from_slice(footer.as_bytes());
        assert!(file.len().is_multiple_of(ALIGN));

        let handle = disk.create(name).await.map_err(|source| {
            SstableError::new(
                &path,
                SstableErrorKind::Io {
                    op: "creating",
                    source,
                },
            )
        })?;
        if let Err((op, source)) = write_and_sync(handle, &file).await {
            // Only a file this call created is removed.
            let _ = disk.remove(name).await;
            return Err(SstableError::new(path, SstableErrorKind::Io { op, source }));
        }
        Ok(SstableInfo {
            file_name: name.to_string(),
            file_size_bytes: file.len() as u64,
            block_count: self.index.len() as u32,
            format_version: FORMAT_VERSION,
            stats,
        })
    }
}

async fn write_and_sync<F: DiskFile>(
    file: F,
    bytes: &[u8],
) -> std::result::Result<(), (&'static str, std::io::Error)> {
    let mut offset = 0;
    for chunk in bytes.chunks(WRITE_CHUNK_BYTES) {
        if let Err(e) = file.write_at(offset as u64, chunk).await {
            let _ = file.close().await;
            return Err(("writing", e));
        }
        offset += chunk.len();
    }
    if let Err(e) = file.sync().await {
        let _ = file.close().await;
        return Err(("syncing", e));
    }
    file.close().await.map_err(|e| ("closing", e))
}

//! Immutable sorted string tables (docs/design.md §4.4): the on-disk home of flushed
//! memtables and compaction output.
//!
//! This module owns the SSTable file format ([`format`](mod@format) for the layout, [`block`] for data
//! blocks, [`bloom`] for the filter), writing a table ([`SstableBuilder`]), and reading
//! one ([`Sstable`] for point lookups through the shard's
//! [`BlockCache`](crate::storage::cache::BlockCache), [`SstableIterator`] for a full
//! ordered scan). Each key appears at most once per table; its value is the opaque
//! encoding of a [`KeyState`](crate::conflict::KeyState).
//!
//! It must never return a wrong value: every byte read from disk is covered by a CRC32C
//! that is checked before use, and anything that does not verify or parse is an
//! [`SstableError`] naming the file and the broken part — never a panic. It never
//! merges versions (that is [`crate::conflict::merge`], called by the engine and
//! compaction), never syncs the directory and never touches the manifest: the caller
//! makes a finished table durable by name and records it.

pub mod block;
pub mod bloom;
pub mod builder;
pub mod format;
pub mod reader;

#[cfg(test)]
mod tests;

use std::io;

pub use builder::SstableBuilder;
pub use format::{Footer, Stats as SstableStats, FORMAT_VERSION, MAGIC};
pub use reader::{Sstable, SstableIterator};

use crate::conflict::DecodeError;

/// Default target size of a data block (config `sstable_block_size`).
pub const DEFAULT_BLOCK_SIZE_BYTES: usize = 4096;

/// What a caller (engine, manifest, compaction planner) needs to know about one table
/// without reading it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SstableInfo {
    /// File name inside the shard's data directory.
    pub file_name: String,
    pub file_size_bytes: u64,
    pub block_count: u32,
    pub format_version: u32,
    pub stats: SstableStats,
}

/// Anything wrong while writing or reading an SSTable; its Display names the file.
#[derive(Debug, thiserror::Error)]
#[error("sstable {path}: {kind}")]
pub struct SstableError {
    /// Human-readable path of the file (from [`Disk::path_of`](crate::storage::disk::Disk::path_of)).
    pub path: String,
    pub kind: SstableErrorKind,
}

/// What is wrong, and where in the file.
#[derive(Debug, thiserror::Error)]
pub enum SstableErrorKind {
    #[error("I/O error while {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("truncated: file is {size_bytes} bytes, {detail}")]
    Truncated { size_bytes: u64, detail: String },
    #[error("bad magic {found:02x?} in the footer: not an SSTable, or truncated")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported format version {found} (this build reads 1..={supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("footer corrupt: {0}")]
    FooterCorrupt(String),
    #[error("block index corrupt: {0}")]
    IndexCorrupt(String),
    #[error("bloom filter corrupt: {0}")]
    BloomCorrupt(String),
    #[error("stats corrupt: {0}")]
    StatsCorrupt(String),
    #[error("data block at offset {offset} corrupt: {detail}")]
    DataBlockCorrupt { offset: u64, detail: String },
    #[error("entry {entry} of data block at offset {offset} has a corrupt value: {source}")]
    ValueCorrupt {
        offset: u64,
        entry: usize,
        #[source]
        source: DecodeError,
    },
    #[error("refusing to write an SSTable with no entries")]
    Empty,
}

impl SstableError {
    pub fn new(path: impl Into<String>, kind: SstableErrorKind) -> Self {
        Self {
            path: path.into(),
            kind,
        }
    }

    /// True when the file's bytes are bad (as opposed to an I/O failure or misuse):
    /// the recovery policy for such a table is to quarantine it, not to retry.
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self.kind,
            SstableErrorKind::Io { .. } | SstableErrorKind::Empty
        )
    }
}

pub type Result<T, E = SstableError> = std::result::Result<T, E>;

//! Reading one SSTable: [`Sstable::open`] verifies the footer and loads index, bloom
//! filter and stats into memory; [`Sstable::get`] answers a point lookup with at most
//! one block read; [`SstableIterator`] scans every entry in key order for compaction.
//!
//! Every block is CRC-checked and parsed before any byte of it is used, and only
//! verified blocks enter the shard's block cache. A table never changes after it is
//! written, so nothing here writes.

use std::collections::VecDeque;
use std::rc::Rc;

use super::block::Block;
use super::bloom::Bloom;
use super::format::{decode_index, decode_stats, Footer, IndexEntry, FOOTER_LEN, MAGIC};
use super::{Result, SstableError, SstableErrorKind, SstableInfo, FORMAT_VERSION};
use crate::conflict::KeyState;
use crate::storage::cache::BlockCache;
use crate::storage::disk::{align_up, Disk, DiskFile, ALIGN};

/// Bytes the iterator reads per I/O (whole blocks; at least one block).
pub const ITERATOR_READAHEAD_BYTES: usize = 256 * 1024;

/// An open, verified SSTable. Index, bloom filter and stats live in memory; data blocks
/// are read on demand through the shard's block cache.
pub struct Sstable<D: Disk> {
    id: u64,
    path: String,
    file: D::File,
    index: Vec<IndexEntry>,
    bloom: Bloom,
    info: SstableInfo,
    cache: Rc<BlockCache>,
}

impl<D: Disk> Sstable<D> {
    /// Open `name` and verify its footer, index, bloom filter and stats. `id` names the
    /// table in the block cache and must be unique among the shard's open tables.
    pub async fn open(disk: &D, name: &str, id: u64, cache: Rc<BlockCache>) -> Result<Self> {
        let path = disk.path_of(name);
        let file = disk
            .open(name)
            .await
            .map_err(|source| io_error(&path, "opening", source))?;
        match load_metadata(&file, &path, name).await {
            Ok((index, bloom, info)) => Ok(Sstable {
                id,
                path,
                file,
                index,
                bloom,
                info,
                cache,
            }),
            Err(e) => {
                let _ = file.close().await;
                Err(e)
            }
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn info(&self) -> &SstableInfo {
        &self.info
    }

    /// Human-readable path, as in error messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// False when `key` is certainly not in this table (outside its key range, or
    /// rejected by the bloom filter). No I/O.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let stats = &self.info.stats;
        key >= stats.first_key.as_slice()
            && key <= stats.last_key.as_slice()
            && self.bloom.may_contain(key)
    }

    /// The state stored for `key`, if any. At most one block read (none on a cache hit
    /// or when the key range, bloom filter or index rule the key out).
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyState>> {
        if !self.may_contain(key) {
            return Ok(None);
        }
        let i = self
            .index
            .partition_point(|block| block.last_key.as_ref() < key);
        let Some(entry) = self.index.get(i) else {
            return Ok(None);
        };
        if key < entry.first_key.as_ref() {
            // Falls between two blocks.
            return Ok(None);
        }
        let block = self.cached_block(i).await?;
        match block.find(key) {
            None => Ok(None),
            Some((position, value)) => self.decode_value(entry.offset, position, value).map(Some),
        }
    }

    /// Iterate over all entries in key order.
    pub fn iter(&self) -> SstableIterator<'_, D> {
        SstableIterator {
            table: self,
            next_block: 0,
            pending: VecDeque::new(),
            current: None,
            position: 0,
        }
    }

    /// Close the file.
    pub async fn close(self) -> Result<()> {
        let path = self.path;
        self.file
            .close()
            .await
            .map_err(|source| io_error(&path, "closing", source))
    }

    fn decode_value(&self, offset: u64, entry: usize, value: &[u8]) -> Result<KeyState> {
        KeyState::decode(value).map_err(|source| {
            self.error(SstableErrorKind::ValueCorrupt {
                offset,
                entry,
                source,
            })
        })
    }

    fn error(&self, kind: SstableErrorKind) -> SstableError {
        SstableError::new(&self.path, kind)
    }

    /// Block `i` of the index, from the cache or from disk (then cached).
    async fn cached_block(&self, i: usize) -> Result<Rc<Block>> {
        let entry = &self.index[i];
        if let Some(block) = self.cache.get(self.id, entry.offset) {
            return Ok(block);
        }
        let len = entry.padded_len() as usize;
        let bytes = self
            .file
            .read_at(entry.offset, len)
            .await
            .map_err(|source| io_error(&self.path, "reading a data block", source))?;
        let block = Rc::new(self.verify_block(&Rc::new(bytes), entry.offset, i)?);
        self.cache.insert(self.id, entry.offset, block.clone());
        Ok(block)
    }

    /// Verify block `i` of the index, found in `bytes` (read from file offset
    /// `bytes_offset`), against its CRC and its index entry.
    fn verify_block(&self, bytes: &Rc<Vec<u8>>, bytes_offset: u64, i: usize) -> Result<Block> {
        let entry = &self.index[i];
        let corrupt = |detail: String| {
            self.error(SstableErrorKind::DataBlockCorrupt {
                offset: entry.offset,
                detail,
            })
        };
        let start = (entry.offset - bytes_offset) as usize;
        let block = Block::decode(bytes.clone(), start, entry.len as usize).map_err(corrupt)?;
        if block.first_key() != entry.first_key.as_ref()
            || block.last_key() != entry.last_key.as_ref()
        {
            return Err(corrupt("keys disagree with the block index".into()));
        }
        Ok(block)
    }
}

fn io_error(path: &str, op: &'static str, source: std::io::Error) -> SstableError {
    SstableError::new(path, SstableErrorKind::Io { op, source })
}

/// Read and verify footer, index, bloom and stats (two reads: the last ALIGN bytes, then
/// the metadata sections).
async fn load_metadata<F: DiskFile>(
    file: &F,
    path: &str,
    name: &str,
) -> Result<(Vec<IndexEntry>, Bloom, SstableInfo)> {
    let fail = |kind| SstableError::new(path, kind);
    let size_bytes = file
        .size()
        .await
        .map_err(|source| io_error(path, "reading the file size", source))?;
    let truncated = |detail: &str| {
        fail(SstableErrorKind::Truncated {
            size_bytes,
            detail: detail.to_string(),
        })
    };
    if size_bytes < 2 * ALIGN as u64 {
        return Err(truncated("smaller than one data block plus the footer"));
    }
    if size_bytes % ALIGN as u64 != 0 {
        return Err(truncated("not a multiple of the 4096-byte alignment"));
    }
    let tail_offset = size_bytes - ALIGN as u64;
    let tail = file
        .read_at(tail_offset, ALIGN)
        .await
        .map_err(|source| io_error(path, "reading the footer", source))?;
    if tail.len() != ALIGN {
        return Err(truncated("short read of the last block"));
    }
    let footer = Footer::from_tail(&tail)
        .ok_or_else(|| fail(SstableErrorKind::FooterCorrupt("unreadable".into())))?;
    if footer.magic != MAGIC {
        return Err(fail(SstableErrorKind::BadMagic {
            found: footer.magic,
        }));
    }
    let version = footer.format_version.get();
    if version == 0 || version > FORMAT_VERSION {
        return Err(fail(SstableErrorKind::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        }));
    }
    if footer.compute_crc32c() != footer.footer_crc32c.get() {
        return Err(fail(SstableErrorKind::FooterCorrupt(
            "CRC32C mismatch".into(),
        )));
    }
    let index_offset = footer.index_offset.get();
    let layout_ok = footer.flags.get() == 0
        && footer.reserved.get() == 0
        && index_offset % ALIGN as u64 == 0
        && index_offset >= ALIGN as u64
        && Some(footer.bloom_offset.get()) == index_offset.checked_add(footer.index_len.get())
        && Some(footer.stats_offset.get())
            == footer
                .bloom_offset
                .get()
                .checked_add(footer.bloom_len.get())
        && footer
            .sections_end()
            .is_some_and(|end| end <= size_bytes - FOOTER_LEN as u64);
    if !layout_ok {
        return Err(fail(SstableErrorKind::FooterCorrupt(format!(
            "sections misplaced: index at {index_offset}+{}, bloom at {}+{}, stats at {}+{}",
            footer.index_len.get(),
            footer.bloom_offset.get(),
            footer.bloom_len.get(),
            footer.stats_offset.get(),
            footer.stats_len.get()
        ))));
    }
    let sections_end = footer.sections_end().unwrap_or(0);
    let meta_len = (sections_end - index_offset) as usize;
    let meta = file
        .read_at(index_offset, meta_len)
        .await
        .map_err(|source| io_error(path, "reading the metadata", source))?;
    if meta.len() != meta_len {
        return Err(truncated("short read of the metadata"));
    }
    let (index_bytes, rest) = meta.split_at(footer.index_len.get() as usize);
    let (bloom_bytes, stats_bytes) = rest.split_at(footer.bloom_len.get() as usize);
    let index = decode_index(index_bytes, index_offset)
        .map_err(|d| fail(SstableErrorKind::IndexCorrupt(d)))?;
    let bloom = Bloom::decode(bloom_bytes).map_err(|d| fail(SstableErrorKind::BloomCorrupt(d)))?;
    let stats = decode_stats(stats_bytes).map_err(|d| fail(SstableErrorKind::StatsCorrupt(d)))?;
    let (first_block, last_block) = match (index.first(), index.last()) {
        (Some(first), Some(last)) => (first, last),
        _ => {
            return Err(fail(SstableErrorKind::IndexCorrupt(
                "no data blocks".into(),
            )))
        }
    };
    if first_block.first_key.as_ref() != stats.first_key.as_slice()
        || last_block.last_key.as_ref() != stats.last_key.as_slice()
    {
        return Err(fail(SstableErrorKind::StatsCorrupt(
            "key range disagrees with the block index".into(),
        )));
    }
    let info = SstableInfo {
        file_name: name.to_string(),
        file_size_bytes: size_bytes,
        block_count: index.len() as u32,
        format_version: version,
        stats,
    };
    Ok((index, bloom, info))
}

/// Yields every entry of one table in key order, reading several blocks per I/O.
/// Blocks read here bypass the block cache so a compaction scan does not evict the
/// blocks that foreground reads need. After an error, calling `next` again retries the
/// same read.
pub struct SstableIterator<'a, D: Disk> {
    table: &'a Sstable<D>,
    /// Index of the first block not yet read.
    next_block: usize,
    /// Verified blocks read ahead, not yet started, with their file offsets.
    pending: VecDeque<(u64, Block)>,
    current: Option<(u64, Block)>,
    /// Next entry of `current`.
    position: usize,
}

impl<D: Disk> SstableIterator<'_, D> {
    /// The next entry as (key, value bytes still encoded), or `None` at the end.
    pub async fn next_raw(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if !self.advance().await? {
            return Ok(None);
        }
        let Some((_, block)) = &self.current else {
            return Ok(None);
        };
        let (key, value) = block.entry(self.position);
        let entry = (key.to_vec(), value.to_vec());
        self.position += 1;
        Ok(Some(entry))
    }

    /// The next entry, decoded, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<(Vec<u8>, KeyState)>> {
        if !self.advance().await? {
            return Ok(None);
        }
        let Some((offset, block)) = &self.current else {
            return Ok(None);
        };
        let (key, value) = block.entry(self.position);
        let state = self.table.decode_value(*offset, self.position, value)?;
        let key = key.to_vec();
        self.position += 1;
        Ok(Some((key, state)))
    }

    /// Make `position` name an entry of `current`, reading ahead when needed; returns
    /// false at the end of the table.
    async fn advance(&mut self) -> Result<bool> {
        loop {
            if let Some((_, block)) = &self.current {
                if self.position < block.entry_count() {
                    break;
                }
            }
            if self.pending.is_empty() && !self.read_ahead().await? {
                self.current = None;
                return Ok(false);
            }
            self.current = self.pending.pop_front();
            self.position = 0;
        }
        Ok(true)
    }

    /// Read the next run of contiguous blocks (about ITERATOR_READAHEAD_BYTES, at least
    /// one block) with one I/O; false when every block has been read.
    async fn read_ahead(&mut self) -> Result<bool> {
        let index = &self.table.index;
        let Some(first) = index.get(self.next_block) else {
            return Ok(false);
        };
        let mut end_block = self.next_block + 1;
        let mut end_offset = first.offset + first.padded_len();
        while let Some(entry) = index.get(end_block) {
            let next_end = entry.offset + entry.padded_len();
            if entry.offset != end_offset
                || (next_end - first.offset) as usize > ITERATOR_READAHEAD_BYTES
            {
                break;
            }
            end_offset = next_end;
            end_block += 1;
        }
        let len = (end_offset - first.offset) as usize;
        assert!(len.is_multiple_of(ALIGN) && len == align_up(len));
        let bytes = self
            .table
            .file
            .read_at(first.offset, len)
            .await
            .map_err(|source| io_error(&self.table.path, "reading data blocks", source))?;
        let bytes = Rc::new(bytes);
        let table = self.table;
        let blocks = (self.next_block..end_block)
            .map(|i| {
                let block = table.verify_block(&bytes, first.offset, i)?;
                Ok((table.index[i].offset, block))
            })
            .collect::<Result<Vec<_>>>()?;
        // Only a fully verified run is kept, so a retry after an error starts clean.
        self.pending.extend(blocks);
        self.next_block = end_block;
        Ok(true)
    }
}

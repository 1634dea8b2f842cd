//! The SSTable file layout: the fixed [`Footer`], the block index, the stats section, and
//! the little-endian cursor that decodes them. Pure byte handling, no I/O.
//!
//! # File layout (format version 1)
//!
//! Every offset below is from the start of the file; every integer is little-endian.
//! The whole file is a multiple of [`ALIGN`] bytes because it is written with direct I/O.
//!
//! ```text
//! +------------------------------+  offset 0
//! | data block 0  (see Block)    |  each block starts at a multiple of ALIGN
//! | zero padding to ALIGN        |
//! | data block 1                 |
//! | ...                          |
//! +------------------------------+  meta offset (= footer.index_offset, ALIGN-aligned)
//! | block index   (IndexEntry*)  |  footer.index_offset, footer.index_len
//! | bloom filter  (Bloom)        |  footer.bloom_offset, footer.bloom_len
//! | stats         (Stats)        |  footer.stats_offset, footer.stats_len
//! | zero padding                 |
//! | footer (72 bytes)            |  the last FOOTER_LEN bytes of the file
//! +------------------------------+  file size (multiple of ALIGN)
//! ```
//!
//! The index, bloom and stats sections are contiguous and in that order; each ends with
//! its own CRC32C. Data blocks are described in [`super::block`], the bloom filter in
//! [`super::bloom`]; the index and stats are documented on [`IndexEntry`] and [`Stats`].

use zerocopy::byteorder::{LE, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::conflict::Hlc;
use crate::storage::disk::ALIGN;

/// Identifies an SSTable file: the first 8 bytes of the footer.
pub const MAGIC: [u8; 8] = *b"RKVSSTBL";
/// The format this code writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed footer at the end of every SSTable file.
pub const FOOTER_LEN: usize = std::mem::size_of::<Footer>();

const _: () = assert!(FOOTER_LEN == 72);
const _: () = assert!(FOOTER_LEN <= ALIGN);

/// The fixed-size footer, the last [`FOOTER_LEN`] bytes of the file. Read first; it
/// locates everything else.
///
/// ```text
/// byte  len  field
///    0    8  magic           b"RKVSSTBL"
///    8    4  format_version  u32 (1)
///   12    4  flags           u32, 0 (reserved; a reader refuses non-zero)
///   16    8  index_offset    u64, ALIGN-aligned: also where the data blocks end
///   24    8  index_len       u64, bytes of the index section including its CRC
///   32    8  bloom_offset    u64, = index_offset + index_len
///   40    8  bloom_len       u64
///   48    8  stats_offset    u64, = bloom_offset + bloom_len
///   56    8  stats_len       u64; stats end <= file size - FOOTER_LEN
///   64    4  reserved        u32, 0
///   68    4  footer_crc32c   u32, CRC32C of bytes 0..68
/// ```
///
/// A footer is broken when the magic differs (not an SSTable, or truncated), the
/// version is newer than [`FORMAT_VERSION`], the CRC does not match, or the sections it
/// points at are not laid out as above inside the file.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Footer {
    pub magic: [u8; 8],
    pub format_version: U32<LE>,
    pub flags: U32<LE>,
    pub index_offset: U64<LE>,
    pub index_len: U64<LE>,
    pub bloom_offset: U64<LE>,
    pub bloom_len: U64<LE>,
    pub stats_offset: U64<LE>,
    pub stats_len: U64<LE>,
    pub reserved: U32<LE>,
    pub footer_crc32c: U32<LE>,
}

impl Footer {
    /// Bytes covered by the footer CRC.
    pub const CRC_COVERED_LEN: usize = FOOTER_LEN - 4;

    /// A footer for sections laid out back to back from `index_offset`, with its CRC.
    pub fn new(index_offset: u64, index_len: u64, bloom_len: u64, stats_len: u64) -> Footer {
        let mut footer = Footer {
            magic: MAGIC,
            format_version: U32::new(FORMAT_VERSION),
            flags: U32::new(0),
            index_offset: U64::new(index_offset),
            index_len: U64::new(index_len),
            bloom_offset: U64::new(index_offset + index_len),
            bloom_len: U64::new(bloom_len),
            stats_offset: U64::new(index_offset + index_len + bloom_len),
            stats_len: U64::new(stats_len),
            reserved: U32::new(0),
            footer_crc32c: U32::new(0),
        };
        footer.footer_crc32c = U32::new(footer.compute_crc32c());
        footer
    }

    /// CRC32C of the footer bytes before the CRC field.
    pub fn compute_crc32c(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..Self::CRC_COVERED_LEN])
    }

    /// The footer stored in the last [`FOOTER_LEN`] bytes of `tail`, unverified.
    pub fn from_tail(tail: &[u8]) -> Option<Footer> {
        Footer::read_from_suffix(tail)
            .ok()
            .map(|(_, footer)| footer)
    }

    /// End of the stats section, the last byte any section covers.
    pub fn sections_end(&self) -> Option<u64> {
        self.stats_offset.get().checked_add(self.stats_len.get())
    }
}

/// Little-endian cursor over a section's bytes; every read is bounds-checked and
/// returns `None` past the end, so corrupt lengths cannot panic.
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }
}

/// Split `section` into its body and trailing CRC32C; `None` if the CRC does not match
/// or the section is too short to hold one.
pub fn verify_crc_suffix(section: &[u8]) -> Option<&[u8]> {
    let body_len = section.len().checked_sub(4)?;
    let (body, crc) = section.split_at(body_len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    (crc32c::crc32c(body) == stored).then_some(body)
}

/// Append the CRC32C of `out[start..]` to `out`.
pub fn push_crc_of(out: &mut Vec<u8>, start: usize) {
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// One block-index entry: where a data block is and which keys it holds.
///
/// Index section layout:
///
/// ```text
/// u32 block_count (>= 1)
/// block_count times:
///   u64 offset          ALIGN-aligned start of the block
///   u32 len             unpadded block length (the block ends with its CRC32C)
///   u32 first_key_len
///   u32 last_key_len
///   first_key bytes
///   last_key bytes
/// u32 crc32c of everything above
/// ```
///
/// Entries are in file order; blocks do not overlap and their key ranges are strictly
/// increasing (`last_key[i] < first_key[i + 1]`), so a lookup binary-searches on
/// `last_key` and checks `first_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub len: u32,
    pub first_key: Box<[u8]>,
    pub last_key: Box<[u8]>,
}

impl IndexEntry {
    /// Bytes of file this block occupies including its padding.
    pub fn padded_len(&self) -> u64 {
        crate::storage::disk::align_up(self.len as usize) as u64
    }
}

pub fn encode_index(entries: &[IndexEntry], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&(e.first_key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(e.last_key.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.first_key);
        out.extend_from_slice(&e.last_key);
    }
    push_crc_of(out, start);
}

/// Decode and check an index section: CRC, then that blocks are aligned, in order,
/// non-overlapping, below `data_end`, and that key ranges are strictly increasing.
/// Returns a description of the first problem.
pub fn decode_index(section: &[u8], data_end: u64) -> Result<Vec<IndexEntry>, String> {
    let body = verify_crc_suffix(section).ok_or("CRC32C mismatch")?;
    let mut cur = Cursor::new(body);
    let count = cur.u32().ok_or("truncated block count")? as usize;
    if count == 0 {
        return Err("no data blocks".into());
    }
    // Each entry takes at least 20 bytes: bound the allocation by what is there.
    if count > cur.remaining() / 20 {
        return Err(format!("block count {count} exceeds section size"));
    }
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(count);
    let mut next_free: u64 = 0;
    for i in 0..count {
        let truncated = || format!("entry {i} truncated");
        let offset = cur.u64().ok_or_else(truncated)?;
        let len = cur.u32().ok_or_else(truncated)?;
        let first_len = cur.u32().ok_or_else(truncated)? as usize;
        let last_len = cur.u32().ok_or_else(truncated)? as usize;
        let first_key: Box<[u8]> = cur.take(first_len).ok_or_else(truncated)?.into();
        let last_key: Box<[u8]> = cur.take(last_len).ok_or_else(truncated)?.into();
        let entry = IndexEntry {
            offset,
            len,
            first_key,
            last_key,
        };
        if offset % ALIGN as u64 != 0 || offset < next_free || len == 0 {
            return Err(format!("entry {i}: block at {offset} len {len} misplaced"));
        }
        next_free = offset
            .checked_add(entry.padded_len())
            .filter(|end| *end <= data_end)
            .ok_or_else(|| format!("entry {i}: block at {offset} ends past the data"))?;
        if entry.first_key > entry.last_key {
            return Err(format!("entry {i}: first key after last key"));
        }
        if let Some(prev) = entries.last() {
            if prev.last_key >= entry.first_key {
                return Err(format!("entry {i}: keys overlap the previous block"));
            }
        }
        entries.push(entry);
    }
    if cur.remaining() != 0 {
        return Err(format!("{} trailing bytes", cur.remaining()));
    }
    Ok(entries)
}

/// Summary of a table's contents, stored in the stats section and kept in memory.
///
/// Stats section layout:
///
/// ```text
/// u64 entry_count      (>= 1)
/// u64 tombstone_count  (<= entry_count)
/// u64 min_timestamp    smallest HLC carried by any entry
/// u64 max_timestamp    largest HLC carried by any entry
/// u64 created_at_ms    wall-clock milliseconds since the Unix epoch at build time
/// u32 first_key_len
/// u32 last_key_len
/// first_key bytes
/// last_key bytes
/// u32 crc32c of everything above
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub entry_count: u64,
    pub tombstone_count: u64,
    pub min_timestamp: Hlc,
    pub max_timestamp: Hlc,
    pub created_at_ms: u64,
    pub first_key: Vec<u8>,
    pub last_key: Vec<u8>,
}

pub fn encode_stats(stats: &Stats, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&stats.entry_count.to_le_bytes());
    out.extend_from_slice(&stats.tombstone_count.to_le_bytes());
    out.extend_from_slice(&stats.min_timestamp.0.to_le_bytes());
    out.extend_from_slice(&stats.max_timestamp.0.to_le_bytes());
    out.extend_from_slice(&stats.created_at_ms.to_le_bytes());
    out.extend_from_slice(&(stats.first_key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(stats.last_key.len() as u32).to_le_bytes());
    out.extend_from_slice(&stats.first_key);
    out.extend_from_slice(&stats.last_key);
    push_crc_of(out, start);
}

pub fn decode_stats(section: &[u8]) -> Result<Stats, String> {
    let body = verify_crc_suffix(section).ok_or("CRC32C mismatch")?;
    let mut cur = Cursor::new(body);
    let truncated = || "truncated".to_string();
    let entry_count = cur.u64().ok_or_else(truncated)?;
    let tombstone_count = cur.u64().ok_or_else(truncated)?;
    let min_timestamp = Hlc(cur.u64().ok_or_else(truncated)?);
    let max_timestamp = Hlc(cur.u64().ok_or_else(truncated)?);
    let created_at_ms = cur.u64().ok_or_else(truncated)?;
    let first_len = cur.u32().ok_or_else(truncated)? as usize;
    let last_len = cur.u32().ok_or_else(truncated)? as usize;
    let first_key = cur.take(first_len).ok_or_else(truncated)?.to_vec();
    let last_key = cur.take(last_len).ok_or_else(truncated)?.to_vec();
    if cur.remaining() != 0 {
        return Err(format!("{} trailing bytes", cur.remaining()));
    }
    if entry_count == 0 || tombstone_count > entry_count {
        return Err(format!(
            "entry count {entry_count} / tombstone count {tombstone_count} impossible"
        ));
    }
    if min_timestamp > max_timestamp || first_key > last_key {
        return Err("ranges inverted".into());
    }
    Ok(Stats {
        entry_count,
        tombstone_count,
        min_timestamp,
        max_timestamp,
        created_at_ms,
        first_key,
        last_key,
    })
}

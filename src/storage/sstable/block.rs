//! Data blocks: encoding a run of sorted entries, and verifying and searching one read
//! back from disk. Pure byte handling, no I/O.
//!
//! A [`Block`] is only ever constructed by [`Block::decode`], which checks the CRC and
//! every offset and length once; lookups on a decoded block then cannot go out of
//! bounds, so a corrupt block is an error at decode time, never a panic or a wrong
//! value later.

use std::cmp::Ordering;
use std::rc::Rc;

use crate::storage::cache::CacheWeight;
use crate::storage::disk::{align_up, ALIGN};

/// Bytes per entry header: key length and value length.
const ENTRY_HEADER_LEN: usize = 8;
/// Bytes after the offsets array: entry count and CRC32C.
const TRAILER_LEN: usize = 8;

/// A verified data block.
///
/// On-disk layout (all integers little-endian); the block starts at an ALIGN-aligned
/// file offset and is followed by zero padding up to the next ALIGN boundary, which is
/// not part of the block and not covered by its CRC:
///
/// ```text
/// entry_count times, in strictly increasing key order:
///   u32 key_len
///   u32 value_len
///   key bytes
///   value bytes          (a KeyState encoding)
/// entry_count times:
///   u32 entry_offset     from the block start; entry 0 at 0, strictly increasing
/// u32 entry_count        (>= 1)
/// u32 crc32c             of every byte above
/// ```
///
/// A block is broken when its CRC does not match, the count or offsets do not fit the
/// block, an entry's lengths do not exactly fill the space up to the next entry, or the
/// keys are not strictly increasing.
#[derive(Clone, Debug)]
pub struct Block {
    /// The bytes read from disk; several blocks of one read-ahead share a buffer.
    buf: Rc<Vec<u8>>,
    /// Where this block starts in `buf`.
    start: usize,
    /// Unpadded block length, CRC included.
    len: usize,
    entry_count: usize,
    /// Start of the offsets array, relative to `start`.
    offsets_start: usize,
}

impl Block {
    /// Verify and parse the block at `buf[start..start + len]`; the error describes the
    /// first problem found.
    pub fn decode(buf: Rc<Vec<u8>>, start: usize, len: usize) -> Result<Block, String> {
        let end = start
            .checked_add(len)
            .filter(|end| *end <= buf.len())
            .ok_or_else(|| format!("block of {len} bytes extends past the bytes read"))?;
        let bytes = &buf[start..end];
        if len < TRAILER_LEN + 4 + ENTRY_HEADER_LEN {
            return Err(format!("block length {len} too small"));
        }
        let body = super::format::verify_crc_suffix(bytes).ok_or("CRC32C mismatch")?;
        let count = read_u32(body, body.len() - 4) as usize;
        let offsets_start = count
            .checked_mul(4)
            .and_then(|offsets_len| (body.len() - 4).checked_sub(offsets_len))
            .ok_or_else(|| format!("entry count {count} does not fit"))?;
        if count == 0 {
            return Err("no entries".into());
        }
        let block = Block {
            buf: buf.clone(),
            start,
            len,
            entry_count: count,
            offsets_start,
        };
        let mut previous_key: Option<&[u8]> = None;
        for i in 0..count {
            let entry_start = read_u32(body, offsets_start + 4 * i) as usize;
            let entry_end = if i + 1 < count {
                read_u32(body, offsets_start + 4 * (i + 1)) as usize
            } else {
                offsets_start
            };
            if (i == 0 && entry_start != 0)
                || entry_end > offsets_start
                || entry_end < entry_start + ENTRY_HEADER_LEN
            {
                return Err(format!(
                    "entry {i} offsets {entry_start}..{entry_end} invalid"
                ));
            }
            let key_len = read_u32(body, entry_start) as usize;
            let value_len = read_u32(body, entry_start + 4) as usize;
            let entry_len = (ENTRY_HEADER_LEN as u64) + key_len as u64 + value_len as u64;
            if entry_len != (entry_end - entry_start) as u64 {
                return Err(format!("entry {i} lengths do not match its offsets"));
            }
            let key_start = entry_start + ENTRY_HEADER_LEN;
            let key = &body[key_start..key_start + key_len];
            if previous_key.is_some_and(|previous| previous >= key) {
                return Err(format!("entry {i} key out of order"));
            }
            previous_key = Some(key);
        }
        Ok(block)
    }

    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    /// Unpadded length on disk.
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Key and value bytes of entry `i` (`i < entry_count`, checked by decode).
    pub fn entry(&self, i: usize) -> (&[u8], &[u8]) {
        assert!(
            i < self.entry_count,
            "entry {i} out of {}",
            self.entry_count
        );
        let bytes = self.bytes();
        let entry_start = read_u32(bytes, self.offsets_start + 4 * i) as usize;
        let key_len = read_u32(bytes, entry_start) as usize;
        let value_len = read_u32(bytes, entry_start + 4) as usize;
        let key_start = entry_start + ENTRY_HEADER_LEN;
        let value_start = key_start + key_len;
        (
            &bytes[key_start..value_start],
            &bytes[value_start..value_start + value_len],
        )
    }

    pub fn key(&self, i: usize) -> &[u8] {
        self.entry(i).0
    }

    pub fn first_key(&self) -> &[u8] {
        self.key(0)
    }

    pub fn last_key(&self) -> &[u8] {
        self.key(self.entry_count - 1)
    }

    /// Binary search: the index and value bytes of `key`, if present.
    pub fn find(&self, key: &[u8]) -> Option<(usize, &[u8])> {
        let (mut low, mut high) = (0, self.entry_count);
        while low < high {
            let mid = low + (high - low) / 2;
            let (mid_key, value) = self.entry(mid);
            match mid_key.cmp(key) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return Some((mid, value)),
            }
        }
        None
    }
}

impl CacheWeight for Block {
    fn weight_bytes(&self) -> usize {
        // The buffer of a cached block is the block's own padded read.
        align_up(self.len) + std::mem::size_of::<Block>()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Appends one entry to the block being built at the end of `out`; returns the entry's
/// start. The caller records the offset and decides block boundaries.
pub fn append_entry(out: &mut Vec<u8>, key: &[u8], encode_value: impl FnOnce(&mut Vec<u8>)) {
    let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    assert!(key_len < u32::MAX, "key of {} bytes too large", key.len());
    out.extend_from_slice(&key_len.to_le_bytes());
    let value_len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(key);
    let value_start = out.len();
    encode_value(out);
    let value_len = out.len() - value_start;
    let value_len = u32::try_from(value_len).unwrap_or(u32::MAX);
    assert!(value_len < u32::MAX, "value too large");
    out[value_len_at..value_len_at + 4].copy_from_slice(&value_len.to_le_bytes());
}

/// Length the block starting at `block_start` would have if closed now with
/// `entry_count` entries.
pub fn closed_len(out_len: usize, block_start: usize, entry_count: usize) -> usize {
    out_len - block_start + 4 * entry_count + TRAILER_LEN
}

/// Close the block that starts at `block_start` (ALIGN-aligned) in `out`: append the
/// offsets array, count and CRC, then pad to ALIGN. Returns the unpadded length.
pub fn close_block(out: &mut Vec<u8>, block_start: usize, offsets: &[u32]) -> u32 {
    assert!(
        block_start.is_multiple_of(ALIGN),
        "block start {block_start} unaligned"
    );
    assert!(!offsets.is_empty(), "closing an empty block");
    assert!(offsets[0] == 0, "first entry must start the block");
    for offset in offsets {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    super::format::push_crc_of(out, block_start);
    let len = out.len() - block_start;
    out.resize(block_start + align_up(len), 0);
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        for (k, v) in entries {
            offsets.push(out.len() as u32);
            append_entry(&mut out, k, |o| o.extend_from_slice(v));
        }
        let len = close_block(&mut out, 0, &offsets) as usize;
        out.truncate(len);
        out
    }

    #[test]
    fn find_every_entry_and_no_other() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..100u32)
            .map(|i| {
                (
                    format!("k{:04}", i * 2).into_bytes(),
                    vec![i as u8; i as usize],
                )
            })
            .collect();
        let refs: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let bytes = build(&refs);
        let len = bytes.len();
        let block = Block::decode(Rc::new(bytes), 0, len).unwrap();
        assert_eq!(block.entry_count(), 100);
        for (i, (k, v)) in entries.iter().enumerate() {
            assert_eq!(block.find(k), Some((i, v.as_slice())));
            let absent = format!("k{:04}", i * 2 + 1).into_bytes();
            assert_eq!(block.find(&absent), None);
        }
        assert_eq!(block.find(b""), None);
        assert_eq!(block.find(b"z"), None);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let bytes = build(&[(b"a", b"1"), (b"b", b"22"), (b"c", b"")]);
        let len = bytes.len();
        for at in 0..len {
            let mut broken = bytes.clone();
            broken[at] ^= 0x40;
            assert!(
                Block::decode(Rc::new(broken), 0, len).is_err(),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn out_of_order_keys_with_valid_crc_are_rejected() {
        let bytes = build(&[(b"b", b"1"), (b"a", b"2")]);
        let len = bytes.len();
        let err = Block::decode(Rc::new(bytes), 0, len).unwrap_err();
        assert!(err.contains("out of order"), "{err}");
    }
}

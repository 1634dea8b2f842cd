//! The commit log's on-disk format: pure encoding and decoding, no I/O.
//!
//! This module owns the byte layout of a segment file (documented on [`SegmentLayout`])
//! and the scanner that classifies what it finds. It never touches a file, and the
//! scanner never panics, whatever bytes it is given.

use std::ops::Range;

use crate::storage::disk::{align_up, ALIGN};

/// Segment file magic (bytes 0..8 of the header block).
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVCLOG\0";
/// Current (and only) format version.
pub const FORMAT_VERSION: u32 = 1;
/// Batch header magic, `"BTCH"` read as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"BTCH");
/// Size of the segment header block; records start at this offset.
pub const SEGMENT_HEADER_BYTES: u64 = ALIGN as u64;
pub const BATCH_HEADER_BYTES: usize = 24;
pub const RECORD_HEADER_BYTES: usize = 8;
/// Largest payload one record may carry (values ≤ 16 MiB plus key and framing fit).
pub const MAX_RECORD_BYTES: usize = 256 << 20;
/// Largest segment; keeps every batch length within its u32 field.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

const SEGMENT_HEADER_USED_BYTES: usize = 28;

const _: () = assert!(SEGMENT_HEADER_USED_BYTES <= ALIGN);
const _: () = assert!(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES < ALIGN);
const _: () = assert!(
    (MAX_RECORD_BYTES as u64) + (BATCH_HEADER_BYTES + RECORD_HEADER_BYTES) as u64 + ALIGN as u64
        <= u32::MAX as u64
);
const _: () = assert!(MAX_SEGMENT_BYTES <= u32::MAX as u64);

/// Layout of one commit log segment file, `commitlog-<generation:020>.log`.
///
/// All integers are little-endian. CRC means CRC32C (Castagnoli). Every write is a run
/// of whole 4096-byte blocks at a block-aligned offset (direct I/O).
///
/// ```text
/// Block 0: segment header (written and fdatasync'ed when the segment is created)
///   0..8    magic            b"RKVCLOG\0"
///   8..12   format version   u32 = 1
///   12..16  block size       u32 = 4096
///   16..24  generation       u64, equals the one in the file name
///   24..28  CRC of bytes 0..24
///   28..4096 zero
///
/// From offset 4096: batches, each starting on a block boundary. A batch is what one
/// group commit writes with one write_at; it is padded with zeros to the next block
/// boundary, so blocks that hold acknowledged records are never written again.
///   batch header (24 bytes):
///   0..4    batch magic      b"BTCH"
///   4..8    record count     u32 ≥ 1
///   8..16   batch sequence   u64: 0, 1, 2, … within the segment
///   16..20  records length   u32: bytes of record frames that follow the header
///   20..24  CRC of generation (u64) ‖ bytes 0..20
///   then `record count` record frames, back to back:
///   0..4    payload length   u32 ≤ MAX_RECORD_BYTES
///   4..8    CRC of generation (u64) ‖ bytes 0..4 ‖ payload
///   8..     payload
///   then zeros up to the next block boundary.
///
/// After the last batch: end of file, or zeros to end of file. A segment is created
/// *preallocated*: its header block and zeros up to `segment_size_bytes` are written
/// and fdatasync'ed before any batch goes in, so appends overwrite blocks that already
/// exist and an append's fdatasync has no file size or extent metadata to commit. The
/// zero tail is not part of the log; bytes of version 1 segments written before
/// preallocation (which simply end after the last batch) read the same way.
/// ```
///
/// Why each field: the generation inside every CRC means bytes left over from another
/// segment (a reused or recycled file) never validate; the batch sequence and the
/// block-aligned batch starts let recovery tell a torn last batch (nothing valid after
/// it) from corruption in the middle (a later batch validates); the batch header lets
/// recovery skip padding without guessing.
///
/// What makes a segment broken: a header that is not exactly the above (refused, with
/// the file name); a batch or record whose CRC, magic, sequence or bounds fail. Such
/// damage is tolerated only at the tail of the newest segment (see `RecoveryPolicy`).
pub struct SegmentLayout;

/// File name of the segment with this generation.
pub fn segment_file_name(generation: u64) -> String {
    format!("commitlog-{generation:020}.log")
}

/// Generation of a segment file name, or `None` if `name` is not a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("commitlog-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header block of a new segment.
pub fn encode_segment_header(generation: u64) -> Vec<u8> {
    let mut block = vec![0u8; ALIGN];
    block[0..8].copy_from_slice(&SEGMENT_MAGIC);
    block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[12..16].copy_from_slice(&(ALIGN as u32).to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32c::crc32c(&block[0..24]);
    block[24..28].copy_from_slice(&crc.to_le_bytes());
    block
}

fn batch_header_crc(generation: u64, header_prefix: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), header_prefix)
}

fn record_crc(generation: u64, len_bytes: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&generation.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(crc, len_bytes), payload)
}

/// Bytes a record with this payload adds to a batch.
pub const fn record_frame_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// Bytes a batch occupies on disk (header, frames, padding) for `records_len` bytes of
/// record frames.
pub const fn batch_disk_bytes(records_len: usize) -> usize {
    align_up(BATCH_HEADER_BYTES + records_len)
}

/// One batch being assembled in memory: header space, then record frames. Each payload
/// is copied exactly once, into this buffer, which is then written as is.
pub struct BatchBuilder {
    generation: u64,
    sequence: u64,
    buf: Vec<u8>,
    count: u32,
}

impl BatchBuilder {
    /// Start a batch, reusing `buf`'s allocation.
    pub fn new(generation: u64, sequence: u64, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(BATCH_HEADER_BYTES, 0);
        Self {
            generation,
            sequence,
            buf,
            count: 0,
        }
    }

    /// Bytes of record frames so far.
    pub fn records_len(&self) -> usize {
        self.buf.len() - BATCH_HEADER_BYTES
    }

    pub fn push(&mut self, payload: &[u8]) {
        assert!(
            payload.len() <= MAX_RECORD_BYTES,
            "caller checks record size"
        );
        let len_bytes = (payload.len() as u32).to_le_bytes();
        let crc = record_crc(self.generation, &len_bytes, payload);
        self.buf.reserve(RECORD_HEADER_BYTES + payload.len());
        self.buf.extend_from_slice(&len_bytes);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// Fill in the header and pad to a block boundary; the result is written as is.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.count >= 1, "empty batches are never written");
        let records_len = u32::try_from(self.records_len()).unwrap_or(u32::MAX);
        assert_eq!(
            records_len as usize,
            self.records_len(),
            "batch length fits u32"
        );
        self.buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&self.count.to_le_bytes());
        self.buf[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        self.buf[16..20].copy_from_slice(&records_len.to_le_bytes());
        let crc = batch_header_crc(self.generation, &self.buf[0..20]);
        self.buf[20..24].copy_from_slice(&crc.to_le_bytes());
        let padded = align_up(self.buf.len());
        self.buf.resize(padded, 0);
        self.buf
    }
}

/// Why a segment header is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Shorter than a block, or the header block is all zeros: the segment's creation
    /// never completed (tolerable only for the newest segment).
    Incomplete,
    /// Anything else: wrong magic, unknown version, bad CRC, wrong generation.
    Invalid(String),
}

/// Where a scan stopped because the bytes were not a valid continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first byte that is not part of a whole valid record.
    pub offset: u64,
    pub reason: String,
    /// Start of the batch the damage is in (block-aligned).
    pub batch_start: u64,
    pub batch_sequence: u64,
    /// Whole valid records of that batch before the damage, and where the last ends.
    pub salvaged_records: u32,
    pub salvaged_end: u64,
    /// Offset of a valid batch header (with a higher sequence) after the damage, if any:
    /// proof that the damage is not a torn tail.
    pub later_valid_batch: Option<u64>,
}

/// Result of scanning a segment whose header is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Payload byte ranges of the valid records, in order.
    pub records: Vec<Range<usize>>,
    pub batches: u64,
    /// End of the last valid batch including its padding (block-aligned).
    pub valid_end: u64,
    /// End of the last block that holds a non-zero byte: everything from here to the end
    /// of the file is zeros (the unused, preallocated part of the segment).
    pub data_end: u64,
    pub damage: Option<Damage>,
}

/// End of the last [`ALIGN`]-sized block of `data` (counted from offset 0) that holds a
/// non-zero byte, or 0 if `data` is all zeros. Everything after it is zeros.
pub fn nonzero_data_end(data: &[u8]) -> usize {
    const ZERO_BLOCK: [u8; ALIGN] = [0; ALIGN];
    let mut end = data.len();
    while end > 0 {
        let start = (end - 1) / ALIGN * ALIGN;
        // Slice equality is a memcmp, fast even in debug builds.
        if data[start..end] != ZERO_BLOCK[..end - start] {
            return align_up(end);
        }
        end = start;
    }
    0
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Check the header block of a segment named with `generation`.
pub fn check_segment_header(data: &[u8], generation: u64) -> Result<(), HeaderProblem> {
    let Some(block) = data.get(..ALIGN) else {
        return Err(HeaderProblem::Incomplete);
    };
    if block.iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Incomplete);
    }
    if block[0..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::Invalid(format!(
            "bad magic {:02x?} (not a ringkv commit log segment)",
            &block[0..8]
        )));
    }
    let version = le_u32(block, 8).unwrap_or(0);
    let stored_crc = le_u32(block, 24).unwrap_or(0);
    if stored_crc != crc32c::crc32c(&block[0..24]) {
        return Err(HeaderProblem::Invalid("header checksum mismatch".into()));
    }
    if version != FORMAT_VERSION {
        return Err(HeaderProblem::Invalid(format!(
            "unsupported format version {version} (this build reads {FORMAT_VERSION})"
        )));
    }
    let block_size = le_u32(block, 12).unwrap_or(0);
    if block_size as usize != ALIGN {
        return Err(HeaderProblem::Invalid(format!(
            "block size {block_size}, expected {ALIGN}"
        )));
    }
    let stored_generation = le_u64(block, 16).unwrap_or(0);
    if stored_generation != generation {
        return Err(HeaderProblem::Invalid(format!(
            "header generation {stored_generation} does not match file name generation {generation}"
        )));
    }
    Ok(())
}

/// A valid batch header at `at`: (count, sequence, records length).
fn batch_header_at(data: &[u8], at: usize, generation: u64) -> Result<(u32, u64, usize), String> {
    let Some(header) = at
        .checked_add(BATCH_HEADER_BYTES)
        .and_then(|end| data.get(at..end))
    else {
        return Err("truncated batch header".into());
    };
    if le_u32(header, 0) != Some(BATCH_MAGIC) {
        return Err("bad batch magic".into());
    }
    if le_u32(header, 20) != Some(batch_header_crc(generation, &header[0..20])) {
        return Err("batch header checksum mismatch".into());
    }
    let count = le_u32(header, 4).unwrap_or(0);
    let sequence = le_u64(header, 8).unwrap_or(0);
    let records_len = le_u32(header, 16).unwrap_or(0) as usize;
    if count == 0 {
        return Err("batch with zero records".into());
    }
    Ok((count, sequence, records_len))
}

/// Scan the records of a segment whose header [`check_segment_header`] accepted.
/// Never panics; stops at the first byte that is not a whole valid record or padding.
pub fn scan_segment(data: &[u8], generation: u64) -> SegmentScan {
    let mut records = Vec::new();
    let mut pos = ALIGN;
    let mut sequence = 0u64;
    let mut batches = 0u64;
    // Computed once: the zero tail of a preallocated segment can be most of the file, so
    // "is the rest zero?" must not be asked afresh at every batch.
    let data_end = nonzero_data_end(data);
    let damage = loop {
        if pos >= data.len() || pos >= data_end {
            // Clean end: zeros (or nothing) after the last batch. A batch that was torn
            // before any of its bytes reached the disk leaves exactly this, and was never
            // acknowledged.
            break None;
        }
        let mut damage = Damage {
            offset: pos as u64,
            reason: String::new(),
            batch_start: pos as u64,
            batch_sequence: sequence,
            salvaged_records: 0,
            salvaged_end: (pos + BATCH_HEADER_BYTES) as u64,
            later_valid_batch: None,
        };
        let (count, found_sequence, records_len) = match batch_header_at(data, pos, generation) {
            Ok(h) => h,
            Err(reason) => {
                damage.reason = reason;
                break Some(damage);
            }
        };
        if found_sequence != sequence {
            damage.reason = format!("batch sequence {found_sequence}, expected {sequence}");
            break Some(damage);
        }
        let batch_end = pos + BATCH_HEADER_BYTES + records_len;
        let mut at = pos + BATCH_HEADER_BYTES;
        let mut valid = 0u32;
        let mut failure = None;
        while valid < count {
            let Some(len) = le_u32(data, at) else {
                failure = Some("truncated record header");
                break;
            };
            let len = len as usize;
            let frame_end = at + RECORD_HEADER_BYTES + len;
            if len > MAX_RECORD_BYTES || frame_end > batch_end {
                failure = Some("record length overruns its batch");
                break;
            }
            let Some(payload) = data.get(at + RECORD_HEADER_BYTES..frame_end) else {
                failure = Some("truncated record");
                break;
            };
            if le_u32(data, at + 4) != Some(record_crc(generation, &data[at..at + 4], payload)) {
                failure = Some("record checksum mismatch");
                break;
            }
            records.push(at + RECORD_HEADER_BYTES..frame_end);
            valid += 1;
            at = frame_end;
        }
        if failure.is_none() && at != batch_end {
            failure = Some("batch length does not match its records");
        }
        if let Some(reason) = failure {
            damage.offset = at as u64;
            damage.reason = reason.into();
            damage.salvaged_records = valid;
            damage.salvaged_end = at as u64;
            break Some(damage);
        }
        batches += 1;
        sequence += 1;
        pos = align_up(batch_end);
    };
    let damage = damage.map(|mut d| {
        d.later_valid_batch = find_later_batch(data, generation, &d);
        d
    });
    let valid_end = match &damage {
        Some(d) => d.batch_start,
        None => pos.min(align_up(data.len())) as u64,
    };
    SegmentScan {
        records,
        batches,
        valid_end: valid_end.max(SEGMENT_HEADER_BYTES),
        data_end: data_end as u64,
        damage,
    }
}

/// Look for a valid batch header with a higher sequence at a block boundary after the
/// damaged batch. Batches start only at block boundaries, so this is a full search; it
/// stops at the zero tail (a zero block holds no batch header).
fn find_later_batch(data: &[u8], generation: u64, damage: &Damage) -> Option<u64> {
    let first = usize::try_from(damage.batch_start).ok()? + ALIGN;
    let end = nonzero_data_end(data);
    (first..end)
        .step_by(ALIGN)
        .find_map(|at| match batch_header_at(data, at, generation) {
            Ok((_, sequence, _)) if sequence > damage.batch_sequence => Some(at as u64),
            _ => None,
        })
}

/// True if `damage` is a hole: its batch's first block is all zeros (that write never
/// reached the disk) and a valid batch of a later sequence follows. Every batch write
/// begins with its header block, so a zero one means the write was never persisted (or
/// only its later blocks were); non-zero damage never qualifies. A synced block that
/// the device later returns as zeros would look the same: that is not told apart.
pub fn is_hole(data: &[u8], damage: &Damage) -> bool {
    let Ok(start) = usize::try_from(damage.batch_start) else {
        return false;
    };
    damage.later_valid_batch.is_some()
        && damage.offset == damage.batch_start
        && data
            .get(start..start.saturating_add(ALIGN))
            .is_some_and(|block| block.len() == ALIGN && block.iter().all(|&b| b == 0))
}

/// Valid batch headers with a sequence above the damaged batch's, at block boundaries
/// after it: what discarding everything from the damage on throws away.
pub fn count_later_batches(data: &[u8], generation: u64, damage: &Damage) -> u64 {
    let Ok(first) = usize::try_from(damage.batch_start) else {
        return 0;
    };
    let end = nonzero_data_end(data);
    (first.saturating_add(ALIGN)..end)
        .step_by(ALIGN)
        .filter(|&at| {
            matches!(batch_header_at(data, at, generation),
                Ok((_, sequence, _)) if sequence > damage.batch_sequence)
        })
        .count() as u64
}

/// The bytes that make the damaged batch in `data` end cleanly after its salvaged
/// records: its header rewritten for `salvaged_records`, the frames, zero padding.
/// `None` if nothing of the batch is salvaged (truncate at `batch_start` instead).
pub fn repaired_batch(data: &[u8], generation: u64, damage: &Damage) -> Option<Vec<u8>> {
    if damage.salvaged_records == 0 {
        return None;
    }
    let start = usize::try_from(damage.batch_start).ok()?;
    let end = usize::try_from(damage.salvaged_end).ok()?;
    let mut buf = data.get(start..end)?.to_vec();
    let records_len = u32::try_from(end - start - BATCH_HEADER_BYTES).ok()?;
    buf[4..8].copy_from_slice(&damage.salvaged_records.to_le_bytes());
    buf[16..20].copy_from_slice(&records_len.to_le_bytes());
    let crc = batch_header_crc(generation, &buf[0..20]);
    buf[20..24].copy_from_slice(&crc.to_le_bytes());
    buf.resize(align_up(buf.len()), 0);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(generation: u64, batches: &[&[&[u8]]]) -> Vec<u8> {
        let mut data = encode_segment_header(generation);
        for (seq, batch) in batches.iter().enumerate() {
            let mut b = BatchBuilder::new(generation, seq as u64, Vec::new());
            for r in *batch {
                b.push(r);
            }
            data.extend(b.finish());
        }
        data
    }

    fn payloads(data: &[u8], scan: &SegmentScan) -> Vec<Vec<u8>> {
        scan.records
            .iter()
            .map(|r| data[r.clone()].to_vec())
            .collect()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(7), "commitlog-00000000000000000007.log");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("commitlog-7.log"), None);
        assert_eq!(parse_segment_file_name("manifest"), None);
    }

    #[test]
    fn encode_then_scan_round_trips() {
        let data = segment(3, &[&[b"a", b"", b"ccc"], &[&[9u8; 5000]]]);
        assert_eq!(data.len() % ALIGN, 0);
        check_segment_header(&data, 3).unwrap();
        let scan = scan_segment(&data, 3);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.batches, 2);
        assert_eq!(scan.valid_end, data.len() as u64);
        assert_eq!(
            payloads(&data, &scan),
            vec![b"a".to_vec(), vec![], b"ccc".to_vec(), vec![9u8; 5000]]
        );
    }

    #[test]
    fn other_generation_never_validates() {
        let data = segment(3, &[&[b"a"]]);
        assert!(matches!(
            check_segment_header(&data, 4),
            Err(HeaderProblem::Invalid(_))
        ));
        let scan = scan_segment(&data, 4);
        assert!(scan.records.is_empty());
        assert_eq!(scan.damage.unwrap().offset, ALIGN as u64);
    }

    #[test]
    fn header_problems() {
        assert_eq!(check_segment_header(&[], 0), Err(HeaderProblem::Incomplete));
        assert_eq!(
            check_segment_header(&[0; ALIGN], 0),
            Err(HeaderProblem::Incomplete)
        );
        let mut data = encode_segment_header(0);
        data[0] = b'X';
        assert!(
            matches!(check_segment_header(&data, 0), Err(HeaderProblem::Invalid(r)) if r.contains("magic"))
        );
    }

    #[test]
    fn damage_in_last_batch_is_a_tail_and_repair_keeps_whole_records() {
        let mut data = segment(1, &[&[b"one"], &[b"two", b"three"]]);
        let second = 2 * ALIGN;
        // Corrupt "three": the scan keeps "one" and "two".
        let three_at = second + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 3;
        data[three_at + RECORD_HEADER_BYTES] ^= 1;
        let scan = scan_segment(&data, 1);
        assert_eq!(
            payloads(&data, &scan),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        let d = scan.damage.clone().unwrap();
        assert_eq!(d.offset, three_at as u64);
        assert_eq!(d.later_valid_batch, None);
        let fixed = repaired_batch(&data, 1, &d).unwrap();
        let mut repaired = data[..second].to_vec();
        repaired.extend(fixed);
        let rescan = scan_segment(&repaired, 1);
        assert_eq!(rescan.damage, None);
        assert_eq!(
            payloads(&repaired, &rescan),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
    }

    #[test]
    fn damage_before_a_valid_batch_is_detected() {
        let mut data = segment(1, &[&[b"one"], &[b"two"], &[b"three"]]);
        data[2 * ALIGN + 30] ^= 0x80;
        let scan = scan_segment(&data, 1);
        assert_eq!(payloads(&data, &scan), vec![b"one".to_vec()]);
        assert_eq!(
            scan.damage.unwrap().later_valid_batch,
            Some(3 * ALIGN as u64)
        );
    }

    /// `data` followed by zeros up to `size` bytes: a preallocated segment.
    fn preallocated(mut data: Vec<u8>, size: usize) -> Vec<u8> {
        assert!(data.len() <= size);
        data.resize(size, 0);
        data
    }

    #[test]
    fn zero_tail_of_a_preallocated_segment_is_the_end_of_the_log() {
        let data = segment(4, &[&[b"a"], &[&[3u8; 5000]]]);
        let end = data.len();
        let full = preallocated(data, 64 * ALIGN);
        assert_eq!(nonzero_data_end(&full), end);
        let scan = scan_segment(&full, 4);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.valid_end, end as u64);
        assert_eq!(scan.data_end, end as u64);
        assert_eq!(payloads(&full, &scan), vec![b"a".to_vec(), vec![3u8; 5000]]);
        // Only the header: an empty log.
        let empty = preallocated(encode_segment_header(4), 8 * ALIGN);
        let scan = scan_segment(&empty, 4);
        assert_eq!((scan.records.len(), scan.damage), (0, None));
    }

    #[test]
    fn torn_batch_followed_by_zeros_is_a_torn_tail_at_every_cut() {
        let good = segment(4, &[&[b"one"], &[b"two"]]);
        let last = segment(4, &[&[b"one"], &[b"two"], &[b"three", &[5u8; 4200]]]);
        let start = good.len();
        let frames_end = start + BATCH_HEADER_BYTES + 2 * RECORD_HEADER_BYTES + 5 + 4200;
        for cut in start..=last.len() {
            let full = preallocated(last[..cut].to_vec(), 16 * ALIGN);
            let scan = scan_segment(&full, 4);
            let got = payloads(&full, &scan);
            assert!(got.len() >= 2, "cut {cut}: acknowledged batches kept");
            match &scan.damage {
                None => assert!(
                    cut == start || cut >= frames_end,
                    "cut {cut}: a partial batch must be reported"
                ),
                Some(d) => {
                    assert!(cut > start && cut < frames_end, "cut {cut}: {d:?}");
                    assert_eq!(d.batch_start, start as u64, "cut {cut}");
                    assert_eq!(d.later_valid_batch, None, "cut {cut}: zeros follow");
                    assert_eq!(scan.data_end, align_up(cut) as u64, "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn damage_before_a_valid_batch_in_a_preallocated_segment_is_mid_log() {
        let mut data = preallocated(segment(4, &[&[b"one"], &[b"two"], &[b"three"]]), 32 * ALIGN);
        data[2 * ALIGN + 2] ^= 0x40;
        let scan = scan_segment(&data, 4);
        let d = scan.damage.unwrap();
        assert_eq!(d.batch_start, 2 * ALIGN as u64);
        assert_eq!(d.later_valid_batch, Some(3 * ALIGN as u64));
    }

    /// A recycled segment: a file that held generation 1 gets the header of generation 9
    /// and new batches over the start of the old ones. The old records never validate
    /// (the generation is inside every CRC), so they are never replayed, wherever the
    /// new log ends; nor do they count as "a valid batch after the damage".
    #[test]
    fn stale_records_of_a_recycled_segment_never_replay() {
        let old_batches: Vec<Vec<u8>> = (0..12u8)
            .map(|i| vec![i + 1; 100 + 700 * i as usize])
            .collect();
        let old_refs: Vec<[&[u8]; 1]> = old_batches.iter().map(|b| [b.as_slice()]).collect();
        let old_refs: Vec<&[&[u8]]> = old_refs.iter().map(|r| r.as_slice()).collect();
        let old = segment(1, &old_refs);
        for new_count in 0..4usize {
            let news: Vec<Vec<u8>> = (0..new_count).map(|i| vec![0xe0 + i as u8; 30]).collect();
            let new_refs: Vec<[&[u8]; 1]> = news.iter().map(|b| [b.as_slice()]).collect();
            let new_refs: Vec<&[&[u8]]> = new_refs.iter().map(|r| r.as_slice()).collect();
            let new = segment(9, &new_refs);
            let mut recycled = old.clone();
            recycled[..new.len()].copy_from_slice(&new);
            check_segment_header(&recycled, 9).unwrap();
            let scan = scan_segment(&recycled, 9);
            assert_eq!(payloads(&recycled, &scan), news, "{new_count} new batches");
            let d = scan
                .damage
                .expect("stale bytes after the new log are not zeros");
            assert_eq!(d.batch_start, new.len() as u64);
            assert_eq!(d.later_valid_batch, None, "stale batches never validate");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn scanning_random_bytes_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..3 * ALIGN),
            valid_header in any::<bool>(),
        ) {
            let mut data = if valid_header { encode_segment_header(5) } else { Vec::new() };
            data.extend(body);
            let _ = check_segment_header(&data, 5);
            let scan = scan_segment(&data, 5);
            for r in &scan.records {
                prop_assert!(r.end <= data.len());
            }
            if let Some(d) = &scan.damage {
                let _ = repaired_batch(&data, 5, d);
            }
        }

        #[test]
        fn scanning_mutated_segments_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut data = segment(2, &[&[b"alpha", b"beta"], &[&[7u8; 4100]], &[b"gamma"]]);
            for (at, x) in flips {
                let n = data.len();
                data[at % n] ^= x;
            }
            data.truncate(cut % (data.len() + 1));
            let _ = check_segment_header(&data, 2);
            let scan = scan_segment(&data, 2);
            for r in &scan.records {
                prop_assert!(r.end <= data.len());
            }
            if let Some(d) = &scan.damage {
                let _ = repaired_batch(&data, 2, d);
            }
        }
    }
}

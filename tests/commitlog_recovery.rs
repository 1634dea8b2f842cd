//! Commit log recovery under torn writes, bit flips, failed syncs and power loss, plus
//! group commit, the glommio disk, and format fixtures (docs/design.md §5.5, §4.10).
#![allow(clippy::unwrap_used)]

mod common;

use common::join_all;

use futures_lite::future::block_on;
use proptest::prelude::*;
use ringkv::storage::commitlog::{
    segment_file_name, CommitLog, CommitLogConfig, CommitLogError, Recovery, RecoveryPolicy,
    SegmentId, SyncMode,
};
use ringkv::storage::disk::ALIGN;
use ringkv::storage::mem_disk::{Fault, MemDisk, OpKind};

const BATCH_HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 8;

fn periodic() -> CommitLogConfig {
    CommitLogConfig {
        // Small: every open preallocates a fresh segment, and some tests open thousands.
        segment_size_bytes: 64 << 10,
        sync: SyncMode::Periodic { period_ms: 10 },
    }
}

fn try_open(
    disk: &MemDisk,
    cfg: CommitLogConfig,
) -> Result<(CommitLog<MemDisk>, Recovery), CommitLogError> {
    block_on(CommitLog::open(
        disk.clone(),
        cfg,
        RecoveryPolicy::TolerateCorruptTail,
    ))
}

fn early_records() -> Vec<Vec<u8>> {
    (0..5u8).map(|i| vec![i; 10 + 700 * i as usize]).collect()
}

/// The records of the last batch: sizes chosen so frames straddle block boundaries.
fn tail_records() -> Vec<Vec<u8>> {
    vec![
        vec![0xa1; 1],
        vec![0xb2; 100],
        vec![0xc3; 4000],
        vec![0xd4; 2500],
    ]
}

/// Offsets (relative to the batch start) where each tail record's frame ends.
fn tail_frame_ends() -> Vec<usize> {
    let mut end = BATCH_HEADER_BYTES;
    tail_records()
        .iter()
        .map(|r| {
            end += RECORD_HEADER_BYTES + r.len();
            end
        })
        .collect()
}

/// Append `records` concurrently, so that they share one group commit: one batch.
fn append_as_one_batch(log: &CommitLog<MemDisk>, records: &[Vec<u8>]) {
    let batches = log.stats().batches_written;
    for r in block_on(join_all(records.iter().map(|r| log.append(r)).collect())) {
        r.unwrap();
    }
    assert_eq!(log.stats().batches_written, batches + 1, "one batch");
}

/// A periodic-mode log of five synced batches, then one batch of `tail_records` written
/// (acknowledged) but not yet synced, as between two periodic syncs: power loss may
/// keep any prefix of it. Returns the disk (not yet power-lost).
fn log_with_unsynced_tail() -> MemDisk {
    let disk = MemDisk::new();
    let (log, _) = try_open(&disk, periodic()).unwrap();
    block_on(async {
        for r in early_records() {
            log.append(&r).await.unwrap();
            log.sync().await.unwrap();
        }
    });
    append_as_one_batch(&log, &tail_records());
    disk
}

/// `bytes` without its zero tail: up to the end of the last block holding a non-zero
/// byte. Segments are preallocated with zeros; the zero tail is not part of the log.
fn trim_zero_tail(bytes: &[u8]) -> Vec<u8> {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| (last + 1).div_ceil(ALIGN) * ALIGN);
    bytes[..end.min(bytes.len())].to_vec()
}

/// Expected recovery when the tail batch (at `batch_start`) is cut after `kept` bytes.
fn expected_after_cut(kept: usize) -> (Vec<Vec<u8>>, Option<(usize, usize)>) {
    let ends = tail_frame_ends();
    let whole = ends.iter().filter(|&&e| e <= kept).count();
    let mut records = early_records();
    records.extend(tail_records().into_iter().take(whole));
    let frames_end = *ends.last().unwrap();
    if kept == 0 || kept >= frames_end {
        return (records, None);
    }
    let offset = if kept < BATCH_HEADER_BYTES {
        0
    } else if whole == 0 {
        BATCH_HEADER_BYTES
    } else {
        ends[whole - 1]
    };
    (records, Some((offset, kept - offset)))
}

#[test]
fn torn_tail_at_every_byte_keeps_whole_records_and_reports_the_tail() {
    let probe = log_with_unsynced_tail();
    let write = probe.last_unsynced_write().unwrap();
    assert_eq!(write.file, segment_file_name(0));
    let batch_start = write.offset as usize;
    let frames_end = *tail_frame_ends().last().unwrap();
    assert!(write.len >= frames_end);
    for keep in 0..=frames_end + 1 {
        let disk = log_with_unsynced_tail();
        let torn = disk.power_loss_tearing(keep).unwrap();
        assert_eq!(torn.offset as usize, batch_start);
        let on_disk = disk.durable_file_bytes(&segment_file_name(0)).unwrap();
        assert_eq!(
            on_disk.len(),
            periodic().segment_size_bytes as usize,
            "the segment was preallocated, the torn write did not extend it"
        );
        let data_end = trim_zero_tail(&on_disk).len();
        let (_log, rec) = try_open(&disk, periodic())
            .unwrap_or_else(|e| panic!("keep {keep}: recovery failed: {e}"));
        let (expected, tail) = expected_after_cut(keep);
        assert_eq!(rec.records, expected, "keep {keep}");
        match (tail, &rec.torn_tail) {
            (None, None) => {}
            (Some((offset, dropped)), Some(t)) => {
                assert!(
                    t.file.ends_with(&segment_file_name(0)),
                    "keep {keep}: {t:?}"
                );
                assert_eq!(
                    t.offset as usize,
                    batch_start + offset,
                    "keep {keep}: {t:?}"
                );
                // What was dropped: the kept bytes, to the end of their last block (the
                // preallocated zeros after them are not counted).
                assert!(dropped <= t.bytes_dropped as usize, "keep {keep}: {t:?}");
                assert_eq!(
                    t.bytes_dropped as usize,
                    data_end - batch_start - offset,
                    "keep {keep}: {t:?}"
                );
                assert_eq!(data_end, (batch_start + keep).div_ceil(ALIGN) * ALIGN);
            }
            (want, got) => panic!("keep {keep}: torn tail {got:?}, expected {want:?}"),
        }
        // The repair is durable: the damaged segment is no longer the newest, and a
        // second recovery sees it clean.
        drop(_log);
        disk.power_loss();
        let (_, again) = try_open(&disk, periodic()).unwrap();
        assert_eq!(again.records, expected, "keep {keep}, second recovery");
        assert_eq!(again.torn_tail, None, "keep {keep}, second recovery");
    }
}

/// Segment 0 bytes of a log whose tail batch was synced.
fn synced_segment() -> (Vec<u8>, usize) {
    let disk = MemDisk::new();
    let (log, _) = try_open(&disk, periodic()).unwrap();
    block_on(async {
        for r in early_records() {
            log.append(&r).await.unwrap();
            log.sync().await.unwrap();
        }
    });
    append_as_one_batch(&log, &tail_records());
    block_on(log.sync()).unwrap();
    let full = disk.durable_file_bytes(&segment_file_name(0)).unwrap();
    assert_eq!(full.len(), periodic().segment_size_bytes as usize);
    let bytes = trim_zero_tail(&full);
    let tail_batch_len = (BATCH_HEADER_BYTES + *tail_frame_ends().last().unwrap()).div_ceil(ALIGN);
    let batch_start = bytes.len() - tail_batch_len * ALIGN;
    (bytes, batch_start)
}

#[test]
fn bit_flip_in_tail_batch_keeps_records_before_it() {
    let (bytes, batch_start) = synced_segment();
    let frames_end = *tail_frame_ends().last().unwrap();
    let name = segment_file_name(0);
    for at in 0..frames_end {
        let mut damaged = bytes.clone();
        damaged[batch_start + at] ^= 1 << (at % 8);
        let disk = MemDisk::new();
        disk.put_file(&name, &damaged);
        let (_, rec) = try_open(&disk, periodic()).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        // A flip inside frame k drops frames k.. ; a flip in the header drops the batch.
        let ends = tail_frame_ends();
        let whole = if at < BATCH_HEADER_BYTES {
            0
        } else {
            ends.iter().filter(|&&e| e <= at).count()
        };
        let mut expected = early_records();
        expected.extend(tail_records().into_iter().take(whole));
        assert_eq!(rec.records, expected, "flip at {at}");
        let t = rec.torn_tail.unwrap();
        let offset = match whole {
            0 if at < BATCH_HEADER_BYTES => 0,
            0 => BATCH_HEADER_BYTES,
            w => ends[w - 1],
        };
        assert_eq!(t.offset as usize, batch_start + offset, "flip at {at}");
        assert_eq!(t.bytes_dropped as usize, bytes.len() - batch_start - offset);
    }
    // Flips in the padding after the last record change nothing.
    let mut padded = bytes.clone();
    let last = padded.len() - 1;
    padded[last] ^= 0xff;
    let disk = MemDisk::new();
    disk.put_file(&name, &padded);
    let (_, rec) = try_open(&disk, periodic()).unwrap();
    assert_eq!(
        rec.records.len(),
        early_records().len() + tail_records().len()
    );
    assert_eq!(rec.torn_tail, None);
}

#[test]
fn corruption_before_a_valid_record_is_an_error_naming_file_and_offset() {
    let (bytes, tail_batch_start) = synced_segment();
    let name = segment_file_name(0);
    // The second batch (record 1) starts at block 2; damage its payload.
    let second_batch = 2 * ALIGN;
    let at = second_batch + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 3;
    let mut damaged = bytes.clone();
    damaged[at] ^= 0x10;
    let disk = MemDisk::new();
    disk.put_file(&name, &damaged);
    match try_open(&disk, periodic()) {
        Err(CommitLogError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert!(file.ends_with(&name), "{file}");
            assert_eq!(offset as usize, second_batch + BATCH_HEADER_BYTES);
            assert!(reason.contains("valid batch follows"), "{reason}");
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, r)| r.torn_tail)
        ),
    }

    // Damage at the end of a segment that is not the newest is an error too.
    let disk = MemDisk::new();
    let mut cut = bytes.clone();
    cut.truncate(tail_batch_start + 100);
    disk.put_file(&name, &cut);
    disk.put_file(&segment_file_name(1), &bytes_of_empty_segment(1));
    match try_open(&disk, periodic()) {
        Err(CommitLogError::Corrupt { file, reason, .. }) => {
            assert!(file.ends_with(&name), "{file}");
            assert!(reason.contains("newer segment"), "{reason}");
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, r)| r.torn_tail)
        ),
    }

    // The strict policy refuses even a torn tail.
    let disk = MemDisk::new();
    disk.put_file(&name, &cut);
    let strict = block_on(CommitLog::open(
        disk.clone(),
        periodic(),
        RecoveryPolicy::Strict,
    ));
    assert!(matches!(strict, Err(CommitLogError::Corrupt { .. })));
}

fn bytes_of_empty_segment(generation: u64) -> Vec<u8> {
    // Segment `generation` right after a roll: a header and nothing else.
    let disk = MemDisk::new();
    let (log, _) = try_open(&disk, periodic()).unwrap();
    block_on(async {
        for _ in 0..generation {
            log.append(b"r").await.unwrap();
            log.roll().await.unwrap();
        }
    });
    assert_eq!(log.current_segment(), SegmentId(generation));
    disk.durable_file_bytes(&segment_file_name(generation))
        .unwrap()
}

#[test]
fn failed_write_fails_covered_appends_and_all_later_ones() {
    let disk = MemDisk::new();
    disk.set_yield_on_io(true);
    let (log, _) = try_open(&disk, CommitLogConfig::default()).unwrap();
    block_on(log.append(b"before")).unwrap();
    disk.fail_nth_of(OpKind::Write, 1, Fault::Eio);
    let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 50]).collect();
    let results = block_on(join_all(payloads.iter().map(|p| log.append(p)).collect()));
    // The eight appends are runnable together, so one flush covers them all (the
    // leader yields once before taking the queue): every one gets the EIO.
    for r in &results {
        match r {
            Err(CommitLogError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO))
            }
            other => panic!("expected a covered append to get EIO, got {other:?}"),
        }
    }
    assert!(log.is_failed());
    assert!(matches!(
        block_on(log.append(b"after")),
        Err(CommitLogError::Failed { .. })
    ));
    assert!(matches!(
        block_on(log.sync()),
        Err(CommitLogError::Failed { .. })
    ));
    drop(log);
    disk.power_loss();
    let (_, rec) = try_open(&disk, CommitLogConfig::default()).unwrap();
    assert_eq!(rec.records, vec![b"before".to_vec()]);
}

#[test]
fn failed_write_of_a_later_group_fails_every_append_in_it() {
    let disk = MemDisk::new();
    disk.set_yield_on_io(true);
    let (log, _) = try_open(&disk, CommitLogConfig::default()).unwrap();
    // The first flush (one record alone) succeeds, the second (sixteen appends
    // runnable together, one group, one write) fails.
    disk.fail_nth_of(OpKind::Write, 2, Fault::Enospc);
    block_on(log.append(b"alone")).unwrap();
    let payloads: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 10]).collect();
    let results = block_on(join_all(payloads.iter().map(|p| log.append(p)).collect()));
    for r in &results {
        match r {
            Err(CommitLogError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
            }
            other => panic!("expected ENOSPC for a covered append, got {other:?}"),
        }
    }
    assert!(matches!(
        block_on(log.append(b"x")),
        Err(CommitLogError::Failed { .. })
    ));
}

#[test]
fn failed_write_fails_the_log() {
    let disk = MemDisk::new();
    let (log, _) = try_open(&disk, CommitLogConfig::default()).unwrap();
    disk.fail_nth_of(OpKind::Write, 1, Fault::Enospc);
    assert!(matches!(
        block_on(log.append(b"a")),
        Err(CommitLogError::Io { op: "write", .. })
    ));
    assert!(matches!(
        block_on(log.append(b"b")),
        Err(CommitLogError::Failed { .. })
    ));
}

#[test]
fn group_commit_shares_durable_writes_between_concurrent_appends() {
    let disk = MemDisk::new();
    disk.set_yield_on_io(true);
    let (log, _) = try_open(&disk, CommitLogConfig::default()).unwrap();
    let before = disk.counters();
    let payloads: Vec<Vec<u8>> = (0..64u32)
        .map(|i| i.to_le_bytes().repeat(i as usize % 7 + 1))
        .collect();
    let results = block_on(join_all(payloads.iter().map(|p| log.append(p)).collect()));
    assert!(results.iter().all(Result::is_ok));
    let after = disk.counters();
    let writes = after.writes - before.writes;
    assert_eq!(log.stats().appends, 64);
    assert!(writes <= 2, "64 concurrent appends took {writes} writes");
    assert_eq!(log.stats().group_commits, writes);
    assert_eq!(after.syncs, before.syncs, "write-through: no fdatasync");
    drop(log);
    disk.power_loss();
    let (_, rec) = try_open(&disk, CommitLogConfig::default()).unwrap();
    assert_eq!(rec.records, payloads);
}

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 4000..9000),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Power fails at a random operation (optionally tearing the last write): after
    /// reopening, the records are a prefix of what was issued that contains every
    /// acknowledged append.
    #[test]
    fn acknowledged_appends_survive_power_loss(
        groups in proptest::collection::vec(proptest::collection::vec(payload_strategy(), 1..8), 1..6),
        halt_after in 0u64..80,
        tear in proptest::option::of(0usize..20_000),
        segment_blocks in 3u64..8,
    ) {
        let cfg = CommitLogConfig {
            segment_size_bytes: segment_blocks * ALIGN as u64,
            sync: SyncMode::Batch,
        };
        let disk = MemDisk::new();
        disk.set_yield_on_io(true);
        let (log, _) = try_open(&disk, cfg).unwrap();
        disk.halt_after(halt_after);
        let mut issued: Vec<Vec<u8>> = Vec::new();
        let mut acked: Vec<usize> = Vec::new();
        for group in &groups {
            let results = block_on(join_all(group.iter().map(|p| log.append(p)).collect()));
            for (p, r) in group.iter().zip(results) {
                if r.is_ok() {
                    acked.push(issued.len());
                }
                issued.push(p.clone());
            }
        }
        drop(log);
        match tear {
            Some(keep) => { disk.power_loss_tearing(keep); }
            None => disk.power_loss(),
        }
        let (log, rec) = try_open(&disk, cfg).unwrap();
        let n = rec.records.len();
        prop_assert!(n <= issued.len());
        prop_assert_eq!(&rec.records[..], &issued[..n]);
        for &i in &acked {
            prop_assert!(i < n, "acknowledged append {} lost ({} recovered)", i, n);
        }
        // The recovered log takes appends and a further reopen sees old + new.
        block_on(log.append(b"after recovery")).unwrap();
        drop(log);
        disk.power_loss();
        let (_, again) = try_open(&disk, cfg).unwrap();
        prop_assert_eq!(again.records.len(), n + 1);
        prop_assert_eq!(&again.records[..n], &rec.records[..]);
        prop_assert_eq!(again.torn_tail, None);
    }
}

/// Power fails at every operation in turn (tearing the last write at a few cut
/// points) while appends fill and roll small preallocated segments: recovery always
/// succeeds, keeps every acknowledged append, replays a prefix of what was issued, and
/// a second recovery after appending again is clean.
#[test]
fn preallocated_segments_recover_at_every_operation_and_cut() {
    let cfg = CommitLogConfig {
        segment_size_bytes: 4 * ALIGN as u64,
        sync: SyncMode::Batch,
    };
    let payloads: Vec<Vec<u8>> = (0..9u8)
        .map(|i| vec![i + 1; 50 + 900 * i as usize])
        .collect();
    let run = |halt: u64, tear: Option<usize>| -> (usize, Vec<usize>, MemDisk) {
        let disk = MemDisk::new();
        let (log, _) = try_open(&disk, cfg).unwrap();
        disk.halt_after(halt);
        let mut acked = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            if block_on(log.append(p)).is_ok() {
                acked.push(i);
            }
        }
        drop(log);
        let ops = disk.counters().total();
        match tear {
            Some(keep) => {
                disk.power_loss_tearing(keep);
            }
            None => disk.power_loss(),
        }
        (ops as usize, acked, disk)
    };
    let (total_ops, all_acked, _) = run(u64::MAX, None);
    assert_eq!(all_acked.len(), payloads.len());
    for halt in 0..total_ops as u64 {
        for tear in [None, Some(0), Some(30), Some(ALIGN), Some(ALIGN + 7)] {
            let (_, acked, disk) = run(halt, tear);
            let (log, rec) = try_open(&disk, cfg)
                .unwrap_or_else(|e| panic!("halt {halt} tear {tear:?}: recovery failed: {e}"));
            let n = rec.records.len();
            assert_eq!(rec.records[..], payloads[..n], "halt {halt} tear {tear:?}");
            if let Some(&last) = acked.last() {
                assert!(last < n, "halt {halt} tear {tear:?}: acked {last} lost");
            }
            block_on(log.append(b"after")).unwrap();
            drop(log);
            disk.power_loss();
            let (_, again) = try_open(&disk, cfg).unwrap();
            assert_eq!(again.records.len(), n + 1, "halt {halt} tear {tear:?}");
            assert_eq!(again.torn_tail, None, "halt {halt} tear {tear:?}");
        }
    }
}

/// A segment file reused under a newer generation (as segment recycling would do:
/// new header, new batches over the start, the old generation's records after them)
/// never replays the old records, wherever the new ones end.
#[test]
fn recycled_segment_never_replays_stale_records() {
    let cfg = CommitLogConfig {
        segment_size_bytes: 16 * ALIGN as u64,
        sync: SyncMode::Batch,
    };
    // Generation 0, full of old records.
    let old_disk = MemDisk::new();
    let (log, _) = try_open(&old_disk, cfg).unwrap();
    let mut old_records = 0;
    block_on(async {
        while log.current_segment() == SegmentId(0) {
            log.append(&[0x0d; 700]).await.unwrap();
            old_records += 1;
        }
    });
    assert!(old_records > 10);
    let old = old_disk.durable_file_bytes(&segment_file_name(0)).unwrap();
    for new_records in 0..4usize {
        // Generation 3 with `new_records` records, laid over the old file.
        let disk = MemDisk::new();
        let (log, _) = try_open(&disk, cfg).unwrap();
        let news: Vec<Vec<u8>> = (0..new_records).map(|i| vec![0xa0 + i as u8; 40]).collect();
        block_on(async {
            for _ in 0..3 {
                log.append(b"r").await.unwrap();
                log.roll().await.unwrap();
            }
            for p in &news {
                log.append(p).await.unwrap();
            }
        });
        drop(log);
        let new = trim_zero_tail(&disk.durable_file_bytes(&segment_file_name(3)).unwrap());
        let mut recycled = old.clone();
        recycled[..new.len()].copy_from_slice(&new);
        let recycled_disk = MemDisk::new();
        recycled_disk.put_file(&segment_file_name(3), &recycled);
        let (_, rec) = try_open(&recycled_disk, cfg).unwrap();
        assert_eq!(rec.records, news, "{new_records} new records");
        // With this format the stale bytes look like a torn batch: reported, dropped.
        let t = rec.torn_tail.unwrap();
        assert_eq!(t.offset as usize, new.len());
        assert!(!rec.records.iter().any(|r| r == &[0x0d; 700]));
    }
}

#[test]
fn glommio_disk_write_and_reopen() {
    use ringkv::storage::glommio_disk::GlommioDisk;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("commitlog");
    glommio::LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move {
            let cfg = CommitLogConfig {
                segment_size_bytes: 8 * ALIGN as u64,
                sync: SyncMode::Batch,
            };
            let payloads: Vec<Vec<u8>> = (0..200u32)
                .map(|i| {
                    format!("record-{i}-")
                        .repeat(i as usize % 50 + 1)
                        .into_bytes()
                })
                .collect();
            {
                let disk = GlommioDisk::open(&dir).await.unwrap();
                let (log, rec) = CommitLog::open(disk, cfg, RecoveryPolicy::default())
                    .await
                    .unwrap();
                assert!(rec.records.is_empty());
                let results = join_all(payloads.iter().map(|p| log.append(p)).collect()).await;
                assert!(results.iter().all(Result::is_ok));
                assert!(
                    log.stats().group_commits < 200,
                    "group commit batched: {:?}",
                    log.stats()
                );
                assert!(
                    log.current_segment() > SegmentId(0),
                    "small segments rolled"
                );
            }
            let disk = GlommioDisk::open(&dir).await.unwrap();
            let (log, rec) = CommitLog::open(disk, cfg, RecoveryPolicy::default())
                .await
                .unwrap();
            assert_eq!(rec.records, payloads);
            assert_eq!(rec.torn_tail, None);
            let current = log.current_segment();
            assert!(log.release_before(current).await.unwrap() > 0);
            drop(log);
            let disk = GlommioDisk::open(&dir).await.unwrap();
            let (_, rec) = CommitLog::open(disk, cfg, RecoveryPolicy::default())
                .await
                .unwrap();
            assert!(rec.records.is_empty());
        });
}

// ---- fixtures ---------------------------------------------------------------------

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/commitlog");

fn fixture_records() -> Vec<Vec<u8>> {
    vec![
        b"alpha".to_vec(),
        b"beta".to_vec(),
        Vec::new(),
        b"gamma-".repeat(900),
    ]
}

/// The v1 fixture segment, built by today's writer: two batches.
fn build_v1_segment() -> Vec<u8> {
    let disk = MemDisk::new();
    let (log, _) = try_open(&disk, periodic()).unwrap();
    let records = fixture_records();
    append_as_one_batch(&log, &records[0..2]);
    append_as_one_batch(&log, &records[2..4]);
    block_on(log.sync()).unwrap();
    trim_zero_tail(&disk.durable_file_bytes(&segment_file_name(0)).unwrap())
}

fn with_header_field(segment: &[u8], at: usize, bytes: &[u8], fix_crc: bool) -> Vec<u8> {
    let mut s = segment.to_vec();
    s[at..at + bytes.len()].copy_from_slice(bytes);
    if fix_crc {
        let crc = crc32c::crc32c(&s[0..24]);
        s[24..28].copy_from_slice(&crc.to_le_bytes());
    }
    s
}

fn fixture_files() -> Vec<(&'static str, Vec<u8>)> {
    let good = build_v1_segment();
    vec![
        ("v1", good.clone()),
        (
            "bad_magic",
            with_header_field(&good, 0, b"NOTALOG\0", false),
        ),
        (
            "future_version",
            with_header_field(&good, 8, &2u32.to_le_bytes(), true),
        ),
    ]
}

fn read_fixture(case: &str) -> Vec<u8> {
    let path = format!("{FIXTURE_DIR}/{case}/{}", segment_file_name(0));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (RINGKV_REGEN_FIXTURES=1 writes it)"))
}

/// `RINGKV_REGEN_FIXTURES=1 cargo test --test commitlog_recovery fixtures` rewrites the
/// fixture files; do that only for a deliberate format change (with a version bump).
#[test]
fn fixtures_match_what_the_writer_produces() {
    if std::env::var_os("RINGKV_REGEN_FIXTURES").is_some() {
        for (case, bytes) in fixture_files() {
            let dir = format!("{FIXTURE_DIR}/{case}");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(format!("{dir}/{}", segment_file_name(0)), bytes).unwrap();
        }
    }
    for (case, bytes) in fixture_files() {
        assert!(
            read_fixture(case) == bytes,
            "format of fixture {case} changed"
        );
    }
}

#[test]
fn fixture_v1_is_read_back() {
    let disk = MemDisk::new();
    disk.put_file(&segment_file_name(0), &read_fixture("v1"));
    let (log, rec) = try_open(&disk, periodic()).unwrap();
    assert_eq!(rec.records, fixture_records());
    assert_eq!(rec.torn_tail, None);
    assert_eq!(rec.segments[0].records, 4);
    assert_eq!(log.current_segment(), SegmentId(1));
}

#[test]
fn fixtures_with_wrong_magic_or_future_version_are_refused_naming_the_file() {
    for (case, needle) in [("bad_magic", "magic"), ("future_version", "version 2")] {
        let disk = MemDisk::new();
        disk.put_file(&segment_file_name(0), &read_fixture(case));
        match try_open(&disk, periodic()) {
            Err(CommitLogError::BadSegment { file, reason }) => {
                assert!(file.ends_with(&segment_file_name(0)), "{case}: {file}");
                assert!(reason.contains(needle), "{case}: {reason}");
            }
            other => panic!(
                "{case}: expected BadSegment, got {:?}",
                other.map(|(_, r)| r.segments)
            ),
        }
    }
}

//! Hint log recovery (storage::hintlog): acknowledged hints and delivered markers survive
//! power loss, torn writes and bit flips are handled by the commit log's rules, segments
//! are released once delivered, ids continue after reopen; a model-based proptest; the
//! record codec on arbitrary bytes; and the glommio disk.
#![allow(clippy::unwrap_used)]

mod common;

use common::join_all;
use std::collections::{BTreeMap, BTreeSet};

use futures_lite::future::block_on;
use proptest::prelude::*;
use ringkv::storage::commitlog::{
    parse_segment_file_name, segment_file_name, CommitLog, CommitLogConfig, CommitLogError,
    RecoveryPolicy, SyncMode,
};
use ringkv::storage::disk::{Disk, ALIGN};
use ringkv::storage::hintlog::{
    HintDecodeError, HintLog, HintLogError, HintRecord, Recovered, StoredHint, MAX_DELIVERED_IDS,
};
use ringkv::storage::mem_disk::{Fault, MemDisk, OpKind};

/// Small segments: 7 one-block batches each, so tests roll and release often.
const SEGMENT_BYTES: u64 = 8 * ALIGN as u64;
const BATCH_HEADER_BYTES: u64 = 24;
const RECORD_HEADER_BYTES: u64 = 8;
/// Offset of the hint key inside an encoded hint record.
const HINT_KEY_OFFSET: u64 = 32;

fn try_open(
    disk: &MemDisk,
    policy: RecoveryPolicy,
) -> Result<(HintLog<MemDisk>, Recovered), HintLogError> {
    block_on(HintLog::open(disk.clone(), policy, SEGMENT_BYTES))
}

fn open(disk: &MemDisk) -> (HintLog<MemDisk>, Recovered) {
    try_open(disk, RecoveryPolicy::TolerateCorruptTail).unwrap()
}

fn hint(i: u64) -> (u64, u64, Vec<u8>, Vec<u8>) {
    let target = i % 3 + 1;
    let key = format!("key-{i}").into_bytes();
    let state = vec![(i % 251) as u8; 20 + (i as usize * 37) % 300];
    (target, 1_000 + i, key, state)
}

fn append(log: &HintLog<MemDisk>, i: u64) -> Result<u64, HintLogError> {
    let (target, created_ms, key, state) = hint(i);
    block_on(log.append(target, created_ms, &key, &state))
}

fn stored(id: u64, i: u64) -> StoredHint {
    let (target, created_ms, key, state) = hint(i);
    StoredHint {
        id,
        target,
        created_ms,
        key,
        state,
    }
}

fn ids(rec: &Recovered) -> Vec<u64> {
    rec.pending.iter().map(|h| h.id).collect()
}

fn segment_files(disk: &MemDisk) -> BTreeSet<u64> {
    block_on(disk.list())
        .unwrap()
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect()
}

#[test]
fn acknowledged_appends_survive_power_loss() {
    let disk = MemDisk::new();
    let (log, rec) = open(&disk);
    assert!(rec.pending.is_empty());
    let ids: Vec<u64> = (0..20).map(|i| append(&log, i).unwrap()).collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert!(log.stats().live_segments > 1, "small segments rolled");
    drop(log);
    disk.power_loss();
    let (log, rec) = open(&disk);
    let expected: Vec<StoredHint> = (0..20).map(|i| stored(i, i)).collect();
    assert_eq!(rec.pending, expected);
    assert_eq!(rec.torn_tail, None);
    assert_eq!(log.stats().pending_count, 20);
    log.invariants();
}

#[test]
fn acknowledged_markers_survive_power_loss_and_win_over_their_hints() {
    let disk = MemDisk::new();
    let (log, _) = open(&disk);
    for i in 0..10 {
        append(&log, i).unwrap();
    }
    block_on(log.mark_delivered(&[2, 5, 7])).unwrap();
    block_on(log.mark_delivered(&[5, 9, 1234])).unwrap(); // 5 again, 1234 unknown: ignored
    drop(log);
    disk.power_loss();
    // Before open: file handles take the setting when opened.
    disk.set_yield_on_io(true);
    let (log, rec) = open(&disk);
    assert_eq!(ids(&rec), vec![0, 1, 3, 4, 6, 8]);
    // Delivering the same ids again after recovery writes nothing.
    let writes = disk.counters().writes;
    block_on(log.mark_delivered(&[2, 5, 7, 9])).unwrap();
    assert_eq!(disk.counters().writes, writes);
    // A marker in the middle of a group-committed batch is as durable as the rest.
    let writes = disk.counters().writes;
    block_on(async {
        let a = log.append(1, 1, b"a", b"x");
        let d = log.mark_delivered(&[0, 3]);
        let b = log.append(1, 1, b"b", b"y");
        let (ra, rd, rb) = futures_lite::future::zip(a, futures_lite::future::zip(d, b))
            .await
            .flatten();
        assert_eq!((ra.unwrap(), rb.unwrap()), (10, 11));
        rd.unwrap();
    });
    assert!(
        disk.counters().writes - writes < 3,
        "the three shared durable writes (group commit)"
    );
    drop(log);
    disk.power_loss();
    let (_, rec) = open(&disk);
    assert_eq!(ids(&rec), vec![1, 4, 6, 8, 10, 11]);
}

trait Flatten3<A, B, C> {
    fn flatten(self) -> (A, B, C);
}

impl<A, B, C> Flatten3<A, B, C> for (A, (B, C)) {
    fn flatten(self) -> (A, B, C) {
        (self.0, self.1 .0, self.1 .1)
    }
}

/// Three acked hints, then a group of four concurrent appends that share one batch,
/// whose write-through write fails (cut in flight: any prefix of it may be on the
/// device). Returns the disk and the unacknowledged ids.
fn log_with_unacked_group() -> (MemDisk, Vec<u64>) {
    let disk = MemDisk::new();
    // Before open: file handles take the setting when opened.
    disk.set_yield_on_io(true);
    let (log, _) = open(&disk);
    append(&log, 0).unwrap();
    append(&log, 1).unwrap();
    disk.fail_nth_of(OpKind::Write, 2, Fault::Eio);
    assert_eq!(append(&log, 2).unwrap(), 2);
    let results = block_on(join_all(
        (3..7)
            .map(|i| {
                let (target, created_ms, key, state) = hint(i);
                let log = &log;
                async move { log.append(target, created_ms, &key, &state).await }
            })
            .collect(),
    ));
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(log.is_failed());
    (disk, (3..7).collect())
}

#[test]
fn an_unacknowledged_tail_is_whole_or_absent_at_every_cut() {
    let (probe, _) = log_with_unacked_group();
    let write = probe.last_unsynced_write().unwrap();
    let written = probe.file_bytes(&write.file).unwrap();
    let batch = &written[write.offset as usize..write.offset as usize + write.len];
    // Where the batch's data ends (the last state byte is non-zero), padding excluded.
    let data_end = batch.iter().rposition(|b| *b != 0).unwrap() + 1;
    let mut cuts_with_some_unacked = 0;
    for keep in (0..=data_end + 1)
        .step_by(5)
        .chain([data_end - 1, data_end])
    {
        let (disk, unacked) = log_with_unacked_group();
        disk.power_loss_tearing(keep).unwrap();
        let (log, rec) = try_open(&disk, RecoveryPolicy::TolerateCorruptTail)
            .unwrap_or_else(|e| panic!("keep {keep}: {e}"));
        // The acked ones are there, the unacked ones form a prefix, each whole.
        let got = ids(&rec);
        assert_eq!(&got[..3], &[0, 1, 2], "keep {keep}");
        let tail = &got[3..];
        assert_eq!(tail, &unacked[..tail.len()], "keep {keep}");
        for h in &rec.pending {
            assert_eq!(h, &stored(h.id, h.id), "keep {keep}: a half-record");
        }
        if !tail.is_empty() {
            cuts_with_some_unacked += 1;
        }
        assert_eq!(
            rec.torn_tail.is_some(),
            keep > 0 && keep < data_end,
            "keep {keep}: torn tail {:?}",
            rec.torn_tail
        );
        if keep >= data_end {
            assert_eq!(tail, &unacked[..], "keep {keep}: the whole batch landed");
        }
        // Ids continue above everything that may exist on disk.
        assert_eq!(log.next_id(), 3 + tail.len() as u64, "keep {keep}");
        drop(log);
        disk.power_loss();
        let (_, again) = open(&disk);
        assert_eq!(ids(&again), got, "keep {keep}: second recovery");
        assert_eq!(again.torn_tail, None, "keep {keep}: repaired");
    }
    assert!(cuts_with_some_unacked > 3);
}

/// Segment 0 with five hints, one batch (block) each, not yet rolled.
fn five_hint_segment() -> Vec<u8> {
    let disk = MemDisk::new();
    let (log, _) = open(&disk);
    for i in 0..5 {
        append(&log, i).unwrap();
    }
    drop(log);
    disk.durable_file_bytes(&segment_file_name(0)).unwrap()
}

fn batch_start(k: u64) -> u64 {
    (k + 1) * ALIGN as u64
}

#[test]
fn bit_flip_in_the_last_hint_strict_names_file_and_offset_tolerate_keeps_the_prefix() {
    let bytes = five_hint_segment();
    let name = segment_file_name(0);
    let mut damaged = bytes.clone();
    let at = batch_start(4) + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + HINT_KEY_OFFSET + 1;
    damaged[at as usize] ^= 0x04;

    let disk = MemDisk::new();
    disk.put_file(&name, &damaged);
    match try_open(&disk, RecoveryPolicy::Strict) {
        Err(HintLogError::Log(CommitLogError::Corrupt { file, offset, .. })) => {
            assert!(file.ends_with(&name), "{file}");
            assert_eq!(offset, batch_start(4) + BATCH_HEADER_BYTES);
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }

    let disk = MemDisk::new();
    disk.put_file(&name, &damaged);
    let (log, rec) = try_open(&disk, RecoveryPolicy::TolerateCorruptTail).unwrap();
    assert_eq!(ids(&rec), vec![0, 1, 2, 3]);
    let torn = rec.torn_tail.unwrap();
    assert_eq!(torn.offset, batch_start(4) + BATCH_HEADER_BYTES);
    assert_eq!(log.next_id(), 4, "the lost hint was never acknowledged");
}

#[test]
fn bit_flip_mid_log_fails_under_both_policies_naming_file_and_offset() {
    let bytes = five_hint_segment();
    let name = segment_file_name(0);
    let mut damaged = bytes.clone();
    let at = batch_start(1) + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + HINT_KEY_OFFSET;
    damaged[at as usize] ^= 0x80;
    for policy in [RecoveryPolicy::Strict, RecoveryPolicy::TolerateCorruptTail] {
        let disk = MemDisk::new();
        disk.put_file(&name, &damaged);
        match try_open(&disk, policy) {
            Err(HintLogError::Log(CommitLogError::Corrupt {
                file,
                offset,
                reason,
            })) => {
                assert!(file.ends_with(&name), "{file}");
                assert_eq!(offset, batch_start(1) + BATCH_HEADER_BYTES);
                assert!(reason.contains("valid batch follows"), "{reason}");
            }
            other => panic!(
                "{policy:?}: expected Corrupt, got {:?}",
                other.map(|(_, r)| r)
            ),
        }
    }
}

/// Hints 0 and 1 through the hint log, then raw commit log records (valid CRC) on the
/// same directory: `raw` in a segment of their own (generation 2: the hint log's open
/// made segment 1).
fn log_with_raw_records(raw: &[Vec<u8>]) -> MemDisk {
    let disk = MemDisk::new();
    let (log, _) = open(&disk);
    append(&log, 0).unwrap();
    append(&log, 1).unwrap();
    drop(log);
    let (_, _) = open(&disk);
    let cfg = CommitLogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        sync: SyncMode::Batch,
    };
    let (raw_log, _) = block_on(CommitLog::open(
        disk.clone(),
        cfg,
        RecoveryPolicy::TolerateCorruptTail,
    ))
    .unwrap();
    block_on(async {
        for r in raw {
            raw_log.append(r).await.unwrap();
        }
    });
    disk
}

#[test]
fn an_undecodable_record_is_refused_with_file_and_offset_unless_a_tolerated_tail() {
    let garbage = b"not a hint record".to_vec();
    let disk = log_with_raw_records(&[garbage]);
    let name = segment_file_name(2);
    let payload_offset = batch_start(0) + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES;
    match try_open(&disk, RecoveryPolicy::Strict) {
        Err(HintLogError::Undecodable {
            file,
            offset,
            record_index,
            reason,
        }) => {
            assert!(file.ends_with(&name), "{file}");
            assert_eq!(offset, Some(payload_offset));
            assert_eq!(record_index, 0);
            assert!(reason.contains("bad magic"), "{reason}");
        }
        other => panic!("expected Undecodable, got {:?}", other.map(|(_, r)| r)),
    }
    let (_, rec) = try_open(&disk, RecoveryPolicy::TolerateCorruptTail).unwrap();
    assert_eq!(ids(&rec), vec![0, 1]);
    let tail = rec.undecodable_tail.unwrap();
    assert!(tail.file.ends_with(&name));
    assert_eq!(
        (tail.offset, tail.records_dropped),
        (Some(payload_offset), 1)
    );

    // Followed by a valid record it is mid-log corruption, whatever the policy.
    let mut valid = Vec::new();
    HintRecord::Hint {
        id: 9,
        target: 1,
        created_ms: 0,
        key: b"k".to_vec(),
        state: Vec::new(),
    }
    .encode(&mut valid);
    let mut future_version = valid.clone();
    future_version[2] = 2;
    let disk = log_with_raw_records(&[valid.clone(), future_version, valid]);
    for policy in [RecoveryPolicy::Strict, RecoveryPolicy::TolerateCorruptTail] {
        match try_open(&disk, policy) {
            Err(HintLogError::Undecodable {
                file,
                offset,
                record_index,
                reason,
            }) => {
                assert!(file.ends_with(&name), "{file}");
                assert_eq!(offset, Some(batch_start(1) + BATCH_HEADER_BYTES + 8));
                assert_eq!(record_index, 1);
                assert!(reason.contains("version 2"), "{reason}");
                assert!(reason.contains("1 records follow"), "{reason}");
            }
            other => panic!(
                "{policy:?}: expected Undecodable, got {:?}",
                other.map(|(_, r)| r)
            ),
        }
    }
}

#[test]
fn segments_are_released_once_all_their_hints_are_delivered_and_not_before() {
    let disk = MemDisk::new();
    let (log, _) = open(&disk);
    // Which segment each hint went to: the newest segment file right after its append.
    let mut segment_of = BTreeMap::new();
    for i in 0..30 {
        let id = append(&log, i).unwrap();
        segment_of.insert(id, *segment_files(&disk).last().unwrap());
    }
    let hint_segments: BTreeSet<u64> = segment_of.values().copied().collect();
    assert!(hint_segments.len() >= 4, "{hint_segments:?}");
    // Deliver in an order that finishes old segments late: odd ids first, then even.
    let order: Vec<u64> = (0..30)
        .filter(|i| i % 2 == 1)
        .chain((0..30).filter(|i| i % 2 == 0))
        .collect();
    let mut delivered = BTreeSet::new();
    for chunk in order.chunks(3) {
        block_on(log.mark_delivered(chunk)).unwrap();
        delivered.extend(chunk.iter().copied());
        log.invariants();
        let files = segment_files(&disk);
        let newest = *files.last().unwrap();
        let first_undelivered = segment_of
            .iter()
            .filter(|(id, _)| !delivered.contains(id))
            .map(|(_, s)| *s)
            .min()
            .unwrap_or(newest)
            .min(newest);
        // Nothing releasable is kept ...
        for s in &files {
            assert!(
                *s >= first_undelivered,
                "after {chunk:?}: segment {s} kept although it and all older are delivered"
            );
        }
        // ... and nothing holding an undelivered hint is gone.
        for (id, s) in &segment_of {
            if !delivered.contains(id) {
                assert!(
                    files.contains(s),
                    "after {chunk:?}: hint {id}'s segment {s} released"
                );
            }
        }
        assert_eq!(log.stats().live_segments, files.len());
    }
    assert_eq!(segment_files(&disk).len(), 1, "only the newest is left");
    assert_eq!(log.stats().pending_count, 0);
    drop(log);
    disk.power_loss();
    let (log, rec) = open(&disk);
    assert!(rec.pending.is_empty());
    assert_eq!(log.next_id(), 30, "ids continue though every hint is gone");
    assert_eq!(append(&log, 30).unwrap(), 30);
}

#[test]
fn ids_continue_after_reopen() {
    let disk = MemDisk::new();
    let (log, _) = open(&disk);
    for i in 0..5 {
        assert_eq!(append(&log, i).unwrap(), i);
    }
    block_on(log.mark_delivered(&[3, 4])).unwrap();
    drop(log);
    let (log, rec) = open(&disk); // process crash: nothing lost
    assert_eq!(ids(&rec), vec![0, 1, 2]);
    assert_eq!(append(&log, 5).unwrap(), 5);
    drop(log);
    disk.power_loss();
    let (log, _) = open(&disk);
    assert_eq!(append(&log, 6).unwrap(), 6);
}

#[test]
fn leftover_delivered_segments_are_released_at_open() {
    let disk = MemDisk::new();
    let (log, _) = open(&disk);
    for i in 0..10 {
        append(&log, i).unwrap();
    }
    drop(log);
    // Deliver everything by writing a marker with a raw commit log (as if the process
    // crashed between the marker and the releases).
    let mut marker = Vec::new();
    HintRecord::Delivered {
        next_id: 10,
        ids: (0..10).collect(),
    }
    .encode(&mut marker);
    let cfg = CommitLogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        sync: SyncMode::Batch,
    };
    let (raw, _) = block_on(CommitLog::open(disk.clone(), cfg, RecoveryPolicy::Strict)).unwrap();
    block_on(raw.append(&marker)).unwrap();
    drop(raw);
    assert!(segment_files(&disk).len() >= 3);
    let (log, rec) = open(&disk);
    assert!(rec.pending.is_empty());
    assert_eq!(segment_files(&disk).len(), 1);
    assert_eq!(log.next_id(), 10);
    drop(log);
    disk.power_loss();
    let (log, _) = open(&disk);
    assert_eq!(
        log.next_id(),
        10,
        "the high-water mark survived the releases"
    );
}

#[test]
fn long_delivery_lists_are_split_into_several_markers() {
    let disk = MemDisk::new();
    let (log, _) = block_on(HintLog::open(disk.clone(), RecoveryPolicy::Strict, 1 << 20)).unwrap();
    let n = MAX_DELIVERED_IDS as u64 + 10;
    block_on(async {
        let results = join_all(
            (0..n)
                .map(|i| {
                    let log = &log;
                    async move { log.append(1, i, &i.to_le_bytes(), b"").await }
                })
                .collect(),
        )
        .await;
        assert!(results.iter().all(Result::is_ok));
    });
    let all: Vec<u64> = (0..n - 1).collect();
    block_on(log.mark_delivered(&all)).unwrap();
    drop(log);
    disk.power_loss();
    let (_, rec) = block_on(HintLog::open(disk.clone(), RecoveryPolicy::Strict, 1 << 20)).unwrap();
    assert_eq!(ids(&rec), vec![n - 1]);
}

// ---- model-based proptest ------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Append {
        size: usize,
    },
    /// Deliver the pending hints whose position (in id order) is selected by `mask`.
    Deliver {
        mask: u32,
    },
    /// The device dies after `n` more operations (every later operation fails).
    Halt {
        n: u64,
    },
    PowerLoss {
        tear: Option<usize>,
    },
    /// The process dies; the device keeps everything written.
    Crash,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..3000).prop_map(|size| Op::Append { size }),
        3 => any::<u32>().prop_map(|mask| Op::Deliver { mask }),
        1 => (0u64..12).prop_map(|n| Op::Halt { n }),
        1 => proptest::option::of(0usize..6000).prop_map(|tear| Op::PowerLoss { tear }),
        1 => Just(Op::Crash),
    ]
}

fn model_hint(id: u64, size: usize) -> StoredHint {
    StoredHint {
        id,
        target: id % 4,
        created_ms: id * 10,
        key: id.to_le_bytes().to_vec(),
        state: vec![(id % 200) as u8 + 1; size],
    }
}

/// What may be on disk: every append issued (acked or not), and deliveries.
#[derive(Default)]
struct Model {
    /// Acknowledged or recovered: must be there unless delivered.
    acked: BTreeMap<u64, StoredHint>,
    /// Issued but not acknowledged: may be there.
    maybe: BTreeMap<u64, StoredHint>,
    /// Deliveries acknowledged: never to be seen again.
    delivered: BTreeSet<u64>,
    /// Deliveries attempted but failed: may or may not have taken effect.
    maybe_delivered: BTreeSet<u64>,
    /// Highest id ever acknowledged.
    max_acked_id: Option<u64>,
}

impl Model {
    fn check_recovery(&mut self, rec: &Recovered, next_id: u64) {
        let got: BTreeMap<u64, &StoredHint> = rec.pending.iter().map(|h| (h.id, h)).collect();
        assert!(
            rec.pending.windows(2).all(|w| w[0].id < w[1].id),
            "pending in id order"
        );
        for (id, h) in &self.acked {
            if self.delivered.contains(id) || self.maybe_delivered.contains(id) {
                continue;
            }
            assert_eq!(got.get(id), Some(&h), "acked hint {id} lost");
        }
        for (id, h) in &got {
            assert!(
                !self.delivered.contains(id),
                "delivered hint {id} resurrected"
            );
            let known = self.acked.get(id).or_else(|| self.maybe.get(id));
            assert_eq!(known, Some(*h), "hint {id} was never appended like this");
        }
        if let Some(max) = self.max_acked_id {
            assert!(next_id > max, "id {next_id} would reuse an acknowledged id");
        }
        self.acked = rec.pending.iter().map(|h| (h.id, h.clone())).collect();
        self.maybe.clear();
        self.maybe_delivered.clear();
    }
}

fn run_model(ops: &[Op]) {
    let disk = MemDisk::new();
    let (mut log, _) = open(&disk);
    let mut model = Model::default();
    let mut halted = false;
    for op in ops {
        match op {
            Op::Append { size } => {
                let id = log.next_id();
                let h = model_hint(id, *size);
                match block_on(log.append(h.target, h.created_ms, &h.key, &h.state)) {
                    Ok(got) => {
                        assert_eq!(got, id);
                        model.max_acked_id = Some(id);
                        model.acked.insert(id, h);
                    }
                    Err(_) => {
                        model.maybe.insert(id, h);
                    }
                }
            }
            Op::Deliver { mask } => {
                let chosen: Vec<u64> = model
                    .acked
                    .keys()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << (i % 32)) != 0)
                    .map(|(_, id)| *id)
                    .collect();
                match block_on(log.mark_delivered(&chosen)) {
                    Ok(()) => {
                        for id in chosen {
                            model.acked.remove(&id);
                            model.delivered.insert(id);
                        }
                    }
                    Err(_) => model.maybe_delivered.extend(chosen),
                }
            }
            Op::Halt { n } => {
                disk.halt_after(*n);
                halted = true;
            }
            Op::PowerLoss { .. } | Op::Crash => {
                drop(log);
                match op {
                    Op::PowerLoss { tear: Some(keep) } => {
                        disk.power_loss_tearing(*keep);
                    }
                    Op::Crash if !halted => {}
                    _ => disk.power_loss(),
                }
                halted = false;
                let (reopened, rec) = open(&disk);
                model.check_recovery(&rec, reopened.next_id());
                log = reopened;
            }
        }
        if !log.is_failed() {
            log.invariants();
            assert_eq!(log.stats().pending_count, model.acked.len() as u64);
        }
    }
    drop(log);
    disk.power_loss();
    let (log, rec) = open(&disk);
    model.check_recovery(&rec, log.next_id());
    log.invariants();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random appends, deliveries, device failures, power losses (some tearing the last
    /// write) and process crashes: recovered pending ⊇ acked appends − acked or
    /// attempted deliveries, ⊆ all appends − acked deliveries, never a delivered one,
    /// and ids never reuse an acknowledged one.
    #[test]
    fn recovery_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        run_model(&ops);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = HintRecord::decode(&bytes);
        // With a valid prefix, so the field decoders are reached too.
        for kind in [1u8, 2, 3] {
            let mut prefixed = vec![b'H', b'N', 1, kind];
            prefixed.extend_from_slice(&bytes);
            let _ = HintRecord::decode(&prefixed);
        }
    }

    #[test]
    fn encode_decode_round_trips(record in record_strategy(), cut in any::<prop::sample::Index>()) {
        let mut out = Vec::new();
        record.encode(&mut out);
        prop_assert_eq!(HintRecord::decode(&out), Ok(record.clone()));
        // Any proper prefix is refused, never misread.
        let cut = cut.index(out.len());
        prop_assert!(HintRecord::decode(&out[..cut]).is_err());
        let mut longer = out.clone();
        longer.push(0);
        prop_assert_eq!(HintRecord::decode(&longer), Err(HintDecodeError::TrailingBytes(1)));
    }
}

fn record_strategy() -> impl Strategy<Value = HintRecord> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>(), bytes(), bytes()).prop_map(
            |(id, target, created_ms, key, state)| HintRecord::Hint {
                id,
                target,
                created_ms,
                key,
                state
            }
        ),
        (
            1u64..u64::MAX,
            proptest::collection::vec(any::<u64>(), 0..20)
        )
            .prop_map(|(next_id, ids)| HintRecord::Delivered {
                next_id,
                ids: ids.into_iter().map(|id| id % next_id).collect(),
            }),
    ]
}

// ---- glommio --------------------------------------------------------------------------

#[test]
fn glommio_disk_append_reopen_pending_is_there() {
    use ringkv::storage::glommio_disk::GlommioDisk;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hints");
    glommio::LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move {
            let policy = RecoveryPolicy::default();
            {
                let disk = GlommioDisk::open(&dir).await.unwrap();
                let (log, rec) = HintLog::open(disk, policy, SEGMENT_BYTES).await.unwrap();
                assert!(rec.pending.is_empty());
                let results = join_all(
                    (0..40u64)
                        .map(|i| {
                            let (target, created_ms, key, state) = hint(i);
                            let log = &log;
                            async move { log.append(target, created_ms, &key, &state).await }
                        })
                        .collect(),
                )
                .await;
                let got: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
                assert_eq!(got, (0..40).collect::<Vec<_>>());
                log.mark_delivered(&(0..20).collect::<Vec<_>>())
                    .await
                    .unwrap();
                log.invariants();
            }
            let disk = GlommioDisk::open(&dir).await.unwrap();
            let (log, rec) = HintLog::open(disk, policy, SEGMENT_BYTES).await.unwrap();
            let expected: Vec<StoredHint> = (20..40).map(|i| stored(i, i)).collect();
            assert_eq!(rec.pending, expected);
            assert_eq!(log.append(1, 1, b"k", b"v").await.unwrap(), 40);
        });
}

/// A hint whose append is still waiting for its flush is not yet counted in its segment;
/// a marker flushed together with it (in the next segment) must not release that segment
/// when the marker's task runs first.
#[test]
fn regression_release_never_races_an_unfinished_append() {
    use futures_lite::future::poll_once;
    let disk = MemDisk::new();
    disk.set_yield_on_io(true);
    let (log, _) = open(&disk);
    for i in 0..5 {
        append(&log, i).unwrap(); // blocks 1..=5 of segment 0
    }
    block_on(async {
        // D leads a flush of block 6; A (nearly a block) is buffered for block 7 meanwhile.
        let mut d = Box::pin(log.append(1, 1, b"d", b"d"));
        assert!(poll_once(&mut d).await.is_none());
        let big = vec![7u8; 4000];
        let mut a = Box::pin(log.append(1, 1, b"a", &big));
        assert!(poll_once(&mut a).await.is_none());
        assert_eq!(d.await.unwrap(), 5);
        // C delivers everything acknowledged so far; its marker does not fit in segment 0,
        // and C leads the flush that also makes A durable, then releases what it may.
        log.mark_delivered(&[0, 1, 2, 3, 4, 5]).await.unwrap();
        assert_eq!(a.await.unwrap(), 6);
    });
    log.invariants();
    drop(log);
    disk.power_loss();
    let (_, rec) = open(&disk);
    assert_eq!(ids(&rec), vec![6], "the acknowledged append survives");
}

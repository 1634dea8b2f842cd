//! Model test: the engine against a `BTreeMap`, with flushes, compactions, clean
//! reboots and power losses among random puts, deletes and gets. After every reboot all
//! acknowledged writes are present and nothing deleted comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_lite::future::block_on;
use proptest::prelude::*;
use ringkv::conflict::{Hlc, KeyState, LwwCell};
use ringkv::storage::engine::{Engine, EngineOptions};
use ringkv::storage::mem_disk::MemDisk;
use std::collections::BTreeMap;

/// Enough keys that the 16 KiB test memtable fills and freezes on its own.
const KEYS: u8 = 64;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u16),
    Delete(u8),
    Get(u8),
    Flush,
    Compact,
    Reboot,
    PowerLoss,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => (0u8..KEYS, any::<u16>()).prop_map(|(k, v)| Step::Put(k, v)),
        8 => (0u8..KEYS).prop_map(Step::Delete),
        20 => (0u8..KEYS).prop_map(Step::Get),
        3 => Just(Step::Flush),
        2 => Just(Step::Compact),
        2 => Just(Step::Reboot),
        2 => Just(Step::PowerLoss),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

/// Values are large enough that a few dozen writes fill the test memtable.
fn value(k: u8, v: u16) -> Vec<u8> {
    let mut out = format!("value-{k}-{v}-").into_bytes();
    out.resize(300, b'x');
    out
}

fn options(gc_grace_seconds: u64) -> EngineOptions {
    let mut o = EngineOptions::for_tests();
    o.compaction.gc_grace_seconds = gc_grace_seconds;
    o.compaction.min_threshold = 2;
    o
}

fn check_all(engine: &Engine<MemDisk>, model: &BTreeMap<u8, Vec<u8>>, when: &str) {
    for k in 0u8..KEYS {
        let got = block_on(engine.read(&key(k))).unwrap();
        let live = got.as_ref().and_then(|s| match s {
            KeyState::Lww(c) => c.value.clone(),
            KeyState::Causal(_) => panic!("lww only"),
        });
        assert_eq!(live.as_ref(), model.get(&k), "key {k} {when}");
    }
}

fn run(steps: Vec<Step>, gc_grace_seconds: u64) {
    let disk = MemDisk::new();
    let opts = options(gc_grace_seconds);
    let (mut engine, _) = block_on(Engine::open(disk.clone(), opts.clone())).unwrap();
    let mut model: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut clock = 1u64;
    for step in steps {
        match step {
            Step::Put(k, v) => {
                clock += 1;
                let state = KeyState::Lww(LwwCell {
                    timestamp: Hlc::new(clock, 0),
                    value: Some(value(k, v)),
                });
                block_on(engine.write(&key(k), state)).unwrap();
                model.insert(k, value(k, v));
                // The maintenance task's job, done inline: flush what filled up.
                while block_on(engine.flush_one()).unwrap() {}
            }
            Step::Delete(k) => {
                clock += 1;
                let state = KeyState::Lww(LwwCell {
                    timestamp: Hlc::new(clock, 0),
                    value: None,
                });
                block_on(engine.write(&key(k), state)).unwrap();
                model.remove(&k);
                while block_on(engine.flush_one()).unwrap() {}
            }
            Step::Get(k) => {
                let got = block_on(engine.read(&key(k))).unwrap();
                let live = got.and_then(|s| match s {
                    KeyState::Lww(c) => c.value,
                    KeyState::Causal(_) => None,
                });
                assert_eq!(live.as_ref(), model.get(&k), "get {k}");
            }
            Step::Flush => block_on(engine.flush()).unwrap(),
            Step::Compact => {
                block_on(engine.compact_once(true)).unwrap();
            }
            Step::Reboot => {
                block_on(engine.shutdown()).unwrap();
                drop(engine);
                engine = block_on(Engine::open(disk.clone(), opts.clone()))
                    .unwrap()
                    .0;
                check_all(&engine, &model, "after reboot");
            }
            Step::PowerLoss => {
                drop(engine);
                disk.power_loss();
                engine = block_on(Engine::open(disk.clone(), opts.clone()))
                    .unwrap()
                    .0;
                check_all(&engine, &model, "after power loss");
            }
        }
    }
    drop(engine);
    disk.power_loss();
    let (engine, _) = block_on(Engine::open(disk.clone(), opts)).unwrap();
    check_all(&engine, &model, "at the end, after power loss");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn engine_matches_model_across_reboots_and_power_loss(steps in proptest::collection::vec(step(), 1..300)) {
        run(steps, 864_000);
    }

    #[test]
    fn engine_matches_model_when_tombstones_are_purged(steps in proptest::collection::vec(step(), 1..300)) {
        run(steps, 0);
    }
}

/// Enough writes to force several flushes, segment releases and a compaction, then a
/// power loss: everything is still there, and old segments were released.
#[test]
fn flushes_release_segments_and_survive_power_loss() {
    let disk = MemDisk::new();
    let opts = options(864_000);
    let (engine, _) = block_on(Engine::open(disk.clone(), opts.clone())).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..2_000u32 {
        let k = (i % 200) as u8;
        let state = KeyState::Lww(LwwCell {
            timestamp: Hlc::new(u64::from(i) + 1, 0),
            value: Some(value(k, i as u16)),
        });
        block_on(engine.write(&key(k), state)).unwrap();
        model.insert(k, value(k, i as u16));
        while block_on(engine.flush_one()).unwrap() {}
        if i % 500 == 499 {
            while block_on(engine.compact_once(false)).unwrap() {}
        }
    }
    let stats = engine.stats();
    assert!(stats.flushes >= 10, "expected many flushes, got {stats:?}");
    assert!(
        stats.compactions >= 1,
        "expected a compaction, got {stats:?}"
    );
    let names = block_on(ringkv::storage::disk::Disk::list(&disk)).unwrap();
    let segments = names.iter().filter(|n| n.starts_with("commitlog-")).count();
    assert!(
        segments <= 4,
        "flushed segments must be released, found {segments}: {names:?}"
    );
    drop(engine);
    disk.power_loss();
    let (engine, _) = block_on(Engine::open(disk, opts)).unwrap();
    for k in 0u8..200 {
        let got = block_on(engine.read(&key(k))).unwrap();
        let live = got.and_then(|s| match s {
            KeyState::Lww(c) => c.value,
            KeyState::Causal(_) => None,
        });
        assert_eq!(live.as_ref(), model.get(&k), "key {k}");
    }
}

/// A failed commit log write (the durable write-through write, where an fdatasync used
/// to be) fails the write it covered, and the engine then refuses every write until it
/// is reopened (never retry-and-trust); reads keep working, and after a restart nothing
/// unacknowledged is visible as acknowledged.
#[test]
fn failed_commit_log_write_stops_writes_until_restart() {
    use ringkv::storage::mem_disk::{Fault, OpKind};
    let disk = MemDisk::new();
    let opts = options(864_000);
    let (engine, _) = block_on(Engine::open(disk.clone(), opts.clone())).unwrap();
    let put = |engine: &Engine<MemDisk>, k: u8, ts: u64| {
        block_on(engine.write(
            &key(k),
            KeyState::Lww(LwwCell {
                timestamp: Hlc::new(ts, 0),
                value: Some(value(k, ts as u16)),
            }),
        ))
    };
    put(&engine, 1, 1).unwrap();
    disk.fail_nth_of(OpKind::Write, 1, Fault::Eio);
    let err = put(&engine, 2, 2).expect_err("the write covered by the failed log write must fail");
    assert!(
        err.to_string().contains("I/O") || err.to_string().contains("error"),
        "{err}"
    );
    let err =
        put(&engine, 3, 3).expect_err("the engine must refuse writes after a failed log write");
    assert!(err.to_string().contains("restart"), "{err}");
    assert!(
        block_on(engine.read(&key(1))).unwrap().is_some(),
        "reads still work"
    );
    drop(engine);
    disk.power_loss();
    let (engine, _) = block_on(Engine::open(disk, opts)).unwrap();
    assert!(
        block_on(engine.read(&key(1))).unwrap().is_some(),
        "acknowledged write survives"
    );
    assert!(
        block_on(engine.read(&key(3))).unwrap().is_none(),
        "refused write never appears"
    );
    put(&engine, 4, 4).unwrap();
}

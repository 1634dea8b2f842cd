//! The peer: fjall 3 driven by OS threads, with every write made durable by
//! `Database::persist(PersistMode::SyncData)` (one `fdatasync` of the journal) before it
//! counts as done. With C threads each thread persists after its own insert; fjall's
//! journal lock lets one fdatasync cover the inserts of other threads that landed before
//! it, which is fjall's own form of group commit.
//!
//! Settings mirror ringkv's production defaults where fjall has the same knob: 64 MiB
//! memtable (fjall's default too), 4 KiB data blocks (default), 256 MiB block cache.
//! This module never measures anything ringkv does.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::diskstats::Device;
use crate::workload::{
    key_of, plan, preloaded_index, value_of, Measurement, OpKind, Phase, Recorder,
};

/// Same as ringkv's default `block_cache_size`.
const CACHE_BYTES: u64 = 256 << 20;

type Result<T> = std::result::Result<T, String>;

fn open(dir: &Path) -> Result<(Database, Keyspace)> {
    let db = Database::builder(dir)
        .cache_size(CACHE_BYTES)
        .open()
        .map_err(|e| format!("fjall open: {e}"))?;
    let ks = db
        .keyspace("bench", KeyspaceCreateOptions::default)
        .map_err(|e| format!("fjall keyspace: {e}"))?;
    Ok((db, ks))
}

/// Run `phase` with `phase.concurrency` threads against an open database.
fn drive(
    db: &Database,
    ks: &Keyspace,
    phase: &Phase,
    device: &Device,
    write_base: u64,
) -> Result<Measurement> {
    let next = AtomicU64::new(0);
    let persists = AtomicU64::new(0);
    let before = device.sample();
    let began = Instant::now();
    let recorders: Vec<Result<Recorder>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..phase.concurrency)
            .map(|_| {
                s.spawn(|| -> Result<Recorder> {
                    let mut rec = Recorder::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let start = Instant::now();
                        if !phase.admits(i, began, start) {
                            return Ok(rec);
                        }
                        let op = plan(phase, i);
                        let found = match op.kind {
                            OpKind::Write => {
                                ks.insert(op.key, value_of(write_base + i))
                                    .map_err(|e| format!("insert: {e}"))?;
                                db.persist(PersistMode::SyncData)
                                    .map_err(|e| format!("persist: {e}"))?;
                                persists.fetch_add(1, Ordering::Relaxed);
                                true
                            }
                            OpKind::ReadHit | OpKind::ReadMiss => {
                                ks.get(op.key).map_err(|e| format!("get: {e}"))?.is_some()
                            }
                        };
                        rec.record(op.kind, found, start.elapsed());
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let elapsed = began.elapsed();
    let mut total = Recorder::new();
    for r in recorders {
        total.merge(&r?);
    }
    Ok(Measurement {
        recorder: total,
        elapsed,
        engine_syncs: persists.load(Ordering::Relaxed),
        engine_bytes_written: None,
        device: before.until(&device.sample()),
    })
}

/// A fill phase on a fresh database in `dir`.
pub fn run_fill(dir: &Path, phase: &Phase, device: &Device) -> Result<Measurement> {
    let (db, ks) = open(dir)?;
    drive(&db, &ks, phase, device, 0)
}

/// Preload `phase[0].preloaded_keys` keys, flush them to a table, warm the caches, then
/// run every read/mixed phase on that one database.
pub fn run_read_suite(dir: &Path, phases: &[Phase], device: &Device) -> Result<Vec<Measurement>> {
    let Some(first) = phases.first() else {
        return Ok(Vec::new());
    };
    let keys = first.preloaded_keys;
    let (db, ks) = open(dir)?;
    // The load is not measured, so it takes fjall's fastest durable path: buffered
    // inserts, one fdatasync at the end, then the memtable flushed to a table so that
    // reads go through the table path as ringkv's do.
    for i in 0..keys {
        ks.insert(key_of(preloaded_index(i)), value_of(i))
            .map_err(|e| format!("load insert: {e}"))?;
    }
    db.persist(PersistMode::SyncData)
        .map_err(|e| format!("load persist: {e}"))?;
    ks.rotate_memtable_and_wait()
        .map_err(|e| format!("flush: {e}"))?;
    for i in 0..keys {
        if ks
            .get(key_of(preloaded_index(i)))
            .map_err(|e| format!("warm-up get: {e}"))?
            .is_none()
        {
            return Err(format!("fjall lost preloaded key {i}"));
        }
    }
    let mut out = Vec::new();
    let mut write_base = keys;
    for phase in phases {
        out.push(drive(&db, &ks, phase, device, write_base)?);
        write_base += 1 << 40;
    }
    Ok(out)
}

//! ringkv's storage engine under the harness: one glommio `LocalExecutor` pinned to the
//! bench CPU (a shard, as `ringkv serve` runs it), C concurrent tasks as writers and
//! readers, the engine's maintenance loop running beside them, and a counting `Disk`
//! under the engine so that every fdatasync is seen.
//!
//! Options are the production defaults of `ringkv.toml` (64 MiB memtable, 32 MiB
//! commit-log segments, `batch` sync, 4 KiB blocks, 256 MiB block cache), never the tiny
//! test ones. This module never measures fjall.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use ringkv::conflict::{ConflictMode, Hlc, KeyState, LwwCell};
use ringkv::event::Event;
use ringkv::storage::commitlog::{CommitLogConfig, SyncMode};
use ringkv::storage::compaction::CompactionConfig;
use ringkv::storage::engine::{Engine, EngineOptions};
use ringkv::storage::glommio_disk::GlommioDisk;

use crate::counting_disk::{Counters, CountingDisk};
use crate::diskstats::Device;
use crate::workload::{
    key_of, plan, preloaded_index, value_of, Measurement, OpKind, Phase, Recorder,
};

type Result<T> = std::result::Result<T, String>;
type BenchEngine = Engine<CountingDisk<GlommioDisk>>;

/// Concurrent writers used for the (unmeasured) preload of the read suite.
const LOAD_CONCURRENCY: usize = 256;
/// Locked I/O memory for the fallback executor when the default (~10 MiB) cannot be
/// locked (`ulimit -l` too low).
const FALLBACK_IO_MEMORY_BYTES: usize = 2 << 20;

/// ringkv's production defaults (`Config` defaults, docs/design.md §1.7).
pub fn production_options() -> EngineOptions {
    EngineOptions {
        commitlog: CommitLogConfig {
            segment_size_bytes: 32 << 20,
            sync: SyncMode::Batch,
        },
        memtable_size_bytes: 64 << 20,
        block_cache_size_bytes: 256 << 20,
        sstable_block_size_bytes: 4 << 10,
        compaction: CompactionConfig::default(),
        conflict_mode: ConflictMode::Lww,
        max_frozen_memtables: 4,
    }
}

/// Run `job` on a fresh glommio executor pinned to `cpu`, retrying once with a small
/// locked-memory budget if the executor cannot be created.
fn on_executor<T, G, F>(cpu: usize, job: G) -> Result<T>
where
    T: Send + 'static,
    G: Fn() -> F + Send + Clone + 'static,
    F: std::future::Future<Output = Result<T>> + 'static,
{
    let first = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("ringkv-bench")
        .spawn(job.clone())
        .map_err(|e| e.to_string())
        .and_then(|h| h.join().map_err(|e| e.to_string()));
    match first {
        Ok(result) => result,
        Err(reason) => {
            eprintln!("executor with default io_memory failed ({reason}); retrying with io_memory = 2 MiB");
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name("ringkv-bench")
                .io_memory(FALLBACK_IO_MEMORY_BYTES)
                .spawn(job)
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|e| format!("executor: {e}"))?
        }
    }
}

async fn open(dir: &Path, options: EngineOptions, counters: &Rc<Counters>) -> Result<BenchEngine> {
    let disk = GlommioDisk::open(dir)
        .await
        .map_err(|e| format!("GlommioDisk::open {}: {e}", dir.display()))?;
    let (engine, _report) = Engine::open(CountingDisk::new(disk, counters.clone()), options)
        .await
        .map_err(|e| format!("Engine::open: {e}"))?;
    Ok(engine)
}

fn lww(value: Vec<u8>, write_index: u64) -> KeyState {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // The logical part only spreads timestamps; overwrites in mixed carry a later wall
    // clock anyway, and ties are broken deterministically by the LWW rules.
    KeyState::Lww(LwwCell {
        timestamp: Hlc::new(now_ms, (write_index & 0xffff) as u16),
        value: Some(value),
    })
}

/// The engine's maintenance loop as a background task, stopped by the returned event.
struct Maintenance {
    stop: Rc<Event>,
    task: glommio::Task<()>,
}

impl Maintenance {
    fn start(engine: &BenchEngine) -> Maintenance {
        let stop = Rc::new(Event::default());
        let (e, s) = (engine.clone(), stop.clone());
        let task = glommio::spawn_local(async move { e.run_maintenance(&s).await });
        Maintenance { stop, task }
    }

    async fn stop(self) {
        self.stop.set();
        self.task.await;
    }
}

/// Run `phase` with `phase.concurrency` tasks against an open engine.
async fn drive(
    engine: &BenchEngine,
    phase: &Phase,
    device: &Device,
    counters: &Rc<Counters>,
    write_base: u64,
) -> Result<Measurement> {
    let next = Rc::new(Cell::new(0u64));
    let total = Rc::new(RefCell::new(Recorder::new()));
    let syncs_before = counters.syncs();
    let bytes_before = counters.bytes_written.get();
    let before = device.sample();
    let began = Instant::now();
    let phase = *phase;
    let workers: Vec<_> = (0..phase.concurrency)
        .map(|_| {
            let (engine, next, total) = (engine.clone(), next.clone(), total.clone());
            glommio::spawn_local(async move {
                loop {
                    let i = next.get();
                    let start = Instant::now();
                    if !phase.admits(i, began, start) {
                        return Ok::<(), String>(());
                    }
                    next.set(i + 1);
                    let op = plan(&phase, i);
                    let found = match op.kind {
                        OpKind::Write => {
                            engine
                                .write(&op.key, lww(value_of(write_base + i), write_base + i))
                                .await
                                .map_err(|e| format!("write: {e}"))?;
                            true
                        }
                        OpKind::ReadHit | OpKind::ReadMiss => engine
                            .read(&op.key)
                            .await
                            .map_err(|e| format!("read: {e}"))?
                            .is_some(),
                    };
                    total.borrow_mut().record(op.kind, found, start.elapsed());
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let elapsed = began.elapsed();
    let recorder = std::mem::take(&mut *total.borrow_mut());
    Ok(Measurement {
        recorder,
        elapsed,
        engine_syncs: counters.syncs() - syncs_before,
        engine_bytes_written: Some(counters.bytes_written.get() - bytes_before),
        device: before.until(&device.sample()),
    })
}

/// A fill phase on a fresh engine in `dir`.
pub fn run_fill(cpu: usize, dir: &Path, phase: &Phase, device: &Device) -> Result<Measurement> {
    let (dir, phase, device): (PathBuf, Phase, Device) =
        (dir.to_path_buf(), *phase, device.clone());
    on_executor(cpu, move || {
        let (dir, device) = (dir.clone(), device.clone());
        async move {
            let counters = Rc::new(Counters::default());
            let engine = open(&dir, production_options(), &counters).await?;
            let maintenance = Maintenance::start(&engine);
            let m = drive(&engine, &phase, &device, &counters, 0).await;
            maintenance.stop().await;
            engine
                .shutdown()
                .await
                .map_err(|e| format!("shutdown: {e}"))?;
            m
        }
    })
}

/// Preload `phases[0].preloaded_keys` keys durably, move them into an SSTable, warm the
/// block cache, then run every read/mixed phase on that one engine.
pub fn run_read_suite(
    cpu: usize,
    dir: &Path,
    phases: &[Phase],
    device: &Device,
) -> Result<Vec<Measurement>> {
    let (dir, phases, device) = (dir.to_path_buf(), phases.to_vec(), device.clone());
    on_executor(cpu, move || {
        let (dir, phases, device) = (dir.clone(), phases.clone(), device.clone());
        async move {
            let Some(first) = phases.first() else {
                return Ok(Vec::new());
            };
            let keys = first.preloaded_keys;
            let counters = Rc::new(Counters::default());
            {
                // Load through the normal durable write path with many writers, so group
                // commit keeps it short. Not measured.
                let engine = open(&dir, production_options(), &counters).await?;
                let next = Rc::new(Cell::new(0u64));
                let loaders: Vec<_> = (0..LOAD_CONCURRENCY)
                    .map(|_| {
                        let (engine, next) = (engine.clone(), next.clone());
                        glommio::spawn_local(async move {
                            loop {
                                let i = next.get();
                                if i >= keys {
                                    return Ok::<(), String>(());
                                }
                                next.set(i + 1);
                                engine
                                    .write(&key_of(preloaded_index(i)), lww(value_of(i), i))
                                    .await
                                    .map_err(|e| format!("load write: {e}"))?;
                            }
                        })
                    })
                    .collect();
                for l in loaders {
                    l.await?;
                }
                engine
                    .shutdown()
                    .await
                    .map_err(|e| format!("shutdown: {e}"))?;
            }
            {
                // The engine has no public "flush now": reopening with a memtable limit
                // below what the commit log replays makes `open` flush the replayed
                // memtable to an SSTable before serving (as fjall's
                // `rotate_memtable_and_wait` does on its side).
                let tiny = EngineOptions {
                    memtable_size_bytes: 64 << 10,
                    ..production_options()
                };
                let engine = open(&dir, tiny, &counters).await?;
                let sstables = engine.stats().sstables;
                if sstables == 0 {
                    return Err("reopen did not flush the preloaded keys to an SSTable".into());
                }
                engine
                    .shutdown()
                    .await
                    .map_err(|e| format!("shutdown: {e}"))?;
            }
            let engine = open(&dir, production_options(), &counters).await?;
            let stats = engine.stats();
            if stats.memtable_bytes != 0 {
                return Err(format!(
                    "expected an empty memtable after the flush, found {} bytes",
                    stats.memtable_bytes
                ));
            }
            for i in 0..keys {
                if engine
                    .read(&key_of(preloaded_index(i)))
                    .await
                    .map_err(|e| format!("warm-up read: {e}"))?
                    .is_none()
                {
                    return Err(format!("ringkv lost preloaded key {i}"));
                }
            }
            let maintenance = Maintenance::start(&engine);
            let mut out = Vec::new();
            let mut write_base = keys;
            for phase in &phases {
                out.push(drive(&engine, phase, &device, &counters, write_base).await?);
                write_base += 1 << 40;
            }
            maintenance.stop().await;
            engine
                .shutdown()
                .await
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok(out)
        }
    })
}

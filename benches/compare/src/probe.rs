//! `--probe-sync`: what one durable append costs on this file system, by file layout.
//!
//! It isolates the commit-log I/O pattern from the engine: the same 4 KiB direct-I/O
//! write + fdatasync that ringkv's commit log issues per group-commit batch, into a
//! growing file (what the log does today), into a sparse pre-sized file, and into a
//! file whose blocks were written beforehand; plus fjall's pattern (small buffered
//! append into a file pre-sized with `set_len`, then fdatasync). Each variant reports
//! latency and the block device's writes, bytes and cache flushes per append, which
//! shows whether an fdatasync also had to commit file-system metadata.
//!
//! It writes only inside the directory it is given and removes its files afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use glommio::{LocalExecutorBuilder, Placement};
use ringkv::storage::disk::{Disk, DiskFile, ALIGN};
use ringkv::storage::glommio_disk::GlommioDisk;

use crate::diskstats::{Device, DeviceDelta};
use crate::workload::{Measurement, OpKind, Recorder};

/// Bytes of one fjall-style journal append (16 B key + 100 B value + framing).
const SMALL_APPEND_BYTES: usize = 150;

/// How the target file is laid out before the timed appends.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Empty file: every append extends `i_size` and allocates a block.
    Growing,
    /// `ftruncate` to the final size first: no `i_size` change, blocks still allocated
    /// (as unwritten extents, converted after each write) on first write.
    SparsePresized,
    /// Every block written and synced first: appends only overwrite data.
    Prewritten,
}

fn measure<F>(ops: u64, device: &Device, mut op: F) -> Result<Measurement, String>
where
    F: FnMut(u64) -> Result<(), String>,
{
    let mut rec = Recorder::new();
    let before = device.sample();
    let began = Instant::now();
    for i in 0..ops {
        let start = Instant::now();
        op(i)?;
        rec.record(OpKind::Write, true, start.elapsed());
    }
    let elapsed = began.elapsed();
    Ok(Measurement {
        recorder: rec,
        elapsed,
        engine_syncs: ops,
        engine_bytes_written: None,
        device: before.until(&device.sample()),
    })
}

async fn direct_variant(
    dir: PathBuf,
    layout: Layout,
    ops: u64,
    device: Device,
) -> Result<Measurement, String> {
    let disk = GlommioDisk::open(&dir).await.map_err(|e| e.to_string())?;
    let name = format!("probe-{layout:?}.log");
    let file = disk.create(&name).await.map_err(|e| e.to_string())?;
    let total = ops * ALIGN as u64;
    match layout {
        Layout::Growing => {}
        Layout::SparsePresized => file.truncate(total).await.map_err(|e| e.to_string())?,
        Layout::Prewritten => {
            let chunk = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < total {
                file.write_at(at, &chunk).await.map_err(|e| e.to_string())?;
                at += chunk.len() as u64;
            }
        }
    }
    file.sync().await.map_err(|e| e.to_string())?;
    disk.sync_dir().await.map_err(|e| e.to_string())?;
    let block = vec![0xa5u8; ALIGN];
    let mut rec = Recorder::new();
    let before = device.sample();
    let began = Instant::now();
    for i in 0..ops {
        let start = Instant::now();
        file.write_at(i * ALIGN as u64, &block)
            .await
            .map_err(|e| e.to_string())?;
        file.sync().await.map_err(|e| e.to_string())?;
        rec.record(OpKind::Write, true, start.elapsed());
    }
    let m = Measurement {
        recorder: rec,
        elapsed: began.elapsed(),
        engine_syncs: ops,
        engine_bytes_written: None,
        device: before.until(&device.sample()),
    };
    file.close().await.map_err(|e| e.to_string())?;
    disk.remove(&name).await.map_err(|e| e.to_string())?;
    Ok(m)
}

fn buffered_presized(dir: &Path, ops: u64, device: &Device) -> Result<Measurement, String> {
    let path = dir.join("probe-buffered.log");
    let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    file.set_len(64 << 20).map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())?;
    let record = [0x5au8; SMALL_APPEND_BYTES];
    let m = measure(ops, device, |_| {
        file.write_all(&record).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())
    });
    std::fs::remove_file(&path).ok();
    m
}

pub fn run(cpu: usize, dir: &Path, ops: u64, device: &Device) -> Result<(), String> {
    println!("## fdatasync probe: {ops} appends per variant, one at a time");
    println!();
    println!("| variant | appends/s | p50 / p99 µs | device writes/append | device KiB/append | device flushes/append |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(String, Measurement)> = Vec::new();
    for layout in [Layout::Growing, Layout::SparsePresized, Layout::Prewritten] {
        let (d, dev) = (dir.to_path_buf(), device.clone());
        let m = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .io_memory(2 << 20)
            .spawn(move || direct_variant(d, layout, ops, dev))
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|e| e.to_string())??;
        let label = match layout {
            Layout::Growing => "O_DIRECT 4 KiB append, growing file (ringkv commit log before preallocation)",
            Layout::SparsePresized => "O_DIRECT 4 KiB append, sparse file pre-sized with ftruncate",
            Layout::Prewritten => "O_DIRECT 4 KiB append, blocks written beforehand",
        };
        rows.push((label.to_string(), m));
    }
    rows.push((
        format!(
            "buffered {SMALL_APPEND_BYTES} B append, file pre-sized with set_len (fjall journal)"
        ),
        buffered_presized(dir, ops, device)?,
    ));
    for (label, m) in &rows {
        let DeviceDelta {
            writes,
            bytes_written,
            flushes,
        } = m.device;
        println!(
            "| {label} | {:.0} | {:.1} / {:.1} | {:.2} | {:.1} | {:.2} |",
            m.ops_per_sec(),
            m.quantile_us(0.5),
            m.quantile_us(0.99),
            m.per_op(writes),
            m.per_op(bytes_written) / 1024.0,
            m.per_op(flushes),
        );
    }
    println!();
    Ok(())
}

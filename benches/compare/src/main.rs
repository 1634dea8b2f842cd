//! `ringkv-compare`: the storage-engine peer benchmark (docs/design.md §9.3). It runs the
//! same workloads (fillseq, fillrandom, readrandom, readmissing, mixed; 16-byte keys,
//! 100-byte values) on ringkv's engine and on fjall, both making every write durable with
//! an fdatasync before it counts, and prints a markdown table of the ratios.
//!
//! It owns orchestration and reporting only; what each workload does is in `workload`,
//! how each engine is driven in `ringkv_side` / `fjall_side`. It must never run on tmpfs
//! (O_DIRECT fails there and fsyncs are free, which would make the comparison a lie).
//!
//! Run: `cd benches/compare && taskset -c 1 cargo run --release -- --all`

mod counting_disk;
mod diskstats;
mod fjall_side;
mod probe;
mod ringkv_side;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use diskstats::Device;
use workload::{Limit, Measurement, Phase, Workload};

#[derive(Parser, Debug)]
#[command(about = "ringkv storage engine vs fjall, fdatasync on every write batch")]
struct Args {
    /// Run every workload (fillseq, fillrandom, readrandom, readmissing, mixed).
    #[arg(long)]
    all: bool,
    /// Comma-separated workloads to run instead of --all.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// CPU the ringkv executor is pinned to; run the whole process under
    /// `taskset -c <cpu>` so fjall's threads share that one core too.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Directory for the data files; must be on a real disk, not tmpfs.
    #[arg(long, default_value = "target/bench-data")]
    data_dir: PathBuf,
    /// Concurrency of the concurrent runs (tasks for ringkv, threads for fjall).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Writes of the single-writer fills (each one waits for its own fdatasync).
    #[arg(long, default_value_t = 2000)]
    sync_ops: u64,
    /// Length of the concurrent fills and of the mixed runs, in seconds.
    #[arg(long, default_value_t = 8)]
    timed_secs: u64,
    /// Keys preloaded for the read and mixed workloads.
    #[arg(long, default_value_t = 200_000)]
    read_keys: u64,
    /// Reads per read run.
    #[arg(long, default_value_t = 200_000)]
    read_ops: u64,
    /// Also measure what one durable 4 KiB append costs by file layout (explains the
    /// single-writer fill numbers); runs alone unless --all or --workloads is given.
    #[arg(long)]
    probe_sync: bool,
    /// Appends per probe variant.
    #[arg(long, default_value_t = 1000)]
    probe_ops: u64,
}

struct Row {
    phase: Phase,
    ringkv: Option<Measurement>,
    fjall: Option<Measurement>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn selected(args: &Args) -> Result<Vec<Workload>, String> {
    if args.all {
        return Ok([
            "fillseq",
            "fillrandom",
            "readrandom",
            "readmissing",
            "mixed",
        ]
        .iter()
        .filter_map(|n| Workload::parse(n))
        .collect());
    }
    if args.workloads.is_empty() {
        return Err("nothing to run: pass --all or --workloads fillseq,readrandom,…".into());
    }
    args.workloads
        .iter()
        .map(|n| Workload::parse(n).ok_or_else(|| format!("unknown workload {n:?}")))
        .collect()
}

/// The phases of one workload: single worker and concurrent.
fn phases_of(w: Workload, args: &Args) -> Vec<Phase> {
    let timed = Limit::Time(Duration::from_secs(args.timed_secs));
    let (single, concurrent) = match w {
        Workload::FillSeq | Workload::FillRandom => (Some(Limit::Ops(args.sync_ops)), timed),
        Workload::ReadRandom | Workload::ReadMissing => {
            (Some(Limit::Ops(args.read_ops)), Limit::Ops(args.read_ops))
        }
        Workload::Mixed => (None, timed),
    };
    let preloaded_keys = if w.is_fill() { 0 } else { args.read_keys };
    let mut out = Vec::new();
    if let Some(limit) = single {
        out.push(Phase {
            workload: w,
            concurrency: 1,
            limit,
            preloaded_keys,
        });
    }
    out.push(Phase {
        workload: w,
        concurrency: args.concurrency,
        limit: concurrent,
        preloaded_keys,
    });
    out
}

fn fresh_dir(path: &Path) -> Result<(), String> {
    if path.exists() {
        std::fs::remove_dir_all(path)
            .map_err(|e| format!("cannot clear {}: {e}", path.display()))?;
    }
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "?".into())
}

fn run(args: &Args) -> Result<bool, String> {
    let workloads = if args.probe_sync && !args.all && args.workloads.is_empty() {
        Vec::new()
    } else {
        selected(args)?
    };
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir).map_err(|e| e.to_string())?;
    let fs = diskstats::fs_type(&data_dir).unwrap_or_else(|| "?".into());
    if fs == "tmpfs" || fs == "ramfs" {
        return Err(format!(
            "{} is on {fs}: fdatasync is free there and O_DIRECT fails; pick a real disk",
            data_dir.display()
        ));
    }
    let device = Device::of(&data_dir).map_err(|e| e.to_string())?;
    let cpus = allowed_cpus();
    println!("# ringkv storage engine vs fjall (fjall version pinned in Cargo.lock)");
    println!();
    println!(
        "data dir {} ({fs}, device {}), allowed CPUs {cpus}, ringkv executor on CPU {}",
        data_dir.display(),
        device.name.as_deref().unwrap_or("?"),
        args.cpu
    );
    if cpus != args.cpu.to_string() {
        println!("WARNING: not pinned to one CPU: run under `taskset -c {}` so both engines get the same core", args.cpu);
    }
    println!(
        "keys 16 B, values 100 B; C={} ; single-writer fills {} ops; timed runs {} s; reads on {} preloaded keys, {} reads per run",
        args.concurrency, args.sync_ops, args.timed_secs, args.read_keys, args.read_ops
    );
    println!();

    if args.probe_sync {
        let dir = data_dir.join("probe");
        fresh_dir(&dir)?;
        probe::run(args.cpu, &dir, args.probe_ops, &device)?;
        std::fs::remove_dir_all(&dir).ok();
    }
    let mut rows = Vec::new();
    for &w in workloads.iter().filter(|w| w.is_fill()) {
        for phase in phases_of(w, args) {
            let tag = format!("{}-c{}", w.name(), phase.concurrency);
            eprintln!("running {tag} …");
            let rdir = data_dir.join(format!("ringkv-{tag}"));
            fresh_dir(&rdir)?;
            let ringkv = ringkv_side::run_fill(args.cpu, &rdir, &phase, &device)?;
            std::fs::remove_dir_all(&rdir).ok();
            let fdir = data_dir.join(format!("fjall-{tag}"));
            fresh_dir(&fdir)?;
            let fjall = fjall_side::run_fill(&fdir, &phase, &device)?;
            std::fs::remove_dir_all(&fdir).ok();
            rows.push(Row {
                phase,
                ringkv: Some(ringkv),
                fjall: Some(fjall),
            });
        }
    }
    let read_phases: Vec<Phase> = workloads
        .iter()
        .filter(|w| !w.is_fill())
        .flat_map(|&w| phases_of(w, args))
        .collect();
    if !read_phases.is_empty() {
        eprintln!("running the read suite ({} phases) …", read_phases.len());
        let rdir = data_dir.join("ringkv-reads");
        fresh_dir(&rdir)?;
        let ringkv = ringkv_side::run_read_suite(args.cpu, &rdir, &read_phases, &device)?;
        std::fs::remove_dir_all(&rdir).ok();
        let fdir = data_dir.join("fjall-reads");
        fresh_dir(&fdir)?;
        let fjall = fjall_side::run_read_suite(&fdir, &read_phases, &device)?;
        std::fs::remove_dir_all(&fdir).ok();
        for ((phase, r), f) in read_phases.iter().zip(ringkv).zip(fjall) {
            rows.push(Row {
                phase: *phase,
                ringkv: Some(r),
                fjall: Some(f),
            });
        }
    }
    if !rows.is_empty() {
        print_table(&rows);
    }
    let wrong: u64 = rows
        .iter()
        .flat_map(|r| [&r.ringkv, &r.fjall])
        .flatten()
        .map(|m| m.recorder.wrong_reads)
        .sum();
    if wrong > 0 {
        println!("\nINVALID: {wrong} reads returned the wrong presence (see the `wrong` column)");
    }
    Ok(wrong == 0)
}

fn print_table(rows: &[Row]) {
    println!("| workload | C | ringkv ops/s | fjall ops/s | ratio | ringkv p50 / p99 µs | fjall p50 / p99 µs | ringkv syncs/op | fjall fdatasync/op | device flushes/op ringkv / fjall | wrong reads |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let (Some(r), Some(f)) = (&row.ringkv, &row.fjall) else {
            continue;
        };
        let ratio = r.ops_per_sec() / f.ops_per_sec().max(1e-9);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}× | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} | {:.3} | {:.3} / {:.3} | {} |",
            row.phase.workload.name(),
            row.phase.concurrency,
            r.ops_per_sec(),
            f.ops_per_sec(),
            ratio,
            r.quantile_us(0.5),
            r.quantile_us(0.99),
            f.quantile_us(0.5),
            f.quantile_us(0.99),
            r.per_op(r.engine_syncs),
            f.per_op(f.engine_syncs),
            r.per_op(r.device.flushes),
            f.per_op(f.device.flushes),
            r.recorder.wrong_reads + f.recorder.wrong_reads,
        );
    }
    println!();
    println!("ops per run (ringkv / fjall), bytes ringkv's engine wrote per op, device counters per op (ringkv / fjall):");
    for row in rows {
        let (Some(r), Some(f)) = (&row.ringkv, &row.fjall) else {
            continue;
        };
        println!(
            "- {} C={}: {} / {} ops in {:.2} s / {:.2} s; ringkv engine bytes/op {:.0}; device writes/op {:.2} / {:.2}; device bytes/op {:.0} / {:.0}",
            row.phase.workload.name(),
            row.phase.concurrency,
            r.recorder.ops,
            f.recorder.ops,
            r.elapsed.as_secs_f64(),
            f.elapsed.as_secs_f64(),
            r.per_op(r.engine_bytes_written.unwrap_or(0)),
            r.per_op(r.device.writes),
            f.per_op(f.device.writes),
            r.per_op(r.device.bytes_written),
            f.per_op(f.device.bytes_written),
        );
    }
}

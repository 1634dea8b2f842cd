//! Measurements: HdrHistograms per operation type (one set per executor, merged at the
//! end), error counters, the per-second live line, the final table, the JSON report
//! and the `.hgrm` percentile distribution text.
//!
//! All latencies are recorded in microseconds (1 µs .. 1 h, 3 significant digits).
//! Two histograms per operation type: `corrected` (completion − intended start, which in
//! open loop includes time spent waiting behind a slow server: coordinated omission
//! corrected as wrk2 does) and `raw` (completion − actual send: the service time). In
//! closed loop both are the same measurement. This module never measures time itself:
//! the engine hands it durations.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::target::ErrorKind;
use crate::workload::{OpKind, WorkloadSpec};

pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 3_600_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram with the run-wide bounds.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e:?}"),
    }
}

/// Record a latency, clamped into the histogram's range (a sub-µs op counts as 1 µs;
/// anything beyond an hour as an hour).
pub fn record_us(h: &mut Histogram<u64>, latency_us: u64) {
    h.saturating_record(latency_us.clamp(LOWEST_US, HIGHEST_US));
}

/// Merge `from` into `into`. Same bounds everywhere, so addition cannot fail.
pub fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if let Err(e) = into.add(from) {
        unreachable!("histograms share bounds: {e:?}");
    }
}

/// Error counters indexed by [`ErrorKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; 5]);

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        self.0[kind.index()] += 1;
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counts by name, for JSON.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        ErrorKind::ALL
            .iter()
            .filter(|k| self.get(**k) > 0)
            .map(|k| (k.name().to_string(), self.get(*k)))
            .collect()
    }

    /// `timeout 3, overloaded 1`, or `0`.
    pub fn describe(&self) -> String {
        if self.total() == 0 {
            return "0".into();
        }
        ErrorKind::ALL
            .iter()
            .filter(|k| self.get(**k) > 0)
            .map(|k| format!("{} {}", k.name(), self.get(*k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Everything measured for one operation type.
#[derive(Clone, Debug)]
pub struct OpStats {
    pub corrected: Histogram<u64>,
    pub raw: Histogram<u64>,
    pub errors: ErrorCounts,
    /// Reads that found no value (successful ops, also in the histograms).
    pub not_found: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            corrected: new_histogram(),
            raw: new_histogram(),
            errors: ErrorCounts::default(),
            not_found: 0,
        }
    }
}

impl OpStats {
    pub fn merge(&mut self, other: &OpStats) {
        merge_histogram(&mut self.corrected, &other.corrected);
        merge_histogram(&mut self.raw, &other.raw);
        self.errors.merge(&other.errors);
        self.not_found += other.not_found;
    }

    pub fn count(&self) -> u64 {
        self.raw.len()
    }
}

/// One executor's (or, merged, the run's) measurements, by operation type.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub ops: [OpStats; 4],
}

impl RunStats {
    pub fn op(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind.index()]
    }

    pub fn op_mut(&mut self, kind: OpKind) -> &mut OpStats {
        &mut self.ops[kind.index()]
    }

    pub fn merge(&mut self, other: &RunStats) {
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            a.merge(b);
        }
    }

    /// All operation types together.
    pub fn total(&self) -> OpStats {
        let mut all = OpStats::default();
        for op in &self.ops {
            all.merge(op);
        }
        all
    }
}

/// One point of a percentile curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// In [0, 1].
    pub quantile: f64,
    pub value_us: u64,
}

/// Latency summary of one histogram, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
    /// The percentile curve (HdrHistogram quantile iteration, 5 ticks per half
    /// distance), used by the plot.
    pub percentiles: Vec<PercentilePoint>,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        let percentiles = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(5)
                .map(|v| PercentilePoint {
                    quantile: v.quantile_iterated_to(),
                    value_us: v.value_iterated_to(),
                })
                .collect()
        };
        LatencySummary {
            count: h.len(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p99_9_us: h.value_at_quantile(0.999),
            p99_99_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            percentiles,
        }
    }
}

/// One operation type's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// `read`, `update`, `insert`, `read-modify-write`, or `all`.
    pub op: String,
    /// Successful operations measured (after warmup).
    pub count: u64,
    pub ops_per_second: f64,
    pub not_found: u64,
    pub errors: BTreeMap<String, u64>,
    /// Completion − intended start (open loop); equal to `raw` in closed loop.
    pub corrected: LatencySummary,
    /// Completion − actual send.
    pub raw: LatencySummary,
}

impl OpReport {
    pub fn of(name: &str, stats: &OpStats, measured_seconds: f64) -> OpReport {
        OpReport {
            op: name.to_string(),
            count: stats.count(),
            ops_per_second: rate(stats.count(), measured_seconds),
            not_found: stats.not_found,
            errors: stats.errors.to_map(),
            corrected: LatencySummary::of(&stats.corrected),
            raw: LatencySummary::of(&stats.raw),
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The settings of a run, as recorded in the JSON report. The auth token is never
/// recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub hosts: Vec<String>,
    pub workload: WorkloadSpec,
    pub keys: u64,
    pub value_size_bytes: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub threads: usize,
    pub duration_seconds: Option<f64>,
    pub ops: Option<u64>,
    pub warmup_seconds: f64,
    pub load: u64,
    pub rate_ops_per_second: Option<f64>,
    pub consistency: Option<String>,
    pub verify: bool,
    pub seed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Keys written by the load phase (acknowledged).
    pub keys_written: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub ops_per_second: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionReport {
    pub disconnects: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    /// Requests moved to another node after a connection failure (each move once);
    /// the op itself counts as a success if a later node answered.
    #[serde(default)]
    pub failovers: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub reads_checked: u64,
    pub violations: u64,
}

/// The JSON report (`--json FILE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// argv, with any token value replaced by `<redacted>`.
    pub command_line: Vec<String>,
    pub settings: Settings,
    pub latency_unit: String,
    pub open_loop: bool,
    /// Wall time of the measured phase (warmup excluded), seconds.
    pub measured_seconds: f64,
    pub ops: Vec<OpReport>,
    pub total: OpReport,
    pub load: Option<LoadReport>,
    pub connections: ConnectionReport,
    /// Open loop: scheduled operations never sent because the run ended first.
    pub missed_schedule: u64,
    pub verify: Option<VerifyReport>,
}

/// Replace token values in argv so reports can be shared.
pub fn redact_command_line(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
        } else if arg == "--token" {
            out.push(arg.clone());
            hide_next = true;
        } else if arg.starts_with("--token=") {
            out.push("--token=<redacted>".to_string());
        } else {
            out.push(arg.clone());
        }
    }
    out
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The final table. One row per operation type with any activity, then `all`.
/// Latencies in milliseconds.
pub fn format_table(rows: &[OpReport], total: &OpReport, corrected: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  errors",
        "op", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "p99.99 ms", "max ms"
    );
    for r in rows.iter().chain(std::iter::once(total)) {
        let l = if corrected { &r.corrected } else { &r.raw };
        let errors = if r.errors.is_empty() {
            "0".to_string()
        } else {
            r.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>11.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            r.op,
            r.count,
            r.ops_per_second,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p99_9_us),
            ms(l.p99_99_us),
            ms(l.max_us),
            errors
        );
    }
    out
}

/// HdrHistogram's percentile distribution text (`.hgrm`, as written by the Java
/// `outputPercentileDistribution` and wrk2), values in milliseconds.
pub fn format_hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0; // µs → ms
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE)
    };
    // Sub-buckets: the power of two ≥ 2·10^digits (HdrHistogram's layout).
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
    out
}

/// One executor's numbers for one second of the run.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Seconds since the run started (1 = the first second).
    pub second: u64,
    pub ops: u64,
    pub errors: ErrorCounts,
    /// All op types, corrected latency.
    pub latency: Histogram<u64>,
    pub warmup: bool,
}

/// Combines executors' per-second intervals into live lines. Pure: returns the lines
/// that became complete; the caller prints them.
pub struct LiveAggregator {
    executors_alive: usize,
    pending: BTreeMap<u64, (usize, Interval)>,
}

impl LiveAggregator {
    pub fn new(executors: usize) -> Self {
        LiveAggregator {
            executors_alive: executors,
            pending: BTreeMap::new(),
        }
    }

    pub fn on_interval(&mut self, interval: Interval) -> Vec<String> {
        match self.pending.get_mut(&interval.second) {
            Some((n, acc)) => {
                *n += 1;
                acc.ops += interval.ops;
                acc.errors.merge(&interval.errors);
                merge_histogram(&mut acc.latency, &interval.latency);
                acc.warmup |= interval.warmup;
            }
            None => {
                self.pending.insert(interval.second, (1, interval));
            }
        }
        self.drain(false)
    }

    pub fn on_executor_done(&mut self) -> Vec<String> {
        self.executors_alive = self.executors_alive.saturating_sub(1);
        self.drain(false)
    }

    /// Emit everything still pending (end of run).
    pub fn finish(&mut self) -> Vec<String> {
        self.drain(true)
    }

    fn drain(&mut self, all: bool) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            let (n, _) = entry.get();
            if !all && *n < self.executors_alive {
                break;
            }
            let (_, i) = entry.remove();
            lines.push(format_live(&i));
        }
        lines
    }
}

/// `[  5s] 123456 ops/s  p50 0.123 ms  p99 1.234 ms  errors 0`
pub fn format_live(i: &Interval) -> String {
    format!(
        "[{:>4}s] {:>9} ops/s  p50 {:>8} ms  p99 {:>8} ms  errors {}{}",
        i.second,
        i.ops,
        ms(i.latency.value_at_quantile(0.5)),
        ms(i.latency.value_at_quantile(0.99)),
        i.errors.describe(),
        if i.warmup { "  (warmup)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_tokens() {
        let args: Vec<String> = ["x", "--token", "secret", "--token=s2", "--keys", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = redact_command_line(&args);
        assert!(!out.iter().any(|a| a.contains("secret") || a.contains("s2")));
        assert_eq!(out.last().map(String::as_str), Some("5"));
    }

    #[test]
    fn live_lines_wait_for_every_executor() {
        let mut agg = LiveAggregator::new(2);
        let interval = |second| Interval {
            second,
            ops: 10,
            errors: ErrorCounts::default(),
            latency: new_histogram(),
            warmup: false,
        };
        assert!(agg.on_interval(interval(1)).is_empty());
        let lines = agg.on_interval(interval(1));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("20 ops/s"), "{}", lines[0]);
        assert!(agg.on_interval(interval(2)).is_empty());
        assert_eq!(agg.on_executor_done().len(), 1);
    }
}

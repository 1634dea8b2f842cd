//! Per-operation latency histograms, error counts and the summary table.
//!
//! Owns what is recorded and how it is printed; never does I/O itself beyond returning
//! strings. The table has the same columns and widths as ringkv-loadgen's final table
//! (`loadgen/src/stats.rs` `format_table`), so the two can be read side by side: op,
//! count, ops/s, p50/p90/p99/p99.9/p99.99/max in milliseconds, errors.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;

/// Highest latency the histograms hold, in microseconds (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one operation type did in the measured window.
#[derive(Clone, Debug)]
pub struct OpStats {
    pub name: &'static str,
    /// Latency of every completed request (connect to reply), microseconds; failures
    /// included, so the tail shows them.
    pub latency_us: Histogram<u64>,
    /// Reads of a key no replica holds (dbeel's `key_not_found`): successes.
    pub misses: u64,
    /// Failures by name: dbeel's error kind or the client's I/O error kind.
    pub errors: BTreeMap<String, u64>,
}

impl OpStats {
    pub fn new(name: &'static str) -> OpStats {
        OpStats {
            name,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("1 us ..= 60 s at 3 significant digits is a valid histogram"),
            misses: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, latency_us: u64) {
        self.latency_us
            .saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
    }

    pub fn error(&mut self, name: &str) {
        *self.errors.entry(name.to_string()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` into `self` (for the `all` row).
    pub fn absorb(&mut self, other: &OpStats) {
        // Same bounds on both sides: the add cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.misses += other.misses;
        for (name, count) in &other.errors {
            *self.errors.entry(name.clone()).or_default() += count;
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The header and one row per op, then `all`; `elapsed_s` is the measured window.
pub fn format_table(ops: &[&OpStats], elapsed_s: f64) -> String {
    let mut all = OpStats::new("all");
    for op in ops {
        all.absorb(op);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  errors",
        "op", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "p99.99 ms", "max ms"
    );
    for op in ops.iter().copied().chain(std::iter::once(&all)) {
        let h = &op.latency_us;
        let errors = if op.errors.is_empty() {
            "0".to_string()
        } else {
            op.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ops_per_s = if elapsed_s > 0.0 {
            h.len() as f64 / elapsed_s
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>11.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            op.name,
            h.len(),
            ops_per_s,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.value_at_quantile(0.9999)),
            ms(h.max()),
            errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn table_has_header_rows_and_all() {
        let mut read = OpStats::new("read");
        let mut update = OpStats::new("update");
        for us in 1..=1000 {
            read.record(us);
            update.record(us * 2);
        }
        update.error("timeout");
        let t = format_table(&[&read, &update], 2.0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("op "));
        let all: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(all[0], "all");
        assert_eq!(all[1], "2000");
        assert_eq!(all[2], "1000.0");
        assert_eq!(all[9], "timeout");
        assert_eq!(all[10], "1");
        let read_row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(read_row[3], "0.500");
        assert_eq!(read_row[9], "0");
    }
}

//! Histogram merge, percentile extraction and the .hgrm text, on known distributions.
#![allow(clippy::unwrap_used)]

use ringkv_loadgen::stats::{
    format_hgrm, merge_histogram, new_histogram, record_us, LatencySummary, OpStats, RunStats,
};
use ringkv_loadgen::workload::OpKind;

/// 3 significant digits: a reported value is within 0.1% above the true one.
fn assert_near(got: u64, want: u64) {
    let tolerance = want / 1000 + 1;
    assert!(
        got >= want && got <= want + tolerance,
        "got {got}, want {want} (+{tolerance})"
    );
}

#[test]
fn merged_halves_give_the_percentiles_of_the_whole() {
    // 1..=100_000 µs, split odd/even over two "executors".
    let mut a = new_histogram();
    let mut b = new_histogram();
    for v in 1..=100_000u64 {
        record_us(if v % 2 == 0 { &mut a } else { &mut b }, v);
    }
    merge_histogram(&mut a, &b);
    assert_eq!(a.len(), 100_000);
    let s = LatencySummary::of(&a);
    assert_near(s.p50_us, 50_000);
    assert_near(s.p90_us, 90_000);
    assert_near(s.p99_us, 99_000);
    assert_near(s.p99_9_us, 99_900);
    assert_near(s.p99_99_us, 99_990);
    assert_near(s.max_us, 100_000);
    assert!((s.mean_us - 50_000.5).abs() < 50.0, "{}", s.mean_us);
    // The percentile curve is monotone and ends at the max.
    assert!(s
        .percentiles
        .windows(2)
        .all(|w| w[0].quantile <= w[1].quantile && w[0].value_us <= w[1].value_us));
    assert_eq!(s.percentiles.last().unwrap().quantile, 1.0);
}

#[test]
fn a_bimodal_distribution_shows_its_tail_only_above_its_weight() {
    // 99% at 100 µs, 1% at 50 ms: p99 is still fast, p99.9 is the slow mode.
    let mut h = new_histogram();
    for _ in 0..9_900 {
        record_us(&mut h, 100);
    }
    for _ in 0..100 {
        record_us(&mut h, 50_000);
    }
    let s = LatencySummary::of(&h);
    assert_near(s.p50_us, 100);
    assert_near(s.p99_us, 100);
    assert_near(s.p99_9_us, 50_000);
}

#[test]
fn out_of_range_values_are_clamped_not_dropped() {
    let mut h = new_histogram();
    record_us(&mut h, 0);
    record_us(&mut h, u64::MAX);
    assert_eq!(h.len(), 2);
    assert_eq!(h.min(), 1);
}

#[test]
fn run_stats_merge_per_op_type_and_total() {
    let mut one = RunStats::default();
    let mut two = RunStats::default();
    record_us(&mut one.op_mut(OpKind::Read).raw, 10);
    record_us(&mut two.op_mut(OpKind::Read).raw, 20);
    record_us(&mut two.op_mut(OpKind::Update).raw, 30);
    two.op_mut(OpKind::Read).not_found = 3;
    one.merge(&two);
    assert_eq!(one.op(OpKind::Read).count(), 2);
    assert_eq!(one.op(OpKind::Update).count(), 1);
    assert_eq!(one.op(OpKind::Read).not_found, 3);
    let total: OpStats = one.total();
    assert_eq!(total.count(), 3);
    assert_near(total.raw.max(), 30);
}

#[test]
fn hgrm_text_has_the_hdrhistogram_layout() {
    let mut h = new_histogram();
    for v in 1..=1000u64 {
        record_us(&mut h, v * 1000); // 1..1000 ms
    }
    let text = format_hgrm(&h);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    assert_eq!(lines.next(), Some(""));
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    // Values are in ms; counts are cumulative and end at the total.
    let last = rows.last().unwrap();
    assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p) column");
    assert_eq!(last[1], 1.0);
    assert_eq!(last[2], 1000.0);
    assert!((last[0] - 1000.0).abs() <= 1.0, "{}", last[0]);
    assert!(rows.windows(2).all(|w| w[0][2] <= w[1][2]));
    let median = rows.iter().find(|r| r[1] >= 0.5).unwrap();
    assert!((median[0] - 500.0).abs() <= 1.0, "{median:?}");
    assert!(
        text.contains("#[Max     =     1000.") || text.contains("#[Max     =      1000."),
        "{text}"
    );
    assert!(text.contains("Total count    =         1000]"), "{text}");
}

//! The engine against FakeTarget: open-loop correction, op accounting, reconnects,
//! verify mode, and the JSON report round trip.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ringkv::protocol::types::Consistency;
use ringkv_loadgen::cli::build_report;
use ringkv_loadgen::engine::{self, Bound, EngineError, RunConfig};
use ringkv_loadgen::stats::{LatencySummary, Report, Settings};
use ringkv_loadgen::target::{ConnectOptions, FakeConfig, FakeTarget};
use ringkv_loadgen::workload::{Distribution, OpKind, WorkloadSpec};

fn config(workload: WorkloadSpec, ops: u64) -> RunConfig {
    RunConfig {
        hosts: vec!["fake".into()],
        options: ConnectOptions::default(),
        threads: 1,
        connections: 1,
        pipeline: 1,
        bound: Bound::Ops(ops),
        warmup: Duration::ZERO,
        load: 0,
        keys: 100,
        value_size_bytes: 32,
        rate_ops_per_s: None,
        workload,
        verify: false,
        seed: 5,
    }
}

fn reads_only() -> WorkloadSpec {
    WorkloadSpec::custom(1.0, Distribution::Uniform).unwrap()
}

fn quiet(_: &str) {}

#[test]
fn open_loop_corrected_latency_includes_a_stall_that_raw_latency_hides() {
    const STALL: Duration = Duration::from_millis(100);
    let fake = FakeTarget::new(FakeConfig::default());
    fake.inject_stall(200, STALL);
    let mut c = config(reads_only(), 1000);
    c.rate_ops_per_s = Some(1000.0);
    let outcome = engine::run(fake.clone(), &c, &mut quiet).unwrap();
    let read = outcome.stats.op(OpKind::Read);
    assert_eq!(read.count(), 1000);
    let stall_us = STALL.as_micros() as u64;
    let corrected = LatencySummary::of(&read.corrected);
    let raw = LatencySummary::of(&read.raw);
    // The stalled request itself is in both.
    assert!(corrected.max_us >= stall_us, "{corrected:?}");
    assert!(raw.max_us >= stall_us);
    // Only one raw sample is slow; ~100 requests were due during the stall, so the
    // corrected tail is dominated by it.
    assert!(raw.p99_us < stall_us, "raw p99 {} µs", raw.p99_us);
    assert!(
        corrected.p99_us >= stall_us / 2,
        "corrected p99 {} µs",
        corrected.p99_us
    );
    assert!(corrected.p99_us > raw.p99_us);
    assert_eq!(outcome.missed_schedule, 0);
}

#[test]
fn closed_loop_corrected_equals_raw_and_ops_bound_is_exact_across_threads() {
    let fake = FakeTarget::new(FakeConfig::default());
    let mut c = config(WorkloadSpec::preset("a").unwrap(), 3000);
    c.threads = 2;
    c.connections = 4;
    c.pipeline = 3;
    c.keys = 50;
    c.load = 50;
    let outcome = engine::run(fake.clone(), &c, &mut quiet).unwrap();
    let total = outcome.stats.total();
    assert_eq!(total.count() + total.errors.total(), 3000);
    assert_eq!(total.errors.total(), 0);
    assert_eq!(total.corrected, total.raw);
    assert!(outcome.stats.op(OpKind::Read).count() > 0);
    assert!(outcome.stats.op(OpKind::Update).count() > 0);
    // Loaded keys are found.
    assert_eq!(outcome.stats.op(OpKind::Read).not_found, 0);
    let load = outcome.load.unwrap();
    assert_eq!(load.keys_written, 50);
    assert_eq!(fake.ops(), 3000 + 50);
    assert_eq!(fake.connects(), 4);
}

#[test]
fn workload_f_times_read_modify_write_as_its_own_op() {
    let fake = FakeTarget::new(FakeConfig::default());
    let c = config(WorkloadSpec::preset("f").unwrap(), 1000);
    let outcome = engine::run(fake.clone(), &c, &mut quiet).unwrap();
    let rmw = outcome.stats.op(OpKind::ReadModifyWrite).count();
    let reads = outcome.stats.op(OpKind::Read).count();
    assert!(rmw > 0 && reads > 0);
    assert_eq!(rmw + reads, 1000);
    // Each RMW is a get and a put at the target.
    assert_eq!(fake.ops(), reads + 2 * rmw);
}

#[test]
fn a_dropped_connection_is_counted_and_reconnected() {
    let fake = FakeTarget::new(FakeConfig::default());
    fake.inject_disconnect(50);
    let mut c = config(reads_only(), 500);
    c.pipeline = 2;
    let outcome = engine::run(fake.clone(), &c, &mut quiet).unwrap();
    let read = outcome.stats.op(OpKind::Read);
    assert!(read.errors.total() >= 1);
    assert_eq!(read.count() + read.errors.total(), 500);
    assert_eq!(outcome.connections.disconnects, 1);
    assert_eq!(outcome.connections.reconnects, 1);
    assert_eq!(fake.connects(), 2);
}

#[test]
fn a_failed_over_op_is_a_success_counted_as_a_failover_not_a_disconnect() {
    let fake = FakeTarget::new(FakeConfig::default());
    fake.inject_failover(40);
    let mut c = config(
        WorkloadSpec::custom(0.5, Distribution::Uniform).unwrap(),
        300,
    );
    c.verify = true;
    let outcome = engine::run(fake.clone(), &c, &mut quiet).unwrap();
    let total: u64 = [OpKind::Read, OpKind::Update]
        .iter()
        .map(|k| outcome.stats.op(*k).count())
        .sum();
    let errors: u64 = [OpKind::Read, OpKind::Update]
        .iter()
        .map(|k| outcome.stats.op(*k).errors.total())
        .sum();
    assert_eq!((total, errors), (300, 0));
    assert_eq!(outcome.connections.failovers, 1);
    assert_eq!(
        (
            outcome.connections.disconnects,
            outcome.connections.reconnects
        ),
        (0, 0)
    );
    assert_eq!(fake.connects(), 1);
    assert_eq!(outcome.verify.unwrap().violations, 0);
}

#[test]
fn refused_connection_is_an_error_and_options_are_passed_through() {
    let fake = FakeTarget::new(FakeConfig::default());
    fake.refuse_connections(true);
    let c = config(reads_only(), 10);
    match engine::run(fake.clone(), &c, &mut quiet) {
        Err(EngineError::Connect(why)) => assert!(why.contains("refused"), "{why}"),
        other => panic!("expected a connect error, got {other:?}"),
    }

    fake.refuse_connections(false);
    let mut c = config(reads_only(), 10);
    c.options = ConnectOptions {
        consistency: Some(Consistency::Quorum),
        token: Some("t0k".into()),
        attempt_timeout: Some(std::time::Duration::from_millis(750)),
    };
    engine::run(fake.clone(), &c, &mut quiet).unwrap();
    assert_eq!(fake.last_options(), Some(c.options.clone()));
}

#[test]
fn verify_catches_a_planted_stale_read() {
    let fake = FakeTarget::new(FakeConfig {
        stale: true,
        ..FakeConfig::default()
    });
    let mut c = config(WorkloadSpec::preset("a").unwrap(), 2000);
    c.verify = true;
    c.keys = 20;
    c.load = 20;
    let outcome = engine::run(fake, &c, &mut quiet).unwrap();
    let v = outcome.verify.unwrap();
    assert!(v.violations > 0, "{v:?}");
    let first = &outcome.violation_sample[0];
    assert!(first.key.starts_with(b"user"));
    assert!(first.expected.is_some());
    assert_eq!(first.got.len(), 1);
    assert_ne!(first.got[0], first.expected);
    assert!(first.to_string().contains("stale"), "{first}");
}

#[test]
fn verify_passes_an_honest_store_under_concurrency() {
    let fake = FakeTarget::new(FakeConfig {
        delay: Duration::from_micros(50),
        ..FakeConfig::default()
    });
    let mut c = config(WorkloadSpec::preset("a").unwrap(), 3000);
    c.verify = true;
    c.keys = 10; // few keys: many overlapping reads and writes per key
    c.load = 10;
    c.threads = 2;
    c.connections = 2;
    c.pipeline = 4;
    let outcome = engine::run(fake, &c, &mut quiet).unwrap();
    let v = outcome.verify.unwrap();
    assert!(v.reads_checked > 1000);
    assert_eq!(v.violations, 0, "{:?}", outcome.violation_sample.first());
}

#[test]
fn json_report_round_trips() {
    let fake = FakeTarget::new(FakeConfig::default());
    let mut c = config(WorkloadSpec::preset("b").unwrap(), 500);
    c.rate_ops_per_s = Some(5000.0);
    let outcome = engine::run(fake, &c, &mut quiet).unwrap();
    let settings = Settings {
        hosts: c.hosts.clone(),
        workload: c.workload.clone(),
        keys: c.keys,
        value_size_bytes: c.value_size_bytes,
        connections: c.connections,
        pipeline: c.pipeline,
        threads: c.threads,
        duration_seconds: None,
        ops: Some(500),
        warmup_seconds: 0.0,
        load: 0,
        rate_ops_per_second: c.rate_ops_per_s,
        consistency: None,
        verify: false,
        seed: c.seed,
    };
    let argv: Vec<String> = ["ringkv-loadgen", "--token", "secret", "--ops", "500"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let report = build_report(&argv, &settings, &c, &outcome);
    assert!(report.open_loop);
    assert_eq!(report.total.count, 500);
    let text = serde_json::to_string_pretty(&report).unwrap();
    assert!(!text.contains("secret"));
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
    assert!(!back.total.corrected.percentiles.is_empty());
}

//! What every engine is asked to do: the workloads, their keys and values, and the
//! measurement each run returns.
//!
//! Every operation is a pure function of its index in the run ([`plan`]), so both
//! engines see exactly the same keys, values and read/write choices; only the
//! interleaving of concurrent workers differs. This module must never touch an engine
//! or a clock other than through the [`Recorder`] it hands out.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Key length of every operation, in bytes (the issue fixes 16).
pub const KEY_BYTES: usize = 16;
/// Value length of every write, in bytes (the issue fixes 100).
pub const VALUE_BYTES: usize = 100;
/// Fixed first half of every key; the second half is a big-endian `u64`, so key order
/// is numeric order and sequential fills really are sequential.
const KEY_PREFIX: &[u8; 8] = b"ringkvbn";

/// The shape of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Write keys 0, 1, 2, … in order into an empty store.
    FillSeq,
    /// Write distinct keys in a scrambled order into an empty store.
    FillRandom,
    /// Read keys that exist (the preloaded even indices).
    ReadRandom,
    /// Read keys that do not exist but lie inside the stored key range (odd indices),
    /// so key-range checks cannot skip them and the bloom filter has to.
    ReadMissing,
    /// 50 % reads of existing keys, 50 % durable overwrites of existing keys.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::FillSeq => "fillseq",
            Workload::FillRandom => "fillrandom",
            Workload::ReadRandom => "readrandom",
            Workload::ReadMissing => "readmissing",
            Workload::Mixed => "mixed",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        [
            Workload::FillSeq,
            Workload::FillRandom,
            Workload::ReadRandom,
            Workload::ReadMissing,
            Workload::Mixed,
        ]
        .into_iter()
        .find(|w| w.name() == name)
    }

    /// Fills start from an empty store; the others run on the preloaded one.
    pub fn is_fill(self) -> bool {
        matches!(self, Workload::FillSeq | Workload::FillRandom)
    }
}

/// When a run stops handing out new operations.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    Ops(u64),
    Time(Duration),
}

/// One measured run: a workload at a concurrency with a limit.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub workload: Workload,
    /// Concurrent workers: glommio tasks for ringkv, OS threads for fjall.
    pub concurrency: usize,
    pub limit: Limit,
    /// Number of preloaded keys (read and mixed workloads); 0 for fills.
    pub preloaded_keys: u64,
}

impl Phase {
    /// Whether the operation with index `started` may still start at `now`.
    pub fn admits(&self, started: u64, began: Instant, now: Instant) -> bool {
        match self.limit {
            Limit::Ops(n) => started < n,
            Limit::Time(d) => now.duration_since(began) < d,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write,
    /// A read whose key was preloaded: it must be found.
    ReadHit,
    /// A read whose key was never written: it must not be found.
    ReadMiss,
}

/// One operation: what to do and on which key.
pub struct Op {
    pub kind: OpKind,
    pub key: [u8; KEY_BYTES],
}

/// splitmix64: a bijection on `u64` with good mixing, used both as the scrambled key
/// order of fillrandom (distinct inputs give distinct keys) and as the op-level dice.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn key_of(index: u64) -> [u8; KEY_BYTES] {
    let mut key = [0u8; KEY_BYTES];
    key[..8].copy_from_slice(KEY_PREFIX);
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Key index of the `i`-th preloaded key (even indices; odd ones stay absent).
pub fn preloaded_index(i: u64) -> u64 {
    2 * i
}

/// The operation with index `i` of `phase`.
pub fn plan(phase: &Phase, i: u64) -> Op {
    // Independent dice per workload so that mixed does not read exactly what it wrote.
    let dice = splitmix64(i ^ 0x5eed_0000_0000_0000 ^ phase.workload as u64);
    let pick = |d: u64| {
        assert!(
            phase.preloaded_keys > 0,
            "{} needs preloaded keys",
            phase.workload.name()
        );
        d % phase.preloaded_keys
    };
    match phase.workload {
        Workload::FillSeq => Op {
            kind: OpKind::Write,
            key: key_of(i),
        },
        Workload::FillRandom => Op {
            kind: OpKind::Write,
            key: key_of(splitmix64(i)),
        },
        Workload::ReadRandom => Op {
            kind: OpKind::ReadHit,
            key: key_of(preloaded_index(pick(dice))),
        },
        Workload::ReadMissing => Op {
            kind: OpKind::ReadMiss,
            key: key_of(preloaded_index(pick(dice)) + 1),
        },
        Workload::Mixed => {
            let key = key_of(preloaded_index(pick(dice >> 1)));
            let kind = if dice & 1 == 0 {
                OpKind::Write
            } else {
                OpKind::ReadHit
            };
            Op { kind, key }
        }
    }
}

/// The value written by the operation with index `i`: 100 pseudo-random bytes, so that
/// block compression (fjall compresses deeper levels with LZ4) gains nothing from
/// repeated values.
pub fn value_of(i: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_BYTES);
    let mut state = i ^ 0x00c0_ffee_0000_0000;
    while value.len() < VALUE_BYTES {
        state = splitmix64(state);
        let take = (VALUE_BYTES - value.len()).min(8);
        value.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    value
}

/// Per-operation latency in nanoseconds, up to one minute.
pub fn new_histogram() -> Histogram<u64> {
    #[expect(clippy::expect_used, reason = "constant, valid bounds")]
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Collects what the workers of one run did.
pub struct Recorder {
    pub latency_ns: Histogram<u64>,
    pub ops: u64,
    pub reads: u64,
    /// Reads whose result disagreed with the plan (hit expected but missing, or the
    /// reverse). Anything but 0 means the engine is wrong and the run is void.
    pub wrong_reads: u64,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            latency_ns: new_histogram(),
            ops: 0,
            reads: 0,
            wrong_reads: 0,
        }
    }

    /// Record one finished operation; `found` is the read result (ignored for writes).
    pub fn record(&mut self, kind: OpKind, found: bool, took: Duration) {
        self.ops += 1;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.saturating_record(ns.max(1));
        match kind {
            OpKind::Write => {}
            OpKind::ReadHit => {
                self.reads += 1;
                self.wrong_reads += u64::from(!found);
            }
            OpKind::ReadMiss => {
                self.reads += 1;
                self.wrong_reads += u64::from(found);
            }
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_ns.add(&other.latency_ns).ok();
        self.ops += other.ops;
        self.reads += other.reads;
        self.wrong_reads += other.wrong_reads;
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// The outcome of one phase on one engine.
pub struct Measurement {
    pub recorder: Recorder,
    pub elapsed: Duration,
    /// fdatasync calls the engine made during the phase, as counted by the harness
    /// (ringkv: every `DiskFile::sync` through a counting `Disk`; fjall: every
    /// `Database::persist(SyncData)` call, each of which is one `fdatasync`).
    pub engine_syncs: u64,
    /// Bytes the engine handed to the file system (ringkv only, through the counting
    /// `Disk`; `None` where the harness cannot see it).
    pub engine_bytes_written: Option<u64>,
    /// Block-device counters over the phase (whole device: other processes add noise).
    pub device: crate::diskstats::DeviceDelta,
}

impl Measurement {
    pub fn ops_per_sec(&self) -> f64 {
        self.recorder.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn per_op(&self, count: u64) -> f64 {
        count as f64 / (self.recorder.ops.max(1)) as f64
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        self.recorder.latency_ns.value_at_quantile(q) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fillrandom_keys_are_distinct_and_reads_stay_in_range() {
        let fill = Phase {
            workload: Workload::FillRandom,
            concurrency: 1,
            limit: Limit::Ops(10),
            preloaded_keys: 0,
        };
        let mut keys: Vec<_> = (0..10_000).map(|i| plan(&fill, i).key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 10_000);

        let read = Phase {
            workload: Workload::ReadMissing,
            concurrency: 1,
            limit: Limit::Ops(10),
            preloaded_keys: 100,
        };
        for i in 0..1000 {
            let op = plan(&read, i);
            let index = u64::from_be_bytes(op.key[8..].try_into().unwrap());
            assert!(
                index % 2 == 1 && index < 200,
                "missing key {index} must be odd and inside the range"
            );
        }
        assert_eq!(value_of(7).len(), VALUE_BYTES);
        assert_ne!(value_of(7), value_of(8));
    }
}

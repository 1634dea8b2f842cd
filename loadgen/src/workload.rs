//! What to ask for: YCSB core workload presets, key choosers and key/value shapes.
//!
//! Everything here is pure and deterministic given a seed: a [`Rng`] (SplitMix64), the
//! Zipfian generator of Gray et al. ("Quickly generating billion-record synthetic
//! databases", SIGMOD 1994, as used by YCSB) with theta 0.99, a scrambled Zipfian that
//! spreads popular items over the key space through an exact permutation, and YCSB's
//! "latest" distribution. This module never does I/O and never reads the clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// YCSB's skew constant.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// Width of the decimal part of a key: `user` + 12 digits = 16 bytes, always.
pub const KEY_DIGITS: usize = 12;
pub const KEY_PREFIX: &str = "user";
pub const KEY_BYTES: usize = KEY_PREFIX.len() + KEY_DIGITS;

/// Largest key number that fits the fixed width.
pub const KEY_ID_MAX: u64 = 999_999_999_999;

/// The fixed-width key for a key number: `user000000001234`.
pub fn key_for(id: u64) -> Vec<u8> {
    write_key(id, &mut [0; KEY_BYTES]).to_vec()
}

/// [`key_for`] without allocating: writes the key into `buf` and returns it. On the
/// hot path of every request, so the digits are written by hand rather than through
/// `format!` (same bytes: the prefix, then `id` in decimal, zero-padded to
/// [`KEY_DIGITS`]).
pub fn write_key(id: u64, buf: &mut [u8; KEY_BYTES]) -> &[u8] {
    assert!(id <= KEY_ID_MAX, "key id {id} exceeds the fixed key width");
    buf[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX.as_bytes());
    let mut rest = id;
    for digit in buf[KEY_PREFIX.len()..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    &buf[..]
}

/// SplitMix64: tiny, fast, good enough for load generation, and stable forever (a
/// recorded seed reproduces a run's key sequence across versions of this tool).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        // Multiply-shift: bias is below 2^-64 * n, irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Zipfian over ranks `0..items` (rank 0 most popular), P(rank i) ∝ 1/(i+1)^theta.
/// The item count may grow (the "latest" distribution needs it); zeta is extended
/// incrementally so growth by one costs one term.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
}

fn zeta_terms(from: u64, to: u64, theta: f64) -> f64 {
    // Sum of 1/i^theta for i in (from, to]; summed smallest-first for accuracy.
    let mut sum = 0.0;
    let mut i = to;
    while i > from {
        sum += 1.0 / (i as f64).powf(theta);
        i -= 1;
    }
    sum
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Self {
        assert!(items >= 1, "zipfian needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zeta2 = zeta_terms(0, 2, theta);
        let zetan = zeta_terms(0, items, theta);
        let mut z = Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2,
            zetan,
            eta: 0.0,
        };
        z.eta = z.compute_eta();
        z
    }

    fn compute_eta(&self) -> f64 {
        let n = self.items as f64;
        (1.0 - (2.0 / n).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    pub fn items(&self) -> u64 {
        self.items
    }

    /// zeta(items, theta): the normaliser, so P(rank 0) = 1 / zeta.
    pub fn zeta(&self) -> f64 {
        self.zetan
    }

    /// Extend to `items` (never shrinks).
    pub fn grow_to(&mut self, items: u64) {
        if items > self.items {
            self.zetan += zeta_terms(self.items, items, self.theta);
            self.items = items;
            self.eta = self.compute_eta();
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if self.items >= 2 && uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// An exact permutation of `0..n`: a bijective mixer on the next power of two, with
/// cycle walking until the result falls below `n` (fewer than two steps on average).
/// Unlike YCSB's hash-mod-n, no two ranks share a key, so rank frequencies survive.
#[derive(Clone, Debug)]
pub struct Permutation {
    n: u64,
    bits: u32,
    mask: u64,
    seed: u64,
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Self {
        assert!(n >= 1);
        let bits = (64 - (n - 1).leading_zeros()).max(2);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Permutation {
            n,
            bits,
            mask,
            seed,
        }
    }

    /// Each step is a bijection on `bits`-bit words: xor with a constant, multiply by
    /// an odd constant (mod 2^bits), xor-shift right.
    fn mix(&self, mut x: u64) -> u64 {
        let shift = (self.bits / 2).max(1);
        for round in 0..3u64 {
            x ^= self
                .seed
                .wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                & self.mask;
            x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93 | 1) & self.mask;
            x ^= x >> shift;
        }
        x
    }

    pub fn apply(&self, x: u64) -> u64 {
        assert!(x < self.n);
        let mut y = self.mix(x);
        while y >= self.n {
            y = self.mix(y);
        }
        y
    }
}

/// How key numbers are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            "latest" => Ok(Distribution::Latest),
            _ => Err(format!(
                "invalid distribution {s:?}: expected uniform|zipfian|latest"
            )),
        }
    }
}

/// Operation types, each with its own histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Read,
    Update,
    Insert,
    /// Workload F: read a key, then write it; timed as one operation.
    ReadModifyWrite,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "read-modify-write",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The mix: fractions of reads, updates, inserts and read-modify-writes summing to 1.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadSpec {
    /// `a`..`f` or `custom`.
    pub name: String,
    pub read: f64,
    pub update: f64,
    pub insert: f64,
    pub read_modify_write: f64,
    pub distribution: Distribution,
}

impl WorkloadSpec {
    /// The YCSB core presets (workloads/workloada … workloadf). E needs range scans,
    /// which ringkv does not offer: refused with the reason.
    pub fn preset(name: &str) -> Result<WorkloadSpec, String> {
        let spec = |read, update, insert, rmw, distribution| WorkloadSpec {
            name: name.to_string(),
            read,
            update,
            insert,
            read_modify_write: rmw,
            distribution,
        };
        match name {
            "a" => Ok(spec(0.5, 0.5, 0.0, 0.0, Distribution::Zipfian)),
            "b" => Ok(spec(0.95, 0.05, 0.0, 0.0, Distribution::Zipfian)),
            "c" => Ok(spec(1.0, 0.0, 0.0, 0.0, Distribution::Zipfian)),
            "d" => Ok(spec(0.95, 0.0, 0.05, 0.0, Distribution::Latest)),
            "e" => Err("workload E is 95% short range scans; ringkv has no scans \
                        (keys are hash-partitioned, docs/design.md §1.1), so it cannot run E. \
                        Use --workload custom for point reads and writes."
                .to_string()),
            "f" => Ok(spec(0.5, 0.0, 0.0, 0.5, Distribution::Zipfian)),
            other => Err(format!(
                "unknown workload {other:?}: expected a|b|c|d|e|f|custom"
            )),
        }
    }

    /// `custom`: reads with probability `read_ratio`, updates otherwise.
    pub fn custom(read_ratio: f64, distribution: Distribution) -> Result<WorkloadSpec, String> {
        if !(0.0..=1.0).contains(&read_ratio) {
            return Err(format!("--read-ratio {read_ratio} is not within 0..1"));
        }
        Ok(WorkloadSpec {
            name: "custom".into(),
            read: read_ratio,
            update: 1.0 - read_ratio,
            insert: 0.0,
            read_modify_write: 0.0,
            distribution,
        })
    }

    pub fn writes(&self) -> bool {
        self.update + self.insert + self.read_modify_write > 0.0
    }
}

/// One planned operation: what and on which key number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedOp {
    pub kind: OpKind,
    pub key_id: u64,
}

/// Draws key numbers by the chosen distribution.
#[derive(Clone, Debug)]
enum Chooser {
    Uniform,
    Zipfian {
        zipf: Zipfian,
        perm: Permutation,
    },
    /// YCSB SkewedLatest: the newest key is the most popular.
    Latest {
        zipf: Zipfian,
    },
}

/// Per-executor operation generator. Executors share only the insert counter (the key
/// numbers handed to inserts), so inserted keys are unique across threads.
pub struct Generator {
    spec: WorkloadSpec,
    keys: u64,
    rng: Rng,
    chooser: Chooser,
    next_insert: Arc<AtomicU64>,
}

impl Generator {
    /// `keys`: the initial key space `0..keys` (assumed loaded). `next_insert` must start
    /// at `keys` and be shared by all generators of a run.
    pub fn new(spec: WorkloadSpec, keys: u64, seed: u64, next_insert: Arc<AtomicU64>) -> Self {
        assert!((1..=KEY_ID_MAX).contains(&keys));
        let chooser = match spec.distribution {
            Distribution::Uniform => Chooser::Uniform,
            Distribution::Zipfian => Chooser::Zipfian {
                zipf: Zipfian::new(keys, ZIPFIAN_THETA),
                perm: Permutation::new(keys, seed ^ 0x5EED),
            },
            Distribution::Latest => Chooser::Latest {
                zipf: Zipfian::new(keys, ZIPFIAN_THETA),
            },
        };
        Generator {
            spec,
            keys,
            rng: Rng::new(seed),
            chooser,
            next_insert,
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn existing_key(&mut self) -> u64 {
        match &mut self.chooser {
            Chooser::Uniform => self.rng.below(self.keys),
            Chooser::Zipfian { zipf, perm } => perm.apply(zipf.sample(&mut self.rng)),
            Chooser::Latest { zipf } => {
                // Keys 0..newest exist (inserts hand out numbers in order).
                let count = self.next_insert.load(Ordering::Relaxed).max(1);
                zipf.grow_to(count);
                let back = zipf.sample(&mut self.rng).min(count - 1);
                count - 1 - back
            }
        }
    }

    pub fn next_op(&mut self) -> PlannedOp {
        let u = self.rng.next_f64();
        let s = &self.spec;
        let kind = if u < s.read {
            OpKind::Read
        } else if u < s.read + s.update {
            OpKind::Update
        } else if u < s.read + s.update + s.insert {
            OpKind::Insert
        } else if s.read_modify_write > 0.0 {
            OpKind::ReadModifyWrite
        } else {
            // Rounding left a sliver: fold it into the most common op.
            OpKind::Read
        };
        let key_id = if kind == OpKind::Insert {
            let id = self.next_insert.fetch_add(1, Ordering::Relaxed);
            id.min(KEY_ID_MAX)
        } else {
            self.existing_key()
        };
        PlannedOp { kind, key_id }
    }
}

/// Values: random bytes of a fixed size. In verify mode the first 8 bytes carry a
/// unique write id (little-endian u64, never 0) so every write is distinguishable.
pub struct ValueSource {
    size_bytes: usize,
    /// Twice the value size of random bytes; each value is a window at a random offset,
    /// so making a value costs a copy, not a fresh fill.
    pool: Vec<u8>,
}

/// Bytes a verify-mode value needs for its write id.
pub const WRITE_ID_BYTES: usize = 8;

impl ValueSource {
    pub fn new(size_bytes: usize, rng: &mut Rng) -> Self {
        let mut pool = vec![0u8; size_bytes.max(1) * 2];
        rng.fill(&mut pool);
        ValueSource { size_bytes, pool }
    }

    pub fn value(&self, rng: &mut Rng, write_id: Option<u64>) -> Vec<u8> {
        let mut v = self.shared_value(rng).to_vec();
        if let Some(id) = write_id {
            assert!(id != 0, "write id 0 is reserved");
            assert!(self.size_bytes >= WRITE_ID_BYTES);
            v[..WRITE_ID_BYTES].copy_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// A value without a write id, borrowed from the pool (no allocation): the same
    /// bytes, and the same draw from `rng`, as `value(rng, None)`.
    pub fn shared_value(&self, rng: &mut Rng) -> &[u8] {
        let offset = rng.below(self.size_bytes as u64 + 1) as usize;
        &self.pool[offset..offset + self.size_bytes]
    }
}

/// The write id embedded by [`ValueSource::value`], if the value is long enough.
pub fn write_id_of(value: &[u8]) -> Option<u64> {
    let bytes: [u8; WRITE_ID_BYTES] = value.get(..WRITE_ID_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes)).filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width() {
        assert_eq!(key_for(1234), b"user000000001234".to_vec());
        assert_eq!(key_for(0).len(), KEY_BYTES);
        assert_eq!(key_for(KEY_ID_MAX).len(), KEY_BYTES);
        assert_eq!(key_for(KEY_ID_MAX), b"user999999999999".to_vec());
        assert_eq!(key_for(0), b"user000000000000".to_vec());
    }

    #[test]
    fn hand_written_keys_match_the_formatted_ones() {
        let mut rng = Rng::new(3);
        let mut ids: Vec<u64> = (0..2000).collect();
        ids.extend((0..2000).map(|_| rng.below(KEY_ID_MAX + 1)));
        ids.extend((0..12).map(|p| 10u64.pow(p) - 1));
        let mut buf = [b'x'; KEY_BYTES];
        for id in ids {
            let formatted = format!("{KEY_PREFIX}{id:0width$}", width = KEY_DIGITS);
            assert_eq!(write_key(id, &mut buf), formatted.as_bytes(), "id {id}");
        }
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 100, 1000, 4096, 5000] {
            let p = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = p.apply(x) as usize;
                assert!(!seen[y], "n={n}: {y} hit twice");
                seen[y] = true;
            }
        }
    }

    #[test]
    fn zipfian_growth_matches_fresh_construction() {
        let mut grown = Zipfian::new(10, ZIPFIAN_THETA);
        grown.grow_to(1000);
        let fresh = Zipfian::new(1000, ZIPFIAN_THETA);
        assert!((grown.zeta() - fresh.zeta()).abs() < 1e-9);
    }

    #[test]
    fn presets_sum_to_one_and_e_is_refused() {
        for name in ["a", "b", "c", "d", "f"] {
            let s = WorkloadSpec::preset(name).unwrap();
            let total = s.read + s.update + s.insert + s.read_modify_write;
            assert!((total - 1.0).abs() < 1e-12, "{name}: {total}");
        }
        let e = WorkloadSpec::preset("e").unwrap_err();
        assert!(e.contains("no scans"), "{e}");
    }

    #[test]
    fn latest_prefers_newest_keys_and_inserts_are_unique() {
        let counter = Arc::new(AtomicU64::new(1000));
        let spec = WorkloadSpec::preset("d").unwrap();
        let mut g = Generator::new(spec, 1000, 7, Arc::clone(&counter));
        let mut inserted = std::collections::HashSet::new();
        let mut reads_near_top = 0;
        let mut reads = 0;
        for _ in 0..20_000 {
            let op = g.next_op();
            match op.kind {
                OpKind::Insert => assert!(inserted.insert(op.key_id) && op.key_id >= 1000),
                OpKind::Read => {
                    reads += 1;
                    let newest = counter.load(Ordering::Relaxed) - 1;
                    assert!(op.key_id <= newest);
                    if newest - op.key_id < 10 {
                        reads_near_top += 1;
                    }
                }
                other => panic!("workload d produced {other:?}"),
            }
        }
        // Under zipf(0.99) over ~2000 items the 10 newest take well over a quarter.
        assert!(reads_near_top * 4 > reads, "{reads_near_top} of {reads}");
    }

    #[test]
    fn verify_values_carry_their_write_id() {
        let mut rng = Rng::new(1);
        let src = ValueSource::new(32, &mut rng);
        let v = src.value(&mut rng, Some(77));
        assert_eq!(v.len(), 32);
        assert_eq!(write_id_of(&v), Some(77));
    }
}

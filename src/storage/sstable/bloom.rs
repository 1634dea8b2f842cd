//! The per-table bloom filter: lets a point lookup skip a table that certainly lacks the
//! key without touching disk. Pure, no I/O.
//!
//! The filter stores its own parameters and hash seed, and the hash is a documented,
//! stable function (xxh3-64 from `xxhash-rust` with [`BLOOM_SEED`]), so a file written
//! by one build is read identically by every later one. It must never use a hasher
//! whose output may change between versions or runs (`ahash`, `std`'s SipHash keys).

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::format::{push_crc_of, verify_crc_suffix, Cursor};

/// Seed of the key hash in tables this build writes ("RKVBLOOM" as little-endian u64).
pub const BLOOM_SEED: u64 = u64::from_le_bytes(*b"RKVBLOOM");
/// Bits per key: 10 bits and 7 probes give a ~0.8 % false-positive rate (target 1 %).
pub const BITS_PER_KEY: u64 = 10;
pub const NUM_PROBES: u32 = 7;
/// Upper bound on probes accepted from a file; more is never useful and bounds work.
const MAX_PROBES: u32 = 30;

/// Hash of a key under `seed`, the only input the filter needs.
pub fn key_hash(key: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(key, seed)
}

/// A bloom filter over 64-bit key hashes, probed by double hashing.
///
/// Probe `i` (0-based) of a key with hash `h` sets bit
/// `(h + i * (rotate_left(h, 32) | 1)) mod num_bits` (wrapping 64-bit arithmetic);
/// bit `b` lives in word `b / 64` at bit position `b % 64`.
///
/// Section layout (little-endian):
///
/// ```text
/// u64 num_bits     multiple of 64, >= 64
/// u32 num_probes   1..=30
/// u32 reserved     0
/// u64 seed         of key_hash
/// u64 words[num_bits / 64]
/// u32 crc32c       of every byte above
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    words: Vec<u64>,
    num_bits: u64,
    num_probes: u32,
    seed: u64,
}

impl Bloom {
    /// A filter sized for `hashes.len()` keys holding exactly those hashes (computed
    /// with [`BLOOM_SEED`]).
    pub fn build(hashes: &[u64]) -> Bloom {
        let num_bits = (hashes.len() as u64 * BITS_PER_KEY).max(64).div_ceil(64) * 64;
        let mut bloom = Bloom {
            words: vec![0; (num_bits / 64) as usize],
            num_bits,
            num_probes: NUM_PROBES,
            seed: BLOOM_SEED,
        };
        for &h in hashes {
            bloom.for_each_probe(h, |words, bit| {
                words[(bit / 64) as usize] |= 1 << (bit % 64)
            });
        }
        bloom
    }

    fn for_each_probe(&mut self, h: u64, mut f: impl FnMut(&mut [u64], u64)) {
        let delta = h.rotate_left(32) | 1;
        let mut probe = h;
        for _ in 0..self.num_probes {
            f(&mut self.words, probe % self.num_bits);
            probe = probe.wrapping_add(delta);
        }
    }

    /// False means the key is certainly absent; true means it may be present.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let h = key_hash(key, self.seed);
        let delta = h.rotate_left(32) | 1;
        let mut probe = h;
        for _ in 0..self.num_probes {
            let bit = probe % self.num_bits;
            if self.words[(bit / 64) as usize] & (1 << (bit % 64)) == 0 {
                return false;
            }
            probe = probe.wrapping_add(delta);
        }
        true
    }

    pub fn num_bits(&self) -> u64 {
        self.num_bits
    }

    pub fn num_probes(&self) -> u32 {
        self.num_probes
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.num_bits.to_le_bytes());
        out.extend_from_slice(&self.num_probes.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        for word in &self.words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        push_crc_of(out, start);
    }

    /// Verify and parse a bloom section; the error describes the first problem.
    pub fn decode(section: &[u8]) -> Result<Bloom, String> {
        let body = verify_crc_suffix(section).ok_or("CRC32C mismatch")?;
        let mut cur = Cursor::new(body);
        let truncated = || "truncated".to_string();
        let num_bits = cur.u64().ok_or_else(truncated)?;
        let num_probes = cur.u32().ok_or_else(truncated)?;
        let reserved = cur.u32().ok_or_else(truncated)?;
        let seed = cur.u64().ok_or_else(truncated)?;
        if num_bits == 0 || num_bits % 64 != 0 || !(1..=MAX_PROBES).contains(&num_probes) {
            return Err(format!(
                "parameters invalid: {num_bits} bits, {num_probes} probes"
            ));
        }
        if reserved != 0 {
            return Err("reserved field not zero".into());
        }
        if cur.remaining() as u64 != num_bits / 8 {
            return Err(format!(
                "{} bytes of bits for {num_bits} bits",
                cur.remaining()
            ));
        }
        let mut words = Vec::with_capacity((num_bits / 64) as usize);
        while let Some(word) = cur.u64() {
            words.push(word);
        }
        Ok(Bloom {
            words,
            num_bits,
            num_probes,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_of(keys: impl Iterator<Item = Vec<u8>>) -> Bloom {
        let hashes: Vec<u64> = keys.map(|k| key_hash(&k, BLOOM_SEED)).collect();
        Bloom::build(&hashes)
    }

    #[test]
    fn no_false_negatives_and_false_positives_at_most_two_percent() {
        let bloom = filter_of((0..10_000u32).map(|i| format!("present-{i}").into_bytes()));
        for i in 0..10_000u32 {
            assert!(bloom.may_contain(format!("present-{i}").as_bytes()));
        }
        let false_positives = (0..10_000u32)
            .filter(|i| bloom.may_contain(format!("absent-{i}").as_bytes()))
            .count();
        assert!(false_positives <= 200, "{false_positives} of 10000");
    }

    #[test]
    fn round_trips_through_its_encoding() {
        let bloom = filter_of((0..500u32).map(|i| i.to_be_bytes().to_vec()));
        let mut bytes = Vec::new();
        bloom.encode(&mut bytes);
        assert_eq!(Bloom::decode(&bytes).unwrap(), bloom);
        bytes[20] ^= 1;
        assert!(Bloom::decode(&bytes).is_err());
    }

    /// The hash and probe sequence are part of the file format: pin them.
    #[test]
    fn hash_is_stable() {
        let bloom = filter_of(std::iter::once(b"ringkv".to_vec()));
        let mut bytes = Vec::new();
        bloom.encode(&mut bytes);
        assert_eq!(bloom.num_bits(), 64);
        assert_eq!(key_hash(b"ringkv", BLOOM_SEED), 4602224311963248604);
        let word = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        assert_eq!(word, PINNED_WORD, "{word:#x}");
    }

    const PINNED_WORD: u64 = 0xa000_0005_5000_0002;
}

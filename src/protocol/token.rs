//! Key → token → shard: the stable mapping that places every key on the ring and on a
//! core (docs/design.md §2.1, §3.5). It is part of the wire protocol: clients compute it
//! to route a request straight to the owning shard, and tokens are stored on disk. It
//! must never change across versions or machines, so it must never use a per-process or
//! per-version hash (`ahash`, `std` `DefaultHasher`); the test vectors below pin it.

/// Seed of the xxh3 hash that makes tokens. Part of the protocol: never change it.
pub const TOKEN_SEED: u64 = 0;

/// The token (ring position) of a key: xxh3-64 of the key bytes with seed 0.
#[inline]
pub fn token_of(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, TOKEN_SEED)
}

/// The shard (0..shard_count) that owns `token` on a node with `shard_count` shards.
///
/// The token space is cut into `shard_count` contiguous, equal slices, in order:
/// shard = floor(token × shard_count / 2^64). It depends on nothing but its arguments,
/// so a ring change never moves data between the shards of one node, and nodes with the
/// same shard count keep a key's replicas on the same shard index.
///
/// Panics if `shard_count` is 0 (a node always has at least one shard).
#[inline]
pub fn shard_of(token: u64, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "shard_of: a node has at least one shard");
    // (2^64 - 1) × (2^32 - 1) < 2^96, so the product fits in u128 and the shifted result
    // is < shard_count ≤ u32::MAX: the cast cannot truncate.
    ((u128::from(token) * u128::from(shard_count)) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fixed vectors (cross-checked against the reference xxHash via Python `xxhash`).
    /// If one of these changes, every stored token and every client's routing breaks.
    #[test]
    fn token_of_known_vectors() {
        assert_eq!(token_of(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(token_of(b"a"), 0xe6c6_32b6_1e96_4e1f);
        assert_eq!(token_of(b"hello"), 0x9555_e855_5c62_dcfd);
        assert_eq!(token_of(b"ringkv"), 0x115c_485c_f2d2_56c6);
        assert_eq!(token_of(b"user:42"), 0x9fc1_e605_fa71_74aa);
    }

    #[test]
    fn shard_of_known_vectors() {
        assert_eq!(shard_of(0, 1), 0);
        assert_eq!(shard_of(u64::MAX, 1), 0);
        assert_eq!(shard_of(0, 7), 0);
        assert_eq!(shard_of(u64::MAX, 7), 6);
        assert_eq!(shard_of(u64::MAX, u32::MAX), u32::MAX - 1);
        // Slice boundaries of two shards: the top bit decides.
        assert_eq!(shard_of((1 << 63) - 1, 2), 0);
        assert_eq!(shard_of(1 << 63, 2), 1);
        // Four shards: the top two bits decide.
        assert_eq!(shard_of(0x4000_0000_0000_0000, 4), 1);
        assert_eq!(shard_of(0x3fff_ffff_ffff_ffff, 4), 0);
        // End to end: key → token → shard.
        assert_eq!(shard_of(token_of(b"hello"), 4), 2);
        assert_eq!(shard_of(token_of(b"hello"), 3), 1);
        assert_eq!(shard_of(token_of(b"user:42"), 8), 4);
        assert_eq!(shard_of(token_of(b"ringkv"), 16), 1);
    }

    #[test]
    #[should_panic(expected = "at least one shard")]
    fn shard_of_zero_shards_panics() {
        let _ = shard_of(1, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn shard_of_is_in_range_and_monotonic(a: u64, b: u64, shard_count in 1u32..=u32::MAX) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let shard_low = shard_of(low, shard_count);
            let shard_high = shard_of(high, shard_count);
            prop_assert!(shard_low < shard_count);
            prop_assert!(shard_high < shard_count);
            prop_assert!(shard_low <= shard_high);
        }

        #[test]
        fn shard_slices_are_equal_within_one_token(shard_count in 1u32..=1024) {
            // The first token of shard s is ceil(s × 2^64 / n); slices differ by ≤ 1 token.
            let first_token = |s: u32| -> u128 {
                (u128::from(s) << 64).div_ceil(u128::from(shard_count))
            };
            for s in 0..shard_count.min(64) {
                let start = first_token(s);
                let end = first_token(s + 1);
                prop_assert_eq!(shard_of(start as u64, shard_count), s);
                prop_assert_eq!(shard_of((end - 1) as u64, shard_count), s);
                let width = end - start;
                let ideal = (1u128 << 64) / u128::from(shard_count);
                prop_assert!(width == ideal || width == ideal + 1);
            }
        }
    }
}

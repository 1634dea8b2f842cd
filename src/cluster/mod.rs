//! Cluster membership (docs/design.md §6): the token [`ring`] and replica placement,
//! gossip [`membership`] state with its digest/delta exchange, and the phi-accrual
//! [`failure_detector`].
//!
//! Everything here is a pure, deterministic state machine: callers pass `now_ms` and a
//! [`RngLike`] source, and get effects back as data. Nothing in this module may touch
//! glommio, sockets, files, the wall clock or a global RNG, so a glommio driver and a
//! seeded simulator can both run it, and any simulated failure replays from its seed.

pub mod failure_detector;
pub mod hints;
pub mod known_peers;
pub mod membership;
pub mod ring;

pub use failure_detector::{FailureDetector, FailureDetectorConfig};
pub use membership::{Membership, MembershipConfig, NodeState};
pub use ring::{NodeId, Ring, Token};

/// The only source of randomness the cluster state machines use. Production passes a
/// [`SplitMix64`] seeded from the OS once at startup; the simulator passes its own.
pub trait RngLike {
    fn next_u64(&mut self) -> u64;

    /// Uniform-enough value in `0..bound` (`bound` > 0). The modulo bias is at most
    /// `bound / 2^64`, irrelevant for picking among a few hundred peers.
    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0)");
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        denominator > 0 && self.below(denominator) < numerator
    }
}

/// SplitMix64 (Steele, Lea, Flood): tiny, seedable and good enough for peer choice and
/// token placement. Not for anything secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl RngLike for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_per_seed() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix64::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SplitMix64::new(8);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_stays_in_bounds() {
        let mut r = SplitMix64::new(1);
        for bound in 1..50 {
            assert!(r.below(bound) < bound);
        }
    }
}

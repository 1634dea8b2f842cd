//! A client's own list of nodes it could not reach, long before gossip convicts them.
//!
//! A node whose connection was refused, reset or timed out becomes a suspect: query
//! plans ([`super::Router::plan`]) move it to the end until its probe time, when it
//! takes its place again and the next request to it is the probe. Each failure in a row
//! doubles the wait, from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`]; a success (any
//! answer, typed errors included) clears it. Pure: the caller passes `now`; this module
//! never reads a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Wait before the first probe of a node that just failed.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between probes.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The wait after `failures` failures in a row (`failures >= 1`; 0 is treated as 1).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Suspect {
    failures: u32,
    probe_at: Instant,
}

/// Suspect nodes by node id.
#[derive(Clone, Debug, Default)]
pub struct Suspects {
    nodes: HashMap<u64, Suspect>,
}

impl Suspects {
    /// `node` failed at `now`: suspect it until `now + backoff(failures in a row)`.
    pub fn on_failure(&mut self, node: u64, now: Instant) {
        let failures = self
            .nodes
            .get(&node)
            .map_or(1, |s| s.failures.saturating_add(1));
        self.nodes.insert(
            node,
            Suspect {
                failures,
                probe_at: now + backoff(failures),
            },
        );
    }

    /// `node` answered: it is no longer suspect.
    pub fn on_success(&mut self, node: u64) {
        self.nodes.remove(&node);
    }

    /// Whether `node` should be kept for the end of query plans at `now` (suspect and
    /// its probe not yet due).
    pub fn is_suspect(&self, node: u64, now: Instant) -> bool {
        self.nodes.get(&node).is_some_and(|s| now < s.probe_at)
    }

    /// Failures in a row of `node` (0: not suspect).
    pub fn failures(&self, node: u64) -> u32 {
        self.nodes.get(&node).map_or(0, |s| s.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_5_s() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(
            (ms(0), ms(1), ms(2), ms(3), ms(6), ms(7)),
            (100, 100, 200, 400, 3200, 5000)
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_suspect_is_skipped_until_its_probe_and_cleared_by_a_success() {
        let t0 = Instant::now();
        let mut s = Suspects::default();
        assert!(!s.is_suspect(1, t0));
        s.on_failure(1, t0);
        assert!(s.is_suspect(1, t0 + Duration::from_millis(99)));
        assert!(
            !s.is_suspect(1, t0 + Duration::from_millis(100)),
            "probe due"
        );
        // The probe failed: twice as long.
        let t1 = t0 + Duration::from_millis(100);
        s.on_failure(1, t1);
        assert_eq!(s.failures(1), 2);
        assert!(s.is_suspect(1, t1 + Duration::from_millis(199)));
        assert!(!s.is_suspect(1, t1 + Duration::from_millis(200)));
        assert!(!s.is_suspect(2, t1), "other nodes are unaffected");
        s.on_success(1);
        assert!(!s.is_suspect(1, t1));
        assert_eq!(s.failures(1), 0);
        // After a success the backoff starts over.
        s.on_failure(1, t1);
        assert!(!s.is_suspect(1, t1 + BACKOFF_FIRST));
    }

    proptest! {
        /// The wait never shrinks while failures continue, and stays within bounds.
        #[test]
        fn backoff_is_monotonic_and_bounded(n in 0u32..100) {
            prop_assert!(backoff(n) <= backoff(n + 1));
            prop_assert!(backoff(n) >= BACKOFF_FIRST && backoff(n) <= BACKOFF_MAX);
        }
    }
}

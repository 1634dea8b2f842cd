//! Phi-accrual failure detection (Hayashibara et al. 2004), with the exponential
//! approximation Cassandra uses: for a node whose heartbeats arrive on average every
//! `mean` ms, the suspicion after `t` ms of silence is
//! `phi = -log10(P(no heartbeat for t)) = t / (mean * ln 10)`.
//! The exponential model tolerates the jitter of gossip-relayed heartbeats better than a
//! normal distribution would. With the default threshold 8 a node is convicted after
//! about 18.4 mean intervals of silence (18 s with 1 s gossip, as in Cassandra).
//!
//! This module owns the per-node arrival windows. It never reads a clock: callers pass
//! `now_ms` on every call, and times may come from a simulator.

use super::NodeId;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, PartialEq)]
pub struct FailureDetectorConfig {
    /// Phi above which a node is considered down (config `phi_convict_threshold`).
    pub phi_convict_threshold: f64,
    /// Inter-arrival samples kept per node.
    pub window_size: usize,
    /// Interval assumed before a node has delivered two heartbeats: seeds the window
    /// so that a node heard from once is judged against a sane mean.
    pub initial_interval_ms: u64,
    /// Longer gaps are not sampled: they come from pauses or restarts, and would teach
    /// the detector to wait far too long next time.
    pub max_interval_ms: u64,
}

impl FailureDetectorConfig {
    /// Defaults derived from the gossip interval (config `gossip_interval_ms`).
    pub fn for_gossip_interval(gossip_interval_ms: u64) -> Self {
        let interval_ms = gossip_interval_ms.max(1);
        Self {
            phi_convict_threshold: 8.0,
            window_size: 1000,
            initial_interval_ms: 2 * interval_ms,
            max_interval_ms: 4 * interval_ms,
        }
    }
}

impl Default for FailureDetectorConfig {
    fn default() -> Self {
        Self::for_gossip_interval(1000)
    }
}

/// Heartbeat history of one node.
#[derive(Clone, Debug, PartialEq)]
struct ArrivalWindow {
    intervals_ms: VecDeque<u64>,
    /// Sum of `intervals_ms`, kept so `mean` is O(1).
    sum_ms: u64,
    last_arrival_ms: u64,
}

impl ArrivalWindow {
    fn mean_ms(&self) -> f64 {
        // Never empty: the first report seeds it. Clamp so a burst of same-millisecond
        // arrivals cannot divide by zero.
        (self.sum_ms as f64 / self.intervals_ms.len().max(1) as f64).max(1.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FailureDetector {
    config: FailureDetectorConfig,
    windows: BTreeMap<NodeId, ArrivalWindow>,
}

impl FailureDetector {
    pub fn new(config: FailureDetectorConfig) -> Self {
        assert!(config.window_size > 0, "failure detector window is empty");
        assert!(
            config.phi_convict_threshold > 0.0,
            "phi threshold must be > 0"
        );
        Self {
            config,
            windows: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &FailureDetectorConfig {
        &self.config
    }

    /// Evidence that `node` was alive at `now_ms` (its heartbeat advanced).
    pub fn report_heartbeat(&mut self, node: NodeId, now_ms: u64) {
        let config = &self.config;
        match self.windows.get_mut(&node) {
            None => {
                let window = ArrivalWindow {
                    intervals_ms: VecDeque::from([config.initial_interval_ms]),
                    sum_ms: config.initial_interval_ms,
                    last_arrival_ms: now_ms,
                };
                self.windows.insert(node, window);
            }
            Some(window) => {
                let interval_ms = now_ms.saturating_sub(window.last_arrival_ms);
                if interval_ms <= config.max_interval_ms {
                    if window.intervals_ms.len() == config.window_size {
                        let oldest = window.intervals_ms.pop_front().unwrap_or(0);
                        window.sum_ms -= oldest;
                    }
                    window.intervals_ms.push_back(interval_ms);
                    window.sum_ms += interval_ms;
                }
                window.last_arrival_ms = window.last_arrival_ms.max(now_ms);
            }
        }
        self.invariants();
    }

    /// Forget a node's history: it restarted (new generation) or left the cluster.
    pub fn remove(&mut self, node: NodeId) {
        self.windows.remove(&node);
    }

    /// Suspicion level of `node` at `now_ms`; infinite for a node never heard from.
    pub fn phi(&self, node: NodeId, now_ms: u64) -> f64 {
        match self.windows.get(&node) {
            None => f64::INFINITY,
            Some(window) => {
                let silence_ms = now_ms.saturating_sub(window.last_arrival_ms) as f64;
                silence_ms / (window.mean_ms() * std::f64::consts::LN_10)
            }
        }
    }

    /// `phi < threshold`.
    pub fn is_up_with(&self, node: NodeId, now_ms: u64, threshold: f64) -> bool {
        self.phi(node, now_ms) < threshold
    }

    /// `phi` below the configured `phi_convict_threshold`.
    pub fn is_up(&self, node: NodeId, now_ms: u64) -> bool {
        self.is_up_with(node, now_ms, self.config.phi_convict_threshold)
    }

    pub fn invariants(&self) {
        for (node, window) in &self.windows {
            assert!(
                !window.intervals_ms.is_empty()
                    && window.intervals_ms.len() <= self.config.window_size,
                "arrival window of {node} has bad length"
            );
            assert_eq!(
                window.sum_ms,
                window.intervals_ms.iter().sum::<u64>(),
                "arrival window sum of {node} drifted"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL_MS: u64 = 1000;

    fn steady(fd: &mut FailureDetector, node: NodeId, beats: u64) -> u64 {
        let mut now = 0;
        for i in 0..beats {
            now = i * INTERVAL_MS;
            fd.report_heartbeat(node, now);
        }
        now
    }

    #[test]
    fn steady_heartbeats_keep_phi_low() {
        let mut fd = FailureDetector::new(FailureDetectorConfig::default());
        let last = steady(&mut fd, 1, 50);
        let phi = fd.phi(1, last + INTERVAL_MS / 2);
        assert!(phi < 1.0, "phi {phi}");
        assert!(fd.is_up(1, last + INTERVAL_MS));
    }

    #[test]
    fn silence_convicts_after_about_eighteen_intervals_then_resume_revives() {
        let mut fd = FailureDetector::new(FailureDetectorConfig::default());
        let last = steady(&mut fd, 1, 50);
        // Mean is close to 1000 ms, so phi = 8 near 18.4 intervals.
        assert!(fd.is_up(1, last + 15 * INTERVAL_MS));
        assert!(!fd.is_up(1, last + 21 * INTERVAL_MS));
        // Phi grows monotonically with silence.
        assert!(fd.phi(1, last + 5 * INTERVAL_MS) < fd.phi(1, last + 6 * INTERVAL_MS));
        let resumed = last + 30 * INTERVAL_MS;
        fd.report_heartbeat(1, resumed);
        assert!(fd.is_up(1, resumed + INTERVAL_MS));
        // The 30 s gap was not sampled, so detection speed is unchanged.
        assert!(!fd.is_up(1, resumed + 21 * INTERVAL_MS));
        fd.invariants();
    }

    #[test]
    fn unknown_node_is_down_and_removed_node_forgotten() {
        let mut fd = FailureDetector::new(FailureDetectorConfig::default());
        assert!(!fd.is_up(7, 0));
        fd.report_heartbeat(7, 10);
        assert!(fd.is_up(7, 10));
        fd.remove(7);
        assert!(!fd.is_up(7, 10));
    }

    #[test]
    fn window_is_bounded() {
        let config = FailureDetectorConfig {
            window_size: 8,
            ..FailureDetectorConfig::default()
        };
        let mut fd = FailureDetector::new(config);
        steady(&mut fd, 1, 100);
        assert_eq!(fd.windows[&1].intervals_ms.len(), 8);
        fd.invariants();
    }
}

//! Hint bookkeeping for one shard (docs/design.md §6.7): which stored hints are
//! pending for which target, whether a new hint may be stored, and what to replay now.
//!
//! [`HintBook`] is a pure, deterministic state machine: the caller passes `now_ms` on
//! every call and performs the [`HintEffect`]s it returns. It never touches a file, a
//! socket, a clock or an RNG, and iterates only ordered maps, so the shard driver and the
//! simulator run the same code and any run replays from its seed. It holds metadata only
//! ([`HintMeta`]); the hint bytes live in the durable `storage::hintlog::HintLog`, which
//! the driver writes before [`HintBook::insert`] and marks on every
//! [`HintEffect::Delete`].
//!
//! The loop a driver runs:
//! - on every membership change: [`HintBook::set_target_up`];
//! - for a replica that did not acknowledge a write: [`HintBook::admit`]; on
//!   [`Admission::Store`] append to the hint log, then [`HintBook::insert`];
//! - at startup: [`HintBook::insert`] every hint the hint log recovered;
//! - whenever anything changed, and at [`HintBook::next_wake_ms`]: [`HintBook::poll`], send
//!   each [`HintEffect::Replay`] to its target, and report the answer (or a transport
//!   error as [`ReplayOutcome::Failed`]) with [`HintBook::on_replay_result`];
//! - on [`HintEffect::Delete`]: mark the ids delivered in the hint log (batching is fine).
//!
//! **Delivery is at least once.** A hint may be replayed more than once: after a timeout
//! whose answer was merely late, after a restart before its delivered marker was durable,
//! or when a target applied it but the answer was lost. That is harmless because a hint
//! carries a versioned mutation, and applying it again merges to the same state. What is
//! never allowed: losing a stored hint before its target acknowledged it, and skipping a
//! hint silently (a skip is counted and flags the target as needing repair).
//!
//! **Limits.** A target continuously down for longer than `max_hint_window_ms` gets no new
//! hints (Cassandra's `max_hint_window`; hints already stored are kept and replayed), and
//! no target gets more than `max_hints_bytes` of pending hints. Replay is globally paced
//! by a token bucket (see [`HintLimits::burst`]), at most `max_in_flight_per_target`
//! hints are in flight per target, oldest id first, and a target that answers
//! `Overloaded` or `Failed`, or does not answer within `replay_timeout_ms`, is paused for
//! `retry_backoff_ms` while the others go on.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::NodeId;

/// Token bucket resolution: one replay costs this many milli-tokens, and a rate of `r`
/// per second refills `r` milli-tokens per millisecond, so the arithmetic is exact.
const MILLI: u64 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintLimits {
    /// No new hints for a target continuously down longer than this (config
    /// `max_hint_window`).
    pub max_hint_window_ms: u64,
    /// Pending hint bytes per target (config `max_hints_bytes`).
    pub max_hints_bytes: u64,
    /// Hint replays per second for this shard, all targets together (config
    /// `hint_replay_rate`); > 0.
    pub replay_rate_per_s: u64,
    /// Replays awaiting an answer per target; > 0.
    pub max_in_flight_per_target: usize,
    /// How long a target is left alone after `Overloaded`, `Failed` or a timeout.
    pub retry_backoff_ms: u64,
    /// A replay not answered within this is taken as failed; > 0.
    pub replay_timeout_ms: u64,
}

impl Default for HintLimits {
    fn default() -> Self {
        Self {
            max_hint_window_ms: 3 * 3600 * 1000,
            max_hints_bytes: 1 << 30,
            replay_rate_per_s: 10_000,
            max_in_flight_per_target: 8,
            retry_backoff_ms: 1000,
            replay_timeout_ms: 10_000,
        }
    }
}

impl HintLimits {
    /// Token bucket capacity: `max(1, replay_rate_per_s / 10)` replays, a tenth of a
    /// second's worth. Over any interval of `d` ms at most `burst + rate × d / 1000`
    /// replays are sent; the bucket starts full.
    pub fn burst(&self) -> u64 {
        (self.replay_rate_per_s / 10).max(1)
    }

    fn check(&self) {
        assert!(self.replay_rate_per_s > 0, "hint replay rate must be > 0");
        assert!(
            self.max_in_flight_per_target > 0,
            "max_in_flight_per_target must be > 0"
        );
        assert!(self.replay_timeout_ms > 0, "replay_timeout_ms must be > 0");
    }
}

/// What the book knows of a durable hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintMeta {
    /// Unique among pending hints (the hint log's id).
    pub id: u64,
    pub target: NodeId,
    pub created_ms: u64,
    /// Bytes counted against `max_hints_bytes` (key plus state).
    pub size_bytes: u64,
}

/// The answer of [`HintBook::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Store,
    /// The target has been down longer than `max_hint_window_ms`.
    SkippedWindow,
    /// The target's pending hints would exceed `max_hints_bytes`.
    SkippedBytes,
}

/// How a replay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The target applied the hint durably.
    Acked,
    /// The target refused it for now (backpressure).
    Overloaded,
    /// No usable answer: transport error, target down, or a refusal.
    Failed,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HintEffect {
    /// Send hint `id` to `target`, then report with [`HintBook::on_replay_result`].
    Replay { id: u64, target: NodeId },
    /// These hints are delivered: mark them so in the hint log.
    Delete { ids: Vec<u64> },
}

/// Per-target numbers for metrics and `ringkv status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Hints not yet delivered, in flight included.
    pub pending_count: u64,
    pub pending_bytes: u64,
    /// `created_ms` of the pending hint with the lowest id (ids grow with time, so this is
    /// the oldest hint unless the clock stepped back).
    pub oldest_created_ms: Option<u64>,
    pub in_flight: usize,
    pub delivered: u64,
    pub skipped_window: u64,
    pub skipped_bytes: u64,
    /// A hint was skipped since the last [`HintBook::clear_needs_repair`]: the target
    /// misses writes that only a repair brings back.
    pub needs_repair: bool,
    /// Set while the target is down: since when, continuously.
    pub down_since_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    meta: HintMeta,
    deadline_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// A target never reported is taken as up: a hint for it exists because one write
    /// was not acknowledged, which a live node may also do.
    up: bool,
    down_since_ms: Option<u64>,
    paused_until_ms: u64,
    queued: BTreeMap<u64, HintMeta>,
    in_flight: BTreeMap<u64, InFlight>,
    /// Queued plus in flight.
    pending_bytes: u64,
    delivered: u64,
    skipped_window: u64,
    skipped_bytes: u64,
    needs_repair: bool,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            up: true,
            down_since_ms: None,
            paused_until_ms: 0,
            queued: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            pending_bytes: 0,
            delivered: 0,
            skipped_window: 0,
            skipped_bytes: 0,
            needs_repair: false,
        }
    }
}

impl Target {
    fn can_send(&self, limits: &HintLimits, now_ms: u64) -> bool {
        self.up
            && self.paused_until_ms <= now_ms
            && self.in_flight.len() < limits.max_in_flight_per_target
            && !self.queued.is_empty()
    }

    fn pause(&mut self, limits: &HintLimits, now_ms: u64) {
        self.paused_until_ms = self
            .paused_until_ms
            .max(now_ms.saturating_add(limits.retry_backoff_ms));
    }

    /// Take an in-flight hint back into the queue (its place is its id).
    fn requeue(&mut self, id: u64) {
        if let Some(f) = self.in_flight.remove(&id) {
            let previous = self.queued.insert(id, f.meta);
            assert!(previous.is_none(), "hint {id} both queued and in flight");
        }
    }
}

/// The per-shard hint bookkeeping; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintBook {
    limits: HintLimits,
    targets: BTreeMap<NodeId, Target>,
    /// Target of every pending hint (queued or in flight).
    index: BTreeMap<u64, NodeId>,
    tokens_milli: u64,
    /// When the bucket was last refilled; `None` until the first poll (starts full).
    refilled_ms: Option<u64>,
    /// The target served last, for round-robin between targets.
    cursor: Option<NodeId>,
}

impl HintBook {
    pub fn new(limits: HintLimits) -> Self {
        limits.check();
        let tokens_milli = limits.burst() * MILLI;
        Self {
            limits,
            targets: BTreeMap::new(),
            index: BTreeMap::new(),
            tokens_milli,
            refilled_ms: None,
            cursor: None,
        }
    }

    pub fn limits(&self) -> &HintLimits {
        &self.limits
    }

    /// Liveness as this node's failure detector sees it (call on every membership
    /// change; repeating the current state is harmless). Coming up ends any pause; going
    /// down starts the window clock unless the target was already down. Hints in flight
    /// to a target going down stay in flight until their result (or timeout) arrives.
    pub fn set_target_up(&mut self, target: NodeId, up: bool, now_ms: u64) {
        let t = self.targets.entry(target).or_default();
        match (t.up, up) {
            (false, true) => {
                t.up = true;
                t.down_since_ms = None;
                t.paused_until_ms = 0;
            }
            (true, false) => {
                t.up = false;
                t.down_since_ms = Some(now_ms);
            }
            _ => {}
        }
    }

    /// May a new hint of `size_bytes` for `target` be stored? A skip is counted and flags
    /// the target as needing repair. The bytes bound counts hints already inserted; hints
    /// admitted but not yet inserted (their append still in progress) are not counted, so
    /// concurrent appends may overshoot it by their own sizes.
    pub fn admit(&mut self, target: NodeId, size_bytes: u64, now_ms: u64) -> Admission {
        let window_ms = self.limits.max_hint_window_ms;
        let max_bytes = self.limits.max_hints_bytes;
        let t = self.targets.entry(target).or_default();
        let out_of_window = t
            .down_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) > window_ms);
        if out_of_window {
            t.skipped_window += 1;
            t.needs_repair = true;
            return Admission::SkippedWindow;
        }
        if t.pending_bytes.saturating_add(size_bytes) > max_bytes {
            t.skipped_bytes += 1;
            t.needs_repair = true;
            return Admission::SkippedBytes;
        }
        Admission::Store
    }

    /// A hint that is now durable (after the hint log append) or was recovered at
    /// startup. Its id must not be pending already.
    pub fn insert(&mut self, meta: HintMeta) {
        let previous = self.index.insert(meta.id, meta.target);
        assert!(previous.is_none(), "hint {} inserted twice", meta.id);
        let t = self.targets.entry(meta.target).or_default();
        t.queued.insert(meta.id, meta);
        t.pending_bytes = t.pending_bytes.saturating_add(meta.size_bytes);
    }

    /// What to send now. First, replays past `replay_timeout_ms` are taken as failed.
    /// Then, while the token bucket allows, one hint per eligible target in turn (up, not
    /// paused, below `max_in_flight_per_target`), the lowest queued id first, starting
    /// after the target served last.
    pub fn poll(&mut self, now_ms: u64) -> Vec<HintEffect> {
        self.refill(now_ms);
        self.expire_in_flight(now_ms);
        let mut effects = Vec::new();
        // Every turn of this loop sends one replay and spends one token: it ends within
        // `burst` turns.
        while self.tokens_milli >= MILLI {
            let Some(target) = self.next_eligible(now_ms) else {
                break;
            };
            let timeout_ms = self.limits.replay_timeout_ms;
            let Some(t) = self.targets.get_mut(&target) else {
                break;
            };
            let Some((id, meta)) = t.queued.pop_first() else {
                break;
            };
            t.in_flight.insert(
                id,
                InFlight {
                    meta,
                    deadline_ms: now_ms.saturating_add(timeout_ms),
                },
            );
            self.tokens_milli -= MILLI;
            self.cursor = Some(target);
            effects.push(HintEffect::Replay { id, target });
        }
        effects
    }

    /// The answer to a replay. `Acked` removes the hint and returns its
    /// [`HintEffect::Delete`]; `Overloaded` and `Failed` put it back in its place in the
    /// queue and pause its target for `retry_backoff_ms`. A result for a hint that is not
    /// in flight (a late answer after a timeout, or a duplicate) is used only if it is an
    /// ack of a still-pending hint; otherwise it is ignored. Call [`HintBook::poll`]
    /// afterwards for more work.
    pub fn on_replay_result(
        &mut self,
        id: u64,
        outcome: ReplayOutcome,
        now_ms: u64,
    ) -> Vec<HintEffect> {
        let Some(&target) = self.index.get(&id) else {
            return Vec::new();
        };
        let limits = &self.limits;
        let Some(t) = self.targets.get_mut(&target) else {
            panic!("hint {id} indexed under unknown target {target}");
        };
        let in_flight = t.in_flight.contains_key(&id);
        match outcome {
            ReplayOutcome::Acked => {
                let meta = match t.in_flight.remove(&id) {
                    Some(f) => Some(f.meta),
                    None => t.queued.remove(&id),
                };
                let Some(meta) = meta else {
                    panic!("indexed hint {id} is neither queued nor in flight");
                };
                t.pending_bytes = t.pending_bytes.saturating_sub(meta.size_bytes);
                t.delivered += 1;
                self.index.remove(&id);
                vec![HintEffect::Delete { ids: vec![id] }]
            }
            ReplayOutcome::Overloaded | ReplayOutcome::Failed => {
                if in_flight {
                    t.requeue(id);
                    t.pause(limits, now_ms);
                }
                Vec::new()
            }
        }
    }

    /// Stop tracking a target that left the cluster: every pending hint for it is
    /// returned as a [`HintEffect::Delete`] (results still in flight are then ignored).
    /// Its counters go too.
    pub fn forget_target(&mut self, target: NodeId) -> Option<HintEffect> {
        let t = self.targets.remove(&target)?;
        let mut ids: Vec<u64> = t.queued.keys().chain(t.in_flight.keys()).copied().collect();
        ids.sort_unstable();
        for id in &ids {
            self.index.remove(id);
        }
        if self.cursor == Some(target) {
            self.cursor = None;
        }
        (!ids.is_empty()).then_some(HintEffect::Delete { ids })
    }

    /// The earliest time [`HintBook::poll`] could do something without other input (a
    /// token refilled, a pause ended, a replay timed out), for the driver's timer. `None`
    /// when only a membership change, an insert or a replay result can make progress.
    pub fn next_wake_ms(&self, now_ms: u64) -> Option<u64> {
        let token_ready_ms = {
            let tokens = self.tokens_at(now_ms);
            if tokens >= MILLI {
                now_ms
            } else {
                let missing = MILLI - tokens;
                now_ms.saturating_add(missing.div_ceil(self.limits.replay_rate_per_s))
            }
        };
        let mut wake: Option<u64> = None;
        let mut consider = |at: u64| wake = Some(wake.map_or(at, |w| w.min(at)));
        for t in self.targets.values() {
            if let Some(deadline) = t.in_flight.values().map(|f| f.deadline_ms).min() {
                consider(deadline.max(now_ms));
            }
            if t.up
                && !t.queued.is_empty()
                && t.in_flight.len() < self.limits.max_in_flight_per_target
            {
                consider(t.paused_until_ms.max(token_ready_ms));
            }
        }
        wake
    }

    pub fn stats(&self) -> BTreeMap<NodeId, TargetStats> {
        self.targets
            .iter()
            .map(|(node, t)| {
                let oldest_queued = t
                    .queued
                    .first_key_value()
                    .map(|(id, m)| (*id, m.created_ms));
                let oldest_in_flight = t
                    .in_flight
                    .first_key_value()
                    .map(|(id, f)| (*id, f.meta.created_ms));
                let oldest = match (oldest_queued, oldest_in_flight) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let stats = TargetStats {
                    pending_count: (t.queued.len() + t.in_flight.len()) as u64,
                    pending_bytes: t.pending_bytes,
                    oldest_created_ms: oldest.map(|(_, created)| created),
                    in_flight: t.in_flight.len(),
                    delivered: t.delivered,
                    skipped_window: t.skipped_window,
                    skipped_bytes: t.skipped_bytes,
                    needs_repair: t.needs_repair,
                    down_since_ms: t.down_since_ms,
                };
                (*node, stats)
            })
            .collect()
    }

    /// Hints pending (queued or in flight) for all targets.
    pub fn pending_count(&self) -> usize {
        self.index.len()
    }

    /// A repair of `target` has run: skipped hints no longer matter.
    pub fn clear_needs_repair(&mut self, target: NodeId) {
        if let Some(t) = self.targets.get_mut(&target) {
            t.needs_repair = false;
        }
    }

    /// Check every internal relationship; cheap enough to run after every step in tests
    /// and the simulator.
    pub fn invariants(&self) {
        assert!(
            self.tokens_milli <= self.limits.burst() * MILLI,
            "token bucket over capacity"
        );
        let mut pending = 0usize;
        for (node, t) in &self.targets {
            assert_eq!(t.up, t.down_since_ms.is_none(), "target {node}: down_since");
            assert!(
                t.in_flight.len() <= self.limits.max_in_flight_per_target,
                "target {node}: too many in flight"
            );
            let mut bytes = 0u64;
            for (id, meta) in &t.queued {
                assert_eq!(*id, meta.id);
                assert_eq!(meta.target, *node, "hint {id} queued under another target");
                assert!(
                    !t.in_flight.contains_key(id),
                    "hint {id} queued and in flight"
                );
                assert_eq!(self.index.get(id), Some(node), "hint {id} index");
                bytes = bytes.saturating_add(meta.size_bytes);
            }
            for (id, f) in &t.in_flight {
                assert_eq!(*id, f.meta.id);
                assert_eq!(
                    f.meta.target, *node,
                    "hint {id} in flight under another target"
                );
                assert_eq!(self.index.get(id), Some(node), "hint {id} index");
                bytes = bytes.saturating_add(f.meta.size_bytes);
            }
            assert_eq!(bytes, t.pending_bytes, "target {node}: pending bytes");
            pending += t.queued.len() + t.in_flight.len();
        }
        assert_eq!(pending, self.index.len(), "index size");
    }

    fn tokens_at(&self, now_ms: u64) -> u64 {
        let capacity = self.limits.burst() * MILLI;
        match self.refilled_ms {
            None => capacity,
            Some(last) => {
                let added = now_ms
                    .saturating_sub(last)
                    .saturating_mul(self.limits.replay_rate_per_s);
                self.tokens_milli.saturating_add(added).min(capacity)
            }
        }
    }

    fn refill(&mut self, now_ms: u64) {
        self.tokens_milli = self.tokens_at(now_ms);
        // Never move the refill time back: a clock that steps back adds nothing.
        self.refilled_ms = Some(self.refilled_ms.map_or(now_ms, |last| last.max(now_ms)));
    }

    fn expire_in_flight(&mut self, now_ms: u64) {
        let limits = &self.limits;
        for t in self.targets.values_mut() {
            let expired: Vec<u64> = t
                .in_flight
                .iter()
                .filter(|(_, f)| f.deadline_ms <= now_ms)
                .map(|(id, _)| *id)
                .collect();
            if !expired.is_empty() {
                for id in expired {
                    t.requeue(id);
                }
                t.pause(limits, now_ms);
            }
        }
    }

    /// The first target after the cursor (cyclically) that may be sent to now.
    fn next_eligible(&self, now_ms: u64) -> Option<NodeId> {
        let after = match self.cursor {
            Some(c) => self.targets.range((Bound::Excluded(c), Bound::Unbounded)),
            None => self.targets.range(..),
        };
        let before = match self.cursor {
            Some(c) => self.targets.range(..=c),
            None => self.targets.range(..0),
        };
        after
            .chain(before)
            .find(|(_, t)| t.can_send(&self.limits, now_ms))
            .map(|(node, _)| *node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HintLimits {
        HintLimits {
            max_hint_window_ms: 1000,
            max_hints_bytes: 100,
            replay_rate_per_s: 100, // burst 10
            max_in_flight_per_target: 2,
            retry_backoff_ms: 50,
            replay_timeout_ms: 500,
        }
    }

    fn meta(id: u64, target: NodeId) -> HintMeta {
        HintMeta {
            id,
            target,
            created_ms: id * 10,
            size_bytes: 10,
        }
    }

    fn replays(effects: &[HintEffect]) -> Vec<(u64, NodeId)> {
        effects
            .iter()
            .filter_map(|e| match e {
                HintEffect::Replay { id, target } => Some((*id, *target)),
                HintEffect::Delete { .. } => None,
            })
            .collect()
    }

    #[test]
    fn replays_oldest_first_within_the_in_flight_limit_round_robin() {
        let mut book = HintBook::new(limits());
        for id in [5, 1, 3] {
            book.insert(meta(id, 7));
        }
        book.insert(meta(2, 8));
        let sent = replays(&book.poll(0));
        assert_eq!(sent, vec![(1, 7), (2, 8), (3, 7)]);
        book.invariants();
        assert_eq!(
            book.poll(0),
            vec![],
            "in-flight limit reached for 7, 8 is empty"
        );
        assert_eq!(
            book.on_replay_result(1, ReplayOutcome::Acked, 1),
            vec![HintEffect::Delete { ids: vec![1] }]
        );
        assert_eq!(replays(&book.poll(1)), vec![(5, 7)]);
        book.invariants();
    }

    #[test]
    fn overloaded_pauses_that_target_only_and_keeps_the_order() {
        let mut book = HintBook::new(limits());
        book.insert(meta(1, 7));
        book.insert(meta(2, 7));
        book.insert(meta(3, 8));
        assert_eq!(replays(&book.poll(0)), vec![(1, 7), (3, 8), (2, 7)]);
        assert!(book
            .on_replay_result(1, ReplayOutcome::Overloaded, 10)
            .is_empty());
        assert!(book
            .on_replay_result(2, ReplayOutcome::Failed, 10)
            .is_empty());
        book.insert(meta(4, 8));
        assert_eq!(replays(&book.poll(10)), vec![(4, 8)], "8 goes on, 7 waits");
        assert_eq!(book.next_wake_ms(10), Some(60));
        assert_eq!(replays(&book.poll(59)), vec![]);
        assert_eq!(replays(&book.poll(60)), vec![(1, 7), (2, 7)]);
        book.invariants();
    }

    #[test]
    fn unanswered_replays_time_out_and_late_acks_still_count() {
        let mut book = HintBook::new(limits());
        book.insert(meta(1, 7));
        assert_eq!(replays(&book.poll(0)), vec![(1, 7)]);
        assert_eq!(book.next_wake_ms(0), Some(500));
        assert_eq!(replays(&book.poll(500)), vec![], "timed out, paused");
        assert_eq!(book.stats()[&7].in_flight, 0);
        // A late failure of the timed-out replay changes nothing; a late ack delivers.
        assert!(book
            .on_replay_result(1, ReplayOutcome::Failed, 501)
            .is_empty());
        assert_eq!(
            book.on_replay_result(1, ReplayOutcome::Acked, 502),
            vec![HintEffect::Delete { ids: vec![1] }]
        );
        assert!(book
            .on_replay_result(1, ReplayOutcome::Acked, 503)
            .is_empty());
        assert_eq!(book.pending_count(), 0);
        book.invariants();
    }

    #[test]
    fn window_and_bytes_bounds_are_counted_and_flag_repair() {
        let mut book = HintBook::new(limits());
        book.set_target_up(7, false, 100);
        assert_eq!(
            book.admit(7, 10, 1100),
            Admission::Store,
            "exactly the window"
        );
        book.set_target_up(7, false, 1050); // still down: the clock keeps running
        assert_eq!(book.admit(7, 10, 1101), Admission::SkippedWindow);
        let s = &book.stats()[&7];
        assert_eq!(
            (s.skipped_window, s.needs_repair, s.down_since_ms),
            (1, true, Some(100))
        );
        book.clear_needs_repair(7);
        book.set_target_up(7, true, 1200);
        assert_eq!(book.admit(7, 10, 1200), Admission::Store);
        for id in 0..10 {
            book.insert(meta(id, 7));
        }
        assert_eq!(book.admit(7, 1, 1200), Admission::SkippedBytes);
        assert_eq!(book.admit(8, 100, 1200), Admission::Store, "per target");
        let s = &book.stats()[&7];
        assert_eq!(
            (s.skipped_bytes, s.needs_repair, s.pending_bytes),
            (1, true, 100)
        );
        book.invariants();
    }

    #[test]
    fn token_bucket_paces_replays() {
        let mut book = HintBook::new(limits()); // 100/s, burst 10
        for id in 0..100 {
            book.insert(meta(id, id % 50));
        }
        assert_eq!(book.poll(0).len(), 10);
        assert_eq!(book.poll(0).len(), 0);
        assert_eq!(book.next_wake_ms(0), Some(10));
        assert_eq!(book.poll(9).len(), 0);
        assert_eq!(book.poll(10).len(), 1);
        assert_eq!(book.poll(1000).len(), 10, "capped at the burst");
        book.invariants();
    }

    #[test]
    fn a_target_going_down_stops_replay_and_in_flight_come_back_failed() {
        let mut book = HintBook::new(limits());
        book.insert(meta(1, 7));
        book.insert(meta(2, 7));
        book.insert(meta(3, 7));
        assert_eq!(replays(&book.poll(0)).len(), 2);
        book.set_target_up(7, false, 5);
        assert!(book
            .on_replay_result(1, ReplayOutcome::Failed, 6)
            .is_empty());
        assert!(book
            .on_replay_result(2, ReplayOutcome::Failed, 6)
            .is_empty());
        assert!(book.poll(1000).is_empty());
        assert_eq!(book.next_wake_ms(1000), None);
        assert_eq!(book.stats()[&7].pending_count, 3);
        book.set_target_up(7, true, 1001);
        assert_eq!(
            replays(&book.poll(1001)),
            vec![(1, 7), (2, 7)],
            "pause ended by up"
        );
        book.invariants();
    }

    #[test]
    fn forget_target_deletes_its_hints() {
        let mut book = HintBook::new(limits());
        book.insert(meta(1, 7));
        book.insert(meta(2, 7));
        book.insert(meta(3, 8));
        book.poll(0);
        assert_eq!(
            book.forget_target(7),
            Some(HintEffect::Delete { ids: vec![1, 2] })
        );
        assert!(book.on_replay_result(1, ReplayOutcome::Acked, 1).is_empty());
        assert_eq!(book.pending_count(), 1);
        assert!(!book.stats().contains_key(&7));
        book.invariants();
    }
}

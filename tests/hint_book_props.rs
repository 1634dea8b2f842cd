//! Properties of the pure hint bookkeeping (cluster::hints::HintBook) against a model:
//! the token bucket is never exceeded over any interval, each replay is the oldest queued
//! hint of an eligible target and nothing is in flight twice, admission follows the
//! window and bytes bounds, stats match the model, invariants hold after every step, and
//! with every target up and every replay acked everything drains.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use ringkv::cluster::hints::{
    Admission, HintBook, HintEffect, HintLimits, HintMeta, ReplayOutcome, TargetStats,
};
use ringkv::cluster::NodeId;

#[derive(Clone, Debug)]
enum Op {
    SetUp {
        target: NodeId,
        up: bool,
    },
    Store {
        target: NodeId,
        size_bytes: u64,
    },
    Poll,
    /// The result of the `pick`-th replay in flight.
    Result {
        pick: prop::sample::Index,
        outcome: ReplayOutcome,
    },
    /// A result for any id ever stored: late, duplicate or unknown.
    StaleResult {
        pick: prop::sample::Index,
        outcome: ReplayOutcome,
    },
    Advance {
        ms: u64,
    },
    ClearRepair {
        target: NodeId,
    },
}

fn outcome() -> impl Strategy<Value = ReplayOutcome> {
    prop_oneof![
        3 => Just(ReplayOutcome::Acked),
        1 => Just(ReplayOutcome::Overloaded),
        1 => Just(ReplayOutcome::Failed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..4, any::<bool>()).prop_map(|(target, up)| Op::SetUp { target, up }),
        5 => (0u64..4, 0u64..60).prop_map(|(target, size_bytes)| Op::Store { target, size_bytes }),
        4 => Just(Op::Poll),
        4 => (any::<prop::sample::Index>(), outcome()).prop_map(|(pick, outcome)| Op::Result { pick, outcome }),
        1 => (any::<prop::sample::Index>(), outcome()).prop_map(|(pick, outcome)| Op::StaleResult { pick, outcome }),
        3 => (0u64..300).prop_map(|ms| Op::Advance { ms }),
        1 => (0u64..4).prop_map(|target| Op::ClearRepair { target }),
    ]
}

fn limits() -> impl Strategy<Value = HintLimits> {
    (
        1u64..2000,
        1usize..4,
        0u64..500,
        0u64..200,
        0u64..100,
        1u64..400,
    )
        .prop_map(
            |(rate, in_flight, window, bytes, backoff, timeout)| HintLimits {
                max_hint_window_ms: window,
                max_hints_bytes: bytes,
                replay_rate_per_s: rate,
                max_in_flight_per_target: in_flight,
                retry_backoff_ms: backoff,
                replay_timeout_ms: timeout,
            },
        )
}

#[derive(Clone, Debug)]
struct ModelTarget {
    up: bool,
    down_since_ms: Option<u64>,
    paused_until_ms: u64,
    queued: BTreeMap<u64, HintMeta>,
    /// id → (hint, sent at)
    in_flight: BTreeMap<u64, (HintMeta, u64)>,
    delivered: u64,
    skipped_window: u64,
    skipped_bytes: u64,
    needs_repair: bool,
}

impl Default for ModelTarget {
    fn default() -> Self {
        Self {
            up: true,
            down_since_ms: None,
            paused_until_ms: 0,
            queued: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            delivered: 0,
            skipped_window: 0,
            skipped_bytes: 0,
            needs_repair: false,
        }
    }
}

impl ModelTarget {
    fn pending_bytes(&self) -> u64 {
        self.queued.values().map(|m| m.size_bytes).sum::<u64>()
            + self
                .in_flight
                .values()
                .map(|(m, _)| m.size_bytes)
                .sum::<u64>()
    }

    fn stats(&self) -> TargetStats {
        let oldest = self
            .queued
            .values()
            .chain(self.in_flight.values().map(|(m, _)| m))
            .min_by_key(|m| m.id)
            .map(|m| m.created_ms);
        TargetStats {
            pending_count: (self.queued.len() + self.in_flight.len()) as u64,
            pending_bytes: self.pending_bytes(),
            oldest_created_ms: oldest,
            in_flight: self.in_flight.len(),
            delivered: self.delivered,
            skipped_window: self.skipped_window,
            skipped_bytes: self.skipped_bytes,
            needs_repair: self.needs_repair,
            down_since_ms: self.down_since_ms,
        }
    }

    fn back_to_queue(&mut self, id: u64, limits: &HintLimits, now_ms: u64) {
        let (meta, _) = self.in_flight.remove(&id).unwrap();
        self.queued.insert(id, meta);
        self.paused_until_ms = self.paused_until_ms.max(now_ms + limits.retry_backoff_ms);
    }
}

struct Harness {
    limits: HintLimits,
    book: HintBook,
    model: BTreeMap<NodeId, ModelTarget>,
    now_ms: u64,
    next_id: u64,
    /// Every id ever inserted, and every id deleted.
    inserted: BTreeSet<u64>,
    deleted: BTreeSet<u64>,
    /// (poll time, replays sent by that poll)
    sends: Vec<(u64, u64)>,
    /// Per target, the ids of every replay in send order.
    replay_order: BTreeMap<NodeId, Vec<u64>>,
}

impl Harness {
    fn new(limits: HintLimits) -> Self {
        Self {
            book: HintBook::new(limits.clone()),
            limits,
            model: BTreeMap::new(),
            now_ms: 0,
            next_id: 0,
            inserted: BTreeSet::new(),
            deleted: BTreeSet::new(),
            sends: Vec::new(),
            replay_order: BTreeMap::new(),
        }
    }

    fn on_deletes(&mut self, effects: &[HintEffect]) {
        for e in effects {
            match e {
                HintEffect::Delete { ids } => {
                    for id in ids {
                        assert!(self.deleted.insert(*id), "hint {id} deleted twice");
                        assert!(self.inserted.contains(id), "unknown hint {id} deleted");
                    }
                }
                HintEffect::Replay { .. } => panic!("results never send: {e:?}"),
            }
        }
    }

    fn result(&mut self, id: u64, outcome: ReplayOutcome) {
        let effects = self.book.on_replay_result(id, outcome, self.now_ms);
        let now = self.now_ms;
        let limits = self.limits.clone();
        let holder = self
            .model
            .iter_mut()
            .find(|(_, t)| t.in_flight.contains_key(&id) || t.queued.contains_key(&id));
        let expected_delete = match (holder, outcome) {
            (Some((_, t)), ReplayOutcome::Acked) => {
                t.in_flight.remove(&id);
                t.queued.remove(&id);
                t.delivered += 1;
                true
            }
            (Some((_, t)), _) => {
                if t.in_flight.contains_key(&id) {
                    t.back_to_queue(id, &limits, now);
                }
                false
            }
            (None, _) => false,
        };
        if expected_delete {
            assert_eq!(effects, vec![HintEffect::Delete { ids: vec![id] }]);
        } else {
            assert!(effects.is_empty(), "{effects:?}");
        }
        self.on_deletes(&effects);
    }

    fn poll(&mut self) -> Vec<(u64, NodeId)> {
        let now = self.now_ms;
        if let Some(wake) = self.book.next_wake_ms(now) {
            assert!(wake >= now, "wake {wake} before now {now}");
        }
        // Timeouts first, as the book does.
        for t in self.model.values_mut() {
            let expired: Vec<u64> = t
                .in_flight
                .iter()
                .filter(|(_, (_, sent))| sent + self.limits.replay_timeout_ms <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                t.back_to_queue(id, &self.limits, now);
            }
        }
        let effects = self.book.poll(now);
        let mut sent = Vec::new();
        for e in &effects {
            let HintEffect::Replay { id, target } = e else {
                panic!("poll only replays: {e:?}");
            };
            let t = self
                .model
                .get_mut(target)
                .expect("replay for a known target");
            assert!(t.up, "replay {id} to target {target} that is down");
            assert!(
                t.paused_until_ms <= now,
                "replay {id} to paused target {target}"
            );
            assert!(
                t.in_flight.len() < self.limits.max_in_flight_per_target,
                "replay {id}: target {target} at its in-flight limit"
            );
            assert!(!t.in_flight.contains_key(id), "hint {id} in flight twice");
            let oldest = *t.queued.keys().next().expect("something queued");
            assert_eq!(*id, oldest, "target {target}: not the oldest queued hint");
            let meta = t.queued.remove(id).unwrap();
            t.in_flight.insert(*id, (meta, now));
            self.replay_order.entry(*target).or_default().push(*id);
            sent.push((*id, *target));
        }
        if !sent.is_empty() {
            self.sends.push((now, sent.len() as u64));
            self.check_token_bucket();
        }
        sent
    }

    /// Over every interval between two polls, replays ≤ burst + rate × interval.
    fn check_token_bucket(&self) {
        // The documented bucket, computed here rather than taken from the book.
        let rate = self.limits.replay_rate_per_s;
        let burst = (rate / 10).max(1);
        assert_eq!(self.limits.burst(), burst);
        let burst_milli = burst * 1000;
        let last = self.sends.len() - 1;
        let (t_end, _) = self.sends[last];
        let mut total = 0;
        for i in (0..=last).rev() {
            let (t_start, n) = self.sends[i];
            total += n;
            assert!(
                total * 1000 <= burst_milli + rate * (t_end - t_start),
                "{total} replays in [{t_start}, {t_end}] ms exceed burst {burst} + rate {rate}/s"
            );
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::SetUp { target, up } => {
                self.book.set_target_up(*target, *up, self.now_ms);
                let t = self.model.entry(*target).or_default();
                if *up && !t.up {
                    t.up = true;
                    t.down_since_ms = None;
                    t.paused_until_ms = 0;
                } else if !*up && t.up {
                    t.up = false;
                    t.down_since_ms = Some(self.now_ms);
                }
            }
            Op::Store { target, size_bytes } => {
                let admission = self.book.admit(*target, *size_bytes, self.now_ms);
                let t = self.model.entry(*target).or_default();
                let expected = if t
                    .down_since_ms
                    .is_some_and(|d| self.now_ms - d > self.limits.max_hint_window_ms)
                {
                    t.skipped_window += 1;
                    t.needs_repair = true;
                    Admission::SkippedWindow
                } else if t.pending_bytes() + size_bytes > self.limits.max_hints_bytes {
                    t.skipped_bytes += 1;
                    t.needs_repair = true;
                    Admission::SkippedBytes
                } else {
                    Admission::Store
                };
                assert_eq!(admission, expected);
                if admission == Admission::Store {
                    let meta = HintMeta {
                        id: self.next_id,
                        target: *target,
                        created_ms: self.now_ms,
                        size_bytes: *size_bytes,
                    };
                    self.next_id += 1;
                    self.book.insert(meta);
                    t.queued.insert(meta.id, meta);
                    self.inserted.insert(meta.id);
                }
            }
            Op::Poll => {
                self.poll();
            }
            Op::Result { pick, outcome } => {
                let in_flight: Vec<u64> = self
                    .model
                    .values()
                    .flat_map(|t| t.in_flight.keys().copied())
                    .collect();
                if !in_flight.is_empty() {
                    self.result(in_flight[pick.index(in_flight.len())], *outcome);
                }
            }
            Op::StaleResult { pick, outcome } => {
                if !self.inserted.is_empty() {
                    // One past the end stands for an id never stored.
                    let i = pick.index(self.inserted.len() + 1);
                    let id = self.inserted.iter().nth(i).copied().unwrap_or(u64::MAX);
                    self.result(id, *outcome);
                }
            }
            Op::Advance { ms } => self.now_ms += ms,
            Op::ClearRepair { target } => {
                self.book.clear_needs_repair(*target);
                if let Some(t) = self.model.get_mut(target) {
                    t.needs_repair = false;
                }
            }
        }
        self.book.invariants();
        let want: BTreeMap<NodeId, TargetStats> =
            self.model.iter().map(|(n, t)| (*n, t.stats())).collect();
        assert_eq!(self.book.stats(), want, "stats after {op:?}");
        let pending: usize = self
            .model
            .values()
            .map(|t| t.queued.len() + t.in_flight.len())
            .sum();
        assert_eq!(self.book.pending_count(), pending);
    }

    /// Every target up, every replay acked: everything inserted is deleted exactly once.
    fn drain(&mut self) {
        let targets: Vec<NodeId> = self.model.keys().copied().collect();
        for target in targets {
            self.step(&Op::SetUp { target, up: true });
        }
        // Whatever is in flight is answered (as a transport would, eventually).
        let in_flight: Vec<u64> = self
            .model
            .values()
            .flat_map(|t| t.in_flight.keys().copied())
            .collect();
        for id in in_flight {
            self.result(id, ReplayOutcome::Acked);
        }
        let mut rounds = 0;
        while self.book.pending_count() > 0 {
            rounds += 1;
            assert!(rounds < 100_000, "no progress draining");
            let wake = self
                .book
                .next_wake_ms(self.now_ms)
                .expect("pending hints for live targets need a wake-up");
            self.now_ms = wake;
            let sent = self.poll();
            for (id, _) in sent {
                self.result(id, ReplayOutcome::Acked);
            }
            self.book.invariants();
        }
        assert_eq!(self.deleted, self.inserted, "every hint delivered");
        assert_eq!(self.book.next_wake_ms(self.now_ms), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hint_book_matches_the_model_and_drains(
        limits in limits(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut h = Harness::new(limits);
        for op in &ops {
            h.step(op);
        }
        h.drain();
    }

    /// With one replay in flight per target, each target sees its hints in id order: the
    /// ids it is sent never decrease (a retry repeats the same id), and a hint once
    /// acknowledged is never sent again.
    #[test]
    fn one_in_flight_means_id_order_per_target(
        limits in limits(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let limits = HintLimits { max_in_flight_per_target: 1, ..limits };
        let mut h = Harness::new(limits);
        for op in &ops {
            h.step(op);
        }
        h.drain();
        for (target, ids) in &h.replay_order {
            prop_assert!(
                ids.windows(2).all(|w| w[0] <= w[1]),
                "target {}: replay order {:?}", target, ids
            );
        }
    }
}

/// A target that was never reported is up; one continuously down for longer than the
/// window is refused, one that comes back is admitted again, and its old hints replay.
#[test]
fn window_then_back_up_replays_the_old_hints() {
    let limits = HintLimits {
        max_hint_window_ms: 100,
        max_hints_bytes: 1000,
        replay_rate_per_s: 1000,
        max_in_flight_per_target: 4,
        retry_backoff_ms: 10,
        replay_timeout_ms: 50,
    };
    let mut h = Harness::new(limits);
    h.step(&Op::Store {
        target: 1,
        size_bytes: 10,
    });
    h.step(&Op::SetUp {
        target: 1,
        up: false,
    });
    h.step(&Op::Store {
        target: 1,
        size_bytes: 10,
    });
    h.step(&Op::Advance { ms: 101 });
    h.step(&Op::Store {
        target: 1,
        size_bytes: 10,
    });
    let s = h.book.stats()[&1].clone();
    assert_eq!(
        (s.pending_count, s.skipped_window, s.needs_repair),
        (2, 1, true)
    );
    h.step(&Op::Poll);
    assert_eq!(h.book.stats()[&1].in_flight, 0, "down: nothing sent");
    h.step(&Op::SetUp {
        target: 1,
        up: true,
    });
    h.step(&Op::Store {
        target: 1,
        size_bytes: 10,
    });
    assert_eq!(h.book.stats()[&1].pending_count, 3);
    h.drain();
    assert_eq!(h.book.stats()[&1].delivered, 3);
    assert!(
        h.book.stats()[&1].needs_repair,
        "a skip stays flagged until repaired"
    );
}

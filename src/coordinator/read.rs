//! The read path of one client request: ask every replica believed alive, answer the
//! client with the merge of the first R replies, and repair every replica whose copy
//! differs from the merge — including replicas that answer after the client was
//! answered, until all contacted replicas replied or the deadline passed.
//!
//! By default ([`Speculation::Always`]) it asks every replica believed alive at once:
//! one extra request at QUORUM of three buys a read repair on every read whose replicas
//! disagree (docs/design.md §6.6), and a slow or silent replica never adds its delay.
//! With [`Speculation::After`] it asks R replicas (its own first) and the others only
//! after a delay or as soon as one of the first fails: Cassandra's `speculative_retry`.
//!
//! A coordinator that is itself a replica names itself with
//! [`ReadCoordinator::wait_for_local`]: the answer then always includes its own copy
//! (unless that read failed), so a read at ONE through a replica answers from that
//! replica, as users of Cassandra expect, rather than from whichever reply came first.
//!
//! Generic over the replica state `S` and its merge function, so tests can use small
//! types; production uses `KeyState` with [`crate::conflict::merge`].

use super::quorum::{QuorumTracker, ReplicaProgress};
use super::CoordinatorError;
use crate::cluster::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadEffect<S> {
    /// Send the read request to this replica.
    Send { to: NodeId },
    /// Call [`ReadCoordinator::on_timer`] at (or after) this time.
    SetTimer { deadline_ms: u64 },
    /// Answer the client: the merged state, `None` if no replica has the key. Emitted
    /// exactly once.
    Respond(Result<Option<S>, CoordinatorError>),
    /// Write `state` to `node` (a replica write; the replica merges it in).
    Repair { node: NodeId, state: S },
}

/// When the replicas beyond the first R are asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speculation {
    /// All alive replicas at once.
    Always,
    /// R replicas at once (`prefer` first, when it is one of them), the rest after
    /// `delay_ms` without an answer, or one of them at once for each first one that fails.
    After {
        delay_ms: u64,
        prefer: Option<NodeId>,
    },
}

/// The most recent replica read latencies of one shard, for a delay set at a percentile
/// of them (`speculative_retry = "99p"`). Bounded: the last [`RecentLatency::CAPACITY`]
/// samples; the percentile is recomputed every [`RecentLatency::REFRESH`] samples.
#[derive(Clone, Debug, Default)]
pub struct RecentLatency {
    samples_us: Vec<u64>,
    next: usize,
    since_refresh: usize,
    /// The last computed (percentile, value in µs).
    cached: Option<(f64, u64)>,
}

impl RecentLatency {
    pub const CAPACITY: usize = 1024;
    pub const REFRESH: usize = 128;

    pub fn record(&mut self, latency_us: u64) {
        if self.samples_us.len() < Self::CAPACITY {
            self.samples_us.push(latency_us);
        } else {
            self.samples_us[self.next] = latency_us;
        }
        self.next = (self.next + 1) % Self::CAPACITY;
        self.since_refresh += 1;
    }

    /// The `p`-th percentile (0 < p < 100) of the recent samples in µs; `None` until
    /// [`RecentLatency::REFRESH`] samples were seen.
    pub fn percentile_us(&mut self, p: f64) -> Option<u64> {
        if self.samples_us.len() < Self::REFRESH {
            return None;
        }
        let stale = self.cached.is_none_or(|(q, _)| q != p) || self.since_refresh >= Self::REFRESH;
        if stale {
            let mut sorted = self.samples_us.clone();
            sorted.sort_unstable();
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            let value = sorted[rank.clamp(1, sorted.len()) - 1];
            self.cached = Some((p, value));
            self.since_refresh = 0;
        }
        self.cached.map(|(_, v)| v)
    }
}

#[derive(Clone, Debug)]
pub struct ReadCoordinator<S> {
    /// None when the request was refused as unavailable before anything was sent.
    tracker: Option<QuorumTracker>,
    merge: fn(&S, &S) -> S,
    /// What each replica that replied holds, as far as we know: its reply, then the
    /// merged state once we sent it as a repair.
    holds: Vec<(NodeId, Option<S>)>,
    /// Merge of every reply so far.
    merged: Option<S>,
    outcome: Option<Result<(), CoordinatorError>>,
    deadline_passed: bool,
    /// The coordinator's own replica, whose reply the answer waits for.
    local: Option<NodeId>,
    /// Alive replicas not asked yet (speculation held them back), in the order to ask.
    reserve: Vec<NodeId>,
    /// When the reserve is asked, if it has not been.
    speculate_at_ms: Option<u64>,
}

impl<S: Clone + PartialEq> ReadCoordinator<S> {
    /// Start a read of `replicas` needing `required_r` replies. Answers `Unavailable`
    /// at once if fewer than R replicas are `alive`.
    pub fn new(
        replicas: &[NodeId],
        alive: impl Fn(NodeId) -> bool,
        required_r: usize,
        now_ms: u64,
        timeout_ms: u64,
        merge: fn(&S, &S) -> S,
    ) -> (Self, Vec<ReadEffect<S>>) {
        Self::with_speculation(
            replicas,
            alive,
            required_r,
            now_ms,
            timeout_ms,
            merge,
            Speculation::Always,
        )
    }

    /// [`ReadCoordinator::new`] asking the replicas as `speculation` says.
    pub fn with_speculation(
        replicas: &[NodeId],
        alive: impl Fn(NodeId) -> bool,
        required_r: usize,
        now_ms: u64,
        timeout_ms: u64,
        merge: fn(&S, &S) -> S,
        speculation: Speculation,
    ) -> (Self, Vec<ReadEffect<S>>) {
        let mut machine = Self {
            tracker: None,
            merge,
            holds: Vec::new(),
            merged: None,
            outcome: None,
            deadline_passed: false,
            local: None,
            reserve: Vec::new(),
            speculate_at_ms: None,
        };
        let effects = match QuorumTracker::new(replicas, alive, required_r, now_ms, timeout_ms) {
            Err(unavailable) => {
                machine.outcome = Some(Err(unavailable));
                vec![ReadEffect::Respond(Err(unavailable))]
            }
            Ok(tracker) => {
                let mut ask = tracker.nodes(ReplicaProgress::Pending);
                let mut effects = Vec::new();
                if let Speculation::After { delay_ms, prefer } = speculation {
                    if let Some(at) = prefer.and_then(|p| ask.iter().position(|n| *n == p)) {
                        let preferred = ask.remove(at);
                        ask.insert(0, preferred);
                    }
                    if ask.len() > required_r {
                        machine.reserve = ask.split_off(required_r);
                        let at_ms = now_ms.saturating_add(delay_ms);
                        machine.speculate_at_ms = Some(at_ms);
                        effects.push(ReadEffect::SetTimer { deadline_ms: at_ms });
                    }
                }
                effects.extend(ask.into_iter().map(|to| ReadEffect::Send { to }));
                effects.push(ReadEffect::SetTimer {
                    deadline_ms: tracker.deadline_ms(),
                });
                machine.tracker = Some(tracker);
                effects
            }
        };
        machine.invariants();
        (machine, effects)
    }

    /// Make the answer wait for `node`'s reply (the coordinator's own replica) as one of
    /// the R, if `node` was contacted. Call before any reply is fed in.
    pub fn wait_for_local(&mut self, node: NodeId) {
        assert!(self.holds.is_empty(), "wait_for_local after replies");
        self.local = Some(node);
    }

    /// Whether the answer may go out: R replies, the local one among them unless it
    /// was never contacted or it failed.
    fn may_answer(&self) -> bool {
        let Some(tracker) = &self.tracker else {
            return false;
        };
        let local_done = self.local.is_none_or(|local| {
            tracker
                .replicas()
                .find(|(n, _)| *n == local)
                .is_none_or(|(_, p)| p != ReplicaProgress::Pending)
        });
        tracker.quorum_reached() && local_done
    }

    /// `node` replied with its state of the key (`None`: it has nothing).
    pub fn on_reply(&mut self, node: NodeId, state: Option<S>) -> Vec<ReadEffect<S>> {
        let mut effects = Vec::new();
        let Some(tracker) = self.tracker.as_mut() else {
            return effects;
        };
        if !tracker.record(node, ReplicaProgress::Answered) {
            return effects;
        }
        if let Some(reply) = &state {
            self.merged = Some(match &self.merged {
                Some(merged) => (self.merge)(merged, reply),
                None => reply.clone(),
            });
        }
        self.holds.push((node, state));
        if self.outcome.is_none() && self.may_answer() {
            self.outcome = Some(Ok(()));
            effects.push(ReadEffect::Respond(Ok(self.merged.clone())));
        }
        self.repair(&mut effects);
        self.invariants();
        effects
    }

    /// `node` answered with an error.
    pub fn on_error(&mut self, node: NodeId) -> Vec<ReadEffect<S>> {
        let mut effects = Vec::new();
        let Some(tracker) = self.tracker.as_mut() else {
            return effects;
        };
        if tracker.record(node, ReplicaProgress::Failed) && self.outcome.is_none() {
            if !self.reserve.is_empty() {
                // A first replica failed: its stand-in is asked at once.
                let to = self.reserve.remove(0);
                effects.push(ReadEffect::Send { to });
            }
            if tracker.quorum_impossible() {
                let failed = tracker.failed_error();
                self.outcome = Some(Err(failed));
                effects.push(ReadEffect::Respond(Err(failed)));
                self.repair(&mut effects);
            } else if self.may_answer() {
                // The local read failed after R others replied: answer with those.
                self.outcome = Some(Ok(()));
                effects.push(ReadEffect::Respond(Ok(self.merged.clone())));
                self.repair(&mut effects);
            }
        }
        self.invariants();
        effects
    }

    /// The timer fired. Before the deadline this is a no-op; at the deadline an
    /// unanswered client gets `Timeout`, and the replies that did arrive still repair
    /// one another.
    pub fn on_timer(&mut self, now_ms: u64) -> Vec<ReadEffect<S>> {
        let mut effects = Vec::new();
        let Some(tracker) = self.tracker.as_ref() else {
            return effects;
        };
        if self.speculate_at_ms.is_some_and(|at| now_ms >= at) {
            self.speculate_at_ms = None;
            // Too slow: the replicas held back are asked too (unless the client was
            // answered already; then they are not needed).
            if self.outcome.is_none() {
                effects.extend(self.reserve.drain(..).map(|to| ReadEffect::Send { to }));
            }
        }
        if now_ms < tracker.deadline_ms() {
            return effects;
        }
        self.deadline_passed = true;
        if self.outcome.is_none() {
            let timeout = tracker.timeout_error();
            self.outcome = Some(Err(timeout));
            effects.push(ReadEffect::Respond(Err(timeout)));
            self.repair(&mut effects);
        }
        self.invariants();
        effects
    }

    /// Once the client has been answered, bring every replica that replied up to the
    /// merge. Before that, wait: more replies may change the merge.
    fn repair(&mut self, effects: &mut Vec<ReadEffect<S>>) {
        let (Some(_), Some(merged)) = (&self.outcome, &self.merged) else {
            return;
        };
        for (node, holds) in &mut self.holds {
            if holds.as_ref() != Some(merged) {
                effects.push(ReadEffect::Repair {
                    node: *node,
                    state: merged.clone(),
                });
                *holds = Some(merged.clone());
            }
        }
    }

    /// The client was answered and no more replies can matter: every contacted replica
    /// answered, or the deadline passed. The driver may drop the machine.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
            && (self.deadline_passed
                || self.tracker.as_ref().is_none_or(|t| {
                    t.replicas()
                        .all(|(n, p)| p != ReplicaProgress::Pending || self.reserve.contains(&n))
                }))
    }

    /// When the driver must call [`ReadCoordinator::on_timer`] next: the speculation
    /// delay while replicas are held back, else the deadline.
    pub fn next_timer_ms(&self) -> Option<u64> {
        let deadline = self.tracker.as_ref().map(|t| t.deadline_ms());
        match (self.speculate_at_ms, deadline) {
            (Some(at), Some(deadline)) => Some(at.min(deadline)),
            (at, deadline) => at.or(deadline),
        }
    }

    /// Ok(()) / the error the client got, once answered.
    pub fn outcome(&self) -> Option<Result<(), CoordinatorError>> {
        self.outcome
    }

    /// Merge of all replies so far.
    pub fn merged(&self) -> Option<&S> {
        self.merged.as_ref()
    }

    pub fn invariants(&self) {
        let Some(tracker) = &self.tracker else {
            assert!(
                matches!(
                    self.outcome,
                    Some(Err(CoordinatorError::Unavailable { .. }))
                ),
                "only an unavailable read has no tracker"
            );
            return;
        };
        tracker.invariants();
        assert!(
            self.reserve.iter().all(|n| tracker
                .replicas()
                .any(|(m, p)| m == *n && p == ReplicaProgress::Pending)),
            "a held-back replica was answered or is not a replica"
        );
        assert_eq!(
            self.holds.len(),
            tracker.answered(),
            "one held state per reply"
        );
        match self.outcome {
            None => {
                assert!(!self.may_answer(), "may answer but did not");
                assert!(!tracker.quorum_impossible(), "quorum lost but no answer");
                assert!(!self.deadline_passed, "deadline passed but no answer");
            }
            Some(Ok(())) => {
                assert!(tracker.quorum_reached(), "ok without quorum");
            }
            Some(Err(_)) => {}
        }
        if self.outcome.is_some() {
            if let Some(merged) = &self.merged {
                assert!(
                    self.holds.iter().all(|(_, h)| h.as_ref() == Some(merged)),
                    "a replica that replied was left unrepaired"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny last-writer-wins state for tests: the larger number wins.
    fn max_merge(a: &u32, b: &u32) -> u32 {
        *a.max(b)
    }

    fn read(alive: &[NodeId], r: usize) -> (ReadCoordinator<u32>, Vec<ReadEffect<u32>>) {
        let alive = alive.to_vec();
        ReadCoordinator::new(
            &[1, 2, 3],
            move |n| alive.contains(&n),
            r,
            0,
            100,
            max_merge,
        )
    }

    #[test]
    fn answers_at_r_with_merge_and_repairs_stale() {
        let (mut c, effects) = read(&[1, 2, 3], 2);
        assert_eq!(effects.len(), 4);
        assert!(c.on_reply(1, Some(5)).is_empty());
        let effects = c.on_reply(2, Some(7));
        assert_eq!(
            effects,
            vec![
                ReadEffect::Respond(Ok(Some(7))),
                ReadEffect::Repair { node: 1, state: 7 }
            ]
        );
        // Late reply, stale: repaired too.
        assert_eq!(
            c.on_reply(3, None),
            vec![ReadEffect::Repair { node: 3, state: 7 }]
        );
        assert!(c.is_finished());
        c.invariants();
    }

    #[test]
    fn late_newer_reply_repairs_everyone_who_replied() {
        let (mut c, _) = read(&[1, 2, 3], 2);
        c.on_reply(1, Some(4));
        assert_eq!(
            c.on_reply(2, Some(4)),
            vec![ReadEffect::Respond(Ok(Some(4)))]
        );
        let effects = c.on_reply(3, Some(9));
        assert_eq!(
            effects,
            vec![
                ReadEffect::Repair { node: 1, state: 9 },
                ReadEffect::Repair { node: 2, state: 9 }
            ]
        );
        assert_eq!(c.merged(), Some(&9));
    }

    #[test]
    fn nobody_has_the_key_is_an_empty_success() {
        let (mut c, _) = read(&[1, 2, 3], 1);
        assert_eq!(c.on_reply(3, None), vec![ReadEffect::Respond(Ok(None))]);
        assert!(c.on_reply(1, None).is_empty());
    }

    #[test]
    fn unavailable_and_timeout() {
        let (c, effects) = read(&[2], 2);
        assert_eq!(
            effects,
            vec![ReadEffect::Respond(Err(CoordinatorError::Unavailable {
                required: 2,
                alive: 1
            }))]
        );
        assert!(c.is_finished());

        let (mut c, _) = read(&[1, 2, 3], 3);
        c.on_reply(1, Some(1));
        c.on_reply(2, Some(2));
        let effects = c.on_timer(100);
        assert_eq!(
            effects,
            vec![
                ReadEffect::Respond(Err(CoordinatorError::Timeout {
                    required: 3,
                    acked: 2
                })),
                ReadEffect::Repair { node: 1, state: 2 }
            ]
        );
        assert!(c.is_finished());
    }

    #[test]
    fn errors_that_make_r_impossible_fail() {
        let (mut c, _) = read(&[1, 2, 3], 2);
        assert!(c.on_error(1).is_empty());
        let effects = c.on_error(2);
        assert!(matches!(
            effects[..],
            [ReadEffect::Respond(Err(CoordinatorError::Failed {
                required: 2,
                acked: 0,
                failed: 2
            }))]
        ));
    }

    #[test]
    fn works_with_key_states() {
        use crate::conflict::{merge, Hlc, KeyState, LwwCell};
        let cell = |ts: u64, v: &[u8]| {
            KeyState::Lww(LwwCell {
                timestamp: Hlc(ts),
                value: Some(v.to_vec()),
            })
        };
        let (mut c, _) = ReadCoordinator::new(&[1, 2], |_| true, 2, 0, 100, merge);
        c.on_reply(1, Some(cell(2, b"new")));
        let effects = c.on_reply(2, Some(cell(1, b"old")));
        assert_eq!(
            effects,
            vec![
                ReadEffect::Respond(Ok(Some(cell(2, b"new")))),
                ReadEffect::Repair {
                    node: 2,
                    state: cell(2, b"new")
                }
            ]
        );
    }

    #[test]
    fn a_local_replica_is_always_among_the_replies_answered() {
        let (mut c, _) = read(&[1, 2, 3], 1);
        c.wait_for_local(3);
        // Replies from others do not answer a read at ONE through replica 3...
        assert!(c.on_reply(1, Some(5)).is_empty());
        assert!(c.on_reply(2, Some(5)).is_empty());
        // ...its own does, with the merge of everything seen.
        let effects = c.on_reply(3, Some(4));
        assert_eq!(effects[0], ReadEffect::Respond(Ok(Some(5))));
        c.invariants();
    }

    #[test]
    fn a_failed_local_read_falls_back_to_the_others() {
        let (mut c, _) = read(&[1, 2, 3], 1);
        c.wait_for_local(3);
        assert!(c.on_reply(1, Some(5)).is_empty());
        assert_eq!(c.on_error(3), vec![ReadEffect::Respond(Ok(Some(5)))]);
        // A down local replica (never contacted) does not hold the answer back.
        let (mut c, _) = read(&[1, 2], 1);
        c.wait_for_local(3);
        assert_eq!(c.on_reply(2, Some(1))[0], ReadEffect::Respond(Ok(Some(1))));
    }

    fn speculative(
        delay_ms: u64,
        prefer: Option<NodeId>,
    ) -> (ReadCoordinator<u32>, Vec<ReadEffect<u32>>) {
        ReadCoordinator::with_speculation(
            &[1, 2, 3],
            |_| true,
            2,
            0,
            100,
            max_merge,
            Speculation::After { delay_ms, prefer },
        )
    }

    fn sends(effects: &[ReadEffect<u32>]) -> Vec<NodeId> {
        effects
            .iter()
            .filter_map(|e| match e {
                ReadEffect::Send { to } => Some(*to),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn speculation_asks_r_replicas_then_the_rest_after_the_delay() {
        let (mut c, effects) = speculative(10, Some(3));
        assert_eq!(
            sends(&effects),
            vec![3, 1],
            "the preferred replica first, R in all"
        );
        assert_eq!(c.next_timer_ms(), Some(10));
        assert!(sends(&c.on_timer(9)).is_empty());
        assert_eq!(sends(&c.on_timer(10)), vec![2]);
        assert_eq!(c.next_timer_ms(), Some(100));
        c.on_reply(2, Some(4));
        assert_eq!(c.on_reply(1, Some(6))[0], ReadEffect::Respond(Ok(Some(6))));
        c.invariants();
    }

    #[test]
    fn speculation_replaces_a_failed_replica_at_once() {
        let (mut c, _) = speculative(50, None);
        assert_eq!(
            sends(&c.on_error(1)),
            vec![3],
            "the held-back replica stands in"
        );
        c.on_reply(2, Some(1));
        assert_eq!(c.on_reply(3, Some(2))[0], ReadEffect::Respond(Ok(Some(2))));
        assert!(c.is_finished());
    }

    #[test]
    fn an_answer_before_the_delay_asks_no_one_else_and_finishes() {
        let (mut c, _) = speculative(10, None);
        c.on_reply(1, Some(1));
        assert_eq!(c.on_reply(2, Some(1))[0], ReadEffect::Respond(Ok(Some(1))));
        assert!(c.is_finished(), "the held-back replica is not waited for");
        assert!(sends(&c.on_timer(10)).is_empty());
    }

    proptest::proptest! {
        /// Any order of replies, failures and timer ticks: one answer, never more than
        /// R sends before the delay unless a replica failed, and every invariant holds.
        #[test]
        fn speculation_answers_exactly_once(
            delay in 0u64..20,
            events in proptest::collection::vec((0u8..3, 1u64..4, 0u32..5), 0..24),
        ) {
            let (mut c, first) = speculative(delay, Some(2));
            let mut asked: Vec<NodeId> = sends(&first);
            proptest::prop_assert_eq!(asked.len(), 2);
            let mut answers = first.iter().filter(|e| matches!(e, ReadEffect::Respond(_))).count();
            let mut now = 0;
            for (kind, node, value) in events {
                let effects = match kind {
                    0 if asked.contains(&node) => c.on_reply(node, Some(value)),
                    1 if asked.contains(&node) => c.on_error(node),
                    _ => {
                        now += 5;
                        c.on_timer(now)
                    }
                };
                asked.extend(sends(&effects));
                answers += effects.iter().filter(|e| matches!(e, ReadEffect::Respond(_))).count();
                c.invariants();
            }
            let last = c.on_timer(1000);
            answers += last.iter().filter(|e| matches!(e, ReadEffect::Respond(_))).count();
            proptest::prop_assert_eq!(answers, 1, "answered exactly once by the deadline");
            let mut sorted = asked.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), asked.len(), "a replica was asked twice");
        }
    }

    #[test]
    fn recent_latency_gives_a_percentile_of_the_last_samples() {
        let mut window = RecentLatency::default();
        for us in 1..RecentLatency::REFRESH as u64 {
            window.record(us);
        }
        assert_eq!(window.percentile_us(99.0), None, "too few samples yet");
        window.record(128);
        assert_eq!(window.percentile_us(50.0), Some(64));
        assert_eq!(window.percentile_us(99.0), Some(127));
        // Old samples fall out: a run of slow reads moves the percentile up.
        for _ in 0..RecentLatency::CAPACITY {
            window.record(10_000);
        }
        assert_eq!(window.percentile_us(50.0), Some(10_000));
    }
}

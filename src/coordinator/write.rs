//! The write path of one client request: send the mutation to every replica believed
//! alive, answer the client at W acks, and keep counting until every replica answered
//! or the deadline passed, so the driver knows which replicas need a hint.
//!
//! Sloppy quorum (docs/design.md §6.7): when home replicas are believed down, each down
//! home is given a stand-in, the next alive node clockwise past the replica set (the
//! caller's `fallbacks`, in ring order). The stand-in stores the mutation as a durable
//! hint for that home and its ack counts toward W. In strict mode there are no stand-ins:
//! fewer than W alive homes is `Unavailable`, and hints (stored by the coordinator for
//! [`WriteCoordinator::unacked`] homes) never count toward W.

use super::quorum::{QuorumTracker, ReplicaProgress};
use super::CoordinatorError;
use crate::cluster::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    /// Send the mutation to this replica.
    Send { to: NodeId },
    /// Send the mutation to stand-in `to`, which stores it as a hint for `home` (a down
    /// home replica) and acks once the hint is durable (sloppy quorum only).
    SendHint { to: NodeId, home: NodeId },
    /// Call [`WriteCoordinator::on_timer`] at (or after) this time.
    SetTimer { deadline_ms: u64 },
    /// Answer the client. Emitted exactly once.
    Respond(Result<(), CoordinatorError>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteCoordinator {
    /// None when the request was refused as unavailable before anything was sent.
    tracker: Option<QuorumTracker>,
    /// The home replicas, primary first (the tracker also lists stand-ins).
    homes: Vec<NodeId>,
    /// (stand-in, the down home it holds a hint for).
    stand_ins: Vec<(NodeId, NodeId)>,
    outcome: Option<Result<(), CoordinatorError>>,
    deadline_passed: bool,
}

impl WriteCoordinator {
    /// Start a strict write to `replicas` needing `required_w` acks (see
    /// [`super::required_replicas`]). Answers `Unavailable` at once if fewer than W
    /// replicas are `alive`.
    pub fn new(
        replicas: &[NodeId],
        alive: impl Fn(NodeId) -> bool,
        required_w: usize,
        now_ms: u64,
        timeout_ms: u64,
    ) -> (Self, Vec<WriteEffect>) {
        Self::new_sloppy(replicas, &[], alive, required_w, now_ms, timeout_ms)
    }

    /// Start a write that may use stand-ins: each home replica believed down is paired
    /// with the next alive node of `fallbacks` (nodes clockwise past the replica set, in
    /// ring order, none of them a home), whose hint ack counts toward W. With no
    /// fallbacks this is [`WriteCoordinator::new`]. `Unavailable` when alive homes plus
    /// stand-ins are fewer than W.
    pub fn new_sloppy(
        replicas: &[NodeId],
        fallbacks: &[NodeId],
        alive: impl Fn(NodeId) -> bool,
        required_w: usize,
        now_ms: u64,
        timeout_ms: u64,
    ) -> (Self, Vec<WriteEffect>) {
        let mut spare = fallbacks
            .iter()
            .copied()
            .filter(|f| !replicas.contains(f) && alive(*f));
        let stand_ins: Vec<(NodeId, NodeId)> = replicas
            .iter()
            .copied()
            .filter(|home| !alive(*home))
            .map_while(|home| spare.next().map(|stand_in| (stand_in, home)))
            .collect();
        let contacted: Vec<NodeId> = replicas
            .iter()
            .copied()
            .chain(stand_ins.iter().map(|(stand_in, _)| *stand_in))
            .collect();
        let is_stand_in = |n: NodeId| stand_ins.iter().any(|(s, _)| *s == n);
        let tracked = QuorumTracker::new(
            &contacted,
            |n| is_stand_in(n) || (replicas.contains(&n) && alive(n)),
            required_w,
            now_ms,
            timeout_ms,
        );
        match tracked {
            Err(unavailable) => {
                let machine = Self {
                    tracker: None,
                    homes: replicas.to_vec(),
                    stand_ins: Vec::new(),
                    outcome: Some(Err(unavailable)),
                    deadline_passed: false,
                };
                machine.invariants();
                (machine, vec![WriteEffect::Respond(Err(unavailable))])
            }
            Ok(tracker) => {
                let mut effects: Vec<WriteEffect> = tracker
                    .nodes(ReplicaProgress::Pending)
                    .into_iter()
                    .map(
                        |to| match stand_ins.iter().find(|(stand_in, _)| *stand_in == to) {
                            Some(&(_, home)) => WriteEffect::SendHint { to, home },
                            None => WriteEffect::Send { to },
                        },
                    )
                    .collect();
                effects.push(WriteEffect::SetTimer {
                    deadline_ms: tracker.deadline_ms(),
                });
                let machine = Self {
                    tracker: Some(tracker),
                    homes: replicas.to_vec(),
                    stand_ins,
                    outcome: None,
                    deadline_passed: false,
                };
                machine.invariants();
                (machine, effects)
            }
        }
    }

    /// `node` durably applied the write.
    pub fn on_ack(&mut self, node: NodeId) -> Vec<WriteEffect> {
        self.on_answer(node, ReplicaProgress::Answered)
    }

    /// `node` answered with an error (overloaded, disk failure, ...).
    pub fn on_error(&mut self, node: NodeId) -> Vec<WriteEffect> {
        self.on_answer(node, ReplicaProgress::Failed)
    }

    fn on_answer(&mut self, node: NodeId, answer: ReplicaProgress) -> Vec<WriteEffect> {
        let mut effects = Vec::new();
        let Some(tracker) = self.tracker.as_mut() else {
            return effects;
        };
        if tracker.record(node, answer) && self.outcome.is_none() {
            let outcome = if tracker.quorum_reached() {
                Some(Ok(()))
            } else if tracker.quorum_impossible() {
                Some(Err(tracker.failed_error()))
            } else {
                None
            };
            if let Some(outcome) = outcome {
                self.outcome = Some(outcome);
                effects.push(WriteEffect::Respond(outcome));
            }
        }
        self.invariants();
        effects
    }

    /// The timer fired. Before the deadline this is a no-op (timers may fire early or
    /// twice); at the deadline an unanswered client gets `Timeout`.
    pub fn on_timer(&mut self, now_ms: u64) -> Vec<WriteEffect> {
        let mut effects = Vec::new();
        let Some(tracker) = self.tracker.as_ref() else {
            return effects;
        };
        if now_ms < tracker.deadline_ms() {
            return effects;
        }
        self.deadline_passed = true;
        if self.outcome.is_none() {
            let timeout = Err(tracker.timeout_error());
            self.outcome = Some(timeout);
            effects.push(WriteEffect::Respond(timeout));
        }
        self.invariants();
        effects
    }

    /// The client was answered and no more answers can matter: every contacted replica
    /// answered, or the deadline passed. The driver may drop the machine.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
            && (self.deadline_passed || self.tracker.as_ref().is_none_or(|t| t.all_answered()))
    }

    pub fn outcome(&self) -> Option<Result<(), CoordinatorError>> {
        self.outcome
    }

    /// Home replicas that hold neither the write nor a hint for it: not acked by the
    /// home itself, nor by a stand-in for it (down, failed or silent). The driver stores
    /// a hint for each once the machine is finished.
    pub fn unacked(&self) -> Vec<NodeId> {
        let Some(tracker) = self.tracker.as_ref() else {
            return Vec::new();
        };
        let answered = tracker.nodes(ReplicaProgress::Answered);
        self.homes
            .iter()
            .copied()
            .filter(|home| !answered.contains(home))
            .filter(|home| {
                !self
                    .stand_ins
                    .iter()
                    .any(|(stand_in, h)| h == home && answered.contains(stand_in))
            })
            .collect()
    }

    /// Nodes that acknowledged: homes, and stand-ins (whose ack is a durable hint).
    pub fn acked(&self) -> Vec<NodeId> {
        self.tracker
            .as_ref()
            .map(|t| t.nodes(ReplicaProgress::Answered))
            .unwrap_or_default()
    }

    /// (stand-in, home) pairs this write used.
    pub fn stand_ins(&self) -> &[(NodeId, NodeId)] {
        &self.stand_ins
    }

    pub fn invariants(&self) {
        match &self.tracker {
            None => assert!(
                matches!(
                    self.outcome,
                    Some(Err(CoordinatorError::Unavailable { .. }))
                ),
                "only an unavailable write has no tracker"
            ),
            Some(tracker) => {
                tracker.invariants();
                for (stand_in, home) in &self.stand_ins {
                    assert!(!self.homes.contains(stand_in), "a home cannot stand in");
                    assert!(self.homes.contains(home), "stand-in for a non-home");
                }
                match self.outcome {
                    None => {
                        assert!(!tracker.quorum_reached(), "quorum reached but no answer");
                        assert!(!tracker.quorum_impossible(), "quorum lost but no answer");
                        assert!(!self.deadline_passed, "deadline passed but no answer");
                    }
                    Some(Ok(())) => assert!(tracker.quorum_reached(), "ok without quorum"),
                    Some(Err(CoordinatorError::Unavailable { .. })) => {
                        panic!("unavailable write with a tracker")
                    }
                    Some(Err(CoordinatorError::Timeout { .. })) => {
                        assert!(self.deadline_passed, "timeout before the deadline")
                    }
                    Some(Err(CoordinatorError::Failed { .. })) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(alive: &[NodeId], w: usize) -> (WriteCoordinator, Vec<WriteEffect>) {
        let alive = alive.to_vec();
        WriteCoordinator::new(&[1, 2, 3], move |n| alive.contains(&n), w, 1000, 500)
    }

    #[test]
    fn fans_out_to_alive_replicas_and_answers_at_w() {
        let (mut c, effects) = write(&[1, 2, 3], 2);
        assert_eq!(
            effects,
            vec![
                WriteEffect::Send { to: 1 },
                WriteEffect::Send { to: 2 },
                WriteEffect::Send { to: 3 },
                WriteEffect::SetTimer { deadline_ms: 1500 }
            ]
        );
        assert!(c.on_ack(2).is_empty());
        assert!(c.on_ack(2).is_empty()); // duplicate
        assert_eq!(c.on_ack(3), vec![WriteEffect::Respond(Ok(()))]);
        assert!(!c.is_finished()); // replica 1 may still ack
        assert_eq!(c.unacked(), vec![1]);
        assert!(c.on_ack(1).is_empty());
        assert!(c.is_finished());
        assert!(c.unacked().is_empty());
        c.invariants();
    }

    #[test]
    fn unavailable_when_too_few_alive() {
        let (c, effects) = write(&[1], 2);
        let err = CoordinatorError::Unavailable {
            required: 2,
            alive: 1,
        };
        assert_eq!(effects, vec![WriteEffect::Respond(Err(err))]);
        assert!(c.is_finished());
        let (_, effects) = write(&[1, 2, 3], 4);
        assert!(matches!(
            effects[..],
            [WriteEffect::Respond(Err(CoordinatorError::Unavailable {
                required: 4,
                alive: 3
            }))]
        ));
    }

    #[test]
    fn down_replica_is_skipped_and_reported_unacked() {
        let (mut c, effects) = write(&[1, 3], 2);
        assert!(!effects.contains(&WriteEffect::Send { to: 2 }));
        c.on_ack(1);
        assert_eq!(c.on_ack(3), vec![WriteEffect::Respond(Ok(()))]);
        assert!(c.is_finished());
        assert_eq!(c.unacked(), vec![2]);
        assert!(c.on_ack(2).is_empty()); // never contacted: ignored
    }

    #[test]
    fn timeout_at_deadline_only() {
        let (mut c, _) = write(&[1, 2, 3], 2);
        c.on_ack(1);
        assert!(c.on_timer(1499).is_empty());
        let err = CoordinatorError::Timeout {
            required: 2,
            acked: 1,
        };
        assert_eq!(c.on_timer(1500), vec![WriteEffect::Respond(Err(err))]);
        assert!(c.is_finished());
        assert!(c.on_timer(1600).is_empty());
        assert!(c.on_ack(2).is_empty()); // late ack: no second response
        c.invariants();
    }

    #[test]
    fn errors_that_make_w_impossible_fail_fast() {
        let (mut c, _) = write(&[1, 2, 3], 3);
        c.on_ack(1);
        let err = CoordinatorError::Failed {
            required: 3,
            acked: 1,
            failed: 1,
        };
        assert_eq!(c.on_error(2), vec![WriteEffect::Respond(Err(err))]);
        assert!(c.on_ack(3).is_empty());
        assert!(c.is_finished());
        assert_eq!(c.unacked(), vec![2]);
    }

    #[test]
    fn sloppy_write_gives_down_homes_stand_ins_that_count_toward_w() {
        // Homes 1,2,3 with 2 and 3 down; fallbacks 4 (down), 5, 6 in ring order.
        let alive = |n: NodeId| [1, 5, 6].contains(&n);
        let (mut c, effects) =
            WriteCoordinator::new_sloppy(&[1, 2, 3], &[4, 5, 6], alive, 2, 0, 100);
        assert_eq!(
            effects,
            vec![
                WriteEffect::Send { to: 1 },
                WriteEffect::SendHint { to: 5, home: 2 },
                WriteEffect::SendHint { to: 6, home: 3 },
                WriteEffect::SetTimer { deadline_ms: 100 }
            ]
        );
        assert!(c.on_ack(5).is_empty());
        assert_eq!(c.on_ack(1), vec![WriteEffect::Respond(Ok(()))]);
        // Home 2 is covered by its stand-in's hint; home 3's stand-in has not acked.
        assert_eq!(c.unacked(), vec![3]);
        assert!(c.on_error(6).is_empty());
        assert!(c.is_finished());
        assert_eq!(c.unacked(), vec![3]);
        assert_eq!(c.acked(), vec![1, 5]);
    }

    #[test]
    fn strict_write_never_counts_a_stand_in() {
        let alive = |n: NodeId| [1, 5, 6].contains(&n);
        let (c, effects) = WriteCoordinator::new_sloppy(&[1, 2, 3], &[], alive, 2, 0, 100);
        assert_eq!(
            effects,
            vec![WriteEffect::Respond(Err(CoordinatorError::Unavailable {
                required: 2,
                alive: 1
            }))]
        );
        assert!(c.unacked().is_empty()); // nothing was accepted, nothing to hint
    }

    #[test]
    fn sloppy_write_is_unavailable_when_homes_and_stand_ins_are_too_few() {
        let alive = |n: NodeId| [1, 4].contains(&n);
        let (_, effects) = WriteCoordinator::new_sloppy(&[1, 2, 3], &[4, 5], alive, 3, 0, 100);
        assert_eq!(
            effects,
            vec![WriteEffect::Respond(Err(CoordinatorError::Unavailable {
                required: 3,
                alive: 2
            }))]
        );
    }
}

//! Replica bookkeeping shared by the read and write coordinators: who was contacted,
//! who answered, who failed, and whether the required count is reached or out of
//! reach. Pure data; it decides nothing about what to send.

use super::CoordinatorError;
use crate::cluster::NodeId;

/// Where one replica stands in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaProgress {
    /// Believed down when the request started; never contacted.
    Skipped,
    /// Contacted, no answer yet.
    Pending,
    /// Answered successfully (write ack or read reply).
    Answered,
    /// Answered with an error.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumTracker {
    /// Distinct replicas in the caller's order (primary first).
    replicas: Vec<(NodeId, ReplicaProgress)>,
    required: usize,
    deadline_ms: u64,
}

impl QuorumTracker {
    /// Start tracking; `Unavailable` when fewer than `required` replicas are alive.
    /// Precondition: `replicas` are distinct (the ring guarantees it) and `required > 0`.
    pub fn new(
        replicas: &[NodeId],
        alive: impl Fn(NodeId) -> bool,
        required: usize,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Result<Self, CoordinatorError> {
        assert!(required > 0, "a request must require at least one replica");
        let tracker = Self {
            replicas: replicas
                .iter()
                .map(|&node| {
                    let progress = if alive(node) {
                        ReplicaProgress::Pending
                    } else {
                        ReplicaProgress::Skipped
                    };
                    (node, progress)
                })
                .collect(),
            required,
            deadline_ms: now_ms.saturating_add(timeout_ms),
        };
        tracker.invariants();
        let alive = tracker.count(ReplicaProgress::Pending);
        if alive < required {
            return Err(CoordinatorError::Unavailable { required, alive });
        }
        Ok(tracker)
    }

    /// Record the first answer of a pending replica. Returns false (and changes
    /// nothing) for duplicates, answers from skipped replicas and unknown nodes, all
    /// of which the network may deliver.
    pub fn record(&mut self, node: NodeId, answer: ReplicaProgress) -> bool {
        assert!(matches!(
            answer,
            ReplicaProgress::Answered | ReplicaProgress::Failed
        ));
        match self.replicas.iter_mut().find(|(n, _)| *n == node) {
            Some((_, progress)) if *progress == ReplicaProgress::Pending => {
                *progress = answer;
                true
            }
            _ => false,
        }
    }

    pub fn count(&self, which: ReplicaProgress) -> usize {
        self.replicas.iter().filter(|(_, p)| *p == which).count()
    }

    pub fn nodes(&self, which: ReplicaProgress) -> Vec<NodeId> {
        self.replicas
            .iter()
            .filter(|(_, p)| *p == which)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Replicas that did not answer successfully (skipped, pending or failed).
    pub fn unanswered(&self) -> Vec<NodeId> {
        self.replicas
            .iter()
            .filter(|(_, p)| *p != ReplicaProgress::Answered)
            .map(|(n, _)| *n)
            .collect()
    }

    pub fn replicas(&self) -> impl Iterator<Item = (NodeId, ReplicaProgress)> + '_ {
        self.replicas.iter().copied()
    }

    pub fn required(&self) -> usize {
        self.required
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    pub fn answered(&self) -> usize {
        self.count(ReplicaProgress::Answered)
    }

    pub fn quorum_reached(&self) -> bool {
        self.answered() >= self.required
    }

    /// Even if every pending replica answers, `required` cannot be reached.
    pub fn quorum_impossible(&self) -> bool {
        self.answered() + self.count(ReplicaProgress::Pending) < self.required
    }

    pub fn all_answered(&self) -> bool {
        self.count(ReplicaProgress::Pending) == 0
    }

    pub fn timeout_error(&self) -> CoordinatorError {
        CoordinatorError::Timeout {
            required: self.required,
            acked: self.answered(),
        }
    }

    pub fn failed_error(&self) -> CoordinatorError {
        CoordinatorError::Failed {
            required: self.required,
            acked: self.answered(),
            failed: self.count(ReplicaProgress::Failed),
        }
    }

    pub fn invariants(&self) {
        assert!(self.required > 0);
        for (i, (node, _)) in self.replicas.iter().enumerate() {
            assert!(
                !self.replicas[..i].iter().any(|(n, _)| n == node),
                "replica {node} listed twice"
            );
        }
    }
}

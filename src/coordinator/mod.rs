//! Per-request coordination (docs/design.md §6.5): fan a client write or read out to the
//! replicas of its key, count answers against the consistency level, merge read replies
//! and repair stale replicas.
//!
//! One small state machine per client request: [`WriteCoordinator`] and
//! [`ReadCoordinator`], sharing the replica bookkeeping of [`quorum::QuorumTracker`].
//! Each takes the replica list (from the ring), a liveness predicate (from the failure
//! detector), `now_ms`, and answers or timers as inputs, and returns effects as data
//! (`Send`, `SetTimer`, `Respond`, `Repair`). They never touch sockets, timers, clocks or
//! storage; the per-shard driver performs the effects, and the simulator drives the
//! same code. Hinted handoff is not built here: [`WriteCoordinator::unacked`] tells the
//! driver which replicas a hint would be for.

pub mod quorum;
pub mod read;
pub mod write;

pub use read::{ReadCoordinator, ReadEffect, RecentLatency, Speculation};
pub use write::{WriteCoordinator, WriteEffect};

use crate::protocol::types::{Consistency, ErrorReply};

/// Replicas a request must hear from, out of `replica_count`. Not clamped to
/// `replica_count`: asking for more than exist is answered `Unavailable`. A count of 0
/// is raised to 1, since a request no replica has seen is not a request.
pub fn required_replicas(consistency: Consistency, replica_count: usize) -> usize {
    consistency.required(replica_count).max(1)
}

/// Why a coordinated request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// Fewer replicas were believed alive than required; nothing was sent.
    #[error("unavailable: {required} replicas required, {alive} alive")]
    Unavailable { required: usize, alive: usize },
    /// The deadline passed with fewer than `required` answers.
    #[error("timeout: {required} replicas required, {acked} answered")]
    Timeout { required: usize, acked: usize },
    /// Enough replicas answered with errors that `required` answers became impossible.
    #[error("failed: {required} replicas required, {acked} answered, {failed} failed")]
    Failed {
        required: usize,
        acked: usize,
        failed: usize,
    },
}

impl CoordinatorError {
    /// The typed error the client receives (docs/design.md §1.6).
    pub fn to_error_reply(self) -> ErrorReply {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match self {
            CoordinatorError::Unavailable { required, alive } => ErrorReply::Unavailable {
                required: count(required),
                alive: count(alive),
            },
            CoordinatorError::Timeout { required, acked } => ErrorReply::Timeout {
                required: count(required),
                acked: count(acked),
            },
            failed @ CoordinatorError::Failed { .. } => ErrorReply::Internal {
                message: failed.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_counts_follow_consistency() {
        assert_eq!(required_replicas(Consistency::Quorum, 3), 2);
        assert_eq!(required_replicas(Consistency::Quorum, 1), 1);
        assert_eq!(required_replicas(Consistency::All, 3), 3);
        assert_eq!(required_replicas(Consistency::Two, 1), 2); // -> Unavailable later
        assert_eq!(required_replicas(Consistency::Count(0), 3), 1);
    }

    #[test]
    fn errors_map_to_wire_replies() {
        assert_eq!(
            CoordinatorError::Timeout {
                required: 2,
                acked: 1
            }
            .to_error_reply(),
            ErrorReply::Timeout {
                required: 2,
                acked: 1
            }
        );
    }
}

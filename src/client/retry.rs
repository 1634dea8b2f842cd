//! The retry safety rule: after a failed attempt at one node, may a request be sent to
//! the next node of its query plan? Pure: the transports ([`super::blocking`], the load
//! generator's target) say what the request was and how far it got, [`decide`]
//! answers, and they act on the answer. This module never touches a socket or a clock.
//!
//! Any node coordinates any key, so a retry at another node is always a valid
//! destination; the only question is whether the request may be executed twice.
//!
//! | stage of the failed attempt              | Get, Topology, Ping | LWW put/delete | causal put/delete | node-bound ops |
//! |------------------------------------------|---------------------|----------------|-------------------|----------------|
//! | not sent (connect refused or timed out,  | next node           | next node      | next node         | surface        |
//! | connection known broken, write failed)   |                     |                |                   |                |
//! | may have arrived (written, then reset,   | next node           | next node      | indeterminate     | surface        |
//! | EOF or read timeout)                     |                     |                |                   |                |
//! | refused unexecuted (`Unavailable`: the   | next node           | next node      | next node         | surface        |
//! | coordinator sent nothing anywhere)       |                     |                |                   |                |
//! | answered (any other typed server error,  | surface             | surface        | surface           | surface        |
//! | an undecodable reply)                    |                     |                |                   |                |
//!
//! Why `Unavailable` goes to the next node: a coordinator answers it before sending the
//! request anywhere (too few replicas alive in its view, or it does not know its ring
//! yet, just after a restart), so nothing was applied, and another coordinator's view
//! may differ. If every node of the plan fails, the caller gets that `Unavailable`
//! rather than a later connection error (Cassandra's drivers retry it on the next host
//! too).
//!
//! Why LWW writes may be sent again: our clients give each put and delete without a
//! context of its own a client write timestamp ([`WriteTimestamp`]), drawn once per
//! request, and the coordinator stores exactly that version. A retry carries the same
//! value (or tombstone) and the same version, so however many times it is executed, and
//! however late (an original held by a stalled node that runs it after the retry
//! succeeded), the key holds one version of it and newer writes stay newer. A write
//! with only a session timestamp (a caller's own context) is stamped by each
//! coordinator that executes it: retried, it is at-least-once delivery of the same
//! value, possibly with a later timestamp. A causal write's context names the
//! versions it replaces; were the first attempt applied, the retry would no longer
//! replace what the caller read, and a second copy of the value would appear as a
//! sibling. The client cannot tell, so it says so ([`super::ClientError::Indeterminate`]).
//! A write without a causal context (none, or a session timestamp) sent to a causal-mode
//! server is a new sibling either way; a retry of one that did arrive can leave a second,
//! equal sibling, which the next write with a read's context replaces.

use super::context_timestamp;
use crate::protocol::session::WriteTimestamp;
use crate::protocol::types::Op;

/// What a request is, as far as sending it twice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Get, Topology, Ping: no effect on the data, any node can answer.
    Read,
    /// A put or delete with no context or a session timestamp (LWW): sending it twice
    /// writes the same value twice.
    SessionWrite,
    /// A put or delete carrying a causal context (or any context that is not a valid
    /// session timestamp): sending it twice may leave a duplicate sibling.
    CausalWrite,
    /// Addressed to one node in particular (auth, admin, peer ops): never sent
    /// elsewhere.
    NodeBound,
}

/// How far a failed attempt got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The request never reached the node: the connect was refused or timed out, the
    /// connection was known broken before the request was written, or the write failed
    /// (a frame the node did not receive whole is never executed).
    NotSent,
    /// The request was written; then the connection was reset, closed or timed out
    /// before its reply: the node may have executed it.
    MayHaveArrived,
    /// The node answered `Unavailable`: it executed nothing and sent nothing on.
    RefusedUnexecuted,
    /// The node answered: a typed error (Timeout, Overloaded, BadRequest...) or a reply
    /// that could not be decoded. An answer, not a connection failure.
    Answered,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Send the request to the next node of its query plan (within its deadline).
    TryNext,
    /// Give the caller the error of this attempt.
    Surface,
    /// Stop: the write may or may not have been applied.
    Indeterminate,
}

/// The kind of `op` (see [`RequestKind`]).
pub fn classify(op: &Op) -> RequestKind {
    match op {
        Op::Get { .. } | Op::Topology | Op::Ping => RequestKind::Read,
        Op::Put { context, .. } | Op::Delete { context, .. } => match context.as_deref() {
            None => RequestKind::SessionWrite,
            Some(bytes) if context_timestamp(Some(bytes)).is_some() => RequestKind::SessionWrite,
            Some(bytes) if matches!(WriteTimestamp::decode(bytes), Some(Ok(_))) => {
                RequestKind::SessionWrite
            }
            Some(_) => RequestKind::CausalWrite,
        },
        _ => RequestKind::NodeBound,
    }
}

/// The retry rule (module doc, table).
pub fn decide(kind: RequestKind, stage: Stage) -> Decision {
    match (kind, stage) {
        (_, Stage::Answered) | (RequestKind::NodeBound, _) => Decision::Surface,
        (_, Stage::NotSent | Stage::RefusedUnexecuted) => Decision::TryNext,
        (RequestKind::Read | RequestKind::SessionWrite, Stage::MayHaveArrived) => Decision::TryNext,
        (RequestKind::CausalWrite, Stage::MayHaveArrived) => Decision::Indeterminate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::session::SessionTimestamp;
    use proptest::prelude::*;

    const KINDS: [RequestKind; 4] = [
        RequestKind::Read,
        RequestKind::SessionWrite,
        RequestKind::CausalWrite,
        RequestKind::NodeBound,
    ];
    const STAGES: [Stage; 4] = [
        Stage::NotSent,
        Stage::MayHaveArrived,
        Stage::RefusedUnexecuted,
        Stage::Answered,
    ];

    fn put(context: Option<Vec<u8>>) -> Op {
        Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            consistency: None,
            context,
            sloppy_quorum: None,
        }
    }

    fn delete(context: Option<Vec<u8>>) -> Op {
        Op::Delete {
            key: b"k".to_vec(),
            consistency: None,
            context,
            sloppy_quorum: None,
        }
    }

    #[test]
    fn the_table() {
        use Decision::*;
        use RequestKind::*;
        use Stage::*;
        let expected = [
            (Read, NotSent, TryNext),
            (Read, MayHaveArrived, TryNext),
            (Read, Answered, Surface),
            (SessionWrite, NotSent, TryNext),
            (SessionWrite, MayHaveArrived, TryNext),
            (SessionWrite, Answered, Surface),
            (CausalWrite, NotSent, TryNext),
            (CausalWrite, MayHaveArrived, Indeterminate),
            (CausalWrite, Answered, Surface),
            (NodeBound, NotSent, Surface),
            (NodeBound, MayHaveArrived, Surface),
            (NodeBound, Answered, Surface),
            (Read, RefusedUnexecuted, TryNext),
            (SessionWrite, RefusedUnexecuted, TryNext),
            (CausalWrite, RefusedUnexecuted, TryNext),
            (NodeBound, RefusedUnexecuted, Surface),
        ];
        for (kind, stage, decision) in expected {
            assert_eq!(decide(kind, stage), decision, "{kind:?} {stage:?}");
        }
    }

    #[test]
    fn classify_reads_writes_and_node_bound_ops() {
        assert_eq!(
            classify(&Op::Get {
                key: b"k".to_vec(),
                consistency: None
            }),
            RequestKind::Read
        );
        assert_eq!(classify(&Op::Topology), RequestKind::Read);
        assert_eq!(classify(&Op::Ping), RequestKind::Read);
        assert_eq!(classify(&put(None)), RequestKind::SessionWrite);
        assert_eq!(classify(&delete(None)), RequestKind::SessionWrite);
        let session = SessionTimestamp(42).encode();
        assert_eq!(
            classify(&put(Some(session.clone()))),
            RequestKind::SessionWrite
        );
        assert_eq!(classify(&delete(Some(session))), RequestKind::SessionWrite);
        // A causal context starts with its version byte (1).
        assert_eq!(
            classify(&put(Some(vec![1, 0, 0]))),
            RequestKind::CausalWrite
        );
        assert_eq!(classify(&delete(Some(vec![1]))), RequestKind::CausalWrite);
        // A broken session timestamp is not trusted to be one.
        let mut broken = SessionTimestamp(7).encode();
        broken.pop();
        assert_eq!(classify(&put(Some(broken))), RequestKind::CausalWrite);
        assert_eq!(
            classify(&Op::Auth { token: vec![] }),
            RequestKind::NodeBound
        );
        assert_eq!(
            classify(&Op::ReplicaRead { key: vec![] }),
            RequestKind::NodeBound
        );
    }

    fn any_kind() -> impl Strategy<Value = RequestKind> {
        proptest::sample::select(KINDS.to_vec())
    }

    fn any_stage() -> impl Strategy<Value = Stage> {
        proptest::sample::select(STAGES.to_vec())
    }

    proptest! {
        /// A request that never reached a node is always sent elsewhere, unless it was
        /// meant for that node alone.
        #[test]
        fn never_sent_is_always_retried(kind in any_kind()) {
            for stage in [Stage::NotSent, Stage::RefusedUnexecuted] {
                let decision = decide(kind, stage);
                prop_assert_eq!(decision == Decision::TryNext, kind != RequestKind::NodeBound);
            }
        }

        /// An answer is never a reason to fail over.
        #[test]
        fn answers_surface(kind in any_kind()) {
            prop_assert_eq!(decide(kind, Stage::Answered), Decision::Surface);
        }

        /// Only a write that may have been applied twice is indeterminate, and it is
        /// never retried.
        #[test]
        fn a_causal_write_is_never_sent_twice(kind in any_kind(), stage in any_stage()) {
            let decision = decide(kind, stage);
            if decision == Decision::Indeterminate {
                prop_assert_eq!((kind, stage), (RequestKind::CausalWrite, Stage::MayHaveArrived));
            }
            if kind == RequestKind::CausalWrite && stage == Stage::MayHaveArrived {
                prop_assert_eq!(decision, Decision::Indeterminate);
            }
        }

        /// Every write with no context or a session timestamp is a session write,
        /// whatever the timestamp; every context without the session magic is causal.
        #[test]
        fn contexts_classify_by_their_kind(
            timestamp in any::<u64>(),
            causal in proptest::collection::vec(any::<u8>(), 0..40),
            is_delete in any::<bool>(),
        ) {
            let write = |context| if is_delete { delete(context) } else { put(context) };
            prop_assert_eq!(
                classify(&write(Some(SessionTimestamp(timestamp).encode()))),
                RequestKind::SessionWrite
            );
            if !SessionTimestamp::is_session_context(&causal) {
                prop_assert_eq!(classify(&write(Some(causal))), RequestKind::CausalWrite);
            }
        }
    }
}

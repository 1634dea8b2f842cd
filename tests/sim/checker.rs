//! Checkers: pure functions from the recorded history and an observed state to a verdict.
//! They run after every read that a client gets back, and at the end of a run on the
//! converged replicas. They never look at how the cluster got there, only at what was
//! promised (acknowledged operations) and what is observed.
//!
//! "Newer" is the version order of the conflict mode, not wall-clock order: in LWW mode
//! a state covers a write if it is not beaten by the write in the LWW rank (timestamp,
//! delete-over-put, value bytes); in causal mode if the write's dot is in the state's
//! context and the write is still a sibling or was superseded by a write whose client
//! context had seen it.

use ringkv::cluster::hints::TargetStats;
use ringkv::cluster::NodeId;
use ringkv::conflict::{CausalState, KeyState, LwwCell};
use std::collections::BTreeMap;

use crate::client::{History, OpKind, OpRecord, WriteVersion};

/// Every value in `state` was produced by a write of this run (nothing invented or
/// resurrected from another key).
fn check_provenance(history: &History, key: &[u8], state: &KeyState) -> Result<(), String> {
    match state {
        KeyState::Lww(cell) => {
            let issued = history
                .writes_of(key)
                .any(|w| w.version.as_ref() == Some(&WriteVersion::Lww(cell.clone())));
            if !issued {
                return Err(format!(
                    "state {cell:?} of key {} matches no write of the run",
                    show(key)
                ));
            }
        }
        KeyState::Causal(causal) => {
            for sibling in &causal.siblings {
                let issued = history.writes_of(key).any(|w| {
                    matches!(&w.version, Some(WriteVersion::Causal { dot, .. }) if *dot == sibling.dot)
                        && w.kind == OpKind::Put(sibling.value.clone())
                });
                if !issued {
                    return Err(format!(
                        "sibling {:?} of key {} matches no write of the run",
                        sibling.dot,
                        show(key)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Run when a coordinator stamps a write: a version names exactly one write. Two LWW
/// puts may not share (timestamp, value) and two causal writes may not share a dot.
pub fn check_stamp(history: &History, op: &OpRecord) -> Result<(), String> {
    let Some(version) = &op.version else {
        return Ok(());
    };
    let clash = history.writes_of(&op.key).find(|w| {
        w.id != op.id
            && match (&w.version, version) {
                // Two deletes stamped alike are the same version (a tombstone carries
                // no bytes to tell them apart); values are unique, so a live clash is not.
                (Some(WriteVersion::Lww(a)), WriteVersion::Lww(b)) => a == b && b.value.is_some(),
                (
                    Some(WriteVersion::Causal { dot: a, .. }),
                    WriteVersion::Causal { dot: b, .. },
                ) => a == b,
                _ => false,
            }
    });
    match clash {
        Some(other) => Err(format!(
            "version reused: write op {} was stamped {} which write op {} already carries",
            op.id,
            describe_version(Some(version)),
            other.id
        )),
        None => Ok(()),
    }
}

/// `state` covers the acknowledged write `write` (see the module doc).
fn covers(history: &History, key: &[u8], state: Option<&KeyState>, write: &OpRecord) -> bool {
    match (&write.version, state) {
        (None, _) => panic!("acknowledged write {} was never stamped", write.id),
        (Some(_), None) => false,
        (Some(WriteVersion::Lww(cell)), Some(KeyState::Lww(observed))) => !cell.wins_over(observed),
        (Some(WriteVersion::Causal { dot, .. }), Some(KeyState::Causal(observed))) => {
            let OpKind::Put(value) = &write.kind else {
                return false;
            };
            covers_causal(history, key, observed, dot, value.as_deref())
        }
        _ => false,
    }
}

fn covers_causal(
    history: &History,
    key: &[u8],
    observed: &CausalState,
    dot: &ringkv::conflict::Dot,
    value: Option<&[u8]>,
) -> bool {
    if !observed.context.contains(dot) {
        return false;
    }
    if let Some(sibling) = observed.siblings.iter().find(|s| s.dot == *dot) {
        // The dot names exactly one write: a sibling under it with other bytes means
        // this write was replaced by an impostor, not kept.
        return sibling.value.as_deref() == value;
    }
    // Gone from the siblings: only legitimate if some write that saw it is itself
    // reflected in the observed state.
    history.writes_of(key).any(|w| match &w.version {
        Some(WriteVersion::Causal {
            dot: successor,
            context,
        }) => context.contains(dot) && observed.context.contains(successor),
        _ => false,
    })
}

/// Which acknowledged writes a read is promised to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPromise {
    /// R + W <= N: none (only provenance is checked).
    Nothing,
    /// R + W > N with strict quorums (and the sweep at ALL after every hint drained):
    /// every write acknowledged before the read began.
    EveryAckedWrite,
    /// R + W > N with sloppy quorum: only writes whose W acks all came from home
    /// replicas. A write acknowledged with a stand-in's hint ack may sit in a hint no
    /// home has yet, so a read of R homes need not see it until the hints drain; such
    /// writes are checked at the end (`check_durable`, after the drain and the sweep).
    HomeAckedWrites,
}

/// A read that started at `read.start_step` returned `state`; it must cover the writes
/// acknowledged before it began that `promise` names.
pub fn check_read(
    history: &History,
    read: &OpRecord,
    state: Option<&KeyState>,
    promise: ReadPromise,
) -> Result<(), String> {
    if let Some(state) = state {
        check_provenance(history, &read.key, state)?;
    }
    let promised = history
        .acked_writes_before(&read.key, read.start_step)
        .filter(|w| match promise {
            ReadPromise::Nothing => false,
            ReadPromise::EveryAckedWrite => true,
            ReadPromise::HomeAckedWrites => !w.via_stand_in,
        });
    for write in promised {
        if !covers(history, &read.key, state, write) {
            return Err(format!(
                "read-after-write: read op {} of key {} via node {} (started step {}) returned {} \
                 which does not cover write op {} {} acknowledged at step {:?}{}",
                read.id,
                show(&read.key),
                read.coordinator,
                read.start_step,
                describe(state),
                write.id,
                describe_version(write.version.as_ref()),
                write.end_step,
                if write.via_stand_in {
                    " (with a stand-in's hint ack)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// After the run: the converged state of `key` covers every acknowledged write.
pub fn check_durable(
    history: &History,
    key: &[u8],
    state: Option<&KeyState>,
) -> Result<(), String> {
    if let Some(state) = state {
        check_provenance(history, key, state)?;
    }
    for write in history.acked_writes_before(key, u64::MAX) {
        if !covers(history, key, state, write) {
            return Err(format!(
                "lost write: final state {} of key {} does not cover acknowledged write op {} {}",
                describe(state),
                show(key),
                write.id,
                describe_version(write.version.as_ref())
            ));
        }
    }
    Ok(())
}

/// After faults stopped and repairs ran, every replica of `key` holds the same state.
pub fn check_converged(key: &[u8], replicas: &[(NodeId, Option<KeyState>)]) -> Result<(), String> {
    if let Some((first_node, first)) = replicas.first() {
        for (node, state) in &replicas[1..] {
            if state != first {
                return Err(format!(
                    "divergence: key {} is {} on node {first_node} but {} on node {node}",
                    show(key),
                    describe(first.as_ref()),
                    describe(state.as_ref())
                ));
            }
        }
    }
    Ok(())
}

/// After faults stopped and the network healed, `node` has delivered every hint: its
/// book has nothing pending for any target (no target is permanently gone in the
/// simulator, so there is no exception) and no hint append is still in progress.
/// Targets that missed writes because the window or bytes bound refused a hint
/// (`needs_repair`) are not an exception either: they converge through the read-repair
/// sweep, which `check_converged` verifies.
pub fn check_hints_drained(
    node: NodeId,
    stats: &BTreeMap<NodeId, TargetStats>,
    appends_in_progress: usize,
) -> Result<(), String> {
    let stuck: Vec<String> = stats
        .iter()
        .filter(|(_, s)| s.pending_count > 0)
        .map(|(target, s)| {
            format!(
                "{} for node {target} (in flight {}, target down since {:?})",
                s.pending_count, s.in_flight, s.down_since_ms
            )
        })
        .collect();
    if stuck.is_empty() && appends_in_progress == 0 {
        return Ok(());
    }
    Err(format!(
        "hints not drained on node {node}: {} pending, {appends_in_progress} appends in progress",
        if stuck.is_empty() {
            "none".to_owned()
        } else {
            stuck.join(", ")
        }
    ))
}

pub fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn describe(state: Option<&KeyState>) -> String {
    match state {
        None => "nothing".to_owned(),
        Some(KeyState::Lww(LwwCell { timestamp, value })) => format!(
            "lww(ts {}.{}, {})",
            timestamp.physical_ms(),
            timestamp.logical(),
            value.as_deref().map_or("tombstone".to_owned(), show)
        ),
        Some(KeyState::Causal(s)) => format!(
            "causal(siblings {:?}, context {:?})",
            s.siblings
                .iter()
                .map(|x| (x.dot.actor.node_id, x.dot.actor.generation, x.dot.counter))
                .collect::<Vec<_>>(),
            s.context
        ),
    }
}

fn describe_version(version: Option<&WriteVersion>) -> String {
    match version {
        None => "unstamped".to_owned(),
        Some(WriteVersion::Lww(cell)) => describe(Some(&KeyState::Lww(cell.clone()))),
        Some(WriteVersion::Causal { dot, context }) => format!(
            "dot ({}, {}, {}) with client context {context:?}",
            dot.actor.node_id, dot.actor.generation, dot.counter
        ),
    }
}

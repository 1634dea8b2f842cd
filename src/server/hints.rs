//! Hinted handoff on one shard (docs/design.md §6.7): the durable hint log of this
//! shard, the pure [`HintBook`] that bounds and schedules it, and the glommio tasks that
//! carry its effects — storing a hint for a replica that did not acknowledge a write (or
//! for a down home, as a sloppy-quorum stand-in), and replaying hints to their target
//! when gossip marks it up, rate-limited, in the low-share hint task queue.
//!
//! Must never: count a hint before it is durable (a stand-in acks only after the append's
//! fdatasync), delete a hint before its target acknowledged the replay (the delivered
//! marker is written after the ack), drop a hint silently (a bound that refuses one is
//! counted per target and marks the target as needing repair), or replay without a rate
//! limit. Replay is at-least-once; mutations are versioned, so a duplicate is harmless.

use super::handler::now_ms;
use super::replication::{apply_replica_write, peer_call};
use super::shard::Shard;
use crate::cluster::hints::{
    Admission, HintBook, HintEffect, HintLimits, HintMeta, ReplayOutcome, TargetStats,
};
use crate::cluster::NodeId;
use crate::config::Config;
use crate::protocol::types::{ErrorReply, NodeInfo, NodeStatus, Op, Reply};
use crate::storage::commitlog::RecoveryPolicy;
use crate::storage::glommio_disk::GlommioDisk;
use crate::storage::hintlog::HintLog;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

/// Hint log segment size: hints are small and a segment is released only when every
/// hint in it was delivered, so segments are kept small.
const HINT_SEGMENT_BYTES: u64 = 4 << 20;
/// Hint replays in flight per target at once.
const MAX_IN_FLIGHT_PER_TARGET: usize = 16;
/// Pause for a target after a replay failed or it answered `Overloaded`.
const RETRY_BACKOFF_MS: u64 = 500;

/// A stored hint's mutation, kept in memory until delivered (bounded by
/// `max_hints_bytes` per target).
struct Payload {
    key: Vec<u8>,
    state: Vec<u8>,
}

/// One shard's hints.
pub struct Hints {
    log: HintLog<GlommioDisk>,
    book: RefCell<HintBook>,
    payloads: RefCell<BTreeMap<u64, Rc<Payload>>>,
    /// Hints of nodes that left the cluster, to be marked delivered by the replay loop
    /// (their writes reached the ranges' new owners through the other replicas and
    /// the decommission stream; Cassandra drops them the same way).
    forgotten: RefCell<Vec<u64>>,
    wake_tx: LocalSender<()>,
    wake_rx: LocalReceiver<()>,
}

/// The book's limits from the configuration.
pub fn limits(config: &Config) -> HintLimits {
    HintLimits {
        max_hint_window_ms: config.max_hint_window_ms,
        max_hints_bytes: config.max_hints_bytes,
        replay_rate_per_s: config.hint_replay_rate.max(1),
        max_in_flight_per_target: MAX_IN_FLIGHT_PER_TARGET,
        retry_backoff_ms: RETRY_BACKOFF_MS,
        // A replay's peer call gives up at request_timeout_ms (twice with the pool's one
        // retry); the book's own timeout is a backstop past that.
        replay_timeout_ms: config.request_timeout_ms.saturating_mul(3).max(1),
    }
}

impl Hints {
    /// Open (and recover) the hint log in `dir`; every pending hint goes back into the
    /// book, to be replayed when its target is up.
    pub async fn open(dir: &std::path::Path, config: &Config) -> Result<Hints, String> {
        let disk = GlommioDisk::open(dir)
            .await
            .map_err(|e| format!("cannot open hint directory {}: {e}", dir.display()))?;
        let (log, recovered) = HintLog::open(
            disk,
            RecoveryPolicy::TolerateCorruptTail,
            HINT_SEGMENT_BYTES,
        )
        .await
        .map_err(|e| format!("cannot open hint log in {}: {e}", dir.display()))?;
        let mut book = HintBook::new(limits(config));
        let mut payloads = BTreeMap::new();
        for hint in recovered.pending {
            book.insert(HintMeta {
                id: hint.id,
                target: hint.target,
                created_ms: hint.created_ms,
                size_bytes: (hint.key.len() + hint.state.len()) as u64,
            });
            payloads.insert(
                hint.id,
                Rc::new(Payload {
                    key: hint.key,
                    state: hint.state,
                }),
            );
        }
        if !payloads.is_empty() {
            tracing::info!(pending = payloads.len(), dir = %dir.display(), "hints recovered");
        }
        let (wake_tx, wake_rx) = local_channel::new_bounded(1);
        Ok(Hints {
            log,
            book: RefCell::new(book),
            payloads: RefCell::new(payloads),
            forgotten: RefCell::new(Vec::new()),
            wake_tx,
            wake_rx,
        })
    }

    /// Nudge the replay loop (a new hint, a membership change, a finished replay).
    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Per-target counters for `status` and metrics.
    pub fn stats(&self) -> BTreeMap<NodeId, TargetStats> {
        self.book.borrow().stats()
    }
}

/// Store a durable hint of `state` (an encoded `KeyState`) for `target`. Ok once it is
/// durable; Err when a bound refused it (counted) or the log failed.
pub async fn store(
    shard: &Rc<Shard>,
    target: NodeId,
    key: &[u8],
    state: &[u8],
) -> Result<(), String> {
    let hints = &shard.hints;
    let size_bytes = (key.len() + state.len()) as u64;
    let now = now_ms();
    match hints.book.borrow_mut().admit(target, size_bytes, now) {
        Admission::Store => {}
        Admission::SkippedWindow => {
            return Err(format!(
                "node {target:016x} has been down longer than max_hint_window; write counted as needing repair"
            ))
        }
        Admission::SkippedBytes => {
            return Err(format!(
                "hints for node {target:016x} reached max_hints_bytes; write counted as needing repair"
            ))
        }
    }
    let id = hints
        .log
        .append(target, now, key, state)
        .await
        .map_err(|e| format!("hint log append failed: {e}"))?;
    hints.payloads.borrow_mut().insert(
        id,
        Rc::new(Payload {
            key: key.to_vec(),
            state: state.to_vec(),
        }),
    );
    hints.book.borrow_mut().insert(HintMeta {
        id,
        target,
        created_ms: now,
        size_bytes,
    });
    hints.wake();
    Ok(())
}

/// A `HintReplay` op that arrived from a peer: a replayed hint for this node (apply it
/// like a replica write), or a sloppy-quorum hint for a down home (store it, ack when
/// durable; a refusal is an error, so the coordinator does not count it).
pub async fn on_hint_op(shard: &Rc<Shard>, key: &[u8], state: &[u8], target: NodeId) -> Reply {
    if target == shard.node_id {
        return apply_replica_write(shard, key, state).await;
    }
    match store(shard, target, key, state).await {
        Ok(()) => Reply::Done,
        Err(message) => Reply::Error(ErrorReply::Internal { message }),
    }
}

/// Liveness of every node in a new membership snapshot, for the window bound and replay.
pub fn on_topology(shard: &Shard, nodes: &[NodeInfo]) {
    let now = now_ms();
    let mut book = shard.hints.book.borrow_mut();
    for node in nodes.iter().filter(|n| n.node_id != shard.node_id) {
        if node.status == NodeStatus::Left {
            if let Some(HintEffect::Delete { ids }) = book.forget_target(node.node_id) {
                tracing::info!(target_node = %format!("{:016x}", node.node_id), hints = ids.len(), "dropping hints for a node that left");
                shard.hints.forgotten.borrow_mut().extend(ids);
            }
            continue;
        }
        book.set_target_up(node.node_id, node.up, now);
    }
    drop(book);
    shard.hints.wake();
}

/// The replay loop of one shard: until the node stops, send what the book allows now,
/// then sleep until the book's next wake time or a nudge.
pub async fn run_replay(shard: Rc<Shard>) {
    let hints = &shard.hints;
    while !shard.stopping.is_set() {
        let now = now_ms();
        let forgotten = std::mem::take(&mut *hints.forgotten.borrow_mut());
        if !forgotten.is_empty() {
            perform(&shard, vec![HintEffect::Delete { ids: forgotten }]).await;
        }
        let effects = hints.book.borrow_mut().poll(now);
        perform(&shard, effects).await;
        let sleep_ms = hints
            .book
            .borrow()
            .next_wake_ms(now)
            .map_or(1_000, |at| at.saturating_sub(now).clamp(1, 1_000));
        futures_lite::future::or(
            async {
                let _ = hints.wake_rx.recv().await;
            },
            futures_lite::future::or(
                glommio::timer::sleep(Duration::from_millis(sleep_ms)),
                shard.stopping.wait(),
            ),
        )
        .await;
    }
}

/// Carry out the book's effects: replays become tasks; deletions are written to the log.
async fn perform(shard: &Rc<Shard>, effects: Vec<HintEffect>) {
    for effect in effects {
        match effect {
            HintEffect::Replay { id, target } => {
                let replayer = shard.clone();
                let spawned = glommio::spawn_local_into(
                    async move { replay_one(replayer, id, target).await },
                    shard.hint_queue,
                );
                match spawned {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot spawn a hint replay"),
                }
            }
            HintEffect::Delete { ids } => {
                if let Err(e) = shard.hints.log.mark_delivered(&ids).await {
                    // The hints stay in the log and will be replayed again after a
                    // restart (harmless: versioned); nothing is lost.
                    tracing::error!(error = %e, "cannot record delivered hints");
                }
                let mut payloads = shard.hints.payloads.borrow_mut();
                for id in ids {
                    payloads.remove(&id);
                }
            }
        }
    }
}

/// Send hint `id` to `target` and feed the outcome back to the book.
async fn replay_one(shard: Rc<Shard>, id: u64, target: NodeId) {
    let payload = shard.hints.payloads.borrow().get(&id).cloned();
    let node = target_info(&shard, target);
    let outcome = match (payload, node) {
        (Some(payload), Some(node)) => {
            let op = Op::HintReplay {
                key: payload.key.clone(),
                state: payload.state.clone(),
                target_node_id: target,
            };
            match peer_call(&shard, &node, &payload.key, op).await {
                Ok(Reply::Done) => ReplayOutcome::Acked,
                Ok(Reply::Error(ErrorReply::Overloaded)) => ReplayOutcome::Overloaded,
                Ok(other) => {
                    tracing::debug!(target_node = %format!("{target:016x}"), reply = ?other, "hint replay refused");
                    ReplayOutcome::Failed
                }
                Err(e) => {
                    tracing::debug!(target_node = %format!("{target:016x}"), error = %e, "hint replay failed");
                    ReplayOutcome::Failed
                }
            }
        }
        _ => ReplayOutcome::Failed,
    };
    let effects = shard
        .hints
        .book
        .borrow_mut()
        .on_replay_result(id, outcome, now_ms());
    perform(&shard, effects).await;
    shard.hints.wake();
}

/// `target`'s addresses from the latest membership snapshot.
fn target_info(shard: &Shard, target: NodeId) -> Option<NodeInfo> {
    let topology = shard.topology.borrow();
    let (_, nodes) = topology.as_ref()?;
    nodes.iter().find(|n| n.node_id == target).cloned()
}

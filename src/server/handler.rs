//! Execute one operation on the shard that owns its key: stamp the version, call the
//! engine (a node alone) or coordinate the replicas ([`super::replication`]), shape the
//! reply. A single node is its own and only replica and behaves as it always did.
//!
//! It also owns the server's wall clock ([`now_ms`]), including the test-only
//! `clock_offset_ms` that shifts it, and the LWW session timestamps
//! ([`crate::protocol::session`]): a write's session context is observed before the
//! write is stamped, and the ack carries the stamp.

use super::replication::{self, WriteOpts};
use super::shard::Shard;
use crate::conflict::{
    causal, Actor, CausalContext, CausalState, ConflictMode, Hlc, KeyState, LwwCell,
};
use crate::protocol::session::{SessionTimestamp, WriteTimestamp};
use crate::protocol::types::{ErrorReply, NodeInfo, NodeStatus, Op, Reply, Topology};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `clock_offset_ms` (tests only): added to every wall-clock read of this process. One
/// value for the whole process, set once at startup before the first read.
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shift this process's wall clock by `offset_ms` (config `clock_offset_ms`, a testing
/// aid that simulates a skewed clock). Called once by `server::run` at startup.
pub fn set_clock_offset_ms(offset_ms: i64) {
    CLOCK_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// Wall-clock milliseconds since the Unix epoch plus `clock_offset_ms`: the HLC's
/// physical input, and every other wall-clock read of the server (so one node's
/// clock is consistently skewed, as a real skewed clock would be).
pub fn now_ms() -> u64 {
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    wall_ms.saturating_add_signed(CLOCK_OFFSET_MS.load(Ordering::Relaxed))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Reply {
    Reply::Error(ErrorReply::Internal {
        message: e.to_string(),
    })
}

/// The reply to a get: every live value, and the opaque context: in causal mode the
/// causal context, in LWW mode the version's timestamp as a session timestamp (a client
/// learns from reads too, so its next write comes after what it read).
pub fn value_reply(state: Option<KeyState>) -> Reply {
    match state {
        None => Reply::Value {
            values: Vec::new(),
            context: None,
        },
        Some(KeyState::Lww(cell)) => Reply::Value {
            values: cell.value.into_iter().collect(),
            context: Some(SessionTimestamp(cell.timestamp.0).encode()),
        },
        Some(KeyState::Causal(state)) => {
            let context = Some(state.read_context().encode());
            let values = state.siblings.into_iter().filter_map(|s| s.value).collect();
            Reply::Value { values, context }
        }
    }
}

/// Execute `op` on this shard. Peer ops only arrive here from authenticated peer
/// connections (the connection refuses them from clients).
pub async fn execute_local(shard: &Rc<Shard>, op: Op) -> Reply {
    match op {
        Op::Get { key, consistency } => match replication::placement(shard, &key) {
            Ok(Some(placement)) => {
                replication::coordinate_read(shard, placement, &key, consistency).await
            }
            Ok(None) => match shard.engine.read(&key).await {
                Ok(state) => value_reply(state),
                Err(e) => internal(e),
            },
            Err(not_ready) => {
                not_ready.reply(shard, consistency.unwrap_or(shard.config.read_consistency))
            }
        },
        Op::Put {
            key,
            value,
            context,
            consistency,
            sloppy_quorum,
        } => {
            let opts = WriteOpts {
                consistency,
                sloppy_quorum,
            };
            write(shard, &key, Some(value), context, opts).await
        }
        Op::Delete {
            key,
            context,
            consistency,
            sloppy_quorum,
        } => {
            let opts = WriteOpts {
                consistency,
                sloppy_quorum,
            };
            write(shard, &key, None, context, opts).await
        }
        Op::Ping => Reply::Pong,
        Op::Topology => Reply::Topology(local_topology(shard).await),
        Op::ReplicaWrite { key, state } => {
            replication::apply_replica_write(shard, &key, &state).await
        }
        Op::ReplicaRead { key } => replication::answer_replica_read(shard, &key).await,
        Op::HintReplay {
            key,
            state,
            target_node_id,
        } => super::hints::on_hint_op(shard, &key, &state, target_node_id).await,
        Op::StreamRange {
            start_exclusive,
            end_inclusive,
            after_key,
            limit_keys,
            limit_bytes,
        } => {
            super::streaming::on_stream_range(
                shard,
                start_exclusive,
                end_inclusive,
                after_key,
                limit_keys,
                limit_bytes,
            )
            .await
        }
        // The router sends it to shard 0, which owns membership.
        Op::Decommission => super::streaming::decommission(shard).await,
        Op::Repair => super::streaming::repair(shard).await,
        Op::PeerHandshake { .. } | Op::Gossip(_) => Reply::Error(ErrorReply::Unauthorized),
        // Placeholder until client auth is wired: with no token configured, Auth succeeds
        // whatever it carries (as `auth::ClientAuthState::NotRequired` says); with one
        // configured, refuse rather than pretend to have checked it.
        // Answered by the connection (it owns the authentication state); never routed.
        Op::Auth { .. } => Reply::Error(ErrorReply::Internal {
            message: "Auth reached a shard".to_owned(),
        }),
    }
}

/// A put (`Some(value)`) or delete (`None`) under the node's conflict mode: stamped
/// here, then stored locally (a node alone) or replicated to the key's replicas.
async fn write(
    shard: &Rc<Shard>,
    key: &[u8],
    value: Option<Vec<u8>>,
    context: Option<Vec<u8>>,
    opts: WriteOpts,
) -> Reply {
    let placement = match replication::placement(shard, key) {
        Ok(placement) => placement,
        Err(not_ready) => {
            let consistency = opts.consistency.unwrap_or(shard.config.write_consistency);
            return not_ready.reply(shard, consistency);
        }
    };
    match shard.config.conflict_mode {
        ConflictMode::Lww => {
            // Any other context (a causal one) means nothing to LWW and is ignored.
            let bytes = context.as_deref().unwrap_or_default();
            let stamp = match (
                SessionTimestamp::decode(bytes),
                WriteTimestamp::decode(bytes),
            ) {
                (Some(Ok(session)), _) => ClientStamp::After(session.0),
                (_, Some(Ok(WriteTimestamp(0)))) => {
                    return Reply::Error(ErrorReply::BadRequest {
                        message: "invalid context: a write timestamp of 0".into(),
                    })
                }
                (_, Some(Ok(exact))) => ClientStamp::Exactly(exact.0),
                (Some(Err(e)), _) | (_, Some(Err(e))) => {
                    return Reply::Error(ErrorReply::BadRequest {
                        message: format!("invalid context: {e}"),
                    })
                }
                (None, None) => ClientStamp::None,
            };
            write_lww(shard, key, value, placement, opts, stamp).await
        }
        ConflictMode::Causal => {
            if let Some(p) = placement
                .as_ref()
                .filter(|p| !p.replicas.contains(&shard.node_id))
            {
                // The read-modify-write needs a replica's copy as its base.
                let op = match value {
                    Some(value) => Op::Put {
                        key: key.to_vec(),
                        value,
                        consistency: opts.consistency,
                        context,
                        sloppy_quorum: opts.sloppy_quorum,
                    },
                    None => Op::Delete {
                        key: key.to_vec(),
                        consistency: opts.consistency,
                        context,
                        sloppy_quorum: opts.sloppy_quorum,
                    },
                };
                return replication::forward_to_replica(shard, p, key, op).await;
            }
            write_causal(shard, key, value, context.as_deref(), placement, opts).await
        }
    }
}

/// Causal mode: the new version supersedes exactly what the client's context saw and
/// keeps every other sibling. The read-modify-write of one key is serialized on its
/// shard so two concurrent writes never mint the same dot.
async fn write_causal(
    shard: &Rc<Shard>,
    key: &[u8],
    value: Option<Vec<u8>>,
    context: Option<&[u8]>,
    placement: Option<replication::Placement>,
    opts: WriteOpts,
) -> Reply {
    let decoded = match context {
        None | Some([]) => Ok(CausalContext::default()),
        Some(bytes) => match (
            SessionTimestamp::decode(bytes),
            WriteTimestamp::decode(bytes),
        ) {
            // LWW session and write timestamps say nothing about siblings: the empty
            // context.
            (Some(Ok(_)), _) | (_, Some(Ok(_))) => Ok(CausalContext::default()),
            (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e.to_string()),
            (None, None) => CausalContext::decode(bytes).map_err(|e| e.to_string()),
        },
    };
    let client_context = match decoded {
        Ok(c) => c,
        Err(e) => {
            return Reply::Error(ErrorReply::BadRequest {
                message: format!("invalid context: {e}"),
            })
        }
    };
    let _lock = shard.lock_key(key).await;
    let local = match shard.engine.read(key).await {
        Ok(Some(KeyState::Causal(state))) => state,
        Ok(Some(KeyState::Lww(_))) | Ok(None) => CausalState::default(),
        Err(e) => return internal(e),
    };
    let timestamp = shard.hlc.borrow_mut().now(now_ms());
    let actor = Actor {
        node_id: shard.node_id,
        generation: shard.generation,
    };
    let max_siblings = shard.config.max_siblings as usize;
    let state = match causal::write(&local, &client_context, actor, timestamp, value, max_siblings) {
        Ok(state) => state,
        Err(e) => {
            return Reply::Error(ErrorReply::BadRequest {
                message: format!("write refused: {e}; read the key and write with its context to resolve the siblings"),
            })
        }
    };
    // Apply locally first, under the key lock: the next write of this key on this node
    // must build on this one (its dot counter), and the local replica's ack may not be
    // among the first W, so waiting for W acks alone would let the next write read a
    // copy without this dot and mint it again. The replicas are written after.
    let state = KeyState::Causal(state);
    if let Err(e) = shard.engine.write(key, state.clone()).await {
        return internal(e);
    }
    match placement {
        Some(placement) => {
            super::streaming::write_pending(shard, &placement.pending, key, &state);
            replication::coordinate_write(shard, placement, key, state, opts, true).await
        }
        None => Reply::Done,
    }
}

/// What an LWW write's context says about its timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientStamp {
    /// No context: the coordinator stamps it.
    None,
    /// A session timestamp: the coordinator stamps it after this.
    After(u64),
    /// A client write timestamp: the write carries exactly this.
    Exactly(u64),
}

/// LWW mode: stamp the write with this shard's HLC, after observing the client's
/// session timestamp (if it sent one), so the new version is newer than every version
/// the client saw, whichever coordinator stamped those; or, with a client write
/// timestamp ([`WriteTimestamp`]), with exactly that one (so a request executed twice
/// writes one version). A client timestamp further ahead than `max_clock_skew_ms` is
/// refused like any received timestamp. A request with either is answered with
/// `Written { timestamp }`.
async fn write_lww(
    shard: &Rc<Shard>,
    key: &[u8],
    value: Option<Vec<u8>>,
    placement: Option<replication::Placement>,
    opts: WriteOpts,
    stamp: ClientStamp,
) -> Reply {
    let timestamp = {
        let mut hlc = shard.hlc.borrow_mut();
        let skew = shard.config.max_clock_skew_ms;
        match stamp {
            ClientStamp::None | ClientStamp::After(0) => hlc.now(now_ms()),
            ClientStamp::After(seen) => {
                if let Err(e) = hlc.observe(now_ms(), Hlc(seen), skew) {
                    return Reply::Error(ErrorReply::BadRequest {
                        message: format!("session timestamp refused: {e}"),
                    });
                }
                hlc.now(now_ms())
            }
            ClientStamp::Exactly(exact) => {
                if let Err(e) = hlc.observe(now_ms(), Hlc(exact), skew) {
                    return Reply::Error(ErrorReply::BadRequest {
                        message: format!("write timestamp refused: {e}"),
                    });
                }
                Hlc(exact)
            }
        }
    };
    let state = KeyState::Lww(LwwCell { timestamp, value });
    let reply = match placement {
        Some(placement) => {
            super::streaming::write_pending(shard, &placement.pending, key, &state);
            replication::coordinate_write(shard, placement, key, state, opts, false).await
        }
        None => match shard.engine.write(key, state).await {
            Ok(()) => Reply::Done,
            Err(e) => internal(e),
        },
    };
    match reply {
        Reply::Done if stamp != ClientStamp::None => Reply::Written {
            timestamp: timestamp.0,
        },
        other => other,
    }
}

/// The cluster as this node sees it: shard 0's latest membership snapshot (until the
/// first arrives, this node alone), with this node's load measured now. This node comes
/// first: clients that route to the first up node then talk to the node they asked.
pub async fn local_topology(shard: &Rc<Shard>) -> Topology {
    let stats = super::router::all_stats(shard).await;
    let load_bytes = stats.iter().map(|s| s.engine.data_bytes).sum();
    // This node's gossiped status (joining, normal, leaving, left); Normal until the
    // first snapshot.
    let status = shard
        .topology
        .borrow()
        .as_ref()
        .and_then(|(_, nodes)| {
            nodes
                .iter()
                .find(|n| n.node_id == shard.node_id)
                .map(|n| n.status)
        })
        .unwrap_or(NodeStatus::Normal);
    let this = NodeInfo {
        node_id: shard.node_id,
        address: shard.config.listen.to_string(),
        shard_count: shard.shard_count,
        shard_port_base: shard.config.shard_port_base,
        status,
        up: true,
        tokens: shard.tokens.clone(),
        load_bytes,
        hints: Default::default(),
    };
    let snapshot = shard
        .topology
        .borrow()
        .as_ref()
        .map(|(_, nodes)| nodes.clone());
    let mut nodes = vec![this];
    if let Some(snapshot) = snapshot {
        nodes.extend(
            snapshot
                .iter()
                .filter(|n| n.node_id != shard.node_id)
                .cloned(),
        );
    }
    // The hints this node's shards hold, per target.
    for stats in &stats {
        for (target, t) in &stats.hints {
            if let Some(node) = nodes.iter_mut().find(|n| n.node_id == *target) {
                let h = &mut node.hints;
                h.pending += t.pending_count;
                h.pending_bytes += t.pending_bytes;
                if let Some(oldest) = t.oldest_created_ms {
                    h.oldest_created_ms = match h.oldest_created_ms {
                        0 => oldest,
                        have => have.min(oldest),
                    };
                }
                h.skipped += t.skipped_window + t.skipped_bytes;
                h.needs_repair |= t.needs_repair;
            }
        }
    }
    Topology {
        nodes,
        replication_factor: shard.config.replication_factor,
    }
}

//! Execute one operation on the shard that owns its key: stamp the version, call the
//! engine (a node alone) or coordinate the replicas ([`super::replication`]), shape the
//! reply. A single node is its own and only replica and behaves as it always did.

use super::replication;
use super::shard::Shard;
use crate::conflict::{causal, Actor, CausalContext, CausalState, ConflictMode, KeyState, LwwCell};
use crate::protocol::types::{Consistency, ErrorReply, NodeInfo, NodeStatus, Op, Reply, Topology};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (the HLC's physical input).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Reply {
    Reply::Error(ErrorReply::Internal {
        message: e.to_string(),
    })
}

/// The reply to a get: every live value, and the opaque context in causal mode.
pub fn value_reply(state: Option<KeyState>) -> Reply {
    match state {
        None => Reply::Value {
            values: Vec::new(),
            context: None,
        },
        Some(KeyState::Lww(cell)) => Reply::Value {
            values: cell.value.into_iter().collect(),
            context: None,
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
            Some(placement) => {
                replication::coordinate_read(shard, placement, &key, consistency).await
            }
            None => match shard.engine.read(&key).await {
                Ok(state) => value_reply(state),
                Err(e) => internal(e),
            },
        },
        Op::Put {
            key,
            value,
            context,
            consistency,
        } => write(shard, &key, Some(value), context, consistency).await,
        Op::Delete {
            key,
            context,
            consistency,
        } => write(shard, &key, None, context, consistency).await,
        Op::Ping => Reply::Pong,
        Op::Topology => Reply::Topology(local_topology(shard).await),
        Op::ReplicaWrite { key, state } => {
            replication::apply_replica_write(shard, &key, &state).await
        }
        Op::ReplicaRead { key } => replication::answer_replica_read(shard, &key).await,
        Op::PeerHandshake { .. } | Op::Gossip(_) | Op::HintReplay { .. } => {
            Reply::Error(ErrorReply::Unauthorized)
        }
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
    consistency: Option<Consistency>,
) -> Reply {
    let placement = replication::placement(shard, key);
    match shard.config.conflict_mode {
        ConflictMode::Lww => write_lww(shard, key, value, placement, consistency).await,
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
                        consistency,
                        context,
                    },
                    None => Op::Delete {
                        key: key.to_vec(),
                        consistency,
                        context,
                    },
                };
                return replication::forward_to_replica(shard, p, key, op).await;
            }
            write_causal(
                shard,
                key,
                value,
                context.as_deref(),
                placement,
                consistency,
            )
            .await
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
    consistency: Option<Consistency>,
) -> Reply {
    let client_context = match context {
        None | Some([]) => CausalContext::default(),
        Some(bytes) => match CausalContext::decode(bytes) {
            Ok(c) => c,
            Err(e) => {
                return Reply::Error(ErrorReply::BadRequest {
                    message: format!("invalid context: {e}"),
                })
            }
        },
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
    // The key lock is held until the replicas (this node among them) acknowledged, so
    // the next write of this key on this node builds on this one.
    if let Some(placement) = placement {
        return replication::coordinate_write(
            shard,
            placement,
            key,
            KeyState::Causal(state),
            consistency,
        )
        .await;
    }
    match shard.engine.write(key, KeyState::Causal(state)).await {
        Ok(()) => Reply::Done,
        Err(e) => internal(e),
    }
}

async fn write_lww(
    shard: &Rc<Shard>,
    key: &[u8],
    value: Option<Vec<u8>>,
    placement: Option<replication::Placement>,
    consistency: Option<Consistency>,
) -> Reply {
    let timestamp = shard.hlc.borrow_mut().now(now_ms());
    let state = KeyState::Lww(LwwCell { timestamp, value });
    if let Some(placement) = placement {
        return replication::coordinate_write(shard, placement, key, state, consistency).await;
    }
    match shard.engine.write(key, state).await {
        Ok(()) => Reply::Done,
        Err(e) => internal(e),
    }
}

/// The cluster as this node sees it: shard 0's latest membership snapshot (until the
/// first arrives, this node alone), with this node's load measured now. This node comes
/// first: clients that route to the first up node then talk to the node they asked.
pub async fn local_topology(shard: &Rc<Shard>) -> Topology {
    let stats = super::router::all_stats(shard).await;
    let load_bytes = stats.iter().map(|s| s.engine.data_bytes).sum();
    let this = NodeInfo {
        node_id: shard.node_id,
        address: shard.config.listen.to_string(),
        shard_count: shard.shard_count,
        shard_port_base: shard.config.shard_port_base,
        status: NodeStatus::Normal,
        up: true,
        tokens: shard.tokens.clone(),
        load_bytes,
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
    Topology {
        nodes,
        replication_factor: shard.config.replication_factor,
    }
}

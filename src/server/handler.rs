//! Execute one operation on the shard that owns its key: stamp the version, call the
//! engine, shape the reply. (A single node is its own and only replica; the cluster's
//! coordinator replaces the local write/read with a quorum fan-out.)

use super::shard::Shard;
use crate::conflict::{KeyState, LwwCell};
use crate::protocol::types::{ErrorReply, NodeInfo, NodeStatus, Op, Reply, Topology};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (the HLC's physical input).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn internal(e: impl std::fmt::Display) -> Reply {
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

pub async fn execute_local(shard: &Rc<Shard>, op: Op) -> Reply {
    match op {
        Op::Get { key, .. } => match shard.engine.read(&key).await {
            Ok(state) => value_reply(state),
            Err(e) => internal(e),
        },
        Op::Put { key, value, .. } => write_lww(shard, &key, Some(value)).await,
        Op::Delete { key, .. } => write_lww(shard, &key, None).await,
        Op::Ping => Reply::Pong,
        Op::Topology => Reply::Topology(local_topology(shard).await),
        Op::ReplicaWrite { .. }
        | Op::ReplicaRead { .. }
        | Op::PeerHandshake { .. }
        | Op::Gossip(_)
        | Op::HintReplay { .. } => Reply::Error(ErrorReply::Unauthorized),
        // Placeholder until client auth is wired: with no token configured, Auth succeeds
        // whatever it carries (as `auth::ClientAuthState::NotRequired` says); with one
        // configured, refuse rather than pretend to have checked it.
        // Answered by the connection (it owns the authentication state); never routed.
        Op::Auth { .. } => Reply::Error(ErrorReply::Internal {
            message: "Auth reached a shard".to_owned(),
        }),
    }
}

async fn write_lww(shard: &Rc<Shard>, key: &[u8], value: Option<Vec<u8>>) -> Reply {
    let timestamp = shard.hlc.borrow_mut().now(now_ms());
    let state = KeyState::Lww(LwwCell { timestamp, value });
    match shard.engine.write(key, state).await {
        Ok(()) => Reply::Done,
        Err(e) => internal(e),
    }
}

/// This node alone, as a one-node ring (the cluster layer replaces it with gossip state).
pub async fn local_topology(shard: &Rc<Shard>) -> Topology {
    let stats = super::router::all_stats(shard).await;
    let load_bytes = stats.iter().map(|s| s.engine.data_bytes).sum();
    Topology {
        nodes: vec![NodeInfo {
            node_id: shard.node_id,
            address: shard.config.listen.to_string(),
            shard_count: shard.shard_count,
            shard_port_base: shard.config.shard_port_base,
            status: NodeStatus::Normal,
            up: true,
            tokens: vec![0],
            load_bytes,
        }],
        replication_factor: 1,
    }
}

//! Client library: the sans-I/O codec plus two thin transports — [`blocking`] (std
//! sockets; the CLI and tests) and [`asynch`] (glommio). Both are
//! pipelined (many requests in flight per connection, matched by `request_id`) and
//! shard-aware: they ask a node for its [`Topology`] and send each request straight to
//! the port of the shard that owns the key; [`Router`] holds a topology's ring for
//! clients that route many requests (the load generator).
//!
//! Session timestamps (LWW mode, [`crate::protocol::session`]): a [`blocking::Client`]
//! (and an [`asynch::AsyncConnection`]) keeps the highest HLC timestamp it has seen in
//! write acks and read replies, and sends it as the context of every put and delete
//! that has no context of its own. A coordinator stamps such a write after it, so a
//! write acknowledged before the next one starts always loses to it, whichever nodes
//! coordinate them and however their clocks are skewed (within `max_clock_skew_ms`).
//! Several clients of one program share the guarantee by passing
//! `session_timestamp()` to each other's `observe_timestamp()`.

pub mod asynch;
pub mod blocking;

use crate::cluster::ring::Ring;
use crate::protocol::session::SessionTimestamp;
use crate::protocol::token::{shard_of, token_of};
use crate::protocol::types::{ErrorReply, NodeInfo, NodeStatus, Reply, Topology};
use std::net::SocketAddr;

/// What went wrong with a request, from the caller's side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect, or the connection failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The server answered with a typed error.
    #[error("{0}")]
    Server(ErrorReply),
    /// The server sent something we cannot decode, or an unexpected reply.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Caller misuse (bad address, key too large for the server, ...).
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The answer to a get: every live value (more than one = siblings, causal mode) and
/// the opaque causal context to pass back with a later put or delete.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GetResult {
    pub values: Vec<Vec<u8>>,
    pub context: Option<Vec<u8>>,
}

impl GetResult {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Where to send a request for `key`: the owning shard's port on a node.
pub fn shard_address(node: &NodeInfo, key: &[u8]) -> Option<SocketAddr> {
    let addr: SocketAddr = node.address.parse().ok()?;
    if node.shard_count == 0 {
        return Some(addr);
    }
    let shard = shard_of(token_of(key), node.shard_count);
    Some(SocketAddr::new(
        addr.ip(),
        node.shard_port_base.checked_add(shard as u16)?,
    ))
}

/// The node a client should send `key` to: the first up replica of the key on the ring
/// the topology describes (token-aware; DESIGN.md §6), else the first up node.
pub fn route<'a>(topology: &'a Topology, key: &[u8]) -> Option<&'a NodeInfo> {
    Router::new(topology).route(topology, key)
}

/// A topology's ring, built once for routing many requests (building a [`Ring`] sorts
/// every vnode; [`route`] does it per call, a load generator cannot afford that).
///
/// The router holds only the ring and the replication factor; every lookup takes the
/// `Topology` it was built from and answers with a reference into it. Only nodes in
/// state `Normal` with tokens are ring members, and only when there are at least two of
/// them: a single node (or a cluster whose tokens are not known yet) has no ring, and
/// every key goes to the fallback.
#[derive(Clone, Debug, Default)]
pub struct Router {
    ring: Option<Ring>,
    replication_factor: usize,
}

impl Router {
    pub fn new(topology: &Topology) -> Router {
        let normal: Vec<&NodeInfo> = topology
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Normal && !n.tokens.is_empty())
            .collect();
        let ring = if normal.len() > 1 {
            Ring::new(normal.iter().map(|n| (n.node_id, n.tokens.as_slice()))).ok()
        } else {
            None
        };
        Router {
            ring,
            replication_factor: (topology.replication_factor as usize).max(1),
        }
    }

    /// Whether keys are routed by token (false: single node, no tokens, bad ring).
    pub fn is_token_aware(&self) -> bool {
        self.ring.is_some()
    }

    /// The first replica of `key` (primary first, ring order) that is a `Normal` ring
    /// member of `topology` and for which `usable` holds; `None` without a ring or when
    /// no replica is usable. `topology` must be the one the router was built from.
    pub fn replica_for<'a>(
        &self,
        topology: &'a Topology,
        key: &[u8],
        mut usable: impl FnMut(&NodeInfo) -> bool,
    ) -> Option<&'a NodeInfo> {
        let ring = self.ring.as_ref()?;
        ring.replicas(token_of(key), self.replication_factor)
            .into_iter()
            .filter_map(|id| {
                topology.nodes.iter().find(|n| {
                    n.node_id == id && n.status == NodeStatus::Normal && !n.tokens.is_empty()
                })
            })
            .find(|n| usable(n))
    }

    /// [`route`] with this router's ring: the first up replica, else the first up node.
    pub fn route<'a>(&self, topology: &'a Topology, key: &[u8]) -> Option<&'a NodeInfo> {
        self.replica_for(topology, key, |n| n.up)
            .or_else(|| topology.nodes.iter().find(|n| n.up))
    }
}

/// The context a put or delete carries: the caller's own (a causal context, or a session
/// timestamp it kept), else the session timestamp `session` (0 = none seen yet, which
/// still asks an LWW server for the written timestamp).
pub(crate) fn write_context(context: Option<Vec<u8>>, session: u64) -> Vec<u8> {
    context.unwrap_or_else(|| SessionTimestamp(session).encode())
}

/// The session timestamp a context carries, if it is one (an LWW read's context).
pub(crate) fn context_timestamp(context: Option<&[u8]>) -> Option<u64> {
    match context.and_then(SessionTimestamp::decode) {
        Some(Ok(SessionTimestamp(timestamp))) => Some(timestamp),
        _ => None,
    }
}

/// The outcome of a put or delete: `Ok(Some(timestamp))` for an LWW ack with the
/// written version's timestamp, `Ok(None)` for a plain ack (causal mode).
pub(crate) fn write_ack(reply: Reply) -> Result<Option<u64>, ClientError> {
    match reply {
        Reply::Done => Ok(None),
        Reply::Written { timestamp } => Ok(Some(timestamp)),
        Reply::Error(e) => Err(ClientError::Server(e)),
        other => Err(ClientError::Protocol(format!(
            "unexpected reply to a write: {other:?}"
        ))),
    }
}

/// The outcome of a get, and the session timestamp its context carries (LWW).
pub(crate) fn get_reply(reply: Reply) -> Result<(GetResult, Option<u64>), ClientError> {
    match reply {
        Reply::Value { values, context } => {
            let timestamp = context_timestamp(context.as_deref());
            Ok((GetResult { values, context }, timestamp))
        }
        Reply::Error(e) => Err(ClientError::Server(e)),
        other => Err(ClientError::Protocol(format!(
            "unexpected reply to Get: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, port: u16, tokens: &[u64], up: bool) -> NodeInfo {
        NodeInfo {
            node_id: id,
            address: format!("127.0.0.1:{port}"),
            shard_count: 2,
            shard_port_base: port + 1,
            status: NodeStatus::Normal,
            up,
            tokens: tokens.to_vec(),
            load_bytes: 0,
            hints: Default::default(),
        }
    }

    fn three_nodes(rf: u32) -> Topology {
        Topology {
            nodes: vec![
                node(1, 7000, &[1 << 62, 5 << 61], true),
                node(2, 7010, &[2 << 62, 7 << 61], true),
                node(3, 7020, &[3 << 62, 1 << 60], true),
            ],
            replication_factor: rf,
        }
    }

    #[test]
    fn router_routes_to_the_primary_replica() {
        let topology = three_nodes(1);
        let router = Router::new(&topology);
        assert!(router.is_token_aware());
        let ring = Ring::new(
            topology
                .nodes
                .iter()
                .map(|n| (n.node_id, n.tokens.as_slice())),
        )
        .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200u32 {
            let key = format!("key{i}");
            let primary = ring.primary(token_of(key.as_bytes())).unwrap();
            let routed = router.route(&topology, key.as_bytes()).unwrap();
            assert_eq!(routed.node_id, primary, "{key}");
            assert_eq!(route(&topology, key.as_bytes()).unwrap().node_id, primary);
            seen.insert(primary);
        }
        assert_eq!(seen.len(), 3, "200 keys land on every node");
    }

    #[test]
    fn router_skips_replicas_that_are_not_usable() {
        let topology = three_nodes(3);
        let router = Router::new(&topology);
        let ring = Ring::new(
            topology
                .nodes
                .iter()
                .map(|n| (n.node_id, n.tokens.as_slice())),
        )
        .unwrap();
        for i in 0..50u32 {
            let key = format!("key{i}");
            let replicas = ring.replicas(token_of(key.as_bytes()), 3);
            let got = router
                .replica_for(&topology, key.as_bytes(), |n| n.node_id != replicas[0])
                .unwrap();
            assert_eq!(
                got.node_id, replicas[1],
                "{key}: second replica when the first is out"
            );
        }
        assert!(router.replica_for(&topology, b"k", |_| false).is_none());
    }

    #[test]
    fn router_without_tokens_falls_back_to_the_first_up_node() {
        let mut topology = three_nodes(3);
        for n in &mut topology.nodes {
            n.tokens.clear();
        }
        topology.nodes[0].up = false;
        let router = Router::new(&topology);
        assert!(!router.is_token_aware());
        assert!(router.replica_for(&topology, b"k", |_| true).is_none());
        assert_eq!(router.route(&topology, b"k").unwrap().node_id, 2);
        let single = Topology {
            nodes: vec![node(9, 7000, &[], true)],
            replication_factor: 3,
        };
        assert_eq!(route(&single, b"k").unwrap().node_id, 9);
    }
}

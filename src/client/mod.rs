//! Client library: the sans-I/O codec plus two thin transports — [`blocking`] (std
//! sockets; the CLI and tests) and [`asynch`] (glommio; the load generator). Both are
//! pipelined (many requests in flight per connection, matched by `request_id`) and
//! shard-aware: they ask a node for its [`Topology`] and send each request straight to
//! the port of the shard that owns the key.
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

use crate::protocol::session::SessionTimestamp;
use crate::protocol::token::{shard_of, token_of};
use crate::protocol::types::{ErrorReply, NodeInfo, Reply, Topology};
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
    let normal: Vec<&NodeInfo> = topology
        .nodes
        .iter()
        .filter(|n| n.status == crate::protocol::types::NodeStatus::Normal && !n.tokens.is_empty())
        .collect();
    if normal.len() > 1 {
        if let Ok(ring) =
            crate::cluster::ring::Ring::new(normal.iter().map(|n| (n.node_id, n.tokens.as_slice())))
        {
            let rf = (topology.replication_factor as usize).max(1);
            let replicas = ring.replicas(token_of(key), rf);
            if let Some(node) = replicas
                .iter()
                .filter_map(|id| normal.iter().find(|n| n.node_id == *id && n.up))
                .next()
            {
                return Some(node);
            }
        }
    }
    topology.nodes.iter().find(|n| n.up)
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

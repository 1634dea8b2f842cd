//! Client library: the sans-I/O codec plus two thin transports — [`blocking`] (std
//! sockets; the CLI and tests) and [`asynch`] (glommio). Both are
//! pipelined (many requests in flight per connection, matched by `request_id`) and
//! shard-aware: they ask a node for its [`Topology`] and send each request straight to
//! the port of the shard that owns the key; [`Router`] holds a topology's ring for
//! clients that route many requests (the load generator).
//!
//! Failover: [`Router::plan`] orders the nodes a request may try (replicas first, then
//! any node, since any node coordinates any key), [`retry::decide`] says whether a
//! request may go on after a failed attempt, and [`suspects`] keeps the nodes a client
//! could not reach lately. The transports act on them; these three decide.
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
pub mod retry;
pub mod suspects;

use crate::cluster::ring::Ring;
use crate::conflict::{Hlc, HlcClock};
use crate::protocol::session::{SessionTimestamp, WriteTimestamp};
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
    /// A causal write was sent to `node`, then the connection failed before its reply:
    /// the write may or may not have been applied. It is not retried elsewhere (see
    /// [`retry`]); read the key again and write with that read's context.
    #[error("the write may or may not have been applied: connection to {node} failed after sending it: {source}")]
    Indeterminate {
        node: SocketAddr,
        source: std::io::Error,
    },
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
/// the topology describes (token-aware; docs/design.md §8.1), else the first up node.
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

    /// The query plan for `key` (`None`: a request without a key): the nodes to try in
    /// order, each once. The key's replicas in ring order, then every other node of the
    /// topology in its order; then nodes the topology calls down or `demoted` holds for
    /// (a client's suspects) are moved to the end, keeping their order, rather than
    /// dropped: when everything else failed they are still worth a try. Nodes that
    /// left the cluster are not in it. Any node coordinates any key, so every entry is a
    /// valid destination; the first one is [`Router::route`]'s when nothing is demoted.
    pub fn plan<'a>(
        &self,
        topology: &'a Topology,
        key: Option<&[u8]>,
        mut demoted: impl FnMut(&NodeInfo) -> bool,
    ) -> Vec<&'a NodeInfo> {
        let members = || {
            topology
                .nodes
                .iter()
                .filter(|n| n.status != NodeStatus::Left)
        };
        let mut order: Vec<&NodeInfo> = Vec::with_capacity(topology.nodes.len());
        if let (Some(ring), Some(key)) = (self.ring.as_ref(), key) {
            for id in ring.replicas(token_of(key), self.replication_factor) {
                if let Some(n) = members().find(|n| {
                    n.node_id == id && n.status == NodeStatus::Normal && !n.tokens.is_empty()
                }) {
                    order.push(n);
                }
            }
        }
        for n in members() {
            if !order.iter().any(|o| std::ptr::eq(*o, n)) {
                order.push(n);
            }
        }
        let (mut first, last): (Vec<&NodeInfo>, Vec<&NodeInfo>) =
            order.into_iter().partition(|n| n.up && !demoted(n));
        first.extend(last);
        first
    }
}

/// The context a put or delete carries: the caller's own (a causal context, or a session
/// timestamp it kept), else a client write timestamp from `clock`, drawn after the
/// session timestamp `session` (the highest seen), so the write is newer than anything
/// this client saw and a retry of it is the same version ([`WriteTimestamp`]).
pub(crate) fn write_context(
    context: Option<Vec<u8>>,
    session: u64,
    clock: &mut HlcClock,
) -> Vec<u8> {
    context.unwrap_or_else(|| WriteTimestamp(next_write_timestamp(clock, session)).encode())
}

/// The next write timestamp of a client's clock: after `session` and after every one
/// it drew before, at least the wall clock. Servers refuse one further ahead of their
/// clock than `max_clock_skew_ms`, so clients need clocks as good as the nodes'.
pub fn next_write_timestamp(clock: &mut HlcClock, session: u64) -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if session != 0 {
        // Timestamps the cluster handed out are trusted: no skew bound here.
        let _ = clock.observe(now_ms, Hlc(session), u64::MAX);
    }
    clock.now(now_ms).0
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

    #[test]
    fn plan_puts_replicas_first_then_the_others_and_suspects_last() {
        let topology = three_nodes(2);
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
            let replicas = ring.replicas(token_of(key.as_bytes()), 2);
            let other = [1, 2, 3]
                .into_iter()
                .find(|id| !replicas.contains(id))
                .unwrap();
            let ids = |plan: Vec<&NodeInfo>| plan.iter().map(|n| n.node_id).collect::<Vec<_>>();
            let plan = router.plan(&topology, Some(key.as_bytes()), |_| false);
            assert_eq!(ids(plan), vec![replicas[0], replicas[1], other], "{key}");
            // The first replica is suspect: second replica, the other node, then it.
            let plan = router.plan(&topology, Some(key.as_bytes()), |n| {
                n.node_id == replicas[0]
            });
            assert_eq!(ids(plan), vec![replicas[1], other, replicas[0]], "{key}");
        }
        // Without a key: the topology's order (the asked node lists itself first).
        let plan = router.plan(&topology, None, |n| n.node_id == 1);
        assert_eq!(
            plan.iter().map(|n| n.node_id).collect::<Vec<_>>(),
            vec![2, 3, 1]
        );
    }

    #[test]
    fn plan_moves_down_nodes_to_the_end_and_leaves_out_nodes_that_left() {
        let mut topology = three_nodes(3);
        topology.nodes[1].up = false;
        topology.nodes[2].status = NodeStatus::Left;
        let router = Router::new(&topology);
        let plan = router.plan(&topology, None, |_| false);
        assert_eq!(
            plan.iter().map(|n| n.node_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    mod plan_props {
        use super::*;
        use proptest::prelude::*;

        fn any_topology() -> impl Strategy<Value = Topology> {
            let one = (
                proptest::collection::vec(any::<u64>(), 0..4),
                any::<bool>(),
                proptest::sample::select(vec![
                    NodeStatus::Normal,
                    NodeStatus::Normal,
                    NodeStatus::Joining,
                    NodeStatus::Leaving,
                    NodeStatus::Left,
                ]),
            );
            (proptest::collection::vec(one, 1..7), 1u32..4).prop_map(|(nodes, rf)| Topology {
                nodes: nodes
                    .into_iter()
                    .enumerate()
                    .map(|(i, (tokens, up, status))| {
                        let mut n = node(i as u64 + 1, 7000 + 10 * i as u16, &tokens, up);
                        n.status = status;
                        n
                    })
                    .collect(),
                replication_factor: rf,
            })
        }

        proptest! {
            #[test]
            fn plan_orders_every_member_once_with_suspects_last(
                topology in any_topology(),
                suspect_mask in any::<u8>(),
                key in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let router = Router::new(&topology);
                let suspect = |n: &NodeInfo| suspect_mask & (1 << (n.node_id % 8)) != 0;
                let healthy = |n: &NodeInfo| n.up && !suspect(n);
                let plan = router.plan(&topology, Some(&key), suspect);
                let unsuspected = router.plan(&topology, Some(&key), |_| false);

                // Every node that has not left, each exactly once.
                let mut ids: Vec<u64> = plan.iter().map(|n| n.node_id).collect();
                ids.sort_unstable();
                let mut members: Vec<u64> = topology
                    .nodes
                    .iter()
                    .filter(|n| n.status != NodeStatus::Left)
                    .map(|n| n.node_id)
                    .collect();
                members.sort_unstable();
                prop_assert_eq!(ids, members);

                // No suspect or down node before a healthy one.
                let first_unhealthy = plan.iter().position(|n| !healthy(n)).unwrap_or(plan.len());
                prop_assert!(plan[first_unhealthy..].iter().all(|n| !healthy(n)));

                // Suspects and down nodes are moved, not reordered: both halves keep
                // the order of the plan with every node up and none suspect.
                let mut all_up = topology.clone();
                for n in &mut all_up.nodes {
                    n.up = true;
                }
                let base: Vec<u64> = router
                    .plan(&all_up, Some(&key), |_| false)
                    .iter()
                    .map(|n| n.node_id)
                    .collect();
                let keep = |want: bool| -> Vec<u64> {
                    base.iter()
                        .copied()
                        .filter(|id| {
                            topology.nodes.iter().any(|n| n.node_id == *id && healthy(n) == want)
                        })
                        .collect()
                };
                let got: Vec<u64> = plan.iter().map(|n| n.node_id).collect();
                let (healthy_ids, demoted_ids) = (keep(true), keep(false));
                prop_assert_eq!(&got[..first_unhealthy], healthy_ids.as_slice());
                prop_assert_eq!(&got[first_unhealthy..], demoted_ids.as_slice());

                // The key's live replicas come first, in ring order.
                let replicas: Vec<u64> = if router.is_token_aware() {
                    let ring = Ring::new(
                        topology
                            .nodes
                            .iter()
                            .filter(|n| n.status == NodeStatus::Normal && !n.tokens.is_empty())
                            .map(|n| (n.node_id, n.tokens.as_slice())),
                    )
                    .unwrap();
                    let rf = topology.replication_factor.max(1) as usize;
                    ring.replicas(token_of(&key), rf)
                        .into_iter()
                        .filter(|id| topology.nodes.iter().any(|n| n.node_id == *id && n.up))
                        .collect()
                } else {
                    Vec::new()
                };
                let up_ids: Vec<u64> = unsuspected.iter().filter(|n| n.up).map(|n| n.node_id).collect();
                prop_assert_eq!(&up_ids[..replicas.len()], replicas.as_slice());

                // Without suspects the plan starts where `route` sends the key.
                if let Some(routed) = router.route(&topology, &key) {
                    if routed.status != NodeStatus::Left {
                        prop_assert_eq!(unsuspected[0].node_id, routed.node_id);
                    }
                }
            }
        }
    }
}

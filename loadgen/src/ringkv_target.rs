//! The ringkv target: ringkv's wire protocol over the load generator's own sockets
//! ([`crate::transport`]) behind the `Connection` trait.
//!
//! One load-generator "connection" is token-aware across the cluster: it asks its host
//! for the topology, builds the ring once (`ringkv::client::Router`, the same routing
//! the blocking client uses), opens one pipelined socket per shard port of every node
//! the topology lists as up, and sends each request straight to the owning shard of the
//! key's first replica that is up and reachable — no forwarding between nodes or
//! cores on the server. Without a ring (a single node, or no tokens known yet) every
//! request goes to the host's own shards. Typed error replies map to error kinds:
//! `Overloaded`, `Timeout`, `Unavailable`; a broken socket is `Disconnected` (the
//! engine then reconnects, which re-reads the topology); anything else is `Other`.

use crate::target::{ConnectOptions, Connection, Connector, GetOutcome, OpError};
use crate::transport::Conn;
use ringkv::client::{ClientError, Router};
use ringkv::protocol::token::{shard_of, token_of};
use ringkv::protocol::types::{Consistency, ErrorReply, NodeInfo, Op, Reply, Topology};
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Clone, Debug, Default)]
pub struct RingkvConnector;

/// Sockets to every shard of one node.
struct NodeConns {
    node_id: u64,
    shards: Vec<Conn>,
}

/// Sockets to the shards of every reachable node, and the ring to choose among them.
pub struct RingkvConnection {
    topology: Topology,
    router: Router,
    /// Reachable nodes (a node listed as up whose shards all accepted a connection).
    nodes: Vec<NodeConns>,
    /// Index in `nodes` of the host this connection was opened on.
    seed: usize,
    consistency: Option<Consistency>,
}

fn op_error(e: ClientError) -> OpError {
    match e {
        ClientError::Server(ErrorReply::Overloaded) => OpError::Overloaded,
        ClientError::Server(ErrorReply::Timeout { .. }) => OpError::Timeout,
        ClientError::Server(e @ ErrorReply::Unavailable { .. }) => {
            OpError::Unavailable(e.to_string())
        }
        ClientError::Io { .. } => OpError::Disconnected(e.to_string()),
        other => OpError::Other(other.to_string()),
    }
}

fn reply_error(reply: Reply) -> OpError {
    match reply {
        Reply::Error(e) => op_error(ClientError::Server(e)),
        other => OpError::Other(format!("unexpected reply {other:?}")),
    }
}

/// Open a socket and, when a token is given, present it before anything else.
async fn connect_authenticated(addr: SocketAddr, token: Option<&[u8]>) -> Result<Conn, OpError> {
    let conn = Conn::connect(addr).await.map_err(op_error)?;
    if let Some(token) = token {
        match conn
            .call(Op::Auth {
                token: token.to_vec(),
            })
            .await
            .map_err(op_error)?
        {
            Reply::Done => {}
            other => return Err(reply_error(other)),
        }
    }
    Ok(conn)
}

/// Sockets to every shard port of `node`.
async fn connect_node(node: &NodeInfo, token: Option<&[u8]>) -> Result<NodeConns, OpError> {
    let addr: SocketAddr = node
        .address
        .parse()
        .map_err(|e| OpError::Other(format!("node address {:?}: {e}", node.address)))?;
    let mut shards = Vec::with_capacity(node.shard_count as usize);
    for s in 0..node.shard_count {
        let port = u16::try_from(s)
            .ok()
            .and_then(|s| node.shard_port_base.checked_add(s))
            .ok_or_else(|| OpError::Other(format!("{}: shard port overflow", node.address)))?;
        shards.push(connect_authenticated(SocketAddr::new(addr.ip(), port), token).await?);
    }
    Ok(NodeConns {
        node_id: node.node_id,
        shards,
    })
}

impl Connector for RingkvConnector {
    type Conn = RingkvConnection;

    async fn connect(
        &self,
        host: &str,
        options: &ConnectOptions,
    ) -> Result<RingkvConnection, OpError> {
        let addr: SocketAddr = host
            .to_socket_addrs()
            .map_err(|e| OpError::Disconnected(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| OpError::Disconnected(format!("{host}: resolves to nothing")))?;
        let token = options.token.as_ref().map(|t| t.as_bytes().to_vec());
        let seed_conn = connect_authenticated(addr, token.as_deref()).await?;
        let topology = match seed_conn.call(Op::Topology).await.map_err(op_error)? {
            Reply::Topology(t) => t,
            other => return Err(reply_error(other)),
        };
        drop(seed_conn);
        // The node we asked: matched by address, else (behind NAT, say) the first one.
        let seed_node = topology
            .nodes
            .iter()
            .find(|n| n.address.parse::<SocketAddr>().ok() == Some(addr))
            .or_else(|| topology.nodes.first())
            .ok_or_else(|| OpError::Other(format!("{host}: empty topology")))?;
        // The host we were given must work (its failure is the run's failure); other
        // nodes are used when they are up and answer, and skipped otherwise.
        let mut seed_shards = connect_node(seed_node, token.as_deref()).await?;
        if seed_shards.shards.is_empty() {
            seed_shards
                .shards
                .push(connect_authenticated(addr, token.as_deref()).await?);
        }
        let router = Router::new(&topology);
        let mut nodes = vec![seed_shards];
        if router.is_token_aware() {
            for node in &topology.nodes {
                if node.node_id == seed_node.node_id || !node.up || node.shard_count == 0 {
                    continue;
                }
                if let Ok(conns) = connect_node(node, token.as_deref()).await {
                    nodes.push(conns);
                }
            }
        }
        Ok(RingkvConnection {
            topology,
            router,
            nodes,
            seed: 0,
            consistency: options.consistency,
        })
    }
}

impl RingkvConnection {
    /// The socket for `key`: the owning shard of its first replica that is up and
    /// connected, else of the seed host. With a single connected node the ring has
    /// nothing to choose (whatever replica it names, only that node is usable), and
    /// with a single socket neither has the shard hash: both are skipped, as they cost a
    /// hash and a replica list per request.
    fn shard_for(&self, key: &[u8]) -> &Conn {
        let node = if self.nodes.len() == 1 {
            &self.nodes[0]
        } else {
            let usable = |n: &NodeInfo| n.up && self.nodes.iter().any(|c| c.node_id == n.node_id);
            self.router
                .replica_for(&self.topology, key, usable)
                .and_then(|n| self.nodes.iter().find(|c| c.node_id == n.node_id))
                .unwrap_or(&self.nodes[self.seed])
        };
        let count = node.shards.len();
        assert!(count > 0, "a connected node has at least one socket");
        if count == 1 {
            return &node.shards[0];
        }
        let s = shard_of(token_of(key), count as u32) as usize;
        &node.shards[s]
    }

    /// How many nodes this connection can send to (tests, reports).
    pub fn reachable_nodes(&self) -> usize {
        self.nodes.len()
    }
}

impl Connection for RingkvConnection {
    async fn get(&self, key: &[u8]) -> Result<GetOutcome, OpError> {
        let conn = self.shard_for(key);
        let op = Op::Get {
            key: conn.bytes(key),
            consistency: self.consistency,
        };
        match conn.call(op).await.map_err(op_error)? {
            Reply::Value { mut values, .. } => Ok(match values.len() {
                0 => GetOutcome::NotFound,
                1 => GetOutcome::Found(values.pop().unwrap_or_default()),
                _ => GetOutcome::Siblings(values),
            }),
            other => Err(reply_error(other)),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        let conn = self.shard_for(key);
        let op = Op::Put {
            key: conn.bytes(key),
            value: conn.bytes(value),
            consistency: self.consistency,
            context: None,
            sloppy_quorum: None,
        };
        match conn.call(op).await.map_err(op_error)? {
            Reply::Done => Ok(()),
            other => Err(reply_error(other)),
        }
    }
}

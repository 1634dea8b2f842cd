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
//! `Overloaded`, `Timeout`, `Unavailable`; anything else is `Other`.
//!
//! Failover, as the library client does it (`ringkv::client::retry`): when a request's
//! socket is broken, or fails after the request was written, the request goes on to
//! the next reachable node of its query plan (`Router::plan`) if the retry rule allows
//! (the load generator writes without a causal context, so its puts are always
//! allowed), and counts as a success if a later node answers; each such move is
//! counted ([`Connection::take_failovers`]). The failed node's sockets are dropped and
//! reopened by a background task with the client's backoff
//! (`ringkv::client::suspects::backoff`); until then the node is left out of query
//! plans. Nodes the topology lists as down are probed the same way from the start.
//! Only when no node is reachable is the error `Disconnected` (the engine then
//! reconnects, which re-reads the topology).

use crate::target::{ConnectOptions, Connection, Connector, GetOutcome, OpError};
use crate::transport::Conn;
use ringkv::client::retry::{self, Decision, Stage};
use ringkv::client::suspects::backoff;
use ringkv::client::{ClientError, Router};
use ringkv::protocol::session::{SessionTimestamp, WriteTimestamp};
use ringkv::protocol::token::{shard_of, token_of};
use ringkv::protocol::types::{Consistency, ErrorReply, NodeInfo, NodeStatus, Op, Reply, Topology};
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::{Rc, Weak};

#[derive(Clone, Debug, Default)]
pub struct RingkvConnector;

/// One node of the topology as this connection sees it.
struct NodeConns {
    node: NodeInfo,
    /// Sockets to every shard port; empty while the node is suspect (a socket of it
    /// failed, or it could not be reached) and reopened in the background.
    shards: RefCell<Vec<Rc<Conn>>>,
    /// Reopen attempts in a row that failed (drives the backoff).
    failures: Cell<u32>,
    /// A background task is reopening the sockets.
    reconnecting: Cell<bool>,
}

impl NodeConns {
    fn usable(&self) -> bool {
        !self.shards.borrow().is_empty()
    }

    /// The socket of `key`'s owning shard.
    fn shard_for(&self, key: &[u8]) -> Option<Rc<Conn>> {
        let shards = self.shards.borrow();
        let s = match shards.len() {
            0 => return None,
            1 => 0,
            count => shard_of(token_of(key), count as u32) as usize,
        };
        shards.get(s).cloned()
    }
}

/// Sockets to the shards of every node, and the ring to choose among them.
pub struct RingkvConnection {
    topology: Topology,
    router: Router,
    /// Every node of the topology that has shards and has not left; shared with the
    /// background tasks that reopen them (which hold it weakly, so they end with the
    /// connection).
    nodes: Rc<Vec<NodeConns>>,
    /// Index in `nodes` of the host this connection was opened on.
    seed: usize,
    consistency: Option<Consistency>,
    /// How long one attempt waits for its reply (None: no limit).
    attempt_timeout: Option<std::time::Duration>,
    token: Option<Rc<[u8]>>,
    /// Requests moved to another node since the last [`Connection::take_failovers`].
    failovers: Cell<u64>,
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

/// Sockets to every shard port of `node` (its client port when it lists no shards).
async fn connect_node(node: &NodeInfo, token: Option<&[u8]>) -> Result<Vec<Rc<Conn>>, OpError> {
    let addr: SocketAddr = node
        .address
        .parse()
        .map_err(|e| OpError::Other(format!("node address {:?}: {e}", node.address)))?;
    if node.shard_count == 0 {
        return Ok(vec![Rc::new(connect_authenticated(addr, token).await?)]);
    }
    let mut shards = Vec::with_capacity(node.shard_count as usize);
    for s in 0..node.shard_count {
        let port = u16::try_from(s)
            .ok()
            .and_then(|s| node.shard_port_base.checked_add(s))
            .ok_or_else(|| OpError::Other(format!("{}: shard port overflow", node.address)))?;
        shards.push(Rc::new(
            connect_authenticated(SocketAddr::new(addr.ip(), port), token).await?,
        ));
    }
    Ok(shards)
}

/// Whether every shard of a reopened node answers a ping within `limit`: a node that
/// accepts connections but is silent (stopped, or cut after the handshake) is not
/// used again until it answers.
async fn answers_ping(shards: &[Rc<Conn>], limit: std::time::Duration) -> bool {
    for conn in shards {
        let pong = futures_lite::future::or(
            async { matches!(conn.call(Op::Ping).await, Ok(Reply::Pong)) },
            async {
                glommio::timer::sleep(limit).await;
                false
            },
        )
        .await;
        if !pong {
            return false;
        }
    }
    true
}

/// How long a reopened node has to answer its ping when no attempt timeout is set.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Reopen the sockets of `nodes[index]` in the background, waiting the client's
/// backoff before each attempt, until one succeeds (the node answers a ping within
/// `probe_timeout`) or the connection is gone.
fn start_reconnect(
    nodes: &Rc<Vec<NodeConns>>,
    index: usize,
    token: Option<Rc<[u8]>>,
    probe_timeout: std::time::Duration,
) {
    let Some(node) = nodes.get(index) else { return };
    if node.reconnecting.replace(true) {
        return;
    }
    let weak: Weak<Vec<NodeConns>> = Rc::downgrade(nodes);
    glommio::spawn_local(async move {
        loop {
            let (info, failures) = {
                let Some(nodes) = weak.upgrade() else { return };
                let Some(node) = nodes.get(index) else { return };
                let failures = node.failures.get().saturating_add(1);
                node.failures.set(failures);
                (node.node.clone(), failures)
            };
            glommio::timer::sleep(backoff(failures)).await;
            if weak.strong_count() == 0 {
                return;
            }
            let Ok(shards) = connect_node(&info, token.as_deref()).await else {
                continue;
            };
            if answers_ping(&shards, probe_timeout).await {
                if let Some(node) = weak.upgrade().as_ref().and_then(|n| n.get(index)) {
                    *node.shards.borrow_mut() = shards;
                    node.failures.set(0);
                    node.reconnecting.set(false);
                }
                return;
            }
        }
    })
    .detach();
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
        let mut seed_shards = if seed_node.shard_count == 0 {
            // One socket, to the host as we were given it.
            vec![Rc::new(
                connect_authenticated(addr, token.as_deref()).await?,
            )]
        } else {
            connect_node(seed_node, token.as_deref()).await?
        };
        let router = Router::new(&topology);
        let seed_id = seed_node.node_id;
        let mut nodes = Vec::with_capacity(topology.nodes.len());
        let mut unreached = Vec::new();
        for node in &topology.nodes {
            let shards = if node.node_id == seed_id {
                std::mem::take(&mut seed_shards)
            } else if !router.is_token_aware()
                || node.status == NodeStatus::Left
                || node.shard_count == 0
            {
                continue;
            } else if node.up {
                connect_node(node, token.as_deref())
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if shards.is_empty() {
                unreached.push(nodes.len());
            }
            nodes.push(NodeConns {
                node: node.clone(),
                shards: RefCell::new(shards),
                failures: Cell::new(0),
                reconnecting: Cell::new(false),
            });
        }
        let seed = nodes
            .iter()
            .position(|n| n.node.node_id == seed_id)
            .ok_or_else(|| OpError::Other(format!("{host}: asked node not in its topology")))?;
        let nodes = Rc::new(nodes);
        let token: Option<Rc<[u8]>> = token.map(Rc::from);
        for index in unreached {
            start_reconnect(
                &nodes,
                index,
                token.clone(),
                options.attempt_timeout.unwrap_or(PROBE_TIMEOUT),
            );
        }
        Ok(RingkvConnection {
            topology,
            router,
            nodes,
            seed,
            consistency: options.consistency,
            attempt_timeout: options.attempt_timeout,
            token,
            failovers: Cell::new(0),
        })
    }
}

impl RingkvConnection {
    /// Where `key` goes first: the owning shard of its first replica that is up and
    /// connected, else of the seed host. With a single node the ring has nothing to
    /// choose, and is skipped (it costs a hash and a replica list per request).
    fn first_choice(&self, key: &[u8]) -> Option<(usize, Rc<Conn>)> {
        let index = if self.nodes.len() == 1 {
            0
        } else {
            let usable = |n: &NodeInfo| {
                n.up && self
                    .node_index(n.node_id)
                    .is_some_and(|i| self.nodes[i].usable())
            };
            self.router
                .replica_for(&self.topology, key, usable)
                .and_then(|n| self.node_index(n.node_id))
                .unwrap_or(self.seed)
        };
        let conn = self.nodes.get(index)?.shard_for(key)?;
        Some((index, conn))
    }

    /// Where `key` goes after the nodes in `tried` failed: the next reachable node of
    /// its query plan.
    fn next_choice(&self, key: &[u8], tried: &[usize]) -> Option<(usize, Rc<Conn>)> {
        self.router
            .plan(&self.topology, Some(key), |_| false)
            .into_iter()
            .filter_map(|n| self.node_index(n.node_id))
            .filter(|i| !tried.contains(i))
            .find_map(|i| Some((i, self.nodes[i].shard_for(key)?)))
    }

    fn node_index(&self, node_id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.node.node_id == node_id)
    }

    /// A socket of `nodes[index]` failed: drop them all (calls in flight keep theirs)
    /// and reopen them in the background.
    fn suspect(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            node.shards.borrow_mut().clear();
            start_reconnect(
                &self.nodes,
                index,
                self.token.clone(),
                self.attempt_timeout.unwrap_or(PROBE_TIMEOUT),
            );
        }
    }

    /// Send the op `make_op` builds for a socket along `key`'s query plan (module
    /// doc): the reply of the first node that answers.
    async fn call_along(
        &self,
        key: &[u8],
        make_op: impl Fn(&Conn) -> Op,
    ) -> Result<Reply, OpError> {
        let mut next = self
            .first_choice(key)
            .or_else(|| self.next_choice(key, &[]));
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<ClientError> = None;
        // An `Unavailable` answer (nothing executed): the next node is asked, and this
        // is the answer if none does better.
        let mut unavailable: Option<Reply> = None;
        while let Some((index, conn)) = next.take() {
            if !tried.is_empty() {
                self.failovers.set(self.failovers.get() + 1);
            }
            let op = make_op(&conn);
            let kind = retry::classify(&op);
            let (stage, error) = if conn.is_broken() {
                let error = ClientError::Io {
                    context: format!("connection to {}", conn.peer()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "connection is broken",
                    ),
                };
                (Stage::NotSent, error)
            } else {
                let call = conn.call(op);
                let reply = match self.attempt_timeout {
                    None => call.await,
                    Some(limit) => {
                        futures_lite::future::or(call, async {
                            glommio::timer::sleep(limit).await;
                            Err(ClientError::Io {
                                context: format!("connection to {}", conn.peer()),
                                source: std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!("no reply within the attempt timeout ({limit:?})"),
                                ),
                            })
                        })
                        .await
                    }
                };
                match reply {
                    Ok(reply @ Reply::Error(ErrorReply::Unavailable { .. }))
                        if retry::decide(kind, Stage::RefusedUnexecuted) == Decision::TryNext =>
                    {
                        unavailable = Some(reply);
                        tried.push(index);
                        next = self.next_choice(key, &tried);
                        continue;
                    }
                    Ok(reply) => return Ok(reply),
                    Err(e @ ClientError::Io { .. }) => (Stage::MayHaveArrived, e),
                    Err(e) => return Err(op_error(e)),
                }
            };
            self.suspect(index);
            match retry::decide(kind, stage) {
                Decision::TryNext => {}
                Decision::Surface => return Err(op_error(error)),
                Decision::Indeterminate => {
                    return Err(OpError::Disconnected(format!(
                        "the write may or may not have been applied: {error}"
                    )))
                }
            }
            tried.push(index);
            last = Some(error);
            next = self.next_choice(key, &tried);
        }
        if let Some(reply) = unavailable {
            return Ok(reply);
        }
        Err(OpError::Disconnected(match last {
            Some(e) => format!("{e} (no other node reachable)"),
            None => "no node reachable".into(),
        }))
    }

    /// How many nodes this connection can send to now (tests, reports).
    pub fn reachable_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.usable()).count()
    }
}

thread_local! {
    /// The highest HLC timestamp this thread's connections have seen in write acks and
    /// read replies.
    static SESSION_TIMESTAMP: Cell<u64> = const { Cell::new(0) };
    /// This thread's HLC. Every put carries a write timestamp drawn from it after the
    /// session timestamp (as the library client does, `ringkv::client`): a write
    /// acknowledged before the next one starts loses to it, whichever nodes coordinate
    /// the two, and a put sent twice (failed over from a node that still executes it
    /// later) is one version, not a late overwrite. That is what `--verify` checks.
    static CLOCK: RefCell<ringkv::conflict::HlcClock> =
        RefCell::new(ringkv::conflict::HlcClock::new());
}

fn observe_timestamp(timestamp: u64) {
    SESSION_TIMESTAMP.with(|s| s.set(s.get().max(timestamp)));
}

impl Connection for RingkvConnection {
    async fn get(&self, key: &[u8]) -> Result<GetOutcome, OpError> {
        let reply = self
            .call_along(key, |conn| Op::Get {
                key: conn.bytes(key),
                consistency: self.consistency,
            })
            .await?;
        if let Reply::Value {
            context: Some(context),
            ..
        } = &reply
        {
            if let Some(Ok(SessionTimestamp(timestamp))) = SessionTimestamp::decode(context) {
                observe_timestamp(timestamp);
            }
        }
        match reply {
            Reply::Value { mut values, .. } => Ok(match values.len() {
                0 => GetOutcome::NotFound,
                1 => GetOutcome::Found(values.pop().unwrap_or_default()),
                _ => GetOutcome::Siblings(values),
            }),
            other => Err(reply_error(other)),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        // Drawn once: every attempt of this put carries the same version.
        let session = SESSION_TIMESTAMP.with(Cell::get);
        let stamp =
            CLOCK.with(|c| ringkv::client::next_write_timestamp(&mut c.borrow_mut(), session));
        let context = WriteTimestamp(stamp).encode();
        let reply = self
            .call_along(key, |conn| Op::Put {
                key: conn.bytes(key),
                value: conn.bytes(value),
                consistency: self.consistency,
                context: Some(context.clone()),
                sloppy_quorum: None,
            })
            .await?;
        match reply {
            Reply::Written { timestamp } => {
                observe_timestamp(timestamp);
                Ok(())
            }
            Reply::Done => Ok(()),
            other => Err(reply_error(other)),
        }
    }

    fn take_failovers(&self) -> u64 {
        self.failovers.replace(0)
    }
}

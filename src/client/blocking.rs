//! Blocking client over std sockets: for the CLI and tests. One [`Connection`] is a
//! pipelined frame stream; [`Client`] routes each keyed request to its shard's port and
//! keeps the session timestamp (see the module doc of `client`).

use super::{get_reply, shard_address, write_ack, write_context, ClientError, GetResult, Router};
use crate::protocol::codec::{decode_response, Encoder};
use crate::protocol::frame::next_frame;
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::types::{Consistency, ErrorReply, Op, Reply, Request, Response, Topology};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response frame a client accepts (value limit + slack).
const MAX_RESPONSE_FRAME_BYTES: usize = 64 << 20;

/// One TCP connection speaking frames; many requests may be in flight.
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    encoder: Encoder,
    out: Vec<u8>,
    buf: ReadBuffer,
    next_id: u64,
}

impl Connection {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| ClientError::io(format!("cannot connect to {addr}"), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ClientError::io("set_nodelay", e))?;
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_secs(1)) * 10))
            .map_err(|e| ClientError::io("set_read_timeout", e))?;
        Ok(Connection {
            stream,
            peer: addr,
            encoder: Encoder::new(),
            out: Vec::new(),
            buf: ReadBuffer::with_capacity(64 * 1024),
            next_id: 1,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Queue a request (not yet sent); returns its id.
    pub fn queue(&mut self, op: Op) -> u64 {
        let request_id = self.next_id;
        self.next_id += 1;
        self.encoder
            .encode_request(&Request { request_id, op }, &mut self.out);
        request_id
    }

    /// Send everything queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        let peer = self.peer;
        self.stream
            .write_all(&self.out)
            .map_err(|e| ClientError::io(format!("send to {peer}"), e))?;
        self.out.clear();
        Ok(())
    }

    /// Read the next response (in whatever order the server answers).
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some(bounds) = next_frame(self.buf.filled(), MAX_RESPONSE_FRAME_BYTES)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                let response = decode_response(&self.buf.filled()[bounds.body.clone()])
                    .map_err(|e| ClientError::Protocol(e.to_string()));
                self.buf.consume(bounds.total_len);
                return response;
            }
            let n = self.stream.read(self.buf.spare(64 * 1024));
            let peer = self.peer;
            match n {
                Ok(0) => {
                    return Err(ClientError::io(
                        format!("connection to {peer}"),
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by server"),
                    ));
                }
                Ok(n) => self.buf.advance(n),
                Err(e) => {
                    return Err(ClientError::io(format!("receive from {peer}"), e));
                }
            }
        }
    }

    /// Send one request and wait for its reply.
    pub fn call(&mut self, op: Op) -> Result<Reply, ClientError> {
        let id = self.queue(op);
        self.flush()?;
        loop {
            let response = self.receive()?;
            if response.request_id == id {
                return Ok(response.body);
            }
        }
    }

    /// Send all `ops` pipelined, then collect the replies in request order.
    pub fn pipeline(&mut self, ops: Vec<Op>) -> Result<Vec<Reply>, ClientError> {
        let ids: Vec<u64> = ops.into_iter().map(|op| self.queue(op)).collect();
        self.flush()?;
        let mut replies: HashMap<u64, Reply> = HashMap::with_capacity(ids.len());
        while replies.len() < ids.len() {
            let response = self.receive()?;
            replies.insert(response.request_id, response.body);
        }
        ids.iter()
            .map(|id| {
                replies
                    .remove(id)
                    .ok_or_else(|| ClientError::Protocol(format!("no reply for request {id}")))
            })
            .collect()
    }
}

/// A shard-aware client of one cluster, reached through a seed address.
pub struct Client {
    seed: SocketAddr,
    timeout: Duration,
    /// Presented with an `Auth` request on every new connection, when set.
    token: Option<Vec<u8>>,
    topology: Option<Topology>,
    /// The ring of `topology`, built once per refresh.
    router: Router,
    connections: HashMap<SocketAddr, Connection>,
    /// The highest HLC timestamp seen in a write ack or read reply (0 = none yet).
    session_timestamp: u64,
    /// Send every keyed request to the seed node (it coordinates), not to the key's
    /// first replica.
    pinned_to_seed: bool,
    /// Sent with every put and delete: the per-request `sloppy_quorum` override.
    sloppy_quorum: Option<bool>,
}

impl Client {
    /// Connect to `host` (HOST:PORT) and learn the topology.
    pub fn connect(host: &str) -> Result<Self, ClientError> {
        Self::connect_with_timeout(host, Duration::from_secs(5))
    }

    pub fn connect_with_timeout(host: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with(host, timeout, None)
    }

    /// Connect presenting `token` (the server's `client_auth_token`) on every connection.
    pub fn connect_with(
        host: &str,
        timeout: Duration,
        token: Option<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        let seed = host
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("invalid address {host:?}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Usage(format!("address {host:?} resolves to nothing")))?;
        let mut client = Client {
            seed,
            timeout,
            token,
            topology: None,
            router: Router::default(),
            connections: HashMap::new(),
            session_timestamp: 0,
            pinned_to_seed: false,
            sloppy_quorum: None,
        };
        client.refresh_topology()?;
        Ok(client)
    }

    fn connection(&mut self, addr: SocketAddr) -> Result<&mut Connection, ClientError> {
        if !self.connections.contains_key(&addr) {
            let mut conn = Connection::connect(addr, self.timeout)?;
            if let Some(token) = &self.token {
                expect_done(conn.call(Op::Auth {
                    token: token.clone(),
                })?)?;
            }
            self.connections.insert(addr, conn);
        }
        self.connections
            .get_mut(&addr)
            .ok_or_else(|| ClientError::Protocol("connection vanished".into()))
    }

    /// Ask the seed node for the current topology.
    pub fn refresh_topology(&mut self) -> Result<&Topology, ClientError> {
        let seed = self.seed;
        match self.connection(seed)?.call(Op::Topology)? {
            Reply::Topology(t) => {
                self.router = Router::new(&t);
                self.topology = Some(t);
                self.topology
                    .as_ref()
                    .ok_or_else(|| ClientError::Protocol("no topology".into()))
            }
            Reply::Error(e) => Err(ClientError::Server(e)),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to Topology: {other:?}"
            ))),
        }
    }

    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// The address a request for `key` goes to (owning shard of a replica, else seed;
    /// the owning shard on the seed node when pinned).
    pub fn address_for(&self, key: &[u8]) -> SocketAddr {
        self.topology
            .as_ref()
            .and_then(|t| {
                if self.pinned_to_seed {
                    // A node lists itself first in its topology.
                    t.nodes.first()
                } else {
                    self.router.route(t, key)
                }
            })
            .and_then(|node| shard_address(node, key))
            .unwrap_or(self.seed)
    }

    /// With `pinned`, every keyed request goes to the node this client connected to
    /// (its owning shard), which then coordinates it, instead of to the key's first
    /// replica. For programs that want one client per coordinator (and tests).
    pub fn pin_to_seed(&mut self, pinned: bool) {
        self.pinned_to_seed = pinned;
    }

    /// Override the server's `sloppy_quorum` for this client's puts and deletes (None:
    /// the server's setting).
    pub fn set_sloppy_quorum(&mut self, sloppy_quorum: Option<bool>) {
        self.sloppy_quorum = sloppy_quorum;
    }

    /// The highest HLC timestamp this client has seen (0 = none): the context its next
    /// put or delete without a context of its own carries. Hand it to another client's
    /// [`Client::observe_timestamp`] to order that client's writes after this one's.
    pub fn session_timestamp(&self) -> u64 {
        self.session_timestamp
    }

    /// Raise the session timestamp to `timestamp` (never lowers it).
    pub fn observe_timestamp(&mut self, timestamp: u64) {
        self.session_timestamp = self.session_timestamp.max(timestamp);
    }

    /// Send one keyed request to the owning shard. On a connection error, the cached
    /// connection is dropped so the next call reconnects.
    pub fn call_keyed(&mut self, key: &[u8], op: Op) -> Result<Reply, ClientError> {
        let addr = self.address_for(key);
        let result = self.connection(addr).and_then(|c| c.call(op));
        if matches!(result, Err(ClientError::Io { .. })) {
            self.connections.remove(&addr);
        }
        result
    }

    pub fn get(
        &mut self,
        key: &[u8],
        consistency: Option<Consistency>,
    ) -> Result<GetResult, ClientError> {
        let reply = self.call_keyed(
            key,
            Op::Get {
                key: key.to_vec(),
                consistency,
            },
        )?;
        let (result, timestamp) = get_reply(reply)?;
        if let Some(timestamp) = timestamp {
            self.observe_timestamp(timestamp);
        }
        Ok(result)
    }

    /// Store `value` under `key`. Without a `context`, the write carries the session
    /// timestamp; in LWW mode the ack's timestamp then raises it.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        consistency: Option<Consistency>,
        context: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency,
            context: Some(write_context(context, self.session_timestamp)),
            sloppy_quorum: self.sloppy_quorum,
        };
        let reply = self.call_keyed(key, op)?;
        self.on_write_reply(reply)
    }

    /// Delete `key` (a tombstone); the context as for [`Client::put`].
    pub fn delete(
        &mut self,
        key: &[u8],
        consistency: Option<Consistency>,
        context: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let op = Op::Delete {
            key: key.to_vec(),
            consistency,
            context: Some(write_context(context, self.session_timestamp)),
            sloppy_quorum: self.sloppy_quorum,
        };
        let reply = self.call_keyed(key, op)?;
        self.on_write_reply(reply)
    }

    fn on_write_reply(&mut self, reply: Reply) -> Result<(), ClientError> {
        if let Some(timestamp) = write_ack(reply)? {
            self.observe_timestamp(timestamp);
        }
        Ok(())
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        let seed = self.seed;
        match self.connection(seed)?.call(Op::Ping)? {
            Reply::Pong => Ok(()),
            Reply::Error(e) => Err(ClientError::Server(e)),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to Ping: {other:?}"
            ))),
        }
    }
}

fn expect_done(reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::Done => Ok(()),
        Reply::Error(e) => Err(ClientError::Server(e)),
        other => Err(ClientError::Protocol(format!(
            "unexpected reply: {other:?}"
        ))),
    }
}

/// Is this error one the caller may retry later (unavailable, timeout, overloaded, I/O)?
pub fn is_operational(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Io { .. }
            | ClientError::Server(
                ErrorReply::Unavailable { .. }
                    | ErrorReply::Timeout { .. }
                    | ErrorReply::Overloaded
            )
    )
}

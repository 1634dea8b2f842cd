//! Blocking client over std sockets: for the CLI and tests. One [`Connection`] is a
//! pipelined frame stream; [`Client`] routes each keyed request to its shard's port and
//! keeps the session timestamp (see the module doc of `client`).

use super::retry::{self, Decision, Stage};
use super::suspects::Suspects;
use super::{get_reply, shard_address, write_ack, write_context, ClientError, GetResult, Router};
use crate::protocol::codec::{decode_response, Encoder};
use crate::protocol::frame::next_frame;
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::types::{
    Consistency, ErrorReply, NodeInfo, Op, Reply, Request, Response, Topology,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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

    /// Wait at most `timeout` for each read and write from now on (at least 1 ms: a
    /// zero timeout means none to std).
    pub fn set_io_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let timeout = Some(timeout.max(Duration::from_millis(1)));
        self.stream
            .set_read_timeout(timeout)
            .and_then(|()| self.stream.set_write_timeout(timeout))
            .map_err(|e| ClientError::io("set socket timeouts", e))
    }

    /// Whether the node closed or reset this connection while it was idle (a node
    /// killed since: its kernel closed the socket). Checked before reusing a
    /// connection, so that a request is not written into a connection already known
    /// broken, where it would look as if it might have arrived.
    pub fn is_closed_by_peer(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let closed = match self.stream.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        self.stream.set_nonblocking(false).is_err() || closed
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
///
/// Failover (the rule: [`super::retry`]): each request is tried along its
/// query plan ([`Router::plan`]: the key's replicas in ring order, then every other
/// node, suspects last) until a node answers, the retry rule says stop, or its
/// deadline ([`Client::set_request_timeout`]) passes. Every connect waits at most the
/// connect timeout or the time left, whichever is less (at most
/// [`FAILOVER_CONNECT_TIMEOUT`] when another node follows in the plan); an attempt that
/// is not the last of its plan waits at most half the time left for its reply, so that a node
/// which accepted the connection and then went silent leaves time for the next. A
/// node whose connection failed becomes a suspect of this client ([`Suspects`]) until
/// a probe succeeds.
pub struct Client {
    seed: SocketAddr,
    /// The longest a connect may take (capped by the time left to the request).
    timeout: Duration,
    /// How long one request may take, failovers included.
    request_timeout: Duration,
    /// Presented with an `Auth` request on every new connection, when set.
    token: Option<Vec<u8>>,
    topology: Option<Topology>,
    /// The ring of `topology`, built once per refresh.
    router: Router,
    connections: HashMap<SocketAddr, Connection>,
    /// Nodes whose connection failed lately, by node id.
    suspects: Suspects,
    /// The highest HLC timestamp seen in a write ack or read reply (0 = none yet).
    session_timestamp: u64,
    /// This client's HLC: the write timestamps of its puts and deletes.
    clock: crate::conflict::HlcClock,
    /// Send every keyed request to the seed node (it coordinates), not to the key's
    /// first replica.
    pinned_to_seed: bool,
    /// Sent with every put and delete: the per-request `sloppy_quorum` override.
    sloppy_quorum: Option<bool>,
}

/// The longest connect of an attempt that has another node after it in its plan.
pub const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default deadline of one request: above a server's default request timeout
/// (2 s), so its typed `Timeout` answer arrives, with room for failovers.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one attempt of a request goes: the node (when the topology names it) and
/// the port.
type Target = (Option<u64>, SocketAddr);

/// Why one attempt failed, and how far the request got.
struct AttemptError {
    stage: Stage,
    error: ClientError,
}

impl AttemptError {
    fn not_sent(error: ClientError) -> Self {
        AttemptError {
            stage: Stage::NotSent,
            error,
        }
    }
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
    /// `timeout` bounds each connect; requests have [`DEFAULT_REQUEST_TIMEOUT`]. The
    /// topology comes from `host` alone: it is the only node this client knows yet.
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
            request_timeout: DEFAULT_REQUEST_TIMEOUT.max(timeout),
            token,
            topology: None,
            router: Router::default(),
            connections: HashMap::new(),
            suspects: Suspects::default(),
            session_timestamp: 0,
            clock: crate::conflict::HlcClock::new(),
            pinned_to_seed: false,
            sloppy_quorum: None,
        };
        client.refresh_topology()?;
        Ok(client)
    }

    /// How long one request may take, every failover and connect included.
    pub fn set_request_timeout(&mut self, request_timeout: Duration) {
        self.request_timeout = request_timeout;
    }

    /// Ask for the current topology: the seed node first, then any other node this
    /// client knows (up and not suspect first).
    pub fn refresh_topology(&mut self) -> Result<&Topology, ClientError> {
        let targets = self.targets(None);
        match self.call_along(targets, Op::Topology)? {
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

    /// The query plan of a request as addresses: for `key`, the owning shard on each
    /// node of [`Router::plan`]; without a key, each node's client port (the seed node
    /// lists itself first). Only the seed node when pinned; the seed itself before any
    /// topology is known.
    fn targets(&self, key: Option<&[u8]>) -> Vec<Target> {
        let Some(topology) = self.topology.as_ref() else {
            return vec![(None, self.seed)];
        };
        let address = |node: &NodeInfo| match key {
            Some(key) => shard_address(node, key),
            None => node.address.parse().ok(),
        };
        if self.pinned_to_seed {
            // A node lists itself first in its topology.
            let node = topology.nodes.first();
            let addr = node.and_then(address).unwrap_or(self.seed);
            return vec![(node.map(|n| n.node_id), addr)];
        }
        let now = Instant::now();
        let plan = self
            .router
            .plan(topology, key, |n| self.suspects.is_suspect(n.node_id, now));
        let mut targets: Vec<Target> = plan
            .into_iter()
            .filter_map(|node| Some((Some(node.node_id), address(node)?)))
            .collect();
        if key.is_none() && !targets.iter().any(|(_, addr)| *addr == self.seed) {
            // Behind an address translation the seed is not listed as we know it.
            targets.insert(0, (None, self.seed));
        }
        if targets.is_empty() {
            targets.push((None, self.seed));
        }
        targets
    }

    /// Send `op` along `targets` until a node answers, the retry rule stops it, or the
    /// request's deadline passes (see [`Client`]).
    fn call_along(&mut self, targets: Vec<Target>, op: Op) -> Result<Reply, ClientError> {
        let kind = retry::classify(&op);
        let deadline = Instant::now() + self.request_timeout;
        let mut last: Option<ClientError> = None;
        let mut tried = 0usize;
        let count = targets.len();
        // An `Unavailable` answer, kept for the caller should every node fail.
        let mut unavailable: Option<Reply> = None;
        for (index, (node, addr)) in targets.into_iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tried += 1;
            // A node that accepted the connection but never answers (cut off since)
            // must leave time for the next one: only the last may wait to the end.
            let reply_by = if index + 1 == count {
                deadline
            } else {
                now + (deadline - now) / 2
            };
            let failure = match self.attempt(addr, op.clone(), deadline, reply_by) {
                Ok(reply @ Reply::Error(ErrorReply::Unavailable { .. })) => {
                    if let Some(node) = node {
                        self.suspects.on_success(node);
                    }
                    if retry::decide(kind, Stage::RefusedUnexecuted) == Decision::TryNext {
                        unavailable = Some(reply);
                        continue;
                    }
                    return Ok(reply);
                }
                Ok(reply) => {
                    if let Some(node) = node {
                        self.suspects.on_success(node);
                    }
                    return Ok(reply);
                }
                Err(failure) => failure,
            };
            // Whatever the stage, the stream is in an unknown state now.
            self.connections.remove(&addr);
            if let Some(node) = node {
                if failure.stage == Stage::Answered {
                    self.suspects.on_success(node);
                } else {
                    self.suspects.on_failure(node, Instant::now());
                }
            }
            match retry::decide(kind, failure.stage) {
                Decision::Surface => return Err(failure.error),
                Decision::Indeterminate => {
                    return Err(match failure.error {
                        ClientError::Io { source, .. } => {
                            ClientError::Indeterminate { node: addr, source }
                        }
                        other => other,
                    })
                }
                Decision::TryNext => last = Some(failure.error),
            }
        }
        if let Some(reply) = unavailable {
            return Ok(reply);
        }
        Err(match last {
            Some(ClientError::Io { context, source }) if tried > 1 => ClientError::Io {
                context: format!("{context} (the last of {tried} nodes tried)"),
                source,
            },
            Some(e) => e,
            None => ClientError::io(
                "request",
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("deadline of {:?} passed", self.request_timeout),
                ),
            ),
        })
    }

    /// One attempt of `op` at `addr`: connecting until `deadline` at most, waiting for
    /// the reply until `reply_by`; the error says how far the request got (see
    /// [`Stage`]).
    fn attempt(
        &mut self,
        addr: SocketAddr,
        op: Op,
        deadline: Instant,
        reply_by: Instant,
    ) -> Result<Reply, AttemptError> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let deadline_passed = || {
            AttemptError::not_sent(ClientError::io(
                format!("connection to {addr}"),
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request deadline passed"),
            ))
        };
        if self
            .connections
            .get(&addr)
            .is_some_and(Connection::is_closed_by_peer)
        {
            self.connections.remove(&addr);
        }
        if !self.connections.contains_key(&addr) {
            // A connect that is not the plan's last gets at most a second: a reachable
            // node accepts in far less, and a cut one must not eat the deadline.
            let cap = if reply_by < deadline {
                self.timeout.min(FAILOVER_CONNECT_TIMEOUT)
            } else {
                self.timeout
            };
            let timeout = cap.min(left());
            if timeout.is_zero() {
                return Err(deadline_passed());
            }
            let mut conn = Connection::connect(addr, timeout).map_err(AttemptError::not_sent)?;
            if let Some(token) = &self.token {
                conn.set_io_timeout(left())
                    .map_err(AttemptError::not_sent)?;
                let auth = Op::Auth {
                    token: token.clone(),
                };
                // Our request has not been sent yet, whatever happens to the Auth.
                let reply = conn.call(auth).map_err(AttemptError::not_sent)?;
                expect_done(reply).map_err(|error| AttemptError {
                    stage: Stage::Answered,
                    error,
                })?;
            }
            self.connections.insert(addr, conn);
        }
        let conn = self.connections.get_mut(&addr).ok_or_else(|| {
            AttemptError::not_sent(ClientError::Protocol("connection vanished".into()))
        })?;
        let timeout = reply_by
            .min(deadline)
            .saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(deadline_passed());
        }
        conn.set_io_timeout(timeout)
            .map_err(AttemptError::not_sent)?;
        let id = conn.queue(op);
        // A failed write leaves the frame incomplete at the node: never executed.
        conn.flush().map_err(AttemptError::not_sent)?;
        loop {
            let response = conn.receive().map_err(|error| AttemptError {
                stage: match error {
                    ClientError::Io { .. } => Stage::MayHaveArrived,
                    _ => Stage::Answered,
                },
                error,
            })?;
            if response.request_id == id {
                return Ok(response.body);
            }
        }
    }

    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// The address a request for `key` goes to first: the owning shard of the first
    /// node of its query plan (the key's first live replica that is not suspect), the
    /// owning shard on the seed node when pinned, else the seed.
    pub fn address_for(&self, key: &[u8]) -> SocketAddr {
        self.targets(Some(key))
            .first()
            .map_or(self.seed, |(_, addr)| *addr)
    }

    /// With `pinned`, every keyed request goes to the node this client connected to
    /// (its owning shard), which then coordinates it, instead of to the key's first
    /// replica. For programs that want one client per coordinator (and tests). A
    /// pinned client does not fail over: the node it was asked to use is the point.
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

    /// Send one keyed request along its query plan (see [`Client`]): to the owning
    /// shard of each node in turn while connections fail and the retry rule allows.
    pub fn call_keyed(&mut self, key: &[u8], op: Op) -> Result<Reply, ClientError> {
        let targets = self.targets(Some(key));
        self.call_along(targets, op)
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
            context: Some(write_context(
                context,
                self.session_timestamp,
                &mut self.clock,
            )),
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
            context: Some(write_context(
                context,
                self.session_timestamp,
                &mut self.clock,
            )),
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

    /// Ping the seed node (only it: the question is whether that node answers).
    pub fn ping(&mut self) -> Result<(), ClientError> {
        let seed = self.seed;
        match self.call_along(vec![(None, seed)], Op::Ping)? {
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

/// Is this error one the caller may retry later (unavailable, timeout, overloaded, I/O,
/// a write of unknown outcome)?
pub fn is_operational(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Io { .. }
            | ClientError::Indeterminate { .. }
            | ClientError::Server(
                ErrorReply::Unavailable { .. }
                    | ErrorReply::Timeout { .. }
                    | ErrorReply::Overloaded
            )
    )
}

#[cfg(test)]
mod tests {
    //! The failover shell against fake nodes on loopback sockets: two nodes (RF=2), the
    //! seed `A` listing itself first; `B` is the key's first replica and misbehaves.

    use super::*;
    use crate::protocol::codec::{decode_request, Limits};
    use crate::protocol::types::{NodeInfo, NodeStatus};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// What a fake node does with one request.
    enum Act {
        Reply(Reply),
        /// Close the connection without answering (as a node killed after reading).
        Close,
        /// Never answer.
        Hang,
    }

    type Seen = Arc<Mutex<Vec<Op>>>;

    /// Serve `listener` on threads (until the test process ends), one per connection,
    /// logging every request it decodes.
    fn serve(listener: TcpListener, act: impl Fn(&Op) -> Act + Send + Sync + 'static) -> Seen {
        let seen: Seen = Arc::default();
        let log = Arc::clone(&seen);
        let act = Arc::new(act);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (log, act) = (Arc::clone(&log), Arc::clone(&act));
                std::thread::spawn(move || serve_connection(stream, &log, &*act));
            }
        });
        seen
    }

    fn serve_connection(mut stream: TcpStream, log: &Seen, act: &dyn Fn(&Op) -> Act) {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Ok(Some(bounds)) = next_frame(&buf, 1 << 20) {
                let request =
                    decode_request(&buf[bounds.body.clone()], &Limits::default()).unwrap();
                buf.drain(..bounds.total_len);
                log.lock().unwrap().push(request.op.clone());
                match act(&request.op) {
                    Act::Reply(body) => {
                        let mut out = Vec::new();
                        let response = Response {
                            request_id: request.request_id,
                            body,
                        };
                        Encoder::new().encode_response(&response, &mut out);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                    Act::Close => return,
                    Act::Hang => std::thread::sleep(Duration::from_secs(30)),
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn info(id: u64, addr: SocketAddr, tokens: &[u64]) -> NodeInfo {
        NodeInfo {
            node_id: id,
            address: addr.to_string(),
            // No shard ports: requests go to the client port.
            shard_count: 0,
            shard_port_base: 0,
            status: NodeStatus::Normal,
            up: true,
            tokens: tokens.to_vec(),
            load_bytes: 0,
            hints: Default::default(),
        }
    }

    struct Pair {
        a: SocketAddr,
        b: SocketAddr,
        seen_a: Seen,
        /// `None` when nothing listens at `b` (connections are refused).
        seen_b: Option<Seen>,
        /// A key whose first replica is `B`.
        key: Vec<u8>,
    }

    fn writes(seen: &Seen) -> Vec<Op> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|op| matches!(op, Op::Put { .. } | Op::Delete { .. }))
            .cloned()
            .collect()
    }

    /// `A` answers everything; `B` acts as `act_b`, or refuses connections if `None`.
    fn pair(act_b: Option<fn(&Op) -> Act>) -> Pair {
        pair_with(answer, act_b)
    }

    /// What `A` does by default: a value for a get, an ack for a write.
    fn answer(op: &Op) -> Act {
        Act::Reply(match op {
            Op::Get { .. } => Reply::Value {
                values: vec![b"from-a".to_vec()],
                context: None,
            },
            Op::Ping => Reply::Pong,
            _ => Reply::Written { timestamp: 7 },
        })
    }

    /// `A` answers Topology and acts as `act_a` otherwise; `B` as for [`pair`].
    fn pair_with(act_a: fn(&Op) -> Act, act_b: Option<fn(&Op) -> Act>) -> Pair {
        let listener_a = TcpListener::bind("127.0.0.1:0").unwrap();
        let listener_b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (
            listener_a.local_addr().unwrap(),
            listener_b.local_addr().unwrap(),
        );
        let topology = Topology {
            nodes: vec![
                info(1, a, &[1 << 62, 5 << 61]),
                info(2, b, &[2 << 62, 7 << 61]),
            ],
            replication_factor: 2,
        };
        let router = Router::new(&topology);
        let key = (0..1000u32)
            .map(|i| format!("key{i}").into_bytes())
            .find(|k| router.route(&topology, k).unwrap().node_id == 2)
            .unwrap();
        let seen_a = serve(listener_a, move |op| match op {
            Op::Topology => Act::Reply(Reply::Topology(topology.clone())),
            other => act_a(other),
        });
        let seen_b = match act_b {
            Some(act) => Some(serve(listener_b, act)),
            None => {
                drop(listener_b);
                None
            }
        };
        Pair {
            a,
            b,
            seen_a,
            seen_b,
            key,
        }
    }

    fn close_on_writes(op: &Op) -> Act {
        match op {
            Op::Put { .. } | Op::Delete { .. } => Act::Close,
            _ => Act::Reply(Reply::Pong),
        }
    }

    fn client(p: &Pair) -> Client {
        Client::connect_with(&p.a.to_string(), Duration::from_secs(2), None).unwrap()
    }

    #[test]
    fn an_lww_write_cut_off_after_sending_is_sent_again_to_the_next_node() {
        let p = pair(Some(close_on_writes));
        let mut c = client(&p);
        assert_eq!(c.address_for(&p.key), p.b, "B is the key's first replica");
        c.put(&p.key, b"v", None, None).unwrap();
        let (at_a, at_b) = (writes(&p.seen_a), writes(p.seen_b.as_ref().unwrap()));
        assert_eq!((at_a.len(), at_b.len()), (1, 1));
        assert_eq!(at_a, at_b, "the same value and session context, twice");
        assert_eq!(c.session_timestamp(), 7, "A's ack was taken");
        assert_eq!(c.suspects.failures(2), 1, "B is now this client's suspect");
        assert_eq!(c.suspects.failures(1), 0);
        c.delete(&p.key, None, None).unwrap();
        assert_eq!(writes(&p.seen_a).len(), 2);
    }

    #[test]
    fn a_causal_write_cut_off_after_sending_is_indeterminate_and_not_sent_again() {
        let p = pair(Some(close_on_writes));
        let mut c = client(&p);
        let causal_context = vec![1, 0, 0, 0];
        match c.put(&p.key, b"v", None, Some(causal_context)) {
            Err(ClientError::Indeterminate { node, .. }) => assert_eq!(node, p.b),
            other => panic!("expected Indeterminate, got {other:?}"),
        }
        assert_eq!(writes(p.seen_b.as_ref().unwrap()).len(), 1);
        assert!(writes(&p.seen_a).is_empty(), "never sent to a second node");
        assert!(is_operational(&ClientError::Indeterminate {
            node: p.b,
            source: std::io::Error::other("x"),
        }));
    }

    #[test]
    fn a_refused_connect_fails_over_even_for_a_causal_write() {
        let p = pair(None);
        let mut c = client(&p);
        c.put(&p.key, b"v", None, Some(vec![1, 0, 0, 0])).unwrap();
        assert_eq!(writes(&p.seen_a).len(), 1);
        let got = c.get(&p.key, None).unwrap();
        assert_eq!(got.values, vec![b"from-a".to_vec()]);
    }

    #[test]
    fn a_typed_error_is_an_answer_and_does_not_fail_over() {
        let p = pair(Some(|op: &Op| match op {
            Op::Put { .. } => Act::Reply(Reply::Error(ErrorReply::Overloaded)),
            _ => Act::Reply(Reply::Pong),
        }));
        let mut c = client(&p);
        match c.put(&p.key, b"v", None, None) {
            Err(ClientError::Server(ErrorReply::Overloaded)) => {}
            other => panic!("expected the server's answer, got {other:?}"),
        }
        assert!(writes(&p.seen_a).is_empty());
        assert_eq!(
            c.address_for(&p.key),
            p.b,
            "an answering node is not suspect"
        );
    }

    #[test]
    fn a_silent_node_leaves_time_for_the_next_within_the_deadline() {
        let p = pair(Some(|_: &Op| Act::Hang));
        let mut c = client(&p);
        c.set_request_timeout(Duration::from_millis(1200));
        let started = Instant::now();
        let got = c.get(&p.key, None).unwrap();
        let took = started.elapsed();
        assert_eq!(got.values, vec![b"from-a".to_vec()]);
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(1200),
            "half the deadline at B, then A: {took:?}"
        );
    }

    #[test]
    fn the_deadline_bounds_a_request_to_silent_nodes() {
        let p = pair_with(|_| Act::Hang, Some(|_| Act::Hang));
        let mut c = client(&p);
        c.set_request_timeout(Duration::from_millis(600));
        let started = Instant::now();
        let err = c.get(&p.key, None).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_millis(1100),
            "{took:?}: {err}"
        );
        assert_eq!(p.seen_a.lock().unwrap().len(), 2, "Topology, then the get");
    }
}

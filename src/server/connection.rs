//! One client connection on one shard, served by one task that owns the socket: it
//! splits the byte stream into frames, runs each request inline when it completes
//! without waiting (a cached read, a ping) or as its own task when it must wait
//! (pipelining; answers may go out of order), and writes every answer that is ready
//! with one write per pass over the bytes a read brought.
//!
//! Must never: trust a frame before the verifier has passed it, buffer without bound
//! (in-flight requests per connection and per shard are capped), or let one
//! connection's bad input affect another.
//!
//! Peer connections: a connection whose first request is `PeerHandshake` runs an
//! `auth::Acceptor` over those frames. Until it succeeds every other op there is
//! `Unauthorized`; a failed handshake is logged (WARN, with the peer's address, never the
//! secret), counted in `peer_auth_failures`, and closes the connection. After success
//! the connection is a peer connection, the only place peer ops (`Op::is_peer_op`) are
//! accepted; it needs no client token (the handshake is the stronger proof).
//!
//! Backpressure and shedding: a connection with `max_inflight_per_connection` requests
//! in flight is not read from until one finishes (TCP flow control slows the client). A
//! shard with `max_inflight_per_shard` in flight sheds: each further request is answered
//! `Overloaded` from its request id alone ([`crate::protocol::peek`]), before any decode
//! or dispatch, so refusing costs a small fraction of serving.

use super::key_order::KeyOrder;
use super::shard::{bump, Shard};
use crate::auth::{self, Acceptor, ClientAuthState, Effect, Handshake};
use crate::protocol::codec::{decode_request, DecodeError};
use crate::protocol::frame::{next_frame, FrameError};
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::token::token_of;
use crate::protocol::types::{ErrorReply, Op, Reply, Request, Response};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Largest read per syscall; frames larger than this are assembled over several reads.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Read room a connection starts with and goes back to when it has nothing buffered, so
/// ten thousand quiet connections hold tens of MiB, not hundreds.
const IDLE_READ_BYTES: usize = 4 * 1024;
/// A write buffer that grew past this (a large reply) is released once written.
const KEPT_WRITE_BYTES: usize = 64 * 1024;

/// One shard's watch over its connections: the sweeper closes client connections idle
/// for `client_idle_timeout` and connections stalled mid-frame for `request_timeout_ms`,
/// and the node-wide count enforces `max_client_connections`.
///
/// Time is counted in sweeps (the sweeper's period is a fraction of both limits), so a
/// read costs no clock read: it only copies the sweep counter.
pub struct Registry {
    next_id: Cell<u64>,
    watched: RefCell<ahash::AHashMap<u64, Rc<Watch>>>,
    sweeps: Cell<u64>,
    /// Open client connections of the whole node (shared by every shard).
    node_clients: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// This shard's share of `node_clients`.
    open_clients: Cell<u64>,
    pub idle_closed: Cell<u64>,
    pub stalled_closed: Cell<u64>,
    pub refused_connections: Cell<u64>,
    pub accept_failures: Cell<u64>,
}

/// What the sweeper knows of one connection.
struct Watch {
    /// The sweep count at the connection's last read of bytes (or its start).
    last_read_sweep: Cell<u64>,
    /// The reader waits for bytes with part of a frame buffered.
    mid_frame: Cell<bool>,
    /// The reader waits for bytes with nothing buffered.
    waiting_for_request: Cell<bool>,
    /// A client connection (not a peer's): the idle timeout applies.
    is_client: Cell<bool>,
    inflight: Rc<Cell<u32>>,
    /// Set by the sweeper: the reader stops and the connection closes.
    close: crate::event::Event,
}

impl Registry {
    pub fn new(node_clients: std::sync::Arc<std::sync::atomic::AtomicU32>) -> Registry {
        Registry {
            next_id: Cell::new(0),
            watched: RefCell::new(ahash::AHashMap::new()),
            sweeps: Cell::new(0),
            node_clients,
            open_clients: Cell::new(0),
            idle_closed: Cell::new(0),
            stalled_closed: Cell::new(0),
            refused_connections: Cell::new(0),
            accept_failures: Cell::new(0),
        }
    }

    fn watch(&self, inflight: Rc<Cell<u32>>) -> (u64, Rc<Watch>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let watch = Rc::new(Watch {
            last_read_sweep: Cell::new(self.sweeps.get()),
            mid_frame: Cell::new(false),
            waiting_for_request: Cell::new(false),
            is_client: Cell::new(true),
            inflight,
            close: crate::event::Event::default(),
        });
        self.watched.borrow_mut().insert(id, watch.clone());
        (id, watch)
    }

    fn unwatch(&self, id: u64) {
        self.watched.borrow_mut().remove(&id);
    }

    /// Count one more client connection of the node; false (and nothing counted) when
    /// the node already has `max` open.
    fn admit_client(&self, max: u32) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.node_clients.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.node_clients.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.open_clients.set(self.open_clients.get() + 1);
        true
    }

    fn release_client(&self) {
        self.open_clients.set(self.open_clients.get() - 1);
        self.node_clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Client connections of this shard that are open now.
    pub fn open_clients(&self) -> u64 {
        self.open_clients.get()
    }
}

/// The sweeper's period: a quarter of the shorter limit, between 10 ms and 1 s.
fn sweep_period_ms(request_timeout_ms: u64, idle_timeout_ms: u64) -> u64 {
    let shortest = match idle_timeout_ms {
        0 => request_timeout_ms,
        idle => idle.min(request_timeout_ms),
    };
    (shortest / 4).clamp(10, 1_000)
}

/// Close what is idle or stalled, once per period, until the shard stops.
pub async fn run_sweeper(shard: Rc<Shard>) {
    let config = &shard.config;
    let period_ms = sweep_period_ms(config.request_timeout_ms, config.client_idle_timeout_ms);
    let registry = &shard.connections;
    loop {
        let stopped = futures_lite::future::or(
            async {
                glommio::timer::sleep(std::time::Duration::from_millis(period_ms)).await;
                false
            },
            async {
                shard.stopping.wait().await;
                true
            },
        )
        .await;
        if stopped {
            return;
        }
        let now = registry.sweeps.get() + 1;
        registry.sweeps.set(now);
        for watch in registry.watched.borrow().values() {
            if watch.close.is_set() {
                continue;
            }
            // Whole sweeps since the last read: never more than the real time.
            let quiet_ms = now.saturating_sub(watch.last_read_sweep.get() + 1) * period_ms;
            if watch.mid_frame.get() && quiet_ms >= config.request_timeout_ms {
                bump(&registry.stalled_closed);
                watch.close.set();
            } else if watch.waiting_for_request.get()
                && watch.is_client.get()
                && watch.inflight.get() == 0
                && config.client_idle_timeout_ms > 0
                && quiet_ms >= config.client_idle_timeout_ms
            {
                bump(&registry.idle_closed);
                watch.close.set();
            }
        }
    }
}

/// Answers waiting to be written, shared between the connection task and the request
/// tasks it spawned.
struct Outbox {
    buffer: RefCell<Vec<u8>>,
    /// Set by a request task that finished (its answer is in `buffer`); cleared by the
    /// connection task when it looks.
    notified: Cell<bool>,
    /// The connection task, while it waits.
    waker: RefCell<Option<std::task::Waker>>,
}

impl Outbox {
    fn push(&self, shard: &Shard, response: &Response) {
        shard
            .encoder
            .borrow_mut()
            .encode_response(response, &mut self.buffer.borrow_mut());
    }

    /// A request task finished: wake the connection task.
    fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Wait until a request task finished since the last call.
    async fn activity(&self) {
        std::future::poll_fn(|cx| {
            if self.notified.replace(false) {
                std::task::Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Write every answer that is ready, with one write (more only when the socket is
/// full). `spare` is the connection's second buffer: the outbox's bytes are swapped
/// into it, so request tasks keep appending while it is written.
async fn flush(stream: &mut TcpStream, outbox: &Outbox, spare: &mut Vec<u8>) -> bool {
    loop {
        std::mem::swap(&mut *outbox.buffer.borrow_mut(), spare);
        if spare.is_empty() {
            return true;
        }
        if stream.write_all(spare).await.is_err() {
            return false;
        }
        spare.clear();
        if spare.capacity() > KEPT_WRITE_BYTES {
            *spare = Vec::new();
        }
    }
}

/// Where a connection came from: a client or an (authenticated) peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    Client,
}

/// Where a connection stands with respect to the peer handshake.
enum PeerState {
    /// A client connection (no handshake started).
    Client,
    /// The first request was a `PeerHandshake`: handshaking, nothing else allowed.
    Handshaking(Box<Acceptor>),
    /// An authenticated peer connection.
    Peer { peer_node_id: u64 },
}

/// Per-connection state the dispatcher reads and updates.
struct ConnState {
    auth: RefCell<ClientAuthState>,
    peer: RefCell<PeerState>,
    /// Requests seen so far: a handshake may only start with the first one.
    requests_seen: Cell<u64>,
    /// Set while a handshake is under way: when it must have succeeded.
    handshake_deadline: Cell<Option<std::time::Instant>>,
    peer_addr: String,
    key_order: Rc<KeyOrder>,
    /// Counted in the node's client connections (released when the connection ends).
    counted_client: Cell<bool>,
    watch: Rc<Watch>,
}

/// What the reader does after dispatching a request.
#[derive(PartialEq, Eq)]
enum AfterDispatch {
    Continue,
    /// Close once the queued answers are written (a failed peer handshake).
    Close,
}

/// Serve one connection until the peer closes it, sends garbage, or the node stops.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream, _kind: ConnectionKind) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let outbox = Rc::new(Outbox {
        buffer: RefCell::new(Vec::new()),
        notified: Cell::new(false),
        waker: RefCell::new(None),
    });
    let mut spare = Vec::new();
    let inflight = Rc::new(Cell::new(0u32));
    let (watch_id, watch) = shard.connections.watch(inflight.clone());
    let state = ConnState {
        auth: RefCell::new(ClientAuthState::new(
            shard.config.client_auth_token.as_ref(),
        )),
        peer: RefCell::new(PeerState::Client),
        requests_seen: Cell::new(0),
        handshake_deadline: Cell::new(None),
        peer_addr: peer.clone(),
        key_order: Rc::new(KeyOrder::default()),
        counted_client: Cell::new(false),
        watch: watch.clone(),
    };

    let limits = shard.limits;
    let per_connection = shard.config.max_inflight_per_connection;
    let mut buf = ReadBuffer::with_capacity(IDLE_READ_BYTES);
    'read: loop {
        // Every complete frame already buffered, while the connection may start more.
        while inflight.get() < per_connection {
            let bounds = match next_frame(buf.filled(), limits.max_frame_bytes) {
                Ok(Some(bounds)) => bounds,
                Ok(None) => break,
                Err(err @ FrameError::TooLarge { .. }) | Err(err @ FrameError::Empty) => {
                    tracing::debug!(%peer, %err, "bad frame header; closing connection");
                    bump(&shard.metrics.bad_requests);
                    outbox.push(
                        &shard,
                        &error(
                            0,
                            ErrorReply::BadRequest {
                                message: err.to_string(),
                            },
                        ),
                    );
                    break 'read;
                }
            };
            let body = &buf.filled()[bounds.body.clone()];
            // A full shard sheds before decoding: the answer needs only the id. The
            // connection's first request is never shed (it may be a peer's handshake
            // or a client's authentication, which decide what the connection is).
            if shard.inflight.get() >= shard.config.max_inflight_per_shard
                && state.requests_seen.get() > 0
            {
                if let Some(request_id) = crate::protocol::peek::request_id(body) {
                    buf.consume(bounds.total_len);
                    bump(&shard.metrics.overloaded);
                    outbox.push(&shard, &error(request_id, ErrorReply::Overloaded));
                    continue;
                }
            }
            let decoded = decode_request(body, &limits);
            buf.consume(bounds.total_len);
            match decoded {
                Ok(request) => {
                    if dispatch(&shard, &outbox, &inflight, &state, request) == AfterDispatch::Close
                    {
                        break 'read;
                    }
                }
                Err(DecodeError::Invalid { request_id, reason }) => {
                    bump(&shard.metrics.bad_requests);
                    outbox.push(
                        &shard,
                        &error(request_id, ErrorReply::BadRequest { message: reason }),
                    );
                }
                Err(DecodeError::Malformed { reason }) => {
                    tracing::debug!(%peer, %reason, "malformed frame; closing connection");
                    bump(&shard.metrics.bad_requests);
                    outbox.push(
                        &shard,
                        &error(0, ErrorReply::BadRequest { message: reason }),
                    );
                    break 'read;
                }
            }
        }
        // Answers of this pass (and of tasks that finished meanwhile) in one write.
        outbox.notified.set(false);
        if !flush(&mut stream, &outbox, &mut spare).await {
            break;
        }
        // At its in-flight bound the connection is not read from (TCP flow control
        // slows the client) until one of its requests finishes.
        let may_read = inflight.get() < per_connection;
        let buffered = !buf.filled().is_empty();
        if !buffered {
            buf.release_room(READ_CHUNK_BYTES, IDLE_READ_BYTES);
        }
        // Room for the rest of a frame whose length is known (up to a chunk), else for
        // whatever comes: the buffer grows only as far as a frame needs.
        let room = match crate::protocol::frame::bytes_needed(buf.filled(), limits.max_frame_bytes)
        {
            Ok(needed) => needed
                .saturating_sub(buf.filled().len())
                .min(READ_CHUNK_BYTES),
            Err(_) => 0,
        };
        let spare_room = buf.spare(room.max(IDLE_READ_BYTES));
        // A handshake under way must finish within `request_timeout_ms` of its start.
        let handshake_left = state
            .handshake_deadline
            .get()
            .map(|deadline| deadline.saturating_duration_since(std::time::Instant::now()));
        watch.mid_frame.set(may_read && buffered);
        watch.waiting_for_request.set(may_read && !buffered);
        let event = futures_lite::future::or(
            async {
                if may_read {
                    Event::Read(stream.read(spare_room).await)
                } else {
                    std::future::pending().await
                }
            },
            futures_lite::future::or(
                async {
                    outbox.activity().await;
                    Event::Answered
                },
                async {
                    let stop = futures_lite::future::or(shard.stopping.wait(), watch.close.wait());
                    match handshake_left {
                        Some(left) => {
                            futures_lite::future::or(stop, glommio::timer::sleep(left)).await;
                        }
                        None => stop.await,
                    }
                    Event::Stop
                },
            ),
        )
        .await;
        watch.mid_frame.set(false);
        watch.waiting_for_request.set(false);
        match event {
            Event::Answered => {}
            Event::Read(Ok(n)) if n > 0 => {
                buf.advance(n);
                watch.last_read_sweep.set(shard.connections.sweeps.get());
            }
            _ if watch.close.is_set() => {
                tracing::debug!(shard = shard.id, %peer, mid_frame = buffered, "closing an idle or stalled connection");
                break;
            }
            _ => {
                if handshake_left.is_some() && !shard.stopping.is_set() {
                    bump(&shard.metrics.peer_auth_failures);
                    tracing::warn!(
                        shard = shard.id,
                        %peer,
                        "peer handshake refused: timed out or closed before it completed"
                    );
                }
                break;
            }
        }
    }
    if let PeerState::Peer { peer_node_id } = &*state.peer.borrow() {
        tracing::debug!(%peer, peer_node = format_args!("{peer_node_id:016x}"), "peer connection closed");
    }
    // In-flight requests finish and their answers are written before the connection
    // closes (a write error ends the writing, not the waiting: their tasks hold the
    // shard's in-flight count).
    let mut writable = true;
    loop {
        outbox.notified.set(false);
        if writable {
            writable = flush(&mut stream, &outbox, &mut spare).await;
        }
        if inflight.get() == 0 {
            break;
        }
        outbox.activity().await;
    }
    if writable {
        let _ = stream.close().await;
    }
    shard.connections.unwatch(watch_id);
    if state.counted_client.get() {
        shard.connections.release_client();
    }
}

/// What ended a connection task's wait.
enum Event {
    Read(std::io::Result<usize>),
    /// A request task finished.
    Answered,
    Stop,
}

fn error(request_id: u64, err: ErrorReply) -> Response {
    Response {
        request_id,
        body: Reply::Error(err),
    }
}

/// One `PeerHandshake` frame on the accepting side: start the acceptor on the first,
/// feed it, answer with its next message; on failure log, count, and close.
fn on_handshake(
    shard: &Rc<Shard>,
    outbox: &Rc<Outbox>,
    state: &ConnState,
    request_id: u64,
    message: &[u8],
) -> AfterDispatch {
    let mut peer = state.peer.borrow_mut();
    if matches!(*peer, PeerState::Client) {
        let nonce = match auth::fresh_nonce() {
            Ok(nonce) => nonce,
            Err(e) => {
                tracing::error!(error = %e, "cannot draw a handshake nonce");
                outbox.push(
                    shard,
                    &error(
                        request_id,
                        ErrorReply::Internal {
                            message: "cannot draw a nonce".into(),
                        },
                    ),
                );
                return AfterDispatch::Close;
            }
        };
        let (acceptor, _) = Acceptor::new(
            shard.auth.cluster_name.clone(),
            shard.auth.secret.clone(),
            shard.node_id,
            nonce,
        );
        *peer = PeerState::Handshaking(Box::new(acceptor));
        state.handshake_deadline.set(Some(
            std::time::Instant::now()
                + std::time::Duration::from_millis(shard.config.request_timeout_ms),
        ));
    }
    let PeerState::Handshaking(acceptor) = &mut *peer else {
        return AfterDispatch::Continue;
    };
    let effects = acceptor.on_bytes(message);
    let mut answer = None;
    let mut after = AfterDispatch::Continue;
    let mut authenticated = None;
    for effect in effects {
        match effect {
            Effect::Send(m) => answer = Some(m.encode()),
            Effect::Authenticated { peer_node_id } => authenticated = Some(peer_node_id),
            Effect::Close { failure } => {
                bump(&shard.metrics.peer_auth_failures);
                tracing::warn!(
                    shard = shard.id,
                    peer = %state.peer_addr,
                    reason = %failure.reason(),
                    "peer handshake refused: {failure}; closing the connection"
                );
                after = AfterDispatch::Close;
                state.handshake_deadline.set(None);
            }
        }
    }
    if let Some(peer_node_id) = authenticated {
        tracing::debug!(
            shard = shard.id,
            peer = %state.peer_addr,
            peer_node = format_args!("{peer_node_id:016x}"),
            "peer authenticated"
        );
        *peer = PeerState::Peer { peer_node_id };
        state.handshake_deadline.set(None);
        // Pooled peer connections stay open while idle.
        state.watch.is_client.set(false);
    }
    let body = match answer {
        Some(message) => Reply::PeerHandshake { message },
        None => Reply::Error(ErrorReply::Unauthorized),
    };
    outbox.push(shard, &Response { request_id, body });
    after
}

/// Admit a request (or answer `Overloaded`) and run it as its own task.
fn dispatch(
    shard: &Rc<Shard>,
    outbox: &Rc<Outbox>,
    inflight: &Rc<Cell<u32>>,
    state: &ConnState,
    request: Request,
) -> AfterDispatch {
    let Request { request_id, op } = request;
    let first = state.requests_seen.get() == 0;
    state.requests_seen.set(state.requests_seen.get() + 1);
    // The peer handshake comes before client authentication: a peer presents no client
    // token. It may only start with the connection's first request.
    let handshaking = matches!(*state.peer.borrow(), PeerState::Handshaking(_));
    if first && !matches!(op, Op::PeerHandshake { .. }) {
        // A client (a peer's first request is its handshake): counted against the
        // node's `max_client_connections`; beyond it the first request is answered
        // `Overloaded` and the connection closed.
        if !shard
            .connections
            .admit_client(shard.config.max_client_connections)
        {
            bump(&shard.connections.refused_connections);
            bump(&shard.metrics.overloaded);
            outbox.push(shard, &error(request_id, ErrorReply::Overloaded));
            return AfterDispatch::Close;
        }
        state.counted_client.set(true);
    }
    if let Op::PeerHandshake { message } = &op {
        if first || handshaking {
            return on_handshake(shard, outbox, state, request_id, message);
        }
    } else if handshaking {
        bump(&shard.metrics.unauthorized);
        outbox.push(shard, &error(request_id, ErrorReply::Unauthorized));
        return AfterDispatch::Continue;
    }
    let is_peer = matches!(*state.peer.borrow(), PeerState::Peer { .. });
    if is_peer {
        if let Op::Gossip(msg) = op {
            spawn_request(
                shard,
                outbox,
                inflight,
                request_id,
                false,
                move |shard| async move { super::gossip::route_gossip(&shard, msg).await },
            );
            return AfterDispatch::Continue;
        }
    }
    // Client authentication runs in arrival order, before anything else: with
    // `client_auth_token` set, the first request must be a correct `Auth`.
    let is_auth = matches!(op, Op::Auth { .. });
    let allowed = if is_peer {
        Ok(())
    } else {
        state.auth.borrow_mut().allows(is_auth)
    };
    if let Err(refusal) = allowed {
        bump(&shard.metrics.unauthorized);
        outbox.push(shard, &error(request_id, refusal.to_error_reply()));
        return AfterDispatch::Continue;
    }
    if let Op::Auth { token } = &op {
        let body = match state
            .auth
            .borrow_mut()
            .on_auth(shard.config.client_auth_token.as_ref(), token)
        {
            Ok(()) => Reply::Done,
            Err(refusal) => {
                tracing::info!(shard = shard.id, %refusal, "client authentication refused");
                bump(&shard.metrics.unauthorized);
                Reply::Error(refusal.to_error_reply())
            }
        };
        outbox.push(shard, &Response { request_id, body });
        return AfterDispatch::Continue;
    }
    if op.is_peer_op() && !is_peer {
        // Peer operations are accepted only on authenticated peer connections.
        bump(&shard.metrics.refused_peer_ops);
        outbox.push(shard, &error(request_id, ErrorReply::Unauthorized));
        return AfterDispatch::Continue;
    }
    // Reads of a node serving alone: a coordinated read waits for its replicas anyway,
    // and polling it here first would only add a poll and an allocation. Replica reads
    // stay tasks too: on the 3-node benchmark polling them here first was no faster,
    // and sometimes slower (docs/benchmarks.md).
    let local_read = match op {
        Op::Ping | Op::Topology => true,
        Op::Get { .. } => super::replication::serving_alone(shard),
        _ => false,
    };
    // A client's own requests on one key take effect in the order it sent them: the
    // ticket is drawn here, in arrival order ([`KeyOrder`]).
    let turn = match super::key_order::access_of(&op, shard.config.conflict_mode) {
        Some((key, access)) if !is_peer => Some(state.key_order.turn(token_of(key), access)),
        _ => None,
    };
    spawn_request(
        shard,
        outbox,
        inflight,
        request_id,
        local_read,
        move |shard| async move {
            let _turn = match turn {
                Some(wait) => Some(wait.await),
                None => None,
            };
            super::router::execute(&shard, op).await
        },
    );
    AfterDispatch::Continue
}

/// Admit a request against the shard's in-flight bound (or answer `Overloaded`) and
/// run `work` as its own task; its reply goes to the outbox. With `poll_inline_first`,
/// `work` is polled once right here and becomes a task only if it has to wait. Only for
/// operations that do not rely on yielding (a write's commit-log append yields once to
/// gather a group commit; a no-op waker would skip that yield).
fn spawn_request<F, Fut>(
    shard: &Rc<Shard>,
    outbox: &Rc<Outbox>,
    inflight: &Rc<Cell<u32>>,
    request_id: u64,
    poll_inline_first: bool,
    work: F,
) where
    F: FnOnce(Rc<Shard>) -> Fut + 'static,
    Fut: std::future::Future<Output = Reply> + 'static,
{
    if shard.inflight.get() >= shard.config.max_inflight_per_shard {
        bump(&shard.metrics.overloaded);
        outbox.push(shard, &error(request_id, ErrorReply::Overloaded));
        return;
    }
    inflight.set(inflight.get() + 1);
    shard.inflight.set(shard.inflight.get() + 1);
    let shard = shard.clone();
    let outbox = outbox.clone();
    let inflight = inflight.clone();
    let task_queue = shard.foreground_queue;
    let request = async move {
        let body = work(shard.clone()).await;
        outbox.push(&shard, &Response { request_id, body });
        inflight.set(inflight.get() - 1);
        shard.inflight.set(shard.inflight.get() - 1);
        outbox.notify();
        shard.on_request_done();
    };
    let spawned = if poll_inline_first {
        // Most reads finish without waiting (memtable, block cache): polled here, they
        // cost no task. One that must wait is spawned and polled again there with the
        // task's waker, which replaces the no-op one (every future we await refreshes
        // its waker on each poll, as the Future contract asks).
        let mut request = Box::pin(request);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if std::future::Future::poll(request.as_mut(), &mut cx).is_ready() {
            return;
        }
        glommio::spawn_local_into(request, task_queue).map(|task| task.detach())
    } else {
        glommio::spawn_local_into(request, task_queue).map(|task| task.detach())
    };
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot spawn request task");
    }
}

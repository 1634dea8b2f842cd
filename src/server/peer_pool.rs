//! Persistent, pipelined shard-to-shard peer connections: one [`PeerPool`] per shard
//! holds up to [`CONNECTIONS_PER_PEER`] authenticated connections per peer shard
//! address, and every outgoing peer exchange of the shard (replica reads and writes,
//! forwarded causal writes, gossip) goes through [`PeerPool::call`] or
//! [`PeerPool::call_addr`].
//!
//! A connection is multiplexed: a caller encodes its request into the connection's
//! outgoing buffer and waits for the reply with its `request_id`; a writer task sends
//! everything queued in one write (many frames per syscall under load), and a reader
//! task hands each response to the caller waiting for that id. Every call has its own
//! deadline (`request_timeout_ms`, covering connect, fault delay and reply); a reply that
//! arrives after its call gave up is dropped. A connection that breaks (read or write
//! error, the peer closing, an undecodable frame) fails every call in flight on it at
//! once; the next call dials a fresh one. While dials to an address fail, further dials
//! wait an exponential backoff ([`BACKOFF_FIRST_MS`] doubling to [`BACKOFF_MAX_MS`]) and
//! calls meanwhile fail at once. A call that failed because a reused connection broke is
//! retried once on a fresh connection: every peer op is idempotent (replica writes merge,
//! reads and gossip are repeatable), and a restarted peer otherwise costs one error.
//!
//! Before a request is sent, the shard's [`FaultHooks`](super::faults::FaultHooks) may
//! cut, drop or delay it (test-only `fault_rules_file`).
//!
//! Must never: send a peer op on a connection whose handshake did not succeed (only
//! [`PeerConnection::connect`] hands out streams), let a call wait without a deadline,
//! hold a `RefCell` borrow across an await, or keep calls in flight without bound
//! ([`CALLS_IN_FLIGHT_PER_CONNECTION_MAX`]; beyond it a call fails as saturated).

use super::faults::Fault;
use super::peer::{with_timeout, PeerConnection, PeerError};
use super::shard::{bump, Shard};
use crate::event::Event;
use crate::protocol::codec::{decode_response, Encoder};
use crate::protocol::frame::next_frame;
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::token::{shard_of, token_of};
use crate::protocol::types::{NodeInfo, Op, Reply, Request, Response};
use ahash::AHashMap;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Connections kept per peer shard address. One: every call to a peer shard shares one
/// stream, so concurrent calls coalesce into fewer, larger writes (less server CPU per
/// operation than two connections: docs/benchmarks.md).
pub const CONNECTIONS_PER_PEER: usize = 1;
/// First reconnect backoff after a failed dial; doubles per consecutive failure.
pub const BACKOFF_FIRST_MS: u64 = 100;
/// Longest reconnect backoff.
pub const BACKOFF_MAX_MS: u64 = 1_600;
/// Calls waiting for a reply on one connection; beyond it calls fail as saturated.
/// Far above what a shard admits (the accepting side parks its reader at
/// `max_inflight_per_connection`, so the excess waits in TCP buffers meanwhile).
pub const CALLS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 8_192;
/// Largest read per syscall.
const READ_CHUNK_BYTES: usize = 64 * 1024;

const _: () = assert!(CONNECTIONS_PER_PEER >= 1 && BACKOFF_FIRST_MS <= BACKOFF_MAX_MS);

/// The shard port of `node` that owns `key`: the same shard index when its shard count
/// matches ours, else the shard `shard_of` picks under its own count.
pub fn shard_addr(node: &NodeInfo, key: &[u8]) -> Option<SocketAddr> {
    let client: SocketAddr = node.address.parse().ok()?;
    let base = if node.shard_port_base == 0 {
        client.port().checked_add(1)?
    } else {
        node.shard_port_base
    };
    let shard = shard_of(token_of(key), node.shard_count.max(1));
    let port = base.checked_add(u16::try_from(shard).ok()?)?;
    Some(SocketAddr::new(client.ip(), port))
}

/// The backoff after `failures` consecutive failed dials (≥ 1).
fn backoff_ms(failures: u32) -> u64 {
    BACKOFF_FIRST_MS
        .saturating_mul(1u64 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX_MS)
}

/// One shard's connections to its peers, keyed by peer shard address.
#[derive(Default)]
pub struct PeerPool {
    targets: RefCell<AHashMap<SocketAddr, Target>>,
    /// Peers (by client address) a dial to failed, until the end of that dial's backoff:
    /// the coordinator's local suspicion, ahead of gossip's conviction.
    suspects: RefCell<AHashMap<String, Instant>>,
}

/// Everything about one peer shard address.
struct Target {
    /// The peer's client address the target was first dialled for (fault rules name
    /// peers by client address).
    client: String,
    slots: Vec<Slot>,
    /// Round-robin position for the next call.
    next_slot: usize,
    /// Consecutive failed dials.
    failures: u32,
    /// No dial before this instant (after failures).
    retry_at: Option<Instant>,
    last_error: String,
}

enum Slot {
    Idle,
    /// A dial is under way; set when it ended (either way).
    Connecting(Rc<Event>),
    Open(Rc<Mux>),
}

impl Target {
    fn new(client: &str) -> Target {
        Target {
            client: client.to_string(),
            slots: (0..CONNECTIONS_PER_PEER).map(|_| Slot::Idle).collect(),
            next_slot: 0,
            failures: 0,
            retry_at: None,
            last_error: String::new(),
        }
    }

    /// The healthy connection in `slot`, if any.
    fn open(&self, slot: usize) -> Option<Rc<Mux>> {
        match &self.slots[slot] {
            Slot::Open(mux) if !mux.is_broken() => Some(mux.clone()),
            _ => None,
        }
    }
}

impl PeerPool {
    /// One peer call to the shard of `node` that owns `key`, under `request_timeout_ms`.
    pub async fn call(
        &self,
        shard: &Rc<Shard>,
        node: &NodeInfo,
        key: &[u8],
        op: Op,
    ) -> Result<Reply, String> {
        let addr = shard_addr(node, key).ok_or_else(|| format!("bad address {}", node.address))?;
        self.call_addr(shard, addr, &node.address, Some(node.node_id), op)
            .await
            .map_err(|e| e.to_string())
    }

    /// One peer call to the shard port `addr` of the peer whose client address is
    /// `client` (for the fault rules); when `expected_node` is known, a connection to
    /// another node id is refused. Bounded by `request_timeout_ms`.
    pub async fn call_addr(
        &self,
        shard: &Rc<Shard>,
        addr: SocketAddr,
        client: &str,
        expected_node: Option<u64>,
        op: Op,
    ) -> Result<Reply, PeerError> {
        let timeout = Duration::from_millis(shard.config.request_timeout_ms);
        let timed_out = || PeerError::Timeout {
            addr,
            timeout_ms: timeout.as_millis() as u64,
        };
        let mut delay = None;
        match shard.faults.check(client) {
            None => {}
            Some(Fault::Cut) => {
                self.close_client(client, "cut by a fault rule");
                return Err(PeerError::Unreachable {
                    addr,
                    message: "cut by a fault rule".into(),
                });
            }
            Some(Fault::Drop) => {
                // Not sent: the caller learns nothing until its deadline.
                glommio::timer::sleep(timeout).await;
                return Err(timed_out());
            }
            Some(Fault::Delay(held)) => delay = Some(held),
        }
        let exchange = async {
            if let Some(held) = delay {
                glommio::timer::sleep(held).await;
            }
            self.exchange(shard, addr, client, expected_node, op).await
        };
        with_timeout(timeout, exchange)
            .await
            .unwrap_or_else(|| Err(timed_out()))
    }

    /// Close every connection to the peer with client address `client`; calls in
    /// flight on them fail with `why`.
    pub fn close_client(&self, client: &str, why: &str) {
        for target in self.targets.borrow_mut().values_mut() {
            if target.client == client {
                close_slots(target, why);
            }
        }
    }

    /// The peer with client address `client` is up again (gossip heard from it): forget
    /// the backoff of failed dials to it, so the next call dials at once instead of
    /// failing fast for up to [`BACKOFF_MAX_MS`] after its return.
    pub fn forget_backoff(&self, client: &str) {
        for target in self.targets.borrow_mut().values_mut() {
            if target.client == client {
                target.failures = 0;
                target.retry_at = None;
            }
        }
        self.suspects.borrow_mut().remove(client);
    }

    /// Whether a dial to the peer with client address `client` failed (refused, reset,
    /// timed out, refused by its handshake) and its backoff has not run out. A
    /// coordinator does not count such a peer alive for reads, stand-ins or W while
    /// gossip still says it is up: a killed peer costs one failed call, not a failure
    /// per request until gossip convicts it. When the backoff runs out the next request
    /// that needs the peer dials it again, so a peer that is back is used again within
    /// [`BACKOFF_MAX_MS`] even if gossip never saw it down.
    pub fn is_suspect(&self, client: &str) -> bool {
        let suspects = self.suspects.borrow();
        !suspects.is_empty()
            && suspects
                .get(client)
                .is_some_and(|until| Instant::now() < *until)
    }

    /// Close every connection (the shard is stopping).
    pub fn close_all(&self) {
        for target in self.targets.borrow_mut().values_mut() {
            close_slots(target, "the node is stopping");
        }
    }

    /// Send `op` and wait for its reply (no deadline here: the caller's).
    async fn exchange(
        &self,
        shard: &Rc<Shard>,
        addr: SocketAddr,
        client: &str,
        expected_node: Option<u64>,
        op: Op,
    ) -> Result<Reply, PeerError> {
        let mut request = Request { request_id: 0, op };
        let mut retried = false;
        loop {
            let (mux, reused) = self.checkout(shard, addr, client).await?;
            if let Some(expected) = expected_node {
                if mux.peer_node_id != expected {
                    return Err(PeerError::Protocol {
                        addr,
                        message: format!(
                            "peer is node {:016x}, expected {expected:016x}",
                            mux.peer_node_id
                        ),
                    });
                }
            }
            let result = match mux.send(&mut request) {
                Ok(call) => call.reply().await,
                Err(e) => Err(e),
            };
            match result {
                Err(PeerError::Io { message, .. }) if reused && !retried => {
                    tracing::debug!(peer = %addr, error = %message, "pooled peer connection broke; retrying on a fresh one");
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// A healthy connection to `addr` and whether it existed before this call: the
    /// round-robin slot's, else any open one while the slot dials, else the slot's once
    /// its dial ends.
    async fn checkout(
        &self,
        shard: &Rc<Shard>,
        addr: SocketAddr,
        client: &str,
    ) -> Result<(Rc<Mux>, bool), PeerError> {
        let (slot, dialled) = {
            let mut targets = self.targets.borrow_mut();
            let target = targets.entry(addr).or_insert_with(|| Target::new(client));
            let slot = target.next_slot;
            target.next_slot = if slot + 1 == CONNECTIONS_PER_PEER {
                0
            } else {
                slot + 1
            };
            if let Some(mux) = target.open(slot) {
                return Ok((mux, true));
            }
            let dialled = match &target.slots[slot] {
                Slot::Connecting(done) => Some(done.clone()),
                _ if target.retry_at.is_some_and(|at| Instant::now() < at) => None,
                _ => {
                    let done = Rc::new(Event::default());
                    match spawn_dial(shard, addr, slot, done.clone()) {
                        Ok(()) => {
                            target.slots[slot] = Slot::Connecting(done.clone());
                            Some(done)
                        }
                        Err(message) => return Err(PeerError::Connect { addr, message }),
                    }
                }
            };
            // Meanwhile, any other open connection to the address serves the call.
            if let Some(mux) = (0..CONNECTIONS_PER_PEER).find_map(|i| target.open(i)) {
                return Ok((mux, true));
            }
            match dialled {
                Some(done) => (slot, done),
                None => {
                    return Err(PeerError::Unreachable {
                        addr,
                        message: format!("reconnect backoff after: {}", target.last_error),
                    })
                }
            }
        };
        dialled.wait().await;
        let targets = self.targets.borrow();
        let target = targets.get(&addr).ok_or_else(|| PeerError::Connect {
            addr,
            message: "peer forgotten while dialling".into(),
        })?;
        match target.open(slot) {
            Some(mux) => Ok((mux, false)),
            None => Err(PeerError::Connect {
                addr,
                message: target.last_error.clone(),
            }),
        }
    }

    /// A dial of `slot` ended: install the connection, or count the failure and back off.
    fn on_dialled(
        &self,
        shard: &Shard,
        addr: SocketAddr,
        slot: usize,
        result: Result<PeerConnection, PeerError>,
    ) {
        let mut targets = self.targets.borrow_mut();
        let Some(target) = targets.get_mut(&addr) else {
            return;
        };
        match result.and_then(|conn| Mux::start(shard, conn)) {
            Ok(mux) => {
                target.slots[slot] = Slot::Open(mux);
                target.failures = 0;
                target.retry_at = None;
                self.suspects.borrow_mut().remove(&target.client);
            }
            Err(e) => {
                note_failure(shard, &e);
                target.failures = target.failures.saturating_add(1);
                let until = Instant::now() + Duration::from_millis(backoff_ms(target.failures));
                target.retry_at = Some(until);
                target.last_error = e.to_string();
                target.slots[slot] = Slot::Idle;
                self.suspects
                    .borrow_mut()
                    .insert(target.client.clone(), until);
            }
        }
    }
}

fn close_slots(target: &mut Target, why: &str) {
    for slot in &mut target.slots {
        if let Slot::Open(mux) = slot {
            mux.fail(why);
            *slot = Slot::Idle;
        }
    }
}

/// Dial `addr` for `slot` as its own task, so a caller that gives up does not abort a
/// dial other callers wait for; `done` is set when it ends.
fn spawn_dial(
    shard: &Rc<Shard>,
    addr: SocketAddr,
    slot: usize,
    done: Rc<Event>,
) -> Result<(), String> {
    let task_shard = shard.clone();
    let task = glommio::spawn_local_into(
        async move {
            let shard = task_shard;
            let result = PeerConnection::connect(
                addr,
                &shard.auth,
                shard.node_id,
                Duration::from_millis(shard.config.request_timeout_ms),
                shard.limits.max_frame_bytes,
            )
            .await;
            shard.peers.on_dialled(&shard, addr, slot, result);
            done.set();
        },
        shard.foreground_queue,
    )
    .map_err(|e| format!("cannot spawn a peer dial: {e}"))?;
    task.detach();
    Ok(())
}

/// Count and log a failed dial (authentication refusals at WARN: they mean
/// misconfiguration or an intruder; plain unreachability at DEBUG, the failure detector
/// reports it).
fn note_failure(shard: &Shard, e: &PeerError) {
    if e.is_auth_failure() {
        bump(&shard.metrics.peer_auth_failures);
        tracing::warn!(error = %e, "peer connection refused");
    } else {
        tracing::debug!(error = %e, "peer connection failed");
    }
}

/// One call waiting on a [`Mux`].
#[derive(Default)]
struct PendingCall {
    result: Option<Result<Reply, PeerError>>,
    waker: Option<Waker>,
}

/// One authenticated, multiplexed connection and its reader and writer tasks.
struct Mux {
    addr: SocketAddr,
    peer_node_id: u64,
    next_request_id: Cell<u64>,
    encoder: RefCell<Encoder>,
    /// Encoded request frames not yet handed to the socket.
    outgoing: RefCell<Vec<u8>>,
    writer_waker: RefCell<Option<Waker>>,
    pending: RefCell<AHashMap<u64, PendingCall>>,
    /// Why the connection broke; set once, then it takes no more calls.
    broken: RefCell<Option<String>>,
    /// Set with `broken`: the reader and writer stop.
    closed: Event,
}

impl Mux {
    /// Take over an authenticated connection: spawn its reader and writer.
    fn start(shard: &Shard, conn: PeerConnection) -> Result<Rc<Mux>, PeerError> {
        let addr = conn.addr();
        let mux = Rc::new(Mux {
            addr,
            peer_node_id: conn.peer_node_id(),
            next_request_id: Cell::new(1),
            encoder: RefCell::new(Encoder::new()),
            outgoing: RefCell::new(Vec::new()),
            writer_waker: RefCell::new(None),
            pending: RefCell::new(AHashMap::new()),
            broken: RefCell::new(None),
            closed: Event::default(),
        });
        let (stream, buf) = conn.into_parts();
        let (reader, writer) = futures_lite::io::split(stream);
        let spawn_error = |e: glommio::GlommioError<()>| PeerError::Io {
            addr,
            message: format!("cannot spawn a peer connection task: {e}"),
        };
        let max_frame_bytes = shard.limits.max_frame_bytes;
        glommio::spawn_local_into(
            run_reader(mux.clone(), reader, buf, max_frame_bytes),
            shard.foreground_queue,
        )
        .map_err(spawn_error)?
        .detach();
        match glommio::spawn_local_into(run_writer(mux.clone(), writer), shard.foreground_queue) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => {
                // Stops the reader spawned above.
                mux.fail("cannot start the writer");
                return Err(spawn_error(e));
            }
        }
        Ok(mux)
    }

    fn is_broken(&self) -> bool {
        self.broken.borrow().is_some()
    }

    /// Queue `request` (its id assigned here) for the writer.
    fn send(self: &Rc<Self>, request: &mut Request) -> Result<CallHandle, PeerError> {
        if let Some(why) = self.broken.borrow().as_ref() {
            return Err(PeerError::Io {
                addr: self.addr,
                message: why.clone(),
            });
        }
        let mut pending = self.pending.borrow_mut();
        if pending.len() >= CALLS_IN_FLIGHT_PER_CONNECTION_MAX {
            return Err(PeerError::Saturated { addr: self.addr });
        }
        let id = self.next_request_id.get();
        self.next_request_id.set(id + 1);
        request.request_id = id;
        let fresh = pending.insert(id, PendingCall::default()).is_none();
        assert!(fresh, "request id {id} reused on one connection");
        self.encoder
            .borrow_mut()
            .encode_request(request, &mut self.outgoing.borrow_mut());
        if let Some(writer) = self.writer_waker.borrow_mut().take() {
            writer.wake();
        }
        Ok(CallHandle {
            mux: self.clone(),
            id,
        })
    }

    /// A response arrived: hand it to its caller, or drop it if the caller gave up.
    fn on_response(&self, response: Response) {
        let mut pending = self.pending.borrow_mut();
        if let Some(call) = pending.get_mut(&response.request_id) {
            if call.result.is_none() {
                call.result = Some(Ok(response.body));
                if let Some(waker) = call.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Break the connection: fail every call in flight, stop the reader and writer.
    fn fail(&self, why: &str) {
        if self.is_broken() {
            return;
        }
        *self.broken.borrow_mut() = Some(why.to_string());
        for call in self.pending.borrow_mut().values_mut() {
            if call.result.is_none() {
                call.result = Some(Err(PeerError::Io {
                    addr: self.addr,
                    message: why.to_string(),
                }));
                if let Some(waker) = call.waker.take() {
                    waker.wake();
                }
            }
        }
        self.outgoing.borrow_mut().clear();
        self.closed.set();
        if let Some(writer) = self.writer_waker.borrow_mut().take() {
            writer.wake();
        }
    }
}

/// A call registered on a [`Mux`]; dropping it (its caller timed out) forgets the id,
/// so a late reply is dropped.
struct CallHandle {
    mux: Rc<Mux>,
    id: u64,
}

impl CallHandle {
    async fn reply(&self) -> Result<Reply, PeerError> {
        std::future::poll_fn(|cx| {
            let mut pending = self.mux.pending.borrow_mut();
            let Some(call) = pending.get_mut(&self.id) else {
                return Poll::Ready(Err(PeerError::Io {
                    addr: self.mux.addr,
                    message: "call forgotten".into(),
                }));
            };
            match call.result.take() {
                Some(result) => {
                    pending.remove(&self.id);
                    Poll::Ready(result)
                }
                None => {
                    call.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        self.mux.pending.borrow_mut().remove(&self.id);
    }
}

/// Write whatever callers queued, all of it per write, until the connection breaks.
async fn run_writer(
    mux: Rc<Mux>,
    mut writer: futures_lite::io::WriteHalf<glommio::net::TcpStream>,
) {
    let mut batch = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            if mux.is_broken() || !mux.outgoing.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *mux.writer_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if mux.is_broken() {
            let _ = writer.close().await;
            return;
        }
        std::mem::swap(&mut *mux.outgoing.borrow_mut(), &mut batch);
        let written = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        }
        .await;
        if let Err(e) = written {
            mux.fail(&format!("write failed: {e}"));
            return;
        }
        batch.clear();
    }
}

/// Read responses and hand them to their callers until the connection breaks.
async fn run_reader(
    mux: Rc<Mux>,
    mut reader: futures_lite::io::ReadHalf<glommio::net::TcpStream>,
    mut buf: ReadBuffer,
    max_frame_bytes: usize,
) {
    loop {
        loop {
            let bounds = match next_frame(buf.filled(), max_frame_bytes) {
                Ok(Some(bounds)) => bounds,
                Ok(None) => break,
                Err(e) => {
                    mux.fail(&format!("bad frame from peer: {e}"));
                    return;
                }
            };
            let response = decode_response(&buf.filled()[bounds.body.clone()]);
            buf.consume(bounds.total_len);
            match response {
                Ok(response) => mux.on_response(response),
                Err(e) => {
                    mux.fail(&format!("undecodable response from peer: {e}"));
                    return;
                }
            }
        }
        let spare = buf.spare(READ_CHUNK_BYTES);
        let read = futures_lite::future::or(async { Some(reader.read(spare).await) }, async {
            mux.closed.wait().await;
            None
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => buf.advance(n),
            Some(Ok(_)) => {
                mux.fail("closed by peer");
                return;
            }
            Some(Err(e)) => {
                mux.fail(&format!("read failed: {e}"));
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(backoff_ms(1), BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(2), 2 * BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(5), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
        assert!((1..40).all(|f| backoff_ms(f) <= backoff_ms(f + 1)));
    }
}

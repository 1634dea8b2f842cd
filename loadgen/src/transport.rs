//! The load generator's own pipelined connections: one epoll set per executor thread,
//! non-blocking sockets, and the ringkv codec.
//!
//! Why not `ringkv::client::asynch` (glommio sockets)? Measured (docs/benchmarks.md,
//! "Load generator cost"): at one request in flight per connection, the load generator's
//! CPU went to the kernel, and most of it to wake-ups, not to TCP. A glommio socket read
//! arms an io_uring poll after every receive; each reply that lands on an armed poll
//! queues io_uring task work and interrupts the (running) load-generator thread with an
//! IPI, and the sender pays for raising it — about 0.7 IPIs per request each way, each
//! costing microseconds in a VM. Here replies land in an epoll ready list, which costs
//! nothing while this thread is busy: one [`Poller`] task per executor asks
//! `epoll_wait(0)` once per round for every ready socket, reads each once, matches
//! replies to waiters, and writes every connection's queued requests with one `send`
//! per connection and round (so requests issued by several slots in one round share a
//! packet). Only when a round found nothing to do does the task park, in glommio's own
//! reactor, on readiness of the epoll descriptor — so an idle load generator sleeps and
//! costs nothing, and one wake-up covers all sockets.
//!
//! Per request, the hot path allocates nothing of its own: calls in flight wait in a
//! slab indexed by their request id (see [`Waiters`]), and the byte buffers of sent
//! requests are kept for the next ones ([`Conn::bytes`]).
//!
//! This module owns sockets, framing and request matching; it must never decide what a
//! latency or an error means to the run (that is the engine's and the target's). Its one
//! use of the clock is [`reply_stamp`]: a single reading per round, taken when the
//! round completes its first reply and shared by every reply that round read, so the
//! engine need not read the clock once per request.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use ringkv::client::ClientError;
use ringkv::protocol::codec::{decode_response, Encoder};
use ringkv::protocol::frame::next_frame;
use ringkv::protocol::read_buffer::ReadBuffer;
use ringkv::protocol::types::{Op, Reply, Request};

/// Largest response frame accepted (value limit + slack, as the library client).
const MAX_RESPONSE_FRAME_BYTES: usize = 64 << 20;
/// Bytes offered to one `read` of a socket.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Ready sockets taken from the epoll set per round (more wait for the next round).
const EVENTS_PER_ROUND: usize = 256;
/// How long a connect may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Request byte buffers kept per thread for reuse ([`Conn::bytes`]), and the largest
/// capacity kept (a rare huge value is not worth holding on to).
const SPARE_BUFFERS_MAX: usize = 4096;
const SPARE_BUFFER_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    /// This thread's poller, with the id of the executor whose task drives it.
    static POLLER: RefCell<Option<(usize, Rc<Poller>)>> = const { RefCell::new(None) };
    /// See [`reply_stamp`].
    static ROUND_STAMP: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When this thread's poller read the replies of its latest round, from the moment
/// that round completed its first reply until the next round starts or the poller
/// parks; `None` otherwise (and always on a thread without a poller).
///
/// The tasks those replies woke run in between, so for them this is the moment their
/// reply was read, and a request they issue now is written by the next round's flush,
/// not earlier: it is a valid (one-round-early) send time too. One clock reading then
/// serves every reply and request of a round.
pub fn reply_stamp() -> Option<Instant> {
    ROUND_STAMP.with(Cell::get)
}

/// The stamp of this round, read from the clock by the first reply that needs it.
fn stamp_round() {
    ROUND_STAMP.with(|stamp| {
        if stamp.get().is_none() {
            stamp.set(Some(Instant::now()));
        }
    });
}

fn clear_round_stamp() {
    ROUND_STAMP.with(|stamp| stamp.set(None));
}

/// One entry of [`Waiters`].
#[derive(Default)]
struct Waiter {
    /// Request id of the call holding this entry; 0 (never a request id) when free.
    request_id: u64,
    result: Option<Result<Reply, ClientError>>,
    waker: Option<Waker>,
}

/// The calls in flight on one socket, without a map: a call's request id is
/// `(sequence << 32) | index`, `index` being its entry here and `sequence` a per-socket
/// counter (wrapping, never 0, so no id is 0). A reply finds its entry by the id's low
/// half and is taken only if the entry still holds exactly that id, so a reply to a
/// call that was given up (its entry since reused) is ignored, as an unknown id was
/// with a map. Entries are never removed, only freed: the slab is as large as the most
/// calls ever in flight at once.
#[derive(Default)]
struct Waiters {
    entries: Vec<Waiter>,
    free: Vec<u32>,
    sequence: u32,
}

impl Waiters {
    /// Take a free entry for a new call: its request id and index.
    fn insert(&mut self) -> (u64, usize) {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.entries.push(Waiter::default());
                self.entries.len() - 1
            }
        };
        let index32 = u32::try_from(index).unwrap_or_else(|_| panic!("{index} calls in flight"));
        self.sequence = self.sequence.wrapping_add(1).max(1);
        let request_id = (u64::from(self.sequence) << 32) | u64::from(index32);
        let entry = &mut self.entries[index];
        assert_eq!(entry.request_id, 0, "a free entry is empty");
        entry.request_id = request_id;
        (request_id, index)
    }

    /// Deliver `result` to the call waiting for `request_id`; returns its waker.
    /// `None` when no call waits for that id (unknown, given up, or answered already).
    fn complete(
        &mut self,
        request_id: u64,
        result: Result<Reply, ClientError>,
    ) -> Option<Option<Waker>> {
        let index = (request_id & u64::from(u32::MAX)) as usize;
        let entry = self.entries.get_mut(index)?;
        if request_id == 0 || entry.request_id != request_id || entry.result.is_some() {
            return None;
        }
        entry.result = Some(result);
        Some(entry.waker.take())
    }

    /// Free the entry of `request_id` (its call returned or was dropped).
    fn remove(&mut self, index: usize, request_id: u64) {
        if let Some(entry) = self.entries.get_mut(index) {
            if entry.request_id == request_id {
                *entry = Waiter::default();
                self.free.push(index as u32);
            }
        }
    }
}

/// Frees a call's entry when its future completes or is dropped before the reply.
struct WaiterGuard<'a> {
    socket: &'a Socket,
    index: usize,
    request_id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.socket
            .waiters
            .borrow_mut()
            .remove(self.index, self.request_id);
    }
}

/// One socket's state, shared by its [`Conn`] handle and the poller.
struct Socket {
    /// Index in the poller's table, also the epoll event's data.
    slot: usize,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Encoded requests not yet written.
    out: RefCell<Vec<u8>>,
    /// Listed in the poller's `dirty` (so it is flushed this round).
    queued: Cell<bool>,
    /// EPOLLOUT is in the interest set (connecting, or a write would block).
    want_write: Cell<bool>,
    /// Connecting: woken when the socket becomes writable or fails.
    connect_waker: RefCell<Option<Waker>>,
    connect_ready: Cell<bool>,
    buf: RefCell<ReadBuffer>,
    waiters: RefCell<Waiters>,
    /// Set once the connection failed; every later call fails at once.
    broken: RefCell<Option<String>>,
    encoder: RefCell<Encoder>,
}

impl Socket {
    fn io_error(&self, kind: std::io::ErrorKind, why: &str) -> ClientError {
        ClientError::Io {
            context: format!("connection to {}", self.peer),
            source: std::io::Error::new(kind, why.to_string()),
        }
    }
}

/// The per-executor epoll set and the task that drives it.
pub struct Poller {
    epoll: Epoll,
    sockets: RefCell<Vec<Option<Rc<Socket>>>>,
    free_slots: RefCell<Vec<usize>>,
    /// Sockets with queued requests, flushed at the start of the next round.
    dirty: RefCell<Vec<Rc<Socket>>>,
    /// The task is parked on the epoll descriptor: callers write directly.
    parked: Cell<bool>,
    /// Byte buffers of requests already encoded, for [`Conn::bytes`].
    spare_buffers: RefCell<Vec<Vec<u8>>>,
}

impl Poller {
    /// The poller of the current glommio executor, created (with its task) on first use.
    fn current() -> std::io::Result<Rc<Poller>> {
        let executor = glommio::executor().id();
        POLLER.with(|cell| {
            if let Some((id, poller)) = cell.borrow().as_ref() {
                if *id == executor {
                    return Ok(Rc::clone(poller));
                }
            }
            let poller = Rc::new(Poller {
                epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?,
                sockets: RefCell::new(Vec::new()),
                free_slots: RefCell::new(Vec::new()),
                dirty: RefCell::new(Vec::new()),
                parked: Cell::new(false),
                spare_buffers: RefCell::new(Vec::new()),
            });
            glommio::spawn_local(drive(Rc::downgrade(&poller))).detach();
            *cell.borrow_mut() = Some((executor, Rc::clone(&poller)));
            Ok(poller)
        })
    }

    fn interest(&self, socket: &Socket, write: bool) -> std::io::Result<()> {
        let flags = if write {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        let mut event = EpollEvent::new(flags, socket.slot as u64);
        self.epoll
            .modify(socket.stream.as_fd(), &mut event)
            .map_err(std::io::Error::from)?;
        socket.want_write.set(write);
        Ok(())
    }

    /// Mark `socket` failed: every waiter gets an I/O error, the socket leaves the set.
    fn fail(&self, socket: &Socket, why: &str) {
        if socket.broken.borrow().is_some() {
            return;
        }
        *socket.broken.borrow_mut() = Some(why.to_string());
        let mut wakers = Vec::new();
        for entry in socket.waiters.borrow_mut().entries.iter_mut() {
            if entry.request_id != 0 && entry.result.is_none() {
                let error = socket.io_error(std::io::ErrorKind::ConnectionAborted, why);
                entry.result = Some(Err(error));
                wakers.extend(entry.waker.take());
            }
        }
        for w in wakers {
            w.wake();
        }
        let _ = self.epoll.delete(socket.stream.as_fd());
        self.release(socket.slot);
        if let Some(w) = socket.connect_waker.borrow_mut().take() {
            socket.connect_ready.set(true);
            w.wake();
        }
    }

    fn release(&self, slot: usize) {
        let mut sockets = self.sockets.borrow_mut();
        if sockets.get(slot).is_some_and(Option::is_some) {
            sockets[slot] = None;
            self.free_slots.borrow_mut().push(slot);
        }
    }

    /// Write what `socket` has queued; a write that would block waits for EPOLLOUT.
    /// Returns whether anything was written.
    fn flush(&self, socket: &Socket) -> bool {
        socket.queued.set(false);
        if socket.broken.borrow().is_some() {
            return false;
        }
        let mut wrote = false;
        let mut failure = None;
        {
            let mut out = socket.out.borrow_mut();
            let mut sent = 0;
            while sent < out.len() {
                match (&socket.stream).write(&out[sent..]) {
                    Ok(0) => {
                        failure = Some("wrote zero bytes".to_string());
                        break;
                    }
                    Ok(n) => {
                        sent += n;
                        wrote = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            out.drain(..sent);
            if failure.is_none() && !socket.connect_waker.borrow().is_some() {
                let blocked = !out.is_empty();
                if blocked != socket.want_write.get() {
                    if let Err(e) = self.interest(socket, blocked) {
                        failure = Some(e.to_string());
                    }
                }
            }
        }
        if let Some(why) = failure {
            self.fail(socket, &why);
        }
        wrote
    }

    /// Read what `socket` has and complete the waiters of every whole reply.
    fn receive(&self, socket: &Socket) {
        loop {
            let (result, offered) = {
                let mut buf = socket.buf.borrow_mut();
                let spare = buf.spare(READ_CHUNK_BYTES);
                let offered = spare.len();
                let result = (&socket.stream).read(spare);
                if let Ok(n) = result {
                    buf.advance(n);
                }
                (result, offered)
            };
            match result {
                Ok(0) => return self.fail(socket, "closed by server"),
                Ok(n) => {
                    if let Err(why) = self.dispatch(socket) {
                        return self.fail(socket, &why);
                    }
                    if n < offered {
                        return; // drained; level-triggered epoll reports more later
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => return self.fail(socket, &e.to_string()),
            }
        }
    }

    fn dispatch(&self, socket: &Socket) -> Result<(), String> {
        loop {
            let response = {
                let mut buf = socket.buf.borrow_mut();
                let Some(bounds) = next_frame(buf.filled(), MAX_RESPONSE_FRAME_BYTES)
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(());
                };
                let decoded = decode_response(&buf.filled()[bounds.body.clone()]);
                buf.consume(bounds.total_len);
                decoded.map_err(|e| format!("undecodable response: {e}"))?
            };
            let completed = socket
                .waiters
                .borrow_mut()
                .complete(response.request_id, Ok(response.body));
            if let Some(waker) = completed {
                stamp_round();
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }

    /// One round: flush queued writes, take ready sockets, serve them. Returns whether
    /// anything happened (if not, the caller parks).
    fn round(&self, events: &mut [EpollEvent]) -> bool {
        clear_round_stamp();
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut busy = false;
        for socket in &dirty {
            busy |= self.flush(socket);
        }
        let ready = match self.epoll.wait(events, 0) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return true,
            Err(e) => panic!("epoll_wait failed: {e}"),
        };
        for event in &events[..ready] {
            busy = true;
            let socket = self
                .sockets
                .borrow()
                .get(event.data() as usize)
                .and_then(Option::clone);
            let Some(socket) = socket else { continue };
            let flags = event.events();
            if let Some(w) = socket.connect_waker.borrow_mut().take() {
                socket.connect_ready.set(true);
                w.wake();
                continue;
            }
            if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
                self.receive(&socket);
            }
            if flags.contains(EpollFlags::EPOLLOUT) {
                self.flush(&socket);
            }
        }
        busy
    }
}

/// The poller's task: rounds while there is work, parked on the epoll descriptor when
/// there is none. Ends when the poller is gone.
async fn drive(poller: Weak<Poller>) {
    let mut events = vec![EpollEvent::empty(); EVENTS_PER_ROUND];
    loop {
        let Some(p) = poller.upgrade() else { return };
        if p.round(&mut events) {
            drop(p);
            futures_lite::future::yield_now().await;
            continue;
        }
        let park = park_on(&p.epoll);
        clear_round_stamp();
        p.parked.set(true);
        drop(p);
        park.await;
        let Some(p) = poller.upgrade() else { return };
        p.parked.set(false);
        // Anything queued while parked was written by its caller; nothing to flush.
    }
}

/// A future that completes once the epoll set has a ready socket: glommio's reactor
/// polls (io_uring) a duplicate of the epoll descriptor, wrapped as a glommio stream
/// whose first read waits for readability. The read itself then fails (an epoll
/// descriptor is not a socket); only the wake-up matters. The duplicate is made per
/// park so every park arms a fresh poll.
fn park_on(epoll: &Epoll) -> impl Future<Output = ()> {
    let stream = epoll.0.try_clone().map(|fd| {
        glommio::net::TcpStream::from(socket2::Socket::from(std::net::TcpStream::from(fd)))
    });
    async move {
        match stream {
            Ok(mut stream) => {
                let mut byte = [0u8; 1];
                let _ = stream.read(&mut byte).await;
            }
            // Out of descriptors: look again shortly rather than spin.
            Err(_) => glommio::timer::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// A pipelined connection to one address; many calls may be in flight at once.
pub struct Conn {
    socket: Rc<Socket>,
    poller: Rc<Poller>,
}

impl Conn {
    /// Connect (non-blocking, bounded by [`CONNECT_TIMEOUT`]) on this executor's poller.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, ClientError> {
        let io = |e: std::io::Error| ClientError::Io {
            context: format!("cannot connect to {addr}"),
            source: e,
        };
        let poller = Poller::current().map_err(io)?;
        let raw = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(io)?;
        raw.set_nonblocking(true).map_err(io)?;
        raw.set_nodelay(true).map_err(io)?;
        let pending = match raw.connect(&addr.into()) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => true,
            Err(e) => return Err(io(e)),
        };
        let stream = std::net::TcpStream::from(raw);
        let slot = poller.free_slots.borrow_mut().pop().unwrap_or_else(|| {
            let mut sockets = poller.sockets.borrow_mut();
            sockets.push(None);
            sockets.len() - 1
        });
        let socket = Rc::new(Socket {
            slot,
            stream,
            peer: addr,
            out: RefCell::new(Vec::new()),
            queued: Cell::new(false),
            want_write: Cell::new(pending),
            connect_waker: RefCell::new(None),
            connect_ready: Cell::new(!pending),
            buf: RefCell::new(ReadBuffer::with_capacity(READ_CHUNK_BYTES)),
            waiters: RefCell::new(Waiters::default()),
            broken: RefCell::new(None),
            encoder: RefCell::new(Encoder::new()),
        });
        let flags = if pending {
            EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        if let Err(e) = poller
            .epoll
            .add(socket.stream.as_fd(), EpollEvent::new(flags, slot as u64))
        {
            poller.free_slots.borrow_mut().push(slot);
            return Err(io(e.into()));
        }
        poller.sockets.borrow_mut()[slot] = Some(Rc::clone(&socket));
        let conn = Conn { socket, poller };
        if pending {
            conn.finish_connect().await.map_err(io)?;
        }
        Ok(conn)
    }

    async fn finish_connect(&self) -> std::io::Result<()> {
        let socket = &self.socket;
        let ready = std::future::poll_fn(|cx| {
            if socket.connect_ready.get() {
                return Poll::Ready(());
            }
            *socket.connect_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let timed_out = futures_lite::future::or(
            async {
                ready.await;
                false
            },
            async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                true
            },
        )
        .await;
        socket.connect_waker.borrow_mut().take();
        let outcome = if timed_out {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        } else if let Some(why) = socket.broken.borrow().clone() {
            Err(std::io::Error::other(why))
        } else {
            match socket.stream.take_error() {
                Ok(None) => match socket.stream.peer_addr() {
                    Ok(_) => self.poller.interest(socket, false),
                    Err(e) => Err(e),
                },
                Ok(Some(e)) | Err(e) => Err(e),
            }
        };
        if let Err(e) = &outcome {
            self.poller.fail(socket, &e.to_string());
        }
        outcome
    }

    pub fn peer(&self) -> SocketAddr {
        self.socket.peer
    }

    pub fn is_broken(&self) -> bool {
        self.socket.broken.borrow().is_some()
    }

    /// A buffer holding a copy of `content`, for a byte field of an [`Op`] given to
    /// [`Conn::call`]: taken from the buffers of requests already sent when there is
    /// one, so the hot path does not allocate.
    pub fn bytes(&self, content: &[u8]) -> Vec<u8> {
        let mut buffer = self
            .poller
            .spare_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(content);
        buffer
    }

    /// Keep the byte buffers of an encoded op for [`Conn::bytes`].
    fn recycle(&self, op: Op) {
        let mut spare = self.poller.spare_buffers.borrow_mut();
        let mut keep = |buffer: Vec<u8>| {
            if spare.len() < SPARE_BUFFERS_MAX && buffer.capacity() <= SPARE_BUFFER_BYTES_MAX {
                spare.push(buffer);
            }
        };
        match op {
            Op::Get { key, .. } => keep(key),
            Op::Put { key, value, .. } => {
                keep(key);
                keep(value);
            }
            _ => {}
        }
    }

    /// Send `op` and wait for its reply.
    pub async fn call(&self, op: Op) -> Result<Reply, ClientError> {
        let socket = &self.socket;
        if let Some(why) = socket.broken.borrow().as_ref() {
            return Err(socket.io_error(std::io::ErrorKind::NotConnected, why));
        }
        let (request_id, index) = socket.waiters.borrow_mut().insert();
        let _guard = WaiterGuard {
            socket,
            index,
            request_id,
        };
        let request = Request { request_id, op };
        socket
            .encoder
            .borrow_mut()
            .encode_request(&request, &mut socket.out.borrow_mut());
        self.recycle(request.op);
        if self.poller.parked.get() {
            // Nobody runs a round until a socket is ready: write now.
            self.poller.flush(socket);
        } else if !socket.queued.replace(true) {
            self.poller.dirty.borrow_mut().push(Rc::clone(socket));
        }
        std::future::poll_fn(|cx| {
            let mut waiters = socket.waiters.borrow_mut();
            let entry = &mut waiters.entries[index];
            if let Some(result) = entry.result.take() {
                return Poll::Ready(result);
            }
            if !entry
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                entry.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The poller holds the socket by its slot; release it so the descriptor closes.
        if self.socket.broken.borrow().is_none() {
            let _ = self.poller.epoll.delete(self.socket.stream.as_fd());
            self.poller.release(self.socket.slot);
            *self.socket.broken.borrow_mut() = Some("connection dropped".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Result<Reply, ClientError> {
        Ok(Reply::Done)
    }

    #[test]
    fn request_ids_are_unique_nonzero_and_name_their_entry() {
        let mut waiters = Waiters::default();
        let mut ids = std::collections::HashSet::new();
        for round in 0..3 {
            let calls: Vec<(u64, usize)> = (0..50).map(|_| waiters.insert()).collect();
            for &(id, index) in &calls {
                assert_ne!(id, 0);
                assert_eq!((id & u64::from(u32::MAX)) as usize, index);
                assert!(ids.insert(id), "id {id} reused (round {round})");
            }
            for (id, index) in calls {
                waiters.remove(index, id);
            }
        }
        // Freed entries are reused: the slab is as large as the most calls in flight.
        assert_eq!(waiters.entries.len(), 50);
    }

    #[test]
    fn a_reply_reaches_only_the_call_that_waits_for_its_id() {
        let mut waiters = Waiters::default();
        let (given_up, index) = waiters.insert();
        waiters.remove(index, given_up);
        let (current, reused) = waiters.insert();
        assert_eq!(reused, index, "the freed entry is taken again");
        // The late reply to the call that was given up is ignored, as is an unknown id.
        assert!(waiters.complete(given_up, done()).is_none());
        assert!(waiters.complete(current + 7, done()).is_none());
        assert!(waiters.complete(0, done()).is_none());
        assert!(waiters.entries[reused].result.is_none());
        // The right id completes the call once; a duplicate reply is ignored.
        assert!(waiters.complete(current, done()).is_some());
        assert!(waiters.complete(current, done()).is_none());
        assert!(matches!(
            waiters.entries[reused].result.take(),
            Some(Ok(Reply::Done))
        ));
        // A stale remove (wrong id) frees nothing.
        waiters.remove(reused, given_up);
        assert_eq!(waiters.entries[reused].request_id, current);
        waiters.remove(reused, current);
        assert_eq!(waiters.entries[reused].request_id, 0);
    }

    #[test]
    fn there_is_no_reply_stamp_without_a_round() {
        clear_round_stamp();
        assert_eq!(reply_stamp(), None);
        stamp_round();
        let first = reply_stamp();
        assert!(first.is_some());
        stamp_round();
        assert_eq!(reply_stamp(), first, "one reading per round");
        clear_round_stamp();
        assert_eq!(reply_stamp(), None);
    }
}

//! Async client on glommio, for the load generator: one [`AsyncConnection`] carries
//! many requests in flight; a reader task matches responses to waiters by request id.
//! Single-threaded (`Rc`): use one connection per executor. [`AsyncConnection::put`],
//! `delete` and `get` keep the connection's session timestamp (see the module doc of
//! `client`); [`AsyncConnection::call`] sends ops as given.

use super::{get_reply, write_ack, write_context, ClientError, GetResult};
use crate::protocol::codec::{decode_response, Encoder};
use crate::protocol::frame::next_frame;
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::types::{Consistency, Op, Reply, Request};
use ahash::AHashMap;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

const MAX_RESPONSE_FRAME_BYTES: usize = 64 << 20;

type Waiters = RefCell<AHashMap<u64, LocalSender<Result<Reply, ClientError>>>>;

struct Shared {
    peer: SocketAddr,
    waiters: Waiters,
    /// Set once the connection has failed; every later call fails at once.
    broken: Cell<bool>,
    /// Encoded requests waiting for the writer task.
    out: RefCell<Vec<u8>>,
    wake_writer: LocalSender<()>,
    encoder: RefCell<Encoder>,
}

impl Shared {
    fn fail_all(&self, why: &str) {
        self.broken.set(true);
        for (_, tx) in self.waiters.borrow_mut().drain() {
            let _ = tx.try_send(Err(ClientError::io(
                format!("connection to {}", self.peer),
                std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string()),
            )));
        }
    }
}

/// A pipelined connection to one shard port.
pub struct AsyncConnection {
    shared: Rc<Shared>,
    next_id: Cell<u64>,
    /// The highest HLC timestamp seen in a write ack or read reply (0 = none yet).
    session_timestamp: Cell<u64>,
    /// This connection's HLC: the write timestamps of its puts and deletes.
    clock: RefCell<crate::conflict::HlcClock>,
    _reader: glommio::task::JoinHandle<()>,
    _writer: glommio::task::JoinHandle<()>,
}

impl AsyncConnection {
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            ClientError::io(
                format!("cannot connect to {addr}"),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (wake_tx, wake_rx) = local_channel::new_bounded::<()>(1);
        let shared = Rc::new(Shared {
            peer: addr,
            waiters: RefCell::new(AHashMap::new()),
            broken: Cell::new(false),
            out: RefCell::new(Vec::new()),
            wake_writer: wake_tx,
            encoder: RefCell::new(Encoder::new()),
        });
        let w = shared.clone();
        let writer_task = glommio::spawn_local(async move {
            let mut spare = Vec::new();
            loop {
                std::mem::swap(&mut *w.out.borrow_mut(), &mut spare);
                if spare.is_empty() {
                    if wake_rx.recv().await.is_none() {
                        return;
                    }
                    continue;
                }
                if let Err(e) = writer.write_all(&spare).await {
                    w.fail_all(&e.to_string());
                    return;
                }
                let _ = writer.flush().await;
                spare.clear();
            }
        })
        .detach();
        let r = shared.clone();
        let reader_task = glommio::spawn_local(async move {
            let mut buf = ReadBuffer::with_capacity(64 * 1024);
            loop {
                loop {
                    match next_frame(buf.filled(), MAX_RESPONSE_FRAME_BYTES) {
                        Ok(Some(bounds)) => {
                            let decoded = decode_response(&buf.filled()[bounds.body.clone()]);
                            buf.consume(bounds.total_len);
                            match decoded {
                                Ok(response) => {
                                    let waiter =
                                        r.waiters.borrow_mut().remove(&response.request_id);
                                    if let Some(tx) = waiter {
                                        let _ = tx.try_send(Ok(response.body));
                                    }
                                }
                                Err(e) => {
                                    r.fail_all(&format!("undecodable response: {e}"));
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            r.fail_all(&e.to_string());
                            return;
                        }
                    }
                }
                match reader.read(buf.spare(64 * 1024)).await {
                    Ok(n) if n > 0 => buf.advance(n),
                    Ok(_) => {
                        r.fail_all("closed by server");
                        return;
                    }
                    Err(e) => {
                        r.fail_all(&e.to_string());
                        return;
                    }
                }
            }
        })
        .detach();
        Ok(AsyncConnection {
            shared,
            next_id: Cell::new(1),
            session_timestamp: Cell::new(0),
            clock: RefCell::new(crate::conflict::HlcClock::new()),
            _reader: reader_task,
            _writer: writer_task,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    pub fn is_broken(&self) -> bool {
        self.shared.broken.get()
    }

    /// Send `op` and wait for its reply; many calls may be in flight at once.
    pub async fn call(&self, op: Op) -> Result<Reply, ClientError> {
        if self.shared.broken.get() {
            return Err(ClientError::io(
                format!("connection to {}", self.shared.peer),
                std::io::Error::new(std::io::ErrorKind::NotConnected, "connection is broken"),
            ));
        }
        let request_id = self.next_id.get();
        self.next_id.set(request_id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.shared.waiters.borrow_mut().insert(request_id, tx);
        self.shared.encoder.borrow_mut().encode_request(
            &Request { request_id, op },
            &mut self.shared.out.borrow_mut(),
        );
        let _ = self.shared.wake_writer.try_send(());
        match rx.recv().await {
            Some(result) => result,
            None => Err(ClientError::Protocol("reply channel closed".into())),
        }
    }

    /// The highest HLC timestamp this connection has seen (0 = none); see
    /// `blocking::Client::session_timestamp`.
    pub fn session_timestamp(&self) -> u64 {
        self.session_timestamp.get()
    }

    /// Raise the session timestamp to `timestamp` (never lowers it).
    pub fn observe_timestamp(&self, timestamp: u64) {
        self.session_timestamp
            .set(self.session_timestamp.get().max(timestamp));
    }

    /// Read `key`; an LWW reply's timestamp raises the session timestamp.
    pub async fn get(
        &self,
        key: &[u8],
        consistency: Option<Consistency>,
    ) -> Result<GetResult, ClientError> {
        let op = Op::Get {
            key: key.to_vec(),
            consistency,
        };
        let (result, timestamp) = get_reply(self.call(op).await?)?;
        if let Some(timestamp) = timestamp {
            self.observe_timestamp(timestamp);
        }
        Ok(result)
    }

    /// Store `value` under `key`; without a `context`, the write carries the session
    /// timestamp, and an LWW ack raises it.
    pub async fn put(
        &self,
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
                self.session_timestamp(),
                &mut self.clock.borrow_mut(),
            )),
            sloppy_quorum: None,
        };
        self.on_write_reply(self.call(op).await?)
    }

    /// Delete `key`; the context as for [`AsyncConnection::put`].
    pub async fn delete(
        &self,
        key: &[u8],
        consistency: Option<Consistency>,
        context: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let op = Op::Delete {
            key: key.to_vec(),
            consistency,
            context: Some(write_context(
                context,
                self.session_timestamp(),
                &mut self.clock.borrow_mut(),
            )),
            sloppy_quorum: None,
        };
        self.on_write_reply(self.call(op).await?)
    }

    fn on_write_reply(&self, reply: Reply) -> Result<(), ClientError> {
        if let Some(timestamp) = write_ack(reply)? {
            self.observe_timestamp(timestamp);
        }
        Ok(())
    }
}

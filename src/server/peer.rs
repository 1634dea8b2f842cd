//! The dialling side of a peer connection: connect to a peer's shard port, run the
//! `auth::Initiator` over `PeerHandshake` frames, then either carry peer requests one
//! at a time ([`PeerConnection::call`]) or hand the authenticated stream to the
//! pipelined pool ([`PeerConnection::into_parts`], [`super::peer_pool`]).
//! (The accepting side lives in [`super::connection`].)
//!
//! Must never: send a peer op before the handshake succeeded, wait without a deadline
//! (every connect, handshake and call is bounded by `request_timeout_ms`), or log the
//! secret (only the failure and the peer's address are logged, by the caller).

use crate::auth::{self, Effect, Failure, Handshake, Initiator};
use crate::protocol::codec::{decode_response, Encoder};
use crate::protocol::frame::next_frame;
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::types::{Op, Reply, Request};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest read per syscall on a peer connection.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("peer handshake with {addr} failed: {failure}")]
    Handshake { addr: SocketAddr, failure: Failure },
    #[error("peer {addr} did not answer within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("connection to peer {addr} failed: {message}")]
    Io { addr: SocketAddr, message: String },
    #[error("peer {addr} sent an undecodable frame: {message}")]
    Protocol { addr: SocketAddr, message: String },
    /// Not tried: reconnect backoff after failed connects, or a fault rule's cut.
    #[error("peer {addr} is unreachable: {message}")]
    Unreachable { addr: SocketAddr, message: String },
    /// Not sent: the connection already carries its maximum of calls in flight.
    #[error("connection to peer {addr} has too many calls in flight")]
    Saturated { addr: SocketAddr },
}

impl PeerError {
    /// Whether this failure is an authentication refusal (logged as a WARN, counted).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, PeerError::Handshake { .. })
    }
}

/// Run `fut` for at most `timeout`; None when the deadline passed first.
pub async fn with_timeout<T>(timeout: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await
}

/// An authenticated connection to one shard of a peer node.
pub struct PeerConnection {
    addr: SocketAddr,
    stream: TcpStream,
    encoder: Encoder,
    out: Vec<u8>,
    buf: ReadBuffer,
    next_id: u64,
    max_frame_bytes: usize,
    timeout: Duration,
    peer_node_id: u64,
}

impl PeerConnection {
    /// Connect to `addr` and authenticate as `my_node_id`; the whole exchange is bounded
    /// by `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        auth: &super::PeerAuth,
        my_node_id: u64,
        timeout: Duration,
        max_frame_bytes: usize,
    ) -> Result<PeerConnection, PeerError> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| PeerError::Connect {
                addr,
                message: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = PeerConnection {
            addr,
            stream,
            encoder: Encoder::new(),
            out: Vec::new(),
            buf: ReadBuffer::with_capacity(READ_CHUNK_BYTES),
            next_id: 1,
            max_frame_bytes,
            timeout,
            peer_node_id: 0,
        };
        let nonce = auth::fresh_nonce().map_err(|e| PeerError::Io {
            addr,
            message: e.to_string(),
        })?;
        let (mut initiator, effects) = Initiator::new(
            auth.cluster_name.clone(),
            auth.secret.clone(),
            my_node_id,
            nonce,
        );
        match with_timeout(timeout, conn.handshake(&mut initiator, effects)).await {
            Some(Ok(peer_node_id)) => {
                conn.peer_node_id = peer_node_id;
                Ok(conn)
            }
            Some(Err(e)) => Err(e),
            None => {
                // Ends the machine in Refused; nothing more is sent on a dead connection.
                let _ = initiator.on_timeout();
                Err(PeerError::Handshake {
                    addr,
                    failure: Failure::Timeout,
                })
            }
        }
    }

    /// Drive the initiator until it authenticates or fails.
    async fn handshake(
        &mut self,
        initiator: &mut Initiator,
        mut effects: Vec<Effect>,
    ) -> Result<u64, PeerError> {
        let addr = self.addr;
        loop {
            let mut to_send = None;
            let mut failure = None;
            for effect in effects.drain(..) {
                match effect {
                    Effect::Send(message) => to_send = Some(message),
                    Effect::Authenticated { peer_node_id } => return Ok(peer_node_id),
                    Effect::Close { failure: f } => failure = Some(f),
                }
            }
            if let Some(failure) = failure {
                // Tell the peer why (a Refuse), without waiting long for its answer.
                if let Some(message) = to_send {
                    let op = Op::PeerHandshake {
                        message: message.encode(),
                    };
                    let _ = with_timeout(Duration::from_millis(200), self.call_raw(op)).await;
                }
                return Err(PeerError::Handshake { addr, failure });
            }
            let Some(message) = to_send else {
                return Err(PeerError::Protocol {
                    addr,
                    message: "handshake stalled with nothing to send".into(),
                });
            };
            let reply = self
                .call_raw(Op::PeerHandshake {
                    message: message.encode(),
                })
                .await?;
            effects = match reply {
                Reply::PeerHandshake { message } => initiator.on_bytes(&message),
                Reply::Error(e) => {
                    return Err(PeerError::Protocol {
                        addr,
                        message: format!("peer answered the handshake with an error: {e}"),
                    })
                }
                other => {
                    return Err(PeerError::Protocol {
                        addr,
                        message: format!("unexpected reply to PeerHandshake: {other:?}"),
                    })
                }
            };
        }
    }

    pub fn peer_node_id(&self) -> u64 {
        self.peer_node_id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The authenticated stream and whatever was read past the handshake's last frame,
    /// for a caller that runs its own reader and writer over it.
    pub fn into_parts(self) -> (TcpStream, ReadBuffer) {
        (self.stream, self.buf)
    }

    /// Send one peer request and wait (at most `request_timeout_ms`) for its reply. A
    /// connection whose call failed must be dropped: its stream may be mid-frame.
    pub async fn call(&mut self, op: Op) -> Result<Reply, PeerError> {
        let (addr, timeout) = (self.addr, self.timeout);
        match with_timeout(timeout, self.call_raw(op)).await {
            Some(result) => result,
            None => Err(PeerError::Timeout {
                addr,
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    async fn call_raw(&mut self, op: Op) -> Result<Reply, PeerError> {
        let addr = self.addr;
        let io = |e: std::io::Error| PeerError::Io {
            addr,
            message: e.to_string(),
        };
        let request_id = self.next_id;
        self.next_id += 1;
        self.out.clear();
        self.encoder
            .encode_request(&Request { request_id, op }, &mut self.out);
        self.stream.write_all(&self.out).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        loop {
            let bounds = next_frame(self.buf.filled(), self.max_frame_bytes).map_err(|e| {
                PeerError::Protocol {
                    addr,
                    message: e.to_string(),
                }
            })?;
            if let Some(bounds) = bounds {
                let response = decode_response(&self.buf.filled()[bounds.body.clone()]);
                self.buf.consume(bounds.total_len);
                let response = response.map_err(|e| PeerError::Protocol {
                    addr,
                    message: e.to_string(),
                })?;
                // One call at a time: an answer to an older id is a stale leftover.
                if response.request_id == request_id {
                    return Ok(response.body);
                }
                continue;
            }
            let n = self
                .stream
                .read(self.buf.spare(READ_CHUNK_BYTES))
                .await
                .map_err(io)?;
            if n == 0 {
                return Err(PeerError::Io {
                    addr,
                    message: "closed by peer".into(),
                });
            }
            self.buf.advance(n);
        }
    }
}

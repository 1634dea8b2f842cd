//! One client connection on one shard: split the byte stream into frames, run every
//! request as its own task (pipelining; answers may go out of order), and write the
//! encoded responses back in batches.
//!
//! Must never: trust a frame before the verifier has passed it, buffer without bound
//! (in-flight requests per connection and per shard are capped; beyond them the answer
//! is `Overloaded`), or let one connection's bad input affect another.
//!
//! Backpressure: a connection with `max_inflight_per_connection` requests in flight is
//! not read from until one finishes (TCP flow control slows the client); a shard with
//! `max_inflight_per_shard` in flight answers `Overloaded`.

use super::shard::Shard;
use crate::auth::ClientAuthState;
use crate::protocol::codec::{decode_request, DecodeError};
use crate::protocol::frame::{next_frame, FrameError};
use crate::protocol::read_buffer::ReadBuffer;
use crate::protocol::types::{ErrorReply, Op, Reply, Request, Response};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Largest read per syscall; frames larger than this are assembled over several reads.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Responses waiting to be written, shared between request tasks and the writer task.
struct Outbox {
    buffer: RefCell<Vec<u8>>,
    /// Wakes the writer; capacity 1, so notifications coalesce.
    wake: LocalSender<()>,
    /// Set when the connection must close once the outbox is drained.
    closing: Cell<bool>,
    /// The reader, parked while the connection has its maximum of requests in flight.
    reader_parked: RefCell<Option<std::task::Waker>>,
}

impl Outbox {
    fn push(&self, shard: &Shard, response: &Response) {
        shard
            .encoder
            .borrow_mut()
            .encode_response(response, &mut self.buffer.borrow_mut());
        let _ = self.wake.try_send(());
    }
}

/// Where a connection came from: a client or an (authenticated) peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    Client,
}

/// Serve one connection until the peer closes it, sends garbage, or the node stops.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, _kind: ConnectionKind) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (wake_tx, wake_rx) = local_channel::new_bounded::<()>(1);
    let outbox = Rc::new(Outbox {
        buffer: RefCell::new(Vec::new()),
        wake: wake_tx,
        closing: Cell::new(false),
        reader_parked: RefCell::new(None),
    });
    let inflight = Rc::new(Cell::new(0u32));
    let auth = RefCell::new(ClientAuthState::new(
        shard.config.client_auth_token.as_ref(),
    ));

    // Writer task: drain the outbox whenever woken; stop after a close was requested
    // and everything queued has been written.
    let writer_outbox = outbox.clone();
    let writer_inflight = inflight.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut spare = Vec::new();
        loop {
            {
                let mut buffer = writer_outbox.buffer.borrow_mut();
                std::mem::swap(&mut *buffer, &mut spare);
            }
            if !spare.is_empty() {
                if writer.write_all(&spare).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
                spare.clear();
                continue;
            }
            if writer_outbox.closing.get() && writer_inflight.get() == 0 {
                let _ = writer.close().await;
                return;
            }
            if wake_rx.recv().await.is_none() {
                return;
            }
        }
    });

    let limits = shard.limits;
    let mut buf = ReadBuffer::with_capacity(READ_CHUNK_BYTES);
    'read: loop {
        // Parse every complete frame already buffered.
        loop {
            match next_frame(buf.filled(), limits.max_frame_bytes) {
                Ok(Some(bounds)) => {
                    let decoded = decode_request(&buf.filled()[bounds.body.clone()], &limits);
                    buf.consume(bounds.total_len);
                    match decoded {
                        Ok(request) => {
                            // Per-connection bound: stop reading until a request finishes,
                            // so a deep pipeline is slowed by TCP flow control, not refused.
                            let limit = shard.config.max_inflight_per_connection;
                            std::future::poll_fn(|cx| {
                                if inflight.get() < limit {
                                    std::task::Poll::Ready(())
                                } else {
                                    *outbox.reader_parked.borrow_mut() = Some(cx.waker().clone());
                                    std::task::Poll::Pending
                                }
                            })
                            .await;
                            dispatch(&shard, &outbox, &inflight, &auth, request)
                        }
                        Err(DecodeError::Invalid { request_id, reason }) => {
                            shard
                                .metrics
                                .bad_requests
                                .set(shard.metrics.bad_requests.get() + 1);
                            outbox.push(
                                &shard,
                                &error(request_id, ErrorReply::BadRequest { message: reason }),
                            );
                        }
                        Err(DecodeError::Malformed { reason }) => {
                            tracing::debug!(%peer, %reason, "malformed frame; closing connection");
                            shard
                                .metrics
                                .bad_requests
                                .set(shard.metrics.bad_requests.get() + 1);
                            outbox.push(
                                &shard,
                                &error(0, ErrorReply::BadRequest { message: reason }),
                            );
                            break 'read;
                        }
                    }
                }
                Ok(None) => break,
                Err(err @ FrameError::TooLarge { .. }) | Err(err @ FrameError::Empty) => {
                    tracing::debug!(%peer, %err, "bad frame header; closing connection");
                    shard
                        .metrics
                        .bad_requests
                        .set(shard.metrics.bad_requests.get() + 1);
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
            }
        }
        let spare = buf.spare(READ_CHUNK_BYTES);
        let read = futures_lite::future::or(async { Some(reader.read(spare).await) }, async {
            shard.stopping.wait().await;
            None
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => buf.advance(n),
            _ => break,
        }
    }
    outbox.closing.set(true);
    let _ = outbox.wake.try_send(());
    // In-flight requests finish and their answers are written before the writer stops.
    writer_task.await;
}

fn error(request_id: u64, err: ErrorReply) -> Response {
    Response {
        request_id,
        body: Reply::Error(err),
    }
}

/// Admit a request (or answer `Overloaded`) and run it as its own task.
fn dispatch(
    shard: &Rc<Shard>,
    outbox: &Rc<Outbox>,
    inflight: &Rc<Cell<u32>>,
    auth: &RefCell<ClientAuthState>,
    request: Request,
) {
    let Request { request_id, op } = request;
    // Client authentication runs in arrival order, before anything else: with
    // `client_auth_token` set, the first request must be a correct `Auth`.
    let is_auth = matches!(op, Op::Auth { .. });
    if let Err(refusal) = auth.borrow_mut().allows(is_auth) {
        shard
            .metrics
            .unauthorized
            .set(shard.metrics.unauthorized.get() + 1);
        outbox.push(shard, &error(request_id, refusal.to_error_reply()));
        return;
    }
    if let Op::Auth { token } = &op {
        let body = match auth
            .borrow_mut()
            .on_auth(shard.config.client_auth_token.as_ref(), token)
        {
            Ok(()) => Reply::Done,
            Err(refusal) => {
                tracing::info!(shard = shard.id, %refusal, "client authentication refused");
                shard
                    .metrics
                    .unauthorized
                    .set(shard.metrics.unauthorized.get() + 1);
                Reply::Error(refusal.to_error_reply())
            }
        };
        outbox.push(shard, &Response { request_id, body });
        return;
    }
    if op.is_peer_op() {
        // Peer operations are accepted only on authenticated peer connections.
        shard
            .metrics
            .refused_peer_ops
            .set(shard.metrics.refused_peer_ops.get() + 1);
        outbox.push(shard, &error(request_id, ErrorReply::Unauthorized));
        return;
    }
    if shard.inflight.get() >= shard.config.max_inflight_per_shard {
        shard
            .metrics
            .overloaded
            .set(shard.metrics.overloaded.get() + 1);
        outbox.push(shard, &error(request_id, ErrorReply::Overloaded));
        return;
    }
    inflight.set(inflight.get() + 1);
    shard.inflight.set(shard.inflight.get() + 1);
    let shard = shard.clone();
    let outbox = outbox.clone();
    let inflight = inflight.clone();
    let task_queue = shard.foreground_queue;
    let spawned = glommio::spawn_local_into(
        async move {
            let body = super::router::execute(&shard, op).await;
            outbox.push(&shard, &Response { request_id, body });
            inflight.set(inflight.get() - 1);
            shard.inflight.set(shard.inflight.get() - 1);
            if inflight.get() == 0 {
                let _ = outbox.wake.try_send(());
            }
            if let Some(reader) = outbox.reader_parked.borrow_mut().take() {
                reader.wake();
            }
            shard.on_request_done();
        },
        task_queue,
    );
    match spawned {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(error = %e, "cannot spawn request task"),
    }
}

//! One dbeel request over its own TCP connection, on the current glommio executor.
//!
//! dbeel 0.1.0 serves exactly one request per connection and then closes it, so every
//! call here connects, writes the framed request, reads the length-prefixed reply and
//! drops the stream. The connect is part of every request's latency by design. This
//! module never interprets a reply beyond `protocol::decode_reply`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::protocol::{decode_reply, Reply};

/// A reply larger than this is taken as a broken stream rather than allocated.
const MAX_REPLY_BYTES: usize = 16 << 20;

/// Why a call produced no reply.
#[derive(Debug)]
pub enum CallError {
    /// Connect, write or read failed (refused, reset, timed out, ...).
    Io(std::io::ErrorKind, String),
    /// Bytes arrived but were not a dbeel reply.
    Decode(String),
}

impl CallError {
    /// A short stable name to count failures by.
    pub fn name(&self) -> String {
        match self {
            CallError::Io(kind, _) => format!("io_{kind:?}"),
            CallError::Decode(_) => "bad_reply".to_string(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(kind, msg) => write!(f, "{kind:?}: {msg}"),
            CallError::Decode(msg) => write!(f, "{msg}"),
        }
    }
}

fn io(e: impl std::fmt::Display, kind: std::io::ErrorKind) -> CallError {
    CallError::Io(kind, e.to_string())
}

fn glommio_io(e: glommio::GlommioError<()>) -> CallError {
    let e: std::io::Error = e.into();
    io(&e, e.kind())
}

/// Sends `request` (already framed) to `addr` and returns the decoded reply.
/// `timeout` bounds the connect and each read and write.
pub async fn call(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Reply, CallError> {
    let mut stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(glommio_io)?;
    stream.set_read_timeout(Some(timeout)).map_err(glommio_io)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(glommio_io)?;
    stream
        .write_all(request)
        .await
        .map_err(|e| io(&e, e.kind()))?;
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| io(&e, e.kind()))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REPLY_BYTES {
        return Err(CallError::Decode(format!("reply length {len} bytes")));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| io(&e, e.kind()))?;
    decode_reply(&body).map_err(|e| CallError::Decode(e.to_string()))
}

//! Session timestamps: how a client carries LWW causality from one coordinator to the
//! next (docs/design.md §3.6).
//!
//! In LWW mode the coordinator stamps each write with its own HLC. A coordinator whose
//! clock is behind may not yet have seen the timestamp of the write the client made just
//! before through another node (that node's `ReplicaWrite` can still be in flight), and
//! would stamp the new write lower: the later write would lose. So the timestamp travels
//! with the client: acks of Put/Delete carry the written version's timestamp
//! (`Reply::Written`), Get replies carry the value's timestamp, and the client sends the
//! highest one it has seen as the `context` of its next Put/Delete. The coordinator
//! `observe`s it (refusing one too far ahead, as for any received timestamp) before it
//! stamps, so the new version is strictly newer than everything the client saw.
//!
//! This module owns only the byte layout of that context ([`SessionTimestamp`]); it
//! never decides anything. The `context` field is shared with causal mode, whose
//! contexts start with their own version byte (1), never with this magic: a causal-mode
//! server reads a session timestamp as the empty causal context (it says nothing about
//! siblings), an LWW server ignores any other context.

/// The four bytes a session timestamp context starts with ("RingKv Session Timestamp").
pub const MAGIC: [u8; 4] = *b"RKST";
/// Layout version; a decoder refuses any other.
pub const FORMAT_VERSION: u8 = 1;
/// Length of an encoded session timestamp.
pub const ENCODED_BYTES: usize = MAGIC.len() + 1 + 8;

/// The highest HLC timestamp (the `u64` of `conflict::Hlc`) a client has seen, sent as
/// the `context` of a Put or Delete in LWW mode. `0` means "none seen yet": it still asks
/// the server to answer with the written version's timestamp.
///
/// Layout (13 bytes):
///
/// ```text
/// offset  size  field
/// 0       4     magic "RKST"
/// 4       1     format version = 1
/// 5       8     HLC timestamp, u64 little-endian (0 = none yet)
/// ```
///
/// Bytes that start with the magic but are not exactly this layout are broken, and
/// refused by [`SessionTimestamp::decode`] with a clear error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionTimestamp(pub u64);

/// The four bytes a write timestamp context starts with ("RingKv Write Timestamp").
pub const WRITE_MAGIC: [u8; 4] = *b"RKWT";

/// The exact HLC timestamp a client gives its LWW put or delete (a client-side
/// timestamp, as Cassandra's drivers assign them), sent as the `context`. The
/// coordinator stamps the write with exactly this timestamp (after refusing one further
/// ahead of its clock than `max_clock_skew_ms`) and observes it, so its own later stamps
/// come after. A client draws it from its own HLC after observing every timestamp it
/// has seen, so it is newer than anything the client read or wrote before, like a
/// [`SessionTimestamp`].
///
/// What it buys: a request sent twice (a retry at another coordinator after a
/// connection failure, or an original delayed in a stalled node that executes it
/// later) writes the *same* version twice, which merges to one. With a session
/// timestamp each coordinator would stamp its own, and a late original could overwrite
/// newer writes.
///
/// Layout (13 bytes), as [`SessionTimestamp`]'s with its own magic:
///
/// ```text
/// offset  size  field
/// 0       4     magic "RKWT"
/// 4       1     format version = 1
/// 5       8     HLC timestamp, u64 little-endian (never 0)
/// ```
///
/// A causal-mode server reads it as the empty causal context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteTimestamp(pub u64);

impl WriteTimestamp {
    pub fn encode(self) -> Vec<u8> {
        encode_tagged(WRITE_MAGIC, self.0)
    }

    /// `None` when `context` is not a write timestamp; an error when it starts with the
    /// magic but is broken.
    pub fn decode(context: &[u8]) -> Option<Result<WriteTimestamp, SessionDecodeError>> {
        decode_tagged(WRITE_MAGIC, context).map(|r| r.map(WriteTimestamp))
    }
}

fn encode_tagged(magic: [u8; 4], timestamp: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODED_BYTES);
    out.extend_from_slice(&magic);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&timestamp.to_le_bytes());
    assert_eq!(out.len(), ENCODED_BYTES);
    out
}

fn decode_tagged(magic: [u8; 4], context: &[u8]) -> Option<Result<u64, SessionDecodeError>> {
    if !context.starts_with(&magic) {
        return None;
    }
    if context.len() != ENCODED_BYTES {
        return Some(Err(SessionDecodeError::Length {
            len_bytes: context.len(),
        }));
    }
    let version = context[magic.len()];
    if version != FORMAT_VERSION {
        return Some(Err(SessionDecodeError::UnsupportedFormatVersion(version)));
    }
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&context[magic.len() + 1..]);
    Some(Ok(u64::from_le_bytes(timestamp)))
}

/// Why bytes that claim to be a session timestamp are not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionDecodeError {
    #[error("session timestamp context of {len_bytes} bytes (expected {ENCODED_BYTES})")]
    Length { len_bytes: usize },
    #[error("session timestamp context format version {0} is not supported")]
    UnsupportedFormatVersion(u8),
}

impl SessionTimestamp {
    pub fn encode(self) -> Vec<u8> {
        encode_tagged(MAGIC, self.0)
    }

    /// Whether `context` claims to be a session timestamp (starts with the magic).
    pub fn is_session_context(context: &[u8]) -> bool {
        context.starts_with(&MAGIC)
    }

    /// `None` when `context` is not a session timestamp at all (another kind of
    /// context); an error when it starts with the magic but is broken.
    pub fn decode(context: &[u8]) -> Option<Result<SessionTimestamp, SessionDecodeError>> {
        decode_tagged(MAGIC, context).map(|r| r.map(SessionTimestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_layout_and_round_trip() {
        let bytes = SessionTimestamp(0x0102_0304_0506_0708).encode();
        assert_eq!(
            bytes,
            [b'R', b'K', b'S', b'T', 1, 8, 7, 6, 5, 4, 3, 2, 1].to_vec()
        );
        assert_eq!(
            SessionTimestamp::decode(&bytes),
            Some(Ok(SessionTimestamp(0x0102_0304_0506_0708)))
        );
        assert_eq!(
            SessionTimestamp::decode(&SessionTimestamp(0).encode()),
            Some(Ok(SessionTimestamp(0)))
        );
    }

    #[test]
    fn write_timestamps_have_their_own_magic() {
        let bytes = WriteTimestamp(0x0102_0304_0506_0708).encode();
        assert_eq!(
            bytes,
            [b'R', b'K', b'W', b'T', 1, 8, 7, 6, 5, 4, 3, 2, 1].to_vec()
        );
        assert_eq!(
            WriteTimestamp::decode(&bytes),
            Some(Ok(WriteTimestamp(0x0102_0304_0506_0708)))
        );
        assert_eq!(SessionTimestamp::decode(&bytes), None);
        assert_eq!(WriteTimestamp::decode(&SessionTimestamp(5).encode()), None);
        assert_eq!(
            WriteTimestamp::decode(&bytes[..9]),
            Some(Err(SessionDecodeError::Length { len_bytes: 9 }))
        );
    }

    #[test]
    fn other_contexts_are_not_sessions_and_broken_ones_are_refused() {
        // A causal context starts with its version byte 1.
        assert_eq!(SessionTimestamp::decode(&[1, 0, 0]), None);
        assert_eq!(SessionTimestamp::decode(&[]), None);
        let bytes = SessionTimestamp(5).encode();
        assert_eq!(
            SessionTimestamp::decode(&bytes[..12]),
            Some(Err(SessionDecodeError::Length { len_bytes: 12 }))
        );
        let mut future = bytes.clone();
        future[4] = 2;
        assert_eq!(
            SessionTimestamp::decode(&future),
            Some(Err(SessionDecodeError::UnsupportedFormatVersion(2)))
        );
    }
}

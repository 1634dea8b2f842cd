//! Splitting a byte stream into frames, sans-I/O. The connection driver appends what it
//! reads to a buffer and asks [`next_frame`] where the first whole frame is; this module
//! never reads a socket, never allocates and never looks inside a frame body (that is
//! the codec's job, behind the FlatBuffers verifier).
//!
//! # Frame layout
//!
//! ```text
//! offset  size  field
//! 0       4     body_len: u32, little-endian; counts the bytes AFTER these 4
//! 4       L     body: one standard (not size-prefixed) FlatBuffers buffer, root `Frame`,
//!               file identifier "RKV1" at body[4..8] (magic + major version)
//! ```
//!
//! The length is written by our encoder, not by FlatBuffers' `finish_size_prefixed`, so
//! that the body alone is a well-aligned buffer that the verifier accepts without the
//! prefix. `1 ≤ body_len ≤ max_frame_bytes`; a larger length is rejected as soon as the
//! 4 prefix bytes are in, before any of the body is buffered.

use std::ops::Range;

/// Bytes of the little-endian length prefix in front of every frame body.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Where the first whole frame of a buffer lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBounds {
    /// The FlatBuffers body (without the length prefix), to hand to the codec.
    pub body: Range<usize>,
    /// Prefix + body: how many bytes to consume from the front of the buffer.
    pub total_len: usize,
}

/// A length prefix that no valid frame can have. The stream cannot be resynchronised
/// after it, so the connection must be answered `BadRequest` (request id 0) and closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame with an empty body")]
    Empty,
}

/// Reads the length prefix at the front of `buf`, if all four bytes are there, and
/// checks it against the limits.
#[inline]
fn body_len(buf: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    // u32 → usize is lossless on every target we build for (64-bit Linux).
    let len = u32::from_le_bytes(*prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(Some(len))
}

/// Finds the first whole frame at the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. A length prefix of 0 or above
/// `max_frame_bytes` is an error as soon as the prefix is complete, whether or not the
/// body has arrived, so a hostile 4 GiB prefix never makes the caller buffer or allocate.
#[inline]
pub fn next_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<FrameBounds>, FrameError> {
    let Some(len) = body_len(buf, max_frame_bytes)? else {
        return Ok(None);
    };
    let total_len = LENGTH_PREFIX_BYTES + len;
    if buf.len() < total_len {
        return Ok(None);
    }
    Ok(Some(FrameBounds {
        body: LENGTH_PREFIX_BYTES..total_len,
        total_len,
    }))
}

/// How many bytes the buffer must hold before [`next_frame`] can return the first
/// frame: the whole frame once the prefix is known, else the prefix. Lets a reader
/// reserve a large body's space once instead of growing the buffer read by read.
#[inline]
pub fn bytes_needed(buf: &[u8], max_frame_bytes: usize) -> Result<usize, FrameError> {
    Ok(match body_len(buf, max_frame_bytes)? {
        Some(len) => LENGTH_PREFIX_BYTES + len,
        None => LENGTH_PREFIX_BYTES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn needs_the_whole_prefix_then_the_whole_body() {
        let bytes = frame(b"abcdef");
        for cut in 0..bytes.len() {
            assert_eq!(next_frame(&bytes[..cut], 100), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            next_frame(&bytes, 100),
            Ok(Some(FrameBounds {
                body: 4..10,
                total_len: 10
            }))
        );
    }

    #[test]
    fn returns_only_the_first_of_several_frames() {
        let mut bytes = frame(b"one");
        bytes.extend_from_slice(&frame(b"second"));
        let first = next_frame(&bytes, 100).unwrap().unwrap();
        assert_eq!(&bytes[first.body.clone()], b"one");
        let rest = &bytes[first.total_len..];
        let second = next_frame(rest, 100).unwrap().unwrap();
        assert_eq!(&rest[second.body], b"second");
        assert_eq!(second.total_len, rest.len());
    }

    #[test]
    fn oversized_prefix_fails_before_the_body_arrives() {
        let prefix = u32::MAX.to_le_bytes();
        assert_eq!(
            next_frame(&prefix, 17 << 20),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 17 << 20
            })
        );
        assert_eq!(
            bytes_needed(&prefix, 17 << 20),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 17 << 20
            })
        );
        // Exactly at the limit is fine.
        let at_limit = 8u32.to_le_bytes();
        assert_eq!(next_frame(&at_limit, 8), Ok(None));
        assert_eq!(
            next_frame(&9u32.to_le_bytes(), 8),
            Err(FrameError::TooLarge { len: 9, max: 8 })
        );
    }

    #[test]
    fn zero_length_frame_is_an_error() {
        assert_eq!(next_frame(&[0, 0, 0, 0], 100), Err(FrameError::Empty));
        assert_eq!(next_frame(&[0, 0, 0, 0, 1, 2], 100), Err(FrameError::Empty));
    }

    #[test]
    fn bytes_needed_tracks_prefix_then_frame() {
        assert_eq!(bytes_needed(&[], 100), Ok(4));
        assert_eq!(bytes_needed(&[6, 0], 100), Ok(4));
        assert_eq!(bytes_needed(&[6, 0, 0, 0], 100), Ok(10));
        assert_eq!(bytes_needed(&frame(b"abcdef"), 100), Ok(10));
    }
}

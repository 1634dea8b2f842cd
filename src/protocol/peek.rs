//! Reading a frame's request id without verifying or decoding the frame: what a shard
//! needs to answer a request it sheds (`Overloaded`) at a cost far below a decode.
//!
//! A frame body is a FlatBuffers `Frame` table whose field 0 is `request_id: ulong`
//! (`schema/ringkv.fbs`). [`request_id`] follows the root offset and the table's vtable
//! with every offset checked against the body, so any bytes give an answer or `None`,
//! never a panic or a read outside the slice. It does not prove the frame is valid: a
//! request whose id it reads may still fail its decode. It is only ever used to address
//! a refusal.

use super::wire::FRAME_IDENTIFIER;

/// The `request_id` of the frame `body` (without its length prefix); `0` when the frame
/// leaves the field at its default, `None` when the bytes cannot be a frame.
pub fn request_id(body: &[u8]) -> Option<u64> {
    if body.get(4..8)? != FRAME_IDENTIFIER.as_bytes() {
        return None;
    }
    let table = usize::try_from(u32_at(body, 0)?).ok()?;
    let back = i64::from(i32::from_le_bytes(array(body, table)?));
    let vtable = usize::try_from(i64::try_from(table).ok()?.checked_sub(back)?).ok()?;
    let vtable_len = usize::from(u16_at(body, vtable)?);
    // Field 0's slot follows the vtable's two u16 sizes.
    const SLOT: usize = 4;
    if vtable_len < SLOT + 2 {
        return Some(0);
    }
    let field = usize::from(u16_at(body, vtable.checked_add(SLOT)?)?);
    if field == 0 {
        return Some(0);
    }
    Some(u64::from_le_bytes(array(body, table.checked_add(field)?)?))
}

fn array<const N: usize>(body: &[u8], at: usize) -> Option<[u8; N]> {
    body.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u32_at(body: &[u8], at: usize) -> Option<u32> {
    array(body, at).map(u32::from_le_bytes)
}

fn u16_at(body: &[u8], at: usize) -> Option<u16> {
    array(body, at).map(u16::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::LENGTH_PREFIX_BYTES;
    use crate::protocol::types::{Op, Request};
    use crate::protocol::{decode_request, Encoder, Limits};
    use proptest::prelude::*;

    fn encoded(request: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::default().encode_request(request, &mut out);
        out.split_off(LENGTH_PREFIX_BYTES)
    }

    #[test]
    fn reads_the_id_of_encoded_requests_including_zero() {
        for id in [0, 1, 7, u64::MAX] {
            let body = encoded(&Request {
                request_id: id,
                op: Op::Ping,
            });
            assert_eq!(request_id(&body), Some(id));
        }
    }

    #[test]
    fn foreign_or_short_bytes_have_no_id() {
        assert_eq!(request_id(b""), None);
        assert_eq!(request_id(b"\x08\x00\x00\x00HTTP/1.1"), None);
        assert_eq!(request_id(b"\xff\xff\xff\xffRKV1"), None);
    }

    proptest! {
        #[test]
        fn agrees_with_the_decoder(
            request_id in any::<u64>(),
            key in prop::collection::vec(any::<u8>(), 1..64),
            value in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let body = encoded(&Request {
                request_id,
                op: Op::Put { key, value, context: None, consistency: None, sloppy_quorum: None },
            });
            prop_assert_eq!(super::request_id(&body), Some(request_id));
        }

        #[test]
        fn never_panics_and_matches_any_decodable_frame(
            mut body in prop::collection::vec(any::<u8>(), 0..128),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            id in any::<u64>(),
        ) {
            // Half the cases start from a real frame with a few bytes changed.
            if id % 2 == 0 {
                body = encoded(&Request { request_id: id, op: Op::Get { key: b"k".to_vec(), consistency: None } });
                for (at, byte) in flips {
                    let n = body.len();
                    body[at % n] = byte;
                }
            }
            let peeked = super::request_id(&body);
            if let Ok(request) = decode_request(&body, &Limits::default()) {
                prop_assert_eq!(peeked, Some(request.request_id));
            }
        }
    }
}

//! Property tests of the wire codec: every request and response round-trips through
//! encode → split → decode; arbitrary and mutated bytes never panic the decoder; limits
//! produce `Invalid` errors that carry the request id.
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use ringkv::protocol::frame::{next_frame, FrameError, LENGTH_PREFIX_BYTES};
use ringkv::protocol::types::{
    Consistency, ErrorReply, NodeInfo, NodeStatus, Op, Reply, Request, Response, Topology,
};
use ringkv::protocol::{decode_request, decode_response, DecodeError, Encoder, Limits};

fn bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max_len)
}

fn consistency() -> impl Strategy<Value = Option<Consistency>> {
    prop_oneof![
        Just(None),
        Just(Some(Consistency::One)),
        Just(Some(Consistency::Two)),
        Just(Some(Consistency::Quorum)),
        Just(Some(Consistency::All)),
        (1u8..=255).prop_map(|n| Some(Consistency::Count(n))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (bytes(64), consistency()).prop_map(|(key, consistency)| Op::Get { key, consistency }),
        (
            bytes(64),
            bytes(512),
            consistency(),
            proptest::option::of(bytes(64))
        )
            .prop_map(|(key, value, consistency, context)| Op::Put {
                key,
                value,
                consistency,
                context
            }),
        (bytes(64), consistency(), proptest::option::of(bytes(64))).prop_map(
            |(key, consistency, context)| Op::Delete {
                key,
                consistency,
                context
            }
        ),
        Just(Op::Ping),
        Just(Op::Topology),
        (bytes(64), bytes(256)).prop_map(|(key, state)| Op::ReplicaWrite { key, state }),
        bytes(64).prop_map(|key| Op::ReplicaRead { key }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), op()).prop_map(|(request_id, op)| Request { request_id, op })
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        Just(NodeStatus::Joining),
        Just(NodeStatus::Normal),
        Just(NodeStatus::Leaving),
        Just(NodeStatus::Left),
    ]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        any::<u64>(),
        "[a-z0-9.:é]{0,24}",
        any::<u32>(),
        any::<u16>(),
        node_status(),
        any::<bool>(),
        vec(any::<u64>(), 0..8),
        any::<u64>(),
    )
        .prop_map(
            |(node_id, address, shard_count, shard_port_base, status, up, tokens, load_bytes)| {
                NodeInfo {
                    node_id,
                    address,
                    shard_count,
                    shard_port_base,
                    status,
                    up,
                    tokens,
                    load_bytes,
                }
            },
        )
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    prop_oneof![
        ".{0,40}".prop_map(|message| ErrorReply::BadRequest { message }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(required, alive)| ErrorReply::Unavailable { required, alive }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(required, acked)| ErrorReply::Timeout { required, acked }),
        Just(ErrorReply::Overloaded),
        Just(ErrorReply::Unauthorized),
        ".{0,40}".prop_map(|message| ErrorReply::Internal { message }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (vec(bytes(128), 0..4), proptest::option::of(bytes(64)))
            .prop_map(|(values, context)| Reply::Value { values, context }),
        Just(Reply::Done),
        Just(Reply::Pong),
        (vec(node_info(), 0..5), any::<u32>()).prop_map(|(nodes, replication_factor)| {
            Reply::Topology(Topology {
                nodes,
                replication_factor,
            })
        }),
        proptest::option::of(bytes(256)).prop_map(|state| Reply::ReplicaState { state }),
        error_reply().prop_map(Reply::Error),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    (any::<u64>(), reply()).prop_map(|(request_id, body)| Response { request_id, body })
}

/// Splits a stream holding whole frames into their bodies, asserting it splits exactly.
fn split_all(stream: &[u8], max_frame_bytes: usize) -> Vec<&[u8]> {
    let mut bodies = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let bounds = next_frame(rest, max_frame_bytes)
            .unwrap()
            .expect("stream ends inside a frame");
        bodies.push(&rest[bounds.body.clone()]);
        rest = &rest[bounds.total_len..];
    }
    bodies
}

/// A mutation of a valid frame body.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: prop::sample::Index, bit: u8 },
    SetByte { at: prop::sample::Index, byte: u8 },
    Truncate { at: prop::sample::Index },
    Append { junk: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::Truncate { at }),
        bytes(16).prop_map(|junk| Mutation::Append { junk }),
    ]
}

fn mutate(body: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        match mutation {
            Mutation::FlipBit { at, bit } if !body.is_empty() => {
                let i = at.index(body.len());
                body[i] ^= 1 << bit;
            }
            Mutation::SetByte { at, byte } if !body.is_empty() => {
                let i = at.index(body.len());
                body[i] = *byte;
            }
            Mutation::Truncate { at } => {
                let len = at.index(body.len() + 1);
                body.truncate(len);
            }
            Mutation::Append { junk } => body.extend_from_slice(junk),
            _ => {}
        }
    }
}

/// Whatever a decoder accepted must survive its own re-encoding unchanged, so an
/// accepted mutant is a real value and not a half-read one.
fn assert_request_stable(request: &Request, limits: &Limits) {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    encoder.encode_request(request, &mut out);
    let again = decode_request(&out[LENGTH_PREFIX_BYTES..], limits).unwrap();
    assert_eq!(&again, request);
}

fn assert_response_stable(response: &Response) {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    encoder.encode_response(response, &mut out);
    let again = decode_response(&out[LENGTH_PREFIX_BYTES..]).unwrap();
    assert_eq!(&again, response);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A pipelined stream of requests through one reused encoder splits back into the
    /// same requests in order.
    #[test]
    fn requests_round_trip(requests in vec(request(), 1..8)) {
        let limits = Limits::default();
        let mut encoder = Encoder::new();
        let mut stream = Vec::new();
        for request in &requests {
            encoder.encode_request(request, &mut stream);
        }
        let bodies = split_all(&stream, limits.max_frame_bytes);
        prop_assert_eq!(bodies.len(), requests.len());
        for (body, request) in bodies.iter().zip(&requests) {
            prop_assert_eq!(&decode_request(body, &limits).unwrap(), request);
            // A request is never mistaken for a response.
            let err = decode_response(body).unwrap_err();
            prop_assert_eq!(err.request_id(), request.request_id);
        }
    }

    #[test]
    fn responses_round_trip(responses in vec(response(), 1..8)) {
        let limits = Limits::default();
        let mut encoder = Encoder::new();
        let mut stream = Vec::new();
        for response in &responses {
            encoder.encode_response(response, &mut stream);
        }
        let bodies = split_all(&stream, limits.max_frame_bytes);
        prop_assert_eq!(bodies.len(), responses.len());
        for (body, response) in bodies.iter().zip(&responses) {
            prop_assert_eq!(&decode_response(body).unwrap(), response);
            let err = decode_request(body, &limits).unwrap_err();
            prop_assert!(matches!(err, DecodeError::Invalid { .. }), "{:?}", err);
            prop_assert_eq!(err.request_id(), response.request_id);
        }
    }

    #[test]
    fn random_bytes_never_panic(body in bytes(256)) {
        let limits = Limits::default();
        if let Ok(request) = decode_request(&body, &limits) {
            assert_request_stable(&request, &limits);
        }
        if let Ok(response) = decode_response(&body) {
            assert_response_stable(&response);
        }
        match next_frame(&body, 64) {
            Ok(Some(bounds)) => prop_assert!(bounds.total_len <= body.len()),
            Ok(None) | Err(FrameError::TooLarge { .. } | FrameError::Empty) => {}
        }
    }

    /// Random bytes behind a valid magic, so the verifier itself is what gets fuzzed.
    #[test]
    fn random_bodies_with_magic_never_panic(root_offset in 0u32..256, tail in bytes(256)) {
        let mut body = root_offset.to_le_bytes().to_vec();
        body.extend_from_slice(ringkv::protocol::wire::FRAME_IDENTIFIER.as_bytes());
        body.extend_from_slice(&tail);
        let limits = Limits::default();
        if let Ok(request) = decode_request(&body, &limits) {
            assert_request_stable(&request, &limits);
        }
        if let Ok(response) = decode_response(&body) {
            assert_response_stable(&response);
        }
    }

    #[test]
    fn mutated_requests_never_panic(
        request in request(),
        mutations in vec(mutation(), 1..4),
    ) {
        let limits = Limits::default();
        let mut out = Vec::new();
        Encoder::new().encode_request(&request, &mut out);
        let mut body = out.split_off(LENGTH_PREFIX_BYTES);
        mutate(&mut body, &mutations);
        match decode_request(&body, &limits) {
            Ok(decoded) => assert_request_stable(&decoded, &limits),
            Err(DecodeError::Malformed { .. }) => {}
            Err(DecodeError::Invalid { .. }) => {}
        }
    }

    #[test]
    fn mutated_responses_never_panic(
        response in response(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut out = Vec::new();
        Encoder::new().encode_response(&response, &mut out);
        let mut body = out.split_off(LENGTH_PREFIX_BYTES);
        mutate(&mut body, &mutations);
        if let Ok(decoded) = decode_response(&body) {
            assert_response_stable(&decoded);
        }
    }

    /// Mutations of the whole stream (prefix included) never make the splitter return
    /// bounds outside the buffer or accept an over-limit length.
    #[test]
    fn mutated_streams_split_safely(
        requests in vec(request(), 1..4),
        mutations in vec(mutation(), 1..4),
    ) {
        let max_frame_bytes = 4096;
        let mut encoder = Encoder::new();
        let mut stream = Vec::new();
        for request in &requests {
            encoder.encode_request(request, &mut stream);
        }
        mutate(&mut stream, &mutations);
        let limits = Limits { max_frame_bytes, ..Limits::default() };
        let mut rest = &stream[..];
        loop {
            match next_frame(rest, max_frame_bytes) {
                Ok(Some(bounds)) => {
                    prop_assert!(bounds.total_len <= rest.len());
                    prop_assert!(bounds.body.len() <= max_frame_bytes && !bounds.body.is_empty());
                    let _ = decode_request(&rest[bounds.body.clone()], &limits);
                    rest = &rest[bounds.total_len..];
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    prop_assert!(len > max);
                    break;
                }
                Err(FrameError::Empty) => break,
            }
        }
    }

    #[test]
    fn over_limit_keys_are_invalid_with_their_request_id(
        request_id: u64,
        key in vec(any::<u8>(), 17..64),
        which in 0usize..5,
    ) {
        let limits = Limits { max_key_bytes: 16, max_value_bytes: 32, max_frame_bytes: 4096 };
        let op = match which {
            0 => Op::Get { key, consistency: None },
            1 => Op::Put { key, value: vec![1], consistency: None, context: None },
            2 => Op::Delete { key, consistency: None, context: None },
            3 => Op::ReplicaWrite { key, state: vec![1] },
            _ => Op::ReplicaRead { key },
        };
        let mut out = Vec::new();
        Encoder::new().encode_request(&Request { request_id, op }, &mut out);
        let err = decode_request(&out[LENGTH_PREFIX_BYTES..], &limits).unwrap_err();
        prop_assert!(
            matches!(&err, DecodeError::Invalid { request_id: id, reason } if *id == request_id && reason.contains("key")),
            "{err:?}"
        );
        prop_assert!(!err.closes_connection());
    }

    #[test]
    fn over_limit_values_are_invalid_with_their_request_id(
        request_id: u64,
        value in vec(any::<u8>(), 33..256),
        key in bytes(16),
    ) {
        let limits = Limits { max_key_bytes: 16, max_value_bytes: 32, max_frame_bytes: 4096 };
        let op = Op::Put { key: key.clone(), value, consistency: None, context: None };
        let mut out = Vec::new();
        Encoder::new().encode_request(&Request { request_id, op }, &mut out);
        let err = decode_request(&out[LENGTH_PREFIX_BYTES..], &limits).unwrap_err();
        prop_assert!(
            matches!(&err, DecodeError::Invalid { request_id: id, reason } if *id == request_id && reason.contains("value")),
            "{err:?}"
        );
        let response = err.to_response();
        prop_assert_eq!(response.request_id, request_id);
        prop_assert!(matches!(response.body, Reply::Error(ErrorReply::BadRequest { .. })), "{:?}", response);

        // At the limits exactly, the same request is accepted.
        let at_limit = Request {
            request_id,
            op: Op::Put { key, value: vec![7; 32], consistency: None, context: None },
        };
        let mut out = Vec::new();
        Encoder::new().encode_request(&at_limit, &mut out);
        prop_assert_eq!(decode_request(&out[LENGTH_PREFIX_BYTES..], &limits).unwrap(), at_limit);
    }
}

/// A frame body above `max_frame_bytes` is rejected even if handed to the decoder
/// directly, and the splitter refuses its prefix before the body arrives.
#[test]
fn over_limit_frame_is_malformed() {
    let limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 1 << 20,
        max_frame_bytes: 1024,
    };
    let request = Request {
        request_id: 9,
        op: Op::Put {
            key: b"k".to_vec(),
            value: vec![0; 2048],
            consistency: None,
            context: None,
        },
    };
    let mut out = Vec::new();
    Encoder::new().encode_request(&request, &mut out);
    let err = decode_request(&out[LENGTH_PREFIX_BYTES..], &limits).unwrap_err();
    assert!(err.closes_connection(), "{err:?}");
    assert_eq!(err.request_id(), 0);
    assert!(matches!(
        next_frame(&out[..LENGTH_PREFIX_BYTES], limits.max_frame_bytes),
        Err(FrameError::TooLarge { max: 1024, .. })
    ));
}

/// One encoder alternating big and small frames keeps producing correct frames (the
/// builder is replaced after a big one and reused for small ones).
#[test]
fn encoder_reuse_across_sizes() {
    let limits = Limits::default();
    let mut encoder = Encoder::with_retained_capacity(64 << 10);
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for (i, value_len) in [10usize, 3 << 20, 5, 200 << 10, 0, 1]
        .into_iter()
        .enumerate()
    {
        let request = Request {
            request_id: i as u64,
            op: Op::Put {
                key: format!("key{i}").into_bytes(),
                value: (0..value_len).map(|b| b as u8).collect(),
                consistency: Some(Consistency::Quorum),
                context: None,
            },
        };
        encoder.encode_request(&request, &mut stream);
        sent.push(request);
        let response = Response {
            request_id: i as u64,
            body: Reply::Value {
                values: vec![vec![i as u8; value_len]],
                context: Some(vec![]),
            },
        };
        let mut out = Vec::new();
        encoder.encode_response(&response, &mut out);
        assert_eq!(
            decode_response(&out[LENGTH_PREFIX_BYTES..]).unwrap(),
            response
        );
    }
    let bodies = split_all(&stream, limits.max_frame_bytes);
    for (body, request) in bodies.iter().zip(&sent) {
        assert_eq!(&decode_request(body, &limits).unwrap(), request);
    }
    assert_eq!(bodies.len(), sent.len());
}

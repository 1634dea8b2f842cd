//! Property tests of the wire codec: every request and response round-trips through
//! encode → split → decode; arbitrary and mutated bytes never panic the decoder; limits
//! produce `Invalid` errors that carry the request id. Peer ops (handshake bytes,
//! gossip, hint replay) and client `Auth` are covered like the rest, including the
//! bounds on every gossip vector.
#![allow(clippy::unwrap_used)]

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use ringkv::auth::{AuthMessage, ClusterName, Proof, RefuseReason};
use ringkv::cluster::membership::{Ack, Ack2, Digest, GossipMessage, NodeState, Syn};
use ringkv::conflict::ConflictMode;
use ringkv::protocol::codec::{
    AUTH_TOKEN_BYTES_MAX, GOSSIP_APP_STATES_MAX, GOSSIP_NODES_MAX, GOSSIP_TEXT_BYTES_MAX,
    GOSSIP_TOKENS_PER_NODE_MAX, PEER_HANDSHAKE_BYTES_MAX,
};
use ringkv::protocol::frame::{next_frame, FrameError, LENGTH_PREFIX_BYTES};
use ringkv::protocol::types::{
    Consistency, ErrorReply, HintSummary, MovedStats, NodeInfo, NodeStatus, Op, RepairStats, Reply,
    Request, Response, Topology,
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
            proptest::option::of(bytes(64)),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(key, value, consistency, context, sloppy_quorum)| Op::Put {
                    key,
                    value,
                    consistency,
                    context,
                    sloppy_quorum,
                }
            ),
        (
            bytes(64),
            consistency(),
            proptest::option::of(bytes(64)),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(key, consistency, context, sloppy_quorum)| Op::Delete {
                key,
                consistency,
                context,
                sloppy_quorum,
            }),
        Just(Op::Ping),
        Just(Op::Topology),
        (bytes(64), bytes(256)).prop_map(|(key, state)| Op::ReplicaWrite { key, state }),
        bytes(64).prop_map(|key| Op::ReplicaRead { key }),
        bytes(64).prop_map(|token| Op::Auth { token }),
        bytes(128).prop_map(|message| Op::PeerHandshake { message }),
        gossip_message().prop_map(Op::Gossip),
        (bytes(64), bytes(256), any::<u64>()).prop_map(|(key, state, target_node_id)| {
            Op::HintReplay {
                key,
                state,
                target_node_id,
            }
        }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(bytes(64)),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(start_exclusive, end_inclusive, after_key, limit_keys, limit_bytes)| {
                    Op::StreamRange {
                        start_exclusive,
                        end_inclusive,
                        after_key,
                        limit_keys,
                        limit_bytes,
                    }
                }
            ),
        Just(Op::Decommission),
        Just(Op::Repair),
    ]
}

fn digest() -> impl Strategy<Value = Digest> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(id, generation, version)| Digest {
        id,
        generation,
        version,
    })
}

fn node_state() -> impl Strategy<Value = NodeState> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        node_status(),
        "[a-z0-9.:é]{0,24}",
        (any::<u32>(), any::<u16>()),
        vec(any::<u64>(), 0..8),
        any::<u64>(),
        btree_map("[a-z_]{0,12}", ".{0,16}", 0..4),
    )
        .prop_map(
            |(
                (id, generation, version, heartbeat),
                status,
                address,
                (shard_count, shard_port_base),
                tokens,
                load_bytes,
                app_states,
            )| NodeState {
                id,
                generation,
                version,
                heartbeat,
                status,
                address,
                shard_count,
                shard_port_base,
                tokens,
                load_bytes,
                app_states,
            },
        )
}

fn gossip_message() -> impl Strategy<Value = GossipMessage> {
    prop_oneof![
        (any::<u64>(), "[a-z0-9.:]{0,24}", vec(digest(), 0..6)).prop_map(
            |(from, from_address, digests)| GossipMessage::Syn(Syn {
                from,
                from_address,
                digests
            })
        ),
        (
            any::<u64>(),
            "[a-z0-9.:]{0,24}",
            vec(node_state(), 0..4),
            vec(digest(), 0..6)
        )
            .prop_map(|(from, from_address, deltas, requests)| {
                GossipMessage::Ack(Ack {
                    from,
                    from_address,
                    deltas,
                    requests,
                })
            }),
        (any::<u64>(), vec(node_state(), 0..4))
            .prop_map(|(from, deltas)| GossipMessage::Ack2(Ack2 { from, deltas })),
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
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                node_id,
                address,
                shard_count,
                shard_port_base,
                status,
                up,
                tokens,
                load_bytes,
                (pending, pending_bytes, oldest_created_ms, skipped, needs_repair),
            )| {
                NodeInfo {
                    node_id,
                    address,
                    shard_count,
                    shard_port_base,
                    status,
                    up,
                    tokens,
                    load_bytes,
                    hints: HintSummary {
                        pending,
                        pending_bytes,
                        oldest_created_ms,
                        skipped,
                        needs_repair,
                    },
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
        // Timestamp 0 is the absent field: it reads back as Done.
        (1..=u64::MAX).prop_map(|timestamp| Reply::Written { timestamp }),
        Just(Reply::Pong),
        (vec(node_info(), 0..5), any::<u32>()).prop_map(|(nodes, replication_factor)| {
            Reply::Topology(Topology {
                nodes,
                replication_factor,
            })
        }),
        proptest::option::of(bytes(256)).prop_map(|state| Reply::ReplicaState { state }),
        error_reply().prop_map(Reply::Error),
        bytes(128).prop_map(|message| Reply::PeerHandshake { message }),
        gossip_message().prop_map(Reply::Gossip),
        (vec((bytes(64), bytes(128)), 0..6), any::<bool>())
            .prop_map(|(entries, more)| Reply::StreamBatch { entries, more }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(keys_streamed, bytes_streamed, duration_ms)| Reply::Decommissioned(MovedStats {
                keys_streamed,
                bytes_streamed,
                duration_ms,
            })
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(ranges, keys_pulled, keys_pushed, bytes_streamed, duration_ms)| {
                    Reply::Repaired(RepairStats {
                        ranges,
                        keys_pulled,
                        keys_pushed,
                        bytes_streamed,
                        duration_ms,
                    })
                }
            ),
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
        which in 0usize..7,
    ) {
        let limits = Limits { max_key_bytes: 16, max_value_bytes: 32, max_frame_bytes: 4096 };
        let op = match which {
            0 => Op::Get { key, consistency: None },
            1 => Op::Put { key, value: vec![1], consistency: None, context: None, sloppy_quorum: None, },
            2 => Op::Delete { key, consistency: None, context: None, sloppy_quorum: None, },
            3 => Op::ReplicaWrite { key, state: vec![1] },
            4 => Op::HintReplay { key, state: vec![1], target_node_id: 3 },
            5 => Op::StreamRange { start_exclusive: 1, end_inclusive: 2, after_key: Some(key), limit_keys: 1, limit_bytes: 1 },
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
        let op = Op::Put { key: key.clone(), value, consistency: None, context: None, sloppy_quorum: None, };
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
            op: Op::Put { key, value: vec![7; 32], consistency: None, context: None, sloppy_quorum: None, },
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
            sloppy_quorum: None,
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
                sloppy_quorum: None,
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

/// Encodes `message` as a Gossip request and as a Gossip response with `request_id` and
/// decodes both.
fn decode_gossip_both_ways(
    request_id: u64,
    message: &GossipMessage,
) -> (Result<Request, DecodeError>, Result<Response, DecodeError>) {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    encoder.encode_request(
        &Request {
            request_id,
            op: Op::Gossip(message.clone()),
        },
        &mut out,
    );
    let request = decode_request(&out[LENGTH_PREFIX_BYTES..], &Limits::default());
    out.clear();
    encoder.encode_response(
        &Response {
            request_id,
            body: Reply::Gossip(message.clone()),
        },
        &mut out,
    );
    let response = decode_response(&out[LENGTH_PREFIX_BYTES..]);
    (request, response)
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, DecodeError>, id: u64, needle: &str) {
    match result {
        Err(DecodeError::Invalid { request_id, reason }) => {
            assert_eq!(request_id, id, "{reason}");
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        }
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

fn small_state(id: u64) -> NodeState {
    let mut state = NodeState::new(id, 1_700_000_000_000, format!("10.0.0.{}:7400", id % 256));
    state.tokens = vec![id, id.wrapping_mul(7)];
    state
        .app_states
        .insert("conflict_mode".to_owned(), "lww".to_owned());
    state
}

/// Every gossip vector and string at its bound decodes; one past it is `Invalid` for
/// that request id (the connection stays open), in requests and responses alike.
#[test]
fn gossip_bounds() {
    let digests = |n: usize| -> Vec<Digest> {
        (0..n as u64)
            .map(|id| Digest {
                id,
                generation: 1,
                version: id,
            })
            .collect()
    };
    let text = |n: usize| "x".repeat(n);
    let with_tokens = |n: usize| NodeState {
        tokens: (0..n as u64).collect(),
        ..small_state(1)
    };
    let with_app_states = |n: usize, text_bytes: usize| NodeState {
        app_states: (0..n)
            .map(|i| {
                (
                    format!("{i:0>width$}", width = text_bytes),
                    text(text_bytes),
                )
            })
            .collect(),
        ..small_state(2)
    };
    let ack = |deltas: Vec<NodeState>, requests: Vec<Digest>, from_address: String| {
        GossipMessage::Ack(Ack {
            from: 9,
            from_address,
            deltas,
            requests,
        })
    };
    let ack2 = |deltas: Vec<NodeState>| GossipMessage::Ack2(Ack2 { from: 9, deltas });
    let syn = |digests: Vec<Digest>, from_address: String| {
        GossipMessage::Syn(Syn {
            from: 9,
            from_address,
            digests,
        })
    };

    let at_limit = [
        syn(digests(GOSSIP_NODES_MAX), text(GOSSIP_TEXT_BYTES_MAX)),
        ack(
            (0..GOSSIP_NODES_MAX as u64).map(small_state).collect(),
            digests(GOSSIP_NODES_MAX),
            text(GOSSIP_TEXT_BYTES_MAX),
        ),
        ack2(vec![with_tokens(GOSSIP_TOKENS_PER_NODE_MAX)]),
        ack2(vec![with_app_states(
            GOSSIP_APP_STATES_MAX,
            GOSSIP_TEXT_BYTES_MAX,
        )]),
        ack2(vec![NodeState {
            address: text(GOSSIP_TEXT_BYTES_MAX),
            ..small_state(3)
        }]),
    ];
    for (i, message) in at_limit.iter().enumerate() {
        let request_id = 100 + i as u64;
        let (request, response) = decode_gossip_both_ways(request_id, message);
        assert_eq!(request.unwrap().op, Op::Gossip(message.clone()), "case {i}");
        assert_eq!(
            response.unwrap().body,
            Reply::Gossip(message.clone()),
            "case {i}"
        );
    }

    let over_limit = [
        (
            syn(digests(GOSSIP_NODES_MAX + 1), "a:1".to_owned()),
            "GossipSyn.digests",
        ),
        (
            syn(Vec::new(), text(GOSSIP_TEXT_BYTES_MAX + 1)),
            "GossipSyn.from_address",
        ),
        (
            ack(Vec::new(), digests(GOSSIP_NODES_MAX + 1), "a:1".to_owned()),
            "GossipAck.requests",
        ),
        (
            ack(
                (0..=GOSSIP_NODES_MAX as u64).map(small_state).collect(),
                Vec::new(),
                "a:1".to_owned(),
            ),
            "GossipAck.deltas",
        ),
        (
            ack2((0..=GOSSIP_NODES_MAX as u64).map(small_state).collect()),
            "GossipAck2.deltas",
        ),
        (
            ack2(vec![with_tokens(GOSSIP_TOKENS_PER_NODE_MAX + 1)]),
            "GossipNodeState.tokens",
        ),
        (
            ack2(vec![with_app_states(GOSSIP_APP_STATES_MAX + 1, 4)]),
            "GossipNodeState.app_states",
        ),
        (
            ack2(vec![NodeState {
                address: text(GOSSIP_TEXT_BYTES_MAX + 1),
                ..small_state(3)
            }]),
            "GossipNodeState.address",
        ),
        (
            ack2(vec![with_app_states(1, GOSSIP_TEXT_BYTES_MAX + 1)]),
            "AppState.key",
        ),
        (
            ack2(vec![NodeState {
                app_states: [("k".to_owned(), text(GOSSIP_TEXT_BYTES_MAX + 1))].into(),
                ..small_state(4)
            }]),
            "AppState.value",
        ),
    ];
    for (i, (message, needle)) in over_limit.iter().enumerate() {
        let request_id = 200 + i as u64;
        let (request, response) = decode_gossip_both_ways(request_id, message);
        assert_invalid(request, request_id, needle);
        assert_invalid(response, request_id, needle);
    }
}

/// `Auth.token` and `PeerHandshake.message` are bounded; at the bound they decode.
#[test]
fn auth_and_handshake_bytes_are_bounded() {
    let limits = Limits::default();
    let mut encoder = Encoder::new();
    let request = |encoder: &mut Encoder, op: Op| {
        let mut out = Vec::new();
        encoder.encode_request(&Request { request_id: 5, op }, &mut out);
        decode_request(&out[LENGTH_PREFIX_BYTES..], &limits)
    };
    let token = vec![b't'; AUTH_TOKEN_BYTES_MAX];
    assert_eq!(
        request(
            &mut encoder,
            Op::Auth {
                token: token.clone()
            }
        )
        .unwrap()
        .op,
        Op::Auth { token }
    );
    assert_invalid(
        request(
            &mut encoder,
            Op::Auth {
                token: vec![b't'; AUTH_TOKEN_BYTES_MAX + 1],
            },
        ),
        5,
        "token",
    );
    let message = vec![7; PEER_HANDSHAKE_BYTES_MAX];
    assert_eq!(
        request(
            &mut encoder,
            Op::PeerHandshake {
                message: message.clone()
            }
        )
        .unwrap()
        .op,
        Op::PeerHandshake { message }
    );
    let too_long = vec![7; PEER_HANDSHAKE_BYTES_MAX + 1];
    assert_invalid(
        request(
            &mut encoder,
            Op::PeerHandshake {
                message: too_long.clone(),
            },
        ),
        5,
        "message",
    );
    let mut out = Vec::new();
    encoder.encode_response(
        &Response {
            request_id: 6,
            body: Reply::PeerHandshake { message: too_long },
        },
        &mut out,
    );
    assert_invalid(decode_response(&out[LENGTH_PREFIX_BYTES..]), 6, "message");
}

/// Every kind of handshake message, at its largest, travels unchanged through a
/// PeerHandshake request and reply.
#[test]
fn auth_messages_travel_through_peer_handshake() {
    let longest_name = ClusterName::new(&"c".repeat(ringkv::auth::CLUSTER_NAME_BYTES_MAX)).unwrap();
    let messages = [
        AuthMessage::Hello {
            version: ringkv::auth::PROTOCOL_VERSION,
            cluster_name: longest_name.clone(),
            node_id: 1,
            nonce: [1; ringkv::auth::NONCE_BYTES],
            conflict_mode: ConflictMode::Causal,
        },
        AuthMessage::Challenge {
            cluster_name: longest_name,
            node_id: 2,
            nonce: [2; ringkv::auth::NONCE_BYTES],
            conflict_mode: ConflictMode::Lww,
            proof: Proof::from_bytes([3; ringkv::auth::PROOF_BYTES]),
        },
        AuthMessage::Response {
            proof: Proof::from_bytes([4; ringkv::auth::PROOF_BYTES]),
        },
        AuthMessage::Welcome,
        AuthMessage::Refuse {
            reason: RefuseReason::ALL[0],
        },
        AuthMessage::Refuse {
            reason: RefuseReason::ConflictMode {
                sender: ConflictMode::Causal,
            },
        },
    ];
    let limits = Limits::default();
    let mut encoder = Encoder::new();
    for (i, message) in messages.iter().enumerate() {
        let bytes = message.encode();
        let mut out = Vec::new();
        encoder.encode_request(
            &Request {
                request_id: i as u64,
                op: Op::PeerHandshake {
                    message: bytes.clone(),
                },
            },
            &mut out,
        );
        let Op::PeerHandshake { message: carried } =
            decode_request(&out[LENGTH_PREFIX_BYTES..], &limits)
                .unwrap()
                .op
        else {
            panic!("not a PeerHandshake");
        };
        assert_eq!(&AuthMessage::decode(&carried).unwrap(), message);
        out.clear();
        encoder.encode_response(
            &Response {
                request_id: i as u64,
                body: Reply::PeerHandshake { message: bytes },
            },
            &mut out,
        );
        let Reply::PeerHandshake { message: carried } =
            decode_response(&out[LENGTH_PREFIX_BYTES..]).unwrap().body
        else {
            panic!("not a PeerHandshake reply");
        };
        assert_eq!(&AuthMessage::decode(&carried).unwrap(), message);
    }
}

/// Only `Auth` and the original client ops are client ops; everything a peer sends is a
/// peer op that a client connection refuses.
#[test]
fn peer_ops_are_classified() {
    let client_ops = [
        Op::Get {
            key: vec![],
            consistency: None,
        },
        Op::Put {
            key: vec![],
            value: vec![],
            consistency: None,
            context: None,
            sloppy_quorum: None,
        },
        Op::Delete {
            key: vec![],
            consistency: None,
            context: None,
            sloppy_quorum: None,
        },
        Op::Ping,
        Op::Topology,
        Op::Auth { token: vec![1] },
        // Admin ops a client sends (subject to client authentication).
        Op::Decommission,
        Op::Repair,
    ];
    let peer_ops = [
        Op::ReplicaWrite {
            key: vec![],
            state: vec![],
        },
        Op::ReplicaRead { key: vec![] },
        Op::PeerHandshake { message: vec![] },
        Op::Gossip(GossipMessage::Ack2(Ack2 {
            from: 1,
            deltas: vec![],
        })),
        Op::HintReplay {
            key: vec![],
            state: vec![],
            target_node_id: 1,
        },
        Op::StreamRange {
            start_exclusive: 1,
            end_inclusive: 2,
            after_key: None,
            limit_keys: 10,
            limit_bytes: 1000,
        },
    ];
    assert!(client_ops.iter().all(|op| !op.is_peer_op()));
    assert!(peer_ops.iter().all(Op::is_peer_op));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Session timestamp contexts: any bytes decode without panicking, as "not a
    /// session timestamp", a refusal, or a value that re-encodes to the same bytes; every
    /// timestamp round-trips.
    #[test]
    fn session_timestamps_decode_any_bytes(
        timestamp in any::<u64>(),
        tail in vec(any::<u8>(), 0..20),
        magic in any::<bool>(),
    ) {
        use ringkv::protocol::session::{SessionTimestamp, MAGIC};
        let encoded = SessionTimestamp(timestamp).encode();
        prop_assert_eq!(SessionTimestamp::decode(&encoded), Some(Ok(SessionTimestamp(timestamp))));
        let mut bytes = if magic { MAGIC.to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&tail);
        match SessionTimestamp::decode(&bytes) {
            None => prop_assert!(!bytes.starts_with(&MAGIC)),
            Some(Ok(session)) => prop_assert_eq!(session.encode(), bytes),
            Some(Err(_)) => prop_assert!(bytes.starts_with(&MAGIC)),
        }
    }
}

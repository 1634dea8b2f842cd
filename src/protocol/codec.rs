//! Encoding [`Request`]s and [`Response`]s into frames and decoding frame bodies back,
//! with validation against [`Limits`]. Sans-I/O and on the hot path of every request:
//! the [`Encoder`] reuses one FlatBuffers builder, and decoding copies each byte field
//! exactly once, into the owned types of [`super::types`].
//!
//! It must never read a received buffer except through the verifying
//! [`flatbuffers::root`] (never the `_unchecked` variants), and never panic on any input:
//! everything a peer sends ends in a value or a typed [`DecodeError`].
//!
//! The frame layout (4-byte little-endian length, then a standard FlatBuffers buffer with
//! file identifier "RKV1") is documented in [`super::frame`]; the schema and its
//! evolution rules are in `schema/ringkv.fbs`.
//!
//! Gossip messages are converted to and from the membership state machine's own types
//! ([`crate::cluster::membership`]); every vector and string in them is bounded by the
//! `GOSSIP_*` limits below before anything is copied. Handshake messages are carried as
//! opaque bytes: the codec bounds their size and leaves their meaning to `crate::auth`.

use std::collections::BTreeMap;

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use super::frame::{FrameError, LENGTH_PREFIX_BYTES};
use super::types::{
    Consistency, ErrorReply, HintSummary, MovedStats, NodeInfo, NodeStatus, Op, RepairStats, Reply,
    Request, Response, Topology,
};
use super::wire;
use crate::cluster::membership::{
    Ack, Ack2, Digest, GossipMessage, NodeState, Syn, MAX_APP_STATES, MAX_APP_STATE_BYTES,
    MAX_NODES,
};
use crate::cluster::ring::MAX_TOKENS_PER_NODE;

/// Longest `Auth.token` accepted, in bytes. A configured `client_auth_token` must not be
/// longer, or no client could present it.
pub const AUTH_TOKEN_BYTES_MAX: usize = 4096;
/// Longest `PeerHandshake.message` accepted, in bytes: room for every handshake message.
pub const PEER_HANDSHAKE_BYTES_MAX: usize = 1024;
const _: () = assert!(crate::auth::MESSAGE_BYTES_MAX <= PEER_HANDSHAKE_BYTES_MAX);
/// Most entries in any vector of a gossip message (digests, deltas, requests): one per
/// node, as many as a membership tracks.
pub const GOSSIP_NODES_MAX: usize = MAX_NODES;
/// Most tokens in one gossiped node state: what the ring accepts of one node.
pub const GOSSIP_TOKENS_PER_NODE_MAX: usize = MAX_TOKENS_PER_NODE;
/// Most application states in one gossiped node state.
pub const GOSSIP_APP_STATES_MAX: usize = MAX_APP_STATES;
/// Longest address, application-state key or application-state value, in bytes.
pub const GOSSIP_TEXT_BYTES_MAX: usize = MAX_APP_STATE_BYTES;

/// Size limits a server enforces on what it receives (docs/design.md §1.5; config keys
/// `max_key_size`, `max_value_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest frame body (the bytes after the length prefix).
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 64 << 10,
            max_value_bytes: 16 << 20,
            // The value limit plus 1 MiB for the key, context and FlatBuffers overhead.
            max_frame_bytes: 17 << 20,
        }
    }
}

/// Why a frame body could not be decoded. The two kinds decide what the server does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing in the frame can be trusted (bad length, bad magic, the verifier rejected
    /// it). The server answers `BadRequest` with request id 0 and closes the connection.
    #[error("malformed frame: {reason}")]
    Malformed { reason: String },
    /// The frame is well formed but a field is missing, unknown or over a limit. The
    /// server answers `BadRequest` with this request id and keeps the connection.
    #[error("invalid frame (request id {request_id}): {reason}")]
    Invalid { request_id: u64, reason: String },
}

impl DecodeError {
    /// The request id to answer with: the frame's own, or 0 when it could not be read.
    pub fn request_id(&self) -> u64 {
        match self {
            DecodeError::Malformed { .. } => 0,
            DecodeError::Invalid { request_id, .. } => *request_id,
        }
    }

    /// Whether the connection must be closed after answering (the stream cannot be
    /// trusted any more).
    pub fn closes_connection(&self) -> bool {
        matches!(self, DecodeError::Malformed { .. })
    }

    /// The `BadRequest` response a server sends for this error.
    pub fn to_response(&self) -> Response {
        Response {
            request_id: self.request_id(),
            body: Reply::Error(ErrorReply::BadRequest {
                message: self.to_string(),
            }),
        }
    }
}

impl From<FrameError> for DecodeError {
    fn from(error: FrameError) -> Self {
        DecodeError::Malformed {
            reason: error.to_string(),
        }
    }
}

/// Builder capacity an [`Encoder`] starts with: enough for any frame without a large
/// value, so the common case never grows the builder.
const INITIAL_BUILDER_BYTES: usize = 4 << 10;
/// Default largest builder an [`Encoder`] keeps between frames. After encoding a larger
/// frame it drops the builder, so one big value does not pin its size in memory for the
/// life of a connection.
const RETAINED_BUILDER_BYTES_MAX: usize = 1 << 20;
/// Upper bound of the FlatBuffers bytes a table, vtable, vector header or padding adds,
/// used to size the builder before encoding (an underestimate only costs a regrowth).
const OVERHEAD_BYTES_PER_OBJECT: usize = 32;

/// Encodes requests and responses into whole frames, reusing one FlatBuffers builder
/// (one per connection or per shard; it is not `Sync`).
pub struct Encoder {
    builder: FlatBufferBuilder<'static>,
    /// A lower bound of the builder's buffer size.
    builder_capacity_bytes: usize,
    retained_builder_bytes_max: usize,
    /// Scratch lists of table offsets, kept to avoid an allocation per frame.
    blobs: Vec<WIPOffset<wire::Blob<'static>>>,
    nodes: Vec<WIPOffset<wire::NodeInfo<'static>>>,
    gossip: GossipScratch,
}

/// Scratch lists of table offsets for encoding one gossip message.
#[derive(Default)]
struct GossipScratch {
    digests: Vec<WIPOffset<wire::GossipDigest<'static>>>,
    states: Vec<WIPOffset<wire::GossipNodeState<'static>>>,
    app_states: Vec<WIPOffset<wire::AppState<'static>>>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::with_retained_capacity(RETAINED_BUILDER_BYTES_MAX)
    }

    /// An encoder that keeps its builder between frames while the builder is at most
    /// `retained_builder_bytes_max` bytes (use a large value for a per-shard encoder that
    /// often sends big values).
    pub fn with_retained_capacity(retained_builder_bytes_max: usize) -> Self {
        Encoder {
            builder: FlatBufferBuilder::with_capacity(INITIAL_BUILDER_BYTES),
            builder_capacity_bytes: INITIAL_BUILDER_BYTES,
            retained_builder_bytes_max,
            blobs: Vec::new(),
            nodes: Vec::new(),
            gossip: GossipScratch::default(),
        }
    }

    /// Appends one whole frame (length prefix + body) carrying `request` to `out`.
    ///
    /// Does not check [`Limits`] (the receiver does). Panics if the frame would exceed
    /// FlatBuffers' 2 GiB buffer limit, far above any frame limit.
    pub fn encode_request(&mut self, request: &Request, out: &mut Vec<u8>) {
        self.reserve(request_size_hint(&request.op));
        let builder = &mut self.builder;
        let (body_type, body) = match &request.op {
            Op::Get { key, consistency } => {
                let key = byte_vector(builder, key);
                let (consistency, consistency_count) = consistency_to_wire(*consistency);
                let table = wire::Get::create(
                    builder,
                    &wire::GetArgs {
                        key: Some(key),
                        consistency,
                        consistency_count,
                    },
                );
                (wire::RequestBody::Get, table.as_union_value())
            }
            Op::Put {
                key,
                value,
                consistency,
                context,
                sloppy_quorum,
            } => {
                let key = byte_vector(builder, key);
                let value = byte_vector(builder, value);
                let context = context.as_deref().map(|c| byte_vector(builder, c));
                let (consistency, consistency_count) = consistency_to_wire(*consistency);
                let table = wire::Put::create(
                    builder,
                    &wire::PutArgs {
                        key: Some(key),
                        value: Some(value),
                        consistency,
                        consistency_count,
                        context,
                        sloppy_quorum: *sloppy_quorum,
                    },
                );
                (wire::RequestBody::Put, table.as_union_value())
            }
            Op::Delete {
                key,
                consistency,
                context,
                sloppy_quorum,
            } => {
                let key = byte_vector(builder, key);
                let context = context.as_deref().map(|c| byte_vector(builder, c));
                let (consistency, consistency_count) = consistency_to_wire(*consistency);
                let table = wire::Delete::create(
                    builder,
                    &wire::DeleteArgs {
                        key: Some(key),
                        consistency,
                        consistency_count,
                        context,
                        sloppy_quorum: *sloppy_quorum,
                    },
                );
                (wire::RequestBody::Delete, table.as_union_value())
            }
            Op::Ping => {
                let table = wire::Ping::create(builder, &wire::PingArgs {});
                (wire::RequestBody::Ping, table.as_union_value())
            }
            Op::Topology => {
                let table = wire::Topology::create(builder, &wire::TopologyArgs {});
                (wire::RequestBody::Topology, table.as_union_value())
            }
            Op::ReplicaWrite { key, state } => {
                let key = byte_vector(builder, key);
                let state = byte_vector(builder, state);
                let table = wire::ReplicaWrite::create(
                    builder,
                    &wire::ReplicaWriteArgs {
                        key: Some(key),
                        state: Some(state),
                    },
                );
                (wire::RequestBody::ReplicaWrite, table.as_union_value())
            }
            Op::ReplicaRead { key } => {
                let key = byte_vector(builder, key);
                let table =
                    wire::ReplicaRead::create(builder, &wire::ReplicaReadArgs { key: Some(key) });
                (wire::RequestBody::ReplicaRead, table.as_union_value())
            }
            Op::Auth { token } => {
                let token = byte_vector(builder, token);
                let table = wire::Auth::create(builder, &wire::AuthArgs { token: Some(token) });
                (wire::RequestBody::Auth, table.as_union_value())
            }
            Op::PeerHandshake { message } => {
                let table = peer_handshake_to_wire(builder, message);
                (wire::RequestBody::PeerHandshake, table.as_union_value())
            }
            Op::Gossip(message) => {
                let table = gossip_to_wire(builder, &mut self.gossip, message);
                (wire::RequestBody::Gossip, table.as_union_value())
            }
            Op::HintReplay {
                key,
                state,
                target_node_id,
            } => {
                let key = byte_vector(builder, key);
                let state = byte_vector(builder, state);
                let table = wire::HintReplay::create(
                    builder,
                    &wire::HintReplayArgs {
                        key: Some(key),
                        state: Some(state),
                        target_node_id: *target_node_id,
                    },
                );
                (wire::RequestBody::HintReplay, table.as_union_value())
            }
            Op::StreamRange {
                start_exclusive,
                end_inclusive,
                after_key,
                limit_keys,
                limit_bytes,
            } => {
                let after_key = after_key.as_deref().map(|k| byte_vector(builder, k));
                let table = wire::StreamRange::create(
                    builder,
                    &wire::StreamRangeArgs {
                        start_exclusive: *start_exclusive,
                        end_inclusive: *end_inclusive,
                        after_key,
                        limit_keys: *limit_keys,
                        limit_bytes: *limit_bytes,
                    },
                );
                (wire::RequestBody::StreamRange, table.as_union_value())
            }
            Op::Decommission => {
                let table = wire::Decommission::create(builder, &wire::DecommissionArgs {});
                (wire::RequestBody::Decommission, table.as_union_value())
            }
            Op::Repair => {
                let table = wire::Repair::create(builder, &wire::RepairArgs {});
                (wire::RequestBody::Repair, table.as_union_value())
            }
        };
        let frame = wire::Frame::create(
            builder,
            &wire::FrameArgs {
                request_id: request.request_id,
                request_type: body_type,
                request: Some(body),
                ..Default::default()
            },
        );
        wire::finish_frame_buffer(builder, frame);
        self.emit(out);
    }

    /// Appends one whole frame (length prefix + body) carrying `response` to `out`.
    ///
    /// Panics if the frame would exceed FlatBuffers' 2 GiB buffer limit.
    pub fn encode_response(&mut self, response: &Response, out: &mut Vec<u8>) {
        self.reserve(response_size_hint(&response.body));
        let builder = &mut self.builder;
        let (body_type, body) = match &response.body {
            Reply::Value { values, context } => {
                self.blobs.clear();
                for value in values {
                    let data = byte_vector(builder, value);
                    self.blobs.push(wire::Blob::create(
                        builder,
                        &wire::BlobArgs { data: Some(data) },
                    ));
                }
                // Not found (no values) is the absent vector: two bytes less per miss.
                let values = (!self.blobs.is_empty()).then(|| builder.create_vector(&self.blobs));
                let context = context.as_deref().map(|c| byte_vector(builder, c));
                let table = wire::Value::create(builder, &wire::ValueArgs { values, context });
                (wire::ResponseBody::Value, table.as_union_value())
            }
            Reply::Done => {
                let table = wire::Done::create(builder, &wire::DoneArgs { timestamp: 0 });
                (wire::ResponseBody::Done, table.as_union_value())
            }
            Reply::Written { timestamp } => {
                let table = wire::Done::create(
                    builder,
                    &wire::DoneArgs {
                        timestamp: *timestamp,
                    },
                );
                (wire::ResponseBody::Done, table.as_union_value())
            }
            Reply::Pong => {
                let table = wire::Pong::create(builder, &wire::PongArgs {});
                (wire::ResponseBody::Pong, table.as_union_value())
            }
            Reply::Topology(topology) => {
                self.nodes.clear();
                for node in &topology.nodes {
                    let address = builder.create_string(&node.address);
                    let tokens = builder.create_vector(&node.tokens);
                    self.nodes.push(wire::NodeInfo::create(
                        builder,
                        &wire::NodeInfoArgs {
                            node_id: node.node_id,
                            address: Some(address),
                            shard_count: node.shard_count,
                            shard_port_base: node.shard_port_base,
                            status: node_status_to_wire(node.status),
                            up: node.up,
                            tokens: Some(tokens),
                            load_bytes: node.load_bytes,
                            hints_pending: node.hints.pending,
                            hints_pending_bytes: node.hints.pending_bytes,
                            hints_oldest_created_ms: node.hints.oldest_created_ms,
                            hints_skipped: node.hints.skipped,
                            hints_needs_repair: node.hints.needs_repair,
                        },
                    ));
                }
                let nodes = builder.create_vector(&self.nodes);
                let table = wire::TopologyReply::create(
                    builder,
                    &wire::TopologyReplyArgs {
                        nodes: Some(nodes),
                        replication_factor: topology.replication_factor,
                    },
                );
                (wire::ResponseBody::TopologyReply, table.as_union_value())
            }
            Reply::ReplicaState { state } => {
                let state = state.as_deref().map(|s| byte_vector(builder, s));
                let table = wire::ReplicaState::create(builder, &wire::ReplicaStateArgs { state });
                (wire::ResponseBody::ReplicaState, table.as_union_value())
            }
            Reply::Error(error) => {
                let (kind, message, required, alive, acked) = match error {
                    ErrorReply::BadRequest { message } => {
                        (wire::ErrorKind::BadRequest, Some(message.as_str()), 0, 0, 0)
                    }
                    ErrorReply::Unavailable { required, alive } => {
                        (wire::ErrorKind::Unavailable, None, *required, *alive, 0)
                    }
                    ErrorReply::Timeout { required, acked } => {
                        (wire::ErrorKind::Timeout, None, *required, 0, *acked)
                    }
                    ErrorReply::Overloaded => (wire::ErrorKind::Overloaded, None, 0, 0, 0),
                    ErrorReply::Unauthorized => (wire::ErrorKind::Unauthorized, None, 0, 0, 0),
                    ErrorReply::Internal { message } => {
                        (wire::ErrorKind::Internal, Some(message.as_str()), 0, 0, 0)
                    }
                };
                let message = message.map(|m| builder.create_string(m));
                let table = wire::Error::create(
                    builder,
                    &wire::ErrorArgs {
                        kind,
                        message,
                        required,
                        alive,
                        acked,
                    },
                );
                (wire::ResponseBody::Error, table.as_union_value())
            }
            Reply::PeerHandshake { message } => {
                let table = peer_handshake_to_wire(builder, message);
                (wire::ResponseBody::PeerHandshake, table.as_union_value())
            }
            Reply::Gossip(message) => {
                let table = gossip_to_wire(builder, &mut self.gossip, message);
                (wire::ResponseBody::Gossip, table.as_union_value())
            }
            Reply::StreamBatch { entries, more } => {
                let mut tables = Vec::with_capacity(entries.len());
                for (key, state) in entries {
                    let key = byte_vector(builder, key);
                    let state = byte_vector(builder, state);
                    tables.push(wire::StreamEntry::create(
                        builder,
                        &wire::StreamEntryArgs {
                            key: Some(key),
                            state: Some(state),
                        },
                    ));
                }
                let entries = builder.create_vector(&tables);
                let table = wire::StreamBatch::create(
                    builder,
                    &wire::StreamBatchArgs {
                        entries: Some(entries),
                        more: *more,
                    },
                );
                (wire::ResponseBody::StreamBatch, table.as_union_value())
            }
            Reply::Decommissioned(moved) => {
                let table = wire::Decommissioned::create(
                    builder,
                    &wire::DecommissionedArgs {
                        keys_streamed: moved.keys_streamed,
                        bytes_streamed: moved.bytes_streamed,
                        duration_ms: moved.duration_ms,
                    },
                );
                (wire::ResponseBody::Decommissioned, table.as_union_value())
            }
            Reply::Repaired(stats) => {
                let table = wire::Repaired::create(
                    builder,
                    &wire::RepairedArgs {
                        ranges: stats.ranges,
                        keys_pulled: stats.keys_pulled,
                        keys_pushed: stats.keys_pushed,
                        bytes_streamed: stats.bytes_streamed,
                        duration_ms: stats.duration_ms,
                    },
                );
                (wire::ResponseBody::Repaired, table.as_union_value())
            }
        };
        let frame = wire::Frame::create(
            builder,
            &wire::FrameArgs {
                request_id: response.request_id,
                response_type: body_type,
                response: Some(body),
                ..Default::default()
            },
        );
        wire::finish_frame_buffer(builder, frame);
        self.emit(out);
    }

    /// Makes sure the builder can hold about `hint_bytes` without regrowing (each
    /// regrowth copies everything written so far). A fresh `vec![0; n]` is a zeroed
    /// allocation, which the allocator gets cheaply for large sizes.
    fn reserve(&mut self, hint_bytes: usize) {
        if hint_bytes > self.builder_capacity_bytes {
            self.builder = FlatBufferBuilder::with_capacity(hint_bytes);
            self.builder_capacity_bytes = hint_bytes;
        }
    }

    /// Copies the finished buffer behind its length prefix into `out`, then readies the
    /// builder for the next frame.
    fn emit(&mut self, out: &mut Vec<u8>) {
        let body = self.builder.finished_data();
        // FlatBuffers caps a buffer at 2 GiB, so the length always fits the u32 prefix.
        let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        assert!(
            body_len < u32::MAX,
            "frame body exceeds the u32 length prefix"
        );
        out.reserve(LENGTH_PREFIX_BYTES + body.len());
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(body);
        let used_bytes = body.len();
        if used_bytes > self.retained_builder_bytes_max
            || self.builder_capacity_bytes > self.retained_builder_bytes_max
        {
            self.builder = FlatBufferBuilder::with_capacity(INITIAL_BUILDER_BYTES);
            self.builder_capacity_bytes = INITIAL_BUILDER_BYTES;
        } else {
            // `reset` keeps the allocation and zeroes only the bytes this frame used.
            self.builder.reset();
            self.builder_capacity_bytes = self.builder_capacity_bytes.max(used_bytes);
        }
    }
}

/// A `[ubyte]` vector written with one `memcpy`. `create_vector::<u8>` would copy byte
/// by byte; `create_byte_string` copies the slice at once and lays out exactly a
/// `[ubyte]` vector (u32 length, the bytes) plus one trailing zero byte of padding that
/// belongs to no field, so its offset is a valid vector offset.
#[inline]
fn byte_vector(
    builder: &mut FlatBufferBuilder<'static>,
    bytes: &[u8],
) -> WIPOffset<Vector<'static, u8>> {
    WIPOffset::new(builder.create_byte_string(bytes).value())
}

fn peer_handshake_to_wire(
    builder: &mut FlatBufferBuilder<'static>,
    message: &[u8],
) -> WIPOffset<wire::PeerHandshake<'static>> {
    let message = byte_vector(builder, message);
    wire::PeerHandshake::create(
        builder,
        &wire::PeerHandshakeArgs {
            message: Some(message),
        },
    )
}

/// Writes a list of digests and returns its vector.
fn digests_to_wire(
    builder: &mut FlatBufferBuilder<'static>,
    scratch: &mut Vec<WIPOffset<wire::GossipDigest<'static>>>,
    digests: &[Digest],
) -> WIPOffset<Vector<'static, ForwardsUOffset<wire::GossipDigest<'static>>>> {
    scratch.clear();
    for digest in digests {
        scratch.push(wire::GossipDigest::create(
            builder,
            &wire::GossipDigestArgs {
                node_id: digest.id,
                generation: digest.generation,
                version: digest.version,
            },
        ));
    }
    builder.create_vector(scratch)
}

/// Writes a list of node states and returns its vector. App states go out in key order
/// (the map's), so equal states encode to equal bytes.
fn node_states_to_wire(
    builder: &mut FlatBufferBuilder<'static>,
    scratch: &mut GossipScratch,
    states: &[NodeState],
) -> WIPOffset<Vector<'static, ForwardsUOffset<wire::GossipNodeState<'static>>>> {
    scratch.states.clear();
    for state in states {
        scratch.app_states.clear();
        for (key, value) in &state.app_states {
            let key = builder.create_string(key);
            let value = builder.create_string(value);
            scratch.app_states.push(wire::AppState::create(
                builder,
                &wire::AppStateArgs {
                    key: Some(key),
                    value: Some(value),
                },
            ));
        }
        let app_states = builder.create_vector(&scratch.app_states);
        let address = builder.create_string(&state.address);
        let tokens = builder.create_vector(&state.tokens);
        scratch.states.push(wire::GossipNodeState::create(
            builder,
            &wire::GossipNodeStateArgs {
                node_id: state.id,
                generation: state.generation,
                version: state.version,
                heartbeat: state.heartbeat,
                status: node_status_to_wire(state.status),
                address: Some(address),
                shard_count: state.shard_count,
                shard_port_base: state.shard_port_base,
                tokens: Some(tokens),
                load_bytes: state.load_bytes,
                app_states: Some(app_states),
            },
        ));
    }
    builder.create_vector(&scratch.states)
}

fn gossip_to_wire(
    builder: &mut FlatBufferBuilder<'static>,
    scratch: &mut GossipScratch,
    message: &GossipMessage,
) -> WIPOffset<wire::Gossip<'static>> {
    let (message_type, table) = match message {
        GossipMessage::Syn(syn) => {
            let from_address = builder.create_string(&syn.from_address);
            let digests = digests_to_wire(builder, &mut scratch.digests, &syn.digests);
            let table = wire::GossipSyn::create(
                builder,
                &wire::GossipSynArgs {
                    from_node_id: syn.from,
                    from_address: Some(from_address),
                    digests: Some(digests),
                },
            );
            (wire::GossipMessage::GossipSyn, table.as_union_value())
        }
        GossipMessage::Ack(ack) => {
            let from_address = builder.create_string(&ack.from_address);
            let deltas = node_states_to_wire(builder, scratch, &ack.deltas);
            let requests = digests_to_wire(builder, &mut scratch.digests, &ack.requests);
            let table = wire::GossipAck::create(
                builder,
                &wire::GossipAckArgs {
                    from_node_id: ack.from,
                    from_address: Some(from_address),
                    deltas: Some(deltas),
                    requests: Some(requests),
                },
            );
            (wire::GossipMessage::GossipAck, table.as_union_value())
        }
        GossipMessage::Ack2(ack2) => {
            let deltas = node_states_to_wire(builder, scratch, &ack2.deltas);
            let table = wire::GossipAck2::create(
                builder,
                &wire::GossipAck2Args {
                    from_node_id: ack2.from,
                    deltas: Some(deltas),
                },
            );
            (wire::GossipMessage::GossipAck2, table.as_union_value())
        }
    };
    wire::Gossip::create(
        builder,
        &wire::GossipArgs {
            message_type,
            message: Some(table),
        },
    )
}

fn gossip_size_hint(message: &GossipMessage) -> usize {
    const DIGEST_BYTES: usize = 24 + OVERHEAD_BYTES_PER_OBJECT;
    let states_bytes = |states: &[NodeState]| -> usize {
        states
            .iter()
            .map(|state| {
                let app_states_bytes: usize = state
                    .app_states
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 3 * OVERHEAD_BYTES_PER_OBJECT)
                    .sum();
                state.address.len()
                    + 8 * state.tokens.len()
                    + app_states_bytes
                    + 4 * OVERHEAD_BYTES_PER_OBJECT
            })
            .sum()
    };
    match message {
        GossipMessage::Syn(syn) => syn.from_address.len() + DIGEST_BYTES * syn.digests.len(),
        GossipMessage::Ack(ack) => {
            ack.from_address.len() + states_bytes(&ack.deltas) + DIGEST_BYTES * ack.requests.len()
        }
        GossipMessage::Ack2(ack2) => states_bytes(&ack2.deltas),
    }
}

fn request_size_hint(op: &Op) -> usize {
    let payload_bytes = match op {
        Op::Get { key, .. } | Op::ReplicaRead { key } => key.len(),
        Op::Put {
            key,
            value,
            context,
            ..
        } => key.len() + value.len() + context.as_ref().map_or(0, Vec::len),
        Op::Delete { key, context, .. } => key.len() + context.as_ref().map_or(0, Vec::len),
        Op::Ping | Op::Topology | Op::Decommission | Op::Repair => 0,
        Op::StreamRange { after_key, .. } => after_key.as_ref().map_or(0, Vec::len),
        Op::ReplicaWrite { key, state } | Op::HintReplay { key, state, .. } => {
            key.len() + state.len()
        }
        Op::Auth { token } => token.len(),
        Op::PeerHandshake { message } => message.len(),
        Op::Gossip(message) => gossip_size_hint(message),
    };
    payload_bytes + 8 * OVERHEAD_BYTES_PER_OBJECT
}

fn response_size_hint(reply: &Reply) -> usize {
    let payload_bytes = match reply {
        Reply::Value { values, context } => {
            values
                .iter()
                .map(|v| v.len() + OVERHEAD_BYTES_PER_OBJECT)
                .sum::<usize>()
                + context.as_ref().map_or(0, Vec::len)
        }
        Reply::Topology(topology) => topology
            .nodes
            .iter()
            .map(|n| n.address.len() + 8 * n.tokens.len() + 4 * OVERHEAD_BYTES_PER_OBJECT)
            .sum(),
        Reply::ReplicaState { state } => state.as_ref().map_or(0, Vec::len),
        Reply::Error(ErrorReply::BadRequest { message } | ErrorReply::Internal { message }) => {
            message.len()
        }
        Reply::Error(_) | Reply::Done | Reply::Written { .. } | Reply::Pong => 0,
        Reply::PeerHandshake { message } => message.len(),
        Reply::Gossip(message) => gossip_size_hint(message),
        Reply::StreamBatch { entries, .. } => entries
            .iter()
            .map(|(k, s)| k.len() + s.len() + 3 * OVERHEAD_BYTES_PER_OBJECT)
            .sum(),
        Reply::Decommissioned(_) | Reply::Repaired(_) => 0,
    };
    payload_bytes + 8 * OVERHEAD_BYTES_PER_OBJECT
}

fn consistency_to_wire(consistency: Option<Consistency>) -> (wire::Consistency, u8) {
    match consistency {
        None => (wire::Consistency::Default, 0),
        Some(Consistency::One) => (wire::Consistency::One, 0),
        Some(Consistency::Two) => (wire::Consistency::Two, 0),
        Some(Consistency::Quorum) => (wire::Consistency::Quorum, 0),
        Some(Consistency::All) => (wire::Consistency::All, 0),
        Some(Consistency::Count(count)) => (wire::Consistency::Count, count),
    }
}

fn consistency_from_wire(
    level: wire::Consistency,
    count: u8,
) -> Result<Option<Consistency>, String> {
    let consistency = match level {
        wire::Consistency::Default => None,
        wire::Consistency::One => Some(Consistency::One),
        wire::Consistency::Two => Some(Consistency::Two),
        wire::Consistency::Quorum => Some(Consistency::Quorum),
        wire::Consistency::All => Some(Consistency::All),
        wire::Consistency::Count if count == 0 => {
            return Err("consistency Count needs consistency_count ≥ 1".to_owned())
        }
        wire::Consistency::Count => return Ok(Some(Consistency::Count(count))),
        wire::Consistency(unknown) => return Err(format!("unknown consistency level {unknown}")),
    };
    // A count beside a named level is a client bug; refuse rather than guess which won.
    if count != 0 {
        return Err(format!(
            "consistency_count {count} given with consistency level {level:?}"
        ));
    }
    Ok(consistency)
}

fn node_status_to_wire(status: NodeStatus) -> wire::NodeStatus {
    match status {
        NodeStatus::Joining => wire::NodeStatus::Joining,
        NodeStatus::Normal => wire::NodeStatus::Normal,
        NodeStatus::Leaving => wire::NodeStatus::Leaving,
        NodeStatus::Left => wire::NodeStatus::Left,
    }
}

fn node_status_from_wire(status: wire::NodeStatus) -> Result<NodeStatus, String> {
    match status {
        wire::NodeStatus::Joining => Ok(NodeStatus::Joining),
        wire::NodeStatus::Normal => Ok(NodeStatus::Normal),
        wire::NodeStatus::Leaving => Ok(NodeStatus::Leaving),
        wire::NodeStatus::Left => Ok(NodeStatus::Left),
        wire::NodeStatus(unknown) => Err(format!("unknown node status {unknown}")),
    }
}

/// Checks size, magic and structure of a frame body and returns its verified root.
fn verified_frame(body: &[u8], max_frame_bytes: usize) -> Result<wire::Frame<'_>, DecodeError> {
    if body.len() > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: max_frame_bytes,
        }
        .into());
    }
    // The identifier follows the 4-byte root offset. Checked before the verifier so that
    // a foreign protocol is named as such rather than as a structural error.
    if body.get(4..8) != Some(wire::FRAME_IDENTIFIER.as_bytes()) {
        return Err(DecodeError::Malformed {
            reason: format!(
                "not a ringkv frame: file identifier is not {:?}",
                wire::FRAME_IDENTIFIER
            ),
        });
    }
    flatbuffers::root::<wire::Frame>(body).map_err(|error| {
        // The usual cause of misalignment is a client that finished its buffer with
        // FlatBuffers' own size prefix, which aligns relative to the prefix, not the body.
        let hint = match error {
            flatbuffers::InvalidFlatbuffer::Unaligned { .. } => {
                " (finish the buffer without FlatBuffers' size prefix and write the \
                 length yourself; see schema/README.md)"
            }
            _ => "",
        };
        DecodeError::Malformed {
            reason: format!(
                "flatbuffers verifier: {}{hint}",
                error.to_string().trim_end()
            ),
        }
    })
}

/// Copies a present byte field; a missing one is `Invalid`.
fn required_bytes(
    field: Option<Vector<'_, u8>>,
    name: &str,
    request_id: u64,
) -> Result<Vec<u8>, DecodeError> {
    match field {
        Some(bytes) => Ok(bytes.bytes().to_vec()),
        None => Err(DecodeError::Invalid {
            request_id,
            reason: format!("missing field {name}"),
        }),
    }
}

fn optional_bytes(field: Option<Vector<'_, u8>>) -> Option<Vec<u8>> {
    field.map(|bytes| bytes.bytes().to_vec())
}

/// Checks a key's presence and size before copying it.
fn checked_key(
    field: Option<Vector<'_, u8>>,
    limits: &Limits,
    request_id: u64,
) -> Result<Vec<u8>, DecodeError> {
    if let Some(key) = field {
        if key.len() > limits.max_key_bytes {
            return Err(DecodeError::Invalid {
                request_id,
                reason: format!(
                    "key of {} bytes exceeds the limit of {} bytes",
                    key.len(),
                    limits.max_key_bytes
                ),
            });
        }
    }
    required_bytes(field, "key", request_id)
}

/// Checks a byte field's presence and size before copying it.
fn bounded_bytes(
    field: Option<Vector<'_, u8>>,
    name: &str,
    max_bytes: usize,
    request_id: u64,
) -> Result<Vec<u8>, DecodeError> {
    if let Some(bytes) = field {
        if bytes.len() > max_bytes {
            return Err(DecodeError::Invalid {
                request_id,
                reason: format!(
                    "{name} of {} bytes exceeds the limit of {max_bytes} bytes",
                    bytes.len()
                ),
            });
        }
    }
    required_bytes(field, name, request_id)
}

/// Refuses a vector longer than `max_len` (an absent one is empty), before anything of
/// it is copied.
fn check_len<T>(field: &Option<Vector<'_, T>>, name: &str, max_len: usize) -> Result<(), String> {
    match field {
        Some(vector) if vector.len() > max_len => Err(format!(
            "{name} has {} entries; at most {max_len} are allowed",
            vector.len()
        )),
        _ => Ok(()),
    }
}

/// Copies a present string of at most [`GOSSIP_TEXT_BYTES_MAX`] bytes.
fn gossip_text(field: Option<&str>, name: &str) -> Result<String, String> {
    let text = field.ok_or_else(|| format!("missing field {name}"))?;
    if text.len() > GOSSIP_TEXT_BYTES_MAX {
        return Err(format!(
            "{name} of {} bytes exceeds the limit of {GOSSIP_TEXT_BYTES_MAX} bytes",
            text.len()
        ));
    }
    Ok(text.to_owned())
}

fn digests_from_wire(
    field: Option<Vector<'_, ForwardsUOffset<wire::GossipDigest<'_>>>>,
    name: &str,
) -> Result<Vec<Digest>, String> {
    check_len(&field, name, GOSSIP_NODES_MAX)?;
    Ok(field.map_or_else(Vec::new, |digests| {
        digests
            .iter()
            .map(|digest| Digest {
                id: digest.node_id(),
                generation: digest.generation(),
                version: digest.version(),
            })
            .collect()
    }))
}

fn node_state_from_wire(state: wire::GossipNodeState<'_>) -> Result<NodeState, String> {
    let tokens = state.tokens();
    check_len(
        &tokens,
        "GossipNodeState.tokens",
        GOSSIP_TOKENS_PER_NODE_MAX,
    )?;
    let wire_app_states = state.app_states();
    check_len(
        &wire_app_states,
        "GossipNodeState.app_states",
        GOSSIP_APP_STATES_MAX,
    )?;
    let mut app_states = BTreeMap::new();
    for app_state in wire_app_states.iter().flatten() {
        let key = gossip_text(app_state.key(), "AppState.key")?;
        let value = gossip_text(app_state.value(), "AppState.value")?;
        // A repeated key has no single meaning; refuse rather than pick one.
        if let Some(_earlier) = app_states.insert(key, value) {
            return Err("GossipNodeState.app_states repeats a key".to_owned());
        }
    }
    Ok(NodeState {
        id: state.node_id(),
        generation: state.generation(),
        version: state.version(),
        heartbeat: state.heartbeat(),
        status: node_status_from_wire(state.status())?,
        address: gossip_text(state.address(), "GossipNodeState.address")?,
        shard_count: state.shard_count(),
        shard_port_base: state.shard_port_base(),
        tokens: tokens.map_or_else(Vec::new, |t| t.iter().collect()),
        load_bytes: state.load_bytes(),
        app_states,
    })
}

fn node_states_from_wire(
    field: Option<Vector<'_, ForwardsUOffset<wire::GossipNodeState<'_>>>>,
    name: &str,
) -> Result<Vec<NodeState>, String> {
    check_len(&field, name, GOSSIP_NODES_MAX)?;
    let Some(states) = field else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(states.len());
    for state in states {
        out.push(node_state_from_wire(state)?);
    }
    Ok(out)
}

/// Converts a verified `Gossip` table into the membership's message, enforcing the
/// `GOSSIP_*` limits. The error is the reason for an `Invalid`.
fn gossip_from_wire(gossip: wire::Gossip<'_>) -> Result<GossipMessage, String> {
    let missing_table = || "gossip message tag without its table".to_owned();
    let message = match gossip.message_type() {
        wire::GossipMessage::GossipSyn => {
            let syn = gossip.message_as_gossip_syn().ok_or_else(missing_table)?;
            GossipMessage::Syn(Syn {
                from: syn.from_node_id(),
                from_address: gossip_text(syn.from_address(), "GossipSyn.from_address")?,
                digests: digests_from_wire(syn.digests(), "GossipSyn.digests")?,
            })
        }
        wire::GossipMessage::GossipAck => {
            let ack = gossip.message_as_gossip_ack().ok_or_else(missing_table)?;
            GossipMessage::Ack(Ack {
                from: ack.from_node_id(),
                from_address: gossip_text(ack.from_address(), "GossipAck.from_address")?,
                deltas: node_states_from_wire(ack.deltas(), "GossipAck.deltas")?,
                requests: digests_from_wire(ack.requests(), "GossipAck.requests")?,
            })
        }
        wire::GossipMessage::GossipAck2 => {
            let ack2 = gossip.message_as_gossip_ack_2().ok_or_else(missing_table)?;
            GossipMessage::Ack2(Ack2 {
                from: ack2.from_node_id(),
                deltas: node_states_from_wire(ack2.deltas(), "GossipAck2.deltas")?,
            })
        }
        wire::GossipMessage::NONE => return Err("Gossip carries no message".to_owned()),
        // A newer peer's gossip message: refuse this one request, keep the connection.
        wire::GossipMessage(unknown) => {
            return Err(format!("unknown gossip message type {unknown}"))
        }
    };
    Ok(message)
}

/// Decodes one request frame body (the bytes after the length prefix), verifying it and
/// enforcing `limits`.
pub fn decode_request(body: &[u8], limits: &Limits) -> Result<Request, DecodeError> {
    let frame = verified_frame(body, limits.max_frame_bytes)?;
    let request_id = frame.request_id();
    let invalid = |reason: String| DecodeError::Invalid { request_id, reason };
    if frame.response_type() != wire::ResponseBody::NONE {
        return Err(invalid(
            "a request frame must not carry a response".to_owned(),
        ));
    }
    // After the verifier, a known union tag always has its table; the `None` arms only
    // keep this function total.
    let missing_table = || invalid("union tag without its table".to_owned());
    let op = match frame.request_type() {
        wire::RequestBody::Get => {
            let get = frame.request_as_get().ok_or_else(missing_table)?;
            Op::Get {
                key: checked_key(get.key(), limits, request_id)?,
                consistency: consistency_from_wire(get.consistency(), get.consistency_count())
                    .map_err(invalid)?,
            }
        }
        wire::RequestBody::Put => {
            let put = frame.request_as_put().ok_or_else(missing_table)?;
            let consistency = consistency_from_wire(put.consistency(), put.consistency_count())
                .map_err(invalid)?;
            let key = checked_key(put.key(), limits, request_id)?;
            if let Some(value) = put.value() {
                if value.len() > limits.max_value_bytes {
                    return Err(invalid(format!(
                        "value of {} bytes exceeds the limit of {} bytes",
                        value.len(),
                        limits.max_value_bytes
                    )));
                }
            }
            Op::Put {
                key,
                value: required_bytes(put.value(), "value", request_id)?,
                consistency,
                context: optional_bytes(put.context()),
                sloppy_quorum: put.sloppy_quorum(),
            }
        }
        wire::RequestBody::Delete => {
            let delete = frame.request_as_delete().ok_or_else(missing_table)?;
            Op::Delete {
                key: checked_key(delete.key(), limits, request_id)?,
                consistency: consistency_from_wire(
                    delete.consistency(),
                    delete.consistency_count(),
                )
                .map_err(invalid)?,
                context: optional_bytes(delete.context()),
                sloppy_quorum: delete.sloppy_quorum(),
            }
        }
        wire::RequestBody::Ping => Op::Ping,
        wire::RequestBody::Topology => Op::Topology,
        wire::RequestBody::ReplicaWrite => {
            let write = frame.request_as_replica_write().ok_or_else(missing_table)?;
            Op::ReplicaWrite {
                key: checked_key(write.key(), limits, request_id)?,
                // A state holds the value (or siblings); the frame limit bounds it.
                state: required_bytes(write.state(), "state", request_id)?,
            }
        }
        wire::RequestBody::ReplicaRead => {
            let read = frame.request_as_replica_read().ok_or_else(missing_table)?;
            Op::ReplicaRead {
                key: checked_key(read.key(), limits, request_id)?,
            }
        }
        wire::RequestBody::Auth => {
            let auth = frame.request_as_auth().ok_or_else(missing_table)?;
            Op::Auth {
                token: bounded_bytes(auth.token(), "token", AUTH_TOKEN_BYTES_MAX, request_id)?,
            }
        }
        wire::RequestBody::PeerHandshake => {
            let handshake = frame
                .request_as_peer_handshake()
                .ok_or_else(missing_table)?;
            Op::PeerHandshake {
                message: bounded_bytes(
                    handshake.message(),
                    "message",
                    PEER_HANDSHAKE_BYTES_MAX,
                    request_id,
                )?,
            }
        }
        wire::RequestBody::Gossip => {
            let gossip = frame.request_as_gossip().ok_or_else(missing_table)?;
            Op::Gossip(gossip_from_wire(gossip).map_err(invalid)?)
        }
        wire::RequestBody::HintReplay => {
            let hint = frame.request_as_hint_replay().ok_or_else(missing_table)?;
            Op::HintReplay {
                key: checked_key(hint.key(), limits, request_id)?,
                // As for ReplicaWrite, the frame limit bounds the state.
                state: required_bytes(hint.state(), "state", request_id)?,
                target_node_id: hint.target_node_id(),
            }
        }
        wire::RequestBody::StreamRange => {
            let range = frame.request_as_stream_range().ok_or_else(missing_table)?;
            let after_key = match range.after_key() {
                None => None,
                Some(_) => Some(checked_key(range.after_key(), limits, request_id)?),
            };
            Op::StreamRange {
                start_exclusive: range.start_exclusive(),
                end_inclusive: range.end_inclusive(),
                after_key,
                limit_keys: range.limit_keys(),
                limit_bytes: range.limit_bytes(),
            }
        }
        wire::RequestBody::Decommission => Op::Decommission,
        wire::RequestBody::Repair => Op::Repair,
        wire::RequestBody::NONE => return Err(invalid("frame carries no request".to_owned())),
        // A newer client's operation: answer BadRequest for it, keep the connection.
        wire::RequestBody(unknown) => {
            return Err(invalid(format!("unknown request type {unknown}")))
        }
    };
    Ok(Request { request_id, op })
}

/// Decodes one response frame body (the bytes after the length prefix), verifying it.
/// The caller bounds the frame size with [`super::frame::next_frame`].
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    let frame = verified_frame(body, usize::MAX)?;
    let request_id = frame.request_id();
    let invalid = |reason: String| DecodeError::Invalid { request_id, reason };
    if frame.request_type() != wire::RequestBody::NONE {
        return Err(invalid(
            "a response frame must not carry a request".to_owned(),
        ));
    }
    let missing_table = || invalid("union tag without its table".to_owned());
    let body = match frame.response_type() {
        wire::ResponseBody::Value => {
            let value = frame.response_as_value().ok_or_else(missing_table)?;
            let values = match value.values() {
                None => Vec::new(),
                Some(blobs) => {
                    let mut values = Vec::with_capacity(blobs.len());
                    for blob in blobs {
                        values.push(required_bytes(blob.data(), "Blob.data", request_id)?);
                    }
                    values
                }
            };
            Reply::Value {
                values,
                context: optional_bytes(value.context()),
            }
        }
        wire::ResponseBody::Done => {
            // A Done without its table is read as a plain Done, as before the timestamp.
            match frame.response_as_done().map_or(0, |done| done.timestamp()) {
                0 => Reply::Done,
                timestamp => Reply::Written { timestamp },
            }
        }
        wire::ResponseBody::Pong => Reply::Pong,
        wire::ResponseBody::TopologyReply => {
            let reply = frame
                .response_as_topology_reply()
                .ok_or_else(missing_table)?;
            let mut nodes = Vec::new();
            if let Some(wire_nodes) = reply.nodes() {
                nodes.reserve_exact(wire_nodes.len());
                for node in wire_nodes {
                    let address = node
                        .address()
                        .ok_or_else(|| invalid("node without address".to_owned()))?;
                    nodes.push(NodeInfo {
                        node_id: node.node_id(),
                        address: address.to_owned(),
                        shard_count: node.shard_count(),
                        shard_port_base: node.shard_port_base(),
                        status: node_status_from_wire(node.status()).map_err(invalid)?,
                        up: node.up(),
                        tokens: node.tokens().map_or_else(Vec::new, |t| t.iter().collect()),
                        load_bytes: node.load_bytes(),
                        hints: HintSummary {
                            pending: node.hints_pending(),
                            pending_bytes: node.hints_pending_bytes(),
                            oldest_created_ms: node.hints_oldest_created_ms(),
                            skipped: node.hints_skipped(),
                            needs_repair: node.hints_needs_repair(),
                        },
                    });
                }
            }
            Reply::Topology(Topology {
                nodes,
                replication_factor: reply.replication_factor(),
            })
        }
        wire::ResponseBody::ReplicaState => {
            let state = frame
                .response_as_replica_state()
                .ok_or_else(missing_table)?;
            Reply::ReplicaState {
                state: optional_bytes(state.state()),
            }
        }
        wire::ResponseBody::Error => {
            let error = frame.response_as_error().ok_or_else(missing_table)?;
            let message = || error.message().unwrap_or_default().to_owned();
            Reply::Error(match error.kind() {
                wire::ErrorKind::BadRequest => ErrorReply::BadRequest { message: message() },
                wire::ErrorKind::Unavailable => ErrorReply::Unavailable {
                    required: error.required(),
                    alive: error.alive(),
                },
                wire::ErrorKind::Timeout => ErrorReply::Timeout {
                    required: error.required(),
                    acked: error.acked(),
                },
                wire::ErrorKind::Overloaded => ErrorReply::Overloaded,
                wire::ErrorKind::Unauthorized => ErrorReply::Unauthorized,
                wire::ErrorKind::Internal => ErrorReply::Internal { message: message() },
                // A newer server's error kind is still an error for this request.
                wire::ErrorKind(unknown) => ErrorReply::Internal {
                    message: format!("error of unknown kind {unknown}: {}", message()),
                },
            })
        }
        wire::ResponseBody::PeerHandshake => {
            let handshake = frame
                .response_as_peer_handshake()
                .ok_or_else(missing_table)?;
            Reply::PeerHandshake {
                message: bounded_bytes(
                    handshake.message(),
                    "message",
                    PEER_HANDSHAKE_BYTES_MAX,
                    request_id,
                )?,
            }
        }
        wire::ResponseBody::Gossip => {
            let gossip = frame.response_as_gossip().ok_or_else(missing_table)?;
            Reply::Gossip(gossip_from_wire(gossip).map_err(invalid)?)
        }
        wire::ResponseBody::StreamBatch => {
            let batch = frame.response_as_stream_batch().ok_or_else(missing_table)?;
            let mut entries = Vec::new();
            if let Some(wire_entries) = batch.entries() {
                entries.reserve_exact(wire_entries.len());
                for entry in wire_entries {
                    entries.push((
                        required_bytes(entry.key(), "StreamEntry.key", request_id)?,
                        required_bytes(entry.state(), "StreamEntry.state", request_id)?,
                    ));
                }
            }
            Reply::StreamBatch {
                entries,
                more: batch.more(),
            }
        }
        wire::ResponseBody::Decommissioned => {
            let moved = frame
                .response_as_decommissioned()
                .ok_or_else(missing_table)?;
            Reply::Decommissioned(MovedStats {
                keys_streamed: moved.keys_streamed(),
                bytes_streamed: moved.bytes_streamed(),
                duration_ms: moved.duration_ms(),
            })
        }
        wire::ResponseBody::Repaired => {
            let stats = frame.response_as_repaired().ok_or_else(missing_table)?;
            Reply::Repaired(RepairStats {
                ranges: stats.ranges(),
                keys_pulled: stats.keys_pulled(),
                keys_pushed: stats.keys_pushed(),
                bytes_streamed: stats.bytes_streamed(),
                duration_ms: stats.duration_ms(),
            })
        }
        wire::ResponseBody::NONE => return Err(invalid("frame carries no response".to_owned())),
        wire::ResponseBody(unknown) => {
            return Err(invalid(format!("unknown response type {unknown}")))
        }
    };
    Ok(Response { request_id, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden frames: a `Ping` request with id 1, a `Get{"hello", Quorum}` request with id
    /// 0x0102030405060708, a `Value{["world"]}` response with id 7. Decoding them must
    /// keep working forever (old clients); encoding must reproduce them unless the
    /// pinned flatbuffers builder changes its layout (then update only the encode half,
    /// after checking that the decode half still passes).
    const GOLDEN_PING: [u8; 52] = [
        48, 0, 0, 0, 20, 0, 0, 0, 82, 75, 86, 49, 0, 0, 10, 0, 20, 0, 12, 0, 7, 0, 8, 0, 10, 0, 0,
        0, 0, 0, 0, 4, 16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 4, 0, 4, 0, 0, 0,
    ];
    const GOLDEN_GET: [u8; 76] = [
        72, 0, 0, 0, 20, 0, 0, 0, 82, 75, 86, 49, 0, 0, 10, 0, 20, 0, 12, 0, 7, 0, 8, 0, 10, 0, 0,
        0, 0, 0, 0, 1, 20, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 8, 0, 12, 0, 8, 0, 7, 0, 8, 0, 0, 0, 0,
        0, 0, 3, 4, 0, 0, 0, 5, 0, 0, 0, 104, 101, 108, 108, 111, 0, 0, 0,
    ];
    const GOLDEN_VALUE: [u8; 100] = [
        96, 0, 0, 0, 28, 0, 0, 0, 82, 75, 86, 49, 0, 0, 0, 0, 0, 0, 14, 0, 24, 0, 12, 0, 0, 0, 0,
        0, 7, 0, 8, 0, 14, 0, 0, 0, 0, 0, 0, 1, 16, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        238, 255, 255, 255, 4, 0, 0, 0, 1, 0, 0, 0, 12, 0, 0, 0, 0, 0, 6, 0, 8, 0, 4, 0, 6, 0, 0,
        0, 4, 0, 0, 0, 5, 0, 0, 0, 119, 111, 114, 108, 100, 0, 0, 0,
    ];

    /// A `Gossip(Syn { from: 2, "n2:7400", digests: [(1, 5, 9)] })` request with id 3.
    const GOLDEN_GOSSIP_SYN: [u8; 164] = [
        160, 0, 0, 0, 20, 0, 0, 0, 82, 75, 86, 49, 0, 0, 10, 0, 24, 0, 12, 0, 7, 0, 8, 0, 10, 0, 0,
        0, 0, 0, 0, 10, 24, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 14, 0, 7, 0, 8, 0,
        8, 0, 0, 0, 0, 0, 0, 1, 16, 0, 0, 0, 0, 0, 10, 0, 20, 0, 12, 0, 4, 0, 8, 0, 10, 0, 0, 0,
        68, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 10, 0, 32,
        0, 4, 0, 12, 0, 20, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 110, 50, 58, 55, 52, 48, 48, 0,
    ];

    fn golden_gossip_syn() -> Request {
        Request {
            request_id: 3,
            op: Op::Gossip(GossipMessage::Syn(Syn {
                from: 2,
                from_address: "n2:7400".to_owned(),
                digests: vec![Digest {
                    id: 1,
                    generation: 5,
                    version: 9,
                }],
            })),
        }
    }

    fn golden_get() -> Request {
        Request {
            request_id: 0x0102_0304_0506_0708,
            op: Op::Get {
                key: b"hello".to_vec(),
                consistency: Some(Consistency::Quorum),
            },
        }
    }

    fn golden_value() -> Response {
        Response {
            request_id: 7,
            body: Reply::Value {
                values: vec![b"world".to_vec()],
                context: None,
            },
        }
    }

    #[test]
    fn golden_frames_decode() {
        let limits = Limits::default();
        assert_eq!(
            decode_request(&GOLDEN_PING[4..], &limits),
            Ok(Request {
                request_id: 1,
                op: Op::Ping
            })
        );
        assert_eq!(decode_request(&GOLDEN_GET[4..], &limits), Ok(golden_get()));
        assert_eq!(decode_response(&GOLDEN_VALUE[4..]), Ok(golden_value()));
        assert_eq!(
            decode_request(&GOLDEN_GOSSIP_SYN[4..], &limits),
            Ok(golden_gossip_syn())
        );
    }

    #[test]
    fn golden_frames_encode() {
        let mut encoder = Encoder::new();
        let mut out = Vec::new();
        encoder.encode_request(
            &Request {
                request_id: 1,
                op: Op::Ping,
            },
            &mut out,
        );
        assert_eq!(out, GOLDEN_PING);
        out.clear();
        encoder.encode_request(&golden_get(), &mut out);
        assert_eq!(out, GOLDEN_GET);
        out.clear();
        encoder.encode_response(&golden_value(), &mut out);
        assert_eq!(out, GOLDEN_VALUE);
        out.clear();
        encoder.encode_request(&golden_gossip_syn(), &mut out);
        assert_eq!(out, GOLDEN_GOSSIP_SYN);
    }

    /// Builds a request frame body by hand, to send what our encoder never would.
    fn hand_built(
        request_id: u64,
        build: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (
            wire::RequestBody,
            Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
        ),
    ) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let (request_type, request) = build(&mut builder);
        let frame = wire::Frame::create(
            &mut builder,
            &wire::FrameArgs {
                request_id,
                request_type,
                request,
                ..Default::default()
            },
        );
        wire::finish_frame_buffer(&mut builder, frame);
        builder.finished_data().to_vec()
    }

    fn get_frame(
        request_id: u64,
        key: Option<&[u8]>,
        level: wire::Consistency,
        count: u8,
    ) -> Vec<u8> {
        hand_built(request_id, |builder| {
            let key = key.map(|k| builder.create_vector(k));
            let get = wire::Get::create(
                builder,
                &wire::GetArgs {
                    key,
                    consistency: level,
                    consistency_count: count,
                },
            );
            (wire::RequestBody::Get, Some(get.as_union_value()))
        })
    }

    fn assert_invalid(result: Result<Request, DecodeError>, id: u64, needle: &str) {
        match result {
            Err(DecodeError::Invalid { request_id, reason }) => {
                assert_eq!(request_id, id);
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
            }
            other => panic!("expected Invalid({needle}), got {other:?}"),
        }
    }

    #[test]
    fn missing_fields_are_invalid_not_malformed() {
        let limits = Limits::default();
        assert_invalid(
            decode_request(&get_frame(5, None, wire::Consistency::Default, 0), &limits),
            5,
            "missing field key",
        );
        let put_without_value = hand_built(6, |builder| {
            let key = builder.create_vector(b"k".as_slice());
            let put = wire::Put::create(
                builder,
                &wire::PutArgs {
                    key: Some(key),
                    ..Default::default()
                },
            );
            (wire::RequestBody::Put, Some(put.as_union_value()))
        });
        assert_invalid(decode_request(&put_without_value, &limits), 6, "value");
        let empty = hand_built(8, |_| (wire::RequestBody::NONE, None));
        assert_invalid(decode_request(&empty, &limits), 8, "no request");
    }

    #[test]
    fn consistency_rules() {
        let limits = Limits::default();
        let decode =
            |level, count| decode_request(&get_frame(3, Some(b"k"), level, count), &limits);
        assert_invalid(decode(wire::Consistency::Count, 0), 3, "consistency_count");
        assert_invalid(decode(wire::Consistency::One, 2), 3, "consistency_count");
        assert_invalid(
            decode(wire::Consistency::Default, 2),
            3,
            "consistency_count",
        );
        assert_invalid(decode(wire::Consistency(99), 0), 3, "unknown consistency");
        let get = decode(wire::Consistency::Count, 3).unwrap();
        assert_eq!(
            get.op,
            Op::Get {
                key: b"k".to_vec(),
                consistency: Some(Consistency::Count(3))
            }
        );
        let get = decode(wire::Consistency::Default, 0).unwrap();
        assert!(matches!(
            get.op,
            Op::Get {
                consistency: None,
                ..
            }
        ));
    }

    #[test]
    fn unknown_union_member_is_invalid_and_keeps_the_connection() {
        // What a newer client's op looks like to this server: a tag past the end of the
        // union with some table behind it.
        let body = hand_built(42, |builder| {
            let ping = wire::Ping::create(builder, &wire::PingArgs {});
            (wire::RequestBody(200), Some(ping.as_union_value()))
        });
        let err = decode_request(&body, &Limits::default()).unwrap_err();
        assert_eq!(err.request_id(), 42);
        assert!(!err.closes_connection());
        assert!(
            err.to_string().contains("unknown request type 200"),
            "{err}"
        );
    }

    #[test]
    fn unknown_error_kind_reads_as_internal() {
        let mut builder = FlatBufferBuilder::new();
        let message = builder.create_string("new kind");
        let error = wire::Error::create(
            &mut builder,
            &wire::ErrorArgs {
                kind: wire::ErrorKind(77),
                message: Some(message),
                ..Default::default()
            },
        );
        let frame = wire::Frame::create(
            &mut builder,
            &wire::FrameArgs {
                request_id: 11,
                response_type: wire::ResponseBody::Error,
                response: Some(error.as_union_value()),
                ..Default::default()
            },
        );
        wire::finish_frame_buffer(&mut builder, frame);
        let response = decode_response(builder.finished_data()).unwrap();
        assert_eq!(response.request_id, 11);
        match response.body {
            Reply::Error(ErrorReply::Internal { message }) => {
                assert!(
                    message.contains("77") && message.contains("new kind"),
                    "{message}"
                )
            }
            other => panic!("expected Internal, got {other:?}"),
        }
    }

    #[test]
    fn wrong_magic_or_garbage_is_malformed() {
        let limits = Limits::default();
        let mut body = GOLDEN_PING[4..].to_vec();
        body[4..8].copy_from_slice(b"RKV2");
        let err = decode_request(&body, &limits).unwrap_err();
        assert!(err.closes_connection());
        assert_eq!(err.request_id(), 0);
        assert!(err.to_string().contains("identifier"), "{err}");
        for short in [&[][..], &[1], &[0, 0, 0, 0, b'R', b'K', b'V']] {
            assert!(decode_request(short, &limits)
                .unwrap_err()
                .closes_connection());
            assert!(decode_response(short).unwrap_err().closes_connection());
        }
        // Root offset pointing past the end.
        let mut body = GOLDEN_PING[4..].to_vec();
        body[0] = 0xff;
        let err = decode_request(&body, &limits).unwrap_err();
        assert!(err.to_string().contains("verifier"), "{err}");
    }

    /// A client that used FlatBuffers' `finish_size_prefixed` sends a body aligned for
    /// the wrong origin; the verifier refuses it and the error says what to do.
    #[test]
    fn size_prefixed_finish_is_refused_with_a_hint() {
        let mut builder = FlatBufferBuilder::new();
        let ping = wire::Ping::create(&mut builder, &wire::PingArgs {});
        let frame = wire::Frame::create(
            &mut builder,
            &wire::FrameArgs {
                request_id: 5,
                request_type: wire::RequestBody::Ping,
                request: Some(ping.as_union_value()),
                ..Default::default()
            },
        );
        wire::finish_size_prefixed_frame_buffer(&mut builder, frame);
        let err = decode_request(&builder.finished_data()[4..], &Limits::default()).unwrap_err();
        assert!(err.closes_connection());
        assert!(err.to_string().contains("size prefix"), "{err}");
    }

    /// Union member numbers are part of the protocol (schema rule 1): the new ops were
    /// appended, and the old members kept their numbers.
    #[test]
    fn union_member_numbers_are_stable() {
        let requests = [
            (wire::RequestBody::Get, 1),
            (wire::RequestBody::ReplicaRead, 7),
            (wire::RequestBody::Auth, 8),
            (wire::RequestBody::PeerHandshake, 9),
            (wire::RequestBody::Gossip, 10),
            (wire::RequestBody::HintReplay, 11),
        ];
        for (member, number) in requests {
            assert_eq!(member.0, number, "{member:?}");
        }
        let responses = [
            (wire::ResponseBody::Value, 1),
            (wire::ResponseBody::Error, 6),
            (wire::ResponseBody::PeerHandshake, 7),
            (wire::ResponseBody::Gossip, 8),
        ];
        for (member, number) in responses {
            assert_eq!(member.0, number, "{member:?}");
        }
        assert_eq!(wire::GossipMessage::GossipSyn.0, 1);
        assert_eq!(wire::GossipMessage::GossipAck.0, 2);
        assert_eq!(wire::GossipMessage::GossipAck2.0, 3);
    }

    /// A Gossip request frame whose message is built by `build`.
    fn gossip_frame(
        request_id: u64,
        build: impl FnOnce(
            &mut FlatBufferBuilder<'static>,
        ) -> (
            wire::GossipMessage,
            Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
        ),
    ) -> Vec<u8> {
        hand_built(request_id, |builder| {
            let (message_type, message) = build(builder);
            let gossip = wire::Gossip::create(
                builder,
                &wire::GossipArgs {
                    message_type,
                    message,
                },
            );
            (wire::RequestBody::Gossip, Some(gossip.as_union_value()))
        })
    }

    /// An Ack2 carrying one node state with the given address and app states.
    fn ack2_frame(request_id: u64, address: Option<&str>, app_states: &[(&str, &str)]) -> Vec<u8> {
        gossip_frame(request_id, |builder| {
            let mut entries = Vec::new();
            for (key, value) in app_states {
                let key = builder.create_string(key);
                let value = builder.create_string(value);
                entries.push(wire::AppState::create(
                    builder,
                    &wire::AppStateArgs {
                        key: Some(key),
                        value: Some(value),
                    },
                ));
            }
            let app_states = builder.create_vector(&entries);
            let address = address.map(|a| builder.create_string(a));
            let state = wire::GossipNodeState::create(
                builder,
                &wire::GossipNodeStateArgs {
                    node_id: 4,
                    address,
                    app_states: Some(app_states),
                    ..Default::default()
                },
            );
            let deltas = builder.create_vector(&[state]);
            let ack2 = wire::GossipAck2::create(
                builder,
                &wire::GossipAck2Args {
                    from_node_id: 4,
                    deltas: Some(deltas),
                },
            );
            (wire::GossipMessage::GossipAck2, Some(ack2.as_union_value()))
        })
    }

    #[test]
    fn gossip_fields_the_encoder_never_omits_are_checked() {
        let limits = Limits::default();
        assert_invalid(
            decode_request(&ack2_frame(21, None, &[]), &limits),
            21,
            "missing field GossipNodeState.address",
        );
        assert_invalid(
            decode_request(
                &ack2_frame(22, Some("a:1"), &[("k", "1"), ("k", "2")]),
                &limits,
            ),
            22,
            "repeats a key",
        );
        let decoded = decode_request(&ack2_frame(23, Some("a:1"), &[("k", "1")]), &limits);
        match decoded.map(|request| request.op) {
            Ok(Op::Gossip(GossipMessage::Ack2(ack2))) => {
                assert_eq!(ack2.deltas.len(), 1);
                assert_eq!(ack2.deltas[0].address, "a:1");
                assert_eq!(
                    ack2.deltas[0].app_states.get("k").map(String::as_str),
                    Some("1")
                );
                // Absent scalars read as their defaults, absent tokens as none.
                assert_eq!(ack2.deltas[0].status, NodeStatus::Joining);
                assert!(ack2.deltas[0].tokens.is_empty());
            }
            other => panic!("expected an Ack2, got {other:?}"),
        }
        let syn_without_address = gossip_frame(24, |builder| {
            let syn = wire::GossipSyn::create(builder, &wire::GossipSynArgs::default());
            (wire::GossipMessage::GossipSyn, Some(syn.as_union_value()))
        });
        assert_invalid(
            decode_request(&syn_without_address, &limits),
            24,
            "missing field GossipSyn.from_address",
        );
        let empty = gossip_frame(25, |_| (wire::GossipMessage::NONE, None));
        assert_invalid(decode_request(&empty, &limits), 25, "no message");
        // A newer peer's gossip message refuses only that request.
        let newer = gossip_frame(26, |builder| {
            let ping = wire::Ping::create(builder, &wire::PingArgs {});
            (wire::GossipMessage(9), Some(ping.as_union_value()))
        });
        let err = decode_request(&newer, &limits).unwrap_err();
        assert!(!err.closes_connection());
        assert_invalid(Err(err), 26, "unknown gossip message type 9");
    }

    #[test]
    fn new_ops_without_their_byte_fields_are_invalid() {
        let limits = Limits::default();
        let auth = hand_built(31, |builder| {
            let auth = wire::Auth::create(builder, &wire::AuthArgs { token: None });
            (wire::RequestBody::Auth, Some(auth.as_union_value()))
        });
        assert_invalid(decode_request(&auth, &limits), 31, "missing field token");
        let handshake = hand_built(32, |builder| {
            let handshake =
                wire::PeerHandshake::create(builder, &wire::PeerHandshakeArgs { message: None });
            (
                wire::RequestBody::PeerHandshake,
                Some(handshake.as_union_value()),
            )
        });
        assert_invalid(
            decode_request(&handshake, &limits),
            32,
            "missing field message",
        );
        let hint = hand_built(33, |builder| {
            let key = builder.create_vector(b"k".as_slice());
            let hint = wire::HintReplay::create(
                builder,
                &wire::HintReplayArgs {
                    key: Some(key),
                    state: None,
                    target_node_id: 7,
                },
            );
            (wire::RequestBody::HintReplay, Some(hint.as_union_value()))
        });
        assert_invalid(decode_request(&hint, &limits), 33, "missing field state");
    }

    #[test]
    fn malformed_error_answers_bad_request_with_id_zero() {
        let err = DecodeError::Malformed {
            reason: "x".to_owned(),
        };
        let response = err.to_response();
        assert_eq!(response.request_id, 0);
        assert!(matches!(
            response.body,
            Reply::Error(ErrorReply::BadRequest { .. })
        ));
    }
}

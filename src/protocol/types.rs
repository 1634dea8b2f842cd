//! Our own request and response types: what a frame means once decoded and verified.
//! The codec converts between these and FlatBuffers; the rest of ringkv sees only these.
//! Gossip messages are the membership state machine's own types
//! ([`crate::cluster::membership`]), carried as they are.

use crate::cluster::membership::GossipMessage;

/// How many replicas must answer (docs/design.md §1.3). `Count(n)` is an explicit count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    One,
    Two,
    Quorum,
    All,
    Count(u8),
}

impl Consistency {
    /// Replicas required out of `n` (the replica count of the key), before clamping.
    pub fn required(self, n: usize) -> usize {
        match self {
            Consistency::One => 1,
            Consistency::Two => 2,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
            Consistency::Count(c) => usize::from(c),
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Consistency::One),
            "two" => Ok(Consistency::Two),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            other => other
                .parse::<u8>()
                .ok()
                .filter(|n| *n > 0)
                .map(Consistency::Count)
                .ok_or_else(|| {
                    format!("invalid consistency {s:?}: expected one|two|quorum|all or a count")
                }),
        }
    }
}

/// A request frame: the client-chosen id (echoed by the response) and the operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_id: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get {
        key: Vec<u8>,
        consistency: Option<Consistency>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        consistency: Option<Consistency>,
        context: Option<Vec<u8>>,
        /// Override of the server's `sloppy_quorum` for this write; None: its setting.
        sloppy_quorum: Option<bool>,
    },
    Delete {
        key: Vec<u8>,
        consistency: Option<Consistency>,
        context: Option<Vec<u8>>,
        /// As for `Put`.
        sloppy_quorum: Option<bool>,
    },
    Ping,
    Topology,
    /// Peer op: store this encoded `KeyState` for `key` (merged with what is there).
    ReplicaWrite {
        key: Vec<u8>,
        state: Vec<u8>,
    },
    /// Peer op: return the encoded `KeyState` for `key`, if any.
    ReplicaRead {
        key: Vec<u8>,
    },
    /// Client op: present the client auth token (`client_auth_token`). Answered with
    /// `Done`, or `Error(Unauthorized)` for a wrong token.
    Auth {
        token: Vec<u8>,
    },
    /// Peer op: one peer-handshake message, the bytes of an `auth::AuthMessage` (opaque
    /// here). Answered with `Reply::PeerHandshake`.
    PeerHandshake {
        message: Vec<u8>,
    },
    /// Peer op: one gossip message. Answered with `Reply::Gossip` (a Syn's Ack) or
    /// `Done`.
    Gossip(GossipMessage),
    /// Peer op: a mutation replayed from a hint: merge this encoded `KeyState` for `key`
    /// like `ReplicaWrite`. `target_node_id` is the node the hint was stored for.
    HintReplay {
        key: Vec<u8>,
        state: Vec<u8>,
        target_node_id: u64,
    },
    /// Peer op (range streaming): one page of the keys the answering shard holds with a
    /// token in `(start_exclusive, end_inclusive]` (wrapping; equal bounds: the whole
    /// ring), in key order after `after_key`. Answered with `Reply::StreamBatch`.
    StreamRange {
        start_exclusive: u64,
        end_inclusive: u64,
        after_key: Option<Vec<u8>>,
        limit_keys: u32,
        limit_bytes: u32,
    },
    /// Admin op: stream this node's data to the nodes that take over its ranges, then
    /// leave the ring. Answered with `Reply::Decommissioned` when done.
    Decommission,
    /// Admin op: full anti-entropy repair of the ranges this node replicates (pull every
    /// key from the other replicas, then push the merged copy back). Answered with
    /// `Reply::Repaired` when done.
    Repair,
}

impl Op {
    /// Whether this op is for peers only: refused with `Unauthorized` anywhere but on an
    /// authenticated peer connection (and, for `PeerHandshake`, one still handshaking).
    pub fn is_peer_op(&self) -> bool {
        match self {
            Op::ReplicaWrite { .. }
            | Op::ReplicaRead { .. }
            | Op::PeerHandshake { .. }
            | Op::Gossip(_)
            | Op::HintReplay { .. }
            | Op::StreamRange { .. } => true,
            Op::Decommission
            | Op::Repair
            | Op::Get { .. }
            | Op::Put { .. }
            | Op::Delete { .. }
            | Op::Ping
            | Op::Topology
            | Op::Auth { .. } => false,
        }
    }
}

/// A response frame: the echoed request id and the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub request_id: u64,
    pub body: Reply,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Get result. Not found is `values` empty. More than one value means siblings
    /// (causal mode). `context` is opaque to clients (causal mode only).
    Value {
        values: Vec<Vec<u8>>,
        context: Option<Vec<u8>>,
    },
    /// Put/Delete/ReplicaWrite/HintReplay/Auth acknowledged; a Gossip answer with
    /// nothing to send back.
    Done,
    /// Put/Delete acknowledged in LWW mode, answering a request whose context was a
    /// session timestamp ([`super::session::SessionTimestamp`]): `timestamp` is the HLC
    /// timestamp (`conflict::Hlc` as `u64`, never 0) of the version written. On the wire
    /// it is a `Done` whose `timestamp` field is set; a `Done` without it reads back as
    /// [`Reply::Done`], so clients that never send a session timestamp never see this.
    Written {
        timestamp: u64,
    },
    Pong,
    Topology(Topology),
    /// ReplicaRead result: the encoded `KeyState`, or None.
    ReplicaState {
        state: Option<Vec<u8>>,
    },
    Error(ErrorReply),
    /// PeerHandshake answer: the bytes of the next `auth::AuthMessage`.
    PeerHandshake {
        message: Vec<u8>,
    },
    /// Gossip answer: the next message of the round (an Ack to a Syn).
    Gossip(GossipMessage),
    /// StreamRange answer: (key, encoded `KeyState`) in key order; `more`: ask again
    /// after the last key.
    StreamBatch {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
    },
    /// Decommission answer: key copies and bytes sent to the new owners, and how long
    /// the streaming took.
    Decommissioned(MovedStats),
    /// Repair answer: what the repair pulled and pushed.
    Repaired(RepairStats),
}

/// What one streaming (a join or a decommission) moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MovedStats {
    pub keys_streamed: u64,
    pub bytes_streamed: u64,
    pub duration_ms: u64,
}

/// What one repair moved: ranges repaired, key states pulled from the other replicas
/// (each page of each replica counted), key copies pushed to them (a key pushed to two
/// replicas counts twice), the bytes of both, and how long it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairStats {
    pub ranges: u64,
    pub keys_pulled: u64,
    pub keys_pushed: u64,
    pub bytes_streamed: u64,
    pub duration_ms: u64,
}

/// Typed errors (docs/design.md §1.6, §3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorReply {
    BadRequest { message: String },
    Unavailable { required: u32, alive: u32 },
    Timeout { required: u32, acked: u32 },
    Overloaded,
    Unauthorized,
    Internal { message: String },
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorReply::BadRequest { message } => write!(f, "bad request: {message}"),
            ErrorReply::Unavailable { required, alive } => {
                write!(
                    f,
                    "unavailable: {required} replicas required, {alive} alive"
                )
            }
            ErrorReply::Timeout { required, acked } => {
                write!(
                    f,
                    "timeout: {required} replicas required, {acked} acknowledged"
                )
            }
            ErrorReply::Overloaded => write!(f, "overloaded"),
            ErrorReply::Unauthorized => write!(f, "unauthorized"),
            ErrorReply::Internal { message } => write!(f, "internal error: {message}"),
        }
    }
}

/// The cluster as one node sees it: enough for a client to route each request to the
/// owning shard of a replica.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Topology {
    pub nodes: Vec<NodeInfo>,
    pub replication_factor: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: u64,
    /// Client address `host:port`.
    pub address: String,
    pub shard_count: u32,
    /// Port of shard s is `shard_port_base + s`.
    pub shard_port_base: u16,
    pub status: NodeStatus,
    pub up: bool,
    pub tokens: Vec<u64>,
    /// Bytes of data stored (all shards).
    pub load_bytes: u64,
    /// Hints the answering node holds for this node (all its shards).
    pub hints: HintSummary,
}

/// Hinted-handoff state one node reports about a target node in a `Topology` reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintSummary {
    pub pending: u64,
    pub pending_bytes: u64,
    /// Creation time (Unix ms) of the oldest pending hint; 0 when none.
    pub oldest_created_ms: u64,
    /// Writes not hinted because of `max_hint_window` or `max_hints_bytes`.
    pub skipped: u64,
    /// A skipped write left this node needing repair (a QUORUM read of the key, or
    /// `ringkv repair`, brings it up to date).
    pub needs_repair: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    Joining,
    Normal,
    Leaving,
    Left,
}

//! The simulated network: what a message between two nodes suffers (delay, jitter and
//! so reordering, loss, duplication) and which directed links are cut. It owns only
//! link state and the per-message dice; scheduling the delivery is the world's job.
//!
//! Cuts are counted per directed link, so overlapping faults (a partition during a
//! swizzle) compose: a link carries traffic again only when every fault that cut it
//! has restored it. A node's messages to itself (loopback) never suffer faults.

use ringkv::cluster::membership::GossipMessage;
use ringkv::cluster::{NodeId, RngLike, SplitMix64};
use ringkv::conflict::KeyState;
use std::collections::BTreeMap;

use crate::store::Key;

/// What travels between nodes. No serialization: the state machines' own types.
#[derive(Clone, Debug)]
pub enum Payload {
    Gossip(GossipMessage),
    /// A replica write. `request` is Some for coordinated writes (answer with
    /// `WriteAck` once durable) and None for read repairs (no answer).
    Write {
        request: Option<u64>,
        key: Key,
        state: KeyState,
    },
    WriteAck {
        request: u64,
    },
    Read {
        request: u64,
        key: Key,
    },
    ReadReply {
        request: u64,
        state: Option<KeyState>,
    },
    /// A mutation for `target` (`Op::HintReplay` in the server): the receiver applies it
    /// if it is `target` (a replayed hint), or stores it as a durable hint for `target`
    /// (a sloppy-quorum stand-in). Answered with `HintAck` once durable, or refused.
    Hint {
        origin: HintOrigin,
        target: NodeId,
        key: Key,
        state: KeyState,
    },
    /// The answer to `Hint`: `ok` once the mutation (or the stand-in's hint) is durable;
    /// false when the stand-in's hint bounds refused it.
    HintAck {
        origin: HintOrigin,
        ok: bool,
    },
}

/// Who is waiting for a `Hint`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintOrigin {
    /// The sender's hint log id: a replay its `HintBook` tracks.
    Replay(u64),
    /// The sender's coordinated write request: a stand-in hint that counts toward W.
    StandIn(u64),
}

impl HintOrigin {
    fn id(self) -> u64 {
        match self {
            HintOrigin::Replay(id) => id << 1,
            HintOrigin::StandIn(request) => (request << 1) | 1,
        }
    }
}

impl Payload {
    /// Compact tag for the event log hash.
    pub fn tag(&self) -> u64 {
        match self {
            Payload::Gossip(GossipMessage::Syn(_)) => 1,
            Payload::Gossip(GossipMessage::Ack(_)) => 2,
            Payload::Gossip(GossipMessage::Ack2(_)) => 3,
            Payload::Write { .. } => 4,
            Payload::WriteAck { .. } => 5,
            Payload::Read { .. } => 6,
            Payload::ReadReply { .. } => 7,
            Payload::Hint { .. } => 8,
            Payload::HintAck { .. } => 9,
        }
    }

    /// The request/hint id carried, for the event log hash.
    pub fn id(&self) -> u64 {
        match self {
            Payload::Gossip(_) => 0,
            Payload::Write { request, .. } => request.unwrap_or(0),
            Payload::WriteAck { request }
            | Payload::Read { request, .. }
            | Payload::ReadReply { request, .. } => *request,
            Payload::Hint { origin, .. } | Payload::HintAck { origin, .. } => origin.id(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub payload: Payload,
}

/// Per-run network fault rates, drawn from the seed.
#[derive(Clone, Debug)]
pub struct NetworkFaults {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
}

pub struct Network {
    pub faults: NetworkFaults,
    /// Directed link -> number of active faults cutting it.
    cuts: BTreeMap<(NodeId, NodeId), u32>,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub cut_drops: u64,
}

impl Network {
    pub fn new(faults: NetworkFaults) -> Self {
        assert!(faults.latency_min_ms <= faults.latency_max_ms);
        Self {
            faults,
            cuts: BTreeMap::new(),
            sent: 0,
            lost: 0,
            duplicated: 0,
            cut_drops: 0,
        }
    }

    /// Delays (ms from now) at which copies of one message arrive: none if lost, two
    /// if duplicated. Independent jitter per copy reorders messages on one link.
    pub fn plan(&mut self, rng: &mut SplitMix64, from: NodeId, to: NodeId) -> Vec<u64> {
        self.sent += 1;
        if from == to {
            return vec![0];
        }
        if rng.chance(self.faults.loss_per_mille, 1000) {
            self.lost += 1;
            return Vec::new();
        }
        let (low_ms, spread_ms) = (
            self.faults.latency_min_ms,
            self.faults.latency_max_ms - self.faults.latency_min_ms,
        );
        let first = low_ms + rng.below(spread_ms + 1);
        if rng.chance(self.faults.duplicate_per_mille, 1000) {
            let second = low_ms + rng.below(spread_ms + 1);
            self.duplicated += 1;
            vec![first, second]
        } else {
            vec![first]
        }
    }

    /// Checked at delivery time, so a cut also drops what was already in flight.
    pub fn deliverable(&mut self, from: NodeId, to: NodeId) -> bool {
        let open = from == to || !self.cuts.contains_key(&(from, to));
        if !open {
            self.cut_drops += 1;
        }
        open
    }

    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        *self.cuts.entry((from, to)).or_insert(0) += 1;
    }

    pub fn restore(&mut self, from: NodeId, to: NodeId) {
        if let Some(count) = self.cuts.get_mut(&(from, to)) {
            *count -= 1;
            if *count == 0 {
                self.cuts.remove(&(from, to));
            }
        }
    }

    /// Every fault stops: links restored, no loss or duplication from now on.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.faults.loss_per_mille = 0;
        self.faults.duplicate_per_mille = 0;
    }

    pub fn is_healed(&self) -> bool {
        self.cuts.is_empty()
    }
}

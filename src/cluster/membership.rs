//! Gossiped membership (docs/design.md §6.1): what this node believes about every node of
//! the cluster, and the Scuttlebutt-style three-way exchange that spreads it.
//!
//! Each node owns one [`NodeState`] and is the only one that changes it; every change
//! bumps its `version`, and a restart starts a new `generation` (boot time). A round is
//! `Syn { digests }` → `Ack { deltas, requests }` → `Ack2 { deltas }`, like Cassandra's
//! `GossipDigestSyn/Ack/Ack2`. States merge by [`merge_state`]: higher generation wins,
//! then higher version; a deterministic tie-break on content makes merge a true
//! semilattice (commutative, associative, idempotent) even for malformed input.
//!
//! Liveness: [`Membership`] owns a [`FailureDetector`]. A heartbeat advance of a known
//! node, or any message received directly from it, is evidence it is alive; `tick`
//! convicts nodes whose phi crossed the threshold. Transitions come out as
//! [`Effect::NodeUp`] / [`Effect::NodeDown`] so the driver can publish them (and start
//! hint replay) without polling.
//!
//! Pure state machine: `now_ms` and the RNG are passed in, messages and effects are
//! plain data. It never touches sockets, clocks, files or a global RNG, and never
//! serializes anything (the codec maps these types to FlatBuffers).

use super::failure_detector::{FailureDetector, FailureDetectorConfig};
use super::ring::{NodeId, Ring, RingError, Token, MAX_TOKENS_PER_NODE};
use super::RngLike;
use crate::protocol::types::{NodeInfo, NodeStatus};
use std::collections::{BTreeMap, BTreeSet};

/// Limit on the number of nodes one membership tracks, so a hostile or buggy peer cannot
/// grow it without bound; states of further unknown nodes are ignored.
pub const MAX_NODES: usize = 1024;
/// Limit on free-form application states per node and on each key/value length.
pub const MAX_APP_STATES: usize = 64;
pub const MAX_APP_STATE_BYTES: usize = 1024;

/// Everything gossiped about one node (Cassandra's `EndpointState`, flattened: the
/// whole state travels as one delta, which is small at our cluster sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub id: NodeId,
    /// Boot time of the node's current process; a restart starts a new generation.
    pub generation: u64,
    /// Bumped by the owner on every change (heartbeats included) within a generation.
    pub version: u64,
    /// Bumped by the owner once per gossip round; advancing means "still alive".
    pub heartbeat: u64,
    pub status: NodeStatus,
    /// Client address `host:port`; gossip is sent here (the driver maps it to shard 0).
    pub address: String,
    pub shard_count: u32,
    pub shard_port_base: u16,
    /// The node's vnode tokens, sorted.
    pub tokens: Vec<Token>,
    pub load_bytes: u64,
    /// Small named facts that need no field of their own (e.g. `conflict_mode`,
    /// `schema`), compared by the cluster to refuse incompatible joiners.
    pub app_states: BTreeMap<String, String>,
}

impl NodeState {
    /// A fresh state for a node booting with `generation`: joining, no tokens yet.
    pub fn new(id: NodeId, generation: u64, address: impl Into<String>) -> Self {
        Self {
            id,
            generation,
            version: 1,
            heartbeat: 0,
            status: NodeStatus::Joining,
            address: address.into(),
            shard_count: 1,
            shard_port_base: 0,
            tokens: Vec::new(),
            load_bytes: 0,
            app_states: BTreeMap::new(),
        }
    }

    pub fn digest(&self) -> Digest {
        Digest {
            id: self.id,
            generation: self.generation,
            version: self.version,
        }
    }

    /// The total order merge uses: (generation, version) first; the rest only breaks
    /// ties between states that should never differ (same owner, same version).
    fn order_key(&self) -> impl Ord + '_ {
        (
            (self.generation, self.version, self.heartbeat),
            status_rank(self.status),
            &self.address,
            self.shard_count,
            self.shard_port_base,
            &self.tokens,
            self.load_bytes,
            &self.app_states,
        )
    }

    /// Would merging `other` into `self` leave `self`? (i.e. `self` ≥ `other`)
    pub fn supersedes_or_equals(&self, other: &NodeState) -> bool {
        self.order_key() >= other.order_key()
    }

    /// Sanity limits applied to states received from peers.
    fn is_acceptable(&self) -> bool {
        self.tokens.len() <= MAX_TOKENS_PER_NODE
            && self.app_states.len() <= MAX_APP_STATES
            && self
                .app_states
                .iter()
                .all(|(k, v)| k.len() <= MAX_APP_STATE_BYTES && v.len() <= MAX_APP_STATE_BYTES)
            && self.address.len() <= MAX_APP_STATE_BYTES
    }
}

fn status_rank(status: NodeStatus) -> u8 {
    match status {
        NodeStatus::Joining => 0,
        NodeStatus::Normal => 1,
        NodeStatus::Leaving => 2,
        NodeStatus::Left => 3,
    }
}

/// Merge two states of the same node: the one later in (generation, version) order.
pub fn merge_state(a: &NodeState, b: &NodeState) -> NodeState {
    assert_eq!(a.id, b.id, "merging states of different nodes");
    if a.supersedes_or_equals(b) {
        a.clone()
    } else {
        b.clone()
    }
}

/// Merge two views of the cluster node by node (the semilattice gossip converges to).
pub fn merge_view(
    a: &BTreeMap<NodeId, NodeState>,
    b: &BTreeMap<NodeId, NodeState>,
) -> BTreeMap<NodeId, NodeState> {
    let mut out = a.clone();
    for (id, theirs) in b {
        let merged = match out.get(id) {
            Some(ours) => merge_state(ours, theirs),
            None => theirs.clone(),
        };
        out.insert(*id, merged);
    }
    out
}

/// "I know node `id` at (generation, version)". In a request it means "send me your
/// state of `id` if it is newer than this"; an unknown node is requested at (0, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub id: NodeId,
    pub generation: u64,
    pub version: u64,
}

impl Digest {
    fn key(&self) -> (u64, u64) {
        (self.generation, self.version)
    }
}

/// Opens a round: the digests of every state the sender knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syn {
    pub from: NodeId,
    pub from_address: String,
    pub digests: Vec<Digest>,
}

/// Answer to a [`Syn`]: states newer than (or unknown to) the sender, and requests for
/// states the sender has newer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub from: NodeId,
    pub from_address: String,
    pub deltas: Vec<NodeState>,
    pub requests: Vec<Digest>,
}

/// Closes a round: the states the [`Ack`] requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack2 {
    pub from: NodeId,
    pub deltas: Vec<NodeState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipMessage {
    Syn(Syn),
    Ack(Ack),
    Ack2(Ack2),
}

/// Where to send: the node's address, and its id when known (a seed may not be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: Option<NodeId>,
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: Peer,
        msg: GossipMessage,
    },
    /// The state of this node changed (new node, tokens, status, load, ...): rebuild
    /// the ring / publish a snapshot if needed.
    NodeUpdated(NodeId),
    /// The failure detector now believes this node is alive.
    NodeUp(NodeId),
    /// The failure detector convicted this node.
    NodeDown(NodeId),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MembershipConfig {
    /// Seed addresses (`host:port`), used for bootstrap and to heal partitions.
    pub seeds: Vec<String>,
    pub failure_detector: FailureDetectorConfig,
}

/// One node's view of the cluster.
#[derive(Clone, Debug)]
pub struct Membership {
    local_id: NodeId,
    /// Every known state, the local one included.
    states: BTreeMap<NodeId, NodeState>,
    /// Peers the failure detector currently believes alive (never the local node).
    live: BTreeSet<NodeId>,
    seeds: Vec<String>,
    detector: FailureDetector,
}

impl Membership {
    pub fn new(local: NodeState, config: MembershipConfig) -> Self {
        let seeds = config
            .seeds
            .into_iter()
            .filter(|s| *s != local.address)
            .collect();
        let membership = Self {
            local_id: local.id,
            states: BTreeMap::from([(local.id, local)]),
            live: BTreeSet::new(),
            seeds,
            detector: FailureDetector::new(config.failure_detector),
        };
        membership.invariants();
        membership
    }

    /// Seed the view with peers remembered from before a restart
    /// ([`super::known_peers`]). They are known but not up: nothing counts them alive
    /// until gossip hears from them, and `tick` opens exchanges with them (as with any
    /// down peer) so that happens within a round, seeds or not. A state of the local
    /// node, of a node already known, or beyond [`MAX_NODES`] is ignored.
    pub fn restore(&mut self, peers: impl IntoIterator<Item = NodeState>) {
        for state in peers {
            if state.id == self.local_id
                || self.states.contains_key(&state.id)
                || self.states.len() >= MAX_NODES
                || !state.is_acceptable()
            {
                continue;
            }
            self.states.insert(state.id, state);
        }
        self.invariants();
    }

    /// Whether the view holds any node besides this one (learned by gossip or
    /// restored): the node then knows its cluster, rather than only its seeds' names.
    pub fn knows_peers(&self) -> bool {
        self.states.len() > 1
    }

    // ---- queries -------------------------------------------------------------------

    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    pub fn local_state(&self) -> &NodeState {
        &self.states[&self.local_id]
    }

    pub fn state(&self, id: NodeId) -> Option<&NodeState> {
        self.states.get(&id)
    }

    /// Every known state, by node id (the local one included).
    pub fn states(&self) -> &BTreeMap<NodeId, NodeState> {
        &self.states
    }

    /// Believed alive as of the last step (the local node always is).
    pub fn is_up(&self, id: NodeId) -> bool {
        id == self.local_id || self.live.contains(&id)
    }

    /// Peers believed alive, sorted.
    pub fn live_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.live.iter().copied()
    }

    /// Current suspicion of a peer, for `ringkv status`.
    pub fn phi(&self, id: NodeId, now_ms: u64) -> f64 {
        if id == self.local_id {
            0.0
        } else {
            self.detector.phi(id, now_ms)
        }
    }

    /// The ring formed by token owners: nodes in `Normal` or `Leaving` state (a joining
    /// node receives writes for its pending ranges through streaming, not the ring).
    pub fn ring(&self) -> Result<Ring, RingError> {
        Ring::new(
            self.states
                .values()
                .filter(|s| matches!(s.status, NodeStatus::Normal | NodeStatus::Leaving))
                .map(|s| (s.id, s.tokens.as_slice())),
        )
    }

    /// Every known node as the `Topology` / `status` reply shows it.
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        self.states
            .values()
            .map(|s| NodeInfo {
                node_id: s.id,
                address: s.address.clone(),
                shard_count: s.shard_count,
                shard_port_base: s.shard_port_base,
                status: s.status,
                up: self.is_up(s.id),
                tokens: s.tokens.clone(),
                load_bytes: s.load_bytes,
                hints: Default::default(),
            })
            .collect()
    }

    // ---- local changes -------------------------------------------------------------

    /// Apply `change` to the local state and publish it with a new version.
    fn update_local(&mut self, change: impl FnOnce(&mut NodeState)) {
        if let Some(local) = self.states.get_mut(&self.local_id) {
            change(local);
            local.version += 1;
        }
        self.invariants();
    }

    pub fn set_local_status(&mut self, status: NodeStatus) {
        self.update_local(|s| s.status = status);
    }

    pub fn set_local_tokens(&mut self, mut tokens: Vec<Token>) {
        assert!(tokens.len() <= MAX_TOKENS_PER_NODE, "too many local tokens");
        tokens.sort_unstable();
        self.update_local(|s| s.tokens = tokens);
    }

    pub fn set_local_load_bytes(&mut self, load_bytes: u64) {
        self.update_local(|s| s.load_bytes = load_bytes);
    }

    pub fn set_local_app_state(&mut self, key: &str, value: &str) {
        assert!(key.len() <= MAX_APP_STATE_BYTES && value.len() <= MAX_APP_STATE_BYTES);
        self.update_local(|s| {
            s.app_states.insert(key.to_owned(), value.to_owned());
        });
        assert!(self.local_state().app_states.len() <= MAX_APP_STATES);
    }

    // ---- gossip round --------------------------------------------------------------

    /// One gossip round (call every `gossip_interval_ms`): bump the local heartbeat,
    /// convict silent peers, and open exchanges with (Cassandra's choice) one random
    /// live peer, maybe one unreachable peer (probability down / (live + 1)), and a seed
    /// when no live peer is known or, otherwise, with probability seeds / known peers.
    /// At most three `Send`s per round.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngLike) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.update_local(|s| s.heartbeat += 1);

        let convicted: Vec<NodeId> = self
            .live
            .iter()
            .copied()
            .filter(|id| !self.detector.is_up(*id, now_ms))
            .collect();
        for id in convicted {
            self.live.remove(&id);
            effects.push(Effect::NodeDown(id));
        }

        let candidates = |up: bool| -> Vec<NodeId> {
            self.states
                .values()
                .filter(|s| s.id != self.local_id && s.status != NodeStatus::Left)
                .filter(|s| self.live.contains(&s.id) == up)
                .map(|s| s.id)
                .collect()
        };
        let live = candidates(true);
        let down = candidates(false);
        let mut sent_to_seed = false;

        if let Some(&target) = pick(&live, rng) {
            let peer = self.peer_of(target);
            sent_to_seed = self.seeds.contains(&peer.address);
            effects.push(self.syn_to(peer));
        }
        if !down.is_empty() && rng.chance(down.len() as u64, live.len() as u64 + 1) {
            if let Some(&target) = pick(&down, rng) {
                effects.push(self.syn_to(self.peer_of(target)));
            }
        }
        let to_seed = if live.is_empty() {
            true
        } else {
            rng.chance(self.seeds.len() as u64, (live.len() + down.len()) as u64)
        };
        if !sent_to_seed && to_seed {
            if let Some(address) = pick(&self.seeds, rng) {
                let node = self
                    .states
                    .values()
                    .find(|s| s.address == *address)
                    .map(|s| s.id);
                let peer = Peer {
                    node,
                    address: address.clone(),
                };
                effects.push(self.syn_to(peer));
            }
        }
        self.invariants();
        effects
    }

    /// A peer opened a round: answer with what it lacks and ask for what we lack.
    pub fn on_syn(&mut self, now_ms: u64, syn: Syn) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.observe_alive(syn.from, now_ms, &mut effects);
        let mut deltas = Vec::new();
        let mut requests = Vec::new();
        let mut mentioned = BTreeSet::new();
        for digest in syn.digests.iter().take(MAX_NODES) {
            mentioned.insert(digest.id);
            match self.states.get(&digest.id) {
                None => requests.push(Digest {
                    id: digest.id,
                    generation: 0,
                    version: 0,
                }),
                Some(ours) => {
                    let ours_key = (ours.generation, ours.version);
                    if ours_key > digest.key() {
                        deltas.push(ours.clone());
                    } else if ours_key < digest.key() {
                        requests.push(ours.digest());
                    }
                }
            }
        }
        // States the sender has never heard of: send them now rather than waiting for
        // a round in the other direction.
        deltas.extend(
            self.states
                .values()
                .filter(|s| !mentioned.contains(&s.id))
                .cloned(),
        );
        let ack = Ack {
            from: self.local_id,
            from_address: self.local_state().address.clone(),
            deltas,
            requests,
        };
        effects.push(Effect::Send {
            to: Peer {
                node: Some(syn.from),
                address: syn.from_address,
            },
            msg: GossipMessage::Ack(ack),
        });
        self.invariants();
        effects
    }

    /// Our Syn was answered: take the deltas, send back what was requested.
    pub fn on_ack(&mut self, now_ms: u64, ack: Ack) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.apply_deltas(ack.from, ack.deltas, now_ms, &mut effects);
        let mut requested = BTreeSet::new();
        let mut deltas = Vec::new();
        for request in ack.requests.iter().take(MAX_NODES) {
            if let Some(ours) = self.states.get(&request.id) {
                if (ours.generation, ours.version) > request.key() && requested.insert(ours.id) {
                    deltas.push(ours.clone());
                }
            }
        }
        if !deltas.is_empty() {
            effects.push(Effect::Send {
                to: Peer {
                    node: Some(ack.from),
                    address: ack.from_address,
                },
                msg: GossipMessage::Ack2(Ack2 {
                    from: self.local_id,
                    deltas,
                }),
            });
        }
        self.invariants();
        effects
    }

    /// The round is closed: take the requested deltas.
    pub fn on_ack2(&mut self, now_ms: u64, ack2: Ack2) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.apply_deltas(ack2.from, ack2.deltas, now_ms, &mut effects);
        self.invariants();
        effects
    }

    /// Dispatch any gossip message to its handler.
    pub fn on_message(&mut self, now_ms: u64, msg: GossipMessage) -> Vec<Effect> {
        match msg {
            GossipMessage::Syn(syn) => self.on_syn(now_ms, syn),
            GossipMessage::Ack(ack) => self.on_ack(now_ms, ack),
            GossipMessage::Ack2(ack2) => self.on_ack2(now_ms, ack2),
        }
    }

    // ---- internals -----------------------------------------------------------------

    fn peer_of(&self, id: NodeId) -> Peer {
        Peer {
            node: Some(id),
            address: self
                .states
                .get(&id)
                .map(|s| s.address.clone())
                .unwrap_or_default(),
        }
    }

    fn syn_to(&self, to: Peer) -> Effect {
        Effect::Send {
            to,
            msg: GossipMessage::Syn(Syn {
                from: self.local_id,
                from_address: self.local_state().address.clone(),
                digests: self.states.values().map(NodeState::digest).collect(),
            }),
        }
    }

    /// Evidence that `id` is alive now: feed the detector, mark it up if it was not.
    fn observe_alive(&mut self, id: NodeId, now_ms: u64, effects: &mut Vec<Effect>) {
        if id == self.local_id || !self.states.contains_key(&id) {
            return;
        }
        self.detector.report_heartbeat(id, now_ms);
        if self.live.insert(id) {
            effects.push(Effect::NodeUp(id));
        }
    }

    /// Merge received states; `sender`'s own state counts as direct evidence it lives.
    fn apply_deltas(
        &mut self,
        sender: NodeId,
        deltas: Vec<NodeState>,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) {
        for theirs in deltas.into_iter().take(MAX_NODES) {
            if !theirs.is_acceptable() {
                continue;
            }
            let id = theirs.id;
            if id == self.local_id {
                self.on_own_state_echo(&theirs);
                continue;
            }
            match self.states.get(&id) {
                Some(ours) if ours.supersedes_or_equals(&theirs) => {}
                Some(ours) => {
                    let restarted = ours.generation != theirs.generation;
                    let heartbeat_advanced = restarted || theirs.heartbeat > ours.heartbeat;
                    self.states.insert(id, theirs);
                    effects.push(Effect::NodeUpdated(id));
                    if restarted {
                        // A new process: its old inter-arrival history says nothing.
                        self.detector.remove(id);
                    }
                    if heartbeat_advanced {
                        self.observe_alive(id, now_ms, effects);
                    }
                }
                None if self.states.len() >= MAX_NODES => {}
                None => {
                    // Learned second-hand: the state may be stale, so the node is not
                    // marked up until its heartbeat advances or it talks to us.
                    self.states.insert(id, theirs);
                    effects.push(Effect::NodeUpdated(id));
                }
            }
        }
        self.observe_alive(sender, now_ms, effects);
    }

    /// A peer holds a state of *this* node that is newer than ours (we restarted with a
    /// generation not above the last one, e.g. a clock step back). Jump past it so our
    /// real state wins everywhere, rather than ever adopting the stale remote one.
    fn on_own_state_echo(&mut self, theirs: &NodeState) {
        let Some(local) = self.states.get_mut(&self.local_id) else {
            return;
        };
        if (theirs.generation, theirs.version) >= (local.generation, local.version) {
            local.generation = local.generation.max(theirs.generation);
            local.version = theirs.version + 1;
        }
    }

    pub fn invariants(&self) {
        assert!(
            self.states.contains_key(&self.local_id),
            "membership lost its local state"
        );
        assert!(
            self.states.len() <= MAX_NODES,
            "membership exceeds MAX_NODES"
        );
        for (id, state) in &self.states {
            assert_eq!(*id, state.id, "state filed under the wrong id");
            assert!(state.tokens.len() <= MAX_TOKENS_PER_NODE);
        }
        assert!(
            !self.live.contains(&self.local_id),
            "local node in live set"
        );
        assert!(
            self.live.iter().all(|id| self.states.contains_key(id)),
            "live node without a state"
        );
        self.detector.invariants();
    }
}

fn pick<'a, T>(items: &'a [T], rng: &mut impl RngLike) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.below(items.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::SplitMix64;

    fn membership(id: NodeId, seeds: &[&str]) -> Membership {
        let mut state = NodeState::new(id, 100, format!("n{id}"));
        state.status = NodeStatus::Normal;
        state.tokens = vec![id * 1000];
        Membership::new(
            state,
            MembershipConfig {
                seeds: seeds.iter().map(|s| s.to_string()).collect(),
                failure_detector: FailureDetectorConfig::default(),
            },
        )
    }

    fn sends(effects: &[Effect]) -> Vec<(Peer, GossipMessage)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg } => Some((to.clone(), msg.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lonely_node_gossips_to_seed() {
        let mut a = membership(2, &["n1"]);
        let effects = a.tick(0, &mut SplitMix64::new(1));
        let out = sends(&effects);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.address, "n1");
        assert_eq!(out[0].0.node, None);
        assert_eq!(a.local_state().heartbeat, 1);
    }

    #[test]
    fn three_way_exchange_spreads_both_states() {
        let mut a = membership(1, &[]);
        let mut b = membership(2, &["n1"]);
        let syn = sends(&b.tick(0, &mut SplitMix64::new(1))).remove(0).1;
        let ack = sends(&a.on_message(1, syn)).remove(0).1;
        // a learned of b only by b's digest: it asks for b's state.
        let GossipMessage::Ack(ref inner) = ack else {
            panic!("expected Ack, got {ack:?}")
        };
        assert_eq!(inner.requests.len(), 1);
        assert_eq!(inner.deltas.len(), 1); // a's own state, unknown to b
        let effects = b.on_message(2, ack);
        assert!(effects.contains(&Effect::NodeUpdated(1)));
        assert!(effects.contains(&Effect::NodeUp(1)));
        let ack2 = sends(&effects).remove(0).1;
        let effects = a.on_message(3, ack2);
        assert!(effects.contains(&Effect::NodeUpdated(2)));
        assert!(effects.contains(&Effect::NodeUp(2)));
        assert_eq!(a.states(), b.states());
        assert_eq!(a.ring().unwrap().nodes(), &[1, 2]);
    }

    #[test]
    fn restored_peers_are_down_until_heard_and_gossiped_to_without_seeds() {
        let mut b = membership(2, &["n1"]);
        let a_live = {
            let mut a = membership(1, &[]);
            let syn = sends(&b.tick(0, &mut SplitMix64::new(1))).remove(0).1;
            let ack = sends(&a.on_message(1, syn)).remove(0).1;
            let ack2 = sends(&b.on_message(2, ack)).remove(0).1;
            a.on_message(3, ack2);
            a
        };
        // `a` restarts remembering b (an older state of it, as the file keeps it), with
        // no seeds: b is in the view and the ring at once, but not up.
        let remembered = crate::cluster::known_peers::decode(&crate::cluster::known_peers::encode(
            1,
            a_live.states().values(),
        ))
        .unwrap();
        let mut a = membership(1, &[]);
        assert!(!a.knows_peers());
        a.restore(remembered.clone());
        a.restore(remembered); // idempotent
        assert!(a.knows_peers());
        assert!(!a.is_up(2));
        assert_eq!(a.ring().unwrap().nodes(), &[1, 2]);
        assert!(!a.node_infos().iter().find(|n| n.node_id == 2).unwrap().up);
        // Its first round opens an exchange with the down peer (no seed to ask).
        let out = sends(&a.tick(10, &mut SplitMix64::new(5)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.node, Some(2));
        let ack = sends(&b.on_message(11, out[0].1.clone())).remove(0).1;
        let effects = a.on_message(12, ack);
        assert!(effects.contains(&Effect::NodeUp(2)), "{effects:?}");
        assert_eq!(
            a.state(2),
            b.states().get(&2),
            "the live state replaced the restored one"
        );
        // Restoring a stale copy of a known node changes nothing.
        let mut stale = b.local_state().clone();
        stale.version = 0;
        a.restore([stale]);
        assert_eq!(a.state(2), b.states().get(&2));
    }

    #[test]
    fn newer_generation_replaces_and_older_is_ignored() {
        let mut a = membership(1, &[]);
        let mut peer = NodeState::new(2, 100, "n2");
        peer.version = 50;
        a.on_ack2(
            0,
            Ack2 {
                from: 2,
                deltas: vec![peer.clone()],
            },
        );
        let mut restarted = NodeState::new(2, 101, "n2");
        restarted.version = 1;
        a.on_ack2(
            1,
            Ack2 {
                from: 2,
                deltas: vec![restarted.clone()],
            },
        );
        assert_eq!(a.state(2), Some(&restarted));
        a.on_ack2(
            2,
            Ack2 {
                from: 2,
                deltas: vec![peer],
            },
        );
        assert_eq!(a.state(2), Some(&restarted));
    }

    #[test]
    fn stale_echo_of_own_state_makes_local_jump_ahead() {
        let mut a = membership(1, &[]);
        let mut stale = a.local_state().clone();
        stale.version = 500;
        stale.address = "old".into();
        a.on_ack2(
            0,
            Ack2 {
                from: 2,
                deltas: vec![stale.clone()],
            },
        );
        assert_eq!(a.local_state().address, "n1");
        assert!(a.local_state().supersedes_or_equals(&stale));
        assert_ne!(a.local_state(), &stale);
    }

    #[test]
    fn silent_peer_is_convicted_then_revived() {
        let mut a = membership(1, &[]);
        let mut rng = SplitMix64::new(3);
        let mut peer = NodeState::new(2, 100, "n2");
        for i in 0..10u64 {
            peer.heartbeat = i;
            peer.version = i + 1;
            a.on_ack2(
                i * 1000,
                Ack2 {
                    from: 3,
                    deltas: vec![peer.clone()],
                },
            );
            a.tick(i * 1000, &mut rng);
        }
        assert!(a.is_up(2));
        let mut down_at = None;
        for i in 10..60u64 {
            if a.tick(i * 1000, &mut rng).contains(&Effect::NodeDown(2)) {
                down_at = Some(i);
                break;
            }
        }
        let down_at = down_at.expect("peer never convicted");
        assert!(!a.is_up(2));
        peer.heartbeat += 1;
        peer.version += 1;
        let effects = a.on_ack2(
            down_at * 1000 + 500,
            Ack2 {
                from: 3,
                deltas: vec![peer],
            },
        );
        assert!(effects.contains(&Effect::NodeUp(2)));
    }
}

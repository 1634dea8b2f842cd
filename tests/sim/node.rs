//! One simulated node: the real state machines (gossip `Membership` with its phi-accrual
//! detector, `WriteCoordinator` / `ReadCoordinator` per request, the HLC, causal writes
//! and `conflict::merge`) glued to a [`NodeStore`] and a sim-side hint store.
//!
//! This glue is what a production shard driver does, minus sockets: it turns messages
//! and timers into state-machine inputs and their effects into [`Out`]s for the world to
//! schedule. Planted bugs ([`Bugs`]) live here, never in `src/`. The node never reads a
//! clock or an RNG of its own: `now_ms` and the world's seeded RNG come in a [`Ctx`].

use ringkv::cluster::membership::{Ack2, Effect, Peer};
use ringkv::cluster::{
    FailureDetectorConfig, Membership, MembershipConfig, NodeId, NodeState, Ring, RngLike,
    SplitMix64, Token,
};
use ringkv::conflict::{
    self, causal, Actor, CausalContext, CausalState, ConflictMode, Dot, HlcClock, KeyState, LwwCell,
};
use ringkv::coordinator::{ReadCoordinator, ReadEffect, WriteCoordinator, WriteEffect};
use ringkv::protocol::token::token_of;
use ringkv::protocol::types::NodeStatus;
use std::collections::{BTreeMap, BTreeSet};

use crate::client::{OpId, WriteVersion};
use crate::network::{Message, Payload};
use crate::store::{Key, MergeFn, NodeStore};

/// Test-only switches that plant a known bug in the node glue. The simulator must catch
/// each one within a bounded number of seeds (the negative controls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// A replica acks a write as soon as it is applied, before the commit-log sync.
    pub ack_before_sync: bool,
    /// In strict mode, a replica believed down gets a hint that counts toward W.
    pub hints_count_toward_w: bool,
    /// The coordinator drops `Repair` effects.
    pub no_read_repair: bool,
    /// LWW merge returns its first argument when timestamps tie.
    pub merge_ignores_ties: bool,
    /// Causal coordinator creates the dot from the client context alone, ignoring its
    /// local state (so it can reuse a dot it already handed out).
    pub causal_write_ignores_local: bool,
}

impl Bugs {
    pub fn by_name(name: &str) -> Option<Bugs> {
        let mut bugs = Bugs::default();
        match name {
            "" | "none" => {}
            "ack_before_sync" => bugs.ack_before_sync = true,
            "hints_count_toward_w" => bugs.hints_count_toward_w = true,
            "no_read_repair" => bugs.no_read_repair = true,
            "merge_ignores_ties" => bugs.merge_ignores_ties = true,
            "causal_write_ignores_local" => bugs.causal_write_ignores_local = true,
            _ => return None,
        }
        Some(bugs)
    }
}

/// Cluster-wide settings every node shares (drawn from the seed by the world).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub mode: ConflictMode,
    pub replication_factor: usize,
    pub write_required: usize,
    pub read_required: usize,
    pub gossip_interval_ms: u64,
    pub phi_convict_threshold: f64,
    pub request_timeout_ms: u64,
    pub sync_latency_min_ms: u64,
    pub sync_latency_max_ms: u64,
    pub max_hint_window_ms: u64,
    pub hint_replay_batch: usize,
    pub max_siblings: usize,
    pub max_clock_skew_ms: u64,
    /// Physical clock at simulated time 0.
    pub epoch_ms: u64,
    pub seeds: Vec<String>,
    pub bugs: Bugs,
}

impl NodeConfig {
    pub fn merge_fn(&self) -> MergeFn {
        if self.bugs.merge_ignores_ties {
            merge_ignoring_ties
        } else {
            conflict::merge
        }
    }
}

/// Planted bug: on equal LWW timestamps keep `a` instead of the deterministic tie-break.
fn merge_ignoring_ties(a: &KeyState, b: &KeyState) -> KeyState {
    match (a, b) {
        (KeyState::Lww(x), KeyState::Lww(y)) if x.timestamp == y.timestamp => a.clone(),
        _ => conflict::merge(a, b),
    }
}

pub fn address_of(id: NodeId) -> String {
    format!("n{id}")
}

fn id_of(peer: &Peer) -> Option<NodeId> {
    peer.node
        .or_else(|| peer.address.strip_prefix('n').and_then(|s| s.parse().ok()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeTimer {
    Gossip,
    Request(u64),
    SyncDone(u64),
}

/// What the client hears back.
#[derive(Clone, Debug)]
pub enum ClientResult {
    WriteOk,
    WriteFailed,
    Read(Option<KeyState>),
    ReadFailed,
}

/// Effects of a node step, performed by the world.
#[derive(Debug)]
pub enum Out {
    Send(Message),
    Timer { at_ms: u64, timer: NodeTimer },
    Reply { op: OpId, result: ClientResult },
    Stamp { op: OpId, version: WriteVersion },
}

/// Everything a node step may use besides its own state.
pub struct Ctx<'a> {
    pub now_ms: u64,
    pub rng: &'a mut SplitMix64,
    pub out: &'a mut Vec<Out>,
    pub config: &'a NodeConfig,
    /// Source of run-unique request and hint ids.
    pub next_id: &'a mut u64,
}

impl Ctx<'_> {
    fn fresh_id(&mut self) -> u64 {
        *self.next_id += 1;
        *self.next_id
    }
}

struct PendingWrite {
    coordinator: WriteCoordinator,
    key: Key,
    state: KeyState,
    op: OpId,
    /// Replicas already holding a hint for this write (planted bug only).
    hinted: BTreeSet<NodeId>,
}

struct PendingRead {
    coordinator: ReadCoordinator<KeyState>,
    key: Key,
    op: OpId,
}

/// A write for a replica that did not acknowledge it, kept by the coordinator and
/// replayed when gossip believes the replica is up. Sim-side: `src/` has no hints yet.
#[derive(Clone, Debug)]
pub struct Hint {
    pub target: NodeId,
    pub key: Key,
    pub state: KeyState,
    pub created_ms: u64,
    pub in_flight_until_ms: u64,
}

pub struct SimNode {
    pub id: NodeId,
    pub tokens: Vec<Token>,
    pub up: bool,
    pub generation: u64,
    pub skew_ms: i64,
    pub membership: Membership,
    pub clock: HlcClock,
    pub store: Box<dyn NodeStore>,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    /// Answers held until the store makes `seq` durable.
    waiting_for_sync: Vec<(u64, Message)>,
    sync_in_flight: Option<u64>,
    /// Hints are modelled as synced on creation (a hint store fsyncs before counting).
    pub hints: BTreeMap<u64, Hint>,
    pub hints_dropped: u64,
    pub hints_delivered: u64,
    /// The peers table a real node persists (Cassandra's `system.peers`), restored into
    /// a fresh `Membership` on restart.
    peers_table: Vec<NodeState>,
}

impl SimNode {
    pub fn new(
        id: NodeId,
        tokens: Vec<Token>,
        skew_ms: i64,
        generation: u64,
        store: Box<dyn NodeStore>,
        config: &NodeConfig,
    ) -> Self {
        Self {
            id,
            membership: fresh_membership(id, generation, &tokens, config),
            tokens,
            up: true,
            generation,
            skew_ms,
            clock: HlcClock::new(),
            store,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            waiting_for_sync: Vec::new(),
            sync_in_flight: None,
            hints: BTreeMap::new(),
            hints_dropped: 0,
            hints_delivered: 0,
            peers_table: Vec::new(),
        }
    }

    fn physical_ms(&self, ctx: &Ctx<'_>) -> u64 {
        (ctx.config.epoch_ms as i64 + ctx.now_ms as i64 + self.skew_ms).max(0) as u64
    }

    pub fn in_flight_requests(&self) -> usize {
        self.writes.len() + self.reads.len()
    }

    // ---- lifecycle -----------------------------------------------------------------

    /// The process dies: everything in memory is gone, the store loses its unsynced
    /// tail. Hints and the peers table are durable.
    pub fn crash(&mut self, rng: &mut SplitMix64) {
        assert!(self.up, "crashing a node that is down");
        self.up = false;
        self.writes.clear();
        self.reads.clear();
        self.waiting_for_sync.clear();
        self.sync_in_flight = None;
        self.peers_table = self
            .membership
            .states()
            .values()
            .filter(|s| s.id != self.id)
            .cloned()
            .collect();
        self.store.crash(rng);
    }

    /// A new process on the same data, with a new generation.
    pub fn restart(&mut self, generation: u64, now_ms: u64, config: &NodeConfig) {
        assert!(!self.up, "restarting a node that is up");
        assert!(generation > self.generation, "generation must grow");
        self.generation = generation;
        self.membership = fresh_membership(self.id, generation, &self.tokens, config);
        // Restore the peers table: an Ack2 "from ourselves" inserts the states without
        // marking anyone alive (second-hand knowledge), exactly what a reload should do.
        let deltas = std::mem::take(&mut self.peers_table);
        self.membership.on_ack2(
            now_ms,
            Ack2 {
                from: self.id,
                deltas,
            },
        );
        // Resume the HLC above everything handed out before (the high-water mark a real
        // node persists).
        self.clock = HlcClock::starting_after(self.clock.last());
        self.up = true;
    }

    // ---- gossip ----------------------------------------------------------------------

    pub fn on_gossip_tick(&mut self, ctx: &mut Ctx<'_>) {
        let effects = self.membership.tick(ctx.now_ms, ctx.rng);
        self.on_membership_effects(ctx, effects);
        self.replay_hints(ctx);
        ctx.out.push(Out::Timer {
            at_ms: ctx.now_ms + ctx.config.gossip_interval_ms,
            timer: NodeTimer::Gossip,
        });
    }

    fn on_membership_effects(&mut self, ctx: &mut Ctx<'_>, effects: Vec<Effect>) {
        let mut replay = false;
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => {
                    if let Some(to) = id_of(&to) {
                        self.send(ctx, to, Payload::Gossip(msg));
                    }
                }
                Effect::NodeUp(_) => replay = true,
                Effect::NodeUpdated(_) | Effect::NodeDown(_) => {}
            }
        }
        if replay {
            self.replay_hints(ctx);
        }
    }

    fn send(&self, ctx: &mut Ctx<'_>, to: NodeId, payload: Payload) {
        ctx.out.push(Out::Send(Message {
            from: self.id,
            to,
            payload,
        }));
    }

    // ---- messages ----------------------------------------------------------------------

    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        let from = msg.from;
        match msg.payload {
            Payload::Gossip(gossip) => {
                let effects = self.membership.on_message(ctx.now_ms, gossip);
                self.on_membership_effects(ctx, effects);
            }
            Payload::Write {
                request,
                key,
                state,
            } => {
                let seq = self.apply(ctx, &key, &state);
                if let Some(request) = request {
                    self.answer_when_durable(ctx, seq, from, Payload::WriteAck { request });
                }
            }
            Payload::WriteAck { request } => {
                if let Some(pending) = self.writes.get_mut(&request) {
                    let effects = pending.coordinator.on_ack(from);
                    self.on_write_effects(ctx, request, effects);
                }
            }
            Payload::Read { request, key } => {
                let state = self.store.get(&key);
                self.send(ctx, from, Payload::ReadReply { request, state });
            }
            Payload::ReadReply { request, state } => {
                if let Some(pending) = self.reads.get_mut(&request) {
                    let effects = pending.coordinator.on_reply(from, state);
                    self.on_read_effects(ctx, request, effects);
                }
            }
            Payload::Hint { hint, key, state } => {
                let seq = self.apply(ctx, &key, &state);
                self.answer_when_durable(ctx, seq, from, Payload::HintAck { hint });
            }
            Payload::HintAck { hint } => {
                if self.hints.remove(&hint).is_some() {
                    self.hints_delivered += 1;
                }
            }
        }
    }

    /// Merge a received state into the store (the replica side of every write path).
    fn apply(&mut self, ctx: &mut Ctx<'_>, key: &[u8], state: &KeyState) -> u64 {
        // The HLC receive rule; a skewed remote clock is refused, the data is not.
        let physical_ms = self.physical_ms(ctx);
        let _ = self.clock.observe(
            physical_ms,
            state.timestamp_range().1,
            ctx.config.max_clock_skew_ms,
        );
        let seq = self.store.apply(key, state, ctx.config.merge_fn());
        self.start_sync(ctx);
        seq
    }

    fn answer_when_durable(&mut self, ctx: &mut Ctx<'_>, seq: u64, to: NodeId, payload: Payload) {
        let answer = Message {
            from: self.id,
            to,
            payload,
        };
        if ctx.config.bugs.ack_before_sync || self.store.durable_seq() >= seq {
            ctx.out.push(Out::Send(answer));
        } else {
            self.waiting_for_sync.push((seq, answer));
        }
    }

    /// Group commit: one sync in flight at a time; writes that arrive meanwhile wait
    /// for the next one.
    fn start_sync(&mut self, ctx: &mut Ctx<'_>) {
        if self.sync_in_flight.is_some() || self.store.durable_seq() >= self.store.last_seq() {
            return;
        }
        let through = self.store.begin_sync();
        self.sync_in_flight = Some(through);
        let spread = ctx.config.sync_latency_max_ms - ctx.config.sync_latency_min_ms;
        let latency_ms = ctx.config.sync_latency_min_ms + ctx.rng.below(spread + 1);
        ctx.out.push(Out::Timer {
            at_ms: ctx.now_ms + latency_ms,
            timer: NodeTimer::SyncDone(through),
        });
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: NodeTimer) {
        match timer {
            NodeTimer::Gossip => self.on_gossip_tick(ctx),
            NodeTimer::SyncDone(through) => {
                if self.sync_in_flight != Some(through) {
                    return;
                }
                self.sync_in_flight = None;
                self.store.complete_sync(through);
                let durable = self.store.durable_seq();
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_for_sync)
                    .into_iter()
                    .partition(|(seq, _)| *seq <= durable);
                self.waiting_for_sync = waiting;
                for (_, answer) in ready {
                    ctx.out.push(Out::Send(answer));
                }
                self.start_sync(ctx);
            }
            NodeTimer::Request(request) => {
                if let Some(pending) = self.writes.get_mut(&request) {
                    let effects = pending.coordinator.on_timer(ctx.now_ms);
                    self.on_write_effects(ctx, request, effects);
                } else if let Some(pending) = self.reads.get_mut(&request) {
                    let effects = pending.coordinator.on_timer(ctx.now_ms);
                    self.on_read_effects(ctx, request, effects);
                }
            }
        }
    }

    // ---- coordinating ------------------------------------------------------------------

    /// The replicas of `key` as this node's ring sees it.
    pub fn replicas_of(&self, key: &[u8], replication_factor: usize) -> Vec<NodeId> {
        self.ring()
            .map(|ring| ring.replicas(token_of(key), replication_factor))
            .unwrap_or_default()
    }

    pub fn ring(&self) -> Option<Ring> {
        self.membership.ring().ok()
    }

    /// A client put (`Some`) or delete (`None`) coordinated here. In causal mode this
    /// node must be a replica of the key (it creates the dot from its local state).
    pub fn coordinate_write(
        &mut self,
        ctx: &mut Ctx<'_>,
        op: OpId,
        key: Key,
        value: Option<Vec<u8>>,
        client_context: &CausalContext,
    ) {
        let replicas = self.replicas_of(&key, ctx.config.replication_factor);
        let physical_ms = self.physical_ms(ctx);
        let timestamp = self.clock.now(physical_ms);
        let version;
        let state = match ctx.config.mode {
            ConflictMode::Lww => {
                let cell = LwwCell { timestamp, value };
                version = WriteVersion::Lww(cell.clone());
                KeyState::Lww(cell)
            }
            ConflictMode::Causal => {
                assert!(
                    replicas.contains(&self.id),
                    "causal coordinator is not a replica"
                );
                let local = match self.store.get(&key) {
                    Some(KeyState::Causal(state))
                        if !ctx.config.bugs.causal_write_ignores_local =>
                    {
                        state
                    }
                    _ => CausalState::new(),
                };
                let actor = Actor {
                    node_id: self.id,
                    generation: self.generation,
                };
                let written = match causal::write(
                    &local,
                    client_context,
                    actor,
                    timestamp,
                    value,
                    ctx.config.max_siblings,
                ) {
                    Ok(written) => written,
                    Err(_) => {
                        ctx.out.push(Out::Reply {
                            op,
                            result: ClientResult::WriteFailed,
                        });
                        return;
                    }
                };
                let dot = Dot {
                    actor,
                    counter: written.context.max_counter(&actor),
                };
                assert!(written.siblings.iter().any(|s| s.dot == dot));
                version = WriteVersion::Causal {
                    dot,
                    context: client_context.clone(),
                };
                KeyState::Causal(written)
            }
        };
        let request = ctx.fresh_id();
        let sloppy = ctx.config.bugs.hints_count_toward_w;
        let membership = &self.membership;
        let (coordinator, effects) = WriteCoordinator::new(
            &replicas,
            |node| sloppy || membership.is_up(node),
            ctx.config.write_required,
            ctx.now_ms,
            ctx.config.request_timeout_ms,
        );
        let refused = matches!(
            coordinator.outcome(),
            Some(Err(
                ringkv::coordinator::CoordinatorError::Unavailable { .. }
            ))
        );
        if !refused {
            // A refused write went nowhere; its version was never handed out.
            ctx.out.push(Out::Stamp { op, version });
        }
        if ctx.config.mode == ConflictMode::Causal && !refused {
            // Apply locally now, so the next write here sees this dot; the send to
            // ourselves (a replica) acks once it is durable.
            self.apply(ctx, &key, &state);
        }
        self.writes.insert(
            request,
            PendingWrite {
                coordinator,
                key,
                state,
                op,
                hinted: BTreeSet::new(),
            },
        );
        self.on_write_effects(ctx, request, effects);
    }

    fn on_write_effects(&mut self, ctx: &mut Ctx<'_>, request: u64, effects: Vec<WriteEffect>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            let Some(pending) = self.writes.get_mut(&request) else {
                return;
            };
            match effect {
                WriteEffect::Send { to } => {
                    if ctx.config.bugs.hints_count_toward_w && !self.membership.is_up(to) {
                        // Planted bug: the hint stands in for the replica's ack.
                        pending.hinted.insert(to);
                        let (key, state) = (pending.key.clone(), pending.state.clone());
                        queue.extend(pending.coordinator.on_ack(to));
                        self.store_hint(ctx, to, key, state);
                    } else {
                        let payload = Payload::Write {
                            request: Some(request),
                            key: pending.key.clone(),
                            state: pending.state.clone(),
                        };
                        self.send(ctx, to, payload);
                    }
                }
                WriteEffect::SendHint { .. } => {
                    unreachable!("the simulator coordinates strict writes (no fallbacks)")
                }
                WriteEffect::SetTimer { deadline_ms } => ctx.out.push(Out::Timer {
                    at_ms: deadline_ms,
                    timer: NodeTimer::Request(request),
                }),
                WriteEffect::Respond(result) => ctx.out.push(Out::Reply {
                    op: pending.op,
                    result: if result.is_ok() {
                        ClientResult::WriteOk
                    } else {
                        ClientResult::WriteFailed
                    },
                }),
            }
        }
        let finished = self
            .writes
            .get(&request)
            .is_some_and(|p| p.coordinator.is_finished());
        if finished {
            if let Some(done) = self.writes.remove(&request) {
                // Hinted handoff for every replica that did not acknowledge. A write
                // refused as unavailable sent nothing and needs no hint.
                if done.coordinator.outcome().is_some_and(|o| {
                    !matches!(
                        o,
                        Err(ringkv::coordinator::CoordinatorError::Unavailable { .. })
                    )
                }) {
                    for target in done.coordinator.unacked() {
                        if target != self.id && !done.hinted.contains(&target) {
                            self.store_hint(ctx, target, done.key.clone(), done.state.clone());
                        }
                    }
                }
            }
        }
    }

    pub fn coordinate_read(&mut self, ctx: &mut Ctx<'_>, op: OpId, key: Key, required: usize) {
        let replicas = self.replicas_of(&key, ctx.config.replication_factor);
        let request = ctx.fresh_id();
        let membership = &self.membership;
        let (coordinator, effects) = ReadCoordinator::new(
            &replicas,
            |node| membership.is_up(node),
            required,
            ctx.now_ms,
            ctx.config.request_timeout_ms,
            ctx.config.merge_fn(),
        );
        self.reads.insert(
            request,
            PendingRead {
                coordinator,
                key,
                op,
            },
        );
        self.on_read_effects(ctx, request, effects);
    }

    fn on_read_effects(
        &mut self,
        ctx: &mut Ctx<'_>,
        request: u64,
        effects: Vec<ReadEffect<KeyState>>,
    ) {
        let Some(pending) = self.reads.get(&request) else {
            return;
        };
        let (key, op) = (pending.key.clone(), pending.op);
        for effect in effects {
            match effect {
                ReadEffect::Send { to } => self.send(
                    ctx,
                    to,
                    Payload::Read {
                        request,
                        key: key.clone(),
                    },
                ),
                ReadEffect::SetTimer { deadline_ms } => ctx.out.push(Out::Timer {
                    at_ms: deadline_ms,
                    timer: NodeTimer::Request(request),
                }),
                ReadEffect::Respond(result) => ctx.out.push(Out::Reply {
                    op,
                    result: match result {
                        Ok(state) => ClientResult::Read(state),
                        Err(_) => ClientResult::ReadFailed,
                    },
                }),
                ReadEffect::Repair { node, state } => {
                    if !ctx.config.bugs.no_read_repair {
                        let payload = Payload::Write {
                            request: None,
                            key: key.clone(),
                            state,
                        };
                        self.send(ctx, node, payload);
                    }
                }
            }
        }
        if self
            .reads
            .get(&request)
            .is_some_and(|p| p.coordinator.is_finished())
        {
            self.reads.remove(&request);
        }
    }

    // ---- hints -------------------------------------------------------------------------

    fn store_hint(&mut self, ctx: &mut Ctx<'_>, target: NodeId, key: Key, state: KeyState) {
        let id = ctx.fresh_id();
        self.hints.insert(
            id,
            Hint {
                target,
                key,
                state,
                created_ms: ctx.now_ms,
                in_flight_until_ms: 0,
            },
        );
    }

    /// Drop hints older than the window; send a bounded batch of the others whose
    /// target is believed up and that are not already awaiting an ack.
    fn replay_hints(&mut self, ctx: &mut Ctx<'_>) {
        let window_ms = ctx.config.max_hint_window_ms;
        let before = self.hints.len();
        self.hints
            .retain(|_, h| ctx.now_ms.saturating_sub(h.created_ms) <= window_ms);
        self.hints_dropped += (before - self.hints.len()) as u64;
        let mut sent = 0;
        let mut batch = Vec::new();
        for (id, hint) in &mut self.hints {
            if sent == ctx.config.hint_replay_batch {
                break;
            }
            if hint.in_flight_until_ms <= ctx.now_ms && self.membership.is_up(hint.target) {
                hint.in_flight_until_ms = ctx.now_ms + ctx.config.request_timeout_ms;
                batch.push((
                    hint.target,
                    Payload::Hint {
                        hint: *id,
                        key: hint.key.clone(),
                        state: hint.state.clone(),
                    },
                ));
                sent += 1;
            }
        }
        for (to, payload) in batch {
            self.send(ctx, to, payload);
        }
    }
}

fn fresh_membership(
    id: NodeId,
    generation: u64,
    tokens: &[Token],
    config: &NodeConfig,
) -> Membership {
    let mut local = NodeState::new(id, generation, address_of(id));
    local.status = NodeStatus::Normal;
    local.tokens = tokens.to_vec();
    local.app_states.insert(
        "conflict_mode".to_owned(),
        format!("{:?}", config.mode).to_lowercase(),
    );
    let failure_detector = FailureDetectorConfig {
        phi_convict_threshold: config.phi_convict_threshold,
        ..FailureDetectorConfig::for_gossip_interval(config.gossip_interval_ms)
    };
    Membership::new(
        local,
        MembershipConfig {
            seeds: config.seeds.clone(),
            failure_detector,
        },
    )
}

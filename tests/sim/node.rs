//! One simulated node: the real state machines (gossip `Membership` with its phi-accrual
//! detector, `WriteCoordinator` / `ReadCoordinator` per request, strict or sloppy, the
//! HLC, causal writes, `conflict::merge`, and the `HintBook` over a durable `HintLog`)
//! glued to a [`NodeStore`] and [`NodeHints`].
//!
//! This glue is what a production shard driver does, minus sockets: it turns messages
//! and timers into state-machine inputs and their effects into [`Out`]s for the world to
//! schedule. Write coordination mirrors `drive_write` in `src/server/replication.rs`
//! (replicas and sloppy-quorum fallbacks from one ring walk, `SendHint` to stand-ins, a
//! hint stored for every home in `unacked()` once the machine is finished) and hint
//! handling mirrors `src/server/hints.rs` (a `Hint` for this node is applied like a
//! replica write, one for another node is stored and acked once durable; replay as the
//! book says). Planted bugs ([`Bugs`]) live here, never in `src/`. The node never reads a
//! clock or an RNG of its own: `now_ms` and the world's seeded RNG come in a [`Ctx`].

use ringkv::cluster::hints::{Admission, HintLimits, ReplayOutcome};
use ringkv::cluster::membership::{Effect, Peer};
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
use std::collections::BTreeMap;

use crate::client::{OpId, WriteVersion};
use crate::hints::NodeHints;
use crate::network::{HintOrigin, Message, Payload};
use crate::store::{Key, MergeFn, NodeStore};

/// Test-only switches that plant a known bug in the node glue. The simulator must catch
/// each one within a bounded number of seeds (the negative controls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// A replica acks a write as soon as it is applied, before the commit-log sync (and
    /// a stand-in acks its hint before the hint log's sync).
    pub ack_before_sync: bool,
    /// In strict mode, the coordinator still gives down homes sloppy-quorum stand-ins,
    /// whose hint acks count toward W.
    pub hints_count_toward_w: bool,
    /// The coordinator drops `Repair` effects.
    pub no_read_repair: bool,
    /// LWW merge returns its first argument when timestamps tie.
    pub merge_ignores_ties: bool,
    /// Causal coordinator creates the dot from the client context alone, ignoring its
    /// local state (so it can reuse a dot it already handed out).
    pub causal_write_ignores_local: bool,
    /// A hint is taken as delivered as soon as its replay is sent (no ack awaited), so
    /// a lost replay loses the hint.
    pub hint_replay_unacked: bool,
    /// A node with seeds coordinates before it knows any other node (the server before
    /// it persisted its peers and refused to serve until it knew its ring): after a
    /// restart that lost its peers table it acknowledges writes with its own copy.
    pub serve_before_ring_known: bool,
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
            "hint_replay_unacked" => bugs.hint_replay_unacked = true,
            "serve_before_ring_known" => bugs.serve_before_ring_known = true,
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
    /// Coordinators give down homes stand-ins whose hint acks count toward W.
    pub sloppy_quorum: bool,
    pub gossip_interval_ms: u64,
    pub phi_convict_threshold: f64,
    pub request_timeout_ms: u64,
    pub sync_latency_min_ms: u64,
    pub sync_latency_max_ms: u64,
    pub hint_limits: HintLimits,
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
    /// The hint group commit with this tag completed.
    HintSyncDone(u64),
    /// The hint book asked to be polled at this time.
    HintWake(u64),
}

/// What the client hears back.
#[derive(Clone, Debug)]
pub enum ClientResult {
    /// `via_stand_in`: a sloppy-quorum stand-in's hint ack was among the W acks.
    WriteOk {
        via_stand_in: bool,
    },
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
}

struct PendingRead {
    coordinator: ReadCoordinator<KeyState>,
    key: Key,
    op: OpId,
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
    /// The hint book, the durable hint log and the payloads (durable across crashes).
    pub hints: NodeHints,
    /// Crashes that lost hint bookkeeping: writes still being coordinated (their
    /// `unacked()` homes never get a hint) or hint appends not yet durable.
    pub lossy_crashes: u64,
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
            hints: NodeHints::new(config.hint_limits.clone()),
            lossy_crashes: 0,
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

    /// The process dies: everything in memory is gone, the store and the hint log lose
    /// their unsynced tails (the hint log is recovered into a fresh book). The peers
    /// table is durable unless `lose_peers_table` (the file lost or removed while the
    /// node was down: it restarts knowing only its seeds).
    pub fn crash(&mut self, rng: &mut SplitMix64, lose_peers_table: bool) {
        assert!(self.up, "crashing a node that is down");
        self.up = false;
        if !self.writes.is_empty() || self.hints.appends_in_progress() > 0 {
            self.lossy_crashes += 1;
        }
        self.writes.clear();
        self.reads.clear();
        self.waiting_for_sync.clear();
        self.sync_in_flight = None;
        self.peers_table = self
            .membership
            .states()
            .values()
            .filter(|s| s.id != self.id && !lose_peers_table)
            .cloned()
            .collect();
        self.store.crash(rng);
        self.hints.crash(rng);
    }

    /// A new process on the same data, with a new generation.
    pub fn restart(&mut self, generation: u64, now_ms: u64, config: &NodeConfig) {
        assert!(!self.up, "restarting a node that is up");
        assert!(generation > self.generation, "generation must grow");
        self.generation = generation;
        self.membership = fresh_membership(self.id, generation, &self.tokens, config);
        // Restore the peers table as the server does (`peers.toml`): known, not up.
        self.membership
            .restore(std::mem::take(&mut self.peers_table));
        // Resume the HLC above everything handed out before (the high-water mark a real
        // node persists).
        self.clock = HlcClock::starting_after(self.clock.last());
        self.up = true;
        self.sync_hint_targets(now_ms);
    }

    /// Whether this node refuses keyed requests as unavailable (the server's
    /// `replication::placement` rule): it has seeds other than itself and its view holds
    /// no other node, so its ring would be itself alone.
    pub fn refuses_requests(&self, config: &NodeConfig) -> bool {
        let me = address_of(self.id);
        !config.bugs.serve_before_ring_known
            && !self.membership.knows_peers()
            && config.seeds.iter().any(|seed| *seed != me)
    }

    /// Checked by the world after every step of this node.
    pub fn invariants(&mut self) {
        self.hints.check_if_changed();
    }

    // ---- gossip ----------------------------------------------------------------------

    pub fn on_gossip_tick(&mut self, ctx: &mut Ctx<'_>) {
        let effects = self.membership.tick(ctx.now_ms, ctx.rng);
        self.on_membership_effects(ctx, effects);
        self.sync_hint_targets(ctx.now_ms);
        self.pump_hints(ctx);
        ctx.out.push(Out::Timer {
            at_ms: ctx.now_ms + ctx.config.gossip_interval_ms,
            timer: NodeTimer::Gossip,
        });
    }

    fn on_membership_effects(&mut self, ctx: &mut Ctx<'_>, effects: Vec<Effect>) {
        let mut liveness_changed = false;
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => {
                    if let Some(to) = id_of(&to) {
                        self.send(ctx, to, Payload::Gossip(msg));
                    }
                }
                Effect::NodeUp(_) | Effect::NodeDown(_) => liveness_changed = true,
                Effect::NodeUpdated(_) => {}
            }
        }
        if liveness_changed {
            self.sync_hint_targets(ctx.now_ms);
            self.pump_hints(ctx);
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
            Payload::Hint {
                origin,
                target,
                key,
                state,
            } => {
                if target == self.id {
                    // A replayed hint: apply it like a replica write.
                    let seq = self.apply(ctx, &key, &state);
                    let ack = Payload::HintAck { origin, ok: true };
                    self.answer_when_durable(ctx, seq, from, ack);
                } else {
                    // A stand-in for a down home: store a hint, ack once it is durable.
                    self.store_hint(ctx, target, key, state, Some((from, origin)));
                }
            }
            Payload::HintAck { origin, ok } => match origin {
                HintOrigin::Replay(id) => {
                    let outcome = if ok {
                        ReplayOutcome::Acked
                    } else {
                        ReplayOutcome::Failed
                    };
                    self.hints.on_replay_result(id, outcome, ctx.now_ms);
                    self.start_hint_sync(ctx);
                    self.pump_hints(ctx);
                }
                HintOrigin::StandIn(request) => {
                    if let Some(pending) = self.writes.get_mut(&request) {
                        let effects = if ok {
                            pending.coordinator.on_ack(from)
                        } else {
                            pending.coordinator.on_error(from)
                        };
                        self.on_write_effects(ctx, request, effects);
                    }
                }
            },
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
            NodeTimer::HintSyncDone(tag) => {
                for (to, origin) in self.hints.complete_commit(tag) {
                    self.send(ctx, to, Payload::HintAck { origin, ok: true });
                }
                self.start_hint_sync(ctx);
                self.pump_hints(ctx);
            }
            NodeTimer::HintWake(at_ms) => {
                if self.hints.wake_at_ms == Some(at_ms) {
                    self.hints.wake_at_ms = None;
                    self.pump_hints(ctx);
                }
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

    /// The replicas of `key` and, after them, every other node in ring-walk order (the
    /// sloppy-quorum stand-in candidates), as `placement` in the server computes them.
    fn placement(&self, key: &[u8], replication_factor: usize) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut walk = self
            .ring()
            .map(|ring| ring.replicas(token_of(key), usize::MAX))
            .unwrap_or_default();
        let fallbacks = walk.split_off(replication_factor.min(walk.len()));
        (walk, fallbacks)
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
        let (replicas, fallbacks) = self.placement(&key, ctx.config.replication_factor);
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
        let membership = &self.membership;
        // The planted bug (strict runs): hints count toward W. Down homes get stand-ins
        // while alive fallbacks last; the down homes left over are treated as alive, and
        // `on_write_effects` counts a coordinator-side hint as their ack.
        let planted = !ctx.config.sloppy_quorum && ctx.config.bugs.hints_count_toward_w;
        let sloppy = ctx.config.sloppy_quorum || planted;
        let mut pretend_alive: Vec<NodeId> = Vec::new();
        if planted {
            let spare = fallbacks.iter().filter(|&&f| membership.is_up(f)).count();
            let down: Vec<NodeId> = replicas
                .iter()
                .copied()
                .filter(|&n| !membership.is_up(n))
                .collect();
            pretend_alive = down.into_iter().skip(spare).collect();
        }
        let alive = |node| membership.is_up(node) || pretend_alive.contains(&node);
        let (coordinator, effects) = if sloppy {
            WriteCoordinator::new_sloppy(
                &replicas,
                &fallbacks,
                alive,
                ctx.config.write_required,
                ctx.now_ms,
                ctx.config.request_timeout_ms,
            )
        } else {
            WriteCoordinator::new(
                &replicas,
                alive,
                ctx.config.write_required,
                ctx.now_ms,
                ctx.config.request_timeout_ms,
            )
        };
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
                WriteEffect::Send { to }
                    if ctx.config.bugs.hints_count_toward_w
                        && !ctx.config.sloppy_quorum
                        && !self.membership.is_up(to) =>
                {
                    // Planted bug: a coordinator-side hint stands in for the home's ack.
                    let (key, state) = (pending.key.clone(), pending.state.clone());
                    queue.extend(pending.coordinator.on_ack(to));
                    self.store_hint(ctx, to, key, state, None);
                }
                WriteEffect::Send { to } => {
                    let payload = Payload::Write {
                        request: Some(request),
                        key: pending.key.clone(),
                        state: pending.state.clone(),
                    };
                    self.send(ctx, to, payload);
                }
                WriteEffect::SendHint { to, home } => {
                    assert!(
                        ctx.config.sloppy_quorum || ctx.config.bugs.hints_count_toward_w,
                        "a strict write used a stand-in"
                    );
                    let payload = Payload::Hint {
                        origin: HintOrigin::StandIn(request),
                        target: home,
                        key: pending.key.clone(),
                        state: pending.state.clone(),
                    };
                    self.send(ctx, to, payload);
                }
                WriteEffect::SetTimer { deadline_ms } => ctx.out.push(Out::Timer {
                    at_ms: deadline_ms,
                    timer: NodeTimer::Request(request),
                }),
                WriteEffect::Respond(result) => {
                    // Answered on the ack that reached W: `acked()` is exactly those W.
                    let coordinator = &pending.coordinator;
                    let via_stand_in = coordinator
                        .acked()
                        .iter()
                        .any(|n| coordinator.stand_ins().iter().any(|(s, _)| s == n));
                    ctx.out.push(Out::Reply {
                        op: pending.op,
                        result: if result.is_ok() {
                            ClientResult::WriteOk { via_stand_in }
                        } else {
                            ClientResult::WriteFailed
                        },
                    })
                }
            }
        }
        let finished = self
            .writes
            .get(&request)
            .is_some_and(|p| p.coordinator.is_finished());
        if finished {
            if let Some(done) = self.writes.remove(&request) {
                // Hinted handoff for every home holding neither the write nor a stand-in's
                // hint (a write refused as unavailable has none). Our own store refusing
                // is not a case here; a hint to ourselves would not help anyway.
                for home in done.coordinator.unacked() {
                    if home != self.id {
                        self.store_hint(ctx, home, done.key.clone(), done.state.clone(), None);
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

    /// Store a hint for `target` if the book admits it; `reply` (a stand-in's
    /// coordinator) hears `HintAck` once the hint is durable, or at once if refused.
    fn store_hint(
        &mut self,
        ctx: &mut Ctx<'_>,
        target: NodeId,
        key: Key,
        state: KeyState,
        reply: Option<(NodeId, HintOrigin)>,
    ) {
        assert_ne!(target, self.id, "a hint for ourselves");
        // Planted bug: a stand-in acks its hint before the hint log's sync.
        let early = ctx.config.bugs.ack_before_sync;
        let queued_reply = if early { None } else { reply };
        match self
            .hints
            .admit(target, key, state, ctx.now_ms, queued_reply)
        {
            Ok(()) => {
                if let (true, Some((to, origin))) = (early, reply) {
                    self.send(ctx, to, Payload::HintAck { origin, ok: true });
                }
                self.start_hint_sync(ctx);
            }
            Err(Admission::Store) => unreachable!("admitted hints are queued"),
            Err(Admission::SkippedWindow | Admission::SkippedBytes) => {
                if let Some((to, origin)) = reply {
                    self.send(ctx, to, Payload::HintAck { origin, ok: false });
                }
            }
        }
    }

    /// Start the hint log's group commit if something is queued and none is in flight.
    fn start_hint_sync(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(tag) = self.hints.begin_commit() {
            let spread = ctx.config.sync_latency_max_ms - ctx.config.sync_latency_min_ms;
            let latency_ms = ctx.config.sync_latency_min_ms + ctx.rng.below(spread + 1);
            ctx.out.push(Out::Timer {
                at_ms: ctx.now_ms + latency_ms,
                timer: NodeTimer::HintSyncDone(tag),
            });
        }
    }

    /// Tell the book what the failure detector believes of every other node (the
    /// server's `hints::on_topology`).
    fn sync_hint_targets(&mut self, now_ms: u64) {
        let ids: Vec<NodeId> = self.membership.states().keys().copied().collect();
        for id in ids.into_iter().filter(|&id| id != self.id) {
            let up = self.membership.is_up(id);
            self.hints.set_target_up(id, up, now_ms);
        }
    }

    /// Send every replay the book allows now, and arm a timer for its next wake-up.
    fn pump_hints(&mut self, ctx: &mut Ctx<'_>) {
        for (id, target, key, state) in self.hints.poll(ctx.now_ms) {
            let payload = Payload::Hint {
                origin: HintOrigin::Replay(id),
                target,
                key,
                state,
            };
            self.send(ctx, target, payload);
            if ctx.config.bugs.hint_replay_unacked {
                self.hints
                    .on_replay_result(id, ReplayOutcome::Acked, ctx.now_ms);
            }
        }
        if ctx.config.bugs.hint_replay_unacked {
            self.start_hint_sync(ctx);
        }
        if let Some(at_ms) = self.hints.next_wake_ms(ctx.now_ms) {
            // Never at `now`: a poll just ran, so anything due now was done.
            let at_ms = at_ms.max(ctx.now_ms + 1);
            if self.hints.wake_at_ms.is_none_or(|armed| at_ms < armed) {
                self.hints.wake_at_ms = Some(at_ms);
                ctx.out.push(Out::Timer {
                    at_ms,
                    timer: NodeTimer::HintWake(at_ms),
                });
            }
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

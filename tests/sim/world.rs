//! The world: one seeded, single-threaded event loop over a priority queue of
//! `(time_ms, seq, event)`. It owns simulated time, the network, the nodes, the clients,
//! the fault schedule and the event-log hash, and calls the checkers.
//!
//! Everything random comes from one `SplitMix64` seeded with the run's seed, including
//! the cluster shape ([`SimConfig::from_seed`]); nothing reads a clock or iterates a
//! hash map, so one seed always replays the same run, event for event.
//!
//! A run has four phases: forming (gossip only, until every node sees every other up),
//! load (clients run while faults fire inside a fault window), settling (faults stop,
//! crashed nodes restart, the network heals, every node's hint book drains), and a
//! read-repair sweep at ALL, after which replicas must have converged and hold every
//! acknowledged write. Between settling and the sweep, a run in which no hint was
//! refused by a bound (window, bytes) and no crash lost hint bookkeeping must already
//! have converged by hints alone: that is the check that sees a lost hint, which the
//! sweep's read repair would otherwise hide. Hint windows are drawn short (300 ms) in
//! some seeds, so targets down past the window skip hints (`needs_repair`); those runs
//! converge through the sweep.

use ringkv::cluster::hints::HintLimits;
use ringkv::cluster::ring::initial_tokens;
use ringkv::cluster::{NodeId, Ring, RngLike, SplitMix64};
use ringkv::conflict::{CausalContext, ConflictMode, KeyState};
use ringkv::protocol::token::token_of;
use std::collections::BTreeMap;
use xxhash_rust::xxh3::Xxh3;

use crate::checker::{self, ReadPromise};
use crate::client::{Client, History, OpId, OpKind, Outcome};
use crate::engine_store::EngineStore;
use crate::hints::HintCounters;
use crate::network::{Message, Network, NetworkFaults};
use crate::node::{address_of, Bugs, ClientResult, Ctx, NodeConfig, NodeTimer, Out, SimNode};
use crate::store::{Key, ModelStore, NodeStore};

/// Upper bounds that keep every run finite whatever the seed.
const MAX_EVENTS: u64 = 400_000;
const FORM_DEADLINE_MS: u64 = 15_000;
const SETTLE_DEADLINE_MS: u64 = 40_000;
const CHECK_INTERVAL_MS: u64 = 50;
/// Client operations start on this grid, so coordinators often stamp equal HLC
/// physical times (which is what exposes a merge that mishandles ties).
const CLIENT_GRID_MS: u64 = 10;
const SWEEP_CLIENT: usize = usize::MAX;

/// The cluster shape and fault rates of one run, all drawn from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub node_count: usize,
    pub num_tokens: usize,
    pub node: NodeConfig,
    pub network: NetworkFaults,
    pub clients: usize,
    pub ops_per_client: u32,
    pub keys: usize,
    pub think_max_ms: u64,
    pub skew_max_ms: u64,
    pub fault_window_ms: u64,
    pub crashes: u64,
    pub power_losses: u64,
    pub partitions: u64,
    pub one_way_cuts: u64,
    pub swizzles: u64,
    pub downtime_max_ms: u64,
    /// Nodes store through the real engine over MemDisk (else the model store).
    pub engine_store: bool,
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

fn between(rng: &mut SplitMix64, low: u64, high: u64) -> u64 {
    low + rng.below(high - low + 1)
}

impl SimConfig {
    pub fn from_seed(seed: u64, bugs: Bugs) -> SimConfig {
        // A separate stream for the shape, so adding a knob later does not reshuffle the
        // run's own random choices more than it must.
        let mut rng = SplitMix64::new(seed ^ 0x5eed_c0de_0000_0001);
        let node_count = between(&mut rng, 2, 5) as usize;
        let replication_factor = pick(&mut rng, &[1, 2, 3, 3, 3]).min(node_count);
        let (write_required, read_required) = if rng.chance(1, 2) {
            let quorum = replication_factor / 2 + 1;
            (quorum, quorum)
        } else {
            (
                between(&mut rng, 1, replication_factor as u64) as usize,
                between(&mut rng, 1, replication_factor as u64) as usize,
            )
        };
        let mode = if rng.chance(3, 5) {
            ConflictMode::Lww
        } else {
            ConflictMode::Causal
        };
        let gossip_interval_ms = pick(&mut rng, &[50, 100]);
        let latency_min_ms = between(&mut rng, 1, 5);
        let mut node = NodeConfig {
            mode,
            replication_factor,
            write_required,
            read_required,
            sloppy_quorum: false,
            gossip_interval_ms,
            phi_convict_threshold: pick(&mut rng, &[3.0, 5.0, 8.0]),
            request_timeout_ms: between(&mut rng, 100, 500),
            sync_latency_min_ms: 1,
            sync_latency_max_ms: between(&mut rng, 1, 15),
            hint_limits: HintLimits {
                max_hint_window_ms: pick(&mut rng, &[300, 1_500, 10_000]),
                ..HintLimits::default()
            },
            max_siblings: 16,
            max_clock_skew_ms: 500,
            epoch_ms: 1_700_000_000_000,
            seeds: vec![address_of(1)],
            bugs,
        };
        let num_tokens = between(&mut rng, 1, 4) as usize;
        let network = NetworkFaults {
            latency_min_ms,
            latency_max_ms: latency_min_ms + between(&mut rng, 0, 20),
            loss_per_mille: pick(&mut rng, &[0, 10, 50, 100]),
            duplicate_per_mille: pick(&mut rng, &[0, 10, 50]),
        };
        let clients = between(&mut rng, 1, 4) as usize;
        let ops_per_client = between(&mut rng, 10, 30) as u32;
        let keys = between(&mut rng, 1, 5) as usize;
        let think_max_ms = pick(&mut rng, &[0, 10, 30]);
        let skew_max_ms = pick(&mut rng, &[0, 10, 50]);
        let fault_window_ms = between(&mut rng, 500, 2_500);
        let crashes = between(&mut rng, 0, 3);
        let power_losses = u64::from(rng.chance(1, 6));
        let partitions = between(&mut rng, 0, 2);
        let one_way_cuts = between(&mut rng, 0, 2);
        let swizzles = between(&mut rng, 0, 1);
        let downtime_max_ms = pick(&mut rng, &[200, 800, 2_000]);
        let engine_store = rng.chance(1, 2);
        // Knobs added with the real hint book, drawn after the older ones so old seeds
        // keep their shape. Sloppy quorum is the server's default; half the runs are
        // strict so the strict-quorum read checker has work.
        node.sloppy_quorum = rng.chance(1, 2);
        node.hint_limits = HintLimits {
            max_hint_window_ms: node.hint_limits.max_hint_window_ms,
            // Mostly unbounded; sometimes small enough that hints are refused.
            max_hints_bytes: pick(&mut rng, &[1 << 30, 1 << 30, 1_024]),
            replay_rate_per_s: pick(&mut rng, &[50, 200, 1_000]),
            max_in_flight_per_target: pick(&mut rng, &[1, 4, 16]),
            retry_backoff_ms: pick(&mut rng, &[50, 200]),
            replay_timeout_ms: 2 * node.request_timeout_ms,
        };
        SimConfig {
            seed,
            node_count,
            num_tokens,
            network,
            clients,
            ops_per_client,
            keys,
            think_max_ms,
            skew_max_ms,
            fault_window_ms,
            crashes,
            power_losses,
            partitions,
            one_way_cuts,
            swizzles,
            downtime_max_ms,
            engine_store,
            node,
        }
    }

    /// What a client read is promised (see [`ReadPromise`]): with R + W > N, every
    /// acknowledged write under strict quorums, and under sloppy quorum only the writes
    /// acknowledged by W home replicas (a stand-in's hint is invisible to reads of the
    /// homes until it is replayed; those writes are checked after the hints drained).
    pub fn read_promise(&self) -> ReadPromise {
        if self.node.read_required + self.node.write_required <= self.node.replication_factor {
            ReadPromise::Nothing
        } else if self.node.sloppy_quorum {
            ReadPromise::HomeAckedWrites
        } else {
            ReadPromise::EveryAckedWrite
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver(Message),
    Timer {
        node: NodeId,
        generation: u64,
        timer: NodeTimer,
    },
    ClientNext(usize),
    ClientGiveUp(OpId),
    Crash {
        node: NodeId,
        downtime_ms: u64,
    },
    Restart(NodeId),
    PowerLoss,
    Cut(NodeId, NodeId),
    Restore(NodeId, NodeId),
    EndFaults,
    Check,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Forming,
    Load,
    Settling,
    Sweep,
}

/// What a run did; `failure` is None when every checker passed.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub log_hash: u64,
    pub events: u64,
    pub end_ms: u64,
    pub failure: Option<String>,
    pub summary: String,
    /// Hint counters summed over the nodes, for the seed budget's coverage line.
    pub hints: HintCounters,
    /// Whether the replicas had to converge by hints alone (before the sweep).
    pub hinted_convergence_checked: bool,
}

pub struct World {
    config: SimConfig,
    rng: SplitMix64,
    now_ms: u64,
    step: u64,
    next_seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    network: Network,
    nodes: Vec<SimNode>,
    ring: Ring,
    clients: Vec<Client>,
    history: History,
    keys: Vec<Key>,
    next_id: u64,
    phase: Phase,
    faults_over: bool,
    /// Non-gossip messages scheduled but not yet delivered or dropped.
    data_in_flight: u64,
    sweep_ops: Vec<OpId>,
    /// `check_hinted_convergence` applied to this run.
    hinted_convergence_checked: bool,
    settle_started_ms: u64,
    crashes_done: u64,
    /// Restarts that lost the peers table, and ops refused because a coordinator did
    /// not know its ring yet.
    peers_tables_lost: u64,
    refused_not_ready: u64,
    /// Crashes waiting for the node's next replica write (node -> downtime).
    armed_crashes: BTreeMap<NodeId, u64>,
    hash: Xxh3,
    failure: Option<String>,
    trace: bool,
}

impl World {
    pub fn new(config: SimConfig) -> World {
        let mut rng = SplitMix64::new(config.seed);
        let mut nodes = Vec::new();
        let mut ring_nodes = Vec::new();
        for index in 0..config.node_count {
            let id = index as NodeId + 1;
            let tokens = initial_tokens(config.num_tokens, rng.next_u64());
            let skew_steps = config.skew_max_ms / 10;
            let skew_ms = (rng.below(2 * skew_steps + 1) as i64 - skew_steps as i64) * 10;
            ring_nodes.push((id, tokens.clone()));
            let store: Box<dyn NodeStore> = if config.engine_store {
                Box::new(EngineStore::new(config.node.mode))
            } else {
                Box::new(ModelStore::default())
            };
            nodes.push(SimNode::new(id, tokens, skew_ms, 1, store, &config.node));
        }
        let ring = Ring::new(ring_nodes.iter().map(|(id, t)| (*id, t.as_slice())))
            .unwrap_or_else(|e| panic!("seed {}: ring: {e:?}", config.seed));
        let clients = (0..config.clients)
            .map(|i| Client::new(i, config.ops_per_client))
            .collect();
        let keys = (0..config.keys)
            .map(|i| format!("key{i}").into_bytes())
            .collect();
        World {
            network: Network::new(config.network.clone()),
            rng,
            now_ms: 0,
            step: 0,
            next_seq: 0,
            queue: BTreeMap::new(),
            nodes,
            ring,
            clients,
            history: History::default(),
            keys,
            next_id: 0,
            phase: Phase::Forming,
            faults_over: false,
            data_in_flight: 0,
            sweep_ops: Vec::new(),
            hinted_convergence_checked: false,
            settle_started_ms: 0,
            crashes_done: 0,
            peers_tables_lost: 0,
            refused_not_ready: 0,
            armed_crashes: BTreeMap::new(),
            hash: Xxh3::new(),
            failure: None,
            trace: std::env::var_os("SIM_TRACE").is_some(),
            config,
        }
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        assert!(at_ms >= self.now_ms, "scheduling into the past");
        if let Event::Deliver(msg) = &event {
            if !matches!(msg.payload, crate::network::Payload::Gossip(_)) {
                self.data_in_flight += 1;
            }
        }
        self.next_seq += 1;
        self.queue.insert((at_ms, self.next_seq), event);
    }

    fn log(&mut self, words: &[u64]) {
        for word in words {
            self.hash.update(&word.to_le_bytes());
        }
    }

    fn fail(&mut self, message: String) {
        if self.failure.is_none() {
            self.failure = Some(format!(
                "at {} ms (step {}, phase {:?}): {message}",
                self.now_ms, self.step, self.phase
            ));
        }
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Run to the end; returns the report (failure or not).
    pub fn run(mut self) -> RunReport {
        for index in 0..self.nodes.len() {
            let (id, generation) = (self.nodes[index].id, self.nodes[index].generation);
            let at = self.rng.below(self.config.node.gossip_interval_ms);
            self.schedule(
                at,
                Event::Timer {
                    node: id,
                    generation,
                    timer: NodeTimer::Gossip,
                },
            );
        }
        self.schedule(CHECK_INTERVAL_MS, Event::Check);
        let mut done = false;
        while !done && self.failure.is_none() {
            let Some(((at_ms, seq), event)) = self.queue.pop_first() else {
                self.fail("event queue ran dry".to_owned());
                break;
            };
            self.now_ms = at_ms;
            self.step += 1;
            if self.step > MAX_EVENTS {
                self.fail(format!("event budget of {MAX_EVENTS} exceeded"));
                break;
            }
            if self.trace {
                eprintln!("[{at_ms:>6} ms #{seq}] {event:?}");
            }
            done = self.on_event(event);
        }
        let summary = self.summary();
        let hints = HintCounters {
            stored: self.hint_total(|h| h.stored),
            stand_in: self.hint_total(|h| h.stand_in),
            delivered: self.hint_total(|h| h.delivered),
            skipped_window: self.hint_total(|h| h.skipped_window),
            skipped_bytes: self.hint_total(|h| h.skipped_bytes),
            appends_cut: self.hint_total(|h| h.appends_cut),
            torn_writes: self.hint_total(|h| h.torn_writes),
            recovered: self.hint_total(|h| h.recovered),
        };
        RunReport {
            seed: self.config.seed,
            log_hash: self.hash.digest(),
            events: self.step,
            end_ms: self.now_ms,
            failure: self.failure,
            summary,
            hints,
            hinted_convergence_checked: self.hinted_convergence_checked,
        }
    }

    fn summary(&self) -> String {
        let c = &self.config;
        format!(
            "store={} nodes={} rf={} w={} r={} {} mode={:?} tokens={} clients={}x{} keys={} \
             loss={}‰ dup={}‰ lat={}..{}ms faults: crash={} lost-peers={} power={} part={} oneway={} \
             swizzle={} | ops ok={} failed={} (not ready {}) unknown={} | msgs sent={} lost={} dup={} cut={} | \
             hints window={}ms stored={} stand-in={} delivered={} left={} skipped window={} bytes={} \
             cut={} torn={} recovered={} | store flushes={} torn={} lost={} | \
             events={} end={}ms",
            if c.engine_store { "engine" } else { "model" },
            c.node_count,
            c.node.replication_factor,
            c.node.write_required,
            c.node.read_required,
            if c.node.sloppy_quorum { "sloppy" } else { "strict" },
            c.node.mode,
            c.num_tokens,
            c.clients,
            c.ops_per_client,
            c.keys,
            c.network.loss_per_mille,
            c.network.duplicate_per_mille,
            c.network.latency_min_ms,
            c.network.latency_max_ms,
            self.crashes_done,
            self.peers_tables_lost,
            c.power_losses,
            c.partitions,
            c.one_way_cuts,
            c.swizzles,
            self.history.count(Outcome::Ok),
            self.history.count(Outcome::Failed),
            self.refused_not_ready,
            self.history.count(Outcome::Unknown),
            self.network.sent,
            self.network.lost,
            self.network.duplicated,
            self.network.cut_drops,
            c.node.hint_limits.max_hint_window_ms,
            self.hint_total(|h| h.stored),
            self.hint_total(|h| h.stand_in),
            self.hint_total(|h| h.delivered),
            self.nodes.iter().map(|n| n.hints.pending()).sum::<usize>(),
            self.hint_total(|h| h.skipped_window),
            self.hint_total(|h| h.skipped_bytes),
            self.hint_total(|h| h.appends_cut),
            self.hint_total(|h| h.torn_writes),
            self.hint_total(|h| h.recovered),
            self.nodes.iter().map(|n| n.store.counters().0).sum::<u64>(),
            self.nodes.iter().map(|n| n.store.counters().1).sum::<u64>(),
            self.nodes.iter().map(|n| n.store.counters().2).sum::<u64>(),
            self.step,
            self.now_ms,
        )
    }

    fn hint_total(&self, field: impl Fn(&HintCounters) -> u64) -> u64 {
        self.nodes.iter().map(|n| field(&n.hints.counters())).sum()
    }

    /// Process one event; true when the run is complete.
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Deliver(msg) => {
                let is_data = !matches!(msg.payload, crate::network::Payload::Gossip(_));
                if is_data {
                    self.data_in_flight -= 1;
                }
                self.log(&[1, msg.from, msg.to, msg.payload.tag(), msg.payload.id()]);
                let to = msg.to;
                if !self.network.deliverable(msg.from, to) || !self.node_mut(to).up {
                    self.log(&[0]);
                    return false;
                }
                let replica_write = matches!(
                    msg.payload,
                    crate::network::Payload::Write {
                        request: Some(_),
                        ..
                    } | crate::network::Payload::Hint { .. }
                );
                self.with_node(to, |node, ctx| node.on_message(ctx, msg));
                if replica_write && !self.faults_over {
                    if let Some(downtime_ms) = self.armed_crashes.remove(&to) {
                        self.log(&[15, to]);
                        self.crash(to, downtime_ms);
                    }
                }
            }
            Event::Timer {
                node,
                generation,
                timer,
            } => {
                let n = self.node_mut(node);
                if !n.up || n.generation != generation {
                    return false;
                }
                let tag = match timer {
                    NodeTimer::Gossip => 0,
                    NodeTimer::Request(r) => r,
                    NodeTimer::SyncDone(s) => s,
                    NodeTimer::HintSyncDone(t) => t,
                    NodeTimer::HintWake(at) => at,
                };
                self.log(&[2, node, tag]);
                self.with_node(node, |node, ctx| node.on_timer(ctx, timer));
            }
            Event::ClientNext(client) => self.client_next(client),
            Event::ClientGiveUp(op) => {
                self.log(&[3, op]);
                if self.history.finish(op, Outcome::Unknown, self.step) {
                    let client = self.history.op(op).client;
                    self.client_done_with_op(client);
                }
            }
            Event::Crash { node, downtime_ms } => {
                if self.node_mut(node).up && !self.faults_over {
                    self.log(&[4, node]);
                    if self.rng.chance(1, 2) {
                        // Armed: crash right after the node's next replica write is
                        // applied, inside the window before its sync (where random
                        // crash times rarely land).
                        self.armed_crashes.insert(node, downtime_ms);
                    } else {
                        self.crash(node, downtime_ms);
                    }
                }
            }
            Event::PowerLoss => {
                if !self.faults_over {
                    self.log(&[5]);
                    for id in 1..=self.nodes.len() as NodeId {
                        if self.node_mut(id).up {
                            let downtime = between(&mut self.rng, 50, self.config.downtime_max_ms);
                            self.crash(id, downtime);
                        }
                    }
                }
            }
            Event::Restart(node) => {
                if !self.node_mut(node).up {
                    self.log(&[6, node]);
                    self.restart(node);
                }
            }
            Event::Cut(from, to) => {
                if !self.faults_over {
                    self.log(&[7, from, to]);
                    self.network.cut(from, to);
                }
            }
            Event::Restore(from, to) => {
                if !self.faults_over {
                    self.log(&[8, from, to]);
                    self.network.restore(from, to);
                }
            }
            Event::EndFaults => {
                self.log(&[9]);
                self.end_faults();
            }
            Event::Check => return self.on_check(),
        }
        false
    }

    /// Run a node handler with a context, then perform its effects.
    fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut SimNode, &mut Ctx<'_>)) {
        let mut out = Vec::new();
        let generation;
        {
            let node = &mut self.nodes[(id - 1) as usize];
            generation = node.generation;
            let mut ctx = Ctx {
                now_ms: self.now_ms,
                rng: &mut self.rng,
                out: &mut out,
                config: &self.config.node,
                next_id: &mut self.next_id,
            };
            f(node, &mut ctx);
            node.invariants();
        }
        for effect in out {
            self.perform(id, generation, effect);
        }
    }

    fn perform(&mut self, node: NodeId, generation: u64, effect: Out) {
        match effect {
            Out::Send(msg) => {
                for delay_ms in self.network.plan(&mut self.rng, msg.from, msg.to) {
                    self.schedule(self.now_ms + delay_ms, Event::Deliver(msg.clone()));
                }
            }
            Out::Timer { at_ms, timer } => self.schedule(
                at_ms.max(self.now_ms),
                Event::Timer {
                    node,
                    generation,
                    timer,
                },
            ),
            Out::Stamp { op, version } => {
                self.history.stamp(op, version);
                if let Err(e) = checker::check_stamp(&self.history, self.history.op(op)) {
                    self.fail(e);
                }
            }
            Out::Reply { op, result } => self.on_reply(op, result),
        }
    }

    // ---- clients -------------------------------------------------------------------------

    fn client_next(&mut self, client: usize) {
        if self.clients[client].ops_left == 0 || self.clients[client].current.is_some() {
            return;
        }
        self.clients[client].ops_left -= 1;
        let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
        let roll = self.rng.below(100);
        let kind = if roll < 50 {
            OpKind::Get
        } else if roll < 95 {
            OpKind::Put(Some(self.clients[client].unique_value()))
        } else {
            OpKind::Put(None)
        };
        let replicas = self
            .ring
            .replicas(token_of(&key), self.config.node.replication_factor);
        // Clients connect only to running processes (a dead one refuses the connection).
        // In causal mode writes go to a replica, which creates the dot.
        let candidates: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.id)
            .filter(|id| {
                self.config.node.mode == ConflictMode::Lww
                    || kind == OpKind::Get
                    || replicas.contains(id)
            })
            .collect();
        if candidates.is_empty() {
            let op = self.history.start(client, key, kind, 0, self.step);
            self.history.finish(op, Outcome::Failed, self.step);
            self.log(&[10, client as u64, op]);
            self.schedule_client_next(client);
            return;
        }
        let coordinator = candidates[self.rng.below(candidates.len() as u64) as usize];
        if self.nodes[(coordinator - 1) as usize].refuses_requests(&self.config.node) {
            // Answered `Unavailable` at once: the node does not know its ring yet.
            let op = self
                .history
                .start(client, key, kind, coordinator, self.step);
            self.history.finish(op, Outcome::Failed, self.step);
            self.log(&[16, client as u64, op, coordinator]);
            self.refused_not_ready += 1;
            self.schedule_client_next(client);
            return;
        }
        let rf = self.config.node.replication_factor;
        let view = self.node_mut(coordinator).replicas_of(&key, rf);
        if view != replicas {
            self.fail(format!(
                "node {coordinator} sees replicas {view:?} for {}, the ring says {replicas:?}",
                checker::show(&key)
            ));
            return;
        }
        let op = self
            .history
            .start(client, key.clone(), kind.clone(), coordinator, self.step);
        self.log(&[11, client as u64, op, coordinator]);
        self.clients[client].current = Some(op);
        let give_up_at = self.now_ms + self.config.node.request_timeout_ms + 100;
        self.schedule(give_up_at, Event::ClientGiveUp(op));
        let required_r = self.config.node.read_required;
        match kind {
            OpKind::Get => self.with_node(coordinator, |node, ctx| {
                node.coordinate_read(ctx, op, key, required_r)
            }),
            OpKind::Put(value) => {
                // Usually a read-modify-write with the last context seen; sometimes a
                // blind write, which must become a sibling rather than overwrite.
                let context = if self.rng.chance(4, 5) {
                    self.clients[client]
                        .contexts
                        .get(&key)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    CausalContext::new()
                };
                self.with_node(coordinator, |node, ctx| {
                    node.coordinate_write(ctx, op, key, value, &context)
                })
            }
        }
    }

    fn schedule_client_next(&mut self, client: usize) {
        let think = self.rng.below(self.config.think_max_ms + 1);
        let at = (self.now_ms + think).div_ceil(CLIENT_GRID_MS) * CLIENT_GRID_MS;
        self.schedule(at, Event::ClientNext(client));
    }

    fn client_done_with_op(&mut self, client: usize) {
        if client == SWEEP_CLIENT {
            return;
        }
        self.clients[client].current = None;
        self.schedule_client_next(client);
    }

    fn on_reply(&mut self, op: OpId, result: ClientResult) {
        let outcome = match &result {
            ClientResult::WriteOk { .. } | ClientResult::Read(_) => Outcome::Ok,
            ClientResult::WriteFailed | ClientResult::ReadFailed => Outcome::Failed,
        };
        self.log(&[12, op, u64::from(outcome == Outcome::Ok)]);
        if !self.history.finish(op, outcome, self.step) {
            return;
        }
        if let ClientResult::WriteOk { via_stand_in: true } = result {
            self.history.mark_via_stand_in(op);
        }
        let client = self.history.op(op).client;
        if let ClientResult::Read(state) = &result {
            let promise = if client == SWEEP_CLIENT {
                ReadPromise::EveryAckedWrite
            } else {
                self.config.read_promise()
            };
            let verdict =
                checker::check_read(&self.history, self.history.op(op), state.as_ref(), promise);
            if let Err(e) = verdict {
                self.fail(e);
            }
            if let (Some(KeyState::Causal(s)), true) = (state, client != SWEEP_CLIENT) {
                let key = self.history.op(op).key.clone();
                self.clients[client].contexts.insert(key, s.read_context());
            }
        }
        self.client_done_with_op(client);
    }

    // ---- faults --------------------------------------------------------------------------

    fn crash(&mut self, node: NodeId, downtime_ms: u64) {
        self.crashes_done += 1;
        let mut rng = SplitMix64::new(self.rng.next_u64());
        // Restart with lost memory: sometimes a node with seeds comes back without its
        // peers table. (A node without seeds that lost it would rightly come back as a
        // cluster of one: the server documents that every node should name seeds.)
        let has_seeds = self
            .config
            .node
            .seeds
            .iter()
            .any(|s| *s != address_of(node));
        let lose_peers_table = has_seeds && self.rng.chance(1, 3);
        if lose_peers_table {
            self.peers_tables_lost += 1;
        }
        self.node_mut(node).crash(&mut rng, lose_peers_table);
        self.schedule(self.now_ms + downtime_ms, Event::Restart(node));
    }

    fn restart(&mut self, node: NodeId) {
        let now_ms = self.now_ms;
        let config = self.config.node.clone();
        let generation = {
            let n = self.node_mut(node);
            let generation = (n.generation + 1).max(now_ms + 2);
            n.restart(generation, now_ms, &config);
            generation
        };
        let at = now_ms + self.rng.below(config.gossip_interval_ms);
        self.schedule(
            at,
            Event::Timer {
                node,
                generation,
                timer: NodeTimer::Gossip,
            },
        );
    }

    /// The load phase starts: clients go, and the whole fault schedule is drawn now.
    fn start_load(&mut self) {
        self.phase = Phase::Load;
        for client in 0..self.clients.len() {
            self.schedule_client_next(client);
        }
        let start = self.now_ms;
        let window = self.config.fault_window_ms;
        let ids: Vec<NodeId> = (1..=self.nodes.len() as NodeId).collect();
        let downtime_max = self.config.downtime_max_ms;
        for _ in 0..self.config.crashes {
            let at = start + self.rng.below(window);
            let node = pick(&mut self.rng, &ids);
            let downtime_ms = between(&mut self.rng, 20, downtime_max);
            self.schedule(at, Event::Crash { node, downtime_ms });
        }
        for _ in 0..self.config.power_losses {
            let at = start + self.rng.below(window);
            self.schedule(at, Event::PowerLoss);
        }
        for _ in 0..self.config.partitions {
            // Two sides, both directions cut, healed after a while.
            let at = start + self.rng.below(window);
            let until = at + between(&mut self.rng, 100, 1_500);
            let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(1, 2)).collect();
            for (i, &a) in ids.iter().enumerate() {
                for (j, &b) in ids.iter().enumerate() {
                    if side[i] != side[j] {
                        self.schedule(at, Event::Cut(a, b));
                        self.schedule(until, Event::Restore(a, b));
                    }
                }
            }
        }
        for _ in 0..self.config.one_way_cuts {
            if ids.len() < 2 {
                break;
            }
            let at = start + self.rng.below(window);
            let until = at + between(&mut self.rng, 100, 1_500);
            let from = pick(&mut self.rng, &ids);
            let to = pick(&mut self.rng, &ids);
            if from != to {
                self.schedule(at, Event::Cut(from, to));
                self.schedule(until, Event::Restore(from, to));
            }
        }
        for _ in 0..self.config.swizzles {
            let at = start + self.rng.below(window);
            self.schedule_swizzle(at, &ids);
        }
        self.schedule(start + window, Event::EndFaults);
    }

    /// FoundationDB's swizzle-clog: cut a random subset of nodes off one at a time, in
    /// random order, then restore them one at a time in another random order.
    fn schedule_swizzle(&mut self, start: u64, ids: &[NodeId]) {
        let mut chosen: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|_| self.rng.chance(1, 2))
            .collect();
        shuffle(&mut self.rng, &mut chosen);
        let mut at = start;
        for &node in &chosen {
            at += between(&mut self.rng, 10, 200);
            for &other in ids.iter().filter(|&&o| o != node) {
                self.schedule(at, Event::Cut(node, other));
                self.schedule(at, Event::Cut(other, node));
            }
        }
        shuffle(&mut self.rng, &mut chosen);
        for &node in &chosen {
            at += between(&mut self.rng, 10, 200);
            for &other in ids.iter().filter(|&&o| o != node) {
                self.schedule(at, Event::Restore(node, other));
                self.schedule(at, Event::Restore(other, node));
            }
        }
    }

    fn end_faults(&mut self) {
        self.faults_over = true;
        self.armed_crashes.clear();
        self.network.heal();
        for id in 1..=self.nodes.len() as NodeId {
            if !self.node_mut(id).up {
                self.restart(id);
            }
        }
    }

    // ---- phases ------------------------------------------------------------------------

    /// Every running node knows every node and believes every other node up.
    fn formed(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.up && n.membership.states().len() == self.nodes.len()
                && self.nodes.iter().all(|m| n.membership.is_up(m.id))
        })
    }

    fn on_check(&mut self) -> bool {
        self.log(&[13]);
        match self.phase {
            Phase::Forming => {
                if self.formed() {
                    self.start_load();
                } else if self.now_ms > FORM_DEADLINE_MS {
                    self.fail("cluster did not form".to_owned());
                }
            }
            Phase::Load => {
                let clients_done = self
                    .clients
                    .iter()
                    .all(|c| c.ops_left == 0 && c.current.is_none());
                if clients_done && self.faults_over {
                    self.phase = Phase::Settling;
                    self.settle_started_ms = self.now_ms;
                }
            }
            Phase::Settling => {
                let hints: usize = self.nodes.iter().map(|n| n.hints.pending()).sum();
                let busy: usize = self.nodes.iter().map(|n| n.in_flight_requests()).sum();
                if self.formed() && hints == 0 && busy == 0 && self.network.is_healed() {
                    self.check_hinted_convergence();
                    self.start_sweep();
                } else if self.now_ms > self.settle_started_ms + SETTLE_DEADLINE_MS {
                    let drained = self.check_hints_drained().err().unwrap_or_default();
                    self.fail(format!(
                        "did not settle: formed={} hints left={hints} requests in flight={busy} {drained}",
                        self.formed()
                    ));
                }
            }
            Phase::Sweep => {
                let answered = self
                    .sweep_ops
                    .iter()
                    .all(|&op| self.history.op(op).outcome != Outcome::Pending);
                let busy: usize = self.nodes.iter().map(|n| n.in_flight_requests()).sum();
                if answered && busy == 0 && self.data_in_flight == 0 {
                    self.final_checks();
                    return true;
                } else if self.now_ms > self.settle_started_ms + 2 * SETTLE_DEADLINE_MS {
                    self.fail("sweep did not finish".to_owned());
                }
            }
        }
        self.schedule(self.now_ms + CHECK_INTERVAL_MS, Event::Check);
        false
    }

    /// Read every key at ALL from a random node: read repair brings every replica to the
    /// merge (there is no anti-entropy repair yet, so this is the convergence mechanism).
    fn start_sweep(&mut self) {
        self.phase = Phase::Sweep;
        let rf = self.config.node.replication_factor;
        for key in self.keys.clone() {
            let coordinator = between(&mut self.rng, 1, self.nodes.len() as u64);
            let op = self.history.start(
                SWEEP_CLIENT,
                key.clone(),
                OpKind::Get,
                coordinator,
                self.step,
            );
            self.sweep_ops.push(op);
            self.with_node(coordinator, |node, ctx| {
                node.coordinate_read(ctx, op, key, rf)
            });
        }
    }

    /// Hints drained, before the sweep: if no hint was refused by a bound and no crash
    /// lost hint bookkeeping, every replica got every write directly or through a hint,
    /// so the replicas have converged without any read repair. (Otherwise a replica may
    /// lack writes only a repair brings back — `needs_repair` — and convergence is left
    /// to the sweep.) This is what makes a lost or undelivered hint visible: the sweep's
    /// read repair would otherwise hide it.
    fn check_hinted_convergence(&mut self) {
        let skipped = self.hint_total(|h| h.skipped_window + h.skipped_bytes);
        let lossy: u64 = self.nodes.iter().map(|n| n.lossy_crashes).sum();
        if skipped > 0 || lossy > 0 {
            return;
        }
        self.hinted_convergence_checked = true;
        let rf = self.config.node.replication_factor;
        for key in self.keys.clone() {
            let states: Vec<(NodeId, Option<KeyState>)> = self
                .ring
                .replicas(token_of(&key), rf)
                .iter()
                .map(|&id| (id, self.nodes[(id - 1) as usize].store.get(&key)))
                .collect();
            if let Err(e) = checker::check_converged(&key, &states) {
                self.fail(format!(
                    "hints drained but replicas differ before any repair (no hint was \
                     skipped, no crash lost hint bookkeeping): {e}"
                ));
                return;
            }
        }
    }

    fn check_hints_drained(&self) -> Result<(), String> {
        for node in &self.nodes {
            checker::check_hints_drained(
                node.id,
                &node.hints.stats(),
                node.hints.appends_in_progress(),
            )?;
        }
        Ok(())
    }

    fn final_checks(&mut self) {
        if let Err(e) = self.check_hints_drained() {
            self.fail(e);
            return;
        }
        for &op in &self.sweep_ops {
            if self.history.op(op).outcome != Outcome::Ok {
                self.fail(format!("sweep read op {op} failed on a healed cluster"));
                return;
            }
        }
        let rf = self.config.node.replication_factor;
        for key in self.keys.clone() {
            let replicas = self.ring.replicas(token_of(&key), rf);
            let states: Vec<(NodeId, Option<KeyState>)> = replicas
                .iter()
                .map(|&id| (id, self.nodes[(id - 1) as usize].store.get(&key)))
                .collect();
            for (id, state) in &states {
                if let Some(state) = state {
                    self.log(&[14, *id, ringkv_hash(state)]);
                }
            }
            let verdict = checker::check_converged(&key, &states)
                .and_then(|()| checker::check_durable(&self.history, &key, states[0].1.as_ref()));
            if let Err(e) = verdict {
                self.fail(e);
                return;
            }
        }
    }
}

fn ringkv_hash(state: &KeyState) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&state.to_bytes())
}

fn shuffle<T>(rng: &mut SplitMix64, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

//! Leaderless quorum replication (docs/design.md §6.5), driven on the shard that owns the
//! key: the replica set from the membership snapshot's ring, the fan-out of
//! `ReplicaWrite` / `ReplicaRead` to the replicas (self through the local engine, peers
//! through the shard's pipelined [`PeerPool`](super::peer_pool::PeerPool)), and the drive
//! of the pure `WriteCoordinator` / `ReadCoordinator` state machines, read repair
//! included.
//!
//! Must never: answer a client before W (R) replicas acknowledged, wait without a
//! deadline (every peer call and every coordination is bounded by
//! `request_timeout_ms`), or send a peer op on a connection whose handshake did not
//! succeed (the pool only uses connections `PeerConnection::connect` handed out).

use super::handler::{internal, now_ms, value_reply};
use super::shard::Shard;
use crate::cluster::ring::Ring;
use crate::cluster::NodeId;
use crate::config::SpeculativeRetry;
use crate::conflict::{self, KeyState};
use crate::coordinator::{
    required_replicas, ReadCoordinator, ReadEffect, Speculation, WriteCoordinator, WriteEffect,
};
use crate::protocol::token::token_of;
use crate::protocol::types::{Consistency, ErrorReply, NodeInfo, NodeStatus, Op, Reply};
use ahash::AHashMap;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Where the replicas of a key live, as this shard sees the cluster now.
pub struct Placement {
    /// Replica node ids, primary first.
    pub replicas: Vec<NodeId>,
    /// The nodes after the replicas on the ring walk, in order: stand-in candidates for
    /// sloppy quorum.
    pub fallbacks: Vec<NodeId>,
    /// Pending replicas (Cassandra's pending ranges): while a node joins or leaves,
    /// the nodes that will replicate this key once the change is done and do not yet.
    /// Writes go to them too, their acks never count toward W; reads never ask them.
    pub pending: Vec<NodeInfo>,
    /// Node id → (address info, up) for every other node in the ring, shared by every
    /// placement of one snapshot.
    nodes: Rc<AHashMap<NodeId, NodeInfo>>,
}

impl Placement {
    /// Up in gossip's view and not suspected by this shard's own failed dials.
    fn is_alive(&self, shard: &Shard, node: NodeId) -> bool {
        node == shard.node_id
            || self
                .nodes
                .get(&node)
                .is_some_and(|n| n.up && !shard.peers.is_suspect(&n.address))
    }
}

/// The rings of the latest snapshot, rebuilt only when the snapshot changes: the ring
/// of the token owners (Normal and Leaving nodes), and while a node joins or leaves,
/// the ring after the change (joining nodes in, leaving nodes out).
#[derive(Default)]
pub struct RingCache {
    cached: RefCell<Option<CachedRings>>,
}

struct CachedRings {
    seq: u64,
    ring: Rc<Ring>,
    future: Option<Rc<Ring>>,
    /// The other ring members with tokens (empty: this node serves alone).
    others: Rc<AHashMap<NodeId, NodeInfo>>,
}

/// Owns tokens in the read/write ring: Normal, and Leaving until its streaming is done.
fn in_ring(status: NodeStatus) -> bool {
    matches!(status, NodeStatus::Normal | NodeStatus::Leaving)
}

fn build_rings(shard: &Shard, seq: u64, snapshot: &[NodeInfo]) -> Option<CachedRings> {
    // This node's own entry decides whether it is in the ring (a node joining, or one
    // that left, coordinates without replicating); before its first snapshot, it is.
    let self_in_ring = snapshot
        .iter()
        .find(|n| n.node_id == shard.node_id)
        .is_none_or(|n| in_ring(n.status));
    let members = snapshot
        .iter()
        .filter(|n| n.node_id != shard.node_id && in_ring(n.status) && !n.tokens.is_empty())
        .map(|n| (n.node_id, n.tokens.as_slice()))
        .chain(self_in_ring.then_some((shard.node_id, shard.tokens.as_slice())));
    let ring = match Ring::new(members) {
        Ok(ring) => ring,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the ring from the membership snapshot");
            return None;
        }
    };
    let changing = snapshot.iter().any(|n| {
        (n.status == NodeStatus::Joining && !n.tokens.is_empty()) || n.status == NodeStatus::Leaving
    });
    let future = if changing {
        let mut future = ring.clone();
        for n in snapshot {
            match n.status {
                NodeStatus::Joining if !n.tokens.is_empty() => {
                    match future.with_node(n.node_id, &n.tokens) {
                        Ok(with) => future = with,
                        Err(e) => tracing::warn!(
                            node = %format!("{:016x}", n.node_id),
                            error = %e,
                            "joining node's tokens do not fit the ring; no pending writes for it"
                        ),
                    }
                }
                NodeStatus::Leaving => future = future.without_node(n.node_id),
                _ => {}
            }
        }
        Some(Rc::new(future))
    } else {
        None
    };
    let others = snapshot
        .iter()
        .filter(|n| n.node_id != shard.node_id && in_ring(n.status) && !n.tokens.is_empty())
        .map(|n| (n.node_id, n.clone()))
        .collect();
    Some(CachedRings {
        seq,
        ring: Rc::new(ring),
        future,
        others: Rc::new(others),
    })
}

/// True unless the last ring built for [`placement`] has other members: a key's
/// request is then served by this node alone. Before any ring is built it says true.
pub fn serving_alone(shard: &Shard) -> bool {
    shard
        .ring
        .cached
        .borrow()
        .as_ref()
        .is_none_or(|c| c.others.is_empty())
}

/// Why this node does not coordinate a request now: it does not know its cluster yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotReady;

impl NotReady {
    /// The client's answer: `Unavailable`, as if only this node were alive (it is the
    /// only replica it can vouch for), so clients and users handle it as they handle any
    /// shortage of replicas: retry elsewhere or later.
    pub fn reply(self, shard: &Shard, consistency: Consistency) -> Reply {
        let rf = shard.config.replication_factor.max(1) as usize;
        let required = required_replicas(consistency, rf);
        Reply::Error(ErrorReply::Unavailable {
            required: u32::try_from(required).unwrap_or(u32::MAX),
            alive: 1,
        })
    }
}

/// Whether this node may coordinate as the only node of its ring when its view holds no
/// other node: only when it names no seed but itself. A node started with `--seeds`
/// waits for gossip to bring it the cluster (or for its remembered peers,
/// `peers.toml`), because until then "alone" only means "not told yet", and
/// coordinating then would acknowledge writes with one copy.
fn may_serve_alone(shard: &Shard) -> bool {
    let listen = shard.config.listen;
    shard.config.seeds.iter().all(|seed| *seed == listen)
}

/// Where to place `key`: `Ok(None)` when this node is alone in its ring (no peer with
/// tokens), so it is the key's only replica; `Err(NotReady)` before the first membership
/// snapshot, or while a node with seeds has not learned of any other node.
pub fn placement(shard: &Shard, key: &[u8]) -> Result<Option<Placement>, NotReady> {
    // Built once per membership snapshot: the rings and the peers' addresses; a request
    // only walks the ring (no per-request copies of the snapshot).
    let (ring, future, nodes, snapshot) = {
        let topology = shard.topology.borrow();
        let (seq, snapshot) = topology.as_ref().ok_or(NotReady)?;
        let mut cached = shard.ring.cached.borrow_mut();
        if cached.as_ref().is_none_or(|c| c.seq != *seq) {
            // A snapshot whose ring cannot be built (logged) leaves the node unable to
            // place anything: refuse rather than guess.
            *cached = Some(build_rings(shard, *seq, snapshot).ok_or(NotReady)?);
        }
        let rings = cached.as_ref().ok_or(NotReady)?;
        if rings.others.is_empty() {
            let knows_cluster = snapshot.iter().any(|n| n.node_id != shard.node_id);
            return if knows_cluster || may_serve_alone(shard) {
                Ok(None)
            } else {
                Err(NotReady)
            };
        }
        let snapshot = rings.future.as_ref().map(|_| snapshot.clone());
        (
            rings.ring.clone(),
            rings.future.clone(),
            rings.others.clone(),
            snapshot,
        )
    };
    let rf = shard.config.replication_factor.max(1) as usize;
    let token = token_of(key);
    let mut replicas = ring.replicas(token, nodes.len() + 1);
    let fallbacks = replicas.split_off(rf.min(replicas.len()));
    let pending = match (future, snapshot) {
        (Some(future), Some(snapshot)) => future
            .replicas(token, rf)
            .into_iter()
            .filter(|n| !replicas.contains(n))
            .filter_map(|n| snapshot.iter().find(|info| info.node_id == n).cloned())
            .collect(),
        _ => Vec::new(),
    };
    Ok(Some(Placement {
        replicas,
        fallbacks,
        pending,
        nodes,
    }))
}

/// One peer call to `node`'s shard that owns `key`, through the shard's pipelined
/// [`PeerPool`](super::peer_pool::PeerPool), under `request_timeout_ms`.
pub(super) async fn peer_call(
    shard: &Rc<Shard>,
    node: &NodeInfo,
    key: &[u8],
    op: Op,
) -> Result<Reply, String> {
    shard.peers.call(shard, node, key, op).await
}

/// Merge `state` into `node`'s copy of `key` (self: the local engine). Ok when acked.
async fn replica_write(
    shard: &Rc<Shard>,
    placement: &Placement,
    node: NodeId,
    key: &[u8],
    state: &KeyState,
) -> Result<(), String> {
    if node == shard.node_id {
        return shard
            .engine
            .write(key, state.clone())
            .await
            .map_err(|e| e.to_string());
    }
    let info = placement
        .nodes
        .get(&node)
        .ok_or_else(|| format!("node {node:016x} not in the snapshot"))?;
    let op = Op::ReplicaWrite {
        key: key.to_vec(),
        state: state.to_bytes(),
    };
    match peer_call(shard, info, key, op).await? {
        Reply::Done => Ok(()),
        other => Err(format!("unexpected reply to ReplicaWrite: {other:?}")),
    }
}

/// `node`'s copy of `key` (self: the local engine).
async fn replica_read(
    shard: &Rc<Shard>,
    placement: &Placement,
    node: NodeId,
    key: &[u8],
) -> Result<Option<KeyState>, String> {
    if node == shard.node_id {
        return shard.engine.read(key).await.map_err(|e| e.to_string());
    }
    let info = placement
        .nodes
        .get(&node)
        .ok_or_else(|| format!("node {node:016x} not in the snapshot"))?;
    let op = Op::ReplicaRead { key: key.to_vec() };
    match peer_call(shard, info, key, op).await? {
        Reply::ReplicaState { state: None } => Ok(None),
        Reply::ReplicaState { state: Some(bytes) } => KeyState::decode(&bytes)
            .map(Some)
            .map_err(|e| format!("undecodable replica state: {e}")),
        other => Err(format!("unexpected reply to ReplicaRead: {other:?}")),
    }
}

fn spawn(shard: &Rc<Shard>, fut: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(fut, shard.foreground_queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(error = %e, "cannot spawn a replication task"),
    }
}

/// What the driver waits for: a replica's answer, or the deadline.
enum Wake<T> {
    Answer(NodeId, Result<T, String>),
    Deadline,
    Closed,
}

async fn next_event<T>(
    rx: &LocalReceiver<(NodeId, Result<T, String>)>,
    deadline: Instant,
) -> Wake<T> {
    futures_lite::future::or(
        async {
            match rx.recv().await {
                Some((node, result)) => Wake::Answer(node, result),
                None => Wake::Closed,
            }
        },
        async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            Wake::Deadline
        },
    )
    .await
}

/// Write `state` to the replicas of `key`; answer at W acks (see module doc). With
/// sloppy quorum, down homes get stand-ins that hold a hint and count toward W. The
/// coordination goes on after the answer until every contacted node answered or the
/// deadline passed; then every home that holds neither the write nor a hint for it gets
/// a hint stored here.
pub async fn coordinate_write(
    shard: &Rc<Shard>,
    placement: Placement,
    key: &[u8],
    state: KeyState,
    opts: WriteOpts,
    applied_locally: bool,
) -> Reply {
    let consistency = opts.consistency.unwrap_or(shard.config.write_consistency);
    let required = required_replicas(consistency, placement.replicas.len());
    let timeout_ms = shard.config.request_timeout_ms;
    // ALL means every home replica: a stand-in's hint never stands in for one there.
    let sloppy =
        opts.sloppy_quorum.unwrap_or(shard.config.sloppy_quorum) && consistency != Consistency::All;
    let placement = Rc::new(placement);
    // The machine's deadline is in wall-clock ms; the wait below uses the monotonic
    // clock, and at its end the deadline is reported as reached whatever the wall says.
    let started_ms = now_ms();
    let fallbacks: &[NodeId] = if sloppy { &placement.fallbacks } else { &[] };
    let (machine, effects) = WriteCoordinator::new_sloppy(
        &placement.replicas,
        fallbacks,
        |n| placement.is_alive(shard, n),
        required,
        started_ms,
        timeout_ms,
    );
    let (answer_tx, answer_rx) = local_channel::new_bounded::<Reply>(1);
    let write = Rc::new(PendingWrite {
        shard: shard.clone(),
        placement,
        key: key.into(),
        state,
        applied_locally,
    });
    spawn(shard, async move {
        drive_write(write, machine, effects, started_ms + timeout_ms, answer_tx).await;
    });
    match answer_rx.recv().await {
        Some(reply) => reply,
        None => internal("write coordinator ended without an answer"),
    }
}

/// A client write's per-request settings; None: the server's configured default.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOpts {
    pub consistency: Option<Consistency>,
    pub sloppy_quorum: Option<bool>,
}

/// What every task of one coordinated write shares.
struct PendingWrite {
    shard: Rc<Shard>,
    placement: Rc<Placement>,
    key: Rc<[u8]>,
    state: KeyState,
    /// The caller already wrote `state` to the local engine (causal mode): this node's
    /// ack is immediate.
    applied_locally: bool,
}

async fn drive_write(
    write: Rc<PendingWrite>,
    mut machine: WriteCoordinator,
    effects: Vec<WriteEffect>,
    deadline_ms: u64,
    answer: LocalSender<Reply>,
) {
    let shard = &write.shard;
    let deadline = Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
    let (tx, rx) = local_channel::new_unbounded::<(NodeId, Result<(), String>)>();
    let tx = Rc::new(tx);
    let mut pending = effects;
    loop {
        for effect in pending.drain(..) {
            match effect {
                WriteEffect::Send { to } => {
                    let (w, tx) = (write.clone(), tx.clone());
                    spawn(shard, async move {
                        let result = if to == w.shard.node_id && w.applied_locally {
                            Ok(())
                        } else {
                            replica_write(&w.shard, &w.placement, to, &w.key, &w.state).await
                        };
                        let _ = tx.send((to, result)).await;
                    });
                }
                WriteEffect::SendHint { to, home } => {
                    let (w, tx) = (write.clone(), tx.clone());
                    spawn(shard, async move {
                        let result = stand_in_write(&w, to, home).await;
                        let _ = tx.send((to, result)).await;
                    });
                }
                // The deadline is tracked here from the same timeout.
                WriteEffect::SetTimer { .. } => {}
                WriteEffect::Respond(Ok(())) => {
                    let _ = answer.try_send(Reply::Done);
                }
                WriteEffect::Respond(Err(e)) => {
                    let _ = answer.try_send(Reply::Error(e.to_error_reply()));
                }
            }
        }
        if machine.is_finished() {
            break;
        }
        pending = match next_event(&rx, deadline).await {
            Wake::Answer(node, Ok(())) => machine.on_ack(node),
            Wake::Answer(node, Err(e)) => {
                tracing::debug!(node = %format!("{node:016x}"), error = %e, "replica write failed");
                machine.on_error(node)
            }
            Wake::Deadline => machine.on_timer(now_ms().max(deadline_ms)),
            Wake::Closed => {
                let _ = answer.try_send(internal("replica answers channel closed"));
                return;
            }
        };
    }
    let state = write.state.to_bytes();
    for home in machine.unacked() {
        if home == shard.node_id {
            // Our own engine refused the write; a hint to ourselves would not help.
            continue;
        }
        if let Err(e) = super::hints::store(shard, home, &write.key, &state).await {
            tracing::warn!(target_node = %format!("{home:016x}"), error = %e, "hint not stored");
        }
    }
}

/// Hand the write to stand-in `to`, which stores it as a durable hint for `home`.
async fn stand_in_write(write: &PendingWrite, to: NodeId, home: NodeId) -> Result<(), String> {
    let shard = &write.shard;
    let state = write.state.to_bytes();
    if to == shard.node_id {
        return super::hints::store(shard, home, &write.key, &state).await;
    }
    let info = write
        .placement
        .nodes
        .get(&to)
        .ok_or_else(|| format!("node {to:016x} not in the snapshot"))?;
    let op = Op::HintReplay {
        key: write.key.to_vec(),
        state,
        target_node_id: home,
    };
    match peer_call(shard, info, &write.key, op).await? {
        Reply::Done => Ok(()),
        other => Err(format!("unexpected reply to a stand-in hint: {other:?}")),
    }
}

/// Read `key` from the replicas; answer the merge at R replies, repair the replicas
/// whose copy differs (also after the answer, until every replica answered or the
/// deadline passed).
pub async fn coordinate_read(
    shard: &Rc<Shard>,
    placement: Placement,
    key: &[u8],
    consistency: Option<Consistency>,
) -> Reply {
    let consistency = consistency.unwrap_or(shard.config.read_consistency);
    let required = required_replicas(consistency, placement.replicas.len());
    let timeout_ms = shard.config.request_timeout_ms;
    let placement = Rc::new(placement);
    let started_ms = now_ms();
    let speculation = speculation(shard);
    let (mut machine, effects) = ReadCoordinator::with_speculation(
        &placement.replicas,
        |n| placement.is_alive(shard, n),
        required,
        started_ms,
        timeout_ms,
        conflict::merge,
        speculation,
    );
    // A replica coordinating answers from its own copy (plus R-1 others).
    machine.wait_for_local(shard.node_id);
    let (answer_tx, answer_rx) = local_channel::new_bounded::<Reply>(1);
    let key: Rc<[u8]> = key.into();
    let driver_shard = shard.clone();
    spawn(shard, async move {
        drive_read(
            driver_shard,
            placement,
            key,
            machine,
            effects,
            started_ms + timeout_ms,
            timeout_ms,
            answer_tx,
        )
        .await;
    });
    match answer_rx.recv().await {
        Some(reply) => reply,
        None => internal("read coordinator ended without an answer"),
    }
}

/// How this read asks its replicas (`speculative_retry`): its own copy first, the
/// others at once or after the configured delay.
fn speculation(shard: &Shard) -> Speculation {
    let delay_ms = match shard.config.speculative_retry {
        SpeculativeRetry::Always => return Speculation::Always,
        SpeculativeRetry::FixedMs(ms) => ms,
        // Until the shard has seen enough replica reads, every replica is asked.
        SpeculativeRetry::Percentile(p) => match shard.read_latency.borrow_mut().percentile_us(p) {
            Some(us) => us.div_ceil(1000).max(1),
            None => return Speculation::Always,
        },
    };
    Speculation::After {
        delay_ms,
        prefer: Some(shard.node_id),
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive_read(
    shard: Rc<Shard>,
    placement: Rc<Placement>,
    key: Rc<[u8]>,
    mut machine: ReadCoordinator<KeyState>,
    effects: Vec<ReadEffect<KeyState>>,
    deadline_ms: u64,
    timeout_ms: u64,
    answer: LocalSender<Reply>,
) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let (tx, rx) = local_channel::new_unbounded::<(NodeId, Result<Option<KeyState>, String>)>();
    let tx = Rc::new(tx);
    let mut pending = effects;
    loop {
        for effect in pending.drain(..) {
            match effect {
                ReadEffect::Send { to } => {
                    let (shard2, placement, key, tx) =
                        (shard.clone(), placement.clone(), key.clone(), tx.clone());
                    spawn(&shard, async move {
                        let asked = Instant::now();
                        let result = replica_read(&shard2, &placement, to, &key).await;
                        if result.is_ok() {
                            let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
                            shard2.read_latency.borrow_mut().record(us);
                        }
                        let _ = tx.send((to, result)).await;
                    });
                }
                ReadEffect::SetTimer { .. } => {}
                ReadEffect::Respond(Ok(state)) => {
                    let _ = answer.try_send(value_reply(state));
                }
                ReadEffect::Respond(Err(e)) => {
                    let _ = answer.try_send(Reply::Error(e.to_error_reply()));
                }
                ReadEffect::Repair { node, state } => {
                    let (shard2, placement, key) = (shard.clone(), placement.clone(), key.clone());
                    spawn(&shard, async move {
                        if let Err(e) = replica_write(&shard2, &placement, node, &key, &state).await
                        {
                            tracing::debug!(node = %format!("{node:016x}"), error = %e, "read repair failed");
                        }
                    });
                }
            }
        }
        if machine.is_finished() {
            return;
        }
        // The machine's next timer (a speculation delay, else the deadline), never
        // past the deadline.
        let timer_ms = machine
            .next_timer_ms()
            .unwrap_or(deadline_ms)
            .min(deadline_ms);
        let wake_at = deadline
            .checked_sub(Duration::from_millis(deadline_ms - timer_ms))
            .unwrap_or(deadline);
        pending = match next_event(&rx, wake_at).await {
            Wake::Answer(node, Ok(state)) => machine.on_reply(node, state),
            Wake::Answer(node, Err(e)) => {
                tracing::debug!(node = %format!("{node:016x}"), error = %e, "replica read failed");
                machine.on_error(node)
            }
            Wake::Deadline => machine.on_timer(now_ms().max(timer_ms)),
            Wake::Closed => {
                let _ = answer.try_send(internal("replica answers channel closed"));
                return;
            }
        };
    }
}

/// Replica side of `ReplicaWrite`: merge the coordinator's state into the local copy.
pub async fn apply_replica_write(shard: &Rc<Shard>, key: &[u8], state: &[u8]) -> Reply {
    let state = match KeyState::decode(state) {
        Ok(state) => state,
        Err(e) => {
            return Reply::Error(ErrorReply::BadRequest {
                message: format!("undecodable replica state: {e}"),
            })
        }
    };
    if let KeyState::Lww(cell) = &state {
        // Keep this node's clock ahead of every version it stores; a version stamped
        // too far in the future is refused rather than allowed to win every merge.
        let observed = shard.hlc.borrow_mut().observe(
            now_ms(),
            cell.timestamp,
            shard.config.max_clock_skew_ms,
        );
        if let Err(e) = observed {
            return Reply::Error(ErrorReply::BadRequest {
                message: format!("replica write refused: {e}"),
            });
        }
    }
    match shard.engine.write(key, state).await {
        Ok(()) => Reply::Done,
        Err(e) => internal(e),
    }
}

/// Replica side of `ReplicaRead`: the local copy, encoded.
pub async fn answer_replica_read(shard: &Rc<Shard>, key: &[u8]) -> Reply {
    match shard.engine.read(key).await {
        Ok(state) => Reply::ReplicaState {
            state: state.map(|s| s.to_bytes()),
        },
        Err(e) => internal(e),
    }
}

/// Causal writes in a cluster are coordinated by a replica (its local state is the
/// base of the read-modify-write): forward the client's op to the first alive replica.
pub async fn forward_to_replica(
    shard: &Rc<Shard>,
    placement: &Placement,
    key: &[u8],
    op: Op,
) -> Reply {
    let Some(target) = placement
        .replicas
        .iter()
        .find(|n| placement.is_alive(shard, **n))
        .and_then(|n| placement.nodes.get(n))
    else {
        return Reply::Error(ErrorReply::Unavailable {
            required: 1,
            alive: 0,
        });
    };
    match peer_call(shard, target, key, op).await {
        Ok(reply) => reply,
        Err(e) => Reply::Error(ErrorReply::Internal {
            message: format!("forwarding to replica failed: {e}"),
        }),
    }
}

//! The glommio driver of gossip (docs/design.md §6.1), on shard 0 only: it owns the
//! node's [`Membership`], ticks it every `gossip_interval_ms`, carries its `Send` effects
//! to peers over authenticated peer connections ([`super::peer`]), feeds answers back,
//! and publishes a membership snapshot to every shard after each change. Messages travel
//! through the shard's [`PeerPool`](super::peer_pool::PeerPool), sharing its pipelined
//! connections and its fault rules with replica traffic to the same shard port.
//!
//! Addresses: gossip names nodes by their client address. A message for a node goes to
//! its shard 0 port, `shard_port_base` from its gossiped state. For a seed we have not
//! heard from yet (`--seeds HOST:PORT` are client addresses), we assume the default
//! layout, shard 0 on PORT + 1; a seed with another `shard_port_base` is reached once
//! its state arrives through another node.
//!
//! Bounds: at most one call in flight per target (a message for a busy target is
//! dropped: gossip is periodic and idempotent, the next round repairs it), every call has
//! the `request_timeout_ms` deadline, and a target that failed is retried only after a
//! backoff that doubles up to [`BACKOFF_MAX_INTERVALS`] gossip intervals.
//!
//! Must never: block the shard (everything is a task on the gossip queue), hold a
//! `RefCell` borrow across an await, or log the cluster secret.

use super::handler::now_ms;
use super::router::{ShardOp, ShardReply};
use super::shard::{Identity, Shard};
use crate::cluster::membership::{Effect, GossipMessage, Peer};
use crate::cluster::{FailureDetectorConfig, Membership, MembershipConfig, NodeState, SplitMix64};
use crate::config::Config;
use crate::protocol::types::{ErrorReply, NodeInfo, NodeStatus, Op, Reply};
use ahash::AHashMap;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Longest wait before re-dialling a failed peer, in gossip intervals. Short: a failed
/// dial costs one connection attempt, and while a peer backs off it cannot learn from
/// us that the partition healed.
const BACKOFF_MAX_INTERVALS: u64 = 4;

/// What shard 0 knows about one dial target (a peer's shard 0 address).
#[derive(Default)]
struct PeerSlot {
    /// A call is running: messages for this target are dropped meanwhile.
    busy: bool,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Not before this time (ms) after a failure.
    retry_at_ms: u64,
    /// The last failure was already logged at WARN (log each outage once).
    warned: bool,
}

/// Shard 0's gossip state.
pub struct Gossiper {
    membership: RefCell<Membership>,
    rng: RefCell<SplitMix64>,
    peers: RefCell<AHashMap<SocketAddr, PeerSlot>>,
    /// The last snapshot published, to publish only changes.
    published: RefCell<Option<Vec<NodeInfo>>>,
    /// Sequence number of the last snapshot: shards ignore one older than theirs
    /// (two publications may overlap on the mesh).
    publish_seq: std::cell::Cell<u64>,
    interval_ms: u64,
    /// The placement fields of the peers as `peers.toml` holds them now.
    persisted: RefCell<Vec<PlacementFields>>,
    /// A task is writing `peers.toml`; it writes again if the view changed meanwhile.
    persisting: std::cell::Cell<bool>,
}

/// What of a peer's state places data, so a change of it rewrites `peers.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlacementFields {
    id: u64,
    address: String,
    shard_count: u32,
    shard_port_base: u16,
    status: NodeStatus,
    tokens: Vec<u64>,
}

fn placement_fields(membership: &Membership) -> Vec<PlacementFields> {
    membership
        .states()
        .values()
        .filter(|s| s.id != membership.local_id())
        .map(|s| PlacementFields {
            id: s.id,
            address: s.address.clone(),
            shard_count: s.shard_count,
            shard_port_base: s.shard_port_base,
            status: s.status,
            tokens: s.tokens.clone(),
        })
        .collect()
}

impl Gossiper {
    pub fn new(config: &Config, identity: &Identity) -> Gossiper {
        let mut local = NodeState::new(
            identity.node_id,
            identity.generation,
            config.listen.to_string(),
        );
        // A `--join` node whose streaming has not finished (docs/design.md §6.9) is
        // Joining: outside the read/write ring, a pending write target. Everything else
        // starts Normal, as a node always did.
        local.status = if super::streaming::is_joining(&config.data_dir) {
            NodeStatus::Joining
        } else {
            NodeStatus::Normal
        };
        local.shard_count = config.shards;
        local.shard_port_base = config.shard_port_base;
        local.tokens = identity.tokens.clone();
        let mut failure_detector =
            FailureDetectorConfig::for_gossip_interval(config.gossip_interval_ms);
        failure_detector.phi_convict_threshold = config.phi_convict_threshold;
        let mut membership = Membership::new(
            local,
            MembershipConfig {
                seeds: config.seeds.iter().map(|s| s.to_string()).collect(),
                failure_detector,
            },
        );
        membership.restore(identity.known_peers.iter().cloned());
        let persisted = placement_fields(&membership);
        Gossiper {
            membership: RefCell::new(membership),
            rng: RefCell::new(SplitMix64::new(identity.node_id ^ identity.generation)),
            peers: RefCell::new(AHashMap::new()),
            published: RefCell::new(None),
            publish_seq: std::cell::Cell::new(0),
            interval_ms: config.gossip_interval_ms,
            persisted: RefCell::new(persisted),
            persisting: std::cell::Cell::new(false),
        }
    }

    /// Shard 0's port of `peer`: from its gossiped state when known, else (a seed) the
    /// default layout, client port + 1.
    fn target_of(&self, peer: &Peer) -> Option<SocketAddr> {
        let client: SocketAddr = peer.address.parse().ok()?;
        let membership = self.membership.borrow();
        let known = peer
            .node
            .and_then(|id| membership.state(id))
            .or_else(|| {
                membership
                    .states()
                    .values()
                    .find(|s| s.address == peer.address)
            })
            .filter(|s| s.shard_port_base != 0);
        let port = match known {
            Some(state) => state.shard_port_base,
            None => client.port().checked_add(1)?,
        };
        Some(SocketAddr::new(client.ip(), port))
    }
}

/// The gossip loop of shard 0: one round per interval until the node stops.
pub async fn run(shard: Rc<Shard>) {
    let Some(gossiper) = shard.gossip.as_ref() else {
        return;
    };
    let interval = Duration::from_millis(gossiper.interval_ms);
    publish(&shard).await;
    // A round at once, not after the first interval: a restarted node learns which of
    // its remembered peers are up one round-trip after it starts.
    round(&shard, gossiper).await;
    if local_status(&shard) == Some(NodeStatus::Joining) {
        match glommio::spawn_local_into(
            super::streaming::run_join(shard.clone()),
            shard.background_queue,
        ) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(error = %e, "cannot start the join streaming"),
        }
    }
    loop {
        let stopped = futures_lite::future::or(
            async {
                glommio::timer::sleep(interval).await;
                false
            },
            async {
                shard.stopping.wait().await;
                true
            },
        )
        .await;
        if stopped {
            return;
        }
        round(&shard, gossiper).await;
    }
}

/// One gossip round: refresh the local load, tick the membership, carry out its effects.
async fn round(shard: &Rc<Shard>, gossiper: &Gossiper) {
    let load_bytes: u64 = super::router::all_stats(shard)
        .await
        .iter()
        .map(|s| s.engine.data_bytes)
        .sum();
    let effects = {
        let mut membership = gossiper.membership.borrow_mut();
        if membership.local_state().load_bytes != load_bytes {
            membership.set_local_load_bytes(load_bytes);
        }
        let mut rng = gossiper.rng.borrow_mut();
        membership.tick(now_ms(), &mut *rng)
    };
    apply_effects(shard, effects).await;
}

/// This node's own gossiped status (shard 0 only; None elsewhere).
pub fn local_status(shard: &Shard) -> Option<NodeStatus> {
    let gossiper = shard.gossip.as_ref()?;
    let status = gossiper.membership.borrow().local_state().status;
    Some(status)
}

/// Change this node's gossiped status (joining → normal, normal → leaving → left).
/// The change is made at once, before this returns (so a caller that checked the old
/// status in the same step cannot race another caller); the returned future publishes
/// the new view to every shard; gossip spreads it to the peers. Shard 0 only.
pub fn set_local_status(
    shard: &Rc<Shard>,
    status: NodeStatus,
) -> impl std::future::Future<Output = ()> + 'static {
    let shard = shard.clone();
    match shard.gossip.as_ref() {
        Some(gossiper) => {
            gossiper.membership.borrow_mut().set_local_status(status);
            tracing::info!(status = ?status, "this node's status changed");
        }
        None => tracing::error!("set_local_status called on a shard other than 0"),
    }
    async move { publish(&shard).await }
}

/// Carry out membership effects: sends become tasks, changes are logged and published.
async fn apply_effects(shard: &Rc<Shard>, effects: Vec<Effect>) {
    let mut changed = false;
    for effect in effects {
        match effect {
            Effect::Send { to, msg } => spawn_send(shard, to, msg),
            Effect::NodeUp(id) => {
                tracing::info!(node = format_args!("{id:016x}"), "node is up");
                forget_gossip_backoff(shard, id);
                changed = true;
            }
            Effect::NodeDown(id) => {
                tracing::warn!(node = format_args!("{id:016x}"), "node is down");
                changed = true;
            }
            Effect::NodeUpdated(_) => changed = true,
        }
    }
    if changed {
        publish(shard).await;
    }
}

/// `id` is up (heard from directly or through another node): gossip with it at the next
/// round instead of after the backoff its failures while it was unreachable built up,
/// so both sides of a healed partition talk again within a round.
fn forget_gossip_backoff(shard: &Shard, id: u64) {
    let Some(gossiper) = shard.gossip.as_ref() else {
        return;
    };
    let address = gossiper
        .membership
        .borrow()
        .state(id)
        .map(|s| s.address.clone());
    let Some(address) = address else {
        return;
    };
    let Some(target) = gossiper.target_of(&Peer {
        node: Some(id),
        address,
    }) else {
        return;
    };
    if let Some(slot) = gossiper.peers.borrow_mut().get_mut(&target) {
        slot.failures = 0;
        slot.retry_at_ms = 0;
    }
}

fn spawn_send(shard: &Rc<Shard>, to: Peer, msg: GossipMessage) {
    let task_shard = shard.clone();
    let spawned = glommio::spawn_local_into(
        async move { send(&task_shard, to, msg).await },
        shard.gossip_queue,
    );
    match spawned {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(error = %e, "cannot spawn gossip send"),
    }
}

/// Send one gossip message to `to` and handle the answer. Drops it if the target is
/// busy or backing off.
async fn send(shard: &Rc<Shard>, to: Peer, msg: GossipMessage) {
    let Some(gossiper) = shard.gossip.as_ref() else {
        return;
    };
    let Some(target) = gossiper.target_of(&to) else {
        tracing::debug!(address = %to.address, "gossip target has no usable address");
        return;
    };
    let now = now_ms();
    {
        let mut peers = gossiper.peers.borrow_mut();
        let slot = peers.entry(target).or_default();
        if slot.busy || now < slot.retry_at_ms {
            return;
        }
        slot.busy = true;
    }
    let result = shard
        .peers
        .call_addr(shard, target, &to.address, to.node, Op::Gossip(msg))
        .await;
    let effects = {
        let mut peers = gossiper.peers.borrow_mut();
        let slot = peers.entry(target).or_default();
        slot.busy = false;
        match result {
            Ok(reply) => {
                if slot.warned {
                    tracing::info!(peer = %target, "peer reachable again");
                }
                slot.failures = 0;
                slot.retry_at_ms = 0;
                slot.warned = false;
                drop(peers);
                match reply {
                    Reply::Gossip(answer) => gossiper
                        .membership
                        .borrow_mut()
                        .on_message(now_ms(), answer),
                    Reply::Done => Vec::new(),
                    other => {
                        tracing::debug!(peer = %target, reply = ?other, "unexpected reply to gossip");
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let backoff_ms = (gossiper.interval_ms << slot.failures.min(16))
                    .min(gossiper.interval_ms * BACKOFF_MAX_INTERVALS);
                slot.retry_at_ms = now_ms() + backoff_ms;
                // The pool counted and logged an authentication refusal already.
                if !slot.warned {
                    tracing::warn!(peer = %target, error = %e, "cannot gossip with peer; retrying with backoff");
                } else {
                    tracing::debug!(peer = %target, error = %e, "cannot gossip with peer");
                }
                slot.warned = true;
                Vec::new()
            }
        }
    };
    apply_effects(shard, effects).await;
}

/// An incoming gossip message from an authenticated peer connection, on shard 0. A Syn
/// is answered with its Ack as the reply; Ack2 with `Done`.
pub fn on_gossip(shard: &Rc<Shard>, msg: GossipMessage) -> Reply {
    let Some(gossiper) = shard.gossip.as_ref() else {
        return Reply::Error(ErrorReply::Internal {
            message: "gossip reached a shard other than 0".into(),
        });
    };
    let effects = gossiper.membership.borrow_mut().on_message(now_ms(), msg);
    let mut reply = Reply::Done;
    let mut rest = Vec::new();
    for effect in effects {
        match effect {
            Effect::Send {
                msg: msg @ GossipMessage::Ack(_),
                ..
            } if matches!(reply, Reply::Done) => reply = Reply::Gossip(msg),
            other => rest.push(other),
        }
    }
    if !rest.is_empty() {
        let task_shard = shard.clone();
        let spawned = glommio::spawn_local_into(
            async move { apply_effects(&task_shard, rest).await },
            shard.gossip_queue,
        );
        match spawned {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(error = %e, "cannot spawn gossip effects"),
        }
    }
    reply
}

/// Route an incoming gossip message to shard 0 (over the mesh from another shard).
pub async fn route_gossip(shard: &Rc<Shard>, msg: GossipMessage) -> Reply {
    if shard.id == 0 {
        return on_gossip(shard, msg);
    }
    match shard.mesh.call(shard.id, 0, ShardOp::Gossip(msg)).await {
        Ok(ShardReply::Client(reply)) => reply,
        Ok(_) => Reply::Error(ErrorReply::Internal {
            message: "mesh reply mismatch".into(),
        }),
        Err(message) => Reply::Error(ErrorReply::Internal { message }),
    }
}

/// Rewrite `peers.toml` while the peers' placement fields differ from what it holds.
/// One writer at a time (so renames land in order); the write runs on glommio's
/// blocking thread, off the executor.
async fn persist_peers(shard: &Rc<Shard>, gossiper: &Gossiper) {
    if gossiper.persisting.replace(true) {
        return; // the running writer sees this change when it compares again
    }
    loop {
        let (fields, text) = {
            let membership = gossiper.membership.borrow();
            let fields = placement_fields(&membership);
            if fields == *gossiper.persisted.borrow() {
                break;
            }
            let text = crate::cluster::known_peers::encode(
                membership.local_id(),
                membership.states().values(),
            );
            (fields, text)
        };
        let dir = shard.config.data_dir.clone();
        let written = glommio::executor()
            .spawn_blocking(move || super::write_known_peers(&dir, &text))
            .await;
        match written {
            Ok(()) => *gossiper.persisted.borrow_mut() = fields,
            Err(e) => {
                // The next change tries again; meanwhile a restart uses the older file.
                tracing::error!(error = %format!("{e:#}"), "cannot persist the known peers");
                break;
            }
        }
    }
    gossiper.persisting.set(false);
}

/// Publish shard 0's view to every shard if it changed since the last publication.
pub(super) async fn publish(shard: &Rc<Shard>) {
    let Some(gossiper) = shard.gossip.as_ref() else {
        return;
    };
    persist_peers(shard, gossiper).await;
    let nodes = gossiper.membership.borrow().node_infos();
    if gossiper.published.borrow().as_ref() == Some(&nodes) {
        return;
    }
    *gossiper.published.borrow_mut() = Some(nodes.clone());
    let seq = gossiper.publish_seq.get() + 1;
    gossiper.publish_seq.set(seq);
    super::shard::install_topology(shard, seq, nodes.clone());
    for s in 1..shard.shard_count {
        if let Err(e) = shard
            .mesh
            .call(
                shard.id,
                s,
                ShardOp::Topology {
                    seq,
                    nodes: nodes.clone(),
                },
            )
            .await
        {
            tracing::error!(shard = s, error = %e, "cannot publish membership");
        }
    }
}

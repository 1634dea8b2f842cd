//! Routing between the shards of one node. A keyed request is executed by the shard
//! that owns the key's token (`shard_of(token_of(key))`); a request that arrived on
//! another shard is forwarded over the glommio channel mesh and its reply comes back
//! the same way. Nothing here takes a lock: each shard owns its pending table.

use super::handler;
use super::shard::{bump, Shard, ShardStats};
use crate::cluster::membership::GossipMessage;
use crate::protocol::token::{shard_of, token_of};
use crate::protocol::types::{ErrorReply, NodeInfo, Op, Reply};
use ahash::AHashMap;
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// What one shard asks of another.
#[derive(Debug)]
pub enum ShardOp {
    /// A client operation on a key this shard owns.
    Client(Op),
    /// This shard's engine statistics.
    Stats,
    /// A gossip message that arrived on another shard's peer connection: for shard 0's
    /// membership. Answered with `Client(reply)`.
    Gossip(GossipMessage),
    /// Shard 0's membership snapshot number `seq`. Answered with `Done`.
    Topology { seq: u64, nodes: Vec<NodeInfo> },
}

#[derive(Debug)]
pub enum ShardReply {
    Client(Reply),
    Stats(ShardStats),
    Done,
}

/// A message on the channel mesh.
#[derive(Debug)]
pub enum MeshMsg {
    Request { origin: u32, id: u64, op: ShardOp },
    Reply { id: u64, reply: ShardReply },
}

/// This shard's end of the mesh and the replies it is waiting for.
pub struct Mesh {
    senders: Senders<MeshMsg>,
    next_id: Cell<u64>,
    pending: RefCell<AHashMap<u64, LocalSender<ShardReply>>>,
}

impl Mesh {
    pub fn new(senders: Senders<MeshMsg>) -> Self {
        Mesh {
            senders,
            next_id: Cell::new(1),
            pending: RefCell::new(AHashMap::new()),
        }
    }

    /// Send `op` to shard `to` and wait for its reply.
    pub async fn call(&self, from: u32, to: u32, op: ShardOp) -> Result<ShardReply, String> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        if self
            .senders
            .send_to(
                to as usize,
                MeshMsg::Request {
                    origin: from,
                    id,
                    op,
                },
            )
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&id);
            return Err(format!("shard {to} is not reachable"));
        }
        rx.recv()
            .await
            .ok_or_else(|| format!("shard {to} dropped the request"))
    }
}

/// Start one task per peer shard that serves its requests and delivers its replies.
pub fn spawn_receivers(shard: &Rc<Shard>, mut receivers: Receivers<MeshMsg>) {
    for (_peer, mut stream) in receivers.streams() {
        let receiver_shard = shard.clone();
        let queue = shard.foreground_queue;
        let task = glommio::spawn_local_into(
            async move {
                let shard = receiver_shard;
                while let Some(msg) = stream.next().await {
                    match msg {
                        MeshMsg::Reply { id, reply } => {
                            let waiter = shard.mesh.pending.borrow_mut().remove(&id);
                            if let Some(tx) = waiter {
                                let _ = tx.try_send(reply);
                            }
                        }
                        MeshMsg::Request { origin, id, op } => {
                            let shard = shard.clone();
                            let queue = shard.foreground_queue;
                            let spawned = glommio::spawn_local_into(
                                async move {
                                    let reply = match op {
                                        ShardOp::Client(op) => ShardReply::Client(
                                            handler::execute_local(&shard, op).await,
                                        ),
                                        ShardOp::Stats => ShardReply::Stats(shard.stats()),
                                        ShardOp::Gossip(msg) => ShardReply::Client(
                                            super::gossip::on_gossip(&shard, msg),
                                        ),
                                        ShardOp::Topology { seq, nodes } => {
                                            super::shard::install_topology(&shard, seq, nodes);
                                            ShardReply::Done
                                        }
                                    };
                                    let _ = shard
                                        .mesh
                                        .senders
                                        .send_to(origin as usize, MeshMsg::Reply { id, reply })
                                        .await;
                                },
                                queue,
                            );
                            if let Ok(task) = spawned {
                                task.detach();
                            }
                        }
                    }
                }
            },
            queue,
        );
        match task {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(error = %e, "cannot spawn mesh receiver"),
        }
    }
}

/// The key an operation addresses, if it has one.
fn key_of(op: &Op) -> Option<&[u8]> {
    match op {
        Op::Get { key, .. } | Op::Put { key, .. } | Op::Delete { key, .. } => Some(key),
        Op::ReplicaWrite { key, .. } | Op::ReplicaRead { key } | Op::HintReplay { key, .. } => {
            Some(key)
        }
        // A StreamRange page is served by the shard it was sent to (the asker addresses
        // each shard port whose slice meets the range); Decommission and Repair go to shard 0.
        Op::Ping
        | Op::Topology
        | Op::Auth { .. }
        | Op::PeerHandshake { .. }
        | Op::Gossip(_)
        | Op::StreamRange { .. }
        | Op::Decommission
        | Op::Repair => None,
    }
}

/// Execute a client operation on the shard that owns it.
pub async fn execute(shard: &Rc<Shard>, op: Op) -> Reply {
    let owner = match key_of(&op) {
        Some(key) => shard_of(token_of(key), shard.shard_count),
        // Shard 0 owns membership, so it runs a decommission or a repair.
        None if matches!(op, Op::Decommission | Op::Repair) => 0,
        None => shard.id,
    };
    if owner == shard.id {
        return handler::execute_local(shard, op).await;
    }
    bump(&shard.metrics.forwarded);
    match shard.mesh.call(shard.id, owner, ShardOp::Client(op)).await {
        Ok(ShardReply::Client(reply)) => reply,
        Ok(ShardReply::Stats(_) | ShardReply::Done) => Reply::Error(ErrorReply::Internal {
            message: "mesh reply mismatch".into(),
        }),
        Err(message) => Reply::Error(ErrorReply::Internal { message }),
    }
}

/// Statistics of every shard of this node (this one included), in shard order.
pub async fn all_stats(shard: &Rc<Shard>) -> Vec<ShardStats> {
    let mut out = Vec::with_capacity(shard.shard_count as usize);
    for s in 0..shard.shard_count {
        if s == shard.id {
            out.push(shard.stats());
        } else if let Ok(ShardReply::Stats(stats)) =
            shard.mesh.call(shard.id, s, ShardOp::Stats).await
        {
            out.push(stats);
        }
    }
    out
}

//! Range streaming for joining and leaving (docs/design.md §6.9), driven on shard 0.
//!
//! **Join** (`ringkv serve --join`): the node chose its tokens at first start
//! (`server::prepare_data_dir`, `allocate_tokens` on the seed's ring) and gossips status
//! `Joining`: it is outside the read/write ring, and coordinators also send it the
//! writes for keys it will replicate (`replication::placement`'s pending replicas).
//! [`run_join`] waits until every Normal node lists it as Joining, lets the writes
//! coordinated under the old view finish (`request_timeout_ms`), then, for every range
//! of the ring-with-it whose replica set includes it, pulls every key from a current
//! replica with paged [`Op::StreamRange`] calls and merges each state into its own
//! engine. Then it removes the `JOINING` marker and gossips `Normal`.
//!
//! **Decommission** (`ringkv decommission`): [`decommission`] refuses unless this node
//! is Normal, no other node is joining or leaving, and another Normal node remains. It
//! gossips `Leaving` (still a replica; coordinators send writes for its ranges to the
//! nodes that will take them as pending replicas), waits for every node to see it, then
//! pushes every key of every range it replicates to the nodes that gain the range in the
//! ring without it, writes the `DECOMMISSIONED` marker and gossips `Left`.
//!
//! Merging a streamed state is idempotent, so a join interrupted by a crash streams
//! again from the start on restart, and a page retried is harmless.
//!
//! Cost: the source answers each page with a scan of its whole engine filtered by token
//! (`Engine::scan_page`); keys are hashed, so a token range is scattered over key order
//! and there is no cheaper seek. A range of k keys costs about k / page + 1 passes.
//!
//! Must never: mark a node Normal before every range it gains was streamed, mark a node
//! Left before every range it held reached its new owners, or run a page without the
//! peer deadline (`request_timeout_ms`).

use super::handler::internal;
use super::router::{self, ShardOp, ShardReply};
use super::shard::Shard;
use crate::cluster::ring::{Ring, Token};
use crate::cluster::NodeId;
use crate::conflict::KeyState;
use crate::protocol::token::{shard_of, token_of};
use crate::protocol::types::{
    ErrorReply, MovedStats, NodeInfo, NodeStatus, Op, RepairStats, Reply,
};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Marker file in the data directory: present from the moment a `--join` node chose
/// its tokens until its streaming finished. A node restarted with it joins again.
pub const JOINING_MARKER: &str = "JOINING";
/// Marker file in the data directory of a decommissioned node: it refuses to start
/// (its tokens are gone from the ring; wipe the directory to add the machine again).
pub const DECOMMISSIONED_MARKER: &str = "DECOMMISSIONED";

/// Largest page a source serves, whatever the asker wants.
pub const PAGE_KEYS_MAX: u32 = 4096;
pub const PAGE_BYTES_MAX: u32 = 8 << 20;
/// The page this node asks for.
const PAGE_KEYS: u32 = 512;
const PAGE_BYTES: u32 = 1 << 20;
/// A page that failed is retried this many times (on the same source) before the
/// next source is tried.
const PAGE_ATTEMPTS: u32 = 3;
/// How long a joining or leaving node waits for every peer to see its new status.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether this data directory holds an unfinished join.
pub fn is_joining(data_dir: &Path) -> bool {
    data_dir.join(JOINING_MARKER).exists()
}

/// Whether `token` lies in `(start_exclusive, end_inclusive]`, wrapping past
/// `u64::MAX`; equal bounds are the whole ring (as `cluster::ring::TokenRange`).
pub fn token_in_range(token: Token, start_exclusive: Token, end_inclusive: Token) -> bool {
    match start_exclusive.cmp(&end_inclusive) {
        std::cmp::Ordering::Equal => true,
        std::cmp::Ordering::Less => start_exclusive < token && token <= end_inclusive,
        std::cmp::Ordering::Greater => token > start_exclusive || token <= end_inclusive,
    }
}

/// The shards of a node with `shard_count` shards whose token slice meets
/// `(start_exclusive, end_inclusive]`, ascending.
pub fn shards_meeting(start_exclusive: Token, end_inclusive: Token, shard_count: u32) -> Vec<u32> {
    let shard_count = shard_count.max(1);
    if start_exclusive == end_inclusive {
        return (0..shard_count).collect();
    }
    let first = shard_of(start_exclusive.wrapping_add(1), shard_count);
    let last = shard_of(end_inclusive, shard_count);
    let mut shards: Vec<u32> = if start_exclusive < end_inclusive {
        (first..=last).collect()
    } else if start_exclusive == u64::MAX {
        // (MAX, end]: nothing above MAX, so only [0, end].
        (0..=last).collect()
    } else {
        (first..shard_count).chain(0..=last).collect()
    };
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// One range to move and the nodes at its other end: for a join, the current replicas
/// to pull from (a replica that drops out of the range first: it is the one that
/// certainly had the range); for a decommission, the nodes that gain the range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub start_exclusive: Token,
    pub end_inclusive: Token,
    pub nodes: Vec<NodeId>,
}

/// The ranges `joiner` gains when `old` becomes `new` (= `old` with the joiner), each
/// with its sources. Every range of `new` lies inside one range of `old`, because `new`
/// only adds tokens, so the replicas of its end token in `old` are its replicas there.
pub fn join_plan(old: &Ring, new: &Ring, joiner: NodeId, rf: usize) -> Vec<Transfer> {
    new.ranges(rf)
        .into_iter()
        .filter(|r| r.replicas.contains(&joiner))
        .map(|r| {
            let mut sources = old.replicas(r.end_inclusive, rf);
            // Sources that lose the range first, then the others, in ring order.
            sources.sort_by_key(|n| r.replicas.contains(n));
            Transfer {
                start_exclusive: r.start_exclusive,
                end_inclusive: r.end_inclusive,
                nodes: sources,
            }
        })
        .filter(|t| !t.nodes.is_empty())
        .collect()
}

/// The ranges `leaver` replicates in `current`, each with the nodes that replicate it
/// in `after` (= `current` without the leaver) and not in `current`. Every range of
/// `current` lies inside one range of `after`, which only lost tokens.
pub fn leave_plan(current: &Ring, after: &Ring, leaver: NodeId, rf: usize) -> Vec<Transfer> {
    current
        .ranges(rf)
        .into_iter()
        .filter(|r| r.replicas.contains(&leaver))
        .map(|r| Transfer {
            start_exclusive: r.start_exclusive,
            end_inclusive: r.end_inclusive,
            nodes: after
                .replicas(r.end_inclusive, rf)
                .into_iter()
                .filter(|n| !r.replicas.contains(n))
                .collect(),
        })
        .filter(|t| !t.nodes.is_empty())
        .collect()
}

/// The ranges `node` replicates in `ring`, each with its other replicas: what a repair
/// of `node` exchanges, and with whom.
pub fn repair_plan(ring: &Ring, node: NodeId, rf: usize) -> Vec<Transfer> {
    ring.ranges(rf)
        .into_iter()
        .filter(|r| r.replicas.contains(&node))
        .map(|r| Transfer {
            start_exclusive: r.start_exclusive,
            end_inclusive: r.end_inclusive,
            nodes: r.replicas.into_iter().filter(|n| *n != node).collect(),
        })
        .filter(|t| !t.nodes.is_empty())
        .collect()
}

/// Source side of `StreamRange`: one page of this shard's keys in the range, scanned
/// in the background queue so a stream cannot starve client requests.
pub async fn on_stream_range(
    shard: &Rc<Shard>,
    start_exclusive: Token,
    end_inclusive: Token,
    after_key: Option<Vec<u8>>,
    limit_keys: u32,
    limit_bytes: u32,
) -> Reply {
    let engine = shard.engine.clone();
    let limit_keys = limit_keys.clamp(1, PAGE_KEYS_MAX) as usize;
    let limit_bytes = limit_bytes.clamp(1, PAGE_BYTES_MAX) as usize;
    let scan = glommio::spawn_local_into(
        async move {
            engine
                .scan_page(
                    after_key.as_deref(),
                    |key| token_in_range(token_of(key), start_exclusive, end_inclusive),
                    limit_keys,
                    limit_bytes,
                )
                .await
        },
        shard.background_queue,
    );
    match scan {
        Ok(task) => match task.await {
            Ok(page) => Reply::StreamBatch {
                entries: page
                    .entries
                    .into_iter()
                    .map(|(key, state)| (key, state.to_bytes()))
                    .collect(),
                more: page.more,
            },
            Err(e) => internal(e),
        },
        Err(e) => internal(format!("cannot spawn a stream scan: {e}")),
    }
}

/// Where a page comes from: a shard of this node, or a shard of a peer.
#[derive(Clone, Copy)]
enum Source<'a> {
    Local(u32),
    Remote(&'a NodeInfo, u32),
}

/// The port of shard `s` of `node`.
fn shard_port_addr(node: &NodeInfo, s: u32) -> Option<SocketAddr> {
    let client: SocketAddr = node.address.parse().ok()?;
    let base = if node.shard_port_base == 0 {
        client.port().checked_add(1)?
    } else {
        node.shard_port_base
    };
    let port = base.checked_add(u16::try_from(s).ok()?)?;
    Some(SocketAddr::new(client.ip(), port))
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

async fn fetch_page(
    shard: &Rc<Shard>,
    source: Source<'_>,
    transfer: &Transfer,
    after_key: Option<Vec<u8>>,
) -> Result<(Entries, bool), String> {
    let op = Op::StreamRange {
        start_exclusive: transfer.start_exclusive,
        end_inclusive: transfer.end_inclusive,
        after_key,
        limit_keys: PAGE_KEYS,
        limit_bytes: PAGE_BYTES,
    };
    let reply = match source {
        Source::Local(s) if s == shard.id => super::handler::execute_local(shard, op).await,
        Source::Local(s) => match shard.mesh.call(shard.id, s, ShardOp::Client(op)).await? {
            ShardReply::Client(reply) => reply,
            _ => return Err("mesh reply mismatch".into()),
        },
        Source::Remote(node, s) => {
            let addr =
                shard_port_addr(node, s).ok_or_else(|| format!("bad address {}", node.address))?;
            shard
                .peers
                .call_addr(shard, addr, &node.address, Some(node.node_id), op)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    match reply {
        Reply::StreamBatch { entries, more } => Ok((entries, more)),
        other => Err(format!("unexpected reply to StreamRange: {other:?}")),
    }
}

/// Stream every page of `transfer` from `source` into `sink`, counting what moved.
async fn stream_range<F, Fut>(
    shard: &Rc<Shard>,
    source: Source<'_>,
    transfer: &Transfer,
    moved: &mut MovedStats,
    sink: F,
) -> Result<(), String>
where
    F: Fn(Entries) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut after_key: Option<Vec<u8>> = None;
    loop {
        if shard.stopping.is_set() {
            return Err("the node is stopping".into());
        }
        let mut attempt = 0;
        let (entries, more) = loop {
            attempt += 1;
            match fetch_page(shard, source, transfer, after_key.clone()).await {
                Ok(page) => break page,
                Err(e) if attempt < PAGE_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "stream page failed; retrying");
                }
                Err(e) => return Err(e),
            }
        };
        let last = entries.last().map(|(k, _)| k.clone());
        // Count before handing over: the sink owns the entries.
        let keys = entries.len() as u64;
        let bytes: u64 = entries
            .iter()
            .map(|(k, s)| (k.len() + s.len()) as u64)
            .sum();
        if !entries.is_empty() {
            sink(entries).await?;
        }
        moved.keys_streamed += keys;
        moved.bytes_streamed += bytes;
        match (more, last) {
            (true, Some(last)) => after_key = Some(last),
            _ => return Ok(()),
        }
    }
}

/// Run `work` on every item concurrently (so the engine's group commit shares its
/// fsyncs among them) in the background queue; the first failure, if any.
async fn all_concurrently<T, F, Fut>(
    shard: &Rc<Shard>,
    items: Vec<T>,
    work: F,
) -> Result<(), String>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    let mut tasks = Vec::with_capacity(items.len());
    for item in items {
        let task = glommio::spawn_local_into(work(item), shard.background_queue)
            .map_err(|e| format!("cannot spawn a stream write: {e}"))?;
        tasks.push(task);
    }
    let mut first_error = None;
    for task in tasks {
        if let Err(e) = task.await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Merge streamed entries into this node's engines (each on the shard that owns it).
async fn apply_locally(shard: &Rc<Shard>, entries: Entries) -> Result<(), String> {
    all_concurrently(shard, entries, |(key, state)| {
        let shard = shard.clone();
        async move {
            match router::execute(&shard, Op::ReplicaWrite { key, state }).await {
                Reply::Done => Ok(()),
                other => Err(format!("local stream write failed: {other:?}")),
            }
        }
    })
    .await
}

/// Push streamed entries to each of `targets` (the shard owning each key).
async fn push_to(shard: &Rc<Shard>, targets: &[NodeInfo], entries: Entries) -> Result<(), String> {
    let mut items = Vec::with_capacity(entries.len() * targets.len());
    for (key, state) in &entries {
        for target in targets {
            items.push((target.clone(), key.clone(), state.clone()));
        }
    }
    all_concurrently(shard, items, |(target, key, state)| {
        let shard = shard.clone();
        async move {
            let op = Op::ReplicaWrite {
                key: key.clone(),
                state,
            };
            match shard.peers.call(&shard, &target, &key, op).await? {
                Reply::Done => Ok(()),
                other => Err(format!(
                    "stream write to {} refused: {other:?}",
                    target.address
                )),
            }
        }
    })
    .await
}

/// The latest membership snapshot of this shard.
fn snapshot(shard: &Shard) -> Rc<Vec<NodeInfo>> {
    shard
        .topology
        .borrow()
        .as_ref()
        .map(|(_, nodes)| nodes.clone())
        .unwrap_or_default()
}

/// The ring of the token owners (Normal and Leaving nodes) in `nodes`.
fn owners_ring(nodes: &[NodeInfo]) -> Result<Ring, String> {
    Ring::new(
        nodes
            .iter()
            .filter(|n| matches!(n.status, NodeStatus::Normal | NodeStatus::Leaving))
            .map(|n| (n.node_id, n.tokens.as_slice())),
    )
    .map_err(|e| e.to_string())
}

/// Sleep `duration` unless the node stops first; false if it stopped.
async fn pause(shard: &Shard, duration: Duration) -> bool {
    futures_lite::future::or(
        async {
            glommio::timer::sleep(duration).await;
            true
        },
        async {
            shard.stopping.wait().await;
            false
        },
    )
    .await
}

/// Wait until every up peer that owns tokens lists this node with `status` in its
/// topology (so every coordinator applies the pending writes), then for the writes
/// coordinated under the old view to finish (`request_timeout_ms`).
async fn wait_announced(shard: &Rc<Shard>, status: NodeStatus) -> Result<(), String> {
    let deadline = Instant::now() + ANNOUNCE_TIMEOUT;
    loop {
        let nodes = snapshot(shard);
        let peers: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| n.node_id != shard.node_id)
            .filter(|n| matches!(n.status, NodeStatus::Normal | NodeStatus::Leaving) && n.up)
            .collect();
        let mut all_see = !peers.is_empty() || status == NodeStatus::Leaving;
        for peer in &peers {
            let sees = match shard.peers.call(shard, peer, b"", Op::Topology).await {
                Ok(Reply::Topology(t)) => t
                    .nodes
                    .iter()
                    .any(|n| n.node_id == shard.node_id && n.status == status),
                _ => false,
            };
            if !sees {
                all_see = false;
                break;
            }
        }
        if all_see {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "peers did not all see this node {status:?} within {ANNOUNCE_TIMEOUT:?}"
            ));
        }
        if !pause(
            shard,
            Duration::from_millis(shard.config.gossip_interval_ms),
        )
        .await
        {
            return Err("the node is stopping".into());
        }
    }
    if pause(
        shard,
        Duration::from_millis(shard.config.request_timeout_ms),
    )
    .await
    {
        Ok(())
    } else {
        Err("the node is stopping".into())
    }
}

/// Shard 0 of a joining node: stream, then become Normal (see the module doc). Retries
/// with a pause until it succeeds or the node stops.
pub async fn run_join(shard: Rc<Shard>) {
    let started = Instant::now();
    let moved = loop {
        match join_once(&shard).await {
            Ok(moved) => break moved,
            Err(e) if shard.stopping.is_set() => {
                tracing::info!(error = %e, "join streaming interrupted by shutdown; it restarts with the node");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "join streaming failed; retrying");
                let backoff = Duration::from_millis(shard.config.gossip_interval_ms * 2);
                if !pause(&shard, backoff).await {
                    return;
                }
            }
        }
    };
    let marker = shard.config.data_dir.join(JOINING_MARKER);
    if let Err(e) = std::fs::remove_file(&marker)
        .and_then(|()| std::fs::File::open(&shard.config.data_dir)?.sync_all())
    {
        // Still joining on disk: a restart would stream again (harmless), so go on.
        tracing::error!(marker = %marker.display(), error = %e, "cannot remove the join marker");
    }
    super::gossip::set_local_status(&shard, NodeStatus::Normal).await;
    tracing::info!(
        keys_streamed = moved.keys_streamed,
        bytes_streamed = moved.bytes_streamed,
        duration_ms = moved.duration_ms,
        since_start_ms = started.elapsed().as_millis() as u64,
        "join streaming complete; this node is now normal"
    );
}

async fn join_once(shard: &Rc<Shard>) -> Result<MovedStats, String> {
    // A view with the current owners, every one of them up.
    let deadline = Instant::now() + ANNOUNCE_TIMEOUT;
    loop {
        let nodes = snapshot(shard);
        let owners: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| n.node_id != shard.node_id)
            .filter(|n| matches!(n.status, NodeStatus::Normal | NodeStatus::Leaving))
            .collect();
        if !owners.is_empty() && owners.iter().all(|n| n.up) {
            break;
        }
        if Instant::now() > deadline {
            return Err("no complete view of the ring's owners (all up) yet".into());
        }
        if !pause(shard, Duration::from_millis(100)).await {
            return Err("the node is stopping".into());
        }
    }
    wait_announced(shard, NodeStatus::Joining).await?;
    let nodes = snapshot(shard);
    let old = owners_ring(&nodes)?;
    let new = old
        .with_node(shard.node_id, &shard.tokens)
        .map_err(|e| e.to_string())?;
    let rf = shard.config.replication_factor.max(1) as usize;
    let plan = join_plan(&old, &new, shard.node_id, rf);
    let started = Instant::now();
    tracing::info!(ranges = plan.len(), "join streaming starts");
    let mut moved = MovedStats::default();
    for transfer in &plan {
        let mut last_error = String::from("no source");
        let mut done = false;
        'sources: for source in &transfer.nodes {
            let Some(info) = nodes.iter().find(|n| n.node_id == *source) else {
                continue;
            };
            let mut from_source = MovedStats::default();
            for s in shards_meeting(
                transfer.start_exclusive,
                transfer.end_inclusive,
                info.shard_count,
            ) {
                let result = stream_range(
                    shard,
                    Source::Remote(info, s),
                    transfer,
                    &mut from_source,
                    |entries| apply_locally(shard, entries),
                )
                .await;
                if let Err(e) = result {
                    last_error = format!("from {}: {e}", info.address);
                    continue 'sources;
                }
            }
            moved.keys_streamed += from_source.keys_streamed;
            moved.bytes_streamed += from_source.bytes_streamed;
            done = true;
            break;
        }
        if !done {
            return Err(format!(
                "range ({:016x}, {:016x}] could not be streamed: {last_error}",
                transfer.start_exclusive, transfer.end_inclusive
            ));
        }
    }
    moved.duration_ms = started.elapsed().as_millis() as u64;
    Ok(moved)
}

/// Spawn an admin op's streaming (`what`) as a task in the background queue, so it
/// cannot starve client requests. Not an `async fn`: the op awaits the task, so its own
/// future never contains the streaming future (which can call back into `execute_local`).
fn in_background<T: 'static>(
    shard: &Shard,
    what: &str,
    work: impl std::future::Future<Output = Result<T, String>> + 'static,
) -> Result<glommio::Task<Result<T, String>>, String> {
    glommio::spawn_local_into(work, shard.background_queue)
        .map_err(|e| format!("cannot spawn the {what}: {e}"))
}

fn refuse(message: String) -> Reply {
    Reply::Error(ErrorReply::BadRequest { message })
}

/// The common precondition of the admin ops (`action`: "decommission", "repair"): this
/// is shard 0, this node is Normal and no other node is joining or leaving. The current
/// view if so, else the refusal to answer.
fn normal_and_settled(shard: &Rc<Shard>, action: &str) -> Result<Rc<Vec<NodeInfo>>, Reply> {
    let Some(status) = super::gossip::local_status(shard) else {
        return Err(internal(format!("{action} reached a shard other than 0")));
    };
    if status != NodeStatus::Normal {
        return Err(refuse(format!(
            "this node is {}, not normal: cannot {action}",
            format!("{status:?}").to_lowercase()
        )));
    }
    let nodes = snapshot(shard);
    if let Some(busy) = nodes.iter().find(|n| {
        n.node_id != shard.node_id && matches!(n.status, NodeStatus::Joining | NodeStatus::Leaving)
    }) {
        return Err(refuse(format!(
            "node {} is {}; {action} one node at a time, after joins and decommissions finish",
            busy.address,
            format!("{:?}", busy.status).to_lowercase()
        )));
    }
    Ok(nodes)
}

/// The `Decommission` op, on shard 0 (see the module doc). Answers when done.
pub async fn decommission(shard: &Rc<Shard>) -> Reply {
    let nodes = match normal_and_settled(shard, "decommission") {
        Ok(nodes) => nodes,
        Err(reply) => return reply,
    };
    let others = nodes
        .iter()
        .filter(|n| n.node_id != shard.node_id && n.status == NodeStatus::Normal)
        .count();
    if others == 0 {
        return refuse("this node is the only normal node: the cluster would keep no node".into());
    }
    // Leaving from here on (set before the first await, so a second call is refused).
    let leaving = super::gossip::set_local_status(shard, NodeStatus::Leaving);
    let task_shard = shard.clone();
    let work = in_background(shard, "decommission", async move {
        leaving.await;
        leave(&task_shard).await
    });
    let result = match work {
        Ok(task) => task.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(moved) => Reply::Decommissioned(moved),
        Err(e) => {
            tracing::error!(error = %e, "decommission failed; this node is normal again");
            super::gossip::set_local_status(shard, NodeStatus::Normal).await;
            internal(format!("decommission failed: {e}"))
        }
    }
}

async fn leave(shard: &Rc<Shard>) -> Result<MovedStats, String> {
    wait_announced(shard, NodeStatus::Leaving).await?;
    let nodes = snapshot(shard);
    let current = owners_ring(&nodes)?;
    let after = current.without_node(shard.node_id);
    let rf = shard.config.replication_factor.max(1) as usize;
    let plan = leave_plan(&current, &after, shard.node_id, rf);
    let started = Instant::now();
    tracing::info!(ranges = plan.len(), "decommission streaming starts");
    let mut moved = MovedStats::default();
    for transfer in &plan {
        let targets: Vec<NodeInfo> = transfer
            .nodes
            .iter()
            .filter_map(|id| nodes.iter().find(|n| n.node_id == *id).cloned())
            .collect();
        if targets.len() != transfer.nodes.len() {
            return Err("a gaining node is missing from the snapshot".into());
        }
        for s in shards_meeting(
            transfer.start_exclusive,
            transfer.end_inclusive,
            shard.shard_count,
        ) {
            let mut from_shard = MovedStats::default();
            stream_range(
                shard,
                Source::Local(s),
                transfer,
                &mut from_shard,
                |entries| push_to(shard, &targets, entries),
            )
            .await?;
            // Each key went to every gaining node: count the copies sent.
            let copies = targets.len() as u64;
            moved.keys_streamed += from_shard.keys_streamed * copies;
            moved.bytes_streamed += from_shard.bytes_streamed * copies;
        }
    }
    moved.duration_ms = started.elapsed().as_millis() as u64;
    let dir = &shard.config.data_dir;
    std::fs::write(dir.join(DECOMMISSIONED_MARKER), b"decommissioned\n")
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| format!("cannot write the decommission marker: {e}"))?;
    super::gossip::set_local_status(shard, NodeStatus::Left).await;
    tracing::info!(
        keys_streamed = moved.keys_streamed,
        bytes_streamed = moved.bytes_streamed,
        duration_ms = moved.duration_ms,
        "decommission streaming complete; this node has left the ring"
    );
    Ok(moved)
}

/// The `Repair` op, on shard 0: a full anti-entropy repair of every range this node
/// replicates (see [`repair_ranges`]). Refused unless this node is Normal, no node is
/// joining or leaving (their pending writes would race the plan), and every other
/// replica of its ranges is up: a repair that skipped a replica would report success
/// while that copy stays stale. Answers when done.
pub async fn repair(shard: &Rc<Shard>) -> Reply {
    let nodes = match normal_and_settled(shard, "repair") {
        Ok(nodes) => nodes,
        Err(reply) => return reply,
    };
    let task_shard = shard.clone();
    let work = in_background(shard, "repair", async move {
        repair_ranges(&task_shard, &nodes).await
    });
    let result = match work {
        Ok(task) => task.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(stats) => Reply::Repaired(stats),
        Err(e) if e.starts_with(REPLICA_DOWN) => refuse(e),
        Err(e) => {
            tracing::error!(error = %e, "repair failed");
            internal(format!("repair failed: {e}"))
        }
    }
}

/// Prefix of the error that refuses a repair because a replica is down.
const REPLICA_DOWN: &str = "a replica is down";

/// For every range of [`repair_plan`]: pull every key from each other replica (every
/// shard of it that meets the range) and merge it into this node's copy, then push this
/// node's merged copy of every key of the range to each other replica. Merging is
/// idempotent and keeps the newest state (LWW) or every concurrent sibling (causal), so
/// afterwards every replica of the range holds, for every key that any of them held when
/// it was read, a state at least as new as any copy's. Writes during the repair reach
/// the replicas as usual; a key deleted long ago comes back only if a replica still holds
/// its tombstone or value, as with read repair.
async fn repair_ranges(shard: &Rc<Shard>, nodes: &[NodeInfo]) -> Result<RepairStats, String> {
    let ring = owners_ring(nodes)?;
    let rf = shard.config.replication_factor.max(1) as usize;
    let plan = repair_plan(&ring, shard.node_id, rf);
    let started = Instant::now();
    let mut stats = RepairStats {
        ranges: plan.len() as u64,
        ..RepairStats::default()
    };
    // Every other replica must be up before anything moves, so a refusal leaves no
    // range half repaired.
    let replica = |id: &NodeId| -> Result<NodeInfo, String> {
        match nodes.iter().find(|n| n.node_id == *id) {
            Some(node) if node.up => Ok(node.clone()),
            Some(node) => Err(format!("{REPLICA_DOWN}: {}", node.address)),
            None => Err(format!("replica {id:016x} is missing from the view")),
        }
    };
    for transfer in &plan {
        for id in &transfer.nodes {
            replica(id)?;
        }
    }
    tracing::info!(ranges = plan.len(), "repair starts");
    for transfer in &plan {
        let others = transfer
            .nodes
            .iter()
            .map(replica)
            .collect::<Result<Vec<NodeInfo>, String>>()?;
        for other in &others {
            for s in shards_meeting(
                transfer.start_exclusive,
                transfer.end_inclusive,
                other.shard_count,
            ) {
                let mut pulled = MovedStats::default();
                stream_range(
                    shard,
                    Source::Remote(other, s),
                    transfer,
                    &mut pulled,
                    |entries| apply_locally(shard, entries),
                )
                .await
                .map_err(|e| format!("pulling from {}: {e}", other.address))?;
                stats.keys_pulled += pulled.keys_streamed;
                stats.bytes_streamed += pulled.bytes_streamed;
            }
        }
        for s in shards_meeting(
            transfer.start_exclusive,
            transfer.end_inclusive,
            shard.shard_count,
        ) {
            let mut pushed = MovedStats::default();
            stream_range(shard, Source::Local(s), transfer, &mut pushed, |entries| {
                push_to(shard, &others, entries)
            })
            .await?;
            let copies = others.len() as u64;
            stats.keys_pushed += pushed.keys_streamed * copies;
            stats.bytes_streamed += pushed.bytes_streamed * copies;
        }
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        ranges = stats.ranges,
        keys_pulled = stats.keys_pulled,
        keys_pushed = stats.keys_pushed,
        bytes_streamed = stats.bytes_streamed,
        duration_ms = stats.duration_ms,
        "repair complete"
    );
    Ok(stats)
}

/// Send a write also to its pending replicas (a node joining, or the nodes taking over
/// a leaving node's ranges). Fire and forget: the acks do not count toward W; a failed
/// one is stored as a hint for that node, so the write still reaches it.
pub fn write_pending(shard: &Rc<Shard>, pending: &[NodeInfo], key: &[u8], state: &KeyState) {
    for target in pending {
        let (shard2, target, key, state) =
            (shard.clone(), target.clone(), key.to_vec(), state.clone());
        let spawned = glommio::spawn_local_into(
            async move {
                let result = if target.node_id == shard2.node_id {
                    shard2
                        .engine
                        .write(&key, state.clone())
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    let op = Op::ReplicaWrite {
                        key: key.clone(),
                        state: state.to_bytes(),
                    };
                    match shard2.peers.call(&shard2, &target, &key, op).await {
                        Ok(Reply::Done) => Ok(()),
                        Ok(other) => Err(format!("unexpected reply {other:?}")),
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(node = %target.address, error = %e, "pending write failed; hinting");
                    if target.node_id != shard2.node_id {
                        let bytes = state.to_bytes();
                        if let Err(e) =
                            super::hints::store(&shard2, target.node_id, &key, &bytes).await
                        {
                            tracing::warn!(node = %target.address, error = %e, "pending write lost: no hint");
                        }
                    }
                }
            },
            shard.foreground_queue,
        );
        match spawned {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(error = %e, "cannot spawn a pending write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_wrap_and_equal_bounds_are_the_whole_ring() {
        assert!(token_in_range(5, 1, 5));
        assert!(!token_in_range(1, 1, 5));
        assert!(token_in_range(0, u64::MAX - 1, 3));
        assert!(token_in_range(u64::MAX, u64::MAX - 1, 3));
        assert!(!token_in_range(4, u64::MAX - 1, 3));
        assert!(token_in_range(123, 9, 9));
    }

    #[test]
    fn shards_meeting_covers_the_slices_of_a_range() {
        assert_eq!(shards_meeting(0, 10, 4), vec![0]);
        assert_eq!(shards_meeting(0, u64::MAX, 2), vec![0, 1]);
        // Wrapping: the top slice and the bottom one.
        assert_eq!(shards_meeting(u64::MAX - 5, 5, 4), vec![0, 3]);
        assert_eq!(shards_meeting(7, 7, 3), vec![0, 1, 2]);
        // (MAX, x] starts at token 0.
        assert_eq!(shards_meeting(u64::MAX, 5, 4), vec![0]);
    }

    /// Every token is streamed exactly when the joiner replicates it in the new ring,
    /// and from nodes that replicate it in the old one; a leaver's plan covers every
    /// token it replicates, sending it to exactly the nodes that gain it.
    #[test]
    fn plans_cover_exactly_the_changed_replicas() {
        let old = Ring::new([
            (1, &crate::cluster::ring::initial_tokens(8, 1)[..]),
            (2, &crate::cluster::ring::initial_tokens(8, 2)[..]),
            (3, &crate::cluster::ring::initial_tokens(8, 3)[..]),
        ])
        .unwrap();
        let tokens = crate::cluster::ring::allocate_tokens(&old, 8);
        let new = old.with_node(4, &tokens).unwrap();
        let rf = 2;
        let join = join_plan(&old, &new, 4, rf);
        let leave = leave_plan(&old, &old.without_node(3), 3, rf);
        let after = old.without_node(3);
        let mut probe = crate::cluster::SplitMix64::new(7);
        for _ in 0..2000 {
            let t = crate::cluster::RngLike::next_u64(&mut probe);
            let covering: Vec<&Transfer> = join
                .iter()
                .filter(|x| token_in_range(t, x.start_exclusive, x.end_inclusive))
                .collect();
            if new.replicas(t, rf).contains(&4) {
                assert_eq!(covering.len(), 1, "token {t} streamed once");
                assert_eq!(covering[0].nodes.len(), rf);
                for source in &covering[0].nodes {
                    assert!(old.replicas(t, rf).contains(source));
                }
            } else {
                assert!(covering.is_empty(), "token {t} not the joiner's");
            }
            let covering: Vec<&Transfer> = leave
                .iter()
                .filter(|x| token_in_range(t, x.start_exclusive, x.end_inclusive))
                .collect();
            let gainers: Vec<NodeId> = after
                .replicas(t, rf)
                .into_iter()
                .filter(|n| !old.replicas(t, rf).contains(n))
                .collect();
            if gainers.is_empty() {
                assert!(covering.is_empty());
            } else {
                assert_eq!(covering.len(), 1);
                assert_eq!(covering[0].nodes, gainers);
            }
        }
    }

    /// A repair of node 2 covers every token it replicates exactly once, with exactly the
    /// other replicas of that token, and no token it does not replicate.
    #[test]
    fn a_repair_plan_covers_the_nodes_ranges_with_their_other_replicas() {
        let ring = Ring::new([
            (1, &crate::cluster::ring::initial_tokens(8, 1)[..]),
            (2, &crate::cluster::ring::initial_tokens(8, 2)[..]),
            (3, &crate::cluster::ring::initial_tokens(8, 3)[..]),
            (4, &crate::cluster::ring::initial_tokens(8, 4)[..]),
        ])
        .unwrap();
        let rf = 2;
        let plan = repair_plan(&ring, 2, rf);
        let mut probe = crate::cluster::SplitMix64::new(11);
        let mut covered = 0;
        for _ in 0..2000 {
            let t = crate::cluster::RngLike::next_u64(&mut probe);
            let covering: Vec<&Transfer> = plan
                .iter()
                .filter(|x| token_in_range(t, x.start_exclusive, x.end_inclusive))
                .collect();
            let replicas = ring.replicas(t, rf);
            if replicas.contains(&2) {
                covered += 1;
                assert_eq!(covering.len(), 1, "token {t} repaired once");
                let others: Vec<NodeId> = replicas.into_iter().filter(|n| *n != 2).collect();
                assert_eq!(covering[0].nodes, others);
            } else {
                assert!(covering.is_empty(), "token {t} is not node 2's");
            }
        }
        assert!(covered > 0);
        // Alone in the ring, a node has no one to repair with.
        let alone = Ring::new([(7, &crate::cluster::ring::initial_tokens(8, 7)[..])]).unwrap();
        assert!(repair_plan(&alone, 7, 3).is_empty());
    }
}

//! One shard: a glommio executor pinned to a core that owns an engine, its listeners
//! and its connections. Everything here lives on the shard's thread (`Rc`, `Cell`);
//! shards talk to each other only through the channel mesh ([`super::router`]).

use super::connection::{self, ConnectionKind};
use super::router::{self, MeshMsg};
use crate::config::{CommitlogSync, Config};
use crate::conflict::HlcClock;
pub use crate::event::Event;
use crate::protocol::codec::{Encoder, Limits};
use crate::protocol::types::NodeInfo;
use crate::storage::engine::{Engine, EngineOptions, EngineStats};
use crate::storage::glommio_disk::GlommioDisk;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::{Latency, Shares, TaskQueueHandle};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Add one to a shard counter.
pub fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// Counters of one shard (exported by `status` and metrics).
#[derive(Default)]
pub struct ShardMetrics {
    pub requests: Cell<u64>,
    pub bad_requests: Cell<u64>,
    pub overloaded: Cell<u64>,
    pub refused_peer_ops: Cell<u64>,
    pub unauthorized: Cell<u64>,
    pub forwarded: Cell<u64>,
    /// Peer handshakes that failed, on either side (we accepted or we dialled).
    pub peer_auth_failures: Cell<u64>,
}

/// Who this node is, handed to every shard at startup.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: u64,
    /// Boot time (ms): the gossip generation and the causal actor's generation.
    pub generation: u64,
    /// Ring tokens persisted in `node.meta`, sorted.
    pub tokens: Vec<u64>,
    pub auth: super::PeerAuth,
    /// Shard 0 only: the peers remembered from before this start (`peers.toml`).
    pub known_peers: Vec<crate::cluster::NodeState>,
    /// Open client connections of the whole node, shared by its shards: the one count
    /// `max_client_connections` bounds (an atomic, not a lock; touched once per
    /// connection).
    pub client_connections: Arc<std::sync::atomic::AtomicU32>,
}

pub struct Shard {
    pub id: u32,
    pub shard_count: u32,
    pub node_id: u64,
    /// This process's boot time (ms): the generation of the node's causal actor, so a
    /// restarted node never reuses a dot counter of its previous life.
    pub generation: u64,
    /// This node's ring tokens (persisted in `node.meta`).
    pub tokens: Vec<u64>,
    /// Cluster name and secret for peer handshakes.
    pub auth: super::PeerAuth,
    /// The latest membership snapshot published by shard 0 and its sequence number
    /// (None until the first).
    pub topology: RefCell<Option<(u64, Rc<Vec<NodeInfo>>)>>,
    /// Set once the first snapshot is installed; the listeners accept only after it.
    pub topology_installed: Event,
    /// The ring of the latest snapshot (rebuilt when the snapshot changes).
    pub ring: super::replication::RingCache,
    /// Pipelined, authenticated connections to peer shards: every outgoing peer call.
    pub peers: super::peer_pool::PeerPool,
    /// Test-only fault rules applied to every outgoing peer call (`fault_rules_file`).
    pub faults: super::faults::FaultHooks,
    /// Gossip state: shard 0 only.
    pub gossip: Option<super::gossip::Gossiper>,
    /// The shard's client connections under watch (idle, stalled, the node-wide cap).
    pub connections: super::connection::Registry,
    /// Keys with a causal read-modify-write in progress, and who waits for each.
    pub key_locks: RefCell<ahash::AHashMap<Vec<u8>, Vec<std::task::Waker>>>,
    pub config: Rc<Config>,
    pub limits: Limits,
    pub encoder: RefCell<Encoder>,
    pub engine: Engine<GlommioDisk>,
    pub hlc: RefCell<HlcClock>,
    /// Recent replica read latencies (for `speculative_retry` at a percentile).
    pub read_latency: RefCell<crate::coordinator::RecentLatency>,
    pub mesh: router::Mesh,
    /// Requests admitted and not yet answered, over all connections of this shard.
    pub inflight: Cell<u32>,
    pub metrics: ShardMetrics,
    /// Set when the node is stopping: stop accepting and reading.
    pub stopping: Event,
    /// Set when `stopping` and no request is in flight.
    pub drained: Event,
    pub foreground_queue: TaskQueueHandle,
    pub background_queue: TaskQueueHandle,
    /// Gossip rounds and peer connections (small shares: they are cheap but must run).
    pub gossip_queue: TaskQueueHandle,
    /// This shard's hinted handoff: hint log, bounds, replay schedule.
    pub hints: super::hints::Hints,
    /// Hint replays (small shares: a replay storm must not starve client requests).
    pub hint_queue: TaskQueueHandle,
}

/// A snapshot of one shard's counters, sent between shards for `status` and metrics.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: u32,
    pub engine: EngineStats,
    pub requests: u64,
    pub bad_requests: u64,
    pub overloaded: u64,
    pub refused_peer_ops: u64,
    /// Client connections of this shard that are open now.
    pub client_connections: u64,
    pub connections_refused: u64,
    pub idle_closed: u64,
    pub stalled_closed: u64,
    pub accept_failures: u64,
    pub unauthorized: u64,
    pub forwarded: u64,
    pub peer_auth_failures: u64,
    pub inflight: u32,
    /// Outgoing peer calls a fault rule cut, dropped, delayed (`faults::FAULT_KINDS`).
    pub peer_faults: [u64; 3],
    /// Received HLC timestamps refused as too far ahead (`max_clock_skew_ms`).
    pub hlc_rejected: u64,
    /// Hints this shard holds, per target node.
    pub hints: Vec<(u64, crate::cluster::hints::TargetStats)>,
}

/// Holds a key's causal write lock; releasing wakes the waiters.
pub struct KeyLock<'a> {
    shard: &'a Shard,
    key: Vec<u8>,
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        if let Some(waiters) = self.shard.key_locks.borrow_mut().remove(&self.key) {
            for w in waiters {
                w.wake();
            }
        }
    }
}

impl Shard {
    /// Serialize read-modify-writes of one key on this shard (causal mode: the new dot
    /// must be computed from the state that the write then extends).
    pub async fn lock_key(&self, key: &[u8]) -> KeyLock<'_> {
        std::future::poll_fn(|cx| {
            let mut locks = self.key_locks.borrow_mut();
            match locks.get_mut(key) {
                None => {
                    locks.insert(key.to_vec(), Vec::new());
                    std::task::Poll::Ready(())
                }
                Some(waiters) => {
                    waiters.push(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
        .await;
        KeyLock {
            shard: self,
            key: key.to_vec(),
        }
    }

    pub fn stats(&self) -> ShardStats {
        let m = &self.metrics;
        ShardStats {
            shard: self.id,
            engine: self.engine.stats(),
            requests: m.requests.get(),
            bad_requests: m.bad_requests.get(),
            overloaded: m.overloaded.get(),
            refused_peer_ops: m.refused_peer_ops.get(),
            client_connections: self.connections.open_clients(),
            connections_refused: self.connections.refused_connections.get(),
            idle_closed: self.connections.idle_closed.get(),
            stalled_closed: self.connections.stalled_closed.get(),
            accept_failures: self.connections.accept_failures.get(),
            unauthorized: m.unauthorized.get(),
            forwarded: m.forwarded.get(),
            peer_auth_failures: m.peer_auth_failures.get(),
            inflight: self.inflight.get(),
            peer_faults: self.faults.counts(),
            hlc_rejected: self.hlc.borrow().rejected_count(),
            hints: self.hints.stats().into_iter().collect(),
        }
    }

    pub fn on_request_done(&self) {
        bump(&self.metrics.requests);
        if self.stopping.is_set() && self.inflight.get() == 0 {
            self.drained.set();
        }
    }
}

/// Keep shard 0's snapshot `seq` unless a newer one is already installed.
pub fn install_topology(shard: &Shard, seq: u64, nodes: Vec<NodeInfo>) {
    let mut current = shard.topology.borrow_mut();
    if current.as_ref().is_none_or(|(have, _)| *have < seq) {
        super::hints::on_topology(shard, &nodes);
        // A node seen down before and up now: dial it at once (its dial backoff is from
        // while it was gone).
        for node in nodes.iter().filter(|n| n.up) {
            let was_down = current
                .as_ref()
                .is_some_and(|(_, old)| old.iter().any(|o| o.node_id == node.node_id && !o.up));
            if was_down {
                shard.peers.forget_backoff(&node.address);
            }
        }
        *current = Some((seq, Rc::new(nodes)));
        shard.topology_installed.set();
    }
}

/// What a shard thread tells the main thread at startup.
pub enum StartupReport {
    Ready {
        shard: u32,
        client_port: u16,
        shard_port: u16,
    },
    Failed {
        message: String,
    },
}

/// Body of a shard thread: open the engine, bind, serve until `stop` is raised, drain,
/// sync. Returns an error message if startup or shutdown failed.
pub async fn run(
    config: Rc<Config>,
    identity: Identity,
    mesh_builder: MeshBuilder<MeshMsg, Full>,
    stop: Arc<AtomicBool>,
    report: std::sync::mpsc::Sender<StartupReport>,
) -> Result<(), String> {
    let (senders, receivers) = mesh_builder
        .join()
        .await
        .map_err(|e| format!("cannot join the shard channel mesh: {e}"))?;
    let id = senders.peer_id() as u32;
    let shard_count = config.shards;
    let fail = |message: String| {
        let _ = report.send(StartupReport::Failed {
            message: message.clone(),
        });
        message
    };

    let executor = glommio::executor();
    let foreground_queue =
        executor.create_task_queue(Shares::Static(1000), Latency::NotImportant, "foreground");
    let background_queue =
        executor.create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    let gossip_queue =
        executor.create_task_queue(Shares::Static(100), Latency::NotImportant, "gossip");
    let hint_queue = executor.create_task_queue(Shares::Static(50), Latency::NotImportant, "hints");

    let dir = config.data_dir.join(format!("shard-{id}"));
    let disk = GlommioDisk::open(&dir).await.map_err(|e| {
        fail(format!(
            "shard {id}: cannot open data directory {}: {e}",
            dir.display()
        ))
    })?;
    let options = EngineOptions::from_config(&config);
    let (engine, recovered) = Engine::open(disk, options).await.map_err(|e| {
        fail(format!(
            "shard {id}: cannot open storage engine in {}: {e}",
            dir.display()
        ))
    })?;
    tracing::info!(
        shard = id,
        dir = %dir.display(),
        recovered_records = recovered.records_replayed,
        sstables = recovered.sstables,
        torn_tail = recovered.torn_tail.as_deref().unwrap_or("none"),
        lost_since_sync = recovered.lost_since_sync.as_deref().unwrap_or("none"),
        "storage engine open"
    );

    let hints_dir = dir.join("hints");
    let hints = super::hints::Hints::open(&hints_dir, &config)
        .await
        .map_err(|e| fail(format!("shard {id}: {e}")))?;

    let client_listener = TcpListener::bind(config.listen).map_err(|e| {
        fail(format!(
            "shard {id}: cannot listen on {}: {e}",
            config.listen
        ))
    })?;
    let shard_addr = std::net::SocketAddr::new(config.listen.ip(), config.shard_port(id));
    let shard_listener = TcpListener::bind(shard_addr)
        .map_err(|e| fail(format!("shard {id}: cannot listen on {shard_addr}: {e}")))?;

    let limits = Limits {
        max_key_bytes: config.max_key_size_bytes as usize,
        max_value_bytes: config.max_value_size_bytes as usize,
        max_frame_bytes: (config.max_value_size_bytes + config.max_key_size_bytes + (1 << 20))
            as usize,
    };
    let gossip = (id == 0).then(|| super::gossip::Gossiper::new(&config, &identity));
    let shard = Rc::new(Shard {
        id,
        shard_count,
        node_id: identity.node_id,
        generation: identity.generation,
        tokens: identity.tokens,
        auth: identity.auth,
        topology: RefCell::new(None),
        topology_installed: Event::default(),
        ring: Default::default(),
        peers: Default::default(),
        faults: super::faults::FaultHooks::new(
            config.fault_rules_file.clone(),
            identity.node_id ^ identity.generation ^ u64::from(id),
        ),
        gossip,
        connections: super::connection::Registry::new(identity.client_connections.clone()),
        key_locks: RefCell::new(ahash::AHashMap::new()),
        config: config.clone(),
        limits,
        encoder: RefCell::new(Encoder::new()),
        engine,
        hlc: RefCell::new(HlcClock::new()),
        read_latency: RefCell::new(Default::default()),
        mesh: router::Mesh::new(senders),
        inflight: Cell::new(0),
        metrics: ShardMetrics::default(),
        stopping: Event::default(),
        drained: Event::default(),
        foreground_queue,
        background_queue,
        gossip_queue,
        hints,
        hint_queue,
    });

    router::spawn_receivers(&shard, receivers);
    // No request is accepted before the shard has shard 0's view of the cluster (the
    // persisted peers included): without one it could only refuse keyed requests.
    if id == 0 {
        super::gossip::publish(&shard).await;
    }
    shard.topology_installed.wait().await;
    let mut tasks = Vec::new();
    for listener in [client_listener, shard_listener] {
        tasks.push(
            glommio::spawn_local_into(accept_loop(shard.clone(), listener), foreground_queue)
                .map_err(|e| e.to_string())?,
        );
    }
    if id == 0 {
        glommio::spawn_local_into(super::gossip::run(shard.clone()), gossip_queue)
            .map_err(|e| e.to_string())?
            .detach();
    }
    if let (0, Some(addr)) = (id, config.metrics_listen) {
        let listener = TcpListener::bind(addr)
            .map_err(|e| fail(format!("cannot listen for metrics on {addr}: {e}")))?;
        tasks.push(
            glommio::spawn_local_into(
                super::metrics::serve(shard.clone(), listener),
                background_queue,
            )
            .map_err(|e| e.to_string())?,
        );
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    glommio::spawn_local_into(super::connection::run_sweeper(shard.clone()), gossip_queue)
        .map_err(|e| e.to_string())?
        .detach();
    glommio::spawn_local_into(super::hints::run_replay(shard.clone()), hint_queue)
        .map_err(|e| e.to_string())?
        .detach();
    let maintenance = shard.clone();
    glommio::spawn_local_into(
        async move {
            maintenance
                .engine
                .run_maintenance(&maintenance.stopping)
                .await
        },
        background_queue,
    )
    .map_err(|e| e.to_string())?
    .detach();
    if config.commitlog_sync == CommitlogSync::Periodic {
        let syncer = shard.clone();
        let period = Duration::from_millis(config.commitlog_sync_period_ms);
        glommio::spawn_local_into(
            async move {
                while !syncer.stopping.is_set() {
                    glommio::timer::sleep(period).await;
                    if let Err(e) = syncer.engine.sync().await {
                        tracing::error!(shard = syncer.id, error = %e, "periodic commit log sync failed");
                    }
                }
            },
            background_queue,
        )
        .map_err(|e| e.to_string())?
        .detach();
    }
    tracing::info!(shard = id, client = %config.listen, shard_port = config.shard_port(id), "shard serving");
    let _ = report.send(StartupReport::Ready {
        shard: id,
        client_port: config.listen.port(),
        shard_port: config.shard_port(id),
    });

    // The main thread raises `stop` on SIGINT/SIGTERM; poll it at a coarse interval.
    while !stop.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    shard.stopping.set();
    if shard.inflight.get() == 0 {
        shard.drained.set();
    }
    for task in tasks {
        task.await;
    }
    shard.drained.wait().await;
    // Ends the peer connections' reader and writer tasks.
    shard.peers.close_all();
    shard
        .engine
        .shutdown()
        .await
        .map_err(|e| format!("shard {id}: shutdown failed: {e}"))?;
    tracing::info!(shard = id, "shard stopped");
    Ok(())
}

/// First pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS...); doubles per
/// consecutive failure up to [`ACCEPT_BACKOFF_MAX_MS`]. Open connections keep being
/// served meanwhile (they are other tasks).
const ACCEPT_BACKOFF_FIRST_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut failures: u32 = 0;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopping.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                if failures > 0 {
                    tracing::info!(shard = shard.id, failures, "accept works again");
                    failures = 0;
                }
                let conn_shard = shard.clone();
                match glommio::spawn_local_into(
                    connection::serve(conn_shard, stream, ConnectionKind::Client),
                    shard.foreground_queue,
                ) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot spawn connection task"),
                }
            }
            Some(Err(e)) => {
                // One WARN per episode, not one per retry: an fd limit hit under load
                // would otherwise flood the log.
                if failures == 0 {
                    tracing::warn!(shard = shard.id, error = %e, "accept failed; backing off (open connections are still served)");
                } else {
                    tracing::debug!(shard = shard.id, error = %e, failures, "accept failed again");
                }
                failures = failures.saturating_add(1);
                bump(&shard.connections.accept_failures);
                let pause_ms =
                    (ACCEPT_BACKOFF_FIRST_MS << (failures - 1).min(16)).min(ACCEPT_BACKOFF_MAX_MS);
                futures_lite::future::or(
                    glommio::timer::sleep(Duration::from_millis(pause_ms)),
                    shard.stopping.wait(),
                )
                .await;
            }
        }
    }
}

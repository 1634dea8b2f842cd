//! The shard-per-core server (`ringkv serve`, docs/design.md §2.1): one glommio executor
//! per shard, pinned to a core, each owning its engine and its listeners; requests for
//! another shard's key travel over the channel mesh ([`router`]). The main thread only
//! prepares the data directory, starts the shards, and turns SIGINT/SIGTERM into a stop.

pub mod connection;
pub mod faults;
pub mod gossip;
pub mod handler;
pub mod hints;
pub mod key_order;
pub mod metrics;
pub mod peer;
pub mod peer_pool;
pub mod replication;
pub mod router;
pub mod shard;
pub mod streaming;

use crate::config::Config;
use anyhow::{bail, Context};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shard::StartupReport;
use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Capacity of each shard-to-shard channel; a full channel makes senders wait.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// glommio registers this much I/O memory per executor when locked memory allows.
const IO_MEMORY_BYTES: usize = 10 << 20;

/// The data directory's identity: node id, the shard count its data was split by, and
/// the node's ring tokens.
///
/// `data_dir/node.meta` is TOML, readable and hand-checkable:
///
/// ```toml
/// node_id = "00c0ffee12345678"      # 16 hex digits
/// shards = 4
/// tokens = ["0a1b...", "ff02...", ...] # hex, sorted; strings because TOML ints are i64
/// ```
///
/// A file from before tokens existed (no `tokens` key) gets them on the next start, and
/// the file is rewritten. Tokens are chosen once (`initial_tokens(num_tokens, node_id)`)
/// and never change afterwards, whatever `num_tokens` later says.
struct NodeMeta {
    node_id: u64,
    tokens: Vec<u64>,
}

fn meta_text(node_id: u64, shards: u32, tokens: &[u64]) -> String {
    let tokens: Vec<String> = tokens.iter().map(|t| format!("\"{t:016x}\"")).collect();
    format!(
        "node_id = \"{node_id:016x}\"\nshards = {shards}\ntokens = [{}]\n",
        tokens.join(", ")
    )
}

fn choose_tokens(config: &Config, node_id: u64) -> Vec<u64> {
    crate::cluster::ring::initial_tokens(config.num_tokens as usize, node_id)
}

/// Lock the data directory (one process per directory), create or check its identity.
/// A first start with `--join` takes its tokens from the seed's ring
/// ([`join_tokens`]) and leaves the `JOINING` marker for the streaming
/// ([`streaming`]); a decommissioned directory refuses to start.
fn prepare_data_dir(config: &Config, auth: &PeerAuth) -> anyhow::Result<(std::fs::File, NodeMeta)> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let lock_path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "data directory {} is in use by another ringkv process (lock {})",
            dir.display(),
            lock_path.display()
        );
    }
    if dir.join(streaming::DECOMMISSIONED_MARKER).exists() {
        bail!(
            "data directory {} belongs to a node that was decommissioned (its ranges moved to other \
             nodes); to add this machine again, start it with an empty data directory and --join",
            dir.display()
        );
    }
    let meta_path = dir.join("node.meta");
    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => {
            let (meta, had_tokens) = parse_meta(&text, config, &meta_path)?;
            if !had_tokens {
                let text = meta_text(meta.node_id, config.shards, &meta.tokens);
                write_durably(dir, &meta_path, text.as_bytes())?;
                tracing::info!(
                    tokens = meta.tokens.len(),
                    "chose ring tokens for an existing data directory"
                );
            }
            meta
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.join => {
            let node_id = random_u64()?;
            let tokens = join_tokens(config, auth, node_id)?;
            // The marker first: a crash before node.meta exists only repeats this.
            let marker = dir.join(streaming::JOINING_MARKER);
            write_durably(dir, &marker, b"joining: streaming not finished\n")?;
            let text = meta_text(node_id, config.shards, &tokens);
            write_durably(dir, &meta_path, text.as_bytes())?;
            tracing::info!(
                tokens = tokens.len(),
                "joining: chose tokens that split the largest ranges of the seed's ring"
            );
            NodeMeta { node_id, tokens }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let node_id = random_u64()?;
            let tokens = choose_tokens(config, node_id);
            let text = meta_text(node_id, config.shards, &tokens);
            write_durably(dir, &meta_path, text.as_bytes())?;
            NodeMeta { node_id, tokens }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", meta_path.display())),
    };
    Ok((lock, meta))
}

/// How long a first `--join` start keeps asking the seeds for their ring.
const JOIN_SEED_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Tokens for a node joining the cluster of `config.seeds`: the ring of the token owners
/// (Normal and Leaving nodes, plus Joining ones so two joiners never pick the same
/// token) as a seed reports it, split at its largest ranges (`allocate_tokens`). The
/// seed is asked over an authenticated peer connection to its shard 0 (client port + 1,
/// the default layout, as gossip assumes for seeds).
fn join_tokens(config: &Config, auth: &PeerAuth, node_id: u64) -> anyhow::Result<Vec<u64>> {
    use crate::protocol::types::NodeStatus;
    if config.seeds.iter().all(|s| *s == config.listen) {
        bail!("--join needs --seeds naming a node of the cluster to join");
    }
    let deadline = std::time::Instant::now() + JOIN_SEED_PATIENCE;
    let mut last_error = String::new();
    while std::time::Instant::now() < deadline {
        for seed in config.seeds.iter().filter(|s| **s != config.listen) {
            match seed_topology(*seed, auth, node_id) {
                Ok(topology) => {
                    let owners: Vec<_> = topology
                        .nodes
                        .iter()
                        .filter(|n| n.node_id != node_id && !n.tokens.is_empty())
                        .filter(|n| n.status != NodeStatus::Left)
                        .collect();
                    if owners.is_empty() {
                        last_error = format!("seed {seed} reports no node with tokens");
                        continue;
                    }
                    let ring = crate::cluster::ring::Ring::new(
                        owners.iter().map(|n| (n.node_id, n.tokens.as_slice())),
                    )
                    .map_err(|e| anyhow::anyhow!("seed {seed} reports a bad ring: {e}"))?;
                    return Ok(crate::cluster::ring::allocate_tokens(
                        &ring,
                        config.num_tokens as usize,
                    ));
                }
                Err(e) => last_error = format!("seed {seed}: {e}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!(
        "cannot join: no seed answered with its ring within {JOIN_SEED_PATIENCE:?} ({last_error})"
    )
}

/// A seed's `Topology`, asked over an authenticated peer connection.
fn seed_topology(
    seed: std::net::SocketAddr,
    auth: &PeerAuth,
    node_id: u64,
) -> anyhow::Result<crate::protocol::types::Topology> {
    use crate::auth::{Effect, Handshake, Initiator};
    use crate::protocol::types::{Op, Reply};
    let timeout = std::time::Duration::from_secs(2);
    let shard0 = std::net::SocketAddr::new(
        seed.ip(),
        seed.port()
            .checked_add(1)
            .context("seed port has no shard port after it")?,
    );
    let mut conn = crate::client::blocking::Connection::connect(shard0, timeout)?;
    let nonce = crate::auth::fresh_nonce().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut initiator, mut effects) = Initiator::new(
        auth.cluster_name.clone(),
        auth.secret.clone(),
        node_id,
        nonce,
    );
    // A handshake is a few messages; the bound keeps a confused peer from looping us.
    for _ in 0..8 {
        let mut send = None;
        for effect in effects.drain(..) {
            match effect {
                Effect::Send(message) => send = Some(message),
                Effect::Authenticated { .. } => {
                    return match conn.call(Op::Topology)? {
                        Reply::Topology(t) => Ok(t),
                        other => bail!("unexpected reply to Topology: {other:?}"),
                    };
                }
                Effect::Close { failure } => bail!("peer handshake failed: {failure}"),
            }
        }
        let message = send.context("handshake stalled")?;
        effects = match conn.call(Op::PeerHandshake {
            message: message.encode(),
        })? {
            Reply::PeerHandshake { message } => initiator.on_bytes(&message),
            other => bail!("unexpected handshake reply: {other:?}"),
        };
    }
    bail!("peer handshake did not finish")
}

/// Parse `node.meta`; the flag says whether it already held tokens (else they were
/// chosen now and the caller persists them).
fn parse_meta(text: &str, config: &Config, path: &Path) -> anyhow::Result<(NodeMeta, bool)> {
    #[derive(serde::Deserialize)]
    struct Raw {
        node_id: String,
        shards: u32,
        tokens: Option<Vec<String>>,
    }
    let raw: Raw =
        toml::from_str(text).with_context(|| format!("{} is corrupt", path.display()))?;
    let node_id = u64::from_str_radix(&raw.node_id, 16).with_context(|| {
        format!(
            "{} is corrupt: node_id {:?} is not hexadecimal",
            path.display(),
            raw.node_id
        )
    })?;
    if raw.shards != config.shards {
        bail!(
            "data directory {} was created with {} shards but --shards is {}: resharding a node is not supported; \
             start with --shards {} or use a new data directory",
            config.data_dir.display(),
            raw.shards,
            config.shards,
            raw.shards
        );
    }
    let Some(hex_tokens) = raw.tokens else {
        let tokens = choose_tokens(config, node_id);
        return Ok((NodeMeta { node_id, tokens }, false));
    };
    let mut tokens = Vec::with_capacity(hex_tokens.len());
    for t in &hex_tokens {
        tokens.push(u64::from_str_radix(t, 16).with_context(|| {
            format!(
                "{} is corrupt: token {t:?} is not hexadecimal",
                path.display()
            )
        })?);
    }
    tokens.sort_unstable();
    tokens.dedup();
    if tokens.is_empty() || tokens.len() > crate::cluster::ring::MAX_TOKENS_PER_NODE {
        bail!(
            "{} is corrupt: {} tokens (expected 1..={})",
            path.display(),
            tokens.len(),
            crate::cluster::ring::MAX_TOKENS_PER_NODE
        );
    }
    Ok((NodeMeta { node_id, tokens }, true))
}

/// How this node proves itself to peers (docs/design.md §6.10): the cluster name, the
/// conflict mode (a peer of another mode is refused by the handshake, so it never enters
/// this node's ring, for gossip nor for replication) and the MAC key of the shared
/// secret. Without `cluster_secret` the key is derived from the cluster name alone, which
/// keeps clusters with different names apart but authenticates nobody: anyone who knows
/// the name can join. That is logged as a WARN.
#[derive(Clone, Debug)]
pub struct PeerAuth {
    /// The cluster name and this node's `conflict_mode`. Named `cluster_name` because
    /// the handshake drivers (`peer.rs`, `connection.rs`) hand this field to
    /// `Initiator::new` / `Acceptor::new`, which take a [`crate::auth::ClusterIdentity`].
    pub cluster_name: crate::auth::ClusterIdentity,
    pub secret: crate::auth::ClusterSecret,
}

fn peer_auth(config: &Config) -> anyhow::Result<PeerAuth> {
    let cluster_name = crate::auth::ClusterName::new(&config.cluster_name)
        .map_err(|e| anyhow::anyhow!("invalid cluster_name: {e}"))?;
    let identity = crate::auth::ClusterIdentity::new(cluster_name.clone(), config.conflict_mode);
    let secret = match &config.cluster_secret {
        Some(secret) => secret.clone(),
        None => {
            tracing::warn!(
                cluster_name = %cluster_name,
                "no cluster_secret configured: peers are NOT authenticated by a secret (the handshake \
                 key is derived from the cluster name); set cluster_secret or cluster_secret_file"
            );
            let derived = format!("ringkv-no-secret|{}", cluster_name.as_str());
            crate::auth::ClusterSecret::new(derived.as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot derive a cluster secret: {e}"))?
        }
    };
    Ok(PeerAuth {
        cluster_name: identity,
        secret,
    })
}

fn random_u64() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(u64::from_le_bytes(bytes))
}

/// The peers this node knew before it stopped (`data_dir/peers.toml`, see
/// [`crate::cluster::known_peers`]); none on a first start. A file that cannot be read
/// stops the start: serving without it could mean serving with a smaller ring than the
/// cluster's.
fn read_known_peers(dir: &Path) -> anyhow::Result<Vec<crate::cluster::NodeState>> {
    use crate::cluster::known_peers;
    let path = dir.join(known_peers::FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let peers = known_peers::decode(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is corrupt: {e}; remove it to have this node learn its cluster again from --seeds \
             (until gossip reaches a seed it then refuses client requests)",
            path.display()
        )
    })?;
    tracing::info!(peers = peers.len(), file = %path.display(), "restored the known peers");
    Ok(peers)
}

/// Persist `text` as `data_dir/peers.toml` (blocking; run it off the executor).
pub(crate) fn write_known_peers(dir: &Path, text: &str) -> anyhow::Result<()> {
    write_durably(
        dir,
        &dir.join(crate::cluster::known_peers::FILE_NAME),
        text.as_bytes(),
    )
}

/// Write a small file atomically and durably: temp file, fsync, rename, directory fsync.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Fail loudly if another server already listens on a port we need. glommio binds with
/// SO_REUSEPORT, so a second ringkv process would otherwise share the port silently.
///
/// The probe connects rather than binds: a bind would also trip over the TIME_WAIT
/// sockets a killed predecessor leaves behind (they inherit SO_REUSEPORT without
/// SO_REUSEADDR), which must not stop a restart. Ports held by sockets that are not
/// ours (no SO_REUSEPORT) still make the shard's own bind fail with a clear message.
///
/// A listener can outlive its process for a moment: io_uring tears a killed process's
/// rings down asynchronously, and its sockets keep accepting until then. So a port that
/// accepts is re-checked for up to `PORT_PROBE_PATIENCE` before we give up.
fn probe_ports(config: &Config) -> anyhow::Result<()> {
    let mut addrs = vec![config.listen];
    for s in 0..config.shards {
        addrs.push(std::net::SocketAddr::new(
            config.listen.ip(),
            config.shard_port(s),
        ));
    }
    for addr in addrs {
        let mut target = addr;
        if target.ip().is_unspecified() {
            target.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        const PORT_PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
        let deadline = std::time::Instant::now() + PORT_PROBE_PATIENCE;
        let mut warned = false;
        while std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_millis(500))
            .is_ok()
        {
            if std::time::Instant::now() >= deadline {
                bail!("cannot listen on {addr}: address in use by another server");
            }
            if !warned {
                tracing::warn!(%addr, "port accepts connections; waiting up to 10s for its previous owner to go");
                warned = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Raise the locked-memory limit for glommio's registered I/O buffers, or shrink them.
fn io_memory_per_shard(shards: u32) -> usize {
    use rlimit::Resource;
    let want = IO_MEMORY_BYTES as u64 * u64::from(shards) + (4 << 20);
    if let Ok((soft, hard)) = Resource::MEMLOCK.get() {
        if soft >= want {
            return IO_MEMORY_BYTES;
        }
        let target = want.min(hard.max(want));
        if Resource::MEMLOCK.set(target, hard.max(target)).is_ok() {
            return IO_MEMORY_BYTES;
        }
        let per = soft.saturating_sub(1 << 20) / u64::from(shards);
        tracing::warn!(
            limit_bytes = soft,
            "locked-memory limit is low (ulimit -l); using {} KiB of I/O memory per shard; raise it with \
             `ulimit -l unlimited` or LimitMEMLOCK=infinity",
            per / 1024
        );
        return (per as usize).max(512 << 10);
    }
    IO_MEMORY_BYTES
}

/// CPUs this process may run on (its affinity mask), for pinning shards.
fn allowed_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Number of shards a node gets by default: the cores available to the process.
pub fn default_shards() -> u32 {
    allowed_cpus().len() as u32
}

/// Run a node until SIGINT/SIGTERM. Returns after every shard has drained and synced.
pub fn run(config: Config) -> anyhow::Result<()> {
    // Before the first clock read: every HLC physical time this process uses includes it.
    handler::set_clock_offset_ms(config.clock_offset_ms);
    if config.clock_offset_ms != 0 {
        tracing::warn!(
            clock_offset_ms = config.clock_offset_ms,
            "clock_offset_ms is set: this node's HLC physical time is shifted (a testing aid, never for production)"
        );
    }
    let auth = peer_auth(&config)?;
    let (_lock, meta) = prepare_data_dir(&config, &auth)?;
    let known_peers = read_known_peers(&config.data_dir)?;
    probe_ports(&config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handler")?;
    }
    let cpus = allowed_cpus();
    let boot_ms = handler::now_ms();
    let io_memory = io_memory_per_shard(config.shards);
    tracing::info!(
        node_id = format_args!("{:016x}", meta.node_id),
        shards = config.shards,
        listen = %config.listen,
        shard_port_base = config.shard_port_base,
        data_dir = %config.data_dir.display(),
        "starting ringkv"
    );
    let mesh = MeshBuilder::full(config.shards as usize, MESH_CHANNEL_CAPACITY);
    let (report_tx, report_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    let client_connections = Arc::new(std::sync::atomic::AtomicU32::new(0));
    for s in 0..config.shards {
        let cpu = cpus[s as usize % cpus.len()];
        let config = config.clone();
        let mesh = mesh.clone();
        let stop = stop.clone();
        let report = report_tx.clone();
        let identity = shard::Identity {
            node_id: meta.node_id,
            generation: boot_ms,
            tokens: meta.tokens.clone(),
            auth: auth.clone(),
            known_peers: if s == 0 {
                known_peers.clone()
            } else {
                Vec::new()
            },
            client_connections: client_connections.clone(),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{s}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                shard::run(Rc::new(config), identity, mesh, stop, report).await
            })
            .map_err(|e| anyhow::anyhow!("cannot start shard executor {s}: {e}"))?;
        handles.push(handle);
    }
    drop(report_tx);
    let mut ready = 0;
    let mut startup_error = None;
    while ready < config.shards {
        match report_rx.recv() {
            Ok(StartupReport::Ready { .. }) => ready += 1,
            Ok(StartupReport::Failed { message }) => {
                startup_error = Some(message);
                break;
            }
            Err(_) => {
                startup_error = Some("a shard exited during startup".to_string());
                break;
            }
        }
    }
    if startup_error.is_some() {
        stop.store(true, std::sync::atomic::Ordering::Release);
    } else {
        tracing::info!(shards = config.shards, "ringkv ready");
    }
    let mut errors = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => errors.push(message),
            Err(e) => errors.push(format!("shard thread failed: {e}")),
        }
    }
    if let Some(message) = startup_error {
        bail!("{message}");
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    tracing::info!("ringkv stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::ConfigLayer::default().resolve(2).unwrap()
    }

    #[test]
    fn node_meta_round_trips_tokens_as_hex() {
        let config = config();
        let tokens = choose_tokens(&config, 42);
        assert_eq!(tokens.len(), config.num_tokens as usize);
        let text = meta_text(42, config.shards, &tokens);
        assert!(text.contains("node_id = \"000000000000002a\""), "{text}");
        let (meta, had_tokens) = parse_meta(&text, &config, Path::new("node.meta")).unwrap();
        assert!(had_tokens);
        assert_eq!((meta.node_id, meta.tokens), (42, tokens));
    }

    #[test]
    fn node_meta_without_tokens_gets_them_from_the_node_id() {
        let config = config();
        let text = format!(
            "node_id = \"00000000000000ff\"\nshards = {}\n",
            config.shards
        );
        let (meta, had_tokens) = parse_meta(&text, &config, Path::new("node.meta")).unwrap();
        assert!(!had_tokens);
        assert_eq!(meta.tokens, choose_tokens(&config, 0xff));
    }

    #[test]
    fn node_meta_with_bad_tokens_is_corrupt() {
        let config = config();
        for tokens in ["[\"xyz\"]", "[]"] {
            let text = format!(
                "node_id = \"00000000000000ff\"\nshards = {}\ntokens = {tokens}\n",
                config.shards
            );
            let err = parse_meta(&text, &config, Path::new("node.meta"))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("corrupt"), "{err}");
        }
    }

    #[test]
    fn no_secret_derives_one_from_the_cluster_name() {
        let config = config();
        assert!(config.cluster_secret.is_none());
        let auth = peer_auth(&config).unwrap();
        assert_eq!(auth.cluster_name.name.as_str(), config.cluster_name);
        assert_eq!(auth.cluster_name.conflict_mode, config.conflict_mode);
    }
}

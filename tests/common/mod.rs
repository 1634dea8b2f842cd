//! Test harness: start real `ringkv serve` processes on free 127.0.0.1 ports with their
//! own temp data directories, wait for readiness with a deadline, and always kill them
//! (by PID, on drop) even when the test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringkv");

/// Wait until `cond` holds, polling; panic with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A block of `n` consecutive free ports on 127.0.0.1 (client port + shard ports).
pub fn free_port_block(n: u16) -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64);
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Below the kernel's ephemeral range (32768+ by default), so no outgoing socket
        // (a peer reconnecting to a killed node, say) can take a node's port meanwhile.
        let base = 12_000 + (x % 20_000) as u16;
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no free port block of {n}");
}

pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
    pub shards: u32,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    pub log: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// Start a node with `shards` shards and extra flags, on fresh ports and a temp dir.
    pub fn start(shards: u32, extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let port = free_port_block(shards as u16 + 1);
        let mut node = Node {
            child: None,
            port,
            shards,
            data_dir,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            log: Arc::new(Mutex::new(Vec::new())),
            _tmp: Some(tmp),
        };
        node.spawn();
        node.wait_ready();
        node
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.addr().parse().unwrap()
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr())
            .arg("--shards")
            .arg(self.shards.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start the process (again) and collect its stderr lines.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let mut child = self.command().spawn().expect("spawn ringkv serve");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Wait until the node answers a ping on its client port.
    pub fn wait_ready(&mut self) {
        let addr = self.addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let sockets = Command::new("ss")
                        .arg("-tanp")
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    let port = format!("127.0.0.1:{}", &self.port.to_string()[..4]);
                    let sockets: Vec<&str> =
                        sockets.lines().filter(|l| l.contains(&port)).collect();
                    panic!(
                        "ringkv exited during startup with {status}:\n{}\nsockets on its port:\n{}",
                        self.log_text(),
                        sockets.join("\n")
                    );
                }
            }
            // A node that requires a client token is pinged with it.
            let token = self
                .extra_args
                .iter()
                .position(|a| a == "--client-auth-token")
                .and_then(|i| self.extra_args.get(i + 1))
                .map(|t| t.clone().into_bytes());
            if let Ok(mut c) = ringkv::client::blocking::Client::connect_with(
                &addr,
                Duration::from_millis(500),
                token,
            ) {
                if c.ping().is_ok() && self.log_text().contains("ringkv ready") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {addr} not ready after 30s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGKILL and reap, then wait until its ports stop accepting (a killed process's
    /// io_uring sockets close asynchronously).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(30);
            for port in self.port..=self.port + self.shards as u16 {
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .is_ok()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// SIGTERM and wait (with a deadline) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run the `ringkv` CLI; returns (exit code, stdout bytes, stderr text).
pub fn cli(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cluster of real nodes on free ports: node 0 starts with no seeds, every later node
/// seeds node 0's client address. Nodes are killed (by PID) when the cluster drops.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Start `shards.len()` nodes (node i with `shards[i]` shards), each with `extra`
    /// flags, the later ones seeding the first.
    pub fn start(shards: &[u32], extra: &[&str]) -> Cluster {
        let mut nodes: Vec<Node> = Vec::new();
        for &n in shards {
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            if let Some(first) = nodes.first() {
                args.push("--seeds".into());
                args.push(first.addr());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Node::start(n, &args));
        }
        Cluster { nodes }
    }

    /// Start one more node seeding node 0, with its own flags (not the cluster's).
    pub fn start_extra(&self, shards: u32, extra: &[&str]) -> Node {
        let mut args: Vec<&str> = extra.to_vec();
        let seed = self.nodes[0].addr();
        args.push("--seeds");
        args.push(&seed);
        Node::start(shards, &args)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Node::addr).collect()
    }
}

/// The node rows of `ringkv status --host HOST`, split on whitespace (node id, address,
/// up|down, status, load, ...); the header lines are left out. None if the command failed.
pub fn status_lines(host: &str) -> Option<Vec<Vec<String>>> {
    let (code, out, _) = cli(&["status", "--host", host]);
    if code != 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    Some(
        text.lines()
            .map(|line| {
                line.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|f| {
                f.len() >= 4 && f[0].len() == 16 && f[0].chars().all(|c| c.is_ascii_hexdigit())
            })
            .collect(),
    )
}

/// `ringkv status --host HOST` as (address → up) for every listed node; None if the
/// command failed.
pub fn status_view(host: &str) -> Option<std::collections::BTreeMap<String, bool>> {
    Some(
        status_lines(host)?
            .into_iter()
            .map(|f| (f[1].clone(), f[2] == "up"))
            .collect(),
    )
}

/// The whole `GET /metrics` response (status line, headers, body) of a `metrics_listen`.
pub fn metrics_text(metrics_addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The sum over shards of one series in a metrics text.
pub fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fetch `GET /metrics` from a node's `metrics_listen` and sum one series over shards.
pub fn metric_sum(metrics_addr: &str, name: &str) -> f64 {
    sum_series(&metrics_text(metrics_addr), name)
}

/// Every node in `hosts` lists exactly `expected` (address → up) in `ringkv status`.
pub fn every_node_sees(hosts: &[String], expected: &[(String, bool)]) -> bool {
    let expected: std::collections::BTreeMap<String, bool> = expected.iter().cloned().collect();
    hosts
        .iter()
        .all(|h| status_view(h).is_some_and(|view| view == expected))
}

/// `addrs` paired with up = true, except `down` (addresses) paired with false.
pub fn view_with_down(addrs: &[String], down: &[&str]) -> Vec<(String, bool)> {
    addrs
        .iter()
        .map(|a| (a.clone(), !down.contains(&a.as_str())))
        .collect()
}

/// The addresses of `key`'s replicas, primary first, as `topology` places them: the
/// same ring and replica walk the nodes use (`ringkv ring` prints the same sets).
pub fn replica_addrs(topology: &ringkv::protocol::types::Topology, key: &[u8]) -> Vec<String> {
    use ringkv::protocol::types::NodeStatus;
    let members: Vec<_> = topology
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Normal && !n.tokens.is_empty())
        .collect();
    let ring =
        ringkv::cluster::ring::Ring::new(members.iter().map(|n| (n.node_id, n.tokens.as_slice())))
            .unwrap();
    let rf = topology.replication_factor.max(1) as usize;
    ring.replicas(ringkv::protocol::token::token_of(key), rf)
        .into_iter()
        .map(|id| {
            members
                .iter()
                .find(|n| n.node_id == id)
                .unwrap()
                .address
                .clone()
        })
        .collect()
}

/// A peer connection to `addr` (a shard port) authenticated with `cluster_secret`
/// under the default cluster name; None if the node cannot be reached.
pub fn peer_connection(
    addr: SocketAddr,
    cluster_secret: &str,
) -> Option<ringkv::client::blocking::Connection> {
    use ringkv::auth::{self, ClusterName, ClusterSecret, Effect, Handshake, Initiator};
    use ringkv::protocol::types::{Op, Reply};
    let mut conn =
        ringkv::client::blocking::Connection::connect(addr, Duration::from_secs(5)).ok()?;
    let (mut initiator, mut effects) = Initiator::new(
        ClusterName::new("ringkv").unwrap(),
        ClusterSecret::new(cluster_secret.as_bytes()).unwrap(),
        0x7e57,
        auth::fresh_nonce().unwrap(),
    );
    loop {
        let mut send = None;
        for effect in effects.drain(..) {
            match effect {
                Effect::Send(message) => send = Some(message),
                Effect::Authenticated { .. } => return Some(conn),
                Effect::Close { failure } => panic!("handshake failed: {failure}"),
            }
        }
        let message = send.expect("initiator has something to send");
        match conn
            .call(Op::PeerHandshake {
                message: message.encode(),
            })
            .ok()?
        {
            Reply::PeerHandshake { message } => effects = initiator.on_bytes(&message),
            other => panic!("unexpected handshake reply {other:?}"),
        }
    }
}

/// `node`'s own copy of each of `keys`, read with `ReplicaRead` from the shard that owns
/// it over an authenticated peer connection: the replica-local read path, which never
/// asks another node (a client `Get`, even at ONE, is coordinated and may be answered
/// by any replica). Some(None) for a key the node has nothing of; None if the node
/// cannot be reached. Assumes the default `shard_port_base` (client port + 1).
pub fn replica_states(
    node: &Node,
    cluster_secret: &str,
    keys: &[&[u8]],
) -> Option<Vec<Option<ringkv::conflict::KeyState>>> {
    use ringkv::protocol::token::{shard_of, token_of};
    use ringkv::protocol::types::{Op, Reply};
    let mut conns: std::collections::BTreeMap<u32, ringkv::client::blocking::Connection> =
        std::collections::BTreeMap::new();
    let mut states = Vec::with_capacity(keys.len());
    for key in keys {
        let shard = shard_of(token_of(key), node.shards);
        let conn = match conns.entry(shard) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let addr = format!("127.0.0.1:{}", node.port + 1 + shard as u16)
                    .parse()
                    .unwrap();
                e.insert(peer_connection(addr, cluster_secret)?)
            }
        };
        let state = match conn.call(Op::ReplicaRead { key: key.to_vec() }).ok()? {
            Reply::ReplicaState { state: None } => None,
            Reply::ReplicaState { state: Some(bytes) } => {
                Some(ringkv::conflict::KeyState::decode(&bytes).unwrap())
            }
            other => panic!("unexpected ReplicaRead reply {other:?}"),
        };
        states.push(state);
    }
    Some(states)
}

/// The value in an LWW replica state: Some(None) for a tombstone, None for no state.
pub fn lww_value(state: &Option<ringkv::conflict::KeyState>) -> Option<Option<Vec<u8>>> {
    match state {
        None => None,
        Some(ringkv::conflict::KeyState::Lww(cell)) => Some(cell.value.clone()),
        Some(other) => panic!("expected an LWW cell, got {other:?}"),
    }
}

/// `ringkv status --host HOST` as (address → (up, status)) for every listed node, the
/// status as printed (`joining`, `normal`, `leaving`, `left`); None if the command
/// failed.
pub fn status_rows(host: &str) -> Option<std::collections::BTreeMap<String, (bool, String)>> {
    Some(
        status_lines(host)?
            .into_iter()
            .map(|f| (f[1].clone(), (f[2] == "up", f[3].clone())))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// Hinted-handoff and fault helpers (shared by tests/hinted_handoff.rs and
// tests/netns_partition.rs).

/// Start `count` nodes of `shards` shards each; node i gets `extra(i)` as its flags and
/// every node after the first seeds node 0. For per-node flags (metrics ports, fault
/// rules files) that [`Cluster::start`] cannot give.
pub fn start_cluster_with(
    count: usize,
    shards: u32,
    extra: impl Fn(usize) -> Vec<String>,
) -> Cluster {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..count {
        let mut args = extra(i);
        if let Some(first) = nodes.first() {
            args.push("--seeds".into());
            args.push(first.addr());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Node::start(shards, &args));
    }
    Cluster { nodes }
}

/// `ringkv-loadgen` next to the `ringkv` binary (same target directory and profile), if
/// it was built: an integration test of this crate cannot ask Cargo for another
/// package's binary, so `.ci/run` builds the workspace before testing.
pub fn loadgen_bin() -> Option<PathBuf> {
    let path = Path::new(BIN).with_file_name("ringkv-loadgen");
    path.is_file().then_some(path)
}

/// A child process (not a node) killed by PID and reaped when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Wait (polling, with a deadline) for the exit; the child is killed on timeout.
    pub fn wait_with_deadline(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.0.as_mut().expect("child still owned");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.0 = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.0 = None;
                panic!("child process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Replace a fault rules file (`fault_rules_file`) whole: written then renamed, so a
/// shard never reads half of it.
pub fn write_fault_rules(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The `Topology` reply of `host` (it lists itself first); None if it cannot answer.
pub fn topology(host: &str) -> Option<ringkv::protocol::types::Topology> {
    use ringkv::protocol::types::{Op, Reply};
    let addr: SocketAddr = host.parse().ok()?;
    let mut conn =
        ringkv::client::blocking::Connection::connect(addr, Duration::from_secs(5)).ok()?;
    match conn.call(Op::Topology).ok()? {
        Reply::Topology(t) => Some(t),
        _ => None,
    }
}

/// The node id of the node listening at `host`.
pub fn node_id_of(host: &str) -> u64 {
    topology(host)
        .and_then(|t| t.nodes.first().map(|n| n.node_id))
        .unwrap_or_else(|| panic!("no topology from {host}"))
}

/// The hints `holder` keeps for the node whose client address is `target` (all of the
/// holder's shards), as its `Topology` reports them; None if it cannot answer or does
/// not list the target.
pub fn hints_held(holder: &str, target: &str) -> Option<ringkv::protocol::types::HintSummary> {
    topology(holder)?
        .nodes
        .into_iter()
        .find(|n| n.address == target)
        .map(|n| n.hints)
}

/// The last column of `ringkv status --host HOST` ("hints held for it") in the row of
/// the node whose address is `target`.
pub fn status_hint_cell(host: &str, target: &str) -> Option<String> {
    status_lines(host)?.into_iter().find_map(|fields| {
        // The cell follows the shard-ports column (`N-M`), the last fixed field.
        if fields[1] != target {
            return None;
        }
        let ports = fields
            .iter()
            .position(|f| f.contains('-') && f.split('-').all(|p| p.parse::<u16>().is_ok()))?;
        Some(fields[ports + 1..].join(" "))
    })
}

/// Sum of the samples of series `name` whose labels contain `label` (e.g.
/// `target="00ab..."`).
pub fn sum_series_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads a node's own copies (`ReplicaRead`, no coordination, no read repair) over
/// peer connections to its shard ports, authenticated with the cluster secret (cluster
/// name `ringkv`, LWW mode). Connections are opened on first use and kept.
pub struct OwnCopyReader {
    ip: String,
    shard_port_base: u16,
    shards: u32,
    secret: String,
    conns: std::collections::HashMap<u16, ringkv::client::blocking::Connection>,
}

impl OwnCopyReader {
    pub fn new(ip: &str, shard_port_base: u16, shards: u32, cluster_secret: &str) -> Self {
        OwnCopyReader {
            ip: ip.to_string(),
            shard_port_base,
            shards,
            secret: cluster_secret.to_string(),
            conns: std::collections::HashMap::new(),
        }
    }

    /// For a harness node (default shard ports: client port + 1 + shard).
    pub fn of(node: &Node, cluster_secret: &str) -> Self {
        Self::new("127.0.0.1", node.port + 1, node.shards, cluster_secret)
    }

    fn handshake(&self, port: u16) -> Option<ringkv::client::blocking::Connection> {
        let addr: SocketAddr = format!("{}:{port}", self.ip).parse().ok()?;
        peer_connection(addr, &self.secret)
    }

    /// The node's copy of `key`: `Some(None)` none (or a tombstone), `Some(Some(v))` its
    /// LWW value; None if the node could not be asked (the connection is dropped and
    /// the next call redials).
    pub fn read(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        use ringkv::conflict::KeyState;
        use ringkv::protocol::token::{shard_of, token_of};
        use ringkv::protocol::types::{Op, Reply};
        let port = self.shard_port_base + shard_of(token_of(key), self.shards) as u16;
        if !self.conns.contains_key(&port) {
            let conn = self.handshake(port)?;
            self.conns.insert(port, conn);
        }
        let conn = self.conns.get_mut(&port)?;
        let reply = match conn.call(Op::ReplicaRead { key: key.to_vec() }) {
            Ok(reply) => reply,
            Err(_) => {
                self.conns.remove(&port);
                return None;
            }
        };
        match reply {
            Reply::ReplicaState { state: None } => Some(None),
            Reply::ReplicaState { state: Some(bytes) } => match KeyState::decode(&bytes).unwrap() {
                KeyState::Lww(cell) => Some(cell.value),
                other => panic!("expected an LWW cell, got {other:?}"),
            },
            other => panic!("unexpected ReplicaRead reply {other:?}"),
        }
    }
}

/// A harness node's own copy of `key` (one-off [`OwnCopyReader`]).
pub fn own_copy(node: &Node, cluster_secret: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
    OwnCopyReader::of(node, cluster_secret).read(key)
}

/// The ring as one node reports it (its Normal nodes), to compute replica sets.
pub struct RingView {
    pub ring: ringkv::cluster::Ring,
    pub replication_factor: usize,
}

impl RingView {
    pub fn of(host: &str) -> RingView {
        use ringkv::protocol::types::NodeStatus;
        let t = topology(host).unwrap_or_else(|| panic!("no topology from {host}"));
        let members: Vec<_> = t
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Normal && !n.tokens.is_empty())
            .collect();
        let ring =
            ringkv::cluster::Ring::new(members.iter().map(|n| (n.node_id, n.tokens.as_slice())))
                .unwrap();
        RingView {
            ring,
            replication_factor: (t.replication_factor as usize).min(members.len()),
        }
    }

    /// The replica node ids of `key`, primary first.
    pub fn replicas(&self, key: &[u8]) -> Vec<u64> {
        self.ring.replicas(
            ringkv::protocol::token::token_of(key),
            self.replication_factor,
        )
    }
}

/// The replica node ids of `key` (primary first) on the ring `host` reports.
pub fn replicas_of(host: &str, key: &[u8]) -> Vec<u64> {
    RingView::of(host).replicas(key)
}

/// Poll every future in index order until all are done (a minimal `join_all`, for the
/// storage crash tests that drive many appends on one executor).
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

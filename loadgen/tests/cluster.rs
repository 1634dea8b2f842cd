//! `ringkv-loadgen` against a real 3-node cluster (RF=1), given only one node's address:
//! requests must be routed token-aware, each straight to the node that owns its key.
//!
//! How that is seen from outside: every node's `ringkv_requests_total` grows (the load
//! is spread), and the sum over nodes grows by about the number of operations, not
//! more. A client that sent everything to the host it was given would make that node
//! coordinate every request and pass about two thirds of them on to their owners as
//! replica operations, which the owners count too (≈ 1.67 × the operations in total).
//!
//! The root crate's harness (`tests/common`) needs `CARGO_BIN_EXE_ringkv`, which this
//! crate's tests do not have, so the nodes are started here with the same pattern:
//! free 127.0.0.1 ports, a temp data dir, killed by PID on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringkv::client::blocking::Client;
use ringkv::protocol::types::NodeStatus;

const LOADGEN: &str = env!("CARGO_BIN_EXE_ringkv-loadgen");
/// Generous: gossip convergence on 2 cores shared by several builders.
const DEADLINE: Duration = Duration::from_secs(90);

fn ringkv_bin() -> PathBuf {
    let path = PathBuf::from(LOADGEN).with_file_name("ringkv");
    assert!(
        path.exists(),
        "{} not built: run `cargo build --bin ringkv` first",
        path.display()
    );
    path
}

/// A block of `n` consecutive free ports below the ephemeral range.
fn free_ports(n: u16) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let start = 12_000 + ((std::process::id() ^ nanos) % 18_000) as u16;
    for base in (start..32_000).chain(12_000..start).step_by(11) {
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no free port block of {n}");
}

struct Node {
    child: Child,
    addr: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(shards: u32, seed: Option<&str>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(shards as u16 + 2);
    let addr = format!("127.0.0.1:{port}");
    // The metrics port is the block's last one, after the shard ports.
    let metrics = format!("127.0.0.1:{}", port + shards as u16 + 1);
    let mut cmd = Command::new(ringkv_bin());
    cmd.args(["serve", "--listen", &addr, "--shards", &shards.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--metrics-listen", &metrics, "--replication-factor", "1"])
        .args([
            "--cluster-secret",
            "lg-cluster",
            "--gossip-interval-ms",
            "200",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(seed) = seed {
        cmd.args(["--seeds", seed]);
    }
    let node = Node {
        child: cmd.spawn().unwrap(),
        addr,
        metrics,
        _dir: dir,
    };
    wait_until("node to accept connections", || {
        std::net::TcpStream::connect(&node.addr).is_ok()
    });
    node
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `host` lists `n` nodes, all up, normal, with tokens.
fn sees_ring_of(host: &str, n: usize) -> bool {
    let Ok(mut client) = Client::connect(host) else {
        return false;
    };
    let Ok(topology) = client.refresh_topology() else {
        return false;
    };
    topology.nodes.len() == n
        && topology
            .nodes
            .iter()
            .all(|node| node.up && node.status == NodeStatus::Normal && !node.tokens.is_empty())
}

/// Sum over shards of `ringkv_requests_total` from a node's `GET /metrics`.
fn requests_total(metrics_addr: &str) -> f64 {
    let mut stream = std::net::TcpStream::connect(metrics_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("ringkv_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn requests_given_one_host_are_spread_over_the_owning_nodes() {
    let first = start_node(2, None);
    let nodes = [
        start_node(1, Some(&first.addr)),
        start_node(1, Some(&first.addr)),
    ];
    let all: Vec<&Node> = std::iter::once(&first).chain(nodes.iter()).collect();
    wait_until("every node to see a 3-node ring", || {
        all.iter().all(|n| sees_ring_of(&n.addr, 3))
    });

    let before: Vec<f64> = all.iter().map(|n| requests_total(&n.metrics)).collect();
    let ops: u64 = 6000;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(LOADGEN)
        .args([
            "--hosts",
            &first.addr,
            "--workload",
            "custom",
            "--read-ratio",
            "0.5",
        ])
        .args([
            "--distribution",
            "uniform",
            "--keys",
            "3000",
            "--consistency",
            "one",
        ])
        .args([
            "--connections",
            "3",
            "--pipeline",
            "4",
            "--ops",
            &ops.to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<f64> = all.iter().map(|n| requests_total(&n.metrics)).collect();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["total"]["count"].as_u64(), Some(ops), "{report}");

    let grew: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Each node owns about a third of the ring; a tenth is far from any split we
    // could see, and far above what gossip alone adds.
    for (node, g) in all.iter().zip(&grew) {
        assert!(
            *g >= ops as f64 / 10.0,
            "{} answered only {g} requests of {ops}: not routed to it ({grew:?})",
            node.addr
        );
    }
    // Routed by token, nothing is passed on: the total is the operations plus a little
    // (topology and gossip requests). Sent to one host, it would be about 1.67 × ops.
    let total: f64 = grew.iter().sum();
    assert!(
        total <= ops as f64 * 1.25,
        "nodes answered {total} requests for {ops} operations: requests were proxied \
         between nodes ({grew:?})"
    );
}

//! The quorum contract across restarts, on real processes (three nodes, RF=3, two
//! shards each, batch mode, the default gossip interval): a node that restarts never
//! acknowledges a QUORUM write with fewer than W copies, whether or not it has seeds and
//! whether or not its peers are up, and a node started with `--seeds` that has not yet
//! heard of its cluster refuses keyed requests instead of serving as a single node.
//!
//! The trial: kill -9 a node, restart it, send QUORUM puts through it at once (it
//! coordinates them), then stop it and read each acknowledged key's copies on the two
//! others directly (`ReplicaRead`): every acknowledged key has a copy there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, own_copy, status_rows, wait_until, Cluster, Node};
use ringkv::client::blocking::Client;
use ringkv::client::ClientError;
use ringkv::protocol::types::{Consistency, ErrorReply};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "restart-secret";
const FLAGS: [&str; 4] = ["--replication-factor", "3", "--cluster-secret", SECRET];

fn every_node_sees_all_up(cluster: &Cluster) -> bool {
    let addrs = cluster.addrs();
    addrs.iter().all(|host| {
        status_rows(host).is_some_and(|rows| {
            rows.len() == addrs.len() && addrs.iter().all(|a| rows.get(a).is_some_and(|r| r.0))
        })
    })
}

/// QUORUM puts coordinated by `host` from the moment it accepts, for at least `span`
/// and until `min_acks` were acknowledged (bounded in count and time). Returns the
/// acknowledged (key, value) pairs and how many were refused as unavailable.
fn quorum_puts_through(
    host: &str,
    prefix: &str,
    span: Duration,
    min_acks: usize,
) -> (Vec<(String, String)>, usize) {
    let mut client = Client::connect(host).unwrap();
    client.pin_to_seed(true);
    let start = Instant::now();
    let mut acked = Vec::new();
    let mut unavailable = 0;
    for i in 0..20_000u32 {
        if (start.elapsed() >= span && acked.len() >= min_acks) || start.elapsed() > DEADLINE {
            break;
        }
        let key = format!("{prefix}-{i}");
        let value = format!("v{i}");
        match client.put(
            key.as_bytes(),
            value.as_bytes(),
            Some(Consistency::Quorum),
            None,
        ) {
            Ok(()) => acked.push((key, value)),
            Err(ClientError::Server(ErrorReply::Unavailable { .. })) => {
                unavailable += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("put {key} through {host}: unexpected error {e}"),
        }
    }
    (acked, unavailable)
}

/// How many of `nodes` hold `value` for `key` in their own engine.
fn copies_on(nodes: &[&Node], key: &str, value: &str) -> usize {
    nodes
        .iter()
        .filter(|n| own_copy(n, SECRET, key.as_bytes()) == Some(Some(value.as_bytes().to_vec())))
        .count()
}

#[test]
fn a_restarted_node_acknowledges_quorum_writes_only_with_w_copies() {
    let mut cluster = Cluster::start(&[2, 2, 2], &FLAGS);
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        every_node_sees_all_up(&cluster)
    });
    // Node 0 has no seeds (it learns its peers from peers.toml alone); node 1 seeds node 0.
    for victim in [0usize, 1] {
        cluster.nodes[victim].kill();
        cluster.nodes[victim].restart();
        let host = cluster.nodes[victim].addr();
        let (acked, unavailable) = quorum_puts_through(
            &host,
            &format!("restart{victim}"),
            Duration::from_secs(2),
            50,
        );
        assert!(
            acked.len() >= 50,
            "node {victim}: only {} puts acknowledged",
            acked.len()
        );
        cluster.nodes[victim].kill();
        let others: Vec<&Node> = (0..3)
            .filter(|i| *i != victim)
            .map(|i| &cluster.nodes[i])
            .collect();
        let single_copy: Vec<&String> = acked
            .iter()
            .filter(|(key, value)| copies_on(&others, key, value) == 0)
            .map(|(key, _)| key)
            .collect();
        assert!(
            single_copy.is_empty(),
            "node {victim} acknowledged {} of {} QUORUM puts with only its own copy ({unavailable} \
             refused as unavailable), e.g. {:?}",
            single_copy.len(),
            acked.len(),
            &single_copy[..single_copy.len().min(5)]
        );
        cluster.nodes[victim].restart();
        wait_until("every node to see 3 nodes up again", DEADLINE, || {
            every_node_sees_all_up(&cluster)
        });
    }
}

#[test]
fn a_restarted_node_whose_peers_are_down_refuses_quorum_but_not_one() {
    let mut cluster = Cluster::start(&[1, 1, 1], &FLAGS);
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        every_node_sees_all_up(&cluster)
    });
    let peers_file = cluster.nodes[0].data_dir().join("peers.toml");
    wait_until("node 0 to persist its two peers", DEADLINE, || {
        std::fs::read_to_string(&peers_file).is_ok_and(|t| t.matches("[[peer]]").count() == 2)
    });
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    cluster.nodes[0].kill();
    // Node 0 has no seeds: before it remembered its peers it came back as a single node
    // and acknowledged every write alone.
    cluster.nodes[0].restart();
    let host = cluster.nodes[0].addr();
    let (code, _, err) = cli(&["put", "k", "v", "--host", &host, "--consistency", "quorum"]);
    assert_eq!(code, 3, "QUORUM put with both peers down: {err}");
    assert!(err.contains("unavailable"), "{err}");
    let (code, _, err) = cli(&["get", "k", "--host", &host, "--consistency", "quorum"]);
    assert_eq!(code, 3, "QUORUM get with both peers down: {err}");
    let (code, _, err) = cli(&["put", "k", "v", "--host", &host, "--consistency", "one"]);
    assert_eq!(code, 0, "ONE put, its own copy suffices: {err}");
    let rows = status_rows(&host).unwrap();
    assert_eq!(
        rows.len(),
        3,
        "the restarted node lists its remembered peers: {rows:?}"
    );
    assert_eq!(rows.values().filter(|r| !r.0).count(), 2, "{rows:?}");
}

#[test]
fn a_node_with_seeds_that_has_not_heard_of_its_cluster_refuses_keyed_requests() {
    // The seed names a port nothing listens on: this node never learns its cluster.
    let nowhere = format!("127.0.0.1:{}", common::free_port_block(2));
    let node = Node::start(1, &["--seeds", &nowhere, "--cluster-secret", SECRET]);
    let host = node.addr();
    for args in [
        vec!["put", "k", "v", "--consistency", "one"],
        vec!["get", "k", "--consistency", "one"],
        vec!["delete", "k"],
    ] {
        let mut args = args.clone();
        args.extend(["--host", &host]);
        let (code, _, err) = cli(&args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains("unavailable"), "{args:?}: {err}");
    }
    let (code, _, err) = cli(&["status", "--host", &host]);
    assert_eq!(code, 0, "status still answers: {err}");
}

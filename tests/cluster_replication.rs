//! Leaderless quorum replication on real processes (RF=3, three nodes): a QUORUM write
//! through one node is read at QUORUM through the others; with one node killed and
//! marked down QUORUM still works and ALL is refused as unavailable at once; after the
//! restart a QUORUM read repairs the restarted node's own copy, checked by reading that
//! copy directly over an authenticated peer connection (`ReplicaRead`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, own_copy, status_view, wait_until, Cluster};
use ringkv::client::blocking::Connection;
use ringkv::protocol::types::{ErrorReply, Op, Reply};
use std::time::Duration;

/// Generous: phi conviction takes ~18 gossip intervals, and 8 builders share 2 cores.
const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "repl-secret";
/// `--max-hint-window 0`: a node marked down gets no hints, so what reaches a restarted
/// replica here comes through read repair alone (hinted handoff has its own tests).
const FLAGS: [&str; 8] = [
    "--gossip-interval-ms",
    "100",
    "--replication-factor",
    "3",
    "--cluster-secret",
    SECRET,
    "--max-hint-window",
    "0",
];

fn all_see(hosts: &[String], expected: &[(String, bool)]) -> bool {
    let expected: std::collections::BTreeMap<String, bool> = expected.iter().cloned().collect();
    hosts
        .iter()
        .all(|h| status_view(h).is_some_and(|view| view == expected))
}

fn put(host: &str, key: &str, value: &str, consistency: &str) -> (i32, String) {
    let (code, _, err) = cli(&[
        "put",
        key,
        value,
        "--host",
        host,
        "--consistency",
        consistency,
    ]);
    (code, err)
}

fn get(host: &str, key: &str, consistency: &str) -> (i32, String, String) {
    let (code, out, err) = cli(&["get", key, "--host", host, "--consistency", consistency]);
    (code, String::from_utf8(out).unwrap(), err)
}

#[test]
fn quorum_replication_survives_a_down_node_and_read_repair_heals_it() {
    let mut cluster = Cluster::start(&[1, 1, 1], &FLAGS);
    let addrs = cluster.addrs();
    let all_up: Vec<(String, bool)> = addrs.iter().map(|a| (a.clone(), true)).collect();
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        all_see(&addrs, &all_up)
    });

    // `ringkv ring`: 3 nodes x 16 vnodes = 48 ranges, each with 3 distinct replicas.
    let (code, out, err) = cli(&["ring", "--host", &addrs[0]]);
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("48 ranges, 3 nodes, replication factor 3 (N = 3)"),
        "{text}"
    );
    let range_lines: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(range_lines.len(), 48, "{text}");
    for line in range_lines {
        let replicas: std::collections::BTreeSet<&str> = line.split_whitespace().skip(2).collect();
        assert_eq!(replicas.len(), 3, "three distinct replicas: {line}");
    }

    // 1. Written through A at QUORUM, read at QUORUM through B and through C.
    let (code, err) = put(&addrs[0], "k1", "v1", "quorum");
    assert_eq!(code, 0, "{err}");
    for host in &addrs[1..] {
        let (code, out, err) = get(host, "k1", "quorum");
        assert_eq!((code, out.as_str()), (0, "v1"), "via {host}: {err}");
    }
    // Every replica holds it (RF=3 on 3 nodes); at least W=2 did when the put returned,
    // the third follows.
    for node in &cluster.nodes {
        wait_until("every replica to hold k1", DEADLINE, || {
            own_copy(node, SECRET, b"k1") == Some(Some(b"v1".to_vec()))
        });
    }

    // 2. C is killed and marked down: QUORUM works, ALL is refused as unavailable.
    cluster.nodes[2].kill();
    let survivors = addrs[..2].to_vec();
    let one_down = vec![
        (addrs[0].clone(), true),
        (addrs[1].clone(), true),
        (addrs[2].clone(), false),
    ];
    wait_until("the survivors to mark C down", DEADLINE, || {
        all_see(&survivors, &one_down)
    });
    let (code, err) = put(&addrs[0], "k2", "while-down", "quorum");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = get(&addrs[1], "k2", "quorum");
    assert_eq!((code, out.as_str()), (0, "while-down"), "{err}");
    let (code, _, err) = get(&addrs[1], "k2", "all");
    assert_eq!(
        code, 3,
        "ALL with a replica down is an operational error: {err}"
    );
    assert!(err.contains("unavailable"), "{err}");
    let mut conn = Connection::connect(cluster.nodes[0].socket_addr(), DEADLINE).unwrap();
    assert_eq!(
        conn.call(Op::Put {
            key: b"k3".to_vec(),
            value: b"x".to_vec(),
            consistency: Some(ringkv::protocol::types::Consistency::All),
            context: None,
            sloppy_quorum: None,
        })
        .unwrap(),
        Reply::Error(ErrorReply::Unavailable {
            required: 3,
            alive: 2
        })
    );

    // 3. C comes back without k2; a QUORUM read through A repairs C's own copy.
    cluster.nodes[2].restart();
    wait_until("C to be up everywhere", DEADLINE, || {
        all_see(&addrs, &all_up)
    });
    let c = &cluster.nodes[2];
    assert_eq!(
        own_copy(c, SECRET, b"k2"),
        Some(None),
        "C missed the write while it was down"
    );
    let (code, out, err) = get(&addrs[0], "k2", "quorum");
    assert_eq!((code, out.as_str()), (0, "while-down"), "{err}");
    wait_until("the read to repair C's copy of k2", DEADLINE, || {
        own_copy(c, SECRET, b"k2") == Some(Some(b"while-down".to_vec()))
    });
    // And C serves it as a coordinator too, with everything agreeing.
    let (code, out, err) = get(&addrs[2], "k2", "all");
    assert_eq!((code, out.as_str()), (0, "while-down"), "{err}");
}

#[test]
fn causal_writes_replicate_and_a_read_context_supersedes_them() {
    let mut flags: Vec<&str> = FLAGS.to_vec();
    flags.extend(["--conflict-mode", "causal"]);
    let cluster = Cluster::start(&[1, 1, 1], &flags);
    let addrs = cluster.addrs();
    let all_up: Vec<(String, bool)> = addrs.iter().map(|a| (a.clone(), true)).collect();
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        all_see(&addrs, &all_up)
    });
    // Two writes without a context through different coordinators: two siblings.
    assert_eq!(put(&addrs[0], "c", "one", "quorum").0, 0);
    assert_eq!(put(&addrs[1], "c", "two", "quorum").0, 0);
    let (code, json, err) = cli(&["get", "c", "--json", "--host", &addrs[2]]);
    assert_eq!(code, 0, "{err}");
    let json = String::from_utf8(json).unwrap();
    assert!(
        json.contains("\"one\"") && json.contains("\"two\""),
        "{json}"
    );
    // A write with that read's context (through the third node) supersedes both.
    let (code, text, _) = get(&addrs[2], "c", "quorum");
    assert_eq!(code, 0);
    let context = text
        .lines()
        .find_map(|l| l.strip_prefix("--- context "))
        .expect("context line")
        .to_string();
    let (code, _, err) = cli(&[
        "put",
        "c",
        "three",
        "--context",
        &context,
        "--host",
        &addrs[2],
    ]);
    assert_eq!(code, 0, "{err}");
    for host in &addrs {
        let (code, out, err) = get(host, "c", "quorum");
        assert_eq!((code, out.as_str()), (0, "three"), "via {host}: {err}");
    }
}

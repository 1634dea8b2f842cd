//! Conflicts on real clusters (docs/design.md §7):
//!
//! - a node of another `conflict_mode` is refused by the peer handshake on both sides
//!   (logged with both modes, counted) and never appears in `ringkv status`;
//! - LWW: sequential writes through different coordinators, each after the previous was
//!   acknowledged, end with the last one, also with skewed clocks (`--clock-offset-ms`),
//!   because the client carries its session timestamp from one coordinator to the next;
//!   without it, a coordinator whose clock is behind loses the later write (shown
//!   deterministically with a coordinator that is not a replica of the key);
//! - the anomaly LWW accepts: concurrent writes through different coordinators keep one
//!   value and lose the other acknowledged ones; causal mode on the same schedule keeps
//!   every one as a sibling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    every_node_sees, free_port_block, metric_sum, replica_addrs, replica_states, status_view,
    view_with_down, wait_until, Cluster, Node,
};
use ringkv::client::blocking::{Client, Connection};
use ringkv::cluster::ring::Ring;
use ringkv::protocol::token::token_of;
use ringkv::protocol::types::{Consistency, Op, Reply};
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Generous: gossip convergence on 2 cores shared by several builders.
const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "conflicts-secret";

/// Start one node per entry of `per_node` (each with `common` and its own flags), the
/// later ones seeding the first. Every node has one shard, so its shard 0 port is
/// `port + 1`.
fn start_nodes(common: &[&str], per_node: &[&[&str]]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for flags in per_node {
        let mut args: Vec<String> = common
            .iter()
            .chain(flags.iter())
            .map(|s| s.to_string())
            .collect();
        if let Some(first) = nodes.first() {
            args.push("--seeds".into());
            args.push(first.addr());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Node::start(1, &args));
    }
    nodes
}

fn wait_all_up(nodes: &[Node]) {
    let expected: std::collections::BTreeMap<String, bool> =
        nodes.iter().map(|n| (n.addr(), true)).collect();
    wait_until("every node to list every node up", DEADLINE, || {
        nodes
            .iter()
            .all(|n| status_view(&n.addr()).is_some_and(|view| view == expected))
    });
}

/// A client that sends every request to `node`, which then coordinates it.
fn pinned_client(node: &Node) -> Client {
    let mut client = Client::connect(&node.addr()).unwrap();
    client.pin_to_seed(true);
    client
}

/// A raw connection to `node`'s only shard: ops go exactly as given (no session).
fn raw(node: &Node) -> Connection {
    let addr = format!("127.0.0.1:{}", node.port + 1).parse().unwrap();
    Connection::connect(addr, Duration::from_secs(10)).unwrap()
}

fn values_at(node: &Node, key: &[u8], consistency: Consistency) -> BTreeSet<Vec<u8>> {
    let result = pinned_client(node).get(key, Some(consistency)).unwrap();
    result.values.into_iter().collect()
}

fn one(value: &str) -> BTreeSet<Vec<u8>> {
    BTreeSet::from([value.as_bytes().to_vec()])
}

#[test]
fn nodes_of_another_conflict_mode_are_refused_on_both_sides_and_never_listed() {
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port_block(1)))
        .collect();
    let gossip = ["--gossip-interval-ms", "100", "--cluster-secret", SECRET];
    // A (lww) alone; B (causal) seeds A; C (lww) seeds B. A refuses B as the acceptor,
    // B refuses C as the acceptor; B and C refuse as the initiators.
    let lww_a = Node::start(
        1,
        &[&gossip[..], &["--metrics-listen", &metrics[0]]].concat(),
    );
    let a_addr = lww_a.addr();
    let causal_b = Node::start(
        1,
        &[
            &gossip[..],
            &[
                "--conflict-mode",
                "causal",
                "--metrics-listen",
                &metrics[1],
                "--seeds",
                &a_addr,
            ],
        ]
        .concat(),
    );
    let b_addr = causal_b.addr();
    let lww_c = Node::start(
        1,
        &[
            &gossip[..],
            &["--metrics-listen", &metrics[2], "--seeds", &b_addr],
        ]
        .concat(),
    );
    let nodes = [&lww_a, &causal_b, &lww_c];

    // Several refused gossip rounds on every node, counted as peer auth failures.
    for (node, metrics) in nodes.iter().zip(&metrics) {
        wait_until("three refused handshakes to be counted", DEADLINE, || {
            metric_sum(metrics, "ringkv_peer_auth_failures_total") >= 3.0
        });
        assert!(node.child.is_some());
    }
    // Both sides log both modes: the acceptor with the peer's address as a field, the
    // initiator with the address it dialled.
    let a_shard0 = format!("127.0.0.1:{}", lww_a.port + 1);
    let b_shard0 = format!("127.0.0.1:{}", causal_b.port + 1);
    let expectations = [
        (
            &lww_a,
            "peer handshake refused: peer runs conflict_mode causal, this node lww; refusing"
                .to_string(),
        ),
        (
            &causal_b,
            format!(
                "peer handshake with {a_shard0} failed: peer runs conflict_mode lww, this node causal"
            ),
        ),
        (
            &causal_b,
            "peer handshake refused: peer runs conflict_mode lww, this node causal; refusing"
                .to_string(),
        ),
        (
            &lww_c,
            format!(
                "peer handshake with {b_shard0} failed: peer runs conflict_mode causal, this node lww"
            ),
        ),
    ];
    for (node, line) in &expectations {
        wait_until(
            &format!("{} to log {line:?}", node.addr()),
            DEADLINE,
            || node.log_text().contains(line.as_str()),
        );
    }
    let acceptor_line = lww_a
        .log_text()
        .lines()
        .find(|l| l.contains("peer runs conflict_mode causal"))
        .unwrap()
        .to_string();
    assert!(
        acceptor_line.contains("WARN") && acceptor_line.contains("peer=127.0.0.1:"),
        "{acceptor_line}"
    );

    // After all those rounds, every node still lists only itself. A (no seeds) serves
    // alone; B and C were started with seeds but never heard of a node they accept, so
    // they refuse keyed requests rather than serve as single nodes.
    for node in nodes {
        let view = status_view(&node.addr()).unwrap();
        assert_eq!(
            view.keys().cloned().collect::<Vec<_>>(),
            vec![node.addr()],
            "{} must not list a node of another conflict mode",
            node.addr()
        );
    }
    let mut client = Client::connect(&lww_a.addr()).unwrap();
    client
        .put(b"k", b"alone", Some(Consistency::All), None)
        .unwrap();
    assert_eq!(
        client.get(b"k", None).unwrap().values,
        vec![b"alone".to_vec()]
    );
    for host in [&b_addr, &lww_c.addr()] {
        let mut client = Client::connect(host).unwrap();
        let refused = client.put(b"k", b"alone", Some(Consistency::One), None);
        assert!(
            matches!(
                refused,
                Err(ringkv::client::ClientError::Server(
                    ringkv::protocol::types::ErrorReply::Unavailable { .. }
                ))
            ),
            "{host}: {refused:?}"
        );
    }
}

/// Sequential LWW writes through all three coordinators in turn (A's clock right, B's
/// 400 ms behind, C's 400 ms ahead; `max_clock_skew_ms` default 5000), each after the
/// previous was acknowledged at QUORUM, with the session timestamp shared between the
/// three clients: the last write wins on every node. Then the accepted anomaly on the
/// same cluster: concurrent writes through the three coordinators keep exactly one.
#[test]
fn lww_sequential_writes_through_skewed_coordinators_end_with_the_last() {
    let common = [
        "--gossip-interval-ms",
        "100",
        "--replication-factor",
        "3",
        "--cluster-secret",
        SECRET,
    ];
    let nodes = start_nodes(
        &common,
        &[
            &[],
            &["--clock-offset-ms", "-400"],
            &["--clock-offset-ms", "400"],
        ],
    );
    wait_all_up(&nodes);
    assert!(nodes[1].log_text().contains("clock_offset_ms is set"));

    let mut clients: Vec<Client> = nodes.iter().map(pinned_client).collect();
    let mut shared = 0u64;
    for i in 0..50usize {
        let client = &mut clients[i % 3];
        client.observe_timestamp(shared);
        let value = format!("v{i}");
        client
            .put(b"seq", value.as_bytes(), Some(Consistency::Quorum), None)
            .unwrap();
        // The ack carried the written version's timestamp, newer than anything before.
        assert!(
            client.session_timestamp() > shared,
            "round {i}: ack timestamp {} not after {shared}",
            client.session_timestamp()
        );
        shared = client.session_timestamp();
    }
    for node in &nodes {
        assert_eq!(
            values_at(node, b"seq", Consistency::All),
            one("v49"),
            "ALL via {}",
            node.addr()
        );
    }
    for node in &nodes {
        wait_until("every replica to hold the last write", DEADLINE, || {
            values_at(node, b"seq", Consistency::One) == one("v49")
        });
    }
    // A read teaches the session too: its context is the value's timestamp.
    let mut reader = pinned_client(&nodes[1]);
    assert_eq!(reader.session_timestamp(), 0);
    reader.get(b"seq", Some(Consistency::All)).unwrap();
    assert_eq!(reader.session_timestamp(), shared);

    // The anomaly LWW accepts: three clients write one key at the same moment through
    // the three coordinators, with no session timestamp or context. All three writes are
    // acknowledged, and exactly one value survives: two acknowledged writes are lost.
    // (Causal mode keeps all three; see the next test.)
    let written = concurrent_writes(&nodes, b"race");
    let survivors = values_at(&nodes[0], b"race", Consistency::All);
    assert_eq!(
        survivors.len(),
        1,
        "LWW keeps exactly one of {written:?}: {survivors:?}"
    );
    assert!(written.is_superset(&survivors));
    for node in &nodes {
        assert_eq!(values_at(node, b"race", Consistency::All), survivors);
    }
}

/// Three writes of `key`, one through each node's raw connection, released together;
/// returns the values written (all acknowledged).
fn concurrent_writes(nodes: &[Node], key: &'static [u8]) -> BTreeSet<Vec<u8>> {
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut conn = raw(node);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let value = format!("from-node-{i}").into_bytes();
                barrier.wait();
                let reply = conn
                    .call(Op::Put {
                        key: key.to_vec(),
                        value: value.clone(),
                        consistency: Some(Consistency::Quorum),
                        context: None,
                        sloppy_quorum: None,
                    })
                    .unwrap();
                assert_eq!(reply, Reply::Done, "write {i} acknowledged");
                value
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The same concurrent schedule in causal mode loses nothing: every write is a sibling.
#[test]
fn causal_mode_keeps_every_concurrent_write_as_a_sibling() {
    let common = [
        "--gossip-interval-ms",
        "100",
        "--replication-factor",
        "3",
        "--cluster-secret",
        SECRET,
        "--conflict-mode",
        "causal",
    ];
    let nodes = start_nodes(&common, &[&[], &[], &[]]);
    wait_all_up(&nodes);
    let written = concurrent_writes(&nodes, b"race");
    assert_eq!(written.len(), 3);
    for node in &nodes {
        assert_eq!(
            values_at(node, b"race", Consistency::All),
            written,
            "every acknowledged write is a sibling, via {}",
            node.addr()
        );
    }
}

/// Why the session timestamp is needed, shown deterministically. Three nodes, RF=2, and
/// a key whose replicas are A and C: B coordinates writes of it without ever storing it,
/// so B's clock never observes the key's versions. B's clock is 30 s behind
/// (`max_clock_skew_ms` 60 s, so nothing is refused as too far ahead).
///
/// Without a session timestamp, a write through A, acknowledged, then a write through B
/// (also acknowledged) leaves A's value: B stamped its write 30 s in the past, and the
/// later write is silently lost. With the session timestamp the client got from A's ack,
/// B observes it before stamping and the later write wins. (With RF = nodes, B would be
/// a replica and usually see A's write before the client's next one; the loss then
/// depends on timing, which is why the test uses a non-replica coordinator.)
#[test]
fn without_the_session_timestamp_a_behind_coordinator_loses_the_later_write() {
    let common = [
        "--gossip-interval-ms",
        "100",
        "--replication-factor",
        "2",
        "--cluster-secret",
        SECRET,
        "--max-clock-skew-ms",
        "60000",
    ];
    let nodes = start_nodes(&common, &[&[], &["--clock-offset-ms", "-30000"], &[]]);
    wait_all_up(&nodes);
    let topology = Client::connect(&nodes[0].addr())
        .unwrap()
        .topology()
        .unwrap()
        .clone();
    let id_of = |node: &Node| {
        topology
            .nodes
            .iter()
            .find(|n| n.address == node.addr())
            .unwrap()
            .node_id
    };
    let ring = Ring::new(
        topology
            .nodes
            .iter()
            .map(|n| (n.node_id, n.tokens.as_slice())),
    )
    .unwrap();
    let b = id_of(&nodes[1]);
    let key = (0..10_000)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| !ring.replicas(token_of(k), 2).contains(&b))
        .expect("a key that B does not replicate");

    // Without: A then B, each acknowledged; A's earlier value stays.
    for (node, value) in [(&nodes[0], "first"), (&nodes[1], "second")] {
        let reply = raw(node)
            .call(Op::Put {
                key: key.clone(),
                value: value.as_bytes().to_vec(),
                consistency: Some(Consistency::Quorum),
                context: None,
                sloppy_quorum: None,
            })
            .unwrap();
        assert_eq!(reply, Reply::Done);
    }
    for node in &nodes {
        assert_eq!(
            values_at(node, &key, Consistency::All),
            one("first"),
            "the acknowledged later write through B is lost (via {})",
            node.addr()
        );
    }

    // With: the session timestamp of A's ack travels to B's client.
    let mut via_a = pinned_client(&nodes[0]);
    let mut via_b = pinned_client(&nodes[1]);
    via_a
        .put(&key, b"third", Some(Consistency::Quorum), None)
        .unwrap();
    via_b.observe_timestamp(via_a.session_timestamp());
    via_b
        .put(&key, b"fourth", Some(Consistency::Quorum), None)
        .unwrap();
    assert!(via_b.session_timestamp() > via_a.session_timestamp());
    for node in &nodes {
        assert_eq!(
            values_at(node, &key, Consistency::All),
            one("fourth"),
            "via {}",
            node.addr()
        );
    }
}

/// Regression: a causal coordinator applies its own copy before answering, so the next
/// write of the key through it builds on this one. It used to answer at W acks while its
/// local write (one of the W only sometimes) was still syncing; the next context-less
/// write then read a copy without that dot, minted it again, and one sibling was lost.
#[test]
fn sequential_contextless_causal_writes_through_one_coordinator_all_survive() {
    let flags = [
        "--gossip-interval-ms",
        "100",
        "--replication-factor",
        "3",
        "--cluster-secret",
        "dots",
        "--conflict-mode",
        "causal",
    ];
    let cluster = Cluster::start(&[1, 1, 1], &flags);
    let addrs = cluster.addrs();
    wait_until(
        "every node to see 3 nodes up",
        Duration::from_secs(90),
        || every_node_sees(&addrs, &view_with_down(&addrs, &[])),
    );
    let topology = Client::connect(&addrs[0])
        .unwrap()
        .topology()
        .unwrap()
        .clone();
    let writes = 30;
    let mut lost = 0;
    for k in 0..10 {
        let key = format!("dot-{k}");
        let primary = replica_addrs(&topology, key.as_bytes())[0].clone();
        let mut conn =
            Connection::connect(primary.parse().unwrap(), Duration::from_secs(10)).unwrap();
        for i in 0..writes {
            let reply = conn
                .call(Op::Put {
                    key: key.clone().into_bytes(),
                    value: format!("v{i}").into_bytes(),
                    consistency: Some(Consistency::Quorum),
                    context: None,
                    sloppy_quorum: None,
                })
                .unwrap();
            assert_eq!(reply, Reply::Done);
        }
        let reply = conn
            .call(Op::Get {
                key: key.clone().into_bytes(),
                consistency: Some(Consistency::All),
            })
            .unwrap();
        let Reply::Value { values, .. } = reply else {
            panic!("{reply:?}")
        };
        lost += writes - values.len();
    }
    assert_eq!(lost, 0, "context-less causal writes lost as duplicate dots");
}

/// One bad clock cannot poison keys: a node whose clock runs a minute ahead coordinates
/// writes; its peers refuse the far-future versions (`max_clock_skew_ms`, default 5 s),
/// count them in `ringkv_hlc_rejected_total`, and keep their own copies clean.
#[test]
fn versions_from_a_clock_beyond_max_skew_are_refused_and_counted() {
    let metrics = format!("127.0.0.1:{}", free_port_block(1));
    let common = [
        "--gossip-interval-ms",
        "100",
        "--cluster-secret",
        SECRET,
        "--replication-factor",
        "2",
    ];
    let nodes = start_nodes(
        &common,
        &[
            &["--metrics-listen", &metrics],
            &["--clock-offset-ms", "60000"],
        ],
    );
    wait_all_up(&nodes);
    assert_eq!(metric_sum(&metrics, "ringkv_hlc_rejected_total"), 0.0);
    // Through the fast node, which coordinates: at ALL the honest node must accept the
    // version, and it refuses, so the write fails.
    let mut fast = Connection::connect(nodes[1].socket_addr(), DEADLINE).unwrap();
    let reply = fast
        .call(Op::Put {
            key: b"poison".to_vec(),
            value: b"from-the-future".to_vec(),
            consistency: Some(Consistency::All),
            context: None,
            sloppy_quorum: None,
        })
        .unwrap();
    assert!(
        matches!(reply, Reply::Error(_)),
        "a far-future version was accepted everywhere: {reply:?}"
    );
    assert!(metric_sum(&metrics, "ringkv_hlc_rejected_total") >= 1.0);
    // The honest node's own copy never took it.
    let own = replica_states(&nodes[0], SECRET, &[b"poison"]).unwrap();
    assert_eq!(
        own,
        vec![None],
        "the honest node stored the far-future version"
    );
}

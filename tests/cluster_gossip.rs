//! Real multi-process clusters: nodes find each other through seeds and gossip over
//! authenticated peer connections; every node's `ringkv status` lists every node, up or
//! down; nodes of another cluster (wrong secret or name) are refused and never listed;
//! peer ops without the handshake are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{metric_sum, status_view, wait_until, Cluster, Node};
use ringkv::auth::{self, AuthMessage, ClusterName, ClusterSecret, Effect, Handshake, Initiator};
use ringkv::client::blocking::Connection;
use ringkv::cluster::membership::{Digest, GossipMessage, Syn};
use ringkv::protocol::types::{ErrorReply, Op, Reply};
use std::time::Duration;

/// Generous: phi conviction takes ~18 gossip intervals, and 8 builders share 2 cores.
const DEADLINE: Duration = Duration::from_secs(90);
const GOSSIP: [&str; 2] = ["--gossip-interval-ms", "100"];

/// Every node in `hosts` lists exactly `expected` (address → up) in `ringkv status`.
fn all_see(hosts: &[String], expected: &[(String, bool)]) -> bool {
    let expected: std::collections::BTreeMap<String, bool> = expected.iter().cloned().collect();
    hosts
        .iter()
        .all(|h| status_view(h).is_some_and(|view| view == expected))
}

#[test]
fn three_nodes_find_each_other_and_detect_a_killed_node() {
    // Node 0 has two shards: gossip arrives on its shard 0 port, and a status asked on
    // shard 1 must come from the snapshot shard 0 published.
    let mut cluster = Cluster::start(&[2, 1, 1], &GOSSIP);
    let addrs = cluster.addrs();
    let all_up: Vec<(String, bool)> = addrs.iter().map(|a| (a.clone(), true)).collect();
    wait_until("every node's status to list 3 nodes up", DEADLINE, || {
        all_see(&addrs, &all_up)
    });
    // Ask node 0 on each of its shard ports too (a shard-aware client may land there).
    for s in 1..=2u16 {
        let host = format!("127.0.0.1:{}", cluster.nodes[0].port + s);
        assert_eq!(
            status_view(&host).unwrap().len(),
            3,
            "shard port {host} lists every node"
        );
    }

    cluster.nodes[2].kill();
    let survivors = addrs[..2].to_vec();
    let one_down = vec![
        (addrs[0].clone(), true),
        (addrs[1].clone(), true),
        (addrs[2].clone(), false),
    ];
    wait_until(
        "the survivors to show the killed node down",
        DEADLINE,
        || all_see(&survivors, &one_down),
    );

    cluster.nodes[2].restart();
    wait_until("the restarted node to be up everywhere", DEADLINE, || {
        all_see(&addrs, &all_up)
    });
    // Same identity after the restart: still three nodes, not four.
    let topology = ringkv::client::blocking::Client::connect(&addrs[0])
        .unwrap()
        .topology()
        .unwrap()
        .clone();
    assert_eq!(topology.nodes.len(), 3);
    assert!(topology.nodes.iter().all(|n| n.tokens.len() == 16));
}

#[test]
fn nodes_of_another_cluster_are_refused_and_never_listed() {
    let secret = ["--cluster-secret", "s3cret", "--gossip-interval-ms", "100"];
    let cluster = Cluster::start(&[1, 1], &secret);
    let addrs = cluster.addrs();
    let both_up: Vec<(String, bool)> = addrs.iter().map(|a| (a.clone(), true)).collect();
    wait_until("the two good nodes to see each other", DEADLINE, || {
        all_see(&addrs, &both_up)
    });

    let wrong_secret = cluster.start_extra(
        1,
        &["--cluster-secret", "wrong", "--gossip-interval-ms", "100"],
    );
    let wrong_name = cluster.start_extra(
        1,
        &[
            "--cluster-secret",
            "s3cret",
            "--cluster-name",
            "other",
            "--gossip-interval-ms",
            "100",
        ],
    );
    wait_until("the wrong-secret node to log the refusal", DEADLINE, || {
        wrong_secret
            .log_text()
            .contains("peer's proof of the cluster secret is wrong")
    });
    wait_until("the wrong-name node to log the refusal", DEADLINE, || {
        wrong_name
            .log_text()
            .contains("peer refused us: cluster_name")
    });
    wait_until("the seed to log both refusals", DEADLINE, || {
        let log = cluster.nodes[0].log_text();
        log.contains("peer handshake refused: peer refused us: unauthenticated")
            && log.contains("peer handshake refused: peer is in cluster \"other\"")
    });
    // The secret itself is never logged, by either side.
    for node in cluster.nodes.iter().chain([&wrong_secret, &wrong_name]) {
        let log = node.log_text();
        assert!(!log.contains("s3cret") && !log.contains("wrong\""), "{log}");
    }
    // Several refused rounds later, the good nodes still list only each other, and the
    // outsiders only themselves.
    assert!(all_see(&addrs, &both_up));
    for outsider in [&wrong_secret, &wrong_name] {
        let view = status_view(&outsider.addr()).unwrap();
        assert_eq!(
            view.keys().cloned().collect::<Vec<_>>(),
            vec![outsider.addr()]
        );
    }
}

#[test]
fn peer_ops_without_a_handshake_are_refused() {
    let metrics_port = common::free_port_block(1);
    let metrics = format!("127.0.0.1:{metrics_port}");
    let node = Node::start(
        1,
        &["--metrics-listen", &metrics, "--request-timeout-ms", "500"],
    );
    let shard0: std::net::SocketAddr = format!("127.0.0.1:{}", node.port + 1).parse().unwrap();
    let refused_before = metric_sum(&metrics, "ringkv_refused_peer_ops_total");

    // A raw client sends a Syn claiming to be some node: refused, nothing learned.
    let syn = GossipMessage::Syn(Syn {
        from: 0xbad,
        from_address: "127.0.0.1:1".into(),
        digests: vec![Digest {
            id: 0xbad,
            generation: 1,
            version: 1,
        }],
    });
    for addr in [node.socket_addr(), shard0] {
        let mut conn = Connection::connect(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(
            conn.call(Op::Gossip(syn.clone())).unwrap(),
            Reply::Error(ErrorReply::Unauthorized)
        );
    }
    assert_eq!(
        metric_sum(&metrics, "ringkv_refused_peer_ops_total"),
        refused_before + 2.0
    );
    assert_eq!(
        status_view(&node.addr()).unwrap().len(),
        1,
        "membership unchanged"
    );

    // A handshake under way lets nothing else through; with the wrong secret it fails,
    // is counted, and the connection is closed.
    let failures_before = metric_sum(&metrics, "ringkv_peer_auth_failures_total");
    let mut conn = Connection::connect(shard0, Duration::from_secs(5)).unwrap();
    let (mut initiator, effects) = Initiator::new(
        ClusterName::new("ringkv").unwrap(),
        ClusterSecret::new(b"not the secret").unwrap(),
        0xbad,
        auth::fresh_nonce().unwrap(),
    );
    let Effect::Send(hello) = &effects[0] else {
        panic!("initiator starts with a Hello")
    };
    let challenge = match conn
        .call(Op::PeerHandshake {
            message: hello.encode(),
        })
        .unwrap()
    {
        Reply::PeerHandshake { message } => message,
        other => panic!("expected a challenge, got {other:?}"),
    };
    assert!(matches!(
        AuthMessage::decode(&challenge).unwrap(),
        AuthMessage::Challenge { .. }
    ));
    assert_eq!(
        conn.call(Op::Gossip(syn.clone())).unwrap(),
        Reply::Error(ErrorReply::Unauthorized),
        "no peer op before the handshake completes"
    );
    assert_eq!(
        conn.call(Op::Ping).unwrap(),
        Reply::Error(ErrorReply::Unauthorized),
        "no client op either"
    );
    // Our machine rejects the acceptor's proof (other secret) and refuses.
    let effects = initiator.on_bytes(&challenge);
    assert!(initiator.is_refused(), "{effects:?}");
    // Answer with a forged response instead: the acceptor must refuse and close.
    let forged = AuthMessage::Response {
        proof: auth::Proof::from_bytes([7; 32]),
    };
    match conn.call(Op::PeerHandshake {
        message: forged.encode(),
    }) {
        Ok(Reply::PeerHandshake { message }) => assert!(matches!(
            AuthMessage::decode(&message).unwrap(),
            AuthMessage::Refuse { .. }
        )),
        other => panic!("expected a Refuse, got {other:?}"),
    }
    assert!(
        conn.call(Op::Ping).is_err(),
        "the connection is closed after a failed handshake"
    );
    assert_eq!(
        metric_sum(&metrics, "ringkv_peer_auth_failures_total"),
        failures_before + 1.0
    );
    // The log arrives through a reader thread: wait for the line rather than race it.
    wait_until("the refusal to be logged", DEADLINE, || {
        node.log_text().contains("peer handshake refused")
    });

    // A handshake that stalls after its Hello is cut off at the deadline and counted.
    let mut stalled = Connection::connect(shard0, Duration::from_secs(5)).unwrap();
    let (_initiator, effects) = Initiator::new(
        ClusterName::new("ringkv").unwrap(),
        ClusterSecret::new(b"whatever").unwrap(),
        0xbad,
        auth::fresh_nonce().unwrap(),
    );
    let Effect::Send(hello) = &effects[0] else {
        panic!("initiator starts with a Hello")
    };
    assert!(matches!(
        stalled.call(Op::PeerHandshake {
            message: hello.encode()
        }),
        Ok(Reply::PeerHandshake { .. })
    ));
    assert!(
        stalled.receive().is_err(),
        "the server closes a stalled handshake"
    );
    wait_until("the stalled handshake to be counted", DEADLINE, || {
        metric_sum(&metrics, "ringkv_peer_auth_failures_total") == failures_before + 2.0
    });
    wait_until("the stalled handshake to be logged", DEADLINE, || {
        node.log_text()
            .contains("timed out or closed before it completed")
    });
    assert_eq!(status_view(&node.addr()).unwrap().len(), 1);
}

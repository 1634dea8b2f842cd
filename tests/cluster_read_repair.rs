//! A replica that was down while the others took writes converges through read repair
//! alone (three real nodes, RF=3, no hinted handoff yet): C holds version 1 of 200 keys,
//! is SIGKILLed, and misses 350 QUORUM writes (new keys, overwrites, deletes, keys both
//! written and deleted); after the restart its copies are still stale; one QUORUM read
//! of every key (coordinated round-robin by A, B and C) then brings every replica to the
//! newest version, tombstones included.
//!
//! `ringkv repair` (full anti-entropy repair) brings two stale replicas up to date
//! without any read: C misses writes while it is down, then A misses others; one
//! repair of C pulls what C missed and pushes what A missed. With a replica down, a
//! repair is refused.
//!
//! Each replica's copy is read through the replica-local path (`ReplicaRead` on an
//! authenticated peer connection to the owning shard). A client `Get` at ONE is not
//! that: the coordinator asks every replica it believes up and answers with the first
//! reply, which may come from another node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    cli, every_node_sees, lww_value, replica_states, view_with_down, wait_until, Cluster, Node,
};
use ringkv::client::blocking::Connection;
use ringkv::protocol::types::{Consistency, Op, Reply};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

/// Generous: phi conviction takes ~18 gossip intervals, and several builders share 2
/// cores.
const DEADLINE: Duration = Duration::from_secs(120);
const SECRET: &str = "repair-secret";
/// A long coordinator timeout: read repair of a reply that arrives after the deadline
/// is dropped by design, and a loaded debug build must not turn that into a flaky test.
/// `--max-hint-window 0`: no hints for a node marked down, so the restarted node is
/// brought up to date by read repair alone (hinted handoff has its own tests).
const FLAGS: [&str; 10] = [
    "--gossip-interval-ms",
    "100",
    "--replication-factor",
    "3",
    "--cluster-secret",
    SECRET,
    "--request-timeout-ms",
    "20000",
    "--max-hint-window",
    "0",
];
/// Requests in flight per pipelined batch.
const BATCH: usize = 50;

fn connect(addr: &str) -> Connection {
    Connection::connect(addr.parse().unwrap(), Duration::from_secs(30)).unwrap()
}

fn key(i: usize) -> String {
    format!("rr-{i:04}")
}

/// Send `ops` through `addr` in pipelined batches; every reply must be `Done`.
fn write_all(addr: &str, ops: Vec<Op>) {
    let mut conn = connect(addr);
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let batch: Vec<Op> = ops.by_ref().take(BATCH).collect();
        for reply in conn.pipeline(batch).unwrap() {
            assert_eq!(reply, Reply::Done, "write through {addr}");
        }
    }
}

fn put_op(i: usize, value: &str, consistency: Consistency) -> Op {
    Op::Put {
        key: key(i).into_bytes(),
        value: value.as_bytes().to_vec(),
        consistency: Some(consistency),
        context: None,
        sloppy_quorum: None,
    }
}

fn delete_op(i: usize) -> Op {
    Op::Delete {
        key: key(i).into_bytes(),
        consistency: Some(Consistency::Quorum),
        context: None,
        sloppy_quorum: None,
    }
}

/// The model of the tests: key index → newest value (None: deleted).
type Model = BTreeMap<usize, Option<String>>;

/// Put `value` under every key of `keys` through `addr`, and record it in `model`.
fn put_range(addr: &str, keys: Range<usize>, value: &str, c: Consistency, model: &mut Model) {
    write_all(addr, keys.clone().map(|i| put_op(i, value, c)).collect());
    model.extend(keys.map(|i| (i, Some(value.to_string()))));
}

/// Delete every key of `keys` at QUORUM through `addr`, and record it in `model`.
fn delete_range(addr: &str, keys: Range<usize>, model: &mut Model) {
    write_all(addr, keys.clone().map(delete_op).collect());
    model.extend(keys.map(|i| (i, None)));
}

/// Every node's own copy of every key: (node, key index) → state.
fn copies(nodes: &[Node], keys: &[&[u8]]) -> Option<Vec<Vec<Option<ringkv::conflict::KeyState>>>> {
    nodes
        .iter()
        .map(|node| replica_states(node, SECRET, keys))
        .collect()
}

/// Three nodes (RF=3, no hints), once every node sees all three up; and their addresses.
fn three_nodes_up() -> (Cluster, Vec<String>) {
    let cluster = Cluster::start(&[1, 1, 1], &FLAGS);
    let addrs = cluster.addrs();
    let all_up = view_with_down(&addrs, &[]);
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        every_node_sees(&addrs, &all_up)
    });
    (cluster, addrs)
}

#[test]
fn a_stale_replica_converges_through_read_repair_alone() {
    let (mut cluster, addrs) = three_nodes_up();
    let all_up = view_with_down(&addrs, &[]);
    let (a, b, c) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());
    // The model: key index → newest value (None: deleted).
    let mut model = Model::new();

    // Version 1 of keys 0..200 at ALL: C holds every one of them when it is killed.
    put_range(&a, 0..200, "v1", Consistency::All, &mut model);

    cluster.nodes[2].kill();
    let c_down = view_with_down(&addrs, &[&c]);
    wait_until("A and B to mark C down", DEADLINE, || {
        every_node_sees(&[a.clone(), b.clone()], &c_down)
    });

    // While C is down, at QUORUM (A and B both ack each write), through A and B:
    // 200 new keys, 100 overwrites and 50 deletes of old keys, 50 new keys deleted and
    // 50 new keys overwritten. Each phase completes before the next touches its keys.
    put_range(&a, 200..400, "n1", Consistency::Quorum, &mut model);
    put_range(&b, 0..100, "v2", Consistency::Quorum, &mut model);
    delete_range(&a, 100..150, &mut model);
    delete_range(&b, 200..250, &mut model);
    put_range(&a, 250..300, "n2", Consistency::Quorum, &mut model);
    let touched_while_down = |i: usize| !(150..200).contains(&i);

    cluster.nodes[2].restart();
    wait_until("C to be up everywhere", DEADLINE, || {
        every_node_sees(&addrs, &all_up)
    });

    let names: Vec<String> = (0..400).map(key).collect();
    let keys: Vec<&[u8]> = names.iter().map(|k| k.as_bytes()).collect();
    let expected: Vec<Option<Option<Vec<u8>>>> = model
        .values()
        .map(|v| Some(v.as_ref().map(|v| v.as_bytes().to_vec())))
        .collect();

    // Before any read: A and B hold the newest version of every key; C is stale exactly
    // on the keys written while it was down (nothing else repairs it: no hints yet).
    let before = copies(&cluster.nodes, &keys).unwrap();
    for (i, want) in expected.iter().enumerate() {
        let (on_a, on_b, on_c) = (&before[0][i], &before[1][i], &before[2][i]);
        assert_eq!(&lww_value(on_a), want, "A's copy of {}", names[i]);
        assert_eq!(on_a, on_b, "A and B agree on {}", names[i]);
        if touched_while_down(i) {
            assert_ne!(on_c, on_a, "C missed the writes to {}", names[i]);
        } else {
            assert_eq!(on_c, on_a, "C kept {}", names[i]);
        }
    }

    // One QUORUM read of every key, coordinated round-robin by A, B and C.
    for (n, addr) in addrs.iter().enumerate() {
        let mut conn = connect(addr);
        let mine: Vec<usize> = (0..400).filter(|i| i % 3 == n).collect();
        for chunk in mine.chunks(BATCH) {
            let ops = chunk
                .iter()
                .map(|&i| Op::Get {
                    key: keys[i].to_vec(),
                    consistency: Some(Consistency::Quorum),
                })
                .collect();
            for (&i, reply) in chunk.iter().zip(conn.pipeline(ops).unwrap()) {
                let want: Vec<Vec<u8>> = model[&i].iter().map(|v| v.as_bytes().to_vec()).collect();
                // (The context of an LWW read is the session timestamp: not compared.)
                let Reply::Value { values, .. } = reply else {
                    panic!("QUORUM read of {} via {addr}: {reply:?}", names[i])
                };
                assert_eq!(values, want, "QUORUM read of {} via {addr}", names[i]);
            }
        }
    }

    // Repairs are written after the answers: wait until every replica holds the same,
    // newest state of every key (the same version, tombstones included).
    let mut last = None;
    let converged = std::time::Instant::now() + DEADLINE;
    loop {
        let now = copies(&cluster.nodes, &keys);
        if let Some(now) = &now {
            let mut stale = Vec::new();
            for (i, want) in expected.iter().enumerate() {
                for (n, name) in ["A", "B", "C"].iter().enumerate() {
                    if &lww_value(&now[n][i]) != want || now[n][i] != now[0][i] {
                        stale.push(format!("{} on {name}", names[i]));
                    }
                }
            }
            if stale.is_empty() {
                break;
            }
            last = Some(stale);
        }
        assert!(
            std::time::Instant::now() < converged,
            "replicas did not converge within {DEADLINE:?}; stale copies: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // And a read at ONE through every node now answers the newest version.
    for addr in &addrs {
        let mut conn = connect(addr);
        let ops = (0..400)
            .map(|i| Op::Get {
                key: keys[i].to_vec(),
                consistency: Some(Consistency::One),
            })
            .collect::<Vec<_>>();
        for (chunk_start, chunk) in ops.chunks(BATCH).enumerate() {
            let replies = conn.pipeline(chunk.to_vec()).unwrap();
            for (j, reply) in replies.into_iter().enumerate() {
                let i = chunk_start * BATCH + j;
                let want: Vec<Vec<u8>> = model[&i].iter().map(|v| v.as_bytes().to_vec()).collect();
                let Reply::Value { values, .. } = reply else {
                    panic!("ONE read of {} via {addr}: {reply:?}", names[i])
                };
                assert_eq!(values, want, "ONE read of {} via {addr}", names[i]);
            }
        }
    }
}

/// Kill node `n`, wait until the others mark it down, run `writes`, restart it and wait
/// until every node sees every node up again.
fn while_down(cluster: &mut Cluster, n: usize, writes: impl FnOnce()) {
    let addrs = cluster.addrs();
    cluster.nodes[n].kill();
    let others: Vec<String> = addrs.iter().filter(|a| **a != addrs[n]).cloned().collect();
    let down = view_with_down(&addrs, &[&addrs[n]]);
    wait_until("the others to mark the node down", DEADLINE, || {
        every_node_sees(&others, &down)
    });
    writes();
    cluster.nodes[n].restart();
    let all_up = view_with_down(&addrs, &[]);
    wait_until("every node to see every node up", DEADLINE, || {
        every_node_sees(&addrs, &all_up)
    });
}

#[test]
fn repair_converges_stale_replicas_without_reads_and_is_refused_with_a_replica_down() {
    let (mut cluster, addrs) = three_nodes_up();
    let (a, b, c) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());
    let mut model = Model::new();

    // Keys 0..150 on every replica.
    put_range(&a, 0..150, "v1", Consistency::All, &mut model);

    // C misses overwrites of 0..50, deletes of 50..75 and new keys 150..200.
    while_down(&mut cluster, 2, || {
        put_range(&a, 0..50, "c-missed", Consistency::Quorum, &mut model);
        delete_range(&b, 50..75, &mut model);
        put_range(&a, 150..200, "n1", Consistency::Quorum, &mut model);
    });
    // A misses overwrites of 75..100 and new keys 200..230 (written through B and C).
    while_down(&mut cluster, 0, || {
        put_range(&b, 75..100, "a-missed", Consistency::Quorum, &mut model);
        put_range(&c, 200..230, "n2", Consistency::Quorum, &mut model);
    });

    let names: Vec<String> = (0..230).map(key).collect();
    let keys: Vec<&[u8]> = names.iter().map(|k| k.as_bytes()).collect();
    let expected: Vec<Option<Option<Vec<u8>>>> = model
        .values()
        .map(|v| Some(v.as_ref().map(|v| v.as_bytes().to_vec())))
        .collect();
    let missed_by_c = |i: usize| i < 75 || (150..200).contains(&i);
    let missed_by_a = |i: usize| (75..100).contains(&i) || (200..230).contains(&i);

    // Before: B is current; C and A are stale exactly on what each missed.
    let before = copies(&cluster.nodes, &keys).unwrap();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&lww_value(&before[1][i]), want, "B's copy of {}", names[i]);
        assert_eq!(
            missed_by_a(i),
            before[0][i] != before[1][i],
            "A's copy of {}",
            names[i]
        );
        assert_eq!(
            missed_by_c(i),
            before[2][i] != before[1][i],
            "C's copy of {}",
            names[i]
        );
    }

    // One repair of C, and no read at all: every replica holds the newest state.
    let (code, out, err) = cli(&["repair", "--host", &c, "--timeout-secs", "120"]);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "repair failed: {err}");
    assert!(
        out.contains("repaired") && out.contains("pulled"),
        "repair output: {out}"
    );
    let after = copies(&cluster.nodes, &keys).unwrap();
    for (i, want) in expected.iter().enumerate() {
        for (n, name) in ["A", "B", "C"].iter().enumerate() {
            assert_eq!(
                &lww_value(&after[n][i]),
                want,
                "{name}'s copy of {}",
                names[i]
            );
            assert_eq!(
                after[n][i], after[1][i],
                "{name} and B agree on {}",
                names[i]
            );
        }
    }

    // With B down, a repair of A is refused (exit 2) and names the missing replica.
    cluster.nodes[1].kill();
    let b_down = view_with_down(&addrs, &[&b]);
    wait_until("A to mark B down", DEADLINE, || {
        every_node_sees(std::slice::from_ref(&a), &b_down)
    });
    let (code, _, err) = cli(&["repair", "--host", &a]);
    assert_eq!(code, 2, "a repair with a replica down is refused: {err}");
    assert!(
        err.contains("a replica is down") && err.contains(&b),
        "refusal: {err}"
    );
}

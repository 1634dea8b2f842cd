//! A five-node cluster of real processes (RF=3, seeds on the command line): every node's
//! `ringkv status` lists all five up; QUORUM writes through one node are read at QUORUM
//! through each of the others; with one node SIGKILLed and marked down by every
//! survivor, QUORUM reads and writes keep succeeding through every survivor while ALL on
//! a key the dead node replicates is refused as `Unavailable` (exit code 3 from the CLI)
//! and ALL on a key it does not replicate still succeeds; after the restart it is up
//! everywhere again, and a QUORUM read of each key written while it was down repairs its
//! own copy (read back through the replica-local `ReplicaRead` path and at ONE).
//!
//! "Through node X" means a request on X's client port (`Connection`), so X coordinates
//! it. The CLI's `--host` only picks where to learn the topology: it then sends each key
//! to its first up replica, so it is used here for what users see (exit codes, stderr).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    cli, every_node_sees, lww_value, replica_addrs, replica_states, view_with_down, wait_until,
    Cluster,
};
use ringkv::client::blocking::{Client, Connection};
use ringkv::protocol::types::{Consistency, ErrorReply, Op, Reply};
use std::time::Duration;

/// Generous: phi conviction takes ~18 gossip intervals, and several builders share 2
/// cores.
const DEADLINE: Duration = Duration::from_secs(120);
const SECRET: &str = "five-secret";
/// `--max-hint-window 0`: no hints for a node marked down, so the restarted node is
/// brought up to date by read repair alone (hinted handoff has its own tests).
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
/// The node that is killed and restarted.
const VICTIM: usize = 3;

fn connect(addr: &str) -> Connection {
    Connection::connect(addr.parse().unwrap(), Duration::from_secs(10)).unwrap()
}

fn put(conn: &mut Connection, key: &str, value: &str, consistency: Consistency) -> Reply {
    conn.call(Op::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        consistency: Some(consistency),
        context: None,
        sloppy_quorum: None,
    })
    .unwrap()
}

/// A get's reply without its context (LWW reads carry the session timestamp there).
fn get(conn: &mut Connection, key: &str, consistency: Consistency) -> Reply {
    let reply = conn
        .call(Op::Get {
            key: key.as_bytes().to_vec(),
            consistency: Some(consistency),
        })
        .unwrap();
    match reply {
        Reply::Value { values, .. } => Reply::Value {
            values,
            context: None,
        },
        other => other,
    }
}

fn value(v: &str) -> Reply {
    Reply::Value {
        values: vec![v.as_bytes().to_vec()],
        context: None,
    }
}

#[test]
fn five_nodes_replicate_survive_a_killed_node_and_repair_it() {
    let mut cluster = Cluster::start(&[1, 1, 1, 1, 1], &FLAGS);
    let addrs = cluster.addrs();
    let all_up = view_with_down(&addrs, &[]);
    wait_until("every node's status to list 5 nodes up", DEADLINE, || {
        every_node_sees(&addrs, &all_up)
    });
    let (code, out, err) = cli(&["ring", "--host", &addrs[0]]);
    assert_eq!(code, 0, "{err}");
    let ring_text = String::from_utf8(out).unwrap();
    assert!(
        ring_text.starts_with("80 ranges, 5 nodes, replication factor 3 (N = 3)"),
        "{ring_text}"
    );

    // Keys the victim replicates and keys it does not, placed by the library's ring
    // (the one the nodes and `ringkv ring` use) over node 0's topology.
    let topology = Client::connect(&addrs[0])
        .unwrap()
        .topology()
        .unwrap()
        .clone();
    let victim_addr = addrs[VICTIM].clone();
    let (mut on_victim, mut off_victim) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        let key = format!("five-{i}");
        let replicas = replica_addrs(&topology, key.as_bytes());
        assert_eq!(replicas.len(), 3, "RF=3 on 5 nodes: {replicas:?}");
        if replicas.contains(&victim_addr) {
            on_victim.push(key);
        } else {
            off_victim.push(key);
        }
        if on_victim.len() >= 6 && off_victim.len() >= 3 {
            break;
        }
    }
    assert!(on_victim.len() >= 6 && off_victim.len() >= 3);

    // 1. QUORUM writes through node 0, read at QUORUM through every other node.
    let mut via0 = connect(&addrs[0]);
    for key in on_victim.iter().chain(&off_victim) {
        assert_eq!(put(&mut via0, key, "v1", Consistency::Quorum), Reply::Done);
    }
    for addr in &addrs[1..] {
        let mut conn = connect(addr);
        for key in on_victim.iter().chain(&off_victim) {
            assert_eq!(
                get(&mut conn, key, Consistency::Quorum),
                value("v1"),
                "{key} through {addr}"
            );
        }
    }

    // The third replica's ack may trail the QUORUM answer: wait until the victim holds
    // "v1" of its keys, so that what it misses below is exactly the writes while down.
    let on_victim_keys: Vec<&[u8]> = on_victim.iter().map(|k| k.as_bytes()).collect();
    wait_until("the victim to hold v1 of its keys", DEADLINE, || {
        replica_states(&cluster.nodes[VICTIM], SECRET, &on_victim_keys).is_some_and(|states| {
            states
                .iter()
                .all(|s| lww_value(s) == Some(Some(b"v1".to_vec())))
        })
    });

    // 2. SIGKILL the victim; every survivor marks it down.
    cluster.nodes[VICTIM].kill();
    let survivors: Vec<String> = addrs
        .iter()
        .filter(|a| **a != victim_addr)
        .cloned()
        .collect();
    let victim_down = view_with_down(&addrs, &[&victim_addr]);
    wait_until("every survivor to show the victim down", DEADLINE, || {
        every_node_sees(&survivors, &victim_down)
    });

    // QUORUM writes and reads of keys the victim replicates keep succeeding through
    // every survivor: each survivor writes one key, the next survivor reads it.
    let written_while_down: Vec<(String, String)> = on_victim[..survivors.len()]
        .iter()
        .enumerate()
        .map(|(i, key)| (key.clone(), format!("down-{i}")))
        .collect();
    for (i, (key, v)) in written_while_down.iter().enumerate() {
        let writer = &survivors[i];
        let reader = &survivors[(i + 1) % survivors.len()];
        assert_eq!(
            put(&mut connect(writer), key, v, Consistency::Quorum),
            Reply::Done,
            "QUORUM write of {key} through {writer}"
        );
        assert_eq!(
            get(&mut connect(reader), key, Consistency::Quorum),
            value(v),
            "QUORUM read of {key} through {reader}"
        );
    }

    // ALL on a key the victim replicates: Unavailable at once (2 of 3 alive), not a
    // Timeout, through every survivor, for reads and writes.
    let on_key = &on_victim[0];
    let unavailable = Reply::Error(ErrorReply::Unavailable {
        required: 3,
        alive: 2,
    });
    for addr in &survivors {
        let mut conn = connect(addr);
        assert_eq!(
            get(&mut conn, on_key, Consistency::All),
            unavailable,
            "ALL read via {addr}"
        );
        assert_eq!(
            put(&mut conn, on_key, "never", Consistency::All),
            unavailable,
            "ALL write via {addr}"
        );
    }
    // The CLI: exit code 3 with the reason on stderr.
    for args in [
        vec!["get", on_key.as_str(), "--consistency", "all"],
        vec!["put", on_key.as_str(), "never", "--consistency", "all"],
    ] {
        let mut args = args.clone();
        args.extend(["--host", &survivors[0]]);
        let (code, out, err) = cli(&args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}");
        assert!(err.contains("unavailable"), "{args:?}: {err}");
    }
    // ALL on a key whose three replicas all survive still succeeds.
    let off_key = &off_victim[0];
    let mut conn = connect(&survivors[0]);
    assert_eq!(
        put(&mut conn, off_key, "all-ok", Consistency::All),
        Reply::Done
    );
    assert_eq!(get(&mut conn, off_key, Consistency::All), value("all-ok"));

    // 3. Restart the victim: up again in every node's status (its own included).
    cluster.nodes[VICTIM].restart();
    wait_until("the restarted node to be up everywhere", DEADLINE, || {
        every_node_sees(&addrs, &all_up)
    });
    let keys: Vec<&[u8]> = written_while_down
        .iter()
        .map(|(k, _)| k.as_bytes())
        .collect();
    let victim = &cluster.nodes[VICTIM];
    let before = replica_states(victim, SECRET, &keys).unwrap();
    for ((key, _), state) in written_while_down.iter().zip(&before) {
        // The victim held "v1" from before the kill, and nothing has repaired it since
        // (no hints yet, and nobody has read the key since it came back).
        assert_eq!(
            lww_value(state),
            Some(Some(b"v1".to_vec())),
            "{key}: stale copy on the restarted node"
        );
    }
    // A QUORUM read through a survivor repairs the victim's copy (maybe after the
    // answer: repair of late replies runs until every replica answered).
    for (i, (key, v)) in written_while_down.iter().enumerate() {
        let via = &survivors[i % survivors.len()];
        assert_eq!(
            get(&mut connect(via), key, Consistency::Quorum),
            value(v),
            "{key} via {via}"
        );
    }
    let expected: Vec<Option<Option<Vec<u8>>>> = written_while_down
        .iter()
        .map(|(_, v)| Some(Some(v.as_bytes().to_vec())))
        .collect();
    wait_until(
        "the QUORUM reads to repair the victim's copies",
        DEADLINE,
        || {
            replica_states(victim, SECRET, &keys)
                .is_some_and(|states| states.iter().map(lww_value).collect::<Vec<_>>() == expected)
        },
    );
    // Read at ONE through the victim: it now answers the new values too.
    let mut via_victim = connect(&victim_addr);
    for (key, v) in &written_while_down {
        assert_eq!(
            get(&mut via_victim, key, Consistency::One),
            value(v),
            "{key}"
        );
    }
}

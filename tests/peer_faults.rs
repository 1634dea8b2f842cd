//! Network faults on real processes through the test-only `fault_rules_file` hooks
//! (RF=3, three nodes): cut rules isolate node C both ways, so A and B mark it down, a
//! QUORUM write through A succeeds and an ALL write is refused as unavailable; cleared
//! rules bring C back everywhere and ALL works again; a `drop 100` rule for C on A makes
//! an ALL write through A end in a Timeout rather than hang. Faulted calls are counted
//! in `ringkv_peer_faults_total{kind=...}`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, free_port_block, metrics_text, status_view, wait_until, Node};
use ringkv::client::blocking::Connection;
use ringkv::protocol::types::{Consistency, ErrorReply, Op, Reply};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous: phi conviction takes ~18 gossip intervals, and builders share 2 cores.
const DEADLINE: Duration = Duration::from_secs(90);

fn view_is(host: &str, expected: &[(&str, bool)]) -> bool {
    let expected: BTreeMap<String, bool> = expected
        .iter()
        .map(|(a, up)| (a.to_string(), *up))
        .collect();
    status_view(host).is_some_and(|view| view == expected)
}

fn put(host: &str, key: &str, consistency: &str) -> (i32, String) {
    let (code, _, err) = cli(&[
        "put",
        key,
        "v",
        "--host",
        host,
        "--consistency",
        consistency,
    ]);
    (code, err)
}

/// A Put at ALL coordinated by `node` (a plain connection to its client port; the CLI
/// would route the key to its first replica instead), answered as is.
fn put_all(node: &Node, key: &str) -> Reply {
    let mut conn = Connection::connect(node.socket_addr(), Duration::from_secs(10)).unwrap();
    conn.call(Op::Put {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        consistency: Some(Consistency::All),
        context: None,
        sloppy_quorum: None,
    })
    .unwrap()
}

/// `ringkv_peer_faults_total` of one kind, summed over shards.
fn faults(metrics_addr: &str, kind: &str) -> f64 {
    metrics_text(metrics_addr)
        .lines()
        .filter(|l| l.starts_with("ringkv_peer_faults_total{"))
        .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn write_rules(path: &Path, text: &str) {
    // Written whole then renamed, so a shard never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(rules: &Path, metrics: Option<&str>, seed: Option<&str>) -> Node {
    let mut args: Vec<String> = [
        "--gossip-interval-ms",
        "100",
        "--replication-factor",
        "3",
        "--cluster-secret",
        "faults-secret",
        "--fault-rules-file",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(rules.display().to_string());
    if let Some(metrics) = metrics {
        args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
    }
    if let Some(seed) = seed {
        args.extend(["--seeds".to_string(), seed.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(1, &args)
}

#[test]
fn cut_partitions_a_node_and_drop_makes_all_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.rules")))
        .collect();
    // Node A's file starts with comments only; B's and C's are missing: no rules.
    write_rules(&files[0], "# no faults yet\n");
    let metrics = format!("127.0.0.1:{}", free_port_block(1));
    let a = start(&files[0], Some(&metrics), None);
    let b = start(&files[1], None, Some(&a.addr()));
    let c = start(&files[2], None, Some(&a.addr()));
    let (aa, ba, ca) = (a.addr(), b.addr(), c.addr());
    let all_up = [
        (aa.as_str(), true),
        (ba.as_str(), true),
        (ca.as_str(), true),
    ];
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        [&aa, &ba, &ca].iter().all(|h| view_is(h, &all_up))
    });
    let (code, err) = put(&aa, "before", "all");
    assert_eq!(code, 0, "ALL works with every node up: {err}");
    assert_eq!(faults(&metrics, "cut"), 0.0);

    // 1. C isolated both ways: its own file cuts everyone, A's and B's cut C.
    write_rules(&files[2], "cut *\n");
    for file in &files[..2] {
        write_rules(file, &format!("# isolate C\ncut {ca}\n"));
    }
    let c_down = [
        (aa.as_str(), true),
        (ba.as_str(), true),
        (ca.as_str(), false),
    ];
    wait_until("A and B to mark C down", DEADLINE, || {
        view_is(&aa, &c_down) && view_is(&ba, &c_down)
    });
    wait_until("C to mark A and B down", DEADLINE, || {
        view_is(
            &ca,
            &[
                (aa.as_str(), false),
                (ba.as_str(), false),
                (ca.as_str(), true),
            ],
        )
    });
    assert!(
        faults(&metrics, "cut") > 0.0,
        "A's calls to C were cut and counted"
    );
    let (code, err) = put(&aa, "during-cut", "quorum");
    assert_eq!(code, 0, "QUORUM through A with C cut off: {err}");
    assert_eq!(
        put_all(&a, "during-cut-all"),
        Reply::Error(ErrorReply::Unavailable {
            required: 3,
            alive: 2
        })
    );

    // 2. Rules cleared (one file emptied, two removed): C is up everywhere, ALL works.
    write_rules(&files[0], "");
    for file in &files[1..] {
        std::fs::remove_file(file).unwrap();
    }
    wait_until("C to be up everywhere again", DEADLINE, || {
        [&aa, &ba, &ca].iter().all(|h| view_is(h, &all_up))
    });
    // Each node reloads its rules file on its own schedule, so a node may see C up
    // (through another's gossip) while its own cut still stands; a dial it made then
    // leaves a short reconnect backoff, within which a write at ALL fails fast. Once
    // every node has reloaded, ALL works.
    wait_until("a write at ALL to succeed after the heal", DEADLINE, || {
        put(&aa, "healed", "all").0 == 0
    });

    // 3. A drops everything it sends to C (C still gossips to A, so A keeps C up): an
    // ALL write through A gets no ack from C and ends in a Timeout.
    write_rules(&files[0], &format!("drop {ca} 100\n"));
    wait_until(
        "an ALL write through A to time out",
        DEADLINE,
        || match put_all(&a, "dropped") {
            Reply::Done => false,
            other => {
                assert_eq!(
                    other,
                    Reply::Error(ErrorReply::Timeout {
                        required: 3,
                        acked: 2
                    })
                );
                true
            }
        },
    );
    assert!(
        view_is(&aa, &all_up),
        "dropping A's requests did not mark C down"
    );
    assert!(faults(&metrics, "drop") > 0.0, "drops are counted");
    // QUORUM still succeeds without C's ack.
    let (code, err) = put(&aa, "dropped-quorum", "quorum");
    assert_eq!(code, 0, "{err}");
}

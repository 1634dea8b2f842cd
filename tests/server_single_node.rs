//! A real single node: CLI and library round trips, pipelining, shards, restarts, and
//! two servers on one port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, Node};
use ringkv::client::blocking::{Client, Connection};
use ringkv::protocol::types::{Op, Reply};
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn cli_put_get_delete_and_exit_codes() {
    let node = Node::start(2, &[]);
    let host = node.addr();
    let (code, out, err) = cli(&["put", "greeting", "hello world", "--host", &host]);
    assert_eq!(code, 0, "put failed: {err}");
    assert!(out.is_empty());
    let (code, out, _) = cli(&["get", "greeting", "--host", &host]);
    assert_eq!(code, 0);
    assert_eq!(
        out, b"hello world",
        "get prints the value's bytes and nothing else"
    );

    // Binary values through --value-file come back byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.bin");
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(&file, &binary).unwrap();
    let (code, _, err) = cli(&[
        "put",
        "bin",
        "--value-file",
        file.to_str().unwrap(),
        "--host",
        &host,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["get", "bin", "--host", &host, "--consistency", "one"]);
    assert_eq!(code, 0);
    assert_eq!(out, binary);

    let (code, _, _) = cli(&["delete", "greeting", "--host", &host]);
    assert_eq!(code, 0);
    let (code, out, err) = cli(&["get", "greeting", "--host", &host]);
    assert_eq!(code, 1, "not found exits 1");
    assert!(out.is_empty());
    assert_eq!(err.trim(), "not found");

    let (code, _, err) = cli(&["get", "--host", &host]);
    assert_eq!(code, 2, "usage error exits 2: {err}");
    let (code, _, err) = cli(&["get", "k", "--consistency", "most", "--host", &host]);
    assert_eq!(code, 2, "bad consistency is a usage error: {err}");

    let dead = common::free_port_block(1);
    let (code, _, err) = cli(&["get", "k", "--host", &format!("127.0.0.1:{dead}")]);
    assert_eq!(code, 3, "connection refused exits 3: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");

    let (code, out, _) = cli(&["status", "--host", &host]);
    assert_eq!(code, 0);
    let status = String::from_utf8(out).unwrap();
    assert!(status.contains(&host) && status.contains("up"), "{status}");
}

#[test]
fn library_round_trip_and_not_found() {
    let node = Node::start(2, &[]);
    let mut client = Client::connect(&node.addr()).unwrap();
    assert!(
        client.get(b"missing", None).unwrap().is_empty(),
        "not found is an empty success"
    );
    client.put(b"k1", b"v1", None, None).unwrap();
    client.put(b"k1", b"v2", None, None).unwrap();
    assert_eq!(
        client.get(b"k1", None).unwrap().values,
        vec![b"v2".to_vec()]
    );
    client.delete(b"k1", None, None).unwrap();
    assert!(client.get(b"k1", None).unwrap().is_empty());
    let topology = client.topology().unwrap();
    assert_eq!(topology.nodes.len(), 1);
    assert_eq!(topology.nodes[0].shard_count, 2);
}

#[test]
fn ten_thousand_pipelined_requests_on_one_connection() {
    let node = Node::start(2, &[]);
    let mut conn = Connection::connect(node.socket_addr(), Duration::from_secs(5)).unwrap();
    // Pipelined requests run concurrently and may be answered out of order, so the
    // writes go first (5,000 in flight), then the reads of what they wrote (5,000).
    for phase in 0..2u32 {
        let mut expected = HashMap::new();
        for i in 0..5_000u32 {
            let key = format!("pipelined-{i}").into_bytes();
            let op = if phase == 0 {
                Op::Put {
                    key,
                    value: i.to_le_bytes().to_vec(),
                    consistency: None,
                    context: None,
                    sloppy_quorum: None,
                }
            } else {
                Op::Get {
                    key,
                    consistency: None,
                }
            };
            expected.insert(conn.queue(op), i);
        }
        conn.flush().unwrap();
        for _ in 0..5_000 {
            let response = conn.receive().unwrap();
            let i = expected
                .remove(&response.request_id)
                .expect("every response echoes a request id we sent, once");
            match (phase, response.body) {
                (0, Reply::Done) => {}
                (1, Reply::Value { values, .. }) => {
                    assert_eq!(values, vec![i.to_le_bytes().to_vec()], "request {i}")
                }
                (_, other) => panic!("phase {phase} request {i}: unexpected {other:?}"),
            }
        }
        assert!(expected.is_empty());
    }
}

/// Pipelined reads that must wait for the disk: 3,000 keys written through 64 KiB
/// memtables (so most of them land in SSTables), the node restarted (cold block cache),
/// then every key read back in one pipelined burst. A read is first polled where the
/// connection dispatches it and becomes a task only when it has to wait; these must
/// wait, and each still gets its own value.
#[test]
fn pipelined_reads_that_wait_for_the_disk_after_a_restart() {
    const KEYS: u32 = 3_000;
    let value = |i: u32| format!("{i:06}-{}", "v".repeat(200)).into_bytes();
    let mut node = Node::start(1, &["--memtable-size", "64KiB"]);
    let mut client = Client::connect(&node.addr()).unwrap();
    for i in 0..KEYS {
        client
            .put(format!("disk-{i}").as_bytes(), &value(i), None, None)
            .unwrap();
    }
    drop(client);
    node.kill();
    node.restart();
    let mut conn = Connection::connect(node.socket_addr(), Duration::from_secs(5)).unwrap();
    let mut expected = HashMap::new();
    for i in 0..KEYS {
        let op = Op::Get {
            key: format!("disk-{i}").into_bytes(),
            consistency: None,
        };
        expected.insert(conn.queue(op), i);
    }
    conn.flush().unwrap();
    for _ in 0..KEYS {
        let response = conn.receive().unwrap();
        let i = expected.remove(&response.request_id).unwrap();
        match response.body {
            Reply::Value { values, .. } => assert_eq!(values, vec![value(i)], "key {i}"),
            other => panic!("key {i}: unexpected {other:?}"),
        }
    }
    let sstables = node
        .data_dir()
        .read_dir()
        .unwrap()
        .flatten()
        .flat_map(|shard| shard.path().read_dir().into_iter().flatten().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".sst"))
        .count();
    assert!(sstables > 0, "the keys were flushed to SSTables");
}

#[test]
fn forty_thousand_sequential_requests_on_one_connection() {
    // Each request is its own read on the server's side of the connection, and each
    // read raced a fresh stop-wait: before the fix every one left a waker clone behind,
    // and glommio's 16-bit task reference count overflowed after 32,767 of them (the
    // shard panicked and stopped answering).
    let node = Node::start(1, &[]);
    let mut client = Client::connect(&node.addr()).unwrap();
    client.put(b"k", b"v", None, None).unwrap();
    for i in 0..40_000u32 {
        let reply = client.get(b"k", None);
        assert!(
            matches!(&reply, Ok(v) if v.values == vec![b"v".to_vec()]),
            "request {i}: {reply:?}"
        );
    }
}

fn put_keys(client: &mut Client, range: std::ops::Range<u32>) {
    for i in range {
        let (key, value) = (format!("key-{i}"), format!("value-{i}"));
        client
            .put(key.as_bytes(), value.as_bytes(), None, None)
            .unwrap();
    }
}

#[test]
fn restart_after_sigterm_and_sigkill_keeps_acknowledged_writes() {
    let mut node = Node::start(2, &[]);
    let mut client = Client::connect(&node.addr()).unwrap();
    put_keys(&mut client, 0..500);
    drop(client);
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    node.log.lock().unwrap().clear();
    node.restart();
    let mut client = Client::connect(&node.addr()).unwrap();
    for i in 0..500 {
        let got = client.get(format!("key-{i}").as_bytes(), None).unwrap();
        assert_eq!(
            got.values,
            vec![format!("value-{i}").into_bytes()],
            "key-{i} after SIGTERM"
        );
    }
    put_keys(&mut client, 500..1000);
    drop(client);
    node.kill();
    node.log.lock().unwrap().clear();
    node.restart();
    let log = node.log_text();
    for shard in 0..2 {
        let line = log
            .lines()
            .find(|l| l.contains("storage engine open") && l.contains(&format!("shard={shard}")))
            .unwrap_or_else(|| panic!("no open line for shard {shard}:\n{log}"));
        assert!(
            !line.contains("recovered_records=0 "),
            "shard {shard} received no writes: {line}"
        );
    }
    let mut client = Client::connect(&node.addr()).unwrap();
    for i in 0..1000 {
        let got = client.get(format!("key-{i}").as_bytes(), None).unwrap();
        assert_eq!(
            got.values,
            vec![format!("value-{i}").into_bytes()],
            "key-{i} after SIGKILL"
        );
    }
}

#[test]
fn second_server_on_the_same_port_fails_clearly() {
    let node = Node::start(1, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            &node.addr(),
            "--shards",
            "1",
            "--data-dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "second server must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&node.addr()) && err.contains("in use"),
        "clear message naming the address: {err}"
    );
    // The first node is unaffected.
    let mut client = Client::connect(&node.addr()).unwrap();
    client.ping().unwrap();

    // The same data directory cannot be opened twice either.
    let port = common::free_port_block(2);
    let out = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shards",
            "1",
            "--data-dir",
        ])
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another ringkv process"));
}

/// `metrics_listen` serves Prometheus text with every shard's counters.
#[test]
fn metrics_endpoint_reports_every_shard() {
    let metrics_port = common::free_port_block(1);
    let metrics = format!("127.0.0.1:{metrics_port}");
    let node = Node::start(2, &["--metrics-listen", &metrics]);
    let mut client = Client::connect(&node.addr()).unwrap();
    for i in 0..100 {
        client
            .put(format!("m-{i}").as_bytes(), b"v", None, None)
            .unwrap();
    }
    let text = common::metrics_text(&metrics);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    let writes = common::sum_series(&text, "ringkv_engine_writes_total");
    assert_eq!(writes, 100.0, "engine writes over both shards:\n{text}");
    // One client, one request at a time: every write is its own group commit.
    let appends = common::sum_series(&text, "ringkv_commitlog_appends_total");
    let commits = common::sum_series(&text, "ringkv_commitlog_group_commits_total");
    let bytes = common::sum_series(&text, "ringkv_commitlog_written_bytes_total");
    assert_eq!((appends, commits), (100.0, 100.0), "{text}");
    assert_eq!(bytes, 100.0 * 4096.0, "one block per group commit:\n{text}");
    let seconds = common::sum_series(&text, "ringkv_commitlog_group_commit_seconds_total");
    assert!(seconds > 0.0, "100 durable writes took some time:\n{text}");
    assert!(
        text.contains("ringkv_requests_total{shard=\"1\"}"),
        "{text}"
    );
}

/// A put carrying a client write timestamp is stored with exactly that version: sent
/// again (a retry, or an original a stalled node executes late) it is the same version
/// and cannot overwrite a newer write; one too far ahead of the node's clock is refused.
#[test]
fn a_write_timestamp_makes_a_put_sent_twice_one_version() {
    use ringkv::protocol::session::WriteTimestamp;
    use ringkv::protocol::types::ErrorReply;
    let node = Node::start(1, &[]);
    let mut conn = Connection::connect(node.socket_addr(), Duration::from_secs(5)).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stamp = |ms: u64| WriteTimestamp(ringkv::conflict::Hlc::new(ms, 0).0).encode();
    let put = |value: &str, context: Vec<u8>| Op::Put {
        key: b"stamped".to_vec(),
        value: value.as_bytes().to_vec(),
        consistency: None,
        context: Some(context),
        sloppy_quorum: None,
    };
    let first = stamp(now_ms - 1000);
    let expected = ringkv::conflict::Hlc::new(now_ms - 1000, 0).0;
    assert_eq!(
        conn.call(put("first", first.clone())).unwrap(),
        Reply::Written {
            timestamp: expected
        },
        "stored with exactly the client's timestamp"
    );
    assert!(matches!(
        conn.call(put("second", stamp(now_ms))).unwrap(),
        Reply::Written { .. }
    ));
    // The first put again, late: the same version as before, older than the second.
    assert_eq!(
        conn.call(put("first", first)).unwrap(),
        Reply::Written {
            timestamp: expected
        }
    );
    let read = conn
        .call(Op::Get {
            key: b"stamped".to_vec(),
            consistency: None,
        })
        .unwrap();
    assert!(
        matches!(&read, Reply::Value { values, .. } if values == &vec![b"second".to_vec()]),
        "{read:?}"
    );
    match conn.call(put("future", stamp(now_ms + 60_000))).unwrap() {
        Reply::Error(ErrorReply::BadRequest { message }) => {
            assert!(message.contains("write timestamp refused"), "{message}")
        }
        other => panic!("a timestamp a minute ahead: {other:?}"),
    }
}

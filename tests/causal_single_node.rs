//! Causal mode on one node: writes without a context become siblings, a write with the
//! context of a read supersedes exactly what that read saw, concurrent writes to one key
//! are all kept, and `max_siblings` refuses rather than drops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, Node};
use ringkv::client::blocking::{Client, Connection};
use ringkv::protocol::types::{ErrorReply, Op, Reply};
use std::time::Duration;

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[test]
fn siblings_and_contexts_through_the_library() {
    let node = Node::start(2, &["--conflict-mode", "causal", "--max-siblings", "64"]);
    let mut client = Client::connect(&node.addr()).unwrap();
    client.put(b"k", b"a", None, None).unwrap();
    client.put(b"k", b"b", None, None).unwrap();
    let read = client.get(b"k", None).unwrap();
    assert_eq!(
        sorted(read.values.clone()),
        vec![b"a".to_vec(), b"b".to_vec()],
        "no context: both kept"
    );
    let context = read.context.clone().expect("causal reads carry a context");

    // A write that saw both replaces both; a concurrent write that did not see it stays.
    client.put(b"k", b"c", None, None).unwrap();
    client.put(b"k", b"merged", None, Some(context)).unwrap();
    let read = client.get(b"k", None).unwrap();
    assert_eq!(sorted(read.values), vec![b"c".to_vec(), b"merged".to_vec()]);

    // A delete with the latest context removes everything it saw.
    let context = client.get(b"k", None).unwrap().context;
    client.delete(b"k", None, context).unwrap();
    let read = client.get(b"k", None).unwrap();
    assert!(read.values.is_empty(), "deleted: {read:?}");
    assert!(read.context.is_some(), "a tombstone still has a context");

    // 40 concurrent (pipelined) writes without context: every one survives as a sibling.
    let mut conn = Connection::connect(client.address_for(b"hot"), Duration::from_secs(5)).unwrap();
    let ops = (0..40u8)
        .map(|i| Op::Put {
            key: b"hot".to_vec(),
            value: vec![i],
            consistency: None,
            context: None,
            sloppy_quorum: None,
        })
        .collect();
    assert!(conn
        .pipeline(ops)
        .unwrap()
        .iter()
        .all(|r| *r == Reply::Done));
    assert_eq!(
        client.get(b"hot", None).unwrap().values.len(),
        40,
        "no concurrent write lost"
    );

    // Survives a restart.
    drop(client);
    let mut node = node;
    node.kill();
    node.restart();
    let mut client = Client::connect(&node.addr()).unwrap();
    assert_eq!(client.get(b"hot", None).unwrap().values.len(), 40);
}

#[test]
fn cli_prints_siblings_context_and_json_and_max_siblings_refuses() {
    let node = Node::start(1, &["--conflict-mode", "causal", "--max-siblings", "2"]);
    let host = node.addr();
    assert_eq!(cli(&["put", "k", "one", "--host", &host]).0, 0);
    assert_eq!(cli(&["put", "k", "two", "--host", &host]).0, 0);
    let (code, out, err) = cli(&["put", "k", "three", "--host", &host]);
    assert_eq!(code, 2, "beyond max_siblings the write is refused: {err}");
    assert!(err.contains("siblings"), "{err}");

    let (code, out2, _) = cli(&["get", "k", "--host", &host]);
    assert_eq!(code, 0);
    let text = String::from_utf8(out2).unwrap();
    assert!(
        text.contains("--- sibling 1 of 2") && text.contains("--- sibling 2 of 2"),
        "{text}"
    );
    let context = text
        .lines()
        .find_map(|l| l.strip_prefix("--- context "))
        .expect("context line")
        .to_string();
    let _ = out;

    let (code, json, _) = cli(&["get", "k", "--json", "--host", &host]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(doc["values"].as_array().unwrap().len(), 2);
    assert_eq!(doc["context"].as_str().unwrap(), context);

    assert_eq!(
        cli(&[
            "put",
            "k",
            "resolved",
            "--context",
            &context,
            "--host",
            &host
        ])
        .0,
        0
    );
    let (code, out, _) = cli(&["get", "k", "--host", &host]);
    assert_eq!(
        (code, out.as_slice()),
        (0, b"resolved".as_slice()),
        "one value prints raw"
    );

    let (code, _, err) = cli(&["put", "k", "x", "--context", "zz", "--host", &host]);
    assert_eq!(code, 2, "bad hex is a usage error: {err}");
    let mut raw = Connection::connect(node.socket_addr(), Duration::from_secs(5)).unwrap();
    let reply = raw
        .call(Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            consistency: None,
            context: Some(vec![9, 9, 9]),
            sloppy_quorum: None,
        })
        .unwrap();
    assert!(
        matches!(reply, Reply::Error(ErrorReply::BadRequest { .. })),
        "an undecodable context: {reply:?}"
    );
}

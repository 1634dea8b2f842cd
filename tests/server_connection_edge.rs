//! The connection edge of a real node: a client's pipelined requests on one key take
//! effect in send order; idle client connections are closed after
//! `client_idle_timeout`; a connection stalled mid-frame is closed after
//! `request_timeout_ms`; `max_client_connections` refuses a connection beyond it with
//! `Overloaded`; a failing `accept` (EMFILE) backs off with one WARN per episode while
//! open connections keep being served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{metric_sum, wait_until, Node};
use ringkv::client::blocking::Connection;
use ringkv::protocol::types::{ErrorReply, Op, Reply};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn put(key: &[u8], value: &[u8]) -> Op {
    Op::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        consistency: None,
        context: None,
        sloppy_quorum: None,
    }
}

fn get(key: &[u8]) -> Op {
    Op::Get {
        key: key.to_vec(),
        consistency: None,
    }
}

/// Whether the server closed `stream` (EOF or reset) before `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn pipelined_requests_on_one_key_take_effect_in_send_order() {
    let node = Node::start(2, &[]);
    // The client port: some keys are owned by the other shard and forwarded.
    let mut conn = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
    let mut stale = Vec::new();
    for round in 0..50u32 {
        let key = format!("order-{}", round % 5).into_bytes();
        let value = format!("v{round}").into_bytes();
        let replies = conn
            .pipeline(vec![
                put(&key, &value),
                get(&key),
                Op::Delete {
                    key: key.clone(),
                    consistency: None,
                    context: None,
                    sloppy_quorum: None,
                },
                get(&key),
                put(&key, &value),
                get(&key),
            ])
            .unwrap();
        let read = |r: &Reply| match r {
            Reply::Value { values, .. } => values.clone(),
            other => panic!("unexpected reply {other:?}"),
        };
        if read(&replies[1]) != vec![value.clone()]
            || !read(&replies[3]).is_empty()
            || read(&replies[5]) != vec![value.clone()]
        {
            stale.push(round);
        }
    }
    assert!(
        stale.is_empty(),
        "{} of 50 pipelines read a value older than the request before it: rounds {stale:?}",
        stale.len()
    );
}

#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    let node = Node::start(1, &["--client-idle-timeout", "1s"]);
    let mut idle = TcpStream::connect(node.socket_addr()).unwrap();
    let mut busy = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
    let started = Instant::now();
    // Ten times the timeout's granularity apart: a ping every 100 ms keeps it open.
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            busy.call(Op::Ping).unwrap(),
            Reply::Pong,
            "the busy connection works"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_within(&mut idle, DEADLINE),
        "the idle connection was closed"
    );
    assert_eq!(busy.call(Op::Ping).unwrap(), Reply::Pong);
}

#[test]
fn a_connection_stalled_mid_frame_is_closed_after_the_request_timeout() {
    let node = Node::start(
        1,
        &["--request-timeout-ms", "300", "--client-idle-timeout", "0"],
    );
    let mut stalled = TcpStream::connect(node.socket_addr()).unwrap();
    // A frame header announcing 100 bytes, then 10 of them, then nothing.
    stalled.write_all(&100u32.to_le_bytes()).unwrap();
    stalled.write_all(&[0u8; 10]).unwrap();
    assert!(
        closed_within(&mut stalled, DEADLINE),
        "stalled connection closed"
    );
    // With the idle timeout off, a connection that sends nothing at all stays open.
    let mut quiet = TcpStream::connect(node.socket_addr()).unwrap();
    assert!(!closed_within(&mut quiet, Duration::from_secs(2)));
}

#[test]
fn connections_beyond_max_client_connections_get_overloaded() {
    let metrics = format!("127.0.0.1:{}", common::free_port_block(1));
    let node = Node::start(
        2,
        &[
            "--max-client-connections",
            "3",
            "--metrics-listen",
            &metrics,
        ],
    );
    // The harness's readiness ping has closed its connection; wait until it is released.
    wait_until("no client connection open", DEADLINE, || {
        metric_sum(&metrics, "ringkv_client_connections") == 0.0
    });
    let mut open: Vec<Connection> = (0..3)
        .map(|_| {
            let mut c = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
            assert_eq!(c.call(Op::Ping).unwrap(), Reply::Pong);
            c
        })
        .collect();
    let mut refused = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
    assert_eq!(
        refused.call(Op::Ping).unwrap(),
        Reply::Error(ErrorReply::Overloaded),
        "the fourth client connection is refused"
    );
    assert!(refused.call(Op::Ping).is_err(), "and closed");
    assert_eq!(
        metric_sum(&metrics, "ringkv_connections_refused_total"),
        1.0
    );
    drop(open.pop());
    wait_until("a slot to free up", DEADLINE, || {
        let mut c = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
        c.call(Op::Ping).ok() == Some(Reply::Pong)
    });
    for c in &mut open {
        assert_eq!(c.call(Op::Ping).unwrap(), Reply::Pong);
    }
}

#[test]
fn accept_failures_back_off_without_flooding_the_log() {
    let metrics = format!("127.0.0.1:{}", common::free_port_block(1));
    let node = Node::start(1, &["--metrics-listen", &metrics]);
    let mut served = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
    assert_eq!(served.call(Op::Ping).unwrap(), Reply::Pong);
    let pid = node.pid().to_string();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // No descriptor left for a new connection (the soft limit; the hard one stays).
    let limit = format!("--nofile={fds}:");
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status();
    let Ok(status) = status else {
        println!("SKIPPED: prlimit is not available");
        return;
    };
    assert!(status.success(), "prlimit failed");
    let pending: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(node.socket_addr()).unwrap())
        .collect();
    wait_until("the first failed accept", DEADLINE, || {
        node.log_text().contains("accept failed")
    });
    // While accepts keep failing (the metrics port cannot accept either), the open
    // connection is served: 20 pings, 100 ms apart.
    for _ in 0..20 {
        assert_eq!(
            served.call(Op::Ping).unwrap(),
            Reply::Pong,
            "open connections are served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let warns = node
        .log_text()
        .lines()
        .filter(|l| l.contains("accept failed") && l.contains("WARN"))
        .count();
    assert!(
        warns <= 2,
        "one WARN per listener per episode, got {warns}:\n{}",
        node.log_text()
    );
    // Room again: the waiting connections are accepted and served.
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=4096:"])
        .status()
        .unwrap();
    assert!(status.success());
    drop(pending);
    wait_until("a new connection to be served", DEADLINE, || {
        Connection::connect(node.socket_addr(), Duration::from_secs(2))
            .and_then(|mut c| c.call(Op::Ping))
            .ok()
            == Some(Reply::Pong)
    });
    // The backoff retried (10 ms doubling to 1 s): a handful of failures, not ~200.
    let failures = metric_sum(&metrics, "ringkv_accept_failures_total");
    assert!(
        (3.0..=40.0).contains(&failures),
        "{failures} failed accepts in about 2 s"
    );
}

#[test]
fn a_full_shard_answers_overloaded_to_each_request_it_sheds_and_keeps_serving() {
    // One request in flight per shard: while a put waits for its commit-log write,
    // every further request that arrives is shed.
    let node = Node::start(1, &["--max-inflight-per-shard", "1"]);
    let mut conn = Connection::connect(node.socket_addr(), DEADLINE).unwrap();
    // The connection's first request is never shed (it may be a handshake or Auth).
    assert_eq!(conn.call(Op::Ping).unwrap(), Reply::Pong);
    let mut done = 0;
    let mut overloaded = 0;
    for round in 0..20 {
        let ops: Vec<Op> = (0..50)
            .map(|i| put(format!("shed-{round}-{i}").as_bytes(), b"v"))
            .collect();
        // Every request gets exactly its own answer (ids match: `pipeline` checks).
        for reply in conn.pipeline(ops).unwrap() {
            match reply {
                Reply::Done => done += 1,
                Reply::Error(ErrorReply::Overloaded) => overloaded += 1,
                other => panic!("unexpected reply {other:?}"),
            }
        }
        if done > 0 && overloaded > 0 {
            break;
        }
    }
    assert!(done > 0, "some puts were served");
    assert!(overloaded > 0, "puts beyond the shard's bound were shed");
    // Shed requests did nothing; served ones are there; the connection still works.
    let mut found = 0;
    for round in 0..20 {
        for i in 0..50 {
            let key = format!("shed-{round}-{i}");
            if let Reply::Value { values, .. } = conn.call(get(key.as_bytes())).unwrap() {
                found += usize::from(values == vec![b"v".to_vec()]);
            }
        }
    }
    assert_eq!(found, done, "exactly the acknowledged puts are stored");
}

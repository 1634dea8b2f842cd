//! Bad input over TCP: each gets the documented error or close, and a well-behaved
//! client on another connection is served normally throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Node;
use ringkv::client::blocking::Client;
use ringkv::protocol::codec::{decode_response, Encoder};
use ringkv::protocol::frame::next_frame;
use ringkv::protocol::types::{ErrorReply, Op, Reply, Request, Response};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Read responses until the server closes the connection (or 10 s pass).
fn read_until_close(stream: &mut TcpStream) -> (Vec<Response>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let mut responses = Vec::new();
    let mut at = 0;
    while let Ok(Some(bounds)) = next_frame(&buf[at..], 1 << 30) {
        responses
            .push(decode_response(&buf[at + bounds.body.start..at + bounds.body.end]).unwrap());
        at += bounds.total_len;
    }
    (responses, closed)
}

fn raw(node: &Node) -> TcpStream {
    TcpStream::connect(node.socket_addr()).unwrap()
}

fn assert_bad_request_then_close(node: &Node, bytes: &[u8], what: &str) {
    let mut s = raw(node);
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).ok();
    let (responses, closed) = read_until_close(&mut s);
    assert!(closed, "{what}: connection must be closed");
    if let Some(last) = responses.last() {
        assert!(
            matches!(last.body, Reply::Error(ErrorReply::BadRequest { .. })),
            "{what}: expected BadRequest, got {:?}",
            last.body
        );
    }
}

fn assert_healthy(client: &mut Client, round: u32) {
    let key = format!("good-{round}");
    client.put(key.as_bytes(), b"fine", None, None).unwrap();
    assert_eq!(
        client.get(key.as_bytes(), None).unwrap().values,
        vec![b"fine".to_vec()]
    );
}

#[test]
fn bad_frames_get_bad_request_or_close_and_others_are_served() {
    let node = Node::start(2, &["--max-key-size", "1KiB", "--max-value-size", "64KiB"]);
    let mut good = Client::connect(&node.addr()).unwrap();
    assert_healthy(&mut good, 0);

    // Garbage bytes: a length prefix followed by junk that is not a FlatBuffer.
    let mut garbage = 64u32.to_le_bytes().to_vec();
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    assert_bad_request_then_close(&node, &garbage, "garbage");
    assert_healthy(&mut good, 1);

    // A length prefix of 4 GiB - 1: refused before any allocation.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"abc");
    assert_bad_request_then_close(&node, &huge, "4 GiB prefix");
    assert_healthy(&mut good, 2);

    // A valid frame whose buffer has been corrupted so the verifier rejects it.
    let mut frame = Vec::new();
    Encoder::new().encode_request(
        &Request {
            request_id: 7,
            op: Op::Get {
                key: b"k".to_vec(),
                consistency: None,
            },
        },
        &mut frame,
    );
    for b in frame[4..].iter_mut().skip(4) {
        *b = 0xff;
    }
    assert_bad_request_then_close(&node, &frame, "invalid flatbuffer");
    assert_healthy(&mut good, 3);

    // A truncated frame: the server waits for the rest; when the client gives up and
    // closes, the server closes too, and nothing else is affected.
    let mut frame = Vec::new();
    Encoder::new().encode_request(
        &Request {
            request_id: 8,
            op: Op::Ping,
        },
        &mut frame,
    );
    let mut s = raw(&node);
    s.write_all(&frame[..frame.len() - 3]).unwrap();
    assert_healthy(&mut good, 4);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (responses, closed) = read_until_close(&mut s);
    assert!(
        closed && responses.is_empty(),
        "truncated frame gets no answer and a close: {responses:?}"
    );

    // Oversized key and value: a typed BadRequest with the request id; the connection
    // stays usable.
    let mut s = raw(&node);
    let mut out = Vec::new();
    let mut enc = Encoder::new();
    enc.encode_request(
        &Request {
            request_id: 11,
            op: Op::Get {
                key: vec![b'k'; 2048],
                consistency: None,
            },
        },
        &mut out,
    );
    enc.encode_request(
        &Request {
            request_id: 12,
            op: Op::Put {
                key: b"k".to_vec(),
                value: vec![0; 100 * 1024],
                consistency: None,
                context: None,
                sloppy_quorum: None,
            },
        },
        &mut out,
    );
    enc.encode_request(
        &Request {
            request_id: 13,
            op: Op::Ping,
        },
        &mut out,
    );
    s.write_all(&out).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (responses, _) = read_until_close(&mut s);
    let by_id = |id| {
        responses
            .iter()
            .find(|r| r.request_id == id)
            .map(|r| r.body.clone())
    };
    assert!(
        matches!(by_id(11), Some(Reply::Error(ErrorReply::BadRequest { .. }))),
        "{responses:?}"
    );
    assert!(
        matches!(by_id(12), Some(Reply::Error(ErrorReply::BadRequest { .. }))),
        "{responses:?}"
    );
    assert_eq!(
        by_id(13),
        Some(Reply::Pong),
        "the connection keeps working after a typed error"
    );
    assert_healthy(&mut good, 5);

    // Peer operations on a client connection are refused.
    let mut s = raw(&node);
    let mut out = Vec::new();
    enc.encode_request(
        &Request {
            request_id: 21,
            op: Op::ReplicaRead { key: b"k".to_vec() },
        },
        &mut out,
    );
    s.write_all(&out).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (responses, _) = read_until_close(&mut s);
    assert!(
        matches!(
            responses.first().map(|r| &r.body),
            Some(Reply::Error(ErrorReply::Unauthorized))
        ),
        "{responses:?}"
    );
    assert_healthy(&mut good, 6);
}

//! With `client_auth_token` set, requests without a token or with a wrong one get
//! `Unauthorized`; the right token works through the library and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, Node};
use ringkv::client::blocking::{Client, Connection};
use ringkv::client::ClientError;
use ringkv::protocol::types::{ErrorReply, Op, Reply};
use std::time::Duration;

const TOKEN: &str = "correct horse battery staple";

#[test]
fn requests_need_the_right_token() {
    let node = Node::start(2, &["--client-auth-token", TOKEN]);

    // No token: the first request (not an Auth) is refused, and so is everything after.
    let mut raw = Connection::connect(node.socket_addr(), Duration::from_secs(5)).unwrap();
    let get = || Op::Get {
        key: b"k".to_vec(),
        consistency: None,
    };
    assert_eq!(
        raw.call(get()).unwrap(),
        Reply::Error(ErrorReply::Unauthorized)
    );
    assert_eq!(
        raw.call(Op::Auth {
            token: TOKEN.into()
        })
        .unwrap(),
        Reply::Error(ErrorReply::Unauthorized)
    );

    // A wrong token is refused; the connection stays refused.
    let mut raw = Connection::connect(node.socket_addr(), Duration::from_secs(5)).unwrap();
    assert_eq!(
        raw.call(Op::Auth {
            token: b"guess".to_vec()
        })
        .unwrap(),
        Reply::Error(ErrorReply::Unauthorized)
    );
    assert_eq!(
        raw.call(Op::Ping).unwrap(),
        Reply::Error(ErrorReply::Unauthorized)
    );

    // Library: without a token it cannot even learn the topology.
    match Client::connect(&node.addr()) {
        Err(ClientError::Server(ErrorReply::Unauthorized)) => {}
        other => panic!("expected Unauthorized, got {:?}", other.map(|_| ())),
    }
    let mut client =
        Client::connect_with(&node.addr(), Duration::from_secs(5), Some(TOKEN.into())).unwrap();
    client.put(b"k", b"v", None, None).unwrap();
    assert_eq!(client.get(b"k", None).unwrap().values, vec![b"v".to_vec()]);

    // CLI: --token and --token-file work; no token exits 3 with a one-line reason.
    let host = node.addr();
    let (code, _, err) = cli(&["put", "cli-key", "cli-value", "--host", &host]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let (code, _, err) = cli(&[
        "put",
        "cli-key",
        "cli-value",
        "--host",
        &host,
        "--token",
        TOKEN,
    ]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let (code, out, err) = cli(&[
        "get",
        "cli-key",
        "--host",
        &host,
        "--token-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        (code, out.as_slice()),
        (0, b"cli-value".as_slice()),
        "{err}"
    );

    // Refusals are counted and logged, never the token itself.
    assert!(
        !node.log_text().contains(TOKEN),
        "the token must never be logged"
    );
}

/// A raw TCP client replaying a replica-write (or hint) frame without the peer
/// handshake changes nothing: the data is unchanged and the refusal is counted.
#[test]
fn replica_write_without_handshake_changes_nothing() {
    use ringkv::conflict::{Hlc, KeyState, LwwCell};
    let metrics_port = common::free_port_block(1);
    let metrics = format!("127.0.0.1:{metrics_port}");
    let node = Node::start(2, &["--metrics-listen", &metrics]);
    let mut client = Client::connect(&node.addr()).unwrap();
    client.put(b"victim", b"original", None, None).unwrap();

    // A state that would win every merge if it were applied.
    let forged = KeyState::Lww(LwwCell {
        timestamp: Hlc::new(Hlc::MAX_PHYSICAL_MS, 0),
        value: Some(b"forged".to_vec()),
    })
    .to_bytes();
    let shard_port = client.address_for(b"victim");
    for addr in [node.socket_addr(), shard_port] {
        let mut raw = Connection::connect(addr, Duration::from_secs(5)).unwrap();
        let write = Op::ReplicaWrite {
            key: b"victim".to_vec(),
            state: forged.clone(),
        };
        assert_eq!(
            raw.call(write).unwrap(),
            Reply::Error(ErrorReply::Unauthorized)
        );
        let hint = Op::HintReplay {
            key: b"victim".to_vec(),
            state: forged.clone(),
            target_node_id: 1,
        };
        assert_eq!(
            raw.call(hint).unwrap(),
            Reply::Error(ErrorReply::Unauthorized)
        );
    }
    assert_eq!(
        client.get(b"victim", None).unwrap().values,
        vec![b"original".to_vec()],
        "data unchanged"
    );

    let text = common::metrics_text(&metrics);
    let refused = common::sum_series(&text, "ringkv_refused_peer_ops_total");
    assert_eq!(refused, 4.0, "every refused peer op is counted:\n{text}");
}

/// `client_auth_token_file` accepts any token it lists (one per line, `#` comments).
#[test]
fn token_file_accepts_each_listed_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# app servers\nalpha-token\n\nbeta-token\n").unwrap();
    let node = Node::start(
        1,
        &[
            "--client-auth-token-file",
            file.to_str().unwrap(),
            "--client-auth-token",
            "alpha-token",
        ],
    );
    for token in ["alpha-token", "beta-token"] {
        let mut c =
            Client::connect_with(&node.addr(), Duration::from_secs(5), Some(token.into())).unwrap();
        c.put(token.as_bytes(), b"ok", None, None).unwrap();
    }
    assert!(matches!(
        Client::connect_with(
            &node.addr(),
            Duration::from_secs(5),
            Some(b"# app servers".to_vec())
        ),
        Err(ClientError::Server(ErrorReply::Unauthorized))
    ));
}

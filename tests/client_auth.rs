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

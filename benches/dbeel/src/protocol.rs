//! dbeel 0.1.0's client wire format, encoded and decoded as pure functions on byte
//! buffers (written from reading dbeel's `src/tasks/db_server.rs`; no code taken from it).
//!
//! This module owns the framing and the msgpack shapes of requests and replies. It never
//! touches a socket: `client.rs` moves the bytes.
//!
//! # Request (client → shard), one per TCP connection
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..2 | body length `n`, u16 little-endian |
//! | 2..2+n | msgpack map with string keys: `type` (str), plus per type `name`, `replication_factor`, `collection`, `key`, `value`, `consistency` (uint: number of nodes that must answer) |
//!
//! # Reply (shard → client), then the shard closes the connection
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..4 | length `m` of what follows, u32 little-endian |
//! | 4..4+m-1 | msgpack body |
//! | 4+m-1 | reply type: 0 = error, 1 = ok with a body, 2 = ok (body is the string `"OK"`) |
//!
//! An error body is dbeel's `ResponseError { message, name }` through rmp-serde's default
//! (struct as array) encoding; `name` is the snake_case error kind, e.g. `key_not_found`,
//! `collection_not_found`, `key_not_owned_by_shard`. The body of `get_cluster_metadata`
//! is `ClusterMetadata { nodes: [NodeMetadata], collections: {name: rf} }`, also as
//! arrays. dbeel has no magic or version in its frames; 0.1.0 is the version pinned.

use std::collections::HashMap;

use rmpv::Value;
use serde::Deserialize;

/// Reply type byte: the body is a `ResponseError`.
pub const REPLY_ERR: u8 = 0;
/// Reply type byte: the body is the answer (a value, metadata).
pub const REPLY_OK: u8 = 1;
/// Reply type byte: the request succeeded and the body is the string `"OK"`.
pub const REPLY_DONE: u8 = 2;

/// Error kind dbeel returns for a get of a key no replica holds (a miss, not a failure).
pub const KEY_NOT_FOUND: &str = "key_not_found";
/// Error kind of a request sent to a shard that does not own the key.
pub const KEY_NOT_OWNED: &str = "key_not_owned_by_shard";
/// Error kind of `create_collection` for a name that exists.
pub const COLLECTION_EXISTS: &str = "collection_already_exists";

/// One node as `get_cluster_metadata` lists it (field order is the wire order).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NodeMetadata {
    pub name: String,
    pub ip: String,
    pub remote_shard_base_port: u16,
    /// Shard ids, one per CPU the node runs on; shard `id` serves clients on
    /// `db_port + id`.
    pub ids: Vec<u16>,
    pub gossip_port: u16,
    pub db_port: u16,
}

/// The reply to `get_cluster_metadata`: every node the shard knows, itself included.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterMetadata {
    pub nodes: Vec<NodeMetadata>,
    /// Collection name to replication factor. Part of the wire shape; the client waits
    /// on `get_collection` per shard instead.
    #[allow(dead_code)]
    pub collections: HashMap<String, u16>,
}

/// A decoded reply.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Success; the msgpack body (for `get`, the stored value).
    Ok(Vec<u8>),
    /// dbeel reported an error of this kind.
    Err { name: String, message: String },
}

/// Why bytes could not be read as a reply.
#[derive(Debug, PartialEq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad dbeel reply: {}", self.0)
    }
}

fn string(s: &str) -> Value {
    Value::String(s.into())
}

/// The msgpack encoding of a key: what dbeel hashes to place it on the ring.
pub fn encode_key(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &string(key));
    out
}

/// Frames a msgpack map of `fields` as a request: u16 LE length, then the body.
fn frame(fields: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = vec![0, 0];
    let _ = rmpv::encode::write_value(&mut out, &Value::Map(fields));
    let body_bytes = out.len() - 2;
    assert!(
        body_bytes <= usize::from(u16::MAX),
        "request body of {body_bytes} bytes exceeds dbeel's u16 length prefix"
    );
    out[..2].copy_from_slice(&(body_bytes as u16).to_le_bytes());
    out
}

pub fn get_cluster_metadata() -> Vec<u8> {
    frame(vec![(string("type"), string("get_cluster_metadata"))])
}

pub fn create_collection(name: &str, replication_factor: u16) -> Vec<u8> {
    frame(vec![
        (string("type"), string("create_collection")),
        (string("name"), string(name)),
        (
            string("replication_factor"),
            Value::from(replication_factor),
        ),
    ])
}

pub fn get_collection(name: &str) -> Vec<u8> {
    frame(vec![
        (string("type"), string("get_collection")),
        (string("name"), string(name)),
    ])
}

pub fn set(collection: &str, key: &str, value: &[u8], consistency: u16) -> Vec<u8> {
    frame(vec![
        (string("type"), string("set")),
        (string("collection"), string(collection)),
        (string("key"), string(key)),
        (string("value"), Value::Binary(value.to_vec())),
        (string("consistency"), Value::from(consistency)),
    ])
}

pub fn get(collection: &str, key: &str, consistency: u16) -> Vec<u8> {
    frame(vec![
        (string("type"), string("get")),
        (string("collection"), string(collection)),
        (string("key"), string(key)),
        (string("consistency"), Value::from(consistency)),
    ])
}

/// Decodes a reply from what follows its u32 length prefix (body + type byte).
pub fn decode_reply(frame: &[u8]) -> Result<Reply, DecodeError> {
    let Some((&kind, body)) = frame.split_last() else {
        return Err(DecodeError("empty reply".into()));
    };
    match kind {
        REPLY_OK | REPLY_DONE => Ok(Reply::Ok(body.to_vec())),
        REPLY_ERR => {
            let value = rmpv::decode::read_value(&mut &body[..])
                .map_err(|e| DecodeError(format!("error body: {e}")))?;
            // rmp-serde writes the struct as [message, name]; accept a map too.
            let (message, name) = match &value {
                Value::Array(items) if items.len() == 2 => (&items[0], &items[1]),
                Value::Map(_) => (&value["message"], &value["name"]),
                _ => return Err(DecodeError(format!("error body {value}"))),
            };
            match (message.as_str(), name.as_str()) {
                (Some(message), Some(name)) => Ok(Reply::Err {
                    name: name.to_string(),
                    message: message.to_string(),
                }),
                _ => Err(DecodeError(format!("error body {value}"))),
            }
        }
        other => Err(DecodeError(format!("reply type byte {other}"))),
    }
}

/// Reads the body of a `get_cluster_metadata` reply.
pub fn decode_cluster_metadata(body: &[u8]) -> Result<ClusterMetadata, DecodeError> {
    rmp_serde::from_slice(body).map_err(|e| DecodeError(format!("cluster metadata: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_is_length_prefixed_msgpack_map() {
        let req = get("c", "k", 2);
        let n = u16::from_le_bytes([req[0], req[1]]) as usize;
        assert_eq!(n, req.len() - 2);
        let v = rmpv::decode::read_value(&mut &req[2..]).unwrap();
        assert_eq!(v["type"].as_str(), Some("get"));
        assert_eq!(v["collection"].as_str(), Some("c"));
        assert_eq!(v["key"].as_str(), Some("k"));
        assert_eq!(v["consistency"].as_u64(), Some(2));
    }

    #[test]
    fn set_carries_value_as_binary() {
        let req = set("c", "k", &[7; 100], 2);
        let v = rmpv::decode::read_value(&mut &req[2..]).unwrap();
        assert_eq!(v["value"].as_slice(), Some(&[7u8; 100][..]));
    }

    #[test]
    fn key_encoding_is_msgpack_fixstr() {
        assert_eq!(encode_key("user"), vec![0xa4, b'u', b's', b'e', b'r']);
    }

    #[test]
    fn error_reply_decodes_name_and_message() {
        let mut body = Vec::new();
        let err = Value::Array(vec![string("Key not found"), string(KEY_NOT_FOUND)]);
        rmpv::encode::write_value(&mut body, &err).unwrap();
        body.push(REPLY_ERR);
        assert_eq!(
            decode_reply(&body).unwrap(),
            Reply::Err {
                name: KEY_NOT_FOUND.into(),
                message: "Key not found".into()
            }
        );
    }

    #[test]
    fn ok_and_unknown_reply_types() {
        assert_eq!(
            decode_reply(&[0xa1, b'x', REPLY_OK]).unwrap(),
            Reply::Ok(vec![0xa1, b'x'])
        );
        assert!(decode_reply(&[9]).is_err());
        assert!(decode_reply(&[]).is_err());
    }

    #[test]
    fn cluster_metadata_decodes_from_arrays() {
        let node = Value::Array(vec![
            string("n0"),
            string("127.0.0.1"),
            Value::from(20000u16),
            Value::Array(vec![Value::from(0u16), Value::from(1u16)]),
            Value::from(30000u16),
            Value::from(10000u16),
        ]);
        let meta = Value::Array(vec![
            Value::Array(vec![node]),
            Value::Map(vec![(string("bench"), Value::from(3u16))]),
        ]);
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, &meta).unwrap();
        let m = decode_cluster_metadata(&body).unwrap();
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].ids, vec![0, 1]);
        assert_eq!(m.nodes[0].db_port, 10000);
        assert_eq!(m.collections.get("bench"), Some(&3));
    }
}

//! Which dbeel shard a key goes to: the client side of dbeel 0.1.0's consistent-hash ring.
//!
//! Owns the placement rule only; it never opens a socket. Worked out from reading dbeel's
//! `shards.rs` (`hash_string`, `hash_bytes`, `owns_key`, `is_between`,
//! `sort_consistent_hash_ring`) and `db_server.rs` (`extract_key`):
//!
//! - every shard (one per CPU of every node) sits on the ring at
//!   `murmur3_32(name, seed 0)`, `name = "{node_name}-{shard_id}"`;
//! - a key sits at `murmur3_32(msgpack(key), seed 0)`;
//! - a shard accepts a key as replica 0 when the key's hash `h` lies in
//!   `[predecessor.hash, shard.hash)`, so the owner of `h` is the first shard whose hash
//!   is strictly greater than `h`, wrapping to the lowest hash past the top.
//!
//! (dbeel's wrap-around branch of `is_between` accepts every hash on the lowest-hash
//! shard, so that shard never rejects a key; the rule above is still the one every other
//! shard enforces, and it is what a run checks: zero `key_not_owned_by_shard`.)

use std::net::SocketAddr;

use crate::protocol::NodeMetadata;

/// murmur3 x86 32-bit with seed 0, as dbeel places names and keys.
pub fn hash(bytes: &[u8]) -> u32 {
    // Reading from a slice cannot fail.
    murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).unwrap_or(0)
}

/// One shard on the ring.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub name: String,
    pub hash: u32,
    /// Where it serves clients: the node's ip, `db_port + id`.
    pub addr: SocketAddr,
}

/// The ring: every shard of every node, sorted by hash.
#[derive(Clone, Debug)]
pub struct Ring {
    shards: Vec<Shard>,
}

impl Ring {
    /// Builds the ring from `get_cluster_metadata`'s node list.
    pub fn from_nodes(nodes: &[NodeMetadata]) -> Result<Ring, String> {
        let mut shards = Vec::new();
        for node in nodes {
            for &id in &node.ids {
                let name = format!("{}-{}", node.name, id);
                let port = node
                    .db_port
                    .checked_add(id)
                    .ok_or_else(|| format!("{name}: port {} + {id} overflows", node.db_port))?;
                let addr: SocketAddr = format!("{}:{}", node.ip, port)
                    .parse()
                    .map_err(|e| format!("{name}: address {}:{port}: {e}", node.ip))?;
                shards.push(Shard {
                    hash: hash(name.as_bytes()),
                    name,
                    addr,
                });
            }
        }
        if shards.is_empty() {
            return Err("cluster metadata lists no shards".into());
        }
        shards.sort_by_key(|s| s.hash);
        Ok(Ring { shards })
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard that owns `key_hash` as replica 0 (see the module doc).
    pub fn owner(&self, key_hash: u32) -> &Shard {
        let after = self.shards.partition_point(|s| s.hash <= key_hash);
        &self.shards[after % self.shards.len()]
    }

    /// The owner of a key given as text (dbeel hashes its msgpack encoding).
    pub fn owner_of_key(&self, key: &str) -> &Shard {
        self.owner(hash(&crate::protocol::encode_key(key)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(name: &str, db_port: u16) -> NodeMetadata {
        NodeMetadata {
            name: name.into(),
            ip: "127.0.0.1".into(),
            remote_shard_base_port: 0,
            ids: vec![0, 1],
            gossip_port: 0,
            db_port,
        }
    }

    #[test]
    fn hash_matches_dbeel_test_vector() {
        // dbeel's tests/migration.rs lists these ring positions: shard names hash as
        // raw bytes, keys as their msgpack encoding.
        assert_eq!(hash(b"a-0"), 2_727_548_292);
        assert_eq!(hash(b"b-0"), 1_121_949_192);
        assert_eq!(hash(&crate::protocol::encode_key("key")), 1_211_368_233);
        assert_eq!(hash(&crate::protocol::encode_key("KEY")), 791_967_430);
    }

    #[test]
    fn owner_is_first_shard_with_greater_hash_wrapping() {
        let ring = Ring::from_nodes(&[node("a", 100), node("b", 200), node("c", 300)]).unwrap();
        let s = ring.shards();
        assert_eq!(s.len(), 6);
        assert!(s.windows(2).all(|w| w[0].hash < w[1].hash));
        for i in 0..s.len() {
            // Exactly on a shard's hash: owned by the next one (half-open range).
            assert_eq!(ring.owner(s[i].hash).name, s[(i + 1) % s.len()].name);
            // Just below: owned by that shard.
            assert_eq!(ring.owner(s[i].hash - 1).name, s[i].name);
        }
        assert_eq!(ring.owner(u32::MAX).name, s[0].name);
        assert_eq!(ring.owner(0).name, s[0].name);
    }

    #[test]
    fn shard_address_is_db_port_plus_id() {
        let ring = Ring::from_nodes(&[node("a", 100)]).unwrap();
        let mut ports: Vec<u16> = ring.shards().iter().map(|s| s.addr.port()).collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![100, 101]);
    }

    #[test]
    fn empty_metadata_is_an_error() {
        assert!(Ring::from_nodes(&[]).is_err());
    }
}

//! What a node remembers of its cluster across restarts (Cassandra's `system.peers`):
//! every other node it knew, each as the whole gossip state last seen of it (address,
//! ports, status, tokens, and the generation and version it was seen at).
//!
//! On restart these states seed the node's [`Membership`](super::Membership) before it
//! serves anything, so its ring, and therefore each key's replica set and the number of
//! replicas a QUORUM needs, are the cluster's from the first request, never the smaller
//! ring of whatever gossip has brought back so far. Restored peers start as down: only a
//! gossip exchange (their heartbeat advancing, or their own message) marks them up, so
//! a write that cannot reach W replicas is refused as `Unavailable` rather than
//! acknowledged with fewer copies.
//!
//! The file is `data_dir/peers.toml`, rewritten atomically (temp file, fsync, rename,
//! directory fsync) whenever a field that places data (address, ports, status, tokens)
//! changes; heartbeats and load alone do not rewrite it. Numbers wider than TOML's i64
//! are strings.
//!
//! ```toml
//! format = 1
//! [[peer]]
//! node_id = "00c0ffee12345678"   # 16 hex digits
//! generation = "1733550000000"   # gossip generation (the peer's boot time, ms)
//! version = "42"                 # gossip version within that generation
//! heartbeat = "40"
//! address = "127.0.0.1:7410"     # client address
//! shard_count = 2
//! shard_port_base = 7411
//! status = "normal"              # joining | normal | leaving | left
//! tokens = ["0a1b2c3d4e5f6071", "ff02..."]   # hex, sorted
//! load_bytes = "1048576"
//! app_states = { conflict_mode = "lww" }
//! ```
//!
//! Pure text ↔ states; the file I/O belongs to the server. Must never: invent a
//! state newer than one really gossiped (a restored state must always lose to the
//! peer's live one), or accept more than [`MAX_NODES`](super::membership::MAX_NODES)
//! peers or [`MAX_TOKENS_PER_NODE`](super::ring::MAX_TOKENS_PER_NODE) tokens each.

use super::membership::MAX_NODES;
use super::ring::MAX_TOKENS_PER_NODE;
use super::NodeState;
use crate::protocol::types::NodeStatus;
use std::fmt::Write as _;

/// The file name inside the data directory.
pub const FILE_NAME: &str = "peers.toml";

/// The only format version written and read.
const FORMAT_VERSION: u32 = 1;

/// The file for `states`: every node but `local_id`, by node id.
pub fn encode<'a>(local_id: u64, states: impl IntoIterator<Item = &'a NodeState>) -> String {
    let mut text = format!("format = {FORMAT_VERSION}\n");
    let mut peers: Vec<&NodeState> = states.into_iter().filter(|s| s.id != local_id).collect();
    peers.sort_by_key(|s| s.id);
    for state in peers {
        let tokens: Vec<String> = state
            .tokens
            .iter()
            .map(|t| format!("\"{t:016x}\""))
            .collect();
        let app_states: Vec<String> = state
            .app_states
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_string(k), toml_string(v)))
            .collect();
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "\n[[peer]]\nnode_id = \"{:016x}\"\ngeneration = \"{}\"\nversion = \"{}\"\n\
             heartbeat = \"{}\"\naddress = {}\nshard_count = {}\nshard_port_base = {}\n\
             status = \"{}\"\ntokens = [{}]\nload_bytes = \"{}\"\napp_states = {{ {} }}\n",
            state.id,
            state.generation,
            state.version,
            state.heartbeat,
            toml_string(&state.address),
            state.shard_count,
            state.shard_port_base,
            status_name(state.status),
            tokens.join(", "),
            state.load_bytes,
            app_states.join(", ")
        );
    }
    text
}

/// Parse a file written by [`encode`]: the states as they were last seen, so never newer
/// than what their owners gossip now.
pub fn decode(text: &str) -> Result<Vec<NodeState>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        format: u32,
        #[serde(default)]
        peer: Vec<Peer>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Peer {
        node_id: String,
        generation: String,
        version: String,
        heartbeat: String,
        address: String,
        shard_count: u32,
        shard_port_base: u16,
        status: String,
        tokens: Vec<String>,
        load_bytes: String,
        app_states: std::collections::BTreeMap<String, String>,
    }
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.format != FORMAT_VERSION {
        return Err(format!(
            "format {} is not supported (this version reads format {FORMAT_VERSION})",
            file.format
        ));
    }
    if file.peer.len() > MAX_NODES {
        return Err(format!(
            "{} peers, more than the {MAX_NODES} a cluster may have",
            file.peer.len()
        ));
    }
    let mut states = Vec::with_capacity(file.peer.len());
    for peer in file.peer {
        let id = hex_u64(&peer.node_id)
            .ok_or_else(|| format!("node_id {:?} is not 16 hex digits", peer.node_id))?;
        let status = status_from_name(&peer.status)
            .ok_or_else(|| format!("node {id:016x}: unknown status {:?}", peer.status))?;
        if peer.tokens.len() > MAX_TOKENS_PER_NODE {
            return Err(format!("node {id:016x}: {} tokens", peer.tokens.len()));
        }
        let mut tokens = Vec::with_capacity(peer.tokens.len());
        for token in &peer.tokens {
            tokens.push(
                hex_u64(token).ok_or_else(|| {
                    format!("node {id:016x}: token {token:?} is not 16 hex digits")
                })?,
            );
        }
        tokens.sort_unstable();
        tokens.dedup();
        if states.iter().any(|s: &NodeState| s.id == id) {
            return Err(format!("node {id:016x} is listed twice"));
        }
        let number = |name: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("node {id:016x}: {name} {text:?} is not a number"))
        };
        let mut state = NodeState::new(id, number("generation", &peer.generation)?, peer.address);
        state.version = number("version", &peer.version)?;
        state.heartbeat = number("heartbeat", &peer.heartbeat)?;
        state.load_bytes = number("load_bytes", &peer.load_bytes)?;
        state.app_states = peer.app_states;
        state.status = status;
        state.shard_count = peer.shard_count;
        state.shard_port_base = peer.shard_port_base;
        state.tokens = tokens;
        states.push(state);
    }
    Ok(states)
}

fn hex_u64(text: &str) -> Option<u64> {
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn status_name(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Joining => "joining",
        NodeStatus::Normal => "normal",
        NodeStatus::Leaving => "leaving",
        NodeStatus::Left => "left",
    }
}

fn status_from_name(name: &str) -> Option<NodeStatus> {
    Some(match name {
        "joining" => NodeStatus::Joining,
        "normal" => NodeStatus::Normal,
        "leaving" => NodeStatus::Leaving,
        "left" => NodeStatus::Left,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(id: u64, tokens: Vec<u64>, status: NodeStatus) -> NodeState {
        let mut s = NodeState::new(
            id,
            1_700_000_000_000 + id,
            format!("127.0.0.1:{}", 7000 + id),
        );
        s.version = 7 + id;
        s.heartbeat = 99;
        s.load_bytes = 12345;
        s.app_states
            .insert("conflict_mode".into(), "lww \"quoted\"".into());
        s.status = status;
        s.shard_count = 2;
        s.shard_port_base = 7001 + id as u16;
        s.tokens = tokens;
        s
    }

    #[test]
    fn round_trip_keeps_every_peer_state_but_the_local_one() {
        let states = [
            state(1, vec![5, 9], NodeStatus::Normal),
            state(2, vec![1, 3], NodeStatus::Leaving),
            state(3, vec![], NodeStatus::Joining),
        ];
        let text = encode(2, &states);
        let back = decode(&text).unwrap();
        assert_eq!(back, vec![states[0].clone(), states[2].clone()]);
    }

    #[test]
    fn empty_file_means_no_peer() {
        assert_eq!(
            decode(&encode(1, &[state(1, vec![1], NodeStatus::Normal)])).unwrap(),
            vec![]
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let good = encode(0, &[state(1, vec![5], NodeStatus::Normal)]);
        for (bad, why) in [
            (good.replace("format = 1", "format = 2"), "format 2"),
            (good.replace("normal", "gone"), "unknown status"),
            (good.replace("\"0000000000000005\"", "\"5\""), "token"),
            (
                good.replace("node_id = \"0000000000000001\"", "node_id = \"x\""),
                "node_id",
            ),
            (
                format!("{good}{}", &good["format = 1\n".len()..]),
                "listed twice",
            ),
            (good.replace("version", "versoin"), "unknown field"),
            (
                good.replace("heartbeat = \"99\"", "heartbeat = \"-1\""),
                "heartbeat",
            ),
            ("format = ".to_string(), ""),
        ] {
            let err = decode(&bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn any_states_round_trip(
            peers in proptest::collection::btree_map(
                any::<u64>(),
                ((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
                 "(?s).{0,40}", 1u32..64, any::<u16>(), 0u8..4,
                 proptest::collection::btree_set(any::<u64>(), 0..20),
                 proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..3)),
                0..8,
            ),
        ) {
            let states: Vec<NodeState> = peers
                .into_iter()
                .map(|(id, ((generation, version, heartbeat, load), address, shards, base, status, tokens, apps))| {
                    let mut s = NodeState::new(id, generation, address);
                    s.version = version;
                    s.heartbeat = heartbeat;
                    s.load_bytes = load;
                    s.app_states = apps;
                    s.shard_count = shards;
                    s.shard_port_base = base;
                    s.status = [NodeStatus::Joining, NodeStatus::Normal, NodeStatus::Leaving, NodeStatus::Left][status as usize];
                    s.tokens = tokens.into_iter().collect();
                    s
                })
                .collect();
            let back = decode(&encode(u64::MAX, &states)).unwrap();
            let expected: Vec<NodeState> = states.iter().filter(|s| s.id != u64::MAX).cloned().collect();
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = decode(&text);
        }
    }
}

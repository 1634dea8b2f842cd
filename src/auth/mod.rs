//! Peer and client authentication (docs/design.md §6.10), as pure code.
//!
//! This module owns the peer handshake state machines ([`Initiator`], [`Acceptor`]),
//! their messages and byte layout ([`AuthMessage`]), the secrets' types
//! ([`ClusterSecret`], [`ClientAuthToken`]) and the per-connection client check
//! ([`ClientAuthState`]). It never touches sockets, clocks, logs or a global RNG: nonces
//! come in from the caller (the driver takes them from [`fresh_nonce`]), and every
//! decision comes out as an [`Effect`]. The driver sends, closes, logs the failure with
//! the peer's address and counts it; it lets no other frame through until
//! [`Effect::Authenticated`]. Secrets are never printed: their `Debug`/`Display` say
//! `<redacted>`.
//!
//! # The peer handshake
//!
//! Every peer connection opens with it, whichever node dialled. `I` is the initiator
//! (dialled), `A` the acceptor; `n_i`, `n_a` are fresh 32-byte nonces from each side.
//!
//! ```text
//!   Initiator                                              Acceptor
//!   AwaitChallenge                                         AwaitHello
//!       |-- Hello { version, cluster_name, id_i, n_i, mode } ->|
//!       |                                                     | checks version, name,
//!       |                                                     | mode, id_i != id_a,
//!       |                                                     | n_i != n_a
//!       |<- Challenge { cluster_name, id_a, n_a, mode, proof_a }| AwaitResponse
//!   checks name, mode, id_a != id_i,                          |
//!   n_a != n_i, proof_a (constant time)                       |
//!   AwaitWelcome                                              |
//!       |-- Response { proof_i } ---------------------------->|
//!       |                                                     | checks proof_i
//!       |<-- Welcome -----------------------------------------| Authenticated
//!   Authenticated                                             |
//!
//!   proof_r = BLAKE3-keyed(K, "ringkv-auth-v2|" ‖ r ‖ "|" ‖ version ‖ name_len ‖ name
//!                             ‖ mode ‖ id_a ‖ id_i ‖ n_i ‖ n_a)   r ∈ {acceptor, initiator}
//!   K       = BLAKE3-derive-key("ringkv peer-auth cluster secret v1", cluster_secret)
//! ```
//!
//! Why it holds: each proof needs the secret; both nonces are in both proofs, so a
//! Response captured from an earlier session is useless against a fresh `n_a` (replay);
//! the role label differs, so sending an acceptor's own proof back as a Response fails
//! (reflection); the version is inside the proofs, so it cannot be rewritten (downgrade).
//! The conflict mode (`mode`: lww or causal) is checked by both sides, and each proof
//! covers the verifier's own mode, so a mode rewritten in transit fails the proof. A
//! node refusing a peer of another mode says its own mode in the `Refuse`, so both
//! sides log both modes ([`Failure::ConflictModeMismatch`]).
//! Any failed check, any message not expected in the current state (a duplicate Hello,
//! a Welcome before the Response, anything after authentication), or bytes that do not
//! decode, end the handshake for good in `Refused`: the machine emits
//! `Send(Refuse { reason })` with a coarse [`RefuseReason`] that does not say which check
//! failed, then `Close`. Nothing moves a refused machine again. A `Refuse` from the peer
//! closes without answering.
//!
//! What it does not do: it authenticates the peer at the start of the connection; it
//! does not encrypt or authenticate the frames that follow (no channel binding).
//!
//! # Client authentication
//!
//! When `client_auth_token` is set, a client connection must present it in an `Auth`
//! op as its first request; otherwise every request on that connection gets
//! `Unauthorized`. See [`ClientAuthState`] and [`token_matches`].

mod client;
mod handshake;
mod message;

pub use client::{token_matches, ClientAuthState, ClientAuthToken, Refusal};
pub use handshake::{Acceptor, Effect, Failure, Handshake, Initiator};
pub use message::{
    conflict_mode_code, conflict_mode_name, AuthMessage, RefuseReason, FORMAT_VERSION,
    HEADER_BYTES, MAGIC, MESSAGE_BYTES_MAX, PROTOCOL_VERSION,
};

use crate::conflict::ConflictMode;

/// A node's identity (the same number as `NodeInfo::node_id`).
pub type NodeId = u64;

pub const NONCE_BYTES: usize = 32;
pub const PROOF_BYTES: usize = 32;

/// Longest cluster name, in bytes; its length travels as one byte.
pub const CLUSTER_NAME_BYTES_MAX: usize = 255;

/// A fresh random value each side contributes to one handshake.
pub type Nonce = [u8; NONCE_BYTES];

/// Key-derivation context: fixed, globally unique, so the MAC key is never the raw
/// secret and can't collide with keys derived from the same secret elsewhere.
const KEY_CONTEXT: &str = "ringkv peer-auth cluster secret v1";

/// A fresh nonce from the operating system's RNG, for the driver. The state machines
/// never call this: they take nonces as arguments, so tests and the simulator are
/// deterministic.
pub fn fresh_nonce() -> Result<Nonce, AuthError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(nonce)
}

/// Errors of decoding a message or building the secrets' types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("handshake message of {len_bytes} bytes is over the {MESSAGE_BYTES_MAX}-byte bound")]
    TooLong { len_bytes: usize },
    #[error("handshake message is cut short")]
    Truncated,
    #[error("handshake message has the wrong magic")]
    BadMagic,
    #[error("handshake message format version {0} is not supported")]
    UnsupportedFormatVersion(u8),
    #[error("unknown handshake message kind {0}")]
    UnknownKind(u8),
    #[error("unknown refuse reason code {0}")]
    UnknownRefuseReason(u8),
    #[error("unknown conflict mode code {0}")]
    UnknownConflictMode(u8),
    #[error("{len_bytes} bytes after the end of the handshake message")]
    TrailingBytes { len_bytes: usize },
    #[error("cluster name is empty")]
    ClusterNameEmpty,
    #[error("cluster name of {len_bytes} bytes is over the {CLUSTER_NAME_BYTES_MAX}-byte bound")]
    ClusterNameTooLong { len_bytes: usize },
    #[error("cluster name is not UTF-8")]
    ClusterNameNotUtf8,
    #[error("cluster secret is empty")]
    EmptySecret,
    #[error("client auth token is empty")]
    EmptyToken,
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
}

/// The cluster's name: 1..=255 bytes of UTF-8. Not secret; peers of another cluster are
/// refused with [`RefuseReason::ClusterName`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: &str) -> Result<ClusterName, AuthError> {
        if name.is_empty() {
            return Err(AuthError::ClusterNameEmpty);
        }
        if name.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(AuthError::ClusterNameTooLong {
                len_bytes: name.len(),
            });
        }
        Ok(ClusterName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClusterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a peer must share with this node before the handshake lets it in, besides the
/// secret: the cluster name, and the `conflict_mode` (a cluster runs one mode; a node of
/// the other mode would merge the same keys by another rule, so it is refused with
/// [`RefuseReason::ConflictMode`] and never enters the ring).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub name: ClusterName,
    pub conflict_mode: ConflictMode,
}

impl ClusterIdentity {
    pub fn new(name: ClusterName, conflict_mode: ConflictMode) -> ClusterIdentity {
        ClusterIdentity {
            name,
            conflict_mode,
        }
    }
}

/// A bare cluster name stands for a node of the default conflict mode (`lww`, the
/// config default), so code that only knows the name keeps working.
impl From<ClusterName> for ClusterIdentity {
    fn from(name: ClusterName) -> ClusterIdentity {
        ClusterIdentity::new(name, ConflictMode::Lww)
    }
}

impl std::fmt::Display for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (conflict_mode {})",
            self.name,
            conflict_mode_name(self.conflict_mode)
        )
    }
}

/// The shared cluster secret, held only as the MAC key derived from it. It has no
/// `PartialEq` (comparisons go through constant-time proof checks) and prints as
/// `<redacted>`, so it can't end up in a log by accident.
#[derive(Clone)]
pub struct ClusterSecret {
    mac_key: [u8; 32],
}

impl ClusterSecret {
    /// Derives the MAC key from the configured secret (from `cluster_secret` or the file
    /// named by `cluster_secret_file`). An empty secret is refused.
    pub fn new(secret: &[u8]) -> Result<ClusterSecret, AuthError> {
        if secret.is_empty() {
            return Err(AuthError::EmptySecret);
        }
        Ok(ClusterSecret {
            mac_key: blake3::derive_key(KEY_CONTEXT, secret),
        })
    }

    pub(crate) fn mac_key(&self) -> &[u8; 32] {
        &self.mac_key
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A handshake proof (a keyed MAC). Not secret: it travels on the wire. Its `PartialEq`
/// is constant time, because a proof is compared against one an attacker chose.
#[derive(Clone, Copy, Debug)]
pub struct Proof([u8; PROOF_BYTES]);

impl Proof {
    pub fn from_bytes(bytes: [u8; PROOF_BYTES]) -> Proof {
        Proof(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; PROOF_BYTES] {
        &self.0
    }
}

impl PartialEq for Proof {
    fn eq(&self, other: &Proof) -> bool {
        // blake3::Hash compares in constant time.
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}

impl Eq for Proof {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = ClusterSecret::new(b"hunter2").unwrap();
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        let token = ClientAuthToken::new(b"tok-123").unwrap();
        assert_eq!(format!("{token:?}"), "<redacted>");
        assert_eq!(format!("{token}"), "<redacted>");
    }

    #[test]
    fn empty_secret_name_and_token_are_refused() {
        assert!(matches!(
            ClusterSecret::new(b""),
            Err(AuthError::EmptySecret)
        ));
        assert_eq!(ClusterName::new(""), Err(AuthError::ClusterNameEmpty));
        assert_eq!(
            ClusterName::new(&"a".repeat(256)),
            Err(AuthError::ClusterNameTooLong { len_bytes: 256 })
        );
        assert!(matches!(
            ClientAuthToken::new(b""),
            Err(AuthError::EmptyToken)
        ));
    }

    #[test]
    fn fresh_nonces_differ() {
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }

    #[test]
    fn proof_equality_compares_all_bytes() {
        let a = Proof::from_bytes([7; 32]);
        let mut other = [7; 32];
        other[31] = 8;
        assert_eq!(a, Proof::from_bytes([7; 32]));
        assert_ne!(a, Proof::from_bytes(other));
    }
}

//! The handshake messages and their byte layout. This module owns encoding and decoding
//! only; it never decides whether a message is acceptable (that is the state machines'
//! job in `handshake`). Decoding untrusted bytes never panics and never allocates more
//! than [`MESSAGE_BYTES_MAX`].

use super::{AuthError, ClusterName, NodeId, Nonce, Proof, CLUSTER_NAME_BYTES_MAX, NONCE_BYTES};
use crate::conflict::ConflictMode;

/// The four bytes every handshake message starts with ("RingKv AUth").
pub const MAGIC: [u8; 4] = *b"RKAU";

/// Version of the byte layout below. A decoder refuses any other value, so a future
/// layout can be introduced without being misread. Version 2 added the conflict mode to
/// `Hello`, `Challenge` and the conflict-mode `Refuse`; version 1 messages are refused.
pub const FORMAT_VERSION: u8 = 2;

/// Version of the handshake protocol carried in `Hello` and bound into both proofs, so
/// a peer cannot be talked down to an older protocol by rewriting the field. Version 2
/// binds the conflict mode into the proofs.
pub const PROTOCOL_VERSION: u16 = 2;

/// Bytes before the body: magic, format version, kind.
pub const HEADER_BYTES: usize = MAGIC.len() + 2;

/// Length of the largest message (a `Challenge` with the longest cluster name). Any
/// input longer than this is refused before it is looked at.
pub const MESSAGE_BYTES_MAX: usize =
    HEADER_BYTES + 1 + CLUSTER_NAME_BYTES_MAX + 8 + NONCE_BYTES + 1 + super::PROOF_BYTES;

const KIND_HELLO: u8 = 1;
const KIND_CHALLENGE: u8 = 2;
const KIND_RESPONSE: u8 = 3;
const KIND_WELCOME: u8 = 4;
const KIND_REFUSE: u8 = 5;

/// Wire code of a conflict mode (one byte): stable numbers, unknown codes fail to decode.
pub fn conflict_mode_code(mode: ConflictMode) -> u8 {
    match mode {
        ConflictMode::Lww => 1,
        ConflictMode::Causal => 2,
    }
}

fn conflict_mode_from_code(code: u8) -> Result<ConflictMode, AuthError> {
    match code {
        1 => Ok(ConflictMode::Lww),
        2 => Ok(ConflictMode::Causal),
        other => Err(AuthError::UnknownConflictMode(other)),
    }
}

/// The config spelling of a conflict mode, for logs.
pub fn conflict_mode_name(mode: ConflictMode) -> &'static str {
    match mode {
        ConflictMode::Lww => "lww",
        ConflictMode::Causal => "causal",
    }
}

/// Why a handshake was refused, as told to the peer. Deliberately coarse: a bad proof is
/// `Unauthenticated` whichever side or field caused it, so a prober learns nothing about
/// which check failed. The precise cause stays local in [`super::Failure`].
///
/// Wire codes are stable numbers (one byte); unknown codes fail to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Handshake protocol version not spoken here. Code 1.
    Version,
    /// The peer belongs to another cluster. Code 2.
    ClusterName,
    /// A proof did not verify (wrong secret, replay, reflection) or a nonce was reused.
    /// Code 3.
    Unauthenticated,
    /// A message that is not allowed in the current state, or bytes that do not decode.
    /// Code 4.
    Protocol,
    /// The peer has our own node id: we connected to ourselves. Code 5.
    SelfConnection,
    /// The handshake did not finish in time. Code 6.
    Timeout,
    /// The peer runs another `conflict_mode`; `sender` is the refusing node's own mode,
    /// so the refused side can name both in its log. Code 7, followed on the wire by the
    /// sender's mode code. A cluster runs one mode: nodes of two modes would merge one
    /// key's versions by different rules.
    ConflictMode { sender: ConflictMode },
}

impl RefuseReason {
    /// Every reason value, in code order (the conflict-mode reason once per mode), for
    /// tests.
    pub const ALL: [RefuseReason; 8] = [
        RefuseReason::Version,
        RefuseReason::ClusterName,
        RefuseReason::Unauthenticated,
        RefuseReason::Protocol,
        RefuseReason::SelfConnection,
        RefuseReason::Timeout,
        RefuseReason::ConflictMode {
            sender: ConflictMode::Lww,
        },
        RefuseReason::ConflictMode {
            sender: ConflictMode::Causal,
        },
    ];

    pub fn code(self) -> u8 {
        match self {
            RefuseReason::Version => 1,
            RefuseReason::ClusterName => 2,
            RefuseReason::Unauthenticated => 3,
            RefuseReason::Protocol => 4,
            RefuseReason::SelfConnection => 5,
            RefuseReason::Timeout => 6,
            RefuseReason::ConflictMode { .. } => 7,
        }
    }

    /// The reason with this code, for the codes that carry nothing more (not 7, whose
    /// mode byte follows on the wire).
    pub fn from_code(code: u8) -> Option<RefuseReason> {
        RefuseReason::ALL
            .into_iter()
            .filter(|r| !matches!(r, RefuseReason::ConflictMode { .. }))
            .find(|r| r.code() == code)
    }

    /// Short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Version => "version",
            RefuseReason::ClusterName => "cluster_name",
            RefuseReason::Unauthenticated => "unauthenticated",
            RefuseReason::Protocol => "protocol",
            RefuseReason::SelfConnection => "self_connection",
            RefuseReason::Timeout => "timeout",
            RefuseReason::ConflictMode { .. } => "conflict_mode",
        }
    }
}

// By hand: `ConflictMode` is not `Hash`; the wire bytes identify a reason.
impl std::hash::Hash for RefuseReason {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.code().hash(state);
        if let RefuseReason::ConflictMode { sender } = self {
            conflict_mode_code(*sender).hash(state);
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One handshake message. Self-contained bytes: another layer (a FlatBuffers frame) may
/// carry them, but nothing here depends on it.
///
/// Layout (all integers little-endian):
///
/// ```text
/// offset  size  field
/// 0       4     magic "RKAU"
/// 4       1     format version = 1
/// 5       1     kind: 1 Hello, 2 Challenge, 3 Response, 4 Welcome, 5 Refuse
/// 6       ..    body, by kind:
///
/// Hello      u16 protocol_version | u8 name_len (1..=255) | name (UTF-8)
///            | u64 node_id | 32 nonce_i | u8 conflict_mode
/// Challenge  u8 name_len (1..=255) | name (UTF-8) | u64 node_id | 32 nonce_a
///            | u8 conflict_mode | 32 proof_a
/// Response   32 proof_i
/// Welcome    (empty)
/// Refuse     u8 reason code (see RefuseReason)
///            | u8 conflict_mode (only after reason code 7: the sender's mode)
///
/// conflict_mode: 1 lww, 2 causal (see conflict_mode_code)
/// ```
///
/// A message is broken, and refused by [`AuthMessage::decode`], when it is longer than
/// [`MESSAGE_BYTES_MAX`], has the wrong magic, an unknown format version, kind, reason
/// code or conflict mode code, a cluster name that is empty or not UTF-8, is cut short, or has bytes after
/// its last field. There is no checksum: the proofs are MACs over everything that
/// matters, and the transport below checksums the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMessage {
    /// Initiator → acceptor: who I am, the conflict mode I run, and my fresh nonce.
    Hello {
        version: u16,
        cluster_name: ClusterName,
        node_id: NodeId,
        nonce: Nonce,
        conflict_mode: ConflictMode,
    },
    /// Acceptor → initiator: who I am, the conflict mode I run, my fresh nonce, and
    /// proof that I hold the secret.
    Challenge {
        cluster_name: ClusterName,
        node_id: NodeId,
        nonce: Nonce,
        conflict_mode: ConflictMode,
        proof: Proof,
    },
    /// Initiator → acceptor: proof that I hold the secret.
    Response { proof: Proof },
    /// Acceptor → initiator: you are in.
    Welcome,
    /// Either way: the handshake failed; the sender closes the connection.
    Refuse { reason: RefuseReason },
}

impl AuthMessage {
    /// Short name for logs and failure details.
    pub fn kind_name(&self) -> &'static str {
        match self {
            AuthMessage::Hello { .. } => "hello",
            AuthMessage::Challenge { .. } => "challenge",
            AuthMessage::Response { .. } => "response",
            AuthMessage::Welcome => "welcome",
            AuthMessage::Refuse { .. } => "refuse",
        }
    }

    fn kind_code(&self) -> u8 {
        match self {
            AuthMessage::Hello { .. } => KIND_HELLO,
            AuthMessage::Challenge { .. } => KIND_CHALLENGE,
            AuthMessage::Response { .. } => KIND_RESPONSE,
            AuthMessage::Welcome => KIND_WELCOME,
            AuthMessage::Refuse { .. } => KIND_REFUSE,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_BYTES_MAX);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.kind_code());
        match self {
            AuthMessage::Hello {
                version,
                cluster_name,
                node_id,
                nonce,
                conflict_mode,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                put_name(&mut out, cluster_name);
                out.extend_from_slice(&node_id.to_le_bytes());
                out.extend_from_slice(nonce);
                out.push(conflict_mode_code(*conflict_mode));
            }
            AuthMessage::Challenge {
                cluster_name,
                node_id,
                nonce,
                conflict_mode,
                proof,
            } => {
                put_name(&mut out, cluster_name);
                out.extend_from_slice(&node_id.to_le_bytes());
                out.extend_from_slice(nonce);
                out.push(conflict_mode_code(*conflict_mode));
                out.extend_from_slice(proof.as_bytes());
            }
            AuthMessage::Response { proof } => out.extend_from_slice(proof.as_bytes()),
            AuthMessage::Welcome => {}
            AuthMessage::Refuse { reason } => {
                out.push(reason.code());
                if let RefuseReason::ConflictMode { sender } = reason {
                    out.push(conflict_mode_code(*sender));
                }
            }
        }
        assert!(
            out.len() <= MESSAGE_BYTES_MAX,
            "encoded message over the bound"
        );
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<AuthMessage, AuthError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(AuthError::TooLong {
                len_bytes: bytes.len(),
            });
        }
        let mut reader = Reader { rest: bytes };
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(AuthError::BadMagic);
        }
        let format_version = reader.u8()?;
        if format_version != FORMAT_VERSION {
            return Err(AuthError::UnsupportedFormatVersion(format_version));
        }
        let message = match reader.u8()? {
            KIND_HELLO => AuthMessage::Hello {
                version: reader.u16()?,
                cluster_name: reader.name()?,
                node_id: reader.u64()?,
                nonce: reader.array()?,
                conflict_mode: conflict_mode_from_code(reader.u8()?)?,
            },
            KIND_CHALLENGE => AuthMessage::Challenge {
                cluster_name: reader.name()?,
                node_id: reader.u64()?,
                nonce: reader.array()?,
                conflict_mode: conflict_mode_from_code(reader.u8()?)?,
                proof: Proof::from_bytes(reader.array()?),
            },
            KIND_RESPONSE => AuthMessage::Response {
                proof: Proof::from_bytes(reader.array()?),
            },
            KIND_WELCOME => AuthMessage::Welcome,
            KIND_REFUSE => {
                let code = reader.u8()?;
                let reason = if code
                    == (RefuseReason::ConflictMode {
                        sender: ConflictMode::Lww,
                    })
                    .code()
                {
                    RefuseReason::ConflictMode {
                        sender: conflict_mode_from_code(reader.u8()?)?,
                    }
                } else {
                    RefuseReason::from_code(code).ok_or(AuthError::UnknownRefuseReason(code))?
                };
                AuthMessage::Refuse { reason }
            }
            other => return Err(AuthError::UnknownKind(other)),
        };
        if !reader.rest.is_empty() {
            return Err(AuthError::TrailingBytes {
                len_bytes: reader.rest.len(),
            });
        }
        Ok(message)
    }
}

fn put_name(out: &mut Vec<u8>, name: &ClusterName) {
    let bytes = name.as_str().as_bytes();
    // ClusterName::new enforces the bound, so the length always fits one byte.
    let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    assert_eq!(usize::from(len), bytes.len(), "cluster name over the bound");
    out.push(len);
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes: every read is bounds-checked and fails with
/// `Truncated` instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], AuthError> {
        if self.rest.len() < len {
            return Err(AuthError::Truncated);
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AuthError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, AuthError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, AuthError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, AuthError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<ClusterName, AuthError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| AuthError::ClusterNameNotUtf8)?;
        ClusterName::new(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    fn samples() -> Vec<AuthMessage> {
        let mut all = vec![
            AuthMessage::Hello {
                version: PROTOCOL_VERSION,
                cluster_name: name("prod"),
                node_id: 7,
                nonce: [1; 32],
                conflict_mode: ConflictMode::Lww,
            },
            AuthMessage::Challenge {
                cluster_name: name(&"x".repeat(CLUSTER_NAME_BYTES_MAX)),
                node_id: u64::MAX,
                nonce: [2; 32],
                conflict_mode: ConflictMode::Causal,
                proof: Proof::from_bytes([3; 32]),
            },
            AuthMessage::Response {
                proof: Proof::from_bytes([4; 32]),
            },
            AuthMessage::Welcome,
        ];
        all.extend(
            RefuseReason::ALL
                .into_iter()
                .map(|reason| AuthMessage::Refuse { reason }),
        );
        all
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = message.encode();
            assert!(bytes.len() <= MESSAGE_BYTES_MAX);
            assert_eq!(AuthMessage::decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn longest_challenge_is_exactly_the_bound() {
        let bytes = samples()[1].encode();
        assert_eq!(bytes.len(), MESSAGE_BYTES_MAX);
    }

    #[test]
    fn golden_hello_layout() {
        let bytes = AuthMessage::Hello {
            version: 2,
            cluster_name: name("ab"),
            node_id: 0x0102,
            nonce: [0xEE; 32],
            conflict_mode: ConflictMode::Causal,
        }
        .encode();
        let mut expected = vec![b'R', b'K', b'A', b'U', 2, 1, 2, 0, 2, b'a', b'b'];
        expected.extend_from_slice(&[0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0xEE; 32]);
        expected.push(2);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn golden_small_layouts() {
        assert_eq!(AuthMessage::Welcome.encode(), b"RKAU\x02\x04".to_vec());
        assert_eq!(
            AuthMessage::Refuse {
                reason: RefuseReason::SelfConnection
            }
            .encode(),
            b"RKAU\x02\x05\x05".to_vec()
        );
        assert_eq!(
            AuthMessage::Refuse {
                reason: RefuseReason::ConflictMode {
                    sender: ConflictMode::Lww
                }
            }
            .encode(),
            b"RKAU\x02\x05\x07\x01".to_vec()
        );
    }

    #[test]
    fn broken_messages_are_refused_with_a_clear_error() {
        let hello = samples()[0].encode();
        assert_eq!(AuthMessage::decode(&[]), Err(AuthError::Truncated));
        let mut bad_magic = hello.clone();
        bad_magic[0] = b'X';
        assert_eq!(AuthMessage::decode(&bad_magic), Err(AuthError::BadMagic));
        let mut future = hello.clone();
        future[4] = 3;
        assert_eq!(
            AuthMessage::decode(&future),
            Err(AuthError::UnsupportedFormatVersion(3))
        );
        let mut old = hello.clone();
        old[4] = 1;
        assert_eq!(
            AuthMessage::decode(&old),
            Err(AuthError::UnsupportedFormatVersion(1))
        );
        let mut mode = hello.clone();
        *mode.last_mut().unwrap() = 9;
        assert_eq!(
            AuthMessage::decode(&mode),
            Err(AuthError::UnknownConflictMode(9))
        );
        assert_eq!(
            AuthMessage::decode(b"RKAU\x02\x05\x07"),
            Err(AuthError::Truncated),
            "a conflict-mode refusal without its mode byte"
        );
        let mut kind = hello.clone();
        kind[5] = 9;
        assert_eq!(AuthMessage::decode(&kind), Err(AuthError::UnknownKind(9)));
        assert_eq!(
            AuthMessage::decode(&hello[..hello.len() - 1]),
            Err(AuthError::Truncated)
        );
        let mut trailing = hello.clone();
        trailing.push(0);
        assert_eq!(
            AuthMessage::decode(&trailing),
            Err(AuthError::TrailingBytes { len_bytes: 1 })
        );
        let mut empty_name = hello.clone();
        empty_name[8] = 0;
        assert_eq!(
            AuthMessage::decode(&empty_name),
            Err(AuthError::ClusterNameEmpty)
        );
        let mut not_utf8 = hello.clone();
        not_utf8[9] = 0xFF;
        assert_eq!(
            AuthMessage::decode(&not_utf8),
            Err(AuthError::ClusterNameNotUtf8)
        );
        assert_eq!(
            AuthMessage::decode(b"RKAU\x02\x05\x00"),
            Err(AuthError::UnknownRefuseReason(0))
        );
        let huge = vec![0u8; MESSAGE_BYTES_MAX + 1];
        assert_eq!(
            AuthMessage::decode(&huge),
            Err(AuthError::TooLong {
                len_bytes: MESSAGE_BYTES_MAX + 1
            })
        );
    }
}

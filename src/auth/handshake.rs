//! The two roles of the peer handshake as deterministic state machines: a message (or
//! its bytes, or a timeout) in, effects out. See the module doc of `auth` for the
//! message sequence. These machines never read a clock or an RNG and never do I/O.

use super::message::{
    conflict_mode_code, conflict_mode_name, AuthMessage, RefuseReason, PROTOCOL_VERSION,
};
use super::{AuthError, ClusterIdentity, ClusterName, ClusterSecret, NodeId, Nonce, Proof};
use crate::conflict::ConflictMode;

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this message to the peer.
    Send(AuthMessage),
    /// The peer proved it holds the secret: the connection may now carry other frames.
    /// Emitted once, and only by a machine that then reports `is_authenticated()`.
    Authenticated { peer_node_id: NodeId },
    /// The handshake failed: close the connection, log `failure` with the peer's
    /// address, and count it under `failure.reason()`.
    Close { failure: Failure },
}

/// Why a handshake failed, precisely, for the local log. Only its coarse
/// [`Failure::reason`] is sent to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer speaks another handshake protocol version.
    VersionMismatch { theirs: u16 },
    /// The peer belongs to another cluster.
    ClusterNameMismatch { theirs: ClusterName },
    /// The peer runs another `conflict_mode` (found by this side's check, or told by the
    /// peer's refusal, which names the peer's mode).
    ConflictModeMismatch {
        ours: ConflictMode,
        theirs: ConflictMode,
    },
    /// The peer has our node id: we dialled ourselves.
    SelfConnection,
    /// The peer's nonce equals ours: a reflection or a broken RNG.
    NonceReuse,
    /// The peer's proof did not verify (wrong secret, replayed or reflected proof).
    BadProof,
    /// A message that the current state does not accept.
    Unexpected {
        state: &'static str,
        message: &'static str,
    },
    /// Bytes that do not decode as a handshake message.
    Malformed(AuthError),
    /// The peer refused us.
    PeerRefused(RefuseReason),
    /// The driver's handshake deadline passed.
    Timeout,
}

impl Failure {
    /// The coarse reason told to the peer and used as the metric label.
    pub fn reason(&self) -> RefuseReason {
        match self {
            Failure::VersionMismatch { .. } => RefuseReason::Version,
            Failure::ClusterNameMismatch { .. } => RefuseReason::ClusterName,
            Failure::ConflictModeMismatch { ours, .. } => {
                RefuseReason::ConflictMode { sender: *ours }
            }
            Failure::SelfConnection => RefuseReason::SelfConnection,
            Failure::NonceReuse | Failure::BadProof => RefuseReason::Unauthenticated,
            Failure::Unexpected { .. } | Failure::Malformed(_) => RefuseReason::Protocol,
            Failure::PeerRefused(reason) => *reason,
            Failure::Timeout => RefuseReason::Timeout,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::VersionMismatch { theirs } => write!(
                f,
                "peer speaks handshake version {theirs}, we speak {PROTOCOL_VERSION}"
            ),
            // Debug formatting escapes whatever the peer put in its name.
            Failure::ClusterNameMismatch { theirs } => {
                write!(f, "peer is in cluster {:?}", theirs.as_str())
            }
            Failure::ConflictModeMismatch { ours, theirs } => write!(
                f,
                "peer runs conflict_mode {}, this node {}; refusing (a cluster runs one mode)",
                conflict_mode_name(*theirs),
                conflict_mode_name(*ours)
            ),
            Failure::SelfConnection => f.write_str("connected to ourselves"),
            Failure::NonceReuse => f.write_str("peer echoed our nonce"),
            Failure::BadProof => f.write_str("peer's proof of the cluster secret is wrong"),
            Failure::Unexpected { state, message } => {
                write!(f, "unexpected {message} while {state}")
            }
            Failure::Malformed(error) => write!(f, "malformed handshake message: {error}"),
            Failure::PeerRefused(reason) => write!(f, "peer refused us: {reason}"),
            Failure::Timeout => f.write_str("handshake timed out"),
        }
    }
}

/// What both roles share: drive by messages, ask for the outcome.
pub trait Handshake {
    fn on_message(&mut self, message: AuthMessage) -> Vec<Effect>;
    /// Decodes `bytes` and handles the message; undecodable bytes refuse the peer.
    fn on_bytes(&mut self, bytes: &[u8]) -> Vec<Effect>;
    /// The driver's deadline passed; refuses if still pending, else does nothing.
    fn on_timeout(&mut self) -> Vec<Effect>;
    fn is_authenticated(&self) -> bool;
    fn is_refused(&self) -> bool;
    /// The authenticated peer; None until then.
    fn peer_node_id(&self) -> Option<NodeId>;
    fn failure(&self) -> Option<&Failure>;
}

/// The role label inside a proof: the two roles' proofs over the same transcript differ,
/// so a proof can't be reflected back to its sender.
#[derive(Clone, Copy)]
enum Role {
    Acceptor,
    Initiator,
}

/// Everything both proofs cover. Built from the verifier's own values wherever it has
/// them, so a peer can't choose them.
struct Transcript<'a> {
    cluster_name: &'a ClusterName,
    /// Both sides checked that the modes agree, so this is either side's mode.
    conflict_mode: ConflictMode,
    acceptor_node_id: NodeId,
    initiator_node_id: NodeId,
    initiator_nonce: &'a Nonce,
    acceptor_nonce: &'a Nonce,
}

fn compute_proof(secret: &ClusterSecret, role: Role, transcript: &Transcript<'_>) -> Proof {
    let label: &[u8] = match role {
        Role::Acceptor => b"ringkv-auth-v2|acceptor|",
        Role::Initiator => b"ringkv-auth-v2|initiator|",
    };
    let name = transcript.cluster_name.as_str().as_bytes();
    // ClusterName bounds the length to one byte; the length prefix keeps the
    // concatenation unambiguous.
    let name_len = u8::try_from(name.len()).unwrap_or(u8::MAX);
    assert_eq!(usize::from(name_len), name.len());
    let mut hasher = blake3::Hasher::new_keyed(secret.mac_key());
    hasher.update(label);
    hasher.update(&PROTOCOL_VERSION.to_le_bytes());
    hasher.update(&[name_len]);
    hasher.update(name);
    hasher.update(&[conflict_mode_code(transcript.conflict_mode)]);
    hasher.update(&transcript.acceptor_node_id.to_le_bytes());
    hasher.update(&transcript.initiator_node_id.to_le_bytes());
    hasher.update(transcript.initiator_nonce);
    hasher.update(transcript.acceptor_nonce);
    Proof::from_bytes(*hasher.finalize().as_bytes())
}

/// This node's side of one handshake.
#[derive(Clone, Debug)]
struct Local {
    identity: ClusterIdentity,
    secret: ClusterSecret,
    node_id: NodeId,
    nonce: Nonce,
}

/// Where a machine is. `Refused` is terminal; `Authenticated` accepts no handshake
/// message (one arriving is a protocol violation and refuses).
#[derive(Clone, Debug)]
enum Phase<Step> {
    Pending(Step),
    Authenticated { peer_node_id: NodeId },
    Refused(Failure),
}

impl<Step> Phase<Step> {
    fn is_refused(&self) -> bool {
        matches!(self, Phase::Refused(_))
    }

    fn peer_node_id(&self) -> Option<NodeId> {
        match self {
            Phase::Authenticated { peer_node_id } => Some(*peer_node_id),
            _ => None,
        }
    }

    fn failure(&self) -> Option<&Failure> {
        match self {
            Phase::Refused(failure) => Some(failure),
            _ => None,
        }
    }

    /// Enters `Refused` and says what to do about it: tell the peer (unless it refused
    /// us first) and close.
    fn refuse(&mut self, failure: Failure) -> Vec<Effect> {
        let tell_peer = !matches!(failure, Failure::PeerRefused(_));
        self.end(failure, tell_peer)
    }

    /// The peer refused us: close without answering. A conflict-mode refusal names the
    /// peer's mode, so the failure names both.
    fn refused_by_peer(&mut self, reason: RefuseReason, ours: ConflictMode) -> Vec<Effect> {
        match reason {
            RefuseReason::ConflictMode { sender } if sender != ours => self.end(
                Failure::ConflictModeMismatch {
                    ours,
                    theirs: sender,
                },
                false,
            ),
            _ => self.end(Failure::PeerRefused(reason), false),
        }
    }

    fn end(&mut self, failure: Failure, tell_peer: bool) -> Vec<Effect> {
        assert!(!self.is_refused(), "a refused handshake refuses only once");
        let mut effects = Vec::with_capacity(2);
        if tell_peer {
            effects.push(Effect::Send(AuthMessage::Refuse {
                reason: failure.reason(),
            }));
        }
        effects.push(Effect::Close {
            failure: failure.clone(),
        });
        *self = Phase::Refused(failure);
        effects
    }
}

/// The dialling side's pending steps.
#[derive(Clone, Copy, Debug)]
enum InitiatorStep {
    AwaitChallenge,
    AwaitWelcome { peer_node_id: NodeId },
}

/// The dialling side: sends `Hello`, verifies the `Challenge`, sends `Response`,
/// waits for `Welcome`.
#[derive(Clone, Debug)]
pub struct Initiator {
    local: Local,
    phase: Phase<InitiatorStep>,
}

impl Initiator {
    /// Starts a handshake. `nonce` must be fresh (see [`super::fresh_nonce`]). The
    /// returned effects are `[Send(Hello)]`. `cluster` is a [`ClusterIdentity`] (a bare
    /// [`ClusterName`] means conflict mode lww).
    pub fn new(
        cluster: impl Into<ClusterIdentity>,
        secret: ClusterSecret,
        my_node_id: NodeId,
        nonce: Nonce,
    ) -> (Initiator, Vec<Effect>) {
        let identity = cluster.into();
        let hello = AuthMessage::Hello {
            version: PROTOCOL_VERSION,
            cluster_name: identity.name.clone(),
            node_id: my_node_id,
            nonce,
            conflict_mode: identity.conflict_mode,
        };
        let initiator = Initiator {
            local: Local {
                identity,
                secret,
                node_id: my_node_id,
                nonce,
            },
            phase: Phase::Pending(InitiatorStep::AwaitChallenge),
        };
        (initiator, vec![Effect::Send(hello)])
    }

    fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Pending(InitiatorStep::AwaitChallenge) => "awaiting challenge",
            Phase::Pending(InitiatorStep::AwaitWelcome { .. }) => "awaiting welcome",
            Phase::Authenticated { .. } => "authenticated",
            Phase::Refused(_) => "refused",
        }
    }

    fn on_challenge(
        &mut self,
        cluster_name: ClusterName,
        peer_node_id: NodeId,
        peer_nonce: Nonce,
        conflict_mode: ConflictMode,
        proof: Proof,
    ) -> Vec<Effect> {
        let local = &self.local;
        if cluster_name != local.identity.name {
            return self.phase.refuse(Failure::ClusterNameMismatch {
                theirs: cluster_name,
            });
        }
        if conflict_mode != local.identity.conflict_mode {
            return self.phase.refuse(Failure::ConflictModeMismatch {
                ours: local.identity.conflict_mode,
                theirs: conflict_mode,
            });
        }
        if peer_node_id == local.node_id {
            return self.phase.refuse(Failure::SelfConnection);
        }
        if peer_nonce == local.nonce {
            return self.phase.refuse(Failure::NonceReuse);
        }
        let transcript = Transcript {
            cluster_name: &local.identity.name,
            conflict_mode: local.identity.conflict_mode,
            acceptor_node_id: peer_node_id,
            initiator_node_id: local.node_id,
            initiator_nonce: &local.nonce,
            acceptor_nonce: &peer_nonce,
        };
        // Proof's PartialEq is constant time.
        if compute_proof(&local.secret, Role::Acceptor, &transcript) != proof {
            return self.phase.refuse(Failure::BadProof);
        }
        let response = AuthMessage::Response {
            proof: compute_proof(&local.secret, Role::Initiator, &transcript),
        };
        self.phase = Phase::Pending(InitiatorStep::AwaitWelcome { peer_node_id });
        vec![Effect::Send(response)]
    }

    /// Cheap checks after every step, kept in release builds.
    fn check_invariants(&self) {
        match self.phase {
            Phase::Pending(InitiatorStep::AwaitWelcome { peer_node_id })
            | Phase::Authenticated { peer_node_id } => {
                assert_ne!(peer_node_id, self.local.node_id, "peer is never ourselves");
            }
            Phase::Pending(InitiatorStep::AwaitChallenge) | Phase::Refused(_) => {}
        }
    }
}

impl Handshake for Initiator {
    fn on_message(&mut self, message: AuthMessage) -> Vec<Effect> {
        let effects = match (&self.phase, message) {
            (Phase::Refused(_), _) => Vec::new(),
            (_, AuthMessage::Refuse { reason }) => {
                let ours = self.local.identity.conflict_mode;
                self.phase.refused_by_peer(reason, ours)
            }
            (
                Phase::Pending(InitiatorStep::AwaitChallenge),
                AuthMessage::Challenge {
                    cluster_name,
                    node_id,
                    nonce,
                    conflict_mode,
                    proof,
                },
            ) => self.on_challenge(cluster_name, node_id, nonce, conflict_mode, proof),
            (
                Phase::Pending(InitiatorStep::AwaitWelcome { peer_node_id }),
                AuthMessage::Welcome,
            ) => {
                let peer_node_id = *peer_node_id;
                self.phase = Phase::Authenticated { peer_node_id };
                vec![Effect::Authenticated { peer_node_id }]
            }
            (_, message) => {
                let failure = Failure::Unexpected {
                    state: self.state_name(),
                    message: message.kind_name(),
                };
                self.phase.refuse(failure)
            }
        };
        self.check_invariants();
        effects
    }

    fn on_bytes(&mut self, bytes: &[u8]) -> Vec<Effect> {
        if self.phase.is_refused() {
            return Vec::new();
        }
        match AuthMessage::decode(bytes) {
            Ok(message) => self.on_message(message),
            Err(error) => self.phase.refuse(Failure::Malformed(error)),
        }
    }

    fn on_timeout(&mut self) -> Vec<Effect> {
        match self.phase {
            Phase::Pending(_) => self.phase.refuse(Failure::Timeout),
            Phase::Authenticated { .. } | Phase::Refused(_) => Vec::new(),
        }
    }

    fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Authenticated { .. })
    }

    fn is_refused(&self) -> bool {
        self.phase.is_refused()
    }

    fn peer_node_id(&self) -> Option<NodeId> {
        self.phase.peer_node_id()
    }

    fn failure(&self) -> Option<&Failure> {
        self.phase.failure()
    }
}

/// The accepting side's pending steps.
#[derive(Clone, Copy, Debug)]
enum AcceptorStep {
    AwaitHello,
    AwaitResponse {
        peer_node_id: NodeId,
        peer_nonce: Nonce,
    },
}

/// The accepting side: waits for `Hello`, sends a `Challenge`, verifies the
/// `Response`, sends `Welcome`.
#[derive(Clone, Debug)]
pub struct Acceptor {
    local: Local,
    phase: Phase<AcceptorStep>,
}

impl Acceptor {
    /// Waits for a handshake. `nonce` must be fresh (see [`super::fresh_nonce`]). The
    /// returned effects are empty; they are returned for symmetry with
    /// [`Initiator::new`]. `cluster` as for [`Initiator::new`].
    pub fn new(
        cluster: impl Into<ClusterIdentity>,
        secret: ClusterSecret,
        my_node_id: NodeId,
        nonce: Nonce,
    ) -> (Acceptor, Vec<Effect>) {
        let acceptor = Acceptor {
            local: Local {
                identity: cluster.into(),
                secret,
                node_id: my_node_id,
                nonce,
            },
            phase: Phase::Pending(AcceptorStep::AwaitHello),
        };
        (acceptor, Vec::new())
    }

    fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Pending(AcceptorStep::AwaitHello) => "awaiting hello",
            Phase::Pending(AcceptorStep::AwaitResponse { .. }) => "awaiting response",
            Phase::Authenticated { .. } => "authenticated",
            Phase::Refused(_) => "refused",
        }
    }

    fn on_hello(
        &mut self,
        version: u16,
        cluster_name: ClusterName,
        peer_node_id: NodeId,
        peer_nonce: Nonce,
        conflict_mode: ConflictMode,
    ) -> Vec<Effect> {
        let local = &self.local;
        if version != PROTOCOL_VERSION {
            return self
                .phase
                .refuse(Failure::VersionMismatch { theirs: version });
        }
        if cluster_name != local.identity.name {
            return self.phase.refuse(Failure::ClusterNameMismatch {
                theirs: cluster_name,
            });
        }
        if conflict_mode != local.identity.conflict_mode {
            return self.phase.refuse(Failure::ConflictModeMismatch {
                ours: local.identity.conflict_mode,
                theirs: conflict_mode,
            });
        }
        if peer_node_id == local.node_id {
            return self.phase.refuse(Failure::SelfConnection);
        }
        if peer_nonce == local.nonce {
            return self.phase.refuse(Failure::NonceReuse);
        }
        let transcript = Transcript {
            cluster_name: &local.identity.name,
            conflict_mode: local.identity.conflict_mode,
            acceptor_node_id: local.node_id,
            initiator_node_id: peer_node_id,
            initiator_nonce: &peer_nonce,
            acceptor_nonce: &local.nonce,
        };
        let challenge = AuthMessage::Challenge {
            cluster_name: local.identity.name.clone(),
            node_id: local.node_id,
            nonce: local.nonce,
            conflict_mode: local.identity.conflict_mode,
            proof: compute_proof(&local.secret, Role::Acceptor, &transcript),
        };
        self.phase = Phase::Pending(AcceptorStep::AwaitResponse {
            peer_node_id,
            peer_nonce,
        });
        vec![Effect::Send(challenge)]
    }

    fn on_response(
        &mut self,
        peer_node_id: NodeId,
        peer_nonce: Nonce,
        proof: Proof,
    ) -> Vec<Effect> {
        let local = &self.local;
        let transcript = Transcript {
            cluster_name: &local.identity.name,
            conflict_mode: local.identity.conflict_mode,
            acceptor_node_id: local.node_id,
            initiator_node_id: peer_node_id,
            initiator_nonce: &peer_nonce,
            acceptor_nonce: &local.nonce,
        };
        // Proof's PartialEq is constant time.
        if compute_proof(&local.secret, Role::Initiator, &transcript) != proof {
            return self.phase.refuse(Failure::BadProof);
        }
        self.phase = Phase::Authenticated { peer_node_id };
        vec![
            Effect::Send(AuthMessage::Welcome),
            Effect::Authenticated { peer_node_id },
        ]
    }

    /// Cheap checks after every step, kept in release builds.
    fn check_invariants(&self) {
        match self.phase {
            Phase::Pending(AcceptorStep::AwaitResponse {
                peer_node_id,
                peer_nonce,
            }) => {
                assert_ne!(peer_node_id, self.local.node_id, "peer is never ourselves");
                assert_ne!(peer_nonce, self.local.nonce, "nonces never repeat");
            }
            Phase::Authenticated { peer_node_id } => {
                assert_ne!(peer_node_id, self.local.node_id, "peer is never ourselves");
            }
            Phase::Pending(AcceptorStep::AwaitHello) | Phase::Refused(_) => {}
        }
    }
}

impl Handshake for Acceptor {
    fn on_message(&mut self, message: AuthMessage) -> Vec<Effect> {
        let effects = match (&self.phase, message) {
            (Phase::Refused(_), _) => Vec::new(),
            (_, AuthMessage::Refuse { reason }) => {
                let ours = self.local.identity.conflict_mode;
                self.phase.refused_by_peer(reason, ours)
            }
            (
                Phase::Pending(AcceptorStep::AwaitHello),
                AuthMessage::Hello {
                    version,
                    cluster_name,
                    node_id,
                    nonce,
                    conflict_mode,
                },
            ) => self.on_hello(version, cluster_name, node_id, nonce, conflict_mode),
            (
                Phase::Pending(AcceptorStep::AwaitResponse {
                    peer_node_id,
                    peer_nonce,
                }),
                AuthMessage::Response { proof },
            ) => {
                let (peer_node_id, peer_nonce) = (*peer_node_id, *peer_nonce);
                self.on_response(peer_node_id, peer_nonce, proof)
            }
            (_, message) => {
                let failure = Failure::Unexpected {
                    state: self.state_name(),
                    message: message.kind_name(),
                };
                self.phase.refuse(failure)
            }
        };
        self.check_invariants();
        effects
    }

    fn on_bytes(&mut self, bytes: &[u8]) -> Vec<Effect> {
        if self.phase.is_refused() {
            return Vec::new();
        }
        match AuthMessage::decode(bytes) {
            Ok(message) => self.on_message(message),
            Err(error) => self.phase.refuse(Failure::Malformed(error)),
        }
    }

    fn on_timeout(&mut self) -> Vec<Effect> {
        match self.phase {
            Phase::Pending(_) => self.phase.refuse(Failure::Timeout),
            Phase::Authenticated { .. } | Phase::Refused(_) => Vec::new(),
        }
    }

    fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Authenticated { .. })
    }

    fn is_refused(&self) -> bool {
        self.phase.is_refused()
    }

    fn peer_node_id(&self) -> Option<NodeId> {
        self.phase.peer_node_id()
    }

    fn failure(&self) -> Option<&Failure> {
        self.phase.failure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_I: NodeId = 11;
    const ID_A: NodeId = 22;
    const NONCE_I: Nonce = [0x11; 32];
    const NONCE_A: Nonce = [0xAA; 32];

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes()).unwrap()
    }

    fn initiator(cluster: &str, key: &str, id: NodeId, nonce: Nonce) -> (Initiator, AuthMessage) {
        let (machine, effects) = Initiator::new(name(cluster), secret(key), id, nonce);
        let [Effect::Send(hello)] = effects.as_slice() else {
            panic!("initiator starts with exactly Send(Hello), got {effects:?}")
        };
        (machine, hello.clone())
    }

    fn acceptor(cluster: &str, key: &str, id: NodeId, nonce: Nonce) -> Acceptor {
        let (machine, effects) = Acceptor::new(name(cluster), secret(key), id, nonce);
        assert!(effects.is_empty());
        machine
    }

    fn sent(effects: &[Effect]) -> Vec<AuthMessage> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn only_send(effects: &[Effect]) -> AuthMessage {
        let [Effect::Send(message)] = effects else {
            panic!("expected exactly one Send, got {effects:?}")
        };
        message.clone()
    }

    fn assert_refused_with(effects: &[Effect], machine: &dyn Handshake, reason: RefuseReason) {
        assert!(machine.is_refused());
        assert!(!machine.is_authenticated());
        assert_eq!(machine.peer_node_id(), None);
        assert_eq!(machine.failure().map(Failure::reason), Some(reason));
        assert_eq!(
            effects,
            [
                Effect::Send(AuthMessage::Refuse { reason }),
                Effect::Close {
                    failure: machine.failure().unwrap().clone()
                }
            ]
        );
    }

    /// Runs the whole handshake; returns both machines and the messages in order.
    fn run(i_key: &str, a_key: &str) -> (Initiator, Acceptor, Vec<AuthMessage>) {
        let (mut i, hello) = initiator("prod", i_key, ID_I, NONCE_I);
        let mut a = acceptor("prod", a_key, ID_A, NONCE_A);
        let mut log = vec![hello.clone()];
        let mut to_acceptor = vec![hello];
        for _round in 0..4 {
            let mut to_initiator = Vec::new();
            for m in to_acceptor.drain(..) {
                let out = sent(&a.on_message(m));
                log.extend(out.iter().cloned());
                to_initiator.extend(out);
            }
            for m in to_initiator {
                let out = sent(&i.on_message(m));
                log.extend(out.iter().cloned());
                to_acceptor.extend(out);
            }
        }
        (i, a, log)
    }

    #[test]
    fn happy_path() {
        let (i, a, log) = run("s3cret", "s3cret");
        assert!(i.is_authenticated() && a.is_authenticated());
        assert_eq!(i.peer_node_id(), Some(ID_A));
        assert_eq!(a.peer_node_id(), Some(ID_I));
        let kinds: Vec<_> = log.iter().map(AuthMessage::kind_name).collect();
        assert_eq!(kinds, ["hello", "challenge", "response", "welcome"]);
    }

    #[test]
    fn happy_path_effects_in_order() {
        let (mut i, hello) = initiator("prod", "k", ID_I, NONCE_I);
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let challenge = only_send(&a.on_message(hello));
        let response = only_send(&i.on_message(challenge));
        assert!(!i.is_authenticated() && !i.is_refused());
        let effects = a.on_message(response);
        assert_eq!(
            effects,
            [
                Effect::Send(AuthMessage::Welcome),
                Effect::Authenticated { peer_node_id: ID_I }
            ]
        );
        assert_eq!(
            i.on_message(AuthMessage::Welcome),
            [Effect::Authenticated { peer_node_id: ID_A }]
        );
    }

    #[test]
    fn wrong_secret_initiator_refuses_challenge() {
        let (mut i, hello) = initiator("prod", "right", ID_I, NONCE_I);
        let mut a = acceptor("prod", "wrong", ID_A, NONCE_A);
        let challenge = only_send(&a.on_message(hello));
        let effects = i.on_message(challenge);
        assert_refused_with(&effects, &i, RefuseReason::Unauthenticated);
        assert_eq!(i.failure(), Some(&Failure::BadProof));
        // The acceptor, told so, closes without answering and never authenticates.
        let effects = a.on_message(sent(&effects)[0].clone());
        assert_eq!(
            effects,
            [Effect::Close {
                failure: Failure::PeerRefused(RefuseReason::Unauthenticated)
            }]
        );
        assert!(a.is_refused() && !a.is_authenticated());
    }

    #[test]
    fn wrong_secret_acceptor_refuses_response() {
        let mut a = acceptor("prod", "right", ID_A, NONCE_A);
        let (_, hello) = initiator("prod", "right", ID_I, NONCE_I);
        only_send(&a.on_message(hello));
        // A Response MACed with another secret over the very same transcript.
        let forged = compute_proof(
            &secret("wrong"),
            Role::Initiator,
            &Transcript {
                cluster_name: &name("prod"),
                conflict_mode: ConflictMode::Lww,
                acceptor_node_id: ID_A,
                initiator_node_id: ID_I,
                initiator_nonce: &NONCE_I,
                acceptor_nonce: &NONCE_A,
            },
        );
        let effects = a.on_message(AuthMessage::Response { proof: forged });
        assert_refused_with(&effects, &a, RefuseReason::Unauthenticated);
    }

    #[test]
    fn wrong_cluster_name_refused_by_each_side() {
        let (_, hello) = initiator("staging", "k", ID_I, NONCE_I);
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let effects = a.on_message(hello);
        assert_refused_with(&effects, &a, RefuseReason::ClusterName);
        assert_eq!(
            a.failure(),
            Some(&Failure::ClusterNameMismatch {
                theirs: name("staging")
            })
        );

        let (mut i, _) = initiator("prod", "k", ID_I, NONCE_I);
        let (_, hello_staging) = initiator("staging", "k", ID_I, NONCE_I);
        let mut staging = acceptor("staging", "k", ID_A, NONCE_A);
        let challenge = only_send(&staging.on_message(hello_staging));
        let effects = i.on_message(challenge);
        assert_refused_with(&effects, &i, RefuseReason::ClusterName);
    }

    #[test]
    fn wrong_version_refused() {
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let effects = a.on_message(AuthMessage::Hello {
            version: PROTOCOL_VERSION + 1,
            cluster_name: name("prod"),
            node_id: ID_I,
            nonce: NONCE_I,
            conflict_mode: ConflictMode::Lww,
        });
        assert_refused_with(&effects, &a, RefuseReason::Version);
    }

    #[test]
    fn replayed_response_from_earlier_session_refused() {
        // Session 1 completes; an eavesdropper keeps the Hello and the Response.
        let (_, _, log) = run("k", "k");
        let (old_hello, old_response) = (log[0].clone(), log[2].clone());
        // Session 2: the acceptor picks a fresh nonce; the replay no longer fits.
        let mut a = acceptor("prod", "k", ID_A, [0xBB; 32]);
        only_send(&a.on_message(old_hello));
        let effects = a.on_message(old_response);
        assert_refused_with(&effects, &a, RefuseReason::Unauthenticated);
    }

    #[test]
    fn reflected_proof_refused() {
        // The attacker sends the acceptor's own proof back as the Response.
        let (_, hello) = initiator("prod", "k", ID_I, NONCE_I);
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let AuthMessage::Challenge { proof, .. } = only_send(&a.on_message(hello)) else {
            panic!("expected a challenge")
        };
        let effects = a.on_message(AuthMessage::Response { proof });
        assert_refused_with(&effects, &a, RefuseReason::Unauthenticated);
    }

    #[test]
    fn self_connection_refused_by_each_side() {
        let (mut i, hello) = initiator("prod", "k", ID_A, NONCE_I);
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let effects = a.on_message(hello);
        assert_refused_with(&effects, &a, RefuseReason::SelfConnection);

        // An initiator that meets a challenge carrying its own id refuses too, even
        // when the proof is valid.
        let proof = compute_proof(
            &secret("k"),
            Role::Acceptor,
            &Transcript {
                cluster_name: &name("prod"),
                conflict_mode: ConflictMode::Lww,
                acceptor_node_id: ID_A,
                initiator_node_id: ID_A,
                initiator_nonce: &NONCE_I,
                acceptor_nonce: &NONCE_A,
            },
        );
        let effects = i.on_message(AuthMessage::Challenge {
            cluster_name: name("prod"),
            node_id: ID_A,
            nonce: NONCE_A,
            conflict_mode: ConflictMode::Lww,
            proof,
        });
        assert_refused_with(&effects, &i, RefuseReason::SelfConnection);
    }

    #[test]
    fn echoed_nonce_refused_even_with_valid_proof() {
        let (mut i, _) = initiator("prod", "k", ID_I, NONCE_I);
        let proof = compute_proof(
            &secret("k"),
            Role::Acceptor,
            &Transcript {
                cluster_name: &name("prod"),
                conflict_mode: ConflictMode::Lww,
                acceptor_node_id: ID_A,
                initiator_node_id: ID_I,
                initiator_nonce: &NONCE_I,
                acceptor_nonce: &NONCE_I,
            },
        );
        let effects = i.on_message(AuthMessage::Challenge {
            cluster_name: name("prod"),
            node_id: ID_A,
            nonce: NONCE_I,
            conflict_mode: ConflictMode::Lww,
            proof,
        });
        assert_refused_with(&effects, &i, RefuseReason::Unauthenticated);
        assert_eq!(i.failure(), Some(&Failure::NonceReuse));

        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let effects = a.on_message(AuthMessage::Hello {
            version: PROTOCOL_VERSION,
            cluster_name: name("prod"),
            node_id: ID_I,
            nonce: NONCE_A,
            conflict_mode: ConflictMode::Lww,
        });
        assert_eq!(a.failure(), Some(&Failure::NonceReuse));
        assert_refused_with(&effects, &a, RefuseReason::Unauthenticated);
    }

    #[test]
    fn duplicate_hello_and_messages_after_success_refused() {
        let (_, hello) = initiator("prod", "k", ID_I, NONCE_I);
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        only_send(&a.on_message(hello.clone()));
        let effects = a.on_message(hello.clone());
        assert_refused_with(&effects, &a, RefuseReason::Protocol);
        assert_eq!(
            a.failure(),
            Some(&Failure::Unexpected {
                state: "awaiting response",
                message: "hello"
            })
        );

        let (mut i, mut a, _) = run("k", "k");
        let effects = i.on_message(AuthMessage::Welcome);
        assert_refused_with(&effects, &i, RefuseReason::Protocol);
        let effects = a.on_message(hello);
        assert_refused_with(&effects, &a, RefuseReason::Protocol);
    }

    #[test]
    fn refused_is_terminal() {
        let (mut i, _) = initiator("prod", "k", ID_I, NONCE_I);
        let effects = i.on_message(AuthMessage::Welcome);
        assert_refused_with(&effects, &i, RefuseReason::Protocol);
        // Even the right messages move it no more.
        let (_, _, log) = run("k", "k");
        for message in log {
            assert!(i.on_message(message).is_empty());
            assert!(i.is_refused() && !i.is_authenticated());
        }
        assert!(i.on_bytes(b"garbage").is_empty());
        assert!(i.on_timeout().is_empty());
    }

    #[test]
    fn garbage_bytes_and_timeout_refuse() {
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let effects = a.on_bytes(b"GET / HTTP/1.1\r\n");
        assert_refused_with(&effects, &a, RefuseReason::Protocol);
        assert_eq!(a.failure(), Some(&Failure::Malformed(AuthError::BadMagic)));

        let (mut i, _) = initiator("prod", "k", ID_I, NONCE_I);
        let effects = i.on_timeout();
        assert_refused_with(&effects, &i, RefuseReason::Timeout);

        let (mut i, _, _) = run("k", "k");
        assert!(i.on_timeout().is_empty());
        assert!(i.is_authenticated());
    }

    #[test]
    fn bytes_path_authenticates() {
        let (mut i, hello) = initiator("prod", "k", ID_I, NONCE_I);
        let mut a = acceptor("prod", "k", ID_A, NONCE_A);
        let challenge = only_send(&a.on_bytes(&hello.encode()));
        let response = only_send(&i.on_bytes(&challenge.encode()));
        let effects = a.on_bytes(&response.encode());
        assert!(a.is_authenticated());
        let welcome = sent(&effects).remove(0);
        i.on_bytes(&welcome.encode());
        assert!(i.is_authenticated());
    }

    #[test]
    fn failure_display_names_the_cause_without_secrets() {
        let text = Failure::ClusterNameMismatch {
            theirs: name("evil\n[INFO] fake"),
        }
        .to_string();
        assert!(!text.contains('\n'), "peer text is escaped: {text}");
        assert_eq!(Failure::BadProof.reason(), RefuseReason::Unauthenticated);
        assert_eq!(Failure::NonceReuse.reason(), RefuseReason::Unauthenticated);
    }

    fn identity(mode: ConflictMode) -> ClusterIdentity {
        ClusterIdentity::new(name("prod"), mode)
    }

    #[test]
    fn conflict_mode_mismatch_refused_by_both_sides_naming_both_modes() {
        let mismatch_lww_side = Failure::ConflictModeMismatch {
            ours: ConflictMode::Lww,
            theirs: ConflictMode::Causal,
        };
        // The acceptor finds it in the Hello and says its own mode.
        let (mut i, effects) =
            Initiator::new(identity(ConflictMode::Causal), secret("k"), ID_I, NONCE_I);
        let hello = only_send(&effects);
        let (mut a, _) = Acceptor::new(identity(ConflictMode::Lww), secret("k"), ID_A, NONCE_A);
        let effects = a.on_message(hello);
        let reason = RefuseReason::ConflictMode {
            sender: ConflictMode::Lww,
        };
        assert_refused_with(&effects, &a, reason);
        assert_eq!(a.failure(), Some(&mismatch_lww_side));
        // The initiator, told so, names both modes too and closes without answering.
        let effects = i.on_message(sent(&effects)[0].clone());
        let mismatch_causal_side = Failure::ConflictModeMismatch {
            ours: ConflictMode::Causal,
            theirs: ConflictMode::Lww,
        };
        assert_eq!(
            effects,
            [Effect::Close {
                failure: mismatch_causal_side.clone()
            }]
        );
        assert!(i.is_refused() && !i.is_authenticated());
        assert_eq!(
            mismatch_causal_side.to_string(),
            "peer runs conflict_mode lww, this node causal; refusing (a cluster runs one mode)"
        );

        // An initiator meeting a Challenge of the other mode refuses it itself, even
        // with a valid proof over the acceptor's transcript.
        let (mut i, _) = Initiator::new(identity(ConflictMode::Lww), secret("k"), ID_I, NONCE_I);
        let proof = compute_proof(
            &secret("k"),
            Role::Acceptor,
            &Transcript {
                cluster_name: &name("prod"),
                conflict_mode: ConflictMode::Causal,
                acceptor_node_id: ID_A,
                initiator_node_id: ID_I,
                initiator_nonce: &NONCE_I,
                acceptor_nonce: &NONCE_A,
            },
        );
        let effects = i.on_message(AuthMessage::Challenge {
            cluster_name: name("prod"),
            node_id: ID_A,
            nonce: NONCE_A,
            conflict_mode: ConflictMode::Causal,
            proof,
        });
        assert_refused_with(
            &effects,
            &i,
            RefuseReason::ConflictMode {
                sender: ConflictMode::Lww,
            },
        );
        assert_eq!(i.failure(), Some(&mismatch_lww_side));
    }

    #[test]
    fn a_mode_rewritten_in_transit_fails_the_proof() {
        // A causal initiator's Hello rewritten to say lww gets past the lww acceptor's
        // mode check, but the acceptor's proof covers lww and the initiator checks it
        // against causal.
        let (mut i, effects) =
            Initiator::new(identity(ConflictMode::Causal), secret("k"), ID_I, NONCE_I);
        let AuthMessage::Hello {
            version,
            cluster_name,
            node_id,
            nonce,
            ..
        } = only_send(&effects)
        else {
            panic!("expected a hello")
        };
        let (mut a, _) = Acceptor::new(identity(ConflictMode::Lww), secret("k"), ID_A, NONCE_A);
        let challenge = only_send(&a.on_message(AuthMessage::Hello {
            version,
            cluster_name,
            node_id,
            nonce,
            conflict_mode: ConflictMode::Lww,
        }));
        let AuthMessage::Challenge {
            cluster_name,
            node_id,
            nonce,
            proof,
            ..
        } = challenge
        else {
            panic!("expected a challenge")
        };
        let effects = i.on_message(AuthMessage::Challenge {
            cluster_name,
            node_id,
            nonce,
            conflict_mode: ConflictMode::Causal,
            proof,
        });
        assert_refused_with(&effects, &i, RefuseReason::Unauthenticated);
        assert_eq!(i.failure(), Some(&Failure::BadProof));
    }

    #[test]
    fn same_mode_authenticates_in_both_modes() {
        for mode in [ConflictMode::Lww, ConflictMode::Causal] {
            let (mut i, effects) = Initiator::new(identity(mode), secret("k"), ID_I, NONCE_I);
            let (mut a, _) = Acceptor::new(identity(mode), secret("k"), ID_A, NONCE_A);
            let challenge = only_send(&a.on_message(only_send(&effects)));
            let response = only_send(&i.on_message(challenge));
            let welcome = sent(&a.on_message(response)).remove(0);
            i.on_message(welcome);
            assert!(i.is_authenticated() && a.is_authenticated(), "{mode:?}");
        }
    }
}

//! Property tests of the peer handshake (docs/design.md §3.7): every message order other
//! than the correct one ends in refusal; a strict prefix of it stays pending; nothing
//! moves a refused machine; honest peers authenticate exactly when they should; any
//! single bit flipped in transit defeats the handshake; the decoder never panics on any
//! bytes; two nodes of different conflict modes never authenticate, and both sides say
//! why.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use ringkv::auth::{
    Acceptor, AuthMessage, ClusterIdentity, ClusterName, ClusterSecret, Effect, Failure, Handshake,
    Initiator, NodeId, Nonce, Proof, RefuseReason, FORMAT_VERSION, MAGIC, MESSAGE_BYTES_MAX,
    PROTOCOL_VERSION,
};
use ringkv::conflict::ConflictMode;

/// The parameters of one honest session between initiator `id_i` and acceptor `id_a`.
#[derive(Clone, Debug)]
struct World {
    id_i: NodeId,
    id_a: NodeId,
    nonce_i: Nonce,
    nonce_a: Nonce,
    /// A third node and a third nonce, for foreign sessions.
    id_other: NodeId,
    nonce_other: Nonce,
    reason: RefuseReason,
    flip_bit: usize,
}

fn world() -> impl Strategy<Value = World> {
    (
        any::<[NodeId; 3]>(),
        any::<[Nonce; 3]>(),
        0..RefuseReason::ALL.len(),
        0..256usize,
    )
        .prop_filter("distinct ids and nonces", |(ids, nonces, _, _)| {
            ids[0] != ids[1]
                && ids[0] != ids[2]
                && ids[1] != ids[2]
                && nonces[0] != nonces[1]
                && nonces[0] != nonces[2]
                && nonces[1] != nonces[2]
        })
        .prop_map(|(ids, nonces, reason, flip_bit)| World {
            id_i: ids[0],
            id_a: ids[1],
            id_other: ids[2],
            nonce_i: nonces[0],
            nonce_a: nonces[1],
            nonce_other: nonces[2],
            reason: RefuseReason::ALL[reason],
            flip_bit,
        })
}

fn name(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

fn secret(s: &str) -> ClusterSecret {
    ClusterSecret::new(s.as_bytes()).unwrap()
}

const CLUSTER: &str = "prod";
const SECRET: &str = "correct horse battery staple";

fn sends(effects: &[Effect]) -> Vec<AuthMessage> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn identity(cluster: &str, mode: ConflictMode) -> ClusterIdentity {
    ClusterIdentity::new(name(cluster), mode)
}

fn mode_strategy() -> impl Strategy<Value = ConflictMode> {
    prop_oneof![Just(ConflictMode::Lww), Just(ConflictMode::Causal)]
}

fn other_mode(mode: ConflictMode) -> ConflictMode {
    match mode {
        ConflictMode::Lww => ConflictMode::Causal,
        ConflictMode::Causal => ConflictMode::Lww,
    }
}

fn hello(id: NodeId, nonce: Nonce, cluster: &str) -> AuthMessage {
    hello_in_mode(id, nonce, cluster, ConflictMode::Lww)
}

fn hello_in_mode(id: NodeId, nonce: Nonce, cluster: &str, mode: ConflictMode) -> AuthMessage {
    let (_, effects) = Initiator::new(identity(cluster, mode), secret(SECRET), id, nonce);
    sends(&effects).remove(0)
}

/// The Challenge an honest acceptor (with the given parameters) answers `hello` with.
fn challenge_to(
    hello: &AuthMessage,
    id_a: NodeId,
    nonce_a: Nonce,
    cluster: &str,
    key: &str,
) -> AuthMessage {
    challenge_in_mode(hello, id_a, nonce_a, cluster, key, ConflictMode::Lww)
}

fn challenge_in_mode(
    hello: &AuthMessage,
    id_a: NodeId,
    nonce_a: Nonce,
    cluster: &str,
    key: &str,
    mode: ConflictMode,
) -> AuthMessage {
    let (mut acceptor, _) = Acceptor::new(identity(cluster, mode), secret(key), id_a, nonce_a);
    let out = sends(&acceptor.on_message(hello.clone()));
    assert!(matches!(out.as_slice(), [AuthMessage::Challenge { .. }]));
    out[0].clone()
}

/// The Response an honest initiator gives to `challenge` after sending its Hello.
fn response_to(challenge: &AuthMessage, id_i: NodeId, nonce_i: Nonce, key: &str) -> AuthMessage {
    let (mut initiator, _) = Initiator::new(name(CLUSTER), secret(key), id_i, nonce_i);
    let out = sends(&initiator.on_message(challenge.clone()));
    assert!(matches!(out.as_slice(), [AuthMessage::Response { .. }]));
    out[0].clone()
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let bit = bit % (out.len() * 8);
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

fn flip_proof(proof: &Proof, bit: usize) -> Proof {
    let mut bytes = *proof.as_bytes();
    bytes[(bit / 8) % 32] ^= 1 << (bit % 8);
    Proof::from_bytes(bytes)
}

/// One thing arriving on the connection: a message, delivered decoded or as its bytes,
/// or raw bytes.
#[derive(Clone, Debug)]
enum Delivery {
    Message(AuthMessage),
    Bytes(Vec<u8>),
}

/// Messages an acceptor might receive. Index 0 is the correct Hello and index 1 the
/// Response that completes it; `ACCEPTOR_VALID_FIRST` are the Hellos it must accept
/// (and stay pending on). No other Response in the pool fits any of them.
fn acceptor_pool(w: &World) -> Vec<Delivery> {
    let hello_ok = hello(w.id_i, w.nonce_i, CLUSTER);
    let challenge_ok = challenge_to(&hello_ok, w.id_a, w.nonce_a, CLUSTER, SECRET);
    let response_ok = response_to(&challenge_ok, w.id_i, w.nonce_i, SECRET);
    // A Response from an earlier session: same Hello, another acceptor nonce.
    let old_challenge = challenge_to(&hello_ok, w.id_a, w.nonce_other, CLUSTER, SECRET);
    let replayed = response_to(&old_challenge, w.id_i, w.nonce_i, SECRET);
    // A Response from a peer with the wrong secret, over the right transcript.
    let wrong_key = "wrong secret";
    let wrong_challenge = challenge_to(&hello_ok, w.id_a, w.nonce_a, CLUSTER, wrong_key);
    let wrong_secret_response = response_to(&wrong_challenge, w.id_i, w.nonce_i, wrong_key);
    let AuthMessage::Challenge { proof: proof_a, .. } = challenge_ok.clone() else {
        unreachable!()
    };
    let AuthMessage::Response { proof: proof_i } = response_ok.clone() else {
        unreachable!()
    };
    let hello_bytes = hello_ok.encode();
    vec![
        Delivery::Message(hello_ok.clone()),
        Delivery::Message(response_ok),
        // Valid Hellos of other sessions: accepted, but nothing in the pool completes them.
        Delivery::Message(hello(w.id_i, w.nonce_other, CLUSTER)),
        Delivery::Message(hello(w.id_other, w.nonce_i, CLUSTER)),
        // Bad Hellos.
        Delivery::Message(hello(w.id_i, w.nonce_i, "staging")),
        Delivery::Message(hello_in_mode(
            w.id_i,
            w.nonce_i,
            CLUSTER,
            ConflictMode::Causal,
        )),
        Delivery::Message(AuthMessage::Hello {
            version: PROTOCOL_VERSION.wrapping_add(1),
            cluster_name: name(CLUSTER),
            node_id: w.id_i,
            nonce: w.nonce_i,
            conflict_mode: ConflictMode::Lww,
        }),
        Delivery::Message(hello(w.id_a, w.nonce_i, CLUSTER)),
        Delivery::Message(hello(w.id_i, w.nonce_a, CLUSTER)),
        Delivery::Bytes(flip(&hello_bytes, w.flip_bit % 48)),
        // Bad Responses.
        Delivery::Message(replayed),
        Delivery::Message(AuthMessage::Response { proof: proof_a }),
        Delivery::Message(wrong_secret_response),
        Delivery::Message(AuthMessage::Response {
            proof: flip_proof(&proof_i, w.flip_bit),
        }),
        // Wrong direction, refusals, garbage.
        Delivery::Message(challenge_ok),
        Delivery::Message(AuthMessage::Welcome),
        Delivery::Message(AuthMessage::Refuse { reason: w.reason }),
        Delivery::Bytes(b"not a handshake".to_vec()),
        Delivery::Bytes(Vec::new()),
    ]
}
const ACCEPTOR_VALID_FIRST: [usize; 3] = [0, 2, 3];

/// Messages an initiator (id_i, nonce_i) might receive. Index 0 is the correct
/// Challenge, index 1 the Welcome; `INITIATOR_VALID_FIRST` are Challenges it must
/// accept (index 2 comes from another honest acceptor, which is just as valid).
fn initiator_pool(w: &World) -> Vec<Delivery> {
    let hello_ok = hello(w.id_i, w.nonce_i, CLUSTER);
    let challenge_ok = challenge_to(&hello_ok, w.id_a, w.nonce_a, CLUSTER, SECRET);
    let response_ok = response_to(&challenge_ok, w.id_i, w.nonce_i, SECRET);
    let challenge_other_acceptor =
        challenge_to(&hello_ok, w.id_other, w.nonce_other, CLUSTER, SECRET);
    // A Challenge from an earlier session: it answered another initiator nonce.
    let replayed = challenge_to(
        &hello(w.id_i, w.nonce_other, CLUSTER),
        w.id_a,
        w.nonce_a,
        CLUSTER,
        SECRET,
    );
    let wrong_secret = challenge_to(&hello_ok, w.id_a, w.nonce_a, CLUSTER, "wrong secret");
    let other_cluster = challenge_to(
        &hello(w.id_i, w.nonce_i, "staging"),
        w.id_a,
        w.nonce_a,
        "staging",
        SECRET,
    );
    // An honest causal acceptor's answer to a causal Hello with our id and nonce: a
    // valid proof, but of the other mode.
    let other_mode = challenge_in_mode(
        &hello_in_mode(w.id_i, w.nonce_i, CLUSTER, ConflictMode::Causal),
        w.id_a,
        w.nonce_a,
        CLUSTER,
        SECRET,
        ConflictMode::Causal,
    );
    let AuthMessage::Challenge {
        cluster_name,
        node_id,
        nonce,
        conflict_mode,
        proof,
    } = challenge_ok.clone()
    else {
        unreachable!()
    };
    vec![
        Delivery::Message(challenge_ok.clone()),
        Delivery::Message(AuthMessage::Welcome),
        Delivery::Message(challenge_other_acceptor),
        Delivery::Message(replayed),
        Delivery::Message(wrong_secret),
        Delivery::Message(other_cluster),
        Delivery::Message(other_mode),
        // Our own Challenge with the mode field rewritten: the proof covers the mode.
        Delivery::Message(AuthMessage::Challenge {
            cluster_name: cluster_name.clone(),
            node_id,
            nonce,
            conflict_mode: ConflictMode::Causal,
            proof,
        }),
        // The right proof under a changed field: own id echoed, another nonce, a flipped
        // proof bit.
        Delivery::Message(AuthMessage::Challenge {
            cluster_name: cluster_name.clone(),
            node_id: w.id_i,
            nonce,
            conflict_mode,
            proof,
        }),
        Delivery::Message(AuthMessage::Challenge {
            cluster_name: cluster_name.clone(),
            node_id,
            nonce: w.nonce_other,
            conflict_mode,
            proof,
        }),
        Delivery::Message(AuthMessage::Challenge {
            cluster_name,
            node_id,
            nonce,
            conflict_mode,
            proof: flip_proof(&proof, w.flip_bit),
        }),
        Delivery::Bytes(flip(&challenge_ok.encode(), w.flip_bit)),
        // Wrong direction, refusals, garbage.
        Delivery::Message(hello_ok),
        Delivery::Message(response_ok),
        Delivery::Message(AuthMessage::Refuse { reason: w.reason }),
        Delivery::Bytes(b"RKAU\x02\x04trailing".to_vec()),
        Delivery::Bytes(vec![0xFF; MESSAGE_BYTES_MAX + 1]),
    ]
}
const INITIATOR_VALID_FIRST: [usize; 2] = [0, 2];

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Authenticated,
    Refused,
}

/// What must become of a role given `sequence`: only a pair in `completing`
/// authenticates, `[]` and `[valid first]` are pending, everything else is refused.
fn model(sequence: &[usize], valid_first: &[usize], completing: &[[usize; 2]]) -> Outcome {
    match sequence {
        [] => Outcome::Pending,
        [first] if valid_first.contains(first) => Outcome::Pending,
        [first, second] if completing.contains(&[*first, *second]) => Outcome::Authenticated,
        _ => Outcome::Refused,
    }
}

/// Feeds `sequence` to `machine`, checking the step invariants, and returns the outcome.
fn drive(
    machine: &mut dyn Handshake,
    pool: &[Delivery],
    sequence: &[(usize, bool)],
) -> Result<Outcome, TestCaseError> {
    let mut authenticated_effects = 0;
    for &(index, as_bytes) in sequence {
        let was_refused = machine.is_refused();
        let was_authenticated = machine.is_authenticated();
        let delivery = &pool[index];
        let effects = match delivery {
            Delivery::Message(m) if as_bytes => machine.on_bytes(&m.encode()),
            Delivery::Message(m) => machine.on_message(m.clone()),
            Delivery::Bytes(b) => machine.on_bytes(b),
        };
        prop_assert!(!(machine.is_refused() && machine.is_authenticated()));
        if was_refused {
            prop_assert!(effects.is_empty(), "a refused machine acts: {effects:?}");
            prop_assert!(machine.is_refused(), "a refused machine left Refused");
            continue;
        }
        let auth_here = effects
            .iter()
            .filter(|e| matches!(e, Effect::Authenticated { .. }))
            .count();
        authenticated_effects += auth_here;
        prop_assert_eq!(
            auth_here == 1,
            !was_authenticated && machine.is_authenticated()
        );
        if machine.is_refused() {
            let failure = machine.failure().unwrap().clone();
            let received = match delivery {
                Delivery::Message(m) => Ok(m.clone()),
                Delivery::Bytes(b) => AuthMessage::decode(b),
            };
            let from_peer = matches!(received, Ok(AuthMessage::Refuse { .. }));
            let mut expected = Vec::new();
            if !from_peer {
                expected.push(Effect::Send(AuthMessage::Refuse {
                    reason: failure.reason(),
                }));
            }
            expected.push(Effect::Close { failure });
            prop_assert_eq!(effects, expected);
        }
    }
    prop_assert!(authenticated_effects <= 1);
    Ok(if machine.is_authenticated() {
        Outcome::Authenticated
    } else if machine.is_refused() {
        Outcome::Refused
    } else {
        Outcome::Pending
    })
}

/// Sequences over a pool of `len`: fully random ones, the correct pair with a random
/// tail, and shuffles/duplicates of the two correct messages.
fn sequence(len: usize) -> impl Strategy<Value = Vec<(usize, bool)>> {
    let step = (0..len, any::<bool>());
    let correct = (0..2usize, any::<bool>());
    prop_oneof![
        prop::collection::vec(step.clone(), 0..6),
        (0..=2usize, prop::collection::vec(step, 0..3), any::<bool>()).prop_map(
            |(prefix, tail, as_bytes)| {
                let mut out: Vec<_> = (0..prefix).map(|i| (i, as_bytes)).collect();
                out.extend(tail);
                out
            }
        ),
        prop::collection::vec(correct, 0..5),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn acceptor_accepts_only_the_correct_order(
        (w, seq) in world().prop_flat_map(|w| {
            let len = acceptor_pool(&w).len();
            (Just(w), sequence(len))
        })
    ) {
        let pool = acceptor_pool(&w);
        let (mut acceptor, _) = Acceptor::new(name(CLUSTER), secret(SECRET), w.id_a, w.nonce_a);
        let outcome = drive(&mut acceptor, &pool, &seq)?;
        let indices: Vec<usize> = seq.iter().map(|s| s.0).collect();
        prop_assert_eq!(outcome, model(&indices, &ACCEPTOR_VALID_FIRST, &[[0, 1]]), "sequence {:?}", indices);
        if acceptor.is_authenticated() {
            prop_assert_eq!(acceptor.peer_node_id(), Some(w.id_i));
        }
    }

    #[test]
    fn initiator_accepts_only_the_correct_order(
        (w, seq) in world().prop_flat_map(|w| {
            let len = initiator_pool(&w).len();
            (Just(w), sequence(len))
        })
    ) {
        let pool = initiator_pool(&w);
        let (mut initiator, _) = Initiator::new(name(CLUSTER), secret(SECRET), w.id_i, w.nonce_i);
        let outcome = drive(&mut initiator, &pool, &seq)?;
        let indices: Vec<usize> = seq.iter().map(|s| s.0).collect();
        prop_assert_eq!(outcome, model(&indices, &INITIATOR_VALID_FIRST, &[[0, 1], [2, 1]]), "sequence {:?}", indices);
        if initiator.is_authenticated() {
            let expected = if indices[0] == 0 { w.id_a } else { w.id_other };
            prop_assert_eq!(initiator.peer_node_id(), Some(expected));
        }
    }

    /// Two honest machines over a perfect link: both authenticate exactly when cluster,
    /// secret and conflict mode match and the ids differ; otherwise both end refused.
    #[test]
    fn honest_peers_agree(
        w in world(),
        same_cluster in any::<bool>(),
        same_secret in any::<bool>(),
        same_id in prop::bool::weighted(0.2),
        i_mode in mode_strategy(),
        same_mode in any::<bool>(),
    ) {
        let id_a = if same_id { w.id_i } else { w.id_a };
        let a_cluster = if same_cluster { CLUSTER } else { "staging" };
        let a_secret = if same_secret { SECRET } else { "other" };
        let a_mode = if same_mode { i_mode } else { other_mode(i_mode) };
        let (mut i, first) =
            Initiator::new(identity(CLUSTER, i_mode), secret(SECRET), w.id_i, w.nonce_i);
        let (mut a, _) =
            Acceptor::new(identity(a_cluster, a_mode), secret(a_secret), id_a, w.nonce_a);
        let flipped = pump(&mut i, &mut a, sends(&first), None);
        prop_assert_eq!(flipped, None);
        let ok = same_cluster && same_secret && !same_id && same_mode;
        prop_assert_eq!(i.is_authenticated(), ok);
        prop_assert_eq!(a.is_authenticated(), ok);
        prop_assert_eq!(i.is_refused(), !ok);
        prop_assert_eq!(a.is_refused(), !ok);
        if ok {
            prop_assert_eq!(i.peer_node_id(), Some(id_a));
            prop_assert_eq!(a.peer_node_id(), Some(w.id_i));
        }
    }

    /// Nodes of different conflict modes, whatever else they share or not and whoever
    /// dials: neither ever authenticates, both end refused, and when they are of one
    /// cluster both failures name both modes (each side its own as `ours`).
    #[test]
    fn a_conflict_mode_mismatch_always_fails_on_both_sides(
        w in world(),
        i_mode in mode_strategy(),
        same_cluster in prop::bool::weighted(0.8),
        same_secret in any::<bool>(),
        same_id in prop::bool::weighted(0.1),
        as_bytes in any::<bool>(),
    ) {
        let a_mode = other_mode(i_mode);
        let id_a = if same_id { w.id_i } else { w.id_a };
        let a_cluster = if same_cluster { CLUSTER } else { "staging" };
        let a_secret = if same_secret { SECRET } else { "other" };
        let (mut i, first) =
            Initiator::new(identity(CLUSTER, i_mode), secret(SECRET), w.id_i, w.nonce_i);
        let (mut a, _) =
            Acceptor::new(identity(a_cluster, a_mode), secret(a_secret), id_a, w.nonce_a);
        if as_bytes {
            pump(&mut i, &mut a, sends(&first), None);
        } else {
            // Decoded messages, as an in-process transport would carry them.
            let mut to_acceptor = sends(&first);
            for _round in 0..4 {
                let mut to_initiator = Vec::new();
                for m in to_acceptor.drain(..) {
                    to_initiator.extend(sends(&a.on_message(m)));
                }
                for m in to_initiator {
                    to_acceptor.extend(sends(&i.on_message(m)));
                }
            }
        }
        prop_assert!(!i.is_authenticated() && i.is_refused());
        prop_assert!(!a.is_authenticated() && a.is_refused());
        prop_assert_eq!(i.peer_node_id(), None);
        prop_assert_eq!(a.peer_node_id(), None);
        if same_cluster {
            prop_assert_eq!(
                a.failure(),
                Some(&Failure::ConflictModeMismatch { ours: a_mode, theirs: i_mode })
            );
            prop_assert_eq!(
                i.failure(),
                Some(&Failure::ConflictModeMismatch { ours: i_mode, theirs: a_mode })
            );
            prop_assert_eq!(
                a.failure().unwrap().reason(),
                RefuseReason::ConflictMode { sender: a_mode }
            );
        }
    }

    /// One bit flipped anywhere in any one handshake message in transit: nobody ends
    /// authenticated, both end refused.
    #[test]
    fn a_flipped_bit_in_transit_defeats_the_handshake(
        w in world(),
        message_index in 0..4usize,
        bit in any::<usize>(),
    ) {
        let (mut i, first) = Initiator::new(name(CLUSTER), secret(SECRET), w.id_i, w.nonce_i);
        let (mut a, _) = Acceptor::new(name(CLUSTER), secret(SECRET), w.id_a, w.nonce_a);
        let flipped = pump(&mut i, &mut a, sends(&first), Some((message_index, bit)));
        prop_assert_eq!(flipped, Some(message_index));
        prop_assert!(!i.is_authenticated() && i.is_refused());
        prop_assert!(!a.is_authenticated() && a.is_refused());
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(message) = AuthMessage::decode(&bytes) {
            prop_assert_eq!(message.encode(), bytes);
        }
    }

    /// Random bodies behind a valid header reach every kind's decoder; anything that
    /// decodes re-encodes to the same bytes (one encoding per message).
    #[test]
    fn decoding_random_bodies_never_panics(
        kind in 0u8..7,
        body in prop::collection::vec(any::<u8>(), 0..360),
    ) {
        let mut bytes = MAGIC.to_vec();
        bytes.push(FORMAT_VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        if let Ok(message) = AuthMessage::decode(&bytes) {
            prop_assert_eq!(message.encode(), bytes.clone());
        }
        // Whatever arrives first, random bytes never authenticate anyone.
        let (mut acceptor, _) = Acceptor::new(name(CLUSTER), secret(SECRET), 2, [2; 32]);
        acceptor.on_bytes(&bytes);
        prop_assert!(!acceptor.is_authenticated());
        let (mut initiator, _) = Initiator::new(name(CLUSTER), secret(SECRET), 1, [1; 32]);
        initiator.on_bytes(&bytes);
        prop_assert!(!initiator.is_authenticated());
    }
}

/// Delivers messages between the two machines (as bytes) until neither has anything to
/// send. With `flip = Some((n, bit))`, flips `bit` of the n-th message sent; returns
/// the index of the message flipped, if any.
fn pump(
    initiator: &mut Initiator,
    acceptor: &mut Acceptor,
    first: Vec<AuthMessage>,
    flip_at: Option<(usize, usize)>,
) -> Option<usize> {
    let mut to_acceptor = first;
    let mut to_initiator: Vec<AuthMessage> = Vec::new();
    let mut sent = 0usize;
    let mut flipped = None;
    let mut carry = |m: &AuthMessage| {
        let bytes = m.encode();
        let bytes = match flip_at {
            Some((n, bit)) if n == sent => {
                flipped = Some(n);
                flip(&bytes, bit)
            }
            _ => bytes,
        };
        sent += 1;
        bytes
    };
    // Each message is answered by at most two; the handshake is four long, so a few
    // rounds reach quiescence. The bound keeps a broken machine from looping forever.
    for _round in 0..8 {
        if to_acceptor.is_empty() && to_initiator.is_empty() {
            break;
        }
        for m in std::mem::take(&mut to_acceptor) {
            let bytes = carry(&m);
            to_initiator.extend(sends(&acceptor.on_bytes(&bytes)));
        }
        for m in std::mem::take(&mut to_initiator) {
            let bytes = carry(&m);
            to_acceptor.extend(sends(&initiator.on_bytes(&bytes)));
        }
    }
    assert!(
        to_acceptor.is_empty() && to_initiator.is_empty(),
        "no quiescence"
    );
    flipped
}

//! Property tests of the conflict module: merge is a canonical join in both modes,
//! replicas converge whatever the delivery order, causal writes supersede exactly what
//! their context saw, HLC never goes backwards, and decoders survive any bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use ringkv::conflict::{
    causal, merge, merge_all, Actor, CausalContext, CausalState, Dot, Hlc, HlcClock, KeyState,
    LwwCell, WriteError,
};

// ---------------------------------------------------------------------------------------
// LWW

/// Small domains so that timestamp ties, equal values and delete/put ties are common.
fn lww_cell() -> impl Strategy<Value = LwwCell> {
    (
        0u64..4,
        proptest::option::of(proptest::collection::vec(0u8..3, 0..3)),
    )
        .prop_map(|(ts, value)| LwwCell {
            timestamp: Hlc(ts),
            value,
        })
}

fn lww_rank(c: &LwwCell) -> (Hlc, bool, Option<&[u8]>) {
    (c.timestamp, c.value.is_none(), c.value.as_deref())
}

/// A tiny deterministic PRNG (splitmix64) so a proptest-chosen seed fixes an order.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `items` in a seed-chosen order, with a few seed-chosen duplicates.
fn shuffled_with_duplicates<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut rng = SplitMix(seed);
    let mut out: Vec<T> = items.to_vec();
    if !items.is_empty() {
        for _ in 0..=rng.below(items.len()) {
            out.push(items[rng.below(items.len())].clone());
        }
    }
    for i in (1..out.len()).rev() {
        let j = rng.below(i + 1);
        out.swap(i, j);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lww_merge_is_a_join(a in lww_cell(), b in lww_cell(), c in lww_cell()) {
        let (a, b, c) = (KeyState::Lww(a), KeyState::Lww(b), KeyState::Lww(c));
        prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        prop_assert_eq!(merge(&a, &a), a.clone());
        let mut in_place = a.clone();
        in_place.merge_into(&b);
        prop_assert_eq!(&in_place, &merge(&a, &b));
        prop_assert_eq!(a.clone().merge_owned(b.clone()), merge(&a, &b));
    }

    #[test]
    fn lww_any_delivery_order_converges_to_the_highest_rank(
        cells in proptest::collection::vec(lww_cell(), 1..12),
        seed in any::<u64>(),
    ) {
        let states: Vec<KeyState> = cells.iter().cloned().map(KeyState::Lww).collect();
        let in_order = merge_all(&states).unwrap();
        let shuffled = shuffled_with_duplicates(&states, seed);
        let mut replica = shuffled[0].clone();
        for s in &shuffled[1..] {
            replica.merge_into(s);
        }
        prop_assert_eq!(&replica, &in_order);
        let best = cells.iter().max_by(|x, y| lww_rank(x).cmp(&lww_rank(y))).unwrap();
        prop_assert_eq!(replica, KeyState::Lww(best.clone()));
    }

    #[test]
    fn lww_encode_decode_round_trip(cell in lww_cell()) {
        let state = KeyState::Lww(cell);
        prop_assert_eq!(KeyState::decode(&state.to_bytes()), Ok(state));
    }
}

// ---------------------------------------------------------------------------------------
// Causal: a small simulated cluster of replicas producing reachable states.

const REPLICAS: usize = 3;
/// Large enough that the simulation never hits it; refusal is tested separately.
const SIM_MAX_SIBLINGS: usize = 1_000;

#[derive(Clone, Debug)]
enum SimOp {
    /// A client write coordinated by `replica`, carrying the read context of
    /// `context_from` (or none), a put or a delete.
    Write {
        replica: usize,
        context_from: Option<usize>,
        delete: bool,
    },
    /// Anti-entropy / read repair: `to` merges `from`'s state.
    Sync { from: usize, to: usize },
    /// The node restarts: new generation, same data.
    Restart { replica: usize },
}

fn sim_op(with_contexts: bool) -> impl Strategy<Value = SimOp> {
    let context = if with_contexts {
        proptest::option::of(0..REPLICAS).boxed()
    } else {
        Just(None).boxed()
    };
    prop_oneof![
        4 => (0..REPLICAS, context, proptest::bool::weighted(0.2)).prop_map(
            |(replica, context_from, delete)| SimOp::Write { replica, context_from, delete }
        ),
        3 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| SimOp::Sync { from, to }),
        1 => (0..REPLICAS).prop_map(|replica| SimOp::Restart { replica }),
    ]
}

struct Write {
    dot: Dot,
    value: Option<Vec<u8>>,
    client_context: CausalContext,
}

#[derive(Default)]
struct Sim {
    replicas: Vec<CausalState>,
    clocks: Vec<HlcClock>,
    generations: Vec<u64>,
    /// Every state any replica ever held, in the order they appeared.
    produced: Vec<CausalState>,
    writes: Vec<Write>,
}

impl Sim {
    fn run(ops: &[SimOp]) -> Result<Sim, TestCaseError> {
        let mut sim = Sim {
            replicas: vec![CausalState::new(); REPLICAS],
            clocks: vec![HlcClock::new(); REPLICAS],
            generations: vec![1; REPLICAS],
            ..Sim::default()
        };
        for (step, op) in ops.iter().enumerate() {
            match *op {
                SimOp::Write {
                    replica,
                    context_from,
                    delete,
                } => sim.write(step as u64, replica, context_from, delete)?,
                SimOp::Sync { from, to } => {
                    let source = sim.replicas[from].clone();
                    sim.replicas[to].merge_into(&source);
                    prop_assert_eq!(sim.replicas[to].invariants(), Ok(()));
                    sim.produced.push(sim.replicas[to].clone());
                }
                SimOp::Restart { replica } => sim.generations[replica] += 1,
            }
        }
        Ok(sim)
    }

    fn write(
        &mut self,
        now_ms: u64,
        replica: usize,
        context_from: Option<usize>,
        delete: bool,
    ) -> Result<(), TestCaseError> {
        let client_context = context_from
            .map(|r| self.replicas[r].read_context())
            .unwrap_or_default();
        let actor = Actor {
            node_id: replica as u64,
            generation: self.generations[replica],
        };
        // Unique bytes per write, so a surviving value names its write.
        let value = (!delete).then(|| (self.writes.len() as u32).to_le_bytes().to_vec());
        let timestamp = self.clocks[replica].now(now_ms);
        let local = &self.replicas[replica];
        let result = causal::write(
            local,
            &client_context,
            actor,
            timestamp,
            value.clone(),
            SIM_MAX_SIBLINGS,
        )
        .map_err(|e| TestCaseError::fail(format!("write refused: {e}")))?;
        prop_assert_eq!(result.invariants(), Ok(()));

        // The new sibling: a dot neither the replica nor the client had seen.
        let new: Vec<_> = result
            .siblings
            .iter()
            .filter(|s| !local.context.contains(&s.dot))
            .collect();
        prop_assert_eq!(new.len(), 1);
        let dot = new[0].dot;
        prop_assert_eq!(dot.actor, actor);
        prop_assert!(!client_context.contains(&dot));
        prop_assert_eq!(&new[0].value, &value);

        // Supersedes exactly the local siblings the client context saw, no others.
        for s in &local.siblings {
            let kept = result.siblings.contains(s);
            prop_assert_eq!(
                kept,
                !client_context.contains(&s.dot),
                "sibling {:?}",
                s.dot
            );
        }
        prop_assert_eq!(
            result.siblings.len(),
            new.len()
                + local
                    .siblings
                    .iter()
                    .filter(|s| !client_context.contains(&s.dot))
                    .count()
        );

        // Context = local ∪ client ∪ {new}, checked over every dot that exists.
        let all_dots = self.writes.iter().map(|w| w.dot).chain([dot]);
        for d in all_dots {
            let expected = local.context.contains(&d) || client_context.contains(&d) || d == dot;
            prop_assert_eq!(result.context.contains(&d), expected, "dot {:?}", d);
        }

        self.writes.push(Write {
            dot,
            value,
            client_context,
        });
        self.replicas[replica] = result;
        self.produced.push(self.replicas[replica].clone());
        Ok(())
    }

    /// The siblings a fully converged cluster must hold: every write whose dot no
    /// client context has seen, values and tombstones alike, in dot order.
    fn expected_survivors(&self) -> Vec<(Dot, Option<Vec<u8>>)> {
        let mut out: Vec<_> = self
            .writes
            .iter()
            .filter(|w| {
                !self
                    .writes
                    .iter()
                    .any(|o| o.client_context.contains(&w.dot))
            })
            .map(|w| (w.dot, w.value.clone()))
            .collect();
        out.sort_by_key(|(d, _)| *d);
        out
    }
}

fn survivors(state: &CausalState) -> Vec<(Dot, Option<Vec<u8>>)> {
    state
        .siblings
        .iter()
        .map(|s| (s.dot, s.value.clone()))
        .collect()
}

fn causal_pool(with_contexts: bool) -> impl Strategy<Value = Vec<SimOp>> {
    proptest::collection::vec(sim_op(with_contexts), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn causal_merge_is_a_join(
        ops in causal_pool(true),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 3),
    ) {
        let sim = Sim::run(&ops)?;
        // The empty state is a valid member of the pool too.
        let mut pool = sim.produced.clone();
        pool.push(CausalState::new());
        let a = picks[0].get(&pool).clone();
        let b = picks[1].get(&pool).clone();
        let c = picks[2].get(&pool).clone();

        let ab = causal::merge(&a, &b);
        prop_assert_eq!(ab.invariants(), Ok(()));
        prop_assert_eq!(&ab, &causal::merge(&b, &a));
        prop_assert_eq!(
            causal::merge(&ab, &c),
            causal::merge(&a, &causal::merge(&b, &c))
        );
        prop_assert_eq!(&causal::merge(&a, &a), &a);
        prop_assert_eq!(causal::merge_owned(a.clone(), b.clone()), ab.clone());
        // Equal states encode identically.
        let mut ab_bytes = Vec::new();
        ab.encode(&mut ab_bytes);
        let mut ba_bytes = Vec::new();
        causal::merge_owned(b, a).encode(&mut ba_bytes);
        prop_assert_eq!(ab_bytes, ba_bytes);
    }

    #[test]
    fn causal_any_delivery_order_converges_to_the_model(
        ops in causal_pool(true),
        seed in any::<u64>(),
    ) {
        let sim = Sim::run(&ops)?;
        let states: Vec<KeyState> =
            sim.produced.iter().cloned().map(KeyState::Causal).collect();
        prop_assume!(!states.is_empty());
        let in_order = merge_all(&states).unwrap();

        // A fresh replica receiving every state, in any order, some twice.
        let mut replica = KeyState::Causal(CausalState::new());
        for s in shuffled_with_duplicates(&states, seed) {
            replica = replica.merge_owned(s);
        }
        prop_assert_eq!(&replica, &in_order);

        // The simulated replicas, after full anti-entropy, agree too.
        let replicas: Vec<KeyState> =
            sim.replicas.iter().cloned().map(KeyState::Causal).collect();
        prop_assert_eq!(merge_all(&replicas).unwrap(), in_order.clone());

        let KeyState::Causal(converged) = &in_order else { unreachable!() };
        prop_assert_eq!(survivors(converged), sim.expected_survivors());
    }

    #[test]
    fn causal_writes_without_context_never_remove_anything(ops in causal_pool(false)) {
        let sim = Sim::run(&ops)?;
        let converged = sim
            .produced
            .iter()
            .fold(CausalState::new(), |acc, s| causal::merge(&acc, s));
        prop_assert_eq!(converged.siblings.len(), sim.writes.len());
        let mut all: Vec<_> = sim.writes.iter().map(|w| (w.dot, w.value.clone())).collect();
        all.sort_by_key(|(d, _)| *d);
        prop_assert_eq!(survivors(&converged), all);
    }

    #[test]
    fn causal_encode_decode_round_trip(ops in causal_pool(true)) {
        let sim = Sim::run(&ops)?;
        for state in &sim.produced {
            let key_state = KeyState::Causal(state.clone());
            let bytes = key_state.to_bytes();
            prop_assert_eq!(KeyState::decode(&bytes), Ok(key_state));
            let context = state.read_context();
            prop_assert_eq!(CausalContext::decode(&context.encode()), Ok(context));
        }
    }

    /// Corrupting a valid encoding (flip a byte, truncate) never panics, and anything
    /// still accepted is canonical (re-encodes to the same bytes) and valid.
    #[test]
    fn decoders_survive_corrupted_encodings(
        ops in causal_pool(true),
        pick in any::<proptest::sample::Index>(),
        at in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
        truncate in any::<bool>(),
    ) {
        let sim = Sim::run(&ops)?;
        prop_assume!(!sim.produced.is_empty());
        let state = pick.get(&sim.produced);
        for mut bytes in [KeyState::Causal(state.clone()).to_bytes(), state.context.encode()] {
            let i = at.index(bytes.len());
            if truncate {
                bytes.truncate(i);
            } else {
                bytes[i] ^= xor;
            }
            if let Ok(decoded) = KeyState::decode(&bytes) {
                prop_assert_eq!(decoded.to_bytes(), bytes.clone());
                if let KeyState::Causal(s) = &decoded {
                    prop_assert_eq!(s.invariants(), Ok(()));
                }
            }
            if let Ok(decoded) = CausalContext::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(state) = KeyState::decode(&bytes) {
            prop_assert_eq!(state.to_bytes(), bytes.clone());
        }
        if let Ok(context) = CausalContext::decode(&bytes) {
            prop_assert_eq!(context.encode(), bytes.clone());
        }
        let _ = CausalState::decode_bytes(&bytes);
    }

    /// Random bytes behind valid tags and version bytes reach the inner decoders.
    #[test]
    fn random_bodies_never_panic_decoders(
        tag in 0u8..4,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![tag, 1];
        bytes.extend_from_slice(&body);
        if let Ok(state) = KeyState::decode(&bytes) {
            prop_assert_eq!(state.to_bytes(), bytes.clone());
        }
        let _ = CausalContext::decode(&bytes[1..]);
    }
}

// ---------------------------------------------------------------------------------------
// max_siblings

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn writes_beyond_max_siblings_are_refused(max_siblings in 1usize..6) {
        let actor = Actor { node_id: 7, generation: 1 };
        let mut state = CausalState::new();
        for i in 0..max_siblings {
            state = causal::write(
                &state, &CausalContext::new(), actor, Hlc(i as u64), Some(vec![i as u8]),
                max_siblings,
            ).unwrap();
        }
        prop_assert_eq!(state.siblings.len(), max_siblings);
        let refused = causal::write(
            &state, &CausalContext::new(), actor, Hlc(99), Some(vec![99]), max_siblings,
        );
        prop_assert!(matches!(refused, Err(WriteError::TooManySiblings(_))), "{:?}", refused);
        // A write that saw one sibling replaces it and fits.
        let mut saw_one = CausalContext::new();
        saw_one.insert(state.siblings[0].dot);
        let accepted = causal::write(
            &state, &saw_one, actor, Hlc(99), Some(vec![99]), max_siblings,
        ).unwrap();
        prop_assert_eq!(accepted.siblings.len(), max_siblings);
    }
}

// ---------------------------------------------------------------------------------------
// HLC

#[derive(Clone, Debug)]
enum ClockOp {
    Now(u64),
    Observe {
        now_ms: u64,
        remote: Hlc,
        max_clock_skew_ms: u64,
    },
}

fn clock_op() -> impl Strategy<Value = ClockOp> {
    // Physical time wanders around 10_000 ms with jumps back and forth; remote clocks
    // are sometimes far ahead (rejected) and sometimes behind.
    prop_oneof![
        (0u64..20_000).prop_map(ClockOp::Now),
        (0u64..20_000, 0u64..40_000, any::<u16>(), 0u64..5_000).prop_map(
            |(now_ms, remote_ms, logical, max_clock_skew_ms)| ClockOp::Observe {
                now_ms,
                remote: Hlc::new(remote_ms, logical),
                max_clock_skew_ms,
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hlc_never_goes_backwards(
        start in proptest::option::of((0u64..20_000, any::<u16>())),
        ops in proptest::collection::vec(clock_op(), 1..64),
    ) {
        let mut clock = match start {
            Some((ms, logical)) => HlcClock::starting_after(Hlc::new(ms, logical)),
            None => HlcClock::new(),
        };
        let mut rejected = 0;
        for op in ops {
            let before = clock.last();
            match op {
                ClockOp::Now(now_ms) => {
                    let t = clock.now(now_ms);
                    prop_assert!(t > before);
                    prop_assert!(t >= Hlc::new(now_ms, 0));
                    prop_assert_eq!(clock.last(), t);
                }
                ClockOp::Observe { now_ms, remote, max_clock_skew_ms } => {
                    let too_far = remote.physical_ms() > now_ms + max_clock_skew_ms;
                    match clock.observe(now_ms, remote, max_clock_skew_ms) {
                        Ok(t) => {
                            prop_assert!(!too_far);
                            prop_assert!(t > before);
                            prop_assert!(t > remote);
                            prop_assert!(t >= Hlc::new(now_ms, 0));
                            prop_assert_eq!(clock.last(), t);
                        }
                        Err(e) => {
                            prop_assert!(too_far);
                            rejected += 1;
                            prop_assert_eq!(clock.last(), before);
                            prop_assert_eq!(e.ahead_ms, remote.physical_ms() - now_ms);
                        }
                    }
                }
            }
            prop_assert_eq!(clock.rejected_count(), rejected);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Golden bytes: the layouts documented on LwwCell, CausalState and CausalContext are on
// disk and on the wire; these pin them so a change cannot slip in unnoticed.

#[test]
fn golden_lww_layout() {
    let put = KeyState::Lww(LwwCell::put(Hlc(0x0102), b"ab".to_vec()));
    let expected: Vec<u8> = [
        &[1u8][..],                      // KeyState tag: LWW
        &[0x02, 0x01, 0, 0, 0, 0, 0, 0], // timestamp
        &[1],                            // flag: value
        &[2, 0, 0, 0],                   // length
        b"ab",
    ]
    .concat();
    assert_eq!(put.to_bytes(), expected);
    assert_eq!(KeyState::decode(&expected), Ok(put));

    let tombstone = KeyState::Lww(LwwCell::delete(Hlc(7)));
    let expected = [&[1u8][..], &[7, 0, 0, 0, 0, 0, 0, 0], &[0]].concat();
    assert_eq!(tombstone.to_bytes(), expected);
}

#[test]
fn golden_causal_layout() {
    let actor = Actor {
        node_id: 1,
        generation: 2,
    };
    let state = causal::write(
        &CausalState::new(),
        &CausalContext::new(),
        actor,
        Hlc(0x10),
        Some(b"v".to_vec()),
        4,
    )
    .unwrap();
    let dot: &[u8] = &[
        1, 0, 0, 0, 0, 0, 0, 0, // node_id
        2, 0, 0, 0, 0, 0, 0, 0, // generation
        1, 0, 0, 0, 0, 0, 0, 0, // counter
    ];
    let context_body: Vec<u8> = [
        &[1u8, 0, 0, 0][..], // prefix_count
        dot,                 // prefix entry (actor, 1)
        &[0, 0, 0, 0],       // cloud_count
    ]
    .concat();
    let expected: Vec<u8> = [
        &[2u8][..], // KeyState tag: causal
        &[1],       // layout version
        &context_body,
        &[1, 0, 0, 0],                // sibling_count
        dot,                          // sibling dot
        &[0x10, 0, 0, 0, 0, 0, 0, 0], // timestamp
        &[1],                         // flag: value
        &[1, 0, 0, 0],                // length
        b"v",
    ]
    .concat();
    let key_state = KeyState::Causal(state.clone());
    assert_eq!(key_state.to_bytes(), expected);
    assert_eq!(KeyState::decode(&expected), Ok(key_state));

    let context_bytes = [&[1u8][..], &context_body].concat();
    assert_eq!(state.read_context().encode(), context_bytes);
    assert_eq!(
        CausalContext::decode(&context_bytes),
        Ok(state.read_context())
    );
}

#[test]
fn non_canonical_encodings_are_rejected() {
    let dot = |counter: u8| -> Vec<u8> {
        [
            &[1u8, 0, 0, 0, 0, 0, 0, 0][..],
            &[2, 0, 0, 0, 0, 0, 0, 0],
            &[counter, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat()
    };
    // Cloud dot 2 with prefix 1 should have been folded into the prefix.
    let unfolded = [&[1u8, 1, 0, 0, 0][..], &dot(1), &[1, 0, 0, 0], &dot(2)].concat();
    assert!(CausalContext::decode(&unfolded).is_err());
    // A prefix of zero is never written.
    let zero = [&[1u8, 1, 0, 0, 0][..], &dot(0), &[0, 0, 0, 0]].concat();
    assert!(CausalContext::decode(&zero).is_err());
    // Unknown version byte.
    assert!(CausalContext::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    // A sibling whose dot the context has not seen.
    let orphan = [
        &[2u8, 1][..],
        &[0, 0, 0, 0],
        &[0, 0, 0, 0],
        &[1, 0, 0, 0],
        &dot(1),
        &[0; 8],
        &[0],
    ]
    .concat();
    assert!(KeyState::decode(&orphan).is_err());
}

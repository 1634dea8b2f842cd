//! Causal mode: a multi-value register as a dotted causal container (Almeida, Shoker,
//! Baquero, "Delta state replicated data types"; Preguiça et al., "Dotted version
//! vectors"). Each sibling carries the dot of the write that created it; the causal
//! context is every dot the state has seen. Join keeps a sibling iff both sides have it,
//! or the other side has not seen its dot.
//!
//! This module owns creating versions in causal mode ([`write`]), joining them
//! ([`merge`]) and their byte layouts (the state's and the client context's). It must
//! never drop a sibling whose dot the writer's context has not seen: when a write would
//! exceed `max_siblings` it is refused, not trimmed.
//!
//! Canonical form (kept by every function here, checked by [`CausalState::invariants`]):
//! siblings sorted by dot without duplicates; every sibling's dot is in the context;
//! the context is normalised (see [`CausalContext`]). So two states holding the same
//! information are `==` and encode to the same bytes.

use super::codec::Reader;
use super::{DecodeError, Hlc};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// The writer of a dot: a node id and its boot generation, so that a restarted node
/// never reuses a counter of its previous life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    pub node_id: u64,
    pub generation: u64,
}

/// One write event: the `counter`-th write of `actor` to this key. Counters start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

/// The set of dots a state has seen: a contiguous prefix per actor (`1..=prefix[a]`)
/// plus a cloud of dots beyond it.
///
/// Normalised form (kept by every method here): no prefix entry is 0; every cloud dot
/// has `counter > prefix[actor] + 1` (a cloud dot that extends the prefix is folded into
/// it, one already covered is dropped).
///
/// Client byte layout ([`CausalContext::encode`]), all integers little-endian; opaque
/// to clients, who only hand it back:
///
/// ```text
/// offset  size  field
/// 0       1     version = 1
/// 1       ...   context body
/// ```
///
/// Context body (shared with [`CausalState`]'s layout):
///
/// ```text
/// size  field
/// 4     prefix_count: u32
/// 24×n  prefix entries, strictly ascending by actor: node_id u64, generation u64,
///       counter u64 (≥ 1)
/// 4     cloud_count: u32
/// 24×m  cloud dots, strictly ascending: node_id u64, generation u64, counter u64
///       (counter > prefix of its actor + 1)
/// ```
///
/// Decoders accept only the canonical form, so any accepted bytes re-encode identically.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CausalContext {
    pub prefix: BTreeMap<Actor, u64>,
    pub cloud: BTreeSet<Dot>,
}

/// A concurrent value (or tombstone, `value: None`). Tombstones are versions: they
/// compete as siblings like any value until a write with a context supersedes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    pub dot: Dot,
    pub timestamp: Hlc,
    pub value: Option<Vec<u8>>,
}

/// The causal-mode state of one key.
///
/// Byte layout ([`CausalState::encode`], after the `KeyState` tag byte), all integers
/// little-endian:
///
/// ```text
/// size  field
/// 1     version = 1
/// ...   context body (see CausalContext)
/// 4     sibling_count: u32
///       then per sibling, strictly ascending by dot, each dot in the context:
/// 8       dot.actor.node_id u64
/// 8       dot.actor.generation u64
/// 8       dot.counter u64 (≥ 1)
/// 8       timestamp: Hlc as u64
/// 1       flag: 0 = tombstone (nothing follows), 1 = value
/// 4       value length u32 (flag 1 only)
/// len     value bytes      (flag 1 only)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CausalState {
    /// Sorted by dot, no duplicates.
    pub siblings: Vec<Sibling>,
    pub context: CausalContext,
}

/// A write was refused because it would leave more than `max_siblings` siblings.
/// The client should read, resolve the siblings, and write back with the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("write would leave {siblings} siblings, more than max_siblings = {max_siblings}")]
pub struct TooManySiblings {
    pub siblings: usize,
    pub max_siblings: usize,
}

/// Why [`write`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    TooManySiblings(#[from] TooManySiblings),
    /// The actor's counter for this key is at `u64::MAX` (only reachable with a forged
    /// client context); a new dot would reuse an old one, so the write is refused.
    #[error("dot counter of actor {actor:?} exhausted")]
    DotCounterExhausted { actor: Actor },
}

/// Layout version of [`CausalContext::encode`] and of [`CausalState::encode`].
const FORMAT_VERSION: u8 = 1;
/// Bytes of one encoded dot or prefix entry.
const DOT_BYTES: usize = 24;
/// Smallest encoded sibling: dot, timestamp, flag.
const SIBLING_MIN_BYTES: usize = DOT_BYTES + 8 + 1;

impl CausalContext {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty() && self.cloud.is_empty()
    }

    /// This context has seen `dot`.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter <= self.prefix_of(&dot.actor) || self.cloud.contains(dot)
    }

    /// The largest counter of `actor` seen (0 if none).
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        let in_cloud = self
            .cloud
            .range(
                Dot {
                    actor: *actor,
                    counter: 0,
                }..=Dot {
                    actor: *actor,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map_or(0, |d| d.counter);
        self.prefix_of(actor).max(in_cloud)
    }

    /// Add one dot, keeping the context normalised.
    pub fn insert(&mut self, dot: Dot) {
        let prefix = self.prefix_of(&dot.actor);
        if dot.counter <= prefix {
            return;
        }
        self.cloud.insert(dot);
        self.normalise();
    }

    /// `self = self ∪ other`, normalised.
    pub fn union_with(&mut self, other: &CausalContext) {
        for (actor, &counter) in &other.prefix {
            let entry = self.prefix.entry(*actor).or_insert(0);
            *entry = (*entry).max(counter);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.normalise();
    }

    /// Fold cloud dots that extend a prefix into it, drop covered ones, drop zero
    /// prefixes. Idempotent.
    pub fn normalise(&mut self) {
        self.prefix.retain(|_, counter| *counter > 0);
        if self.cloud.is_empty() {
            return;
        }
        // The cloud iterates by (actor, counter) ascending, so one pass folds every run
        // of consecutive dots onto its actor's prefix.
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let prefix = self.prefix_of(&dot.actor);
            if dot.counter <= prefix {
                continue;
            }
            if dot.counter - prefix == 1 {
                self.prefix.insert(dot.actor, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
    }

    /// The context is in normalised form.
    pub fn is_normalised(&self) -> bool {
        self.prefix.values().all(|&c| c > 0)
            && self.cloud.iter().all(|d| {
                let prefix = self.prefix_of(&d.actor);
                d.counter > prefix && d.counter - prefix >= 2
            })
    }

    /// Opaque bytes for clients (version byte, then the body).
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(1 + 8 + DOT_BYTES * (self.prefix.len() + self.cloud.len()));
        out.push(FORMAT_VERSION);
        self.encode_body(&mut out);
        out
    }

    /// Decode bytes from [`CausalContext::encode`], typically handed back by an untrusted
    /// client: bounded, panic-free, and only the canonical form is accepted.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Invalid("causal context version"));
        }
        let context = Self::decode_body(&mut reader)?;
        reader.finish()?;
        Ok(context)
    }

    fn prefix_of(&self, actor: &Actor) -> u64 {
        self.prefix.get(actor).copied().unwrap_or(0)
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        put_count(out, self.prefix.len());
        for (actor, &counter) in &self.prefix {
            put_dot(
                out,
                &Dot {
                    actor: *actor,
                    counter,
                },
            );
        }
        put_count(out, self.cloud.len());
        for dot in &self.cloud {
            put_dot(out, dot);
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut context = CausalContext::default();
        let prefix_count = read_count(r, DOT_BYTES)?;
        let mut previous: Option<Actor> = None;
        for _ in 0..prefix_count {
            let Dot { actor, counter } = read_dot(r)?;
            if previous.is_some_and(|p| p >= actor) {
                return Err(DecodeError::Invalid("context prefix not strictly sorted"));
            }
            if counter == 0 {
                return Err(DecodeError::Invalid("context prefix of zero"));
            }
            previous = Some(actor);
            context.prefix.insert(actor, counter);
        }
        let cloud_count = read_count(r, DOT_BYTES)?;
        let mut previous: Option<Dot> = None;
        for _ in 0..cloud_count {
            let dot = read_dot(r)?;
            if previous.is_some_and(|p| p >= dot) {
                return Err(DecodeError::Invalid("context cloud not strictly sorted"));
            }
            let prefix = context.prefix_of(&dot.actor);
            if dot.counter <= prefix || dot.counter - prefix == 1 {
                return Err(DecodeError::Invalid("context cloud not normalised"));
            }
            previous = Some(dot);
            context.cloud.insert(dot);
        }
        debug_assert!(context.is_normalised());
        Ok(context)
    }
}

/// The join of two states (a fresh value). Commutative, associative, idempotent, and
/// canonical: the result is identical whatever order states are merged in.
pub fn merge(a: &CausalState, b: &CausalState) -> CausalState {
    let mut out = a.clone();
    out.merge_into(b);
    out
}

/// The join of two states, consuming both: no value bytes are copied.
pub fn merge_owned(mut a: CausalState, b: CausalState) -> CausalState {
    let CausalState { siblings, context } = b;
    a.join(siblings.into_iter().map(Cow::Owned), &context);
    a
}

/// A client write (put: `Some(value)`, delete: `None`) coordinated by `actor`, which is
/// a replica of the key and holds `local`.
///
/// The new dot is `(actor, max counter of actor in local ∪ client_context + 1)`. The
/// result is `local` without the siblings whose dots `client_context` has seen, plus
/// the new sibling; its context is `local ∪ client_context ∪ {new dot}`. An empty
/// `client_context` therefore only adds. If the result would hold more than
/// `max_siblings` siblings the write is refused (never trimmed).
pub fn write(
    local: &CausalState,
    client_context: &CausalContext,
    actor: Actor,
    timestamp: Hlc,
    value: Option<Vec<u8>>,
    max_siblings: usize,
) -> Result<CausalState, WriteError> {
    debug_assert!(local.invariants().is_ok());
    let counter = local
        .context
        .max_counter(&actor)
        .max(client_context.max_counter(&actor))
        .checked_add(1)
        .ok_or(WriteError::DotCounterExhausted { actor })?;
    let dot = Dot { actor, counter };

    let kept = local
        .siblings
        .iter()
        .filter(|s| !client_context.contains(&s.dot))
        .count();
    let siblings_after = kept + 1;
    if siblings_after > max_siblings {
        return Err(TooManySiblings {
            siblings: siblings_after,
            max_siblings,
        }
        .into());
    }

    let mut siblings = Vec::with_capacity(siblings_after);
    siblings.extend(
        local
            .siblings
            .iter()
            .filter(|s| !client_context.contains(&s.dot))
            .cloned(),
    );
    // The new dot is above every dot of `actor` in the local context, so it is not
    // among the kept siblings; insert it at its sorted position.
    let at = siblings.partition_point(|s| s.dot < dot);
    siblings.insert(
        at,
        Sibling {
            dot,
            timestamp,
            value,
        },
    );
    let mut context = local.context.clone();
    context.union_with(client_context);
    context.insert(dot);

    let state = CausalState { siblings, context };
    debug_assert!(state.invariants().is_ok());
    Ok(state)
}

impl CausalState {
    pub fn new() -> Self {
        Self::default()
    }

    /// What a client gets with a read, to hand back with its next write.
    pub fn read_context(&self) -> CausalContext {
        self.context.clone()
    }

    /// The live (non-tombstone) sibling values, in dot order (deterministic).
    pub fn live_values(&self) -> Vec<&[u8]> {
        self.siblings
            .iter()
            .filter_map(|s| s.value.as_deref())
            .collect()
    }

    /// `self = merge(self, other)`; clones only the siblings taken from `other`.
    pub fn merge_into(&mut self, other: &CausalState) {
        self.join(other.siblings.iter().map(Cow::Borrowed), &other.context);
    }

    /// Check the canonical form (see the module doc). `Err` names the broken rule.
    pub fn invariants(&self) -> Result<(), &'static str> {
        if !self.context.is_normalised() {
            return Err("context not normalised");
        }
        if !self.siblings.windows(2).all(|w| w[0].dot < w[1].dot) {
            return Err("siblings not strictly sorted by dot");
        }
        if self.siblings.iter().any(|s| s.dot.counter == 0) {
            return Err("sibling dot counter of zero");
        }
        if !self.siblings.iter().all(|s| self.context.contains(&s.dot)) {
            return Err("sibling dot not in context");
        }
        Ok(())
    }

    pub fn timestamp_range(&self) -> (Hlc, Hlc) {
        let min = self
            .siblings
            .iter()
            .map(|s| s.timestamp)
            .min()
            .unwrap_or_default();
        let max = self
            .siblings
            .iter()
            .map(|s| s.timestamp)
            .max()
            .unwrap_or_default();
        (min, max)
    }

    pub fn size_bytes(&self) -> usize {
        self.siblings
            .iter()
            .map(|s| 48 + s.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            + 24 * (self.context.prefix.len() + self.context.cloud.len())
    }

    /// Append the layout documented on [`CausalState`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.invariants().is_ok());
        out.push(FORMAT_VERSION);
        self.context.encode_body(out);
        put_count(out, self.siblings.len());
        for sibling in &self.siblings {
            put_dot(out, &sibling.dot);
            out.extend_from_slice(&sibling.timestamp.0.to_le_bytes());
            match &sibling.value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_count(out, v.len());
                    out.extend_from_slice(v);
                }
            }
        }
    }

    /// Decode exactly `bytes` as produced by [`CausalState::encode`]. Bounded,
    /// panic-free, canonical form only.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let state = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(state)
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.u8()? != FORMAT_VERSION {
            return Err(DecodeError::Invalid("causal state version"));
        }
        let context = CausalContext::decode_body(r)?;
        let count = read_count(r, SIBLING_MIN_BYTES)?;
        let mut siblings: Vec<Sibling> = Vec::with_capacity(count);
        for _ in 0..count {
            let dot = read_dot(r)?;
            if siblings.last().is_some_and(|last| last.dot >= dot) {
                return Err(DecodeError::Invalid("siblings not strictly sorted"));
            }
            if dot.counter == 0 || !context.contains(&dot) {
                return Err(DecodeError::Invalid("sibling dot not in context"));
            }
            let timestamp = Hlc(r.u64()?);
            let value = match r.u8()? {
                0 => None,
                1 => {
                    let len = r.u32()? as usize;
                    Some(r.take(len)?.to_vec())
                }
                _ => return Err(DecodeError::Invalid("sibling value flag")),
            };
            siblings.push(Sibling {
                dot,
                timestamp,
                value,
            });
        }
        let state = CausalState { siblings, context };
        debug_assert!(state.invariants().is_ok());
        Ok(state)
    }

    /// The join, with `other`'s siblings given in dot order, borrowed or owned (so the
    /// owned path moves value bytes instead of copying them).
    fn join<'a>(
        &mut self,
        theirs: impl Iterator<Item = Cow<'a, Sibling>>,
        their_context: &CausalContext,
    ) {
        let mine = std::mem::take(&mut self.siblings);
        let mut merged = Vec::with_capacity(mine.len());
        let mut mine = mine.into_iter().peekable();
        let mut theirs = theirs.peekable();
        loop {
            let order = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(m), Some(t)) => m.dot.cmp(&t.dot),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(m) = mine.next() {
                        if !their_context.contains(&m.dot) {
                            merged.push(m);
                        }
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some(t) = theirs.next() {
                        if !self.context.contains(&t.dot) {
                            merged.push(t.into_owned());
                        }
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some(m), Some(t)) = (mine.next(), theirs.next()) {
                        // One dot is one write, so both copies should be equal. If
                        // corruption made them differ, pick by the LWW rank so that
                        // every replica still picks the same one.
                        if sibling_rank(&t) > sibling_rank(&m) {
                            merged.push(t.into_owned());
                        } else {
                            merged.push(m);
                        }
                    }
                }
            }
        }
        self.siblings = merged;
        self.context.union_with(their_context);
        debug_assert!(self.invariants().is_ok());
    }
}

fn sibling_rank(s: &Sibling) -> (Hlc, bool, Option<&[u8]>) {
    (s.timestamp, s.value.is_none(), s.value.as_deref())
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    // Counts are bounded far below u32 (max_siblings, value size limits); a larger one
    // is a bug upstream and silent truncation would corrupt the record.
    let count =
        u32::try_from(count).unwrap_or_else(|_| panic!("count {count} exceeds u32 in encoding"));
    out.extend_from_slice(&count.to_le_bytes());
}

fn put_dot(out: &mut Vec<u8>, dot: &Dot) {
    out.extend_from_slice(&dot.actor.node_id.to_le_bytes());
    out.extend_from_slice(&dot.actor.generation.to_le_bytes());
    out.extend_from_slice(&dot.counter.to_le_bytes());
}

fn read_dot(r: &mut Reader<'_>) -> Result<Dot, DecodeError> {
    let node_id = r.u64()?;
    let generation = r.u64()?;
    let counter = r.u64()?;
    Ok(Dot {
        actor: Actor {
            node_id,
            generation,
        },
        counter,
    })
}

/// Read a u32 count of items of at least `min_item_bytes` each, refusing counts that the
/// remaining bytes cannot hold, so a forged count can't make us allocate or loop long.
fn read_count(r: &mut Reader<'_>, min_item_bytes: usize) -> Result<usize, DecodeError> {
    let count = r.u32()? as usize;
    let had = r.remaining();
    if count > had / min_item_bytes {
        return Err(DecodeError::Truncated {
            needed: count.saturating_mul(min_item_bytes),
            had,
        });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(node_id: u64) -> Actor {
        Actor {
            node_id,
            generation: 1,
        }
    }

    fn dot(node_id: u64, counter: u64) -> Dot {
        Dot {
            actor: actor(node_id),
            counter,
        }
    }

    #[test]
    fn insert_folds_cloud_into_prefix() {
        let mut c = CausalContext::new();
        c.insert(dot(1, 3));
        c.insert(dot(1, 2));
        assert_eq!(c.cloud.len(), 2);
        assert!(c.prefix.is_empty());
        c.insert(dot(1, 1));
        assert!(c.cloud.is_empty());
        assert_eq!(c.prefix.get(&actor(1)), Some(&3));
        assert!(c.contains(&dot(1, 2)));
        assert!(!c.contains(&dot(1, 4)));
        assert_eq!(c.max_counter(&actor(1)), 3);
        c.insert(dot(1, 9));
        assert_eq!(c.max_counter(&actor(1)), 9);
        assert!(c.is_normalised());
    }

    #[test]
    fn write_without_context_adds_and_with_context_supersedes() {
        let a = write(
            &CausalState::new(),
            &CausalContext::new(),
            actor(1),
            Hlc(1),
            Some(b"a".to_vec()),
            8,
        )
        .expect("write a");
        let b = write(
            &a,
            &CausalContext::new(),
            actor(1),
            Hlc(2),
            Some(b"b".to_vec()),
            8,
        )
        .expect("write b");
        assert_eq!(b.live_values(), vec![b"a".as_slice(), b"b".as_slice()]);
        // A client that read only `a` replaces `a` and keeps `b`.
        let c = write(
            &b,
            &a.read_context(),
            actor(1),
            Hlc(3),
            Some(b"c".to_vec()),
            8,
        )
        .expect("write c");
        assert_eq!(c.live_values(), vec![b"b".as_slice(), b"c".as_slice()]);
        assert_eq!(c.siblings.last().map(|s| s.dot), Some(dot(1, 3)));
        // A delete with the full context leaves one tombstone sibling.
        let d = write(&c, &c.read_context(), actor(2), Hlc(4), None, 8).expect("delete");
        assert_eq!(d.siblings.len(), 1);
        assert!(d.live_values().is_empty());
    }

    #[test]
    fn write_refuses_beyond_max_siblings() {
        let one = write(
            &CausalState::new(),
            &CausalContext::new(),
            actor(1),
            Hlc(1),
            Some(vec![1]),
            1,
        )
        .expect("first write fits");
        let err = write(
            &one,
            &CausalContext::new(),
            actor(1),
            Hlc(2),
            Some(vec![2]),
            1,
        )
        .expect_err("second sibling refused");
        assert_eq!(
            err,
            WriteError::TooManySiblings(TooManySiblings {
                siblings: 2,
                max_siblings: 1
            })
        );
        // With the context the old sibling is replaced, so it fits.
        assert!(write(
            &one,
            &one.read_context(),
            actor(1),
            Hlc(2),
            Some(vec![2]),
            1
        )
        .is_ok());
    }

    /// A coordinator whose local copy lags its own actor's history (e.g. it lost the
    /// write to a crash before the commit log sync) must still not reuse a dot the
    /// client has seen.
    #[test]
    fn new_dot_is_above_client_context_for_own_actor() {
        let mut seen = CausalContext::new();
        seen.insert(dot(1, 5));
        let state = write(
            &CausalState::new(),
            &seen,
            actor(1),
            Hlc(1),
            Some(vec![1]),
            8,
        )
        .expect("write");
        assert_eq!(state.siblings.len(), 1);
        assert_eq!(state.siblings[0].dot, dot(1, 6));
        assert!(state.context.contains(&dot(1, 5)));
    }

    #[test]
    fn forged_counter_is_refused_not_wrapped() {
        let mut forged = CausalContext::new();
        forged.prefix.insert(actor(1), u64::MAX);
        assert_eq!(
            write(&CausalState::new(), &forged, actor(1), Hlc(1), None, 8),
            Err(WriteError::DotCounterExhausted { actor: actor(1) })
        );
    }

    #[test]
    fn context_round_trip_and_rejections() {
        let mut c = CausalContext::new();
        c.insert(dot(1, 1));
        c.insert(dot(2, 5));
        let bytes = c.encode();
        assert_eq!(CausalContext::decode(&bytes), Ok(c));
        assert!(CausalContext::decode(&[]).is_err());
        assert!(CausalContext::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // A huge count with no bytes behind it is refused before any allocation.
        assert!(matches!(
            CausalContext::decode(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}

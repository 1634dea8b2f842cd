//! Causal mode: a multi-value register as a dotted causal container (Almeida, Shoker,
//! Baquero, "Delta state replicated data types"). Each sibling carries the dot of the
//! write that created it; the causal context is every dot the state has seen.
//! Join keeps a sibling iff both sides have it, or the other side has not seen its dot.
//! (Stub types; the conflict helper implements them.)

use super::codec::Reader;
use super::{DecodeError, Hlc};
use std::collections::{BTreeMap, BTreeSet};

/// The writer of a dot: a node id and its boot generation, so that a restarted node
/// never reuses a counter of its previous life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    pub node_id: u64,
    pub generation: u64,
}

/// One write event: the `counter`-th write of `actor` to this key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

/// The set of dots a state has seen: a contiguous prefix per actor plus a cloud of
/// dots beyond it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CausalContext {
    pub prefix: BTreeMap<Actor, u64>,
    pub cloud: BTreeSet<Dot>,
}

/// A concurrent value (or tombstone, `value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    pub dot: Dot,
    pub timestamp: Hlc,
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CausalState {
    /// Sorted by dot, no duplicates.
    pub siblings: Vec<Sibling>,
    pub context: CausalContext,
}

pub fn merge(a: &CausalState, _b: &CausalState) -> CausalState {
    a.clone()
}

impl CausalState {
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
    pub fn encode(&self, _out: &mut Vec<u8>) {}
    pub(crate) fn decode(_r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Err(DecodeError::Invalid("causal mode not implemented"))
    }
}

//! The token ring: which nodes replicate which part of the 64-bit token space, and where
//! a new node places its tokens (docs/design.md §6.3).
//!
//! A vnode token `t` owns the range `(previous token, t]`, wrapping at `u64::MAX`. The
//! replicas of a key token are found by walking clockwise from the first vnode token
//! `>= token` (wrapping) and taking the first N distinct nodes, N = min(replication
//! factor, node count). A [`Ring`] is an immutable value built from (node → tokens); a
//! membership change builds a new one. This module owns placement only: it never
//! decides who is alive, never hashes keys (see `protocol::token`) and does no I/O.

use super::{RngLike, SplitMix64};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// A node's identity: random, persisted in its data directory.
pub type NodeId = u64;
/// A position on the ring. A key's token is xxh3-64 of the key.
pub type Token = u64;

/// Limit on vnodes per node, so a bad config or a hostile gossip peer cannot make ring
/// construction allocate without bound. Cassandra's historical default is 256.
pub const MAX_TOKENS_PER_NODE: usize = 4096;

/// The whole token space as a `u128` count, for range sizes (a single vnode owns all
/// 2^64 tokens, which does not fit a `u64`).
const TOKEN_SPACE: u128 = 1 << 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("token {token} is claimed by nodes {first} and {second}")]
    DuplicateToken {
        token: Token,
        first: NodeId,
        second: NodeId,
    },
    #[error("node {node} has {count} tokens; at most {MAX_TOKENS_PER_NODE} are allowed")]
    TooManyTokens { node: NodeId, count: usize },
}

/// One contiguous range `(start, end]` of the ring and its replicas, primary first.
/// When the ring has a single vnode, `start == end` and the range is the whole ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRange {
    pub start_exclusive: Token,
    pub end_inclusive: Token,
    pub replicas: Vec<NodeId>,
}

impl TokenRange {
    /// Number of tokens in the range (1..=2^64).
    pub fn size(&self) -> u128 {
        range_size(self.start_exclusive, self.end_inclusive)
    }
}

/// Tokens in `(start, end]`, wrapping; `start == end` is the whole ring.
fn range_size(start_exclusive: Token, end_inclusive: Token) -> u128 {
    match end_inclusive.wrapping_sub(start_exclusive) {
        0 => TOKEN_SPACE,
        size => u128::from(size),
    }
}

/// An immutable token ring. Lookups are a binary search over the sorted vnode list.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ring {
    /// Every vnode as (token, owner), sorted by token, tokens unique.
    vnodes: Vec<(Token, NodeId)>,
    /// The distinct owners, sorted. Nodes without tokens are not ring members.
    nodes: Vec<NodeId>,
}

impl Ring {
    /// Build a ring from each node's tokens. A node may appear more than once (its
    /// tokens are combined); nodes with no tokens are left out; a token claimed by two
    /// nodes is an error, because replica sets would then depend on input order.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = (NodeId, &'a [Token])>,
    ) -> Result<Ring, RingError> {
        let mut owner_of: BTreeMap<Token, NodeId> = BTreeMap::new();
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (node, tokens) in nodes {
            for &token in tokens {
                match owner_of.insert(token, node) {
                    Some(previous) if previous != node => {
                        return Err(RingError::DuplicateToken {
                            token,
                            first: previous,
                            second: node,
                        });
                    }
                    Some(_) => {}
                    None => {
                        let count = per_node.entry(node).or_insert(0);
                        *count += 1;
                        if *count > MAX_TOKENS_PER_NODE {
                            return Err(RingError::TooManyTokens {
                                node,
                                count: *count,
                            });
                        }
                    }
                }
            }
        }
        let ring = Ring {
            vnodes: owner_of.into_iter().collect(),
            nodes: per_node.into_keys().collect(),
        };
        ring.invariants();
        Ok(ring)
    }

    /// This ring plus `node` owning `tokens` (the ring after a join).
    pub fn with_node(&self, node: NodeId, tokens: &[Token]) -> Result<Ring, RingError> {
        let mut by_node = self.tokens_by_node();
        by_node.entry(node).or_default().extend_from_slice(tokens);
        Ring::new(by_node.iter().map(|(n, t)| (*n, t.as_slice())))
    }

    /// This ring without `node` (the ring after a decommission).
    pub fn without_node(&self, node: NodeId) -> Ring {
        let vnodes: Vec<(Token, NodeId)> = self
            .vnodes
            .iter()
            .copied()
            .filter(|(_, n)| *n != node)
            .collect();
        let nodes = self.nodes.iter().copied().filter(|n| *n != node).collect();
        let ring = Ring { vnodes, nodes };
        ring.invariants();
        ring
    }

    /// Structural invariants; cheap enough to keep in release builds.
    pub fn invariants(&self) {
        assert!(
            self.vnodes.windows(2).all(|w| w[0].0 < w[1].0),
            "ring vnodes not strictly sorted by token"
        );
        assert!(
            self.nodes.windows(2).all(|w| w[0] < w[1]),
            "ring nodes not sorted and distinct"
        );
        let owners: BTreeSet<NodeId> = self.vnodes.iter().map(|(_, n)| *n).collect();
        assert!(
            owners.iter().copied().eq(self.nodes.iter().copied()),
            "ring node list differs from vnode owners"
        );
    }

    pub fn is_empty(&self) -> bool {
        self.vnodes.is_empty()
    }

    /// Distinct nodes owning at least one token, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Every vnode as (token, owner), sorted by token.
    pub fn vnodes(&self) -> &[(Token, NodeId)] {
        &self.vnodes
    }

    /// The tokens of `node`, sorted (empty if it is not in the ring).
    pub fn tokens_of(&self, node: NodeId) -> Vec<Token> {
        self.vnodes
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(t, _)| *t)
            .collect()
    }

    fn tokens_by_node(&self) -> BTreeMap<NodeId, Vec<Token>> {
        let mut by_node: BTreeMap<NodeId, Vec<Token>> = BTreeMap::new();
        for &(token, node) in &self.vnodes {
            by_node.entry(node).or_default().push(token);
        }
        by_node
    }

    /// Index of the first vnode with token `>= token`, wrapping to 0 past the end.
    /// Precondition: the ring is not empty.
    fn successor_index(&self, token: Token) -> usize {
        let index = self.vnodes.partition_point(|(t, _)| *t < token);
        if index == self.vnodes.len() {
            0
        } else {
            index
        }
    }

    /// The node owning the range that contains `token`, if the ring has any node.
    pub fn primary(&self, token: Token) -> Option<NodeId> {
        if self.vnodes.is_empty() {
            return None;
        }
        Some(self.vnodes[self.successor_index(token)].1)
    }

    /// The replicas of `token`, primary first: N = min(replication_factor, node count)
    /// distinct nodes, walking clockwise from the first vnode `>= token`.
    pub fn replicas(&self, token: Token, replication_factor: usize) -> Vec<NodeId> {
        let wanted = replication_factor.min(self.nodes.len());
        let mut replicas = Vec::with_capacity(wanted);
        if wanted == 0 {
            return replicas;
        }
        let start = self.successor_index(token);
        // Bounded by the vnode count: a full lap visits every node.
        for step in 0..self.vnodes.len() {
            let node = self.vnodes[(start + step) % self.vnodes.len()].1;
            if !replicas.contains(&node) {
                replicas.push(node);
                if replicas.len() == wanted {
                    break;
                }
            }
        }
        assert_eq!(replicas.len(), wanted, "ring walk found too few nodes");
        replicas
    }

    /// Every vnode's range `(previous token, token]` with its replicas, in token order
    /// (the table `ringkv ring` prints).
    pub fn ranges(&self, replication_factor: usize) -> Vec<TokenRange> {
        let count = self.vnodes.len();
        (0..count)
            .map(|i| {
                let end_inclusive = self.vnodes[i].0;
                TokenRange {
                    start_exclusive: self.vnodes[(i + count - 1) % count].0,
                    end_inclusive,
                    replicas: self.replicas(end_inclusive, replication_factor),
                }
            })
            .collect()
    }

    /// Replicated share of each ring node: the fraction of the token space for which
    /// the node is one of the N replicas. Shares sum to N (= min(rf, node count));
    /// `ownership(1)` is the primary-owned share and sums to 1.
    pub fn ownership(&self, replication_factor: usize) -> BTreeMap<NodeId, f64> {
        let mut tokens_owned: BTreeMap<NodeId, u128> =
            self.nodes.iter().map(|n| (*n, 0u128)).collect();
        for range in self.ranges(replication_factor) {
            for node in &range.replicas {
                *tokens_owned.entry(*node).or_insert(0) += range.size();
            }
        }
        tokens_owned
            .into_iter()
            .map(|(node, tokens)| (node, tokens as f64 / TOKEN_SPACE as f64))
            .collect()
    }

    /// Largest replicated share divided by the smallest (1.0 is perfect balance; an
    /// empty ring is reported as balanced).
    pub fn balance(&self, replication_factor: usize) -> f64 {
        let shares = self.ownership(replication_factor);
        let largest = shares.values().copied().fold(f64::MIN, f64::max);
        let smallest = shares.values().copied().fold(f64::MAX, f64::min);
        if shares.is_empty() || smallest <= 0.0 {
            return if shares.is_empty() {
                1.0
            } else {
                f64::INFINITY
            };
        }
        largest / smallest
    }
}

/// Tokens for a node that starts a new cluster: `num_tokens` distinct pseudo-random
/// tokens derived only from `seed`, sorted. Nodes joining an existing ring should use
/// [`allocate_tokens`] instead, which balances far better.
pub fn initial_tokens(num_tokens: usize, seed: u64) -> Vec<Token> {
    assert!(
        (1..=MAX_TOKENS_PER_NODE).contains(&num_tokens),
        "num_tokens {num_tokens} out of range"
    );
    let mut rng = SplitMix64::new(seed);
    let mut tokens = BTreeSet::new();
    // A collision among a few thousand 64-bit draws is vanishingly rare; the bound only
    // keeps the loop finite.
    for _ in 0..num_tokens * 4 {
        tokens.insert(rng.next_u64());
        if tokens.len() == num_tokens {
            break;
        }
    }
    assert_eq!(tokens.len(), num_tokens, "token draw did not converge");
    tokens.into_iter().collect()
}

/// Tokens for a node joining `ring`: each new token is placed at the midpoint of the
/// currently largest range (counting ranges split by the tokens already chosen), so a
/// joiner takes over the most loaded parts of the ring. Ties go to the range with the
/// smaller start token, so the result is a pure function of the ring. On an empty ring
/// the tokens are spaced evenly from 0. Returned sorted.
pub fn allocate_tokens(ring: &Ring, num_tokens: usize) -> Vec<Token> {
    assert!(
        (1..=MAX_TOKENS_PER_NODE).contains(&num_tokens),
        "num_tokens {num_tokens} out of range"
    );
    if ring.is_empty() {
        let step = TOKEN_SPACE / num_tokens as u128;
        return (0..num_tokens as u128).map(|i| (i * step) as u64).collect();
    }
    // Max-heap on size, then smallest start first.
    let mut ranges: BinaryHeap<(u128, Reverse<Token>)> = ring
        .ranges(1)
        .iter()
        .map(|r| (r.size(), Reverse(r.start_exclusive)))
        .collect();
    let mut tokens = Vec::with_capacity(num_tokens);
    for _ in 0..num_tokens {
        let Some((size, Reverse(start))) = ranges.pop() else {
            break;
        };
        // Vnode counts are bounded far below 2^63, so the largest range always has room.
        assert!(size >= 2, "largest ring range has no midpoint");
        let half = size / 2;
        let middle = start.wrapping_add(half as u64);
        tokens.push(middle);
        ranges.push((half, Reverse(start)));
        ranges.push((size - half, Reverse(middle)));
    }
    tokens.sort_unstable();
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(nodes: &[(NodeId, &[Token])]) -> Ring {
        Ring::new(nodes.iter().copied()).unwrap()
    }

    #[test]
    fn walk_starts_at_first_token_at_or_after_key_and_wraps() {
        let r = ring(&[(1, &[100, 400]), (2, &[200]), (3, &[300])]);
        assert_eq!(r.replicas(100, 1), vec![1]);
        assert_eq!(r.replicas(101, 2), vec![2, 3]);
        assert_eq!(r.replicas(350, 3), vec![1, 2, 3]); // 400 is node 1, then wraps
        assert_eq!(r.replicas(401, 3), vec![1, 2, 3]); // wraps to 100
        assert_eq!(r.replicas(0, 5), vec![1, 2, 3]); // N = min(rf, nodes)
        assert_eq!(r.primary(250), Some(3));
    }

    #[test]
    fn duplicate_token_across_nodes_is_rejected() {
        let err = Ring::new([(1, &[5u64][..]), (2, &[5u64][..])]).unwrap_err();
        assert_eq!(
            err,
            RingError::DuplicateToken {
                token: 5,
                first: 1,
                second: 2
            }
        );
    }

    #[test]
    fn empty_ring_has_no_replicas() {
        let r = Ring::default();
        assert!(r.replicas(42, 3).is_empty());
        assert_eq!(r.primary(42), None);
        assert!(r.ranges(3).is_empty());
    }

    #[test]
    fn single_vnode_owns_whole_ring() {
        let r = ring(&[(9, &[77])]);
        let ranges = r.ranges(3);
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].size(), TOKEN_SPACE);
        assert_eq!(r.ownership(3)[&9], 1.0);
    }

    #[test]
    fn ownership_sums_to_replica_count() {
        let r = ring(&[(1, &[0, 1 << 62]), (2, &[1 << 63]), (3, &[3 << 62])]);
        let sum: f64 = r.ownership(2).values().sum();
        assert!((sum - 2.0).abs() < 1e-9);
        // Primary shares: node 1 owns (3<<62, 0] and (0, 1<<62] = half the ring.
        assert!((r.ownership(1)[&1] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn allocation_splits_largest_ranges_at_midpoints() {
        let r = ring(&[(1, &[0])]);
        assert_eq!(allocate_tokens(&r, 1), vec![1 << 63]);
        let r = r.with_node(2, &[1 << 63]).unwrap();
        assert_eq!(allocate_tokens(&r, 2), vec![1 << 62, 3 << 62]);
        let tokens = allocate_tokens(&Ring::default(), 4);
        assert_eq!(tokens, vec![0, 1 << 62, 1 << 63, 3 << 62]);
    }

    #[test]
    fn initial_tokens_depend_only_on_seed() {
        assert_eq!(initial_tokens(16, 3), initial_tokens(16, 3));
        assert_ne!(initial_tokens(16, 3), initial_tokens(16, 4));
        let t = initial_tokens(16, 3);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn without_node_removes_its_vnodes() {
        let r = ring(&[(1, &[10, 30]), (2, &[20])]);
        let r2 = r.without_node(1);
        assert_eq!(r2.nodes(), &[2]);
        assert_eq!(r2.replicas(5, 3), vec![2]);
    }
}

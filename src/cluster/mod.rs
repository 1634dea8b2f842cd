//! Cluster membership: ring, gossip, failure detection (DESIGN.md §6).

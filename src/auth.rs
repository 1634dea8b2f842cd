//! Peer and client authentication (DESIGN.md §6): handshake state machine.

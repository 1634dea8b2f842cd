//! The wire protocol (DESIGN.md §4): frames, FlatBuffers encode/decode and validation,
//! key → token → shard. Sans-I/O: nothing here reads a socket.

pub mod types;

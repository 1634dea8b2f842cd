//! The per-shard storage engine (DESIGN.md §5): commit log, memtable, SSTables,
//! manifest, block cache and compaction. One [`Engine`](engine) per shard, owned by that
//! shard's executor; nothing here is shared between cores or touches a socket.

pub mod cache;
pub mod compaction;
pub mod disk;
pub mod manifest;
pub mod memtable;
pub mod sstable;

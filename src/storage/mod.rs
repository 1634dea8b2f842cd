//! The per-shard storage engine (docs/design.md §5): commit log, memtable, SSTables,
//! manifest, block cache and compaction. One [`Engine`](engine) per shard, owned by that
//! shard's executor; nothing here is shared between cores or touches a socket.

pub mod cache;
pub mod commitlog;
pub mod compaction;
pub mod disk;
pub mod engine;
pub mod glommio_disk;
pub mod hintlog;
pub mod manifest;
pub mod mem_disk;
pub mod memtable;
pub mod sstable;

//! The shard-per-core server: executors, listeners, routing between cores.

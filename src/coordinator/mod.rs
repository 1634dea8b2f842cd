//! Per-request coordination: replica fan-out, quorum tracking, read repair.

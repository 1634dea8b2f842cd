//! ringkv: a leaderless, replicated key-value store built shard-per-core.
//!
//! Data flows one way: client socket → [`protocol`] → [`server`] → [`coordinator`] →
//! replica RPC → [`storage`] engine of the owning shard. [`cluster`] holds membership,
//! [`conflict`] holds versions and their merge.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conflict;
pub mod coordinator;
pub mod event;
pub mod protocol;
pub mod server;
pub mod storage;

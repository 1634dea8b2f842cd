//! ringkv-loadgen: a load generator for ringkv with coordinated-omission-corrected
//! HdrHistogram latencies (docs/design.md §8.3).
//!
//! Data flows one way: [`cli`] parses flags into a [`engine::RunConfig`] →
//! [`engine`] drives [`workload`] operations through a [`target::Connector`] on glommio
//! executors, feeding [`verify`] in verify mode → [`stats`] summarises, formats and
//! serialises → [`plot`] draws percentile curves.

pub mod cli;
pub mod engine;
pub mod plot;
pub mod ringkv_target;
pub mod stats;
pub mod target;
pub mod transport;
pub mod verify;
pub mod workload;

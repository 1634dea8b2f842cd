//! `ringkv-dbeel-bench`: a load client for a dbeel 0.1.0 cluster, shaped like
//! ringkv-loadgen's YCSB A run of the three-node RF=3 QUORUM benchmark.
//!
//! It learns the ring from `get_cluster_metadata`, creates the collection, waits until
//! every shard knows it, loads keys `0..load`, then runs a closed loop of `concurrency`
//! tasks on one glommio executor (pinned from outside by `taskset`), each doing 50 %
//! gets and 50 % sets of uniformly random keys at the given consistency, one TCP
//! connection per request (dbeel's design). Every request goes to the shard that owns
//! its key as replica 0 (`ring.rs`), so dbeel never has to reject it. It never retries a
//! failed request in the measured phase: failures are counted by name and make the
//! process exit non-zero after the table is printed.

mod client;
mod protocol;
mod ring;
mod stats;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};

use crate::client::call;
use crate::protocol::{Reply, COLLECTION_EXISTS, KEY_NOT_FOUND, KEY_NOT_OWNED};
use crate::ring::Ring;
use crate::stats::{format_table, OpStats};

/// Locked memory for glommio's registered buffers: this client does no file I/O, and the
/// machine's `ulimit -l` is 8 MiB.
const IO_MEMORY_BYTES: usize = 256 << 10;
/// Bounds a connect and each read and write of one request. Above dbeel's own 15 s
/// default request timeout, so a slow dbeel answers with its timeout error first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between polls while waiting for the cluster to converge.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Fixed width of a key's decimal part, as ringkv-loadgen: `user` + 12 digits.
const KEY_DIGITS: usize = 12;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Load client for dbeel 0.1.0 (50/50 get/set at quorum, one connection per request)"
)]
struct Args {
    /// Client address (ip:db_port) of shard 0 of each node, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:10000")]
    hosts: Vec<SocketAddr>,
    /// Number of nodes the cluster must list before the run starts.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Only wait until every shard lists `--nodes` nodes, print the ring, and exit.
    #[arg(long)]
    wait_only: bool,
    /// Seconds to wait for the cluster and the collection to converge.
    #[arg(long, default_value_t = 30)]
    setup_timeout_s: u64,
    #[arg(long, default_value = "bench")]
    collection: String,
    #[arg(long, default_value_t = 3)]
    replication_factor: u16,
    /// `one`, `quorum`, `all`, or a node count.
    #[arg(long, default_value = "quorum")]
    consistency: String,
    /// Keys are drawn uniformly from 0..keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Keys 0..load are written before the run.
    #[arg(long, default_value_t = 20_000)]
    load: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of gets in the run; the rest are sets.
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// Requests in flight (concurrent tasks, each one request at a time).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds run before measuring, not recorded.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A small, fast, seeded generator (splitmix64); the workload needs no more.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn key_for(id: u64) -> String {
    format!("user{id:0KEY_DIGITS$}")
}

fn consistency_nodes(spec: &str, replication_factor: u16) -> Result<u16, String> {
    match spec {
        "one" => Ok(1),
        "quorum" => Ok(replication_factor / 2 + 1),
        "all" => Ok(replication_factor),
        n => n
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=replication_factor).contains(n))
            .ok_or_else(|| {
                format!("--consistency {n}: not one|quorum|all|1..={replication_factor}")
            }),
    }
}

/// Polls every shard of every node until all of them list the same `expected` nodes,
/// then returns the ring they agree on.
async fn wait_for_cluster(args: &Args, deadline: Instant) -> Result<Ring, String> {
    let request = protocol::get_cluster_metadata();
    loop {
        let last = match cluster_view(args, &request).await {
            Ok(ring) => return Ok(ring),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("cluster did not converge: {last}"));
        }
        glommio::timer::sleep(POLL_INTERVAL).await;
    }
}

async fn cluster_view(args: &Args, request: &[u8]) -> Result<Ring, String> {
    let metadata = |addr: SocketAddr| async move {
        match call(addr, request, REQUEST_TIMEOUT).await {
            Ok(Reply::Ok(body)) => {
                protocol::decode_cluster_metadata(&body).map_err(|e| e.to_string())
            }
            Ok(Reply::Err { name, message }) => Err(format!("{addr}: {name}: {message}")),
            Err(e) => Err(format!("{addr}: {e}")),
        }
    };
    let first = metadata(args.hosts[0]).await?;
    let ring = Ring::from_nodes(&first.nodes)?;
    let names: BTreeSet<String> = first.nodes.iter().map(|n| n.name.clone()).collect();
    if names.len() != args.nodes {
        return Err(format!(
            "{} lists {} nodes: {names:?}",
            args.hosts[0],
            names.len()
        ));
    }
    for shard in ring.shards() {
        let m = metadata(shard.addr).await?;
        let seen: BTreeSet<String> = m.nodes.iter().map(|n| n.name.clone()).collect();
        if seen != names {
            return Err(format!(
                "shard {} ({}) lists {seen:?}",
                shard.name, shard.addr
            ));
        }
    }
    Ok(ring)
}

/// Creates the collection (an existing one is fine) and waits until every shard has it.
async fn create_collection(args: &Args, ring: &Ring, deadline: Instant) -> Result<(), String> {
    let create = protocol::create_collection(&args.collection, args.replication_factor);
    match call(args.hosts[0], &create, REQUEST_TIMEOUT).await {
        Ok(Reply::Ok(_)) => {}
        Ok(Reply::Err { name, .. }) if name == COLLECTION_EXISTS => {}
        Ok(Reply::Err { name, message }) => {
            return Err(format!("create_collection: {name}: {message}"))
        }
        Err(e) => return Err(format!("create_collection: {e}")),
    }
    let probe = protocol::get_collection(&args.collection);
    for shard in ring.shards() {
        loop {
            let last = match call(shard.addr, &probe, REQUEST_TIMEOUT).await {
                Ok(Reply::Ok(_)) => break,
                Ok(Reply::Err { name, message }) => format!("{name}: {message}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "shard {} never saw collection {}: {last}",
                    shard.name, args.collection
                ));
            }
            glommio::timer::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(())
}

/// Sends one request to the key's owner and records it into `stats` if `record`.
/// Returns whether it succeeded (a get miss is a success).
async fn one_request(
    ring: &Ring,
    key: &str,
    request: &[u8],
    stats: &RefCell<OpStats>,
    record: bool,
) -> bool {
    let owner = ring.owner_of_key(key);
    let start = Instant::now();
    let outcome = call(owner.addr, request, REQUEST_TIMEOUT).await;
    let latency_us = start.elapsed().as_micros() as u64;
    if !record {
        return matches!(outcome, Ok(Reply::Ok(_)));
    }
    let mut s = stats.borrow_mut();
    s.record(latency_us);
    match outcome {
        Ok(Reply::Ok(_)) => true,
        Ok(Reply::Err { name, .. }) if name == KEY_NOT_FOUND => {
            s.misses += 1;
            true
        }
        Ok(Reply::Err { name, .. }) => {
            s.error(&name);
            false
        }
        Err(e) => {
            s.error(&e.name());
            false
        }
    }
}

fn fill_value(rng: &mut Rng, value: &mut [u8]) {
    for chunk in value.chunks_mut(8) {
        let bytes = rng.next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

struct Phase {
    read: Rc<RefCell<OpStats>>,
    update: Rc<RefCell<OpStats>>,
}

/// Loads keys `0..load` with sets, `concurrency` at a time. Every failure counts.
async fn load(args: &Rc<Args>, ring: &Rc<Ring>, consistency: u16) -> Rc<RefCell<OpStats>> {
    let stats = Rc::new(RefCell::new(OpStats::new("load")));
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency as u64 {
        let (args, ring, stats) = (args.clone(), ring.clone(), stats.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut rng = Rng(args.seed ^ (worker + 1).wrapping_mul(0xa076_1d64_78bd_642f));
            let mut value = vec![0u8; args.value_size];
            let mut id = worker;
            // A failed set fails the run (see main), so stop at the first error instead
            // of waiting out REQUEST_TIMEOUT for every remaining key of a stalled node.
            while id < args.load && stats.borrow().error_count() == 0 {
                fill_value(&mut rng, &mut value);
                let key = key_for(id);
                let request = protocol::set(&args.collection, &key, &value, consistency);
                one_request(&ring, &key, &request, &stats, true).await;
                id += args.concurrency as u64;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    stats
}

/// The closed loop: warmup, then the measured window. Returns the stats and the
/// measured seconds (from the window's start until the last request in flight ends).
async fn run(args: &Rc<Args>, ring: &Rc<Ring>, consistency: u16) -> (Phase, f64) {
    let phase = Phase {
        read: Rc::new(RefCell::new(OpStats::new("read"))),
        update: Rc::new(RefCell::new(OpStats::new("update"))),
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let marker = glommio::spawn_local(async move {
        glommio::timer::sleep(measure_from.saturating_duration_since(Instant::now())).await;
        // run.sh waits for this line to sample CPU time over the measured window.
        println!("# measuring");
        let _ = std::io::stdout().flush();
    });
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency as u64 {
        let (args, ring) = (args.clone(), ring.clone());
        let (read, update) = (phase.read.clone(), phase.update.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut rng =
                Rng(args.seed.wrapping_add(0x5eed)
                    ^ (worker + 1).wrapping_mul(0xe703_7ed1_a0b4_28db));
            let mut value = vec![0u8; args.value_size];
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let record = now >= measure_from;
                let key = key_for(rng.below(args.keys));
                if rng.unit() < args.read_ratio {
                    let request = protocol::get(&args.collection, &key, consistency);
                    one_request(&ring, &key, &request, &read, record).await;
                } else {
                    fill_value(&mut rng, &mut value);
                    let request = protocol::set(&args.collection, &key, &value, consistency);
                    one_request(&ring, &key, &request, &update, record).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    marker.await;
    let elapsed_s = measure_from.elapsed().as_secs_f64();
    (phase, elapsed_s)
}

async fn bench(args: Args) -> Result<(), String> {
    if args.hosts.is_empty() {
        return Err("--hosts is empty".into());
    }
    let consistency = consistency_nodes(&args.consistency, args.replication_factor)?;
    let deadline = Instant::now() + Duration::from_secs(args.setup_timeout_s);
    let ring = wait_for_cluster(&args, deadline).await?;
    println!(
        "# ring: {}",
        ring.shards()
            .iter()
            .map(|s| format!("{}@{} {:#010x}", s.name, s.addr, s.hash))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.wait_only {
        return Ok(());
    }
    create_collection(&args, &ring, deadline).await?;
    let (args, ring) = (Rc::new(args), Rc::new(ring));

    let load_start = Instant::now();
    let loaded = load(&args, &ring, consistency).await;
    let loaded = loaded.borrow().clone();
    println!(
        "# loaded {} keys in {:.2} s, consistency {consistency} of rf {}, errors {}",
        args.load,
        load_start.elapsed().as_secs_f64(),
        args.replication_factor,
        loaded.error_count()
    );
    if loaded.error_count() > 0 {
        print!(
            "{}",
            format_table(&[&loaded], load_start.elapsed().as_secs_f64())
        );
        return Err(format!("load failed: {:?}", loaded.errors));
    }

    let (phase, elapsed_s) = run(&args, &ring, consistency).await;
    let (read, update) = (phase.read.borrow(), phase.update.borrow());
    print!("{}", format_table(&[&read, &update], elapsed_s));
    println!(
        "# read misses (key_not_found, counted as successful reads): {} of {}; concurrency {}, measured {:.2} s",
        read.misses,
        read.latency_us.len(),
        args.concurrency,
        elapsed_s
    );
    // The routing check: dbeel rejects a key sent to a shard that does not own it.
    let not_owned = [&*read, &*update]
        .iter()
        .map(|s| s.errors.get(KEY_NOT_OWNED).copied().unwrap_or(0))
        .sum::<u64>();
    println!("# {KEY_NOT_OWNED}: {not_owned}");
    let errors = read.error_count() + update.error_count();
    if errors > 0 {
        return Err(format!(
            "{errors} requests failed: read {:?}, update {:?}",
            read.errors, update.errors
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let executor = match LocalExecutorBuilder::new(Placement::Unbound)
        .name("dbeel-bench")
        .io_memory(IO_MEMORY_BYTES)
        .make()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ringkv-dbeel-bench: cannot start the executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    match executor.run(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringkv-dbeel-bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_fixed_width_like_ringkv_loadgen() {
        assert_eq!(key_for(1234), "user000000001234");
        assert_eq!(key_for(0).len(), 16);
    }

    #[test]
    fn quorum_of_three_is_two() {
        assert_eq!(consistency_nodes("quorum", 3).unwrap(), 2);
        assert_eq!(consistency_nodes("one", 3).unwrap(), 1);
        assert_eq!(consistency_nodes("all", 3).unwrap(), 3);
        assert_eq!(consistency_nodes("2", 3).unwrap(), 2);
        assert!(consistency_nodes("4", 3).is_err());
        assert!(consistency_nodes("many", 3).is_err());
    }

    #[test]
    fn rng_below_stays_in_range_and_covers_it() {
        let mut rng = Rng(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = rng.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}

//! Crash test with a real process: a node in `batch` mode takes writes from several
//! concurrent clients and is SIGKILLed at a random moment, repeatedly. Every write a
//! client saw acknowledged before the kill is readable after the restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Node;
use ringkv::client::blocking::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let mut node = Node::start(
        2,
        &[
            "--memtable-size",
            "256KiB",
            "--commitlog-segment-size",
            "128KiB",
        ],
    );
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for round in 0..5u32 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u32 {
            let addr = node.addr();
            let acked = acked.clone();
            let stop = stop.clone();
            writers.push(std::thread::spawn(move || {
                let Ok(mut client) = Client::connect(&addr) else {
                    return;
                };
                // Bounded in count and time.
                let deadline = Instant::now() + Duration::from_secs(20);
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    let key = format!("r{round}-w{w}-{i}");
                    let value = format!("v-{round}-{w}-{i}-{}", "x".repeat((i % 64) as usize));
                    match client.put(key.as_bytes(), value.as_bytes(), None, None) {
                        Ok(()) => acked.lock().unwrap().push((key, value)),
                        Err(_) => return, // the server died mid-request: not acknowledged
                    }
                }
            }));
        }
        // Kill after a pseudo-random number of acknowledged writes (deterministic per run).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target = acked.lock().unwrap().len() + 200 + (seed % 1500) as usize;
        common::wait_until("writes before the kill", Duration::from_secs(60), || {
            acked.lock().unwrap().len() >= target
        });
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        node.log.lock().unwrap().clear();
        node.restart();
        let mut client = Client::connect(&node.addr()).unwrap();
        let acked_now = acked.lock().unwrap().clone();
        for (key, value) in &acked_now {
            let got = client.get(key.as_bytes(), None).unwrap();
            assert_eq!(
                got.values,
                vec![value.clone().into_bytes()],
                "round {round}: acknowledged {key} lost"
            );
        }
    }
}

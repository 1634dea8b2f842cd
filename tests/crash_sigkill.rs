//! Crash test with a real process: a node takes puts, overwrites and deletes from several
//! concurrent clients and is SIGKILLed at a random moment, repeatedly. After each restart
//! every key reads as its last acknowledged write left it: an acknowledged put reads as
//! that value (not an older one), an acknowledged delete stays deleted. The same body
//! runs in `batch` mode and in `periodic` mode with a period far longer than a round, so
//! the kill always lands between two periodic syncs: a process crash must lose nothing
//! in either mode (docs/design.md §1.2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Node;
use ringkv::client::blocking::Client;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: u32 = 4;
const ROUNDS: u32 = 5;
/// Keys per writer: few enough that keys are overwritten and deleted many times.
const KEYS_PER_WRITER: u64 = 300;

/// What a key must read as after a restart.
#[derive(Default)]
struct KeyModel {
    /// The state the last acknowledged write left (`None`: absent or deleted).
    acked: Option<String>,
    /// A write sent but not acknowledged when the node died: it may or may not have
    /// taken effect.
    in_doubt: Option<Option<String>>,
}

type Model = Arc<Mutex<BTreeMap<String, KeyModel>>>;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One writer of one round: random puts (new, unique values) and deletes on its own
/// keys until stopped, recording each write as in doubt before sending it and as
/// acknowledged once answered.
fn write_until_stopped(
    addr: String,
    round: u32,
    w: u32,
    model: Model,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut client) = Client::connect(&addr) else {
        return;
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (u64::from(round) << 32) ^ u64::from(w + 1);
    // Bounded in count and time.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..100_000u32 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let key = format!("w{w}-k{}", xorshift(&mut rng) % KEYS_PER_WRITER);
        let write = if xorshift(&mut rng).is_multiple_of(4) {
            None
        } else {
            Some(format!(
                "v-{round}-{w}-{i}-{}",
                "x".repeat((i % 64) as usize)
            ))
        };
        model
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .in_doubt = Some(write.clone());
        let sent = match &write {
            Some(value) => client.put(key.as_bytes(), value.as_bytes(), None, None),
            None => client.delete(key.as_bytes(), None, None),
        };
        match sent {
            Ok(()) => {
                let mut m = model.lock().unwrap();
                let entry = m.get_mut(&key).unwrap();
                entry.acked = write;
                entry.in_doubt = None;
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return, // the server died mid-request: the write stays in doubt
        }
    }
}

/// Start a node with `mode_args`, kill it under load `ROUNDS` times, and check every key
/// against the model after each restart.
fn sigkill_under_load_loses_no_acknowledged_write(mode_args: &[&str]) {
    let mut args = vec![
        "--memtable-size",
        "256KiB",
        "--commitlog-segment-size",
        "128KiB",
    ];
    args.extend_from_slice(mode_args);
    let mut node = Node::start(2, &args);
    let model: Model = Arc::new(Mutex::new(BTreeMap::new()));
    let acks = Arc::new(AtomicUsize::new(0));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (addr, model, acks, stop) =
                    (node.addr(), model.clone(), acks.clone(), stop.clone());
                std::thread::spawn(move || write_until_stopped(addr, round, w, model, acks, stop))
            })
            .collect();
        // Kill after a pseudo-random number of acknowledged writes (deterministic per run).
        let target = acks.load(Ordering::Relaxed) + 200 + (xorshift(&mut seed) % 1500) as usize;
        common::wait_until("writes before the kill", Duration::from_secs(60), || {
            acks.load(Ordering::Relaxed) >= target
        });
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        node.log.lock().unwrap().clear();
        node.restart();
        let recovery_log: Vec<String> = node
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("torn_tail") || l.contains("recovered"))
            .cloned()
            .collect();
        let mut client = Client::connect(&node.addr()).unwrap();
        let mut model = model.lock().unwrap();
        let (mut lost, mut older, mut resurrected, mut acked_puts) = (0, 0, 0, 0);
        let mut first_bad = Vec::new();
        for (key, entry) in model.iter_mut() {
            let got = client.get(key.as_bytes(), None).unwrap();
            assert!(got.values.len() <= 1, "{key}: siblings in LWW mode");
            let read = got
                .values
                .first()
                .map(|v| String::from_utf8(v.clone()).unwrap());
            acked_puts += usize::from(entry.acked.is_some());
            let fine = read == entry.acked || entry.in_doubt.as_ref() == Some(&read);
            if !fine {
                match (&entry.acked, &read) {
                    (Some(_), None) => lost += 1,
                    (Some(_), Some(_)) => older += 1,
                    (None, _) => resurrected += 1,
                }
                if first_bad.len() < 5 {
                    first_bad.push(format!(
                        "{key}: acknowledged {:?}, read {read:?}",
                        entry.acked
                    ));
                }
            }
            // What is read now is in the commit log or an SSTable: it is what later
            // rounds must see.
            entry.acked = read;
            entry.in_doubt = None;
        }
        assert!(
            lost + older + resurrected == 0,
            "{mode_args:?} round {round}: of {} keys ({acked_puts} holding an acknowledged \
             put), {lost} acknowledged puts lost, {older} came back older, {resurrected} \
             deleted keys returned; e.g. {first_bad:#?}\nrecovery: {recovery_log:#?}",
            model.len()
        );
    }
}

/// One node process at a time: the machines running CI have few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn sigkill_in_batch_mode_loses_no_acknowledged_write() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    sigkill_under_load_loses_no_acknowledged_write(&["--commitlog-sync", "batch"]);
}

#[test]
fn sigkill_in_periodic_mode_loses_no_acknowledged_write() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A period far longer than a round: the kill always lands between two syncs, so
    // only what the acknowledged writes put into the segment files can survive it.
    sigkill_under_load_loses_no_acknowledged_write(&[
        "--commitlog-sync",
        "periodic",
        "--commitlog-sync-period-ms",
        "60000",
    ]);
}

//! Hinted handoff and sloppy quorum on real processes (issue 7, "how it is shown"):
//!
//! 1. kill: 3 nodes, RF=3, QUORUM; `ringkv-loadgen --verify --verify-final` while one
//!    node is SIGKILLed and restarted 20 times; afterwards every acknowledged write is
//!    read back at ALL (0 violations, 0 missing) and all three nodes agree at ALL;
//! 2. partition: 5 nodes, RF=3, W=2; one node cut off both ways for 30 s (fault rules)
//!    under a paced writer; writes keep succeeding, survivors' `status` shows hints for
//!    it; after the heal the hints drain (time printed) and the node's own copies hold
//!    every write acknowledged while it was cut off;
//! 3. strict: `--sloppy-quorum false`, two of a key's three replicas cut off → QUORUM
//!    is `Unavailable` and no node ever holds the value; the same cut with sloppy quorum
//!    succeeds through the key's two fallback nodes, whose hints reach the homes;
//! 4. durability: the coordinator holding hints is SIGKILLed before the target returns;
//!    after its restart it reports the same pending count and replays them all;
//! 5. window: `--max-hint-window 3s`; writes after the window are not hinted but
//!    counted (`+N skipped, needs repair`, `ringkv_hints_skipped_window_total`); hinted
//!    writes arrive by replay, skipped ones only through a QUORUM read's repair;
//! 6. left: hints held for a node that is then decommissioned are dropped, never
//!    delivered, and do not come back when their holder restarts.
//!
//! Every wait has a deadline; nodes and the load generator are killed by PID on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    cli, free_port_block, hints_held, loadgen_bin, metrics_text, node_id_of, replicas_of,
    start_cluster_with, status_hint_cell, status_rows, status_view, sum_series_with, wait_until,
    write_fault_rules, ChildGuard, Cluster, OwnCopyReader,
};
use ringkv::client::blocking::Client;
use ringkv::client::ClientError;
use ringkv::protocol::types::{Consistency, ErrorReply};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "handoff-secret";
/// Generous: phi conviction takes ~18 gossip intervals, and builders share 2 cores.
const DEADLINE: Duration = Duration::from_secs(90);

/// Flags every node of these tests gets.
fn base_flags() -> Vec<String> {
    [
        "--gossip-interval-ms",
        "100",
        "--replication-factor",
        "3",
        "--cluster-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Does every host in `hosts` see exactly `expected` (address → up)?
fn all_see(hosts: &[String], expected: &BTreeMap<String, bool>) -> bool {
    hosts
        .iter()
        .all(|h| status_view(h).is_some_and(|view| &view == expected))
}

fn view(up: &[&String], down: &[&String]) -> BTreeMap<String, bool> {
    up.iter()
        .map(|a| ((*a).clone(), true))
        .chain(down.iter().map(|a| ((*a).clone(), false)))
        .collect()
}

fn wait_all_up(cluster: &Cluster) {
    let addrs = cluster.addrs();
    let expected = view(&addrs.iter().collect::<Vec<_>>(), &[]);
    wait_until("every node to see every node up", DEADLINE, || {
        all_see(&addrs, &expected)
    });
}

/// A client whose requests the node at `host` coordinates.
fn pinned(host: &str) -> Client {
    let mut client = Client::connect(host).unwrap();
    client.pin_to_seed(true);
    client
}

/// (pending, skipped) hints `holder` reports for `target`.
fn hint_counts(holder: &str, target: &str) -> (u64, u64) {
    hints_held(holder, target).map_or((u64::MAX, u64::MAX), |h| (h.pending, h.skipped))
}

/// The metrics address for a node started with `--metrics-listen`.
fn metrics_flag(addr: &str) -> Vec<String> {
    strings(&["--metrics-listen", addr])
}

// ---------------------------------------------------------------------------------------
// 4. Durability

#[test]
fn hints_survive_a_sigkill_of_their_holder_and_are_replayed_after_its_restart() {
    const WRITES: u64 = 40;
    let mut cluster = start_cluster_with(3, 1, |_| base_flags());
    wait_all_up(&cluster);
    let addrs = cluster.addrs();
    let (holder, other, target) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());

    // The target goes down; the holder and the other node mark it down.
    cluster.nodes[2].kill();
    wait_until("the survivors to mark the target down", DEADLINE, || {
        all_see(
            &[holder.clone(), other.clone()],
            &view(&[&holder, &other], &[&target]),
        )
    });

    // QUORUM writes coordinated by the holder: acked by the holder and the other node;
    // with three nodes there is no stand-in, so the holder keeps a hint per write.
    let mut client = pinned(&holder);
    for i in 0..WRITES {
        client
            .put(
                format!("dur-{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
                Some(Consistency::Quorum),
                None,
            )
            .unwrap();
    }
    wait_until("the holder to keep one hint per write", DEADLINE, || {
        hint_counts(&holder, &target).0 == WRITES
    });
    let cell = status_hint_cell(&holder, &target).unwrap();
    assert!(
        cell.starts_with(&format!("{WRITES}/")),
        "status on the holder shows the pending hints for the target: {cell:?}"
    );
    assert_eq!(
        hint_counts(&other, &target),
        (0, 0),
        "only the coordinator holds hints"
    );

    // SIGKILL the holder before the target is back, then restart it.
    cluster.nodes[0].kill();
    cluster.nodes[0].restart();
    assert!(
        cluster.nodes[0].log_text().contains("hints recovered"),
        "the restart recovered the hint log:\n{}",
        cluster.nodes[0].log_text()
    );
    // It lists the target again once gossip from the other node told it about it.
    wait_until("the restarted holder to list the target", DEADLINE, || {
        hints_held(&holder, &target).is_some()
    });
    assert_eq!(
        hint_counts(&holder, &target),
        (WRITES, 0),
        "the restarted holder reports the same pending hints"
    );
    let cell = status_hint_cell(&holder, &target).unwrap();
    assert!(cell.starts_with(&format!("{WRITES}/")), "{cell:?}");

    // The target returns: the hints are replayed to it and deleted.
    cluster.nodes[2].restart();
    wait_until(
        "the holder's hints for the target to drain",
        DEADLINE,
        || hint_counts(&holder, &target).0 == 0,
    );
    assert_eq!(status_hint_cell(&holder, &target).unwrap(), "-");
    // No read touched these keys: what the target has came by replay.
    let mut own = OwnCopyReader::of(&cluster.nodes[2], SECRET);
    for i in 0..WRITES {
        assert_eq!(
            own.read(format!("dur-{i}").as_bytes()),
            Some(Some(format!("value-{i}").into_bytes())),
            "the target's own copy of dur-{i} after replay"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. Left

#[test]
fn hints_for_a_node_that_left_are_dropped_and_stay_dropped_across_a_restart() {
    const WRITES: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("holder.rules");
    let holder_metrics = format!("127.0.0.1:{}", free_port_block(1));
    let mut cluster = {
        let (rules, holder_metrics) = (rules.clone(), holder_metrics.clone());
        start_cluster_with(3, 1, move |i| {
            let mut flags = base_flags();
            if i == 0 {
                flags.extend(metrics_flag(&holder_metrics));
                flags.push("--fault-rules-file".into());
                flags.push(rules.display().to_string());
            }
            flags
        })
    };
    wait_all_up(&cluster);
    let addrs = cluster.addrs();
    let (holder, target) = (addrs[0].clone(), addrs[2].clone());
    let target_label = format!("target=\"{:016x}\"", node_id_of(&target));

    // The holder's own calls to the target fail; the target stays up in its view (its
    // heartbeats still arrive through gossip), so every write it coordinates keeps a hint
    // for the target, and replaying them keeps failing.
    write_fault_rules(&rules, &format!("cut {target}\n"));
    // The rules are re-read within 100 ms; the holder's gossip to the target shows when.
    wait_until("the cut to take effect", DEADLINE, || {
        sum_series_with(
            &metrics_text(&holder_metrics),
            "ringkv_peer_faults_total",
            "kind=\"cut\"",
        ) > 0.0
    });
    let mut client = pinned(&holder);
    for i in 0..WRITES {
        client
            .put(
                format!("left-{i}").as_bytes(),
                b"v",
                Some(Consistency::Quorum),
                None,
            )
            .unwrap();
    }
    wait_until("the holder to keep one hint per write", DEADLINE, || {
        hint_counts(&holder, &target).0 == WRITES
    });

    // The target leaves the cluster (it pushes its ranges; its own calls are not cut).
    let (code, out, err) = cli(&["decommission", "--host", &target, "--timeout-secs", "120"]);
    assert_eq!(
        code,
        0,
        "decommission failed: {err}\n{}",
        String::from_utf8_lossy(&out)
    );
    wait_until("the holder to see the target left", DEADLINE, || {
        status_rows(&holder)
            .and_then(|rows| rows.get(&target).cloned())
            .is_some_and(|(_, status)| status == "left")
    });
    wait_until(
        "the holder to drop its hints for the target",
        DEADLINE,
        || hint_counts(&holder, &target).0 == 0 || hints_held(&holder, &target).is_none(),
    );
    assert!(
        cluster.nodes[0]
            .log_text()
            .contains("dropping hints for a node that left"),
        "{}",
        cluster.nodes[0].log_text()
    );
    let text = metrics_text(&holder_metrics);
    assert_eq!(
        sum_series_with(&text, "ringkv_hints_delivered_total", &target_label),
        0.0,
        "none of them was delivered:\n{text}"
    );
    assert_eq!(
        sum_series_with(&text, "ringkv_hints_pending", &target_label),
        0.0,
        "{text}"
    );

    // The drop is durable: after a SIGKILL and restart the hint log recovers nothing
    // (a restart that recovers hints logs "hints recovered" with their count).
    cluster.nodes[0].kill();
    cluster.nodes[0].restart();
    // Lines arrive in order, so once the second start's "ringkv ready" is read, so is
    // everything it logged while recovering.
    wait_until("the restart's log to be read", DEADLINE, || {
        cluster.nodes[0].log_text().matches("ringkv ready").count() == 2
    });
    let log = cluster.nodes[0].log_text();
    assert!(
        !log.contains("hints recovered"),
        "the restarted holder recovered hints:\n{log}"
    );
    wait_until("the restarted holder to answer status", DEADLINE, || {
        status_rows(&holder).is_some()
    });
    assert!(
        hints_held(&holder, &target).is_none_or(|h| h.pending == 0),
        "{:?}",
        hints_held(&holder, &target)
    );
}

// ---------------------------------------------------------------------------------------
// 5. Window

#[test]
fn a_target_down_past_the_hint_window_gets_no_more_hints_and_read_repair_fixes_it() {
    let metrics = format!("127.0.0.1:{}", free_port_block(1));
    let mut cluster = start_cluster_with(3, 1, |i| {
        let mut flags = base_flags();
        flags.extend(strings(&["--max-hint-window", "3s"]));
        if i == 0 {
            flags.extend(metrics_flag(&metrics));
        }
        flags
    });
    wait_all_up(&cluster);
    let addrs = cluster.addrs();
    let (holder, target) = (addrs[0].clone(), addrs[2].clone());
    let target_label = format!("target=\"{:016x}\"", node_id_of(&target));
    let skipped_metric = || {
        sum_series_with(
            &metrics_text(&metrics),
            "ringkv_hints_skipped_window_total",
            &target_label,
        )
    };

    cluster.nodes[2].kill();
    let mut client = pinned(&holder);
    // Each write is classified by what the holder counted for it once its coordination
    // ended: a stored hint or a skip. No clock is read here: the window decides.
    let mut classify = |key: &str| -> bool {
        let (pending, skips) = hint_counts(&holder, &target);
        client
            .put(
                key.as_bytes(),
                key.as_bytes(),
                Some(Consistency::Quorum),
                None,
            )
            .unwrap();
        let mut hinted = None;
        wait_until("the holder to hint or skip the write", DEADLINE, || {
            let now = hint_counts(&holder, &target);
            if now == (pending + 1, skips) {
                hinted = Some(true);
            } else if now == (pending, skips + 1) {
                hinted = Some(false);
            }
            hinted.is_some()
        });
        hinted == Some(true)
    };
    let mut hinted: Vec<String> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut write = |key: String, hinted: &mut Vec<String>, skipped: &mut Vec<String>| {
        if classify(&key) {
            assert!(skipped.is_empty(), "{key} hinted after a skip");
            hinted.push(key);
        } else {
            skipped.push(key);
        }
    };
    // Right after the kill: inside the window (the clock starts when the holder marks
    // the target down, ~2 s from now, and runs 3 s).
    for i in 0..5 {
        write(format!("early-{i}"), &mut hinted, &mut skipped);
    }
    assert!(
        !hinted.is_empty(),
        "writes right after the target went down are hinted"
    );
    // Keep writing until the window has passed for the holder, then a few more.
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    while skipped.is_empty() {
        assert!(Instant::now() < deadline, "no write was ever skipped");
        write(format!("late-{i}"), &mut hinted, &mut skipped);
        i += 1;
    }
    for _ in 0..5 {
        write(format!("late-{i}"), &mut hinted, &mut skipped);
        i += 1;
    }
    assert!(skipped.len() >= 6, "{skipped:?}");
    println!(
        "window test: {} writes hinted, {} skipped after the window",
        hinted.len(),
        skipped.len()
    );
    let cell = status_hint_cell(&holder, &target).unwrap();
    assert!(
        cell.starts_with(&format!("{}/", hinted.len()))
            && cell.ends_with(&format!("+{} skipped, needs repair", skipped.len())),
        "status shows the hints kept and the writes skipped: {cell:?}"
    );
    assert_eq!(skipped_metric(), skipped.len() as f64);

    // The target returns: hinted writes arrive by replay; skipped ones do not.
    cluster.nodes[2].restart();
    wait_until("the hints for the target to drain", DEADLINE, || {
        hint_counts(&holder, &target).0 == 0
    });
    let mut own = OwnCopyReader::of(&cluster.nodes[2], SECRET);
    for key in &hinted {
        assert_eq!(
            own.read(key.as_bytes()),
            Some(Some(key.clone().into_bytes())),
            "hinted {key} replayed"
        );
    }
    for key in &skipped {
        assert_eq!(
            own.read(key.as_bytes()),
            Some(None),
            "skipped {key} is not on the target before a repair"
        );
    }
    let cell = status_hint_cell(&holder, &target).unwrap();
    assert!(cell.contains("needs repair"), "{cell:?}");
    // A QUORUM read of each skipped key repairs the target's copy.
    for key in &skipped {
        let got = client
            .get(key.as_bytes(), Some(Consistency::Quorum))
            .unwrap();
        assert_eq!(got.values, vec![key.clone().into_bytes()]);
    }
    for key in &skipped {
        wait_until("read repair to reach the target", DEADLINE, || {
            own.read(key.as_bytes()) == Some(Some(key.clone().into_bytes()))
        });
    }
}

// ---------------------------------------------------------------------------------------
// 3. Strict and sloppy quorum

/// A key whose primary replica is node `primary` on the ring `host` reports.
fn key_with_primary(host: &str, primary: u64, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| replicas_of(host, k.as_bytes()).first() == Some(&primary))
        .expect("some key has this primary")
}

#[test]
fn strict_quorum_refuses_with_two_homes_cut_off_and_sloppy_quorum_uses_the_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<PathBuf> = (0..5)
        .map(|i| dir.path().join(format!("node{i}.rules")))
        .collect();
    let mut cluster = {
        let rules = rules.clone();
        start_cluster_with(5, 1, move |i| {
            let mut flags = base_flags();
            flags.extend(strings(&["--sloppy-quorum", "false", "--fault-rules-file"]));
            flags.push(rules[i].display().to_string());
            flags
        })
    };
    wait_all_up(&cluster);
    let addrs = cluster.addrs();
    let ids: Vec<u64> = addrs.iter().map(|a| node_id_of(a)).collect();
    let coordinator = addrs[0].clone();
    let key = key_with_primary(&coordinator, ids[0], "strict");
    let replicas = replicas_of(&coordinator, key.as_bytes());
    let index_of = |id: u64| ids.iter().position(|x| *x == id).unwrap();
    let homes_cut: Vec<usize> = replicas[1..].iter().map(|id| index_of(*id)).collect();
    let fallbacks: Vec<usize> = (1..5).filter(|i| !homes_cut.contains(i)).collect();
    assert_eq!(
        (replicas.len(), homes_cut.len(), fallbacks.len()),
        (3, 2, 2)
    );

    // Cut the key's two other homes off from everyone (both ways): gossip would relay
    // their heartbeats around a one-sided cut.
    let isolate = |cluster_rules: &[PathBuf]| {
        for (i, file) in cluster_rules.iter().enumerate() {
            let text = if homes_cut.contains(&i) {
                "cut *\n".to_string()
            } else {
                homes_cut
                    .iter()
                    .map(|h| format!("cut {}\n", addrs[*h]))
                    .collect()
            };
            write_fault_rules(file, &text);
        }
    };
    let heal = |cluster_rules: &[PathBuf]| {
        for file in cluster_rules {
            write_fault_rules(file, "");
        }
    };
    let cut_view = {
        let up: Vec<&String> = (0..5)
            .filter(|i| !homes_cut.contains(i))
            .map(|i| &addrs[i])
            .collect();
        let down: Vec<&String> = homes_cut.iter().map(|i| &addrs[*i]).collect();
        view(&up, &down)
    };
    isolate(&rules);
    // Every node, since the CLI's client may ask any of them (an `Unavailable` answer
    // goes to the next coordinator of its plan): the others see both homes down, and
    // each home sees every other node down.
    let others: Vec<String> = (0..5)
        .filter(|i| !homes_cut.contains(i))
        .map(|i| addrs[i].clone())
        .collect();
    wait_until("the cut to be seen on every node", DEADLINE, || {
        all_see(&others, &cut_view)
            && homes_cut.iter().all(|h| {
                let rest: Vec<&String> = (0..5).filter(|i| i != h).map(|i| &addrs[i]).collect();
                all_see(
                    std::slice::from_ref(&addrs[*h]),
                    &view(&[&addrs[*h]], &rest),
                )
            })
    });

    // Strict: one home alive, W=2 → Unavailable at once, from the library and the CLI.
    let mut client = pinned(&coordinator);
    match client.put(
        key.as_bytes(),
        b"strict-value",
        Some(Consistency::Quorum),
        None,
    ) {
        Err(ClientError::Server(ErrorReply::Unavailable { required, alive })) => {
            assert_eq!((required, alive), (2, 1))
        }
        other => panic!("strict QUORUM write with two homes down: {other:?}"),
    }
    let (code, _, err) = cli(&[
        "put",
        &key,
        "strict-value",
        "--host",
        &coordinator,
        "--consistency",
        "quorum",
    ]);
    assert_eq!(code, 3, "CLI exit code for Unavailable: {err}");
    assert!(err.contains("unavailable"), "{err}");
    for target in homes_cut.iter().map(|h| &addrs[*h]) {
        assert_eq!(hint_counts(&coordinator, target), (0, 0), "nothing hinted");
    }

    // Heal: nothing was acknowledged, so nothing may appear anywhere.
    heal(&rules);
    wait_all_up(&cluster);
    for node in &cluster.nodes {
        for target in &addrs {
            if *target != node.addr() {
                assert_eq!(hint_counts(&node.addr(), target).0, 0);
            }
        }
        assert_eq!(
            OwnCopyReader::of(node, SECRET).read(key.as_bytes()),
            Some(None),
            "{} holds no copy of the refused write",
            node.addr()
        );
    }
    let got = client.get(key.as_bytes(), Some(Consistency::All)).unwrap();
    assert!(got.values.is_empty(), "{got:?}");

    // Sloppy: the coordinator restarted with --sloppy-quorum true (a coordinator's
    // setting), same cut: the down homes get the two fallbacks as stand-ins.
    let sloppy_at = cluster.nodes[0]
        .extra_args
        .iter()
        .position(|a| a == "--sloppy-quorum")
        .unwrap();
    cluster.nodes[0].kill();
    cluster.nodes[0].extra_args[sloppy_at + 1] = "true".into();
    cluster.nodes[0].restart();
    wait_all_up(&cluster);
    isolate(&rules);
    wait_until(
        "the coordinator to mark both homes down again",
        DEADLINE,
        || all_see(std::slice::from_ref(&coordinator), &cut_view),
    );
    let mut client = pinned(&coordinator);
    // The per-request override: strict for this one write, on a sloppy coordinator.
    client.set_sloppy_quorum(Some(false));
    match client.put(
        key.as_bytes(),
        b"strict-override",
        Some(Consistency::Quorum),
        None,
    ) {
        Err(ClientError::Server(ErrorReply::Unavailable { required, alive })) => {
            assert_eq!((required, alive), (2, 1));
        }
        other => panic!("a strict write with one home up must be Unavailable: {other:?}"),
    }
    client.set_sloppy_quorum(None);
    client
        .put(
            key.as_bytes(),
            b"sloppy-value",
            Some(Consistency::Quorum),
            None,
        )
        .unwrap();
    // Each fallback holds one hint, for one of the two homes; the coordinator none.
    let held = |holder: &str| -> u64 {
        homes_cut
            .iter()
            .map(|h| hint_counts(holder, &addrs[*h]).0)
            .sum()
    };
    wait_until("each fallback to hold a hint", DEADLINE, || {
        fallbacks.iter().all(|f| held(&addrs[*f]) == 1)
    });
    for h in &homes_cut {
        let per_home: u64 = fallbacks
            .iter()
            .map(|f| hint_counts(&addrs[*f], &addrs[*h]).0)
            .sum();
        assert_eq!(per_home, 1, "one stand-in per down home");
    }
    assert_eq!(held(&coordinator), 0, "the stand-ins acked: no hint here");

    heal(&rules);
    wait_all_up(&cluster);
    wait_until("the stand-ins' hints to drain", DEADLINE, || {
        fallbacks.iter().all(|f| held(&addrs[*f]) == 0)
    });
    for h in &homes_cut {
        assert_eq!(
            OwnCopyReader::of(&cluster.nodes[*h], SECRET).read(key.as_bytes()),
            Some(Some(b"sloppy-value".to_vec())),
            "home {} got the write from its stand-in",
            addrs[*h]
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Partition

/// How long the partition test keeps the node cut off.
const CUT_FOR: Duration = Duration::from_secs(30);
/// Writer pace: bounded load, so the five debug nodes and the other tests keep up.
const WRITES_PER_S: f64 = 150.0;

#[derive(Default)]
struct WriteLog {
    /// (key, value, started after every survivor marked the node down) of writes
    /// started after the cut rules were written, and acknowledged.
    acked_during_cut: Vec<(String, String, bool)>,
    acked_before_cut: u64,
    /// Errors of writes started during the cut, as text.
    failed_during_cut: Vec<String>,
}

/// Paced unique-key writes at W=2, round-robin through clients pinned to `hosts`,
/// until `stop`; a write counts as "during the cut" when `cut` was set at its start,
/// and as "marked down" when `down` was.
fn paced_writer(
    hosts: Vec<String>,
    cut: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriteLog>>,
) {
    let mut clients: Vec<Client> = hosts.iter().map(|h| pinned(h)).collect();
    let started = Instant::now();
    let hard_stop = started + Duration::from_secs(300);
    for n in 0u64.. {
        if stop.load(Ordering::SeqCst) || Instant::now() > hard_stop {
            return;
        }
        // Pacing, not waiting for a condition: write n is due at n / rate.
        let due = started + Duration::from_secs_f64(n as f64 / WRITES_PER_S);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let during_cut = cut.load(Ordering::SeqCst);
        let marked_down = down.load(Ordering::SeqCst);
        let (key, value) = (format!("part-{n}"), format!("value-{n}"));
        let client = &mut clients[n as usize % hosts.len()];
        let result = client.put(
            key.as_bytes(),
            value.as_bytes(),
            Some(Consistency::Two),
            None,
        );
        let mut log = log.lock().unwrap();
        match (result, during_cut) {
            (Ok(()), true) => log.acked_during_cut.push((key, value, marked_down)),
            (Ok(()), false) => log.acked_before_cut += 1,
            (Err(e), true) => log.failed_during_cut.push(e.to_string()),
            (Err(_), false) => {}
        }
    }
}

#[test]
fn a_node_cut_off_for_30s_gets_every_write_by_hint_replay_after_the_heal() {
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<PathBuf> = (0..5)
        .map(|i| dir.path().join(format!("node{i}.rules")))
        .collect();
    let metrics: Vec<String> = (0..5)
        .map(|_| format!("127.0.0.1:{}", free_port_block(1)))
        .collect();
    let cluster = {
        let (rules, metrics) = (rules.clone(), metrics.clone());
        start_cluster_with(5, 1, move |i| {
            let mut flags = base_flags();
            flags.extend(metrics_flag(&metrics[i]));
            flags.push("--fault-rules-file".into());
            flags.push(rules[i].display().to_string());
            flags
        })
    };
    wait_all_up(&cluster);
    let addrs = cluster.addrs();
    let isolated = addrs[4].clone();
    let survivors: Vec<String> = addrs[..4].to_vec();
    let isolated_id = node_id_of(&isolated);
    let target_label = format!("target=\"{isolated_id:016x}\"");
    let pending_for_isolated = || -> f64 {
        metrics
            .iter()
            .map(|m| sum_series_with(&metrics_text(m), "ringkv_hints_pending", &target_label))
            .sum()
    };
    let delivered_to_isolated = || -> f64 {
        metrics
            .iter()
            .map(|m| {
                sum_series_with(
                    &metrics_text(m),
                    "ringkv_hints_delivered_total",
                    &target_label,
                )
            })
            .sum()
    };
    let ring = common::RingView::of(&addrs[0]);

    let flag = || Arc::new(AtomicBool::new(false));
    let (cut, down, stop) = (flag(), flag(), flag());
    let log = Arc::new(Mutex::new(WriteLog::default()));
    let writer = {
        let (hosts, log) = (survivors.clone(), log.clone());
        let (cut, down, stop) = (cut.clone(), down.clone(), stop.clone());
        std::thread::spawn(move || paced_writer(hosts, cut, down, stop, log))
    };
    // Stop the writer even if an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());
    wait_until("some writes before the cut", DEADLINE, || {
        log.lock().unwrap().acked_before_cut >= 50
    });

    // Cut the node off both ways.
    write_fault_rules(&rules[4], "cut *\n");
    for file in &rules[..4] {
        write_fault_rules(file, &format!("cut {isolated}\n"));
    }
    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let survivors_view = view(&survivors.iter().collect::<Vec<_>>(), &[&isolated]);
    wait_until("the survivors to mark the node down", DEADLINE, || {
        all_see(&survivors, &survivors_view)
    });
    let marked_down_after = cut_at.elapsed();
    down.store(true, Ordering::SeqCst);
    wait_until(
        "every survivor's status to show hints for the node",
        DEADLINE,
        || {
            survivors.iter().all(|s| {
                status_hint_cell(s, &isolated)
                    .is_some_and(|cell| cell.starts_with(|c: char| c.is_ascii_digit()))
            })
        },
    );
    // The cut lasts CUT_FOR (a scenario length, not a wait for a condition).
    while cut_at.elapsed() < CUT_FOR {
        assert!(!writer.is_finished(), "the writer stopped early");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let cells: Vec<String> = survivors
        .iter()
        .map(|s| status_hint_cell(s, &isolated).unwrap())
        .collect();
    let pending_at_heal = pending_for_isolated();
    let delivered_before = delivered_to_isolated();

    // Heal and time the drain.
    for file in &rules {
        write_fault_rules(file, "");
    }
    let healed_at = Instant::now();
    wait_all_up(&cluster);
    let up_after = healed_at.elapsed();
    wait_until("every node's hints for the node to drain", DEADLINE, || {
        pending_for_isolated() == 0.0
    });
    let drained_after = healed_at.elapsed();
    let replayed = delivered_to_isolated() - delivered_before;

    let log = log.lock().unwrap();
    let unavailable: Vec<&String> = log
        .failed_during_cut
        .iter()
        .filter(|e| e.contains("unavailable"))
        .collect();
    assert!(
        unavailable.is_empty(),
        "sloppy quorum at W=2 never refuses with one node down: {unavailable:?}"
    );
    // Writes with the cut node as a home: the ones the node missed (except a few in
    // the first ~100 ms, before the nodes re-read their rules).
    let homed: Vec<&(String, String, bool)> = log
        .acked_during_cut
        .iter()
        .filter(|(k, _, _)| ring.replicas(k.as_bytes()).contains(&isolated_id))
        .collect();
    let homed_while_down = homed.iter().filter(|(_, _, down)| *down).count();
    println!(
        "partition test: cut {CUT_FOR:?}, node marked down after {marked_down_after:.1?}; \
         {} writes acknowledged during the cut ({} with the cut node as a home, {} of them after it was marked down), {} failed; \
         status cells at heal {cells:?}; {pending_at_heal} hints pending at heal; \
         up everywhere {up_after:.1?} and drained {drained_after:.1?} after the heal; \
         {replayed} hints replayed",
        log.acked_during_cut.len(),
        homed.len(),
        homed_while_down,
        log.failed_during_cut.len(),
    );
    assert!(!homed.is_empty() && pending_at_heal > 0.0);
    // Once the node was marked down, each of its writes certainly got a hint (from a
    // stand-in or the coordinator).
    assert!(
        replayed >= homed_while_down as f64,
        "a hint per write it missed: {replayed} replayed, {homed_while_down} writes"
    );

    // Reads at ONE coordinated by the healed node: every acknowledged write.
    let mut at_one = pinned(&isolated);
    let mut transient_errors: Vec<String> = Vec::new();
    for (key, value, _) in &log.acked_during_cut {
        // Seen once with every test of this file running at once on 2 cores: a read
        // right after the heal timed out (Timeout, 0 of 1 answers). An operational error
        // is retried (bounded, counted); a wrong answer never is.
        let mut got = None;
        wait_until("a read at ONE through the healed node", DEADLINE, || {
            match at_one.get(key.as_bytes(), Some(Consistency::One)) {
                Ok(answer) => got = Some(answer),
                Err(e) if ringkv::client::blocking::is_operational(&e) => {
                    transient_errors.push(format!("{key}: {e}"));
                }
                Err(e) => panic!("{key} at ONE: {e}"),
            }
            got.is_some()
        });
        let got = got.unwrap();
        assert_eq!(got.values, vec![value.clone().into_bytes()], "{key} at ONE");
    }
    if !transient_errors.is_empty() {
        println!("partition test: reads at ONE retried after {transient_errors:?}");
    }
    // A read at ONE may be answered by another replica (or, for keys the node does not
    // replicate, only by others), so its own copies are checked directly too.
    let mut own = OwnCopyReader::of(&cluster.nodes[4], SECRET);
    for (key, value, _) in &homed {
        assert_eq!(
            own.read(key.as_bytes()),
            Some(Some(value.clone().into_bytes())),
            "the cut node's own copy of {key}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. Kill

const KILL_ROUNDS: usize = 20;
const LOADGEN_KEYS: u64 = 2000;

/// The load generator's key for key number `id` (its documented fixed-width format).
fn loadgen_key(id: u64) -> Vec<u8> {
    format!("user{id:012}").into_bytes()
}

#[test]
fn every_acknowledged_write_survives_20_sigkills_of_a_replica_under_load() {
    let Some(loadgen) = loadgen_bin() else {
        println!(
            "SKIPPED: ringkv-loadgen not found next to {} — build the workspace first \
             (`cargo build --workspace`, as .ci/run does)",
            common::BIN
        );
        return;
    };
    let help = Command::new(&loadgen).arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--verify-final"),
        "{} is stale (no --verify-final): run `cargo build --workspace`",
        loadgen.display()
    );
    let metrics = format!("127.0.0.1:{}", free_port_block(1));
    let mut cluster = start_cluster_with(3, 2, |i| {
        let mut flags = base_flags();
        if i == 0 {
            flags.extend(metrics_flag(&metrics));
        }
        flags
    });
    wait_all_up(&cluster);
    let addrs = cluster.addrs();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("kill.json");
    let stdout = dir.path().join("kill.out");
    let stderr = dir.path().join("kill.err");

    // Node 0 is the contact point for the whole run; node 2 is killed and restarted.
    // Requests fail over to other coordinators while node 2 is gone; the load
    // generator's session timestamps order sequential writes of a key across them.
    let duration_s = 120;
    let mut run = ChildGuard(Some(
        Command::new(&loadgen)
            .args([
                "--hosts",
                &addrs[0],
                "--verify",
                "--verify-final",
                "--verify-final-consistency",
                "all",
                "--consistency",
                "quorum",
                "--read-ratio",
                "0.5",
                "--distribution",
                "uniform",
                "--keys",
                &LOADGEN_KEYS.to_string(),
                "--value-size",
                "32",
                "--connections",
                "2",
                "--pipeline",
                "2",
                "--rate",
                "300",
                "--warmup",
                "0s",
                "--duration",
                &format!("{duration_s}s"),
                "--json",
                &json.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .unwrap(),
    ));
    let all_up = view(&addrs.iter().collect::<Vec<_>>(), &[]);
    let rounds_started = Instant::now();
    for round in 0..KILL_ROUNDS {
        assert!(
            run.is_running(),
            "the load generator ended after {round} kill rounds ({:.0?}): its --duration \
             ({duration_s}s) is too short for this machine",
            rounds_started.elapsed()
        );
        cluster.nodes[2].kill();
        cluster.nodes[2].restart();
        wait_until(
            "the restarted node and its peers to see all up",
            DEADLINE,
            || all_see(&addrs, &all_up),
        );
    }
    let rounds_took = rounds_started.elapsed();
    assert!(
        run.is_running(),
        "the load generator ended before the last kill round finished ({rounds_took:.0?})"
    );
    let status = run.wait_with_deadline(Duration::from_secs(duration_s + 180));
    let out = std::fs::read_to_string(&stdout).unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    println!("kill test: {KILL_ROUNDS} rounds in {rounds_took:.1?}\n{out}");
    assert!(status.success(), "loadgen exit {status}:\n{out}\n{err}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["verify"]["violations"], 0, "{report}");
    assert!(report["verify"]["reads_checked"].as_u64().unwrap() > 0);
    let final_line = out
        .lines()
        .find(|l| l.starts_with("verify-final:"))
        .expect("a verify-final line");
    assert!(
        final_line.ends_with(" 0 missing, 0 stale, 0 unreadable"),
        "no acknowledged write lost: {final_line}"
    );
    let final_keys: u64 = final_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(final_keys > 0, "{final_line}");

    // Handoff took part: node 0 hinted writes node 2 missed, and all were delivered.
    let target_label = format!("target=\"{:016x}\"", node_id_of(&addrs[2]));
    wait_until("node 0's hints for node 2 to drain", DEADLINE, || {
        sum_series_with(
            &metrics_text(&metrics),
            "ringkv_hints_pending",
            &target_label,
        ) == 0.0
    });
    let delivered = sum_series_with(
        &metrics_text(&metrics),
        "ringkv_hints_delivered_total",
        &target_label,
    );
    println!("kill test: {delivered} hints delivered to the killed node");
    assert!(delivered > 0.0, "the kills left writes to hint");

    // Every node coordinates a read at ALL of every key to the same answer.
    let mut clients: Vec<Client> = addrs.iter().map(|a| pinned(a)).collect();
    for id in 0..LOADGEN_KEYS {
        let key = loadgen_key(id);
        let answers: Vec<Vec<Vec<u8>>> = clients
            .iter_mut()
            .map(|c| c.get(&key, Some(Consistency::All)).unwrap().values)
            .collect();
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "nodes disagree at ALL on {}",
            String::from_utf8_lossy(&key)
        );
    }
}

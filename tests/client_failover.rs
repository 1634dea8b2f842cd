//! Client failover on real processes: three nodes, RF=3, default gossip (conviction
//! takes seconds). One node is SIGKILLed; at once, before gossip calls it down, QUORUM
//! puts, gets and deletes of keys whose first replica is the killed node succeed
//! through the `ringkv` CLI (asking a live node) and through a blocking `Client`
//! whose topology still lists the dead node as up: each request fails over to the
//! key's next replica instead of reporting the connection error. The same for
//! `ringkv-loadgen --verify` at QUORUM: a node killed mid-run costs no error, the
//! moved requests are counted as failovers, and nothing acknowledged is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, loadgen_bin, replica_addrs, status_view, wait_until, ChildGuard, Cluster};
use ringkv::client::blocking::Client;
use ringkv::protocol::types::Consistency;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: three nodes start and meet while other builds share 2 cores.
const DEADLINE: Duration = Duration::from_secs(90);
/// Keys per phase whose first replica is the killed node.
const KEYS: usize = 4;
/// Far above what a failover costs (a refused connect is immediate), far below a
/// connect timeout.
const OP_BOUND: Duration = Duration::from_secs(4);

fn wait_all_up(addrs: &[String]) {
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        addrs
            .iter()
            .all(|h| status_view(h).is_some_and(|v| v.len() == 3 && v.values().all(|up| *up)))
    });
}

/// `count` keys whose first replica (by `topology`) is `victim`.
fn keys_first_on(
    topology: &ringkv::protocol::types::Topology,
    victim: &str,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| replica_addrs(topology, k.as_bytes())[0] == victim)
        .take(count)
        .collect()
}

/// Run the CLI with a deadline on its own duration; returns (exit code, stdout, stderr).
fn timed_cli(args: &[&str]) -> (i32, String, String) {
    let started = Instant::now();
    let (code, out, err) = cli(args);
    let took = started.elapsed();
    assert!(
        took < OP_BOUND,
        "ringkv {args:?} took {took:?} (exit {code}): {err}"
    );
    (code, String::from_utf8(out).unwrap(), err)
}

#[test]
fn quorum_requests_fail_over_from_a_killed_first_replica_before_gossip_notices() {
    let mut cluster = Cluster::start(&[2, 2, 2], &["--replication-factor", "3"]);
    let addrs = cluster.addrs();
    wait_all_up(&addrs);
    let victim = addrs[2].clone();
    let live = addrs[0].clone();

    // A client that learned the topology (all up) and holds connections to the
    // victim's shards: after the kill it still routes these keys there first.
    let mut client = Client::connect(&live).unwrap();
    let topology = client.topology().unwrap().clone();
    let cli_keys = keys_first_on(&topology, &victim, "cli-", KEYS);
    let lib_keys = keys_first_on(&topology, &victim, "lib-", KEYS);
    assert_eq!((cli_keys.len(), lib_keys.len()), (KEYS, KEYS));
    for key in &lib_keys {
        client
            .put(key.as_bytes(), b"before", Some(Consistency::Quorum), None)
            .unwrap();
    }

    cluster.nodes[2].kill();
    let killed_at = Instant::now();

    // The CLI first: each run asks the live node for a fresh topology, which lists the
    // victim as up only until gossip convicts it.
    for key in &cli_keys {
        let (code, _, err) = timed_cli(&[
            "put",
            key,
            "after",
            "--host",
            &live,
            "--consistency",
            "quorum",
        ]);
        assert_eq!(code, 0, "put {key}: {err}");
        let (code, out, err) = timed_cli(&["get", key, "--host", &live, "--consistency", "quorum"]);
        assert_eq!((code, out.as_str()), (0, "after"), "get {key}: {err}");
    }
    let (code, _, err) = timed_cli(&[
        "delete",
        &cli_keys[0],
        "--host",
        &live,
        "--consistency",
        "quorum",
    ]);
    assert_eq!(code, 0, "delete: {err}");
    let cli_phase = killed_at.elapsed();
    let still_up = status_view(&live).and_then(|v| v.get(&victim).copied());
    println!(
        "CLI phase took {cli_phase:.1?} after the kill; the live node then saw the victim as {}",
        match still_up {
            Some(true) => "up (not yet convicted)",
            Some(false) => "down (convicted during the CLI phase)",
            None => "unknown",
        }
    );

    // The library client: its topology says the victim is up, its cached connections
    // to it are closed by the dead node's kernel.
    for key in &lib_keys {
        let started = Instant::now();
        client
            .put(key.as_bytes(), b"after", Some(Consistency::Quorum), None)
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        let got = client
            .get(key.as_bytes(), Some(Consistency::Quorum))
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(got.values, vec![b"after".to_vec()], "{key}");
        assert!(
            started.elapsed() < OP_BOUND * 2,
            "{key}: {:?}",
            started.elapsed()
        );
    }
    client
        .delete(lib_keys[0].as_bytes(), Some(Consistency::Quorum), None)
        .unwrap();
    assert!(client
        .get(lib_keys[0].as_bytes(), Some(Consistency::Quorum))
        .unwrap()
        .is_empty());
    assert!(
        client
            .topology()
            .unwrap()
            .nodes
            .iter()
            .any(|n| n.address == victim && n.up),
        "the client's own topology still calls the victim up: its requests failed over"
    );
    println!(
        "both phases done {:.1?} after the kill",
        killed_at.elapsed()
    );
}

#[test]
fn the_load_generator_fails_over_from_a_killed_node_without_an_error() {
    let Some(loadgen) = loadgen_bin() else {
        println!(
            "SKIPPED: ringkv-loadgen not found next to {} — build the workspace first \
             (`cargo build --workspace`, as .ci/run does)",
            common::BIN
        );
        return;
    };
    let mut cluster = Cluster::start(&[2, 2, 2], &["--replication-factor", "3"]);
    let addrs = cluster.addrs();
    wait_all_up(&addrs);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let stdout = dir.path().join("run.out");
    let stderr = dir.path().join("run.err");
    let duration_s = 12;
    let mut run = ChildGuard(Some(
        Command::new(&loadgen)
            .args([
                "--hosts",
                &addrs[0],
                "--verify",
                "--consistency",
                "quorum",
                "--read-ratio",
                "0.5",
                "--distribution",
                "uniform",
                "--keys",
                "500",
                "--value-size",
                "32",
                "--connections",
                "2",
                "--pipeline",
                "2",
                "--rate",
                "200",
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
    // Killed once the run is two seconds in (its second live line is out): its
    // sockets to the node are open and its topology calls the node up.
    wait_until("the load generator to run for 2 s", DEADLINE, || {
        std::fs::read_to_string(&stderr).is_ok_and(|e| e.contains("[   2s]"))
    });
    assert!(run.is_running());
    cluster.nodes[2].kill();
    let status = run.wait_with_deadline(Duration::from_secs(duration_s + 120));
    let out = std::fs::read_to_string(&stdout).unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    println!("{out}");
    assert!(status.success(), "loadgen exit {status}:\n{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let errors = &report["total"]["errors"];
    let error_count: u64 = errors.as_object().map_or(0, |m| {
        m.values().filter_map(serde_json::Value::as_u64).sum()
    });
    assert_eq!(error_count, 0, "no op failed: {errors}\n{err}");
    assert!(report["total"]["count"].as_u64().unwrap() > 0, "{report}");
    let connections = &report["connections"];
    assert!(
        connections["failovers"].as_u64().unwrap() > 0,
        "requests for the killed node moved elsewhere: {connections}"
    );
    assert_eq!(connections["disconnects"], 0, "{connections}");
    assert_eq!(report["verify"]["violations"], 0, "{report}");
    assert!(report["verify"]["reads_checked"].as_u64().unwrap() > 0);
}

//! Availability while a node dies, on real processes: three nodes, RF=3, the default
//! gossip interval (so gossip takes several seconds to convict), the load generator at
//! QUORUM with `--verify` and 8 connections × 4 in flight. One node is killed with
//! SIGKILL (or silenced with SIGSTOP) a few seconds into the run and brought back later.
//! Through the whole window before and after gossip convicts it, requests fail over to
//! the other nodes: at most the requests in flight at the kill may fail, no read is
//! older than an acknowledged write, and the final pass finds every acknowledged write
//! at QUORUM. The kill loop SIGKILLs every node in turn, in batch and in periodic
//! mode, and checks the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{loadgen_bin, status_rows, wait_until, ChildGuard, Cluster};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "death-secret";
const CONNECTIONS: u64 = 8;
const PIPELINE: u64 = 4;

#[derive(Clone, Copy, Debug)]
enum Death {
    Kill,
    Stop,
}

fn all_up(cluster: &Cluster) -> bool {
    let addrs = cluster.addrs();
    addrs.iter().all(|host| {
        status_rows(host).is_some_and(|rows| {
            rows.len() == addrs.len() && addrs.iter().all(|a| rows.get(a).is_some_and(|r| r.0))
        })
    })
}

fn signal(pid: i32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The load generator at QUORUM over every node with `--verify`, and a final pass that
/// reads every acknowledged key at QUORUM through every node.
struct QuorumLoad {
    run: ChildGuard,
    json: std::path::PathBuf,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
    duration_s: u64,
    _dir: tempfile::TempDir,
}

impl QuorumLoad {
    fn start(
        loadgen: &std::path::Path,
        cluster: &Cluster,
        shape: (u64, u64),
        rate: u64,
        duration_s: u64,
    ) -> QuorumLoad {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("run.json");
        let out = dir.path().join("run.out");
        let err = dir.path().join("run.err");
        let run = ChildGuard(Some(
            Command::new(loadgen)
                .args([
                    "--hosts",
                    &cluster.addrs().join(","),
                    "--consistency",
                    "quorum",
                    "--verify",
                    "--verify-final",
                    "--verify-final-consistency",
                    "quorum",
                    "--read-ratio",
                    "0.5",
                    "--keys",
                    "2000",
                    "--value-size",
                    "32",
                    "--connections",
                    &shape.0.to_string(),
                    "--pipeline",
                    &shape.1.to_string(),
                    "--rate",
                    &rate.to_string(),
                    "--attempt-timeout",
                    "500ms",
                    "--warmup",
                    "0s",
                    "--duration",
                    &format!("{duration_s}s"),
                    "--json",
                    &json.display().to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
                .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
                .spawn()
                .unwrap(),
        ));
        QuorumLoad {
            run,
            json,
            out,
            err,
            duration_s,
            _dir: dir,
        }
    }

    /// Still running (else fail with what it printed).
    fn assert_running(&mut self, when: &str) {
        assert!(
            self.run.is_running(),
            "the load generator ended {when} (--duration {}s):\n{}",
            self.duration_s,
            std::fs::read_to_string(&self.err).unwrap_or_default()
        );
    }

    /// Wait for the end; it succeeded, no read was older than an acknowledged write, and
    /// the final pass found every acknowledged write. Returns the JSON report and stdout.
    fn finish(mut self, what: &str) -> (serde_json::Value, String) {
        let status = self
            .run
            .wait_with_deadline(Duration::from_secs(self.duration_s + 120));
        let stdout = std::fs::read_to_string(&self.out).unwrap();
        let stderr = std::fs::read_to_string(&self.err).unwrap();
        println!("{what}:\n{stdout}");
        assert!(
            status.success(),
            "loadgen exit {status}:\n{stdout}\n{stderr}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.json).unwrap()).unwrap();
        assert_eq!(report["verify"]["violations"], 0, "{report}");
        assert!(report["verify"]["reads_checked"].as_u64().unwrap() > 0);
        let final_line = stdout
            .lines()
            .find(|l| l.starts_with("verify-final:"))
            .expect("a verify-final line");
        assert!(
            final_line.ends_with(" 0 missing, 0 stale, 0 unreadable"),
            "every acknowledged write is readable at QUORUM through every node: {final_line}"
        );
        (report, stdout)
    }
}

fn trial(death: Death) {
    let Some(loadgen) = loadgen_bin() else {
        println!("SKIPPED: ringkv-loadgen not built (cargo build --workspace, as .ci/run does)");
        return;
    };
    let flags = ["--replication-factor", "3", "--cluster-secret", SECRET];
    let mut cluster = Cluster::start(&[1, 1, 1], &flags);
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        all_up(&cluster)
    });
    let mut load = QuorumLoad::start(&loadgen, &cluster, (CONNECTIONS, PIPELINE), 1500, 30);
    // The schedule of the trial (events at fixed times of the run, not waits).
    let started = Instant::now();
    let at = |s: u64| {
        let when = started + Duration::from_secs(s);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
    };
    at(6);
    load.assert_running("early");
    let victim = 1;
    let pid = cluster.nodes[victim].pid();
    match death {
        Death::Kill => cluster.nodes[victim].kill(),
        Death::Stop => signal(pid, "STOP"),
    }
    at(18);
    match death {
        Death::Kill => cluster.nodes[victim].restart(),
        Death::Stop => signal(pid, "CONT"),
    }
    wait_until("every node to see 3 nodes up again", DEADLINE, || {
        all_up(&cluster)
    });
    let (report, _) = load.finish(&format!("{death:?} trial"));
    let errors: u64 = report["total"]["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        errors <= CONNECTIONS * PIPELINE,
        "{errors} failed requests, more than the {} in flight at the {death:?}: {}",
        CONNECTIONS * PIPELINE,
        report["total"]["errors"]
    );
    assert!(
        report["total"]["count"].as_u64().unwrap() > 1000,
        "{report}"
    );
    println!(
        "{death:?}: {errors} errors, {} failovers",
        report["connections"]["failovers"]
    );
}

#[test]
fn sigkill_of_a_replica_under_quorum_load_fails_at_most_the_requests_in_flight() {
    trial(Death::Kill);
}

#[test]
fn sigstop_of_a_replica_under_quorum_load_fails_at_most_the_requests_in_flight() {
    trial(Death::Stop);
}

/// The kill -9 loop: every node in turn is SIGKILLed under QUORUM load and restarted
/// at once, twice each, in `sync` commit-log mode. No read may be older than an
/// acknowledged write, and afterwards every acknowledged write is read back at QUORUM
/// through every node, before any repair.
fn kill_loop(sync: &str) {
    let Some(loadgen) = loadgen_bin() else {
        println!("SKIPPED: ringkv-loadgen not built (cargo build --workspace, as .ci/run does)");
        return;
    };
    let flags = [
        "--replication-factor",
        "3",
        "--cluster-secret",
        SECRET,
        "--commitlog-sync",
        sync,
    ];
    let mut cluster = Cluster::start(&[1, 1, 1], &flags);
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        all_up(&cluster)
    });
    let mut load = QuorumLoad::start(&loadgen, &cluster, (4, 2), 600, 60);
    // The load generator learns the topology at its start; the first kill waits until
    // it reports its first second of load (per-second lines go to its stderr).
    wait_until(
        "the load generator to report a second of load",
        DEADLINE,
        || {
            std::fs::read_to_string(&load.err).is_ok_and(|text| {
                text.lines()
                    .any(|l| l.starts_with('[') && l.contains("ops/s"))
            })
        },
    );
    let rounds = 6;
    let started = Instant::now();
    for round in 0..rounds {
        load.assert_running(&format!(
            "after {round} kill rounds ({:.0?})",
            started.elapsed()
        ));
        let victim = round % 3;
        cluster.nodes[victim].kill();
        cluster.nodes[victim].restart();
        wait_until("every node to see 3 nodes up again", DEADLINE, || {
            all_up(&cluster)
        });
    }
    load.assert_running(&format!(
        "before the last kill round ({:.0?})",
        started.elapsed()
    ));
    let (report, _) = load.finish(&format!("kill loop ({sync}), {rounds} rounds"));
    println!(
        "kill loop ({sync}): errors {}, failovers {}",
        report["total"]["errors"], report["connections"]["failovers"]
    );
}

#[test]
fn kill_loop_through_every_node_loses_no_acknowledged_write_in_batch_mode() {
    kill_loop("batch");
}

#[test]
fn kill_loop_through_every_node_loses_no_acknowledged_write_in_periodic_mode() {
    kill_loop("periodic");
}

/// `speculative_retry = "50ms"`: a read asks its own copy and one more replica, and the
/// third only after 50 ms. With one replica silenced (SIGSTOP, not yet convicted), a read
/// whose second replica is the silent one still answers, from the third, instead of
/// waiting for the request timeout.
#[test]
fn speculative_reads_route_around_a_silent_replica() {
    use ringkv::client::blocking::Client;
    use ringkv::protocol::types::Consistency;
    let flags = [
        "--replication-factor",
        "3",
        "--cluster-secret",
        SECRET,
        "--speculative-retry",
        "50ms",
        // Long enough that the stopped node is not convicted during the reads.
        "--phi-convict-threshold",
        "16",
    ];
    let cluster = Cluster::start(&[1, 1, 1], &flags);
    wait_until("every node to see 3 nodes up", DEADLINE, || {
        all_up(&cluster)
    });
    let addrs = cluster.addrs();
    let mut writer = Client::connect(&addrs[0]).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("spec-{i}")).collect();
    for key in &keys {
        writer
            .put(key.as_bytes(), key.as_bytes(), Some(Consistency::All), None)
            .unwrap();
    }
    let silent = cluster.nodes[2].pid();
    signal(silent, "STOP");
    let mut reader = Client::connect(&addrs[0]).unwrap();
    reader.pin_to_seed(true);
    let mut failures = Vec::new();
    for key in &keys {
        match reader.get(key.as_bytes(), Some(Consistency::Quorum)) {
            Ok(got) if got.values == vec![key.as_bytes().to_vec()] => {}
            other => failures.push(format!("{key}: {other:?}")),
        }
    }
    signal(silent, "CONT");
    assert!(
        failures.is_empty(),
        "QUORUM reads through node 0 with node 2 silent: {failures:?}"
    );
}

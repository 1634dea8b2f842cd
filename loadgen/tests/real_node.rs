//! `ringkv-loadgen` against a real single `ringkv serve` for a few seconds: the JSON has
//! non-zero operations, no errors, and sane percentiles (p50 ≤ p99 ≤ max).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOADGEN: &str = env!("CARGO_BIN_EXE_ringkv-loadgen");

/// The `ringkv` binary, built beside ours by `cargo test --workspace`.
fn ringkv_bin() -> PathBuf {
    let path = PathBuf::from(LOADGEN).with_file_name("ringkv");
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (or `cargo build --bin ringkv`)",
        path.display()
    );
    path
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_ports(n: u16) -> u16 {
    // Tests of this file run in parallel in one process: each call starts its search at
    // a different place, and holds what it found only until the server binds it.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Below the kernel's ephemeral range (32768+ by default).
    let start = 12_000 + ((std::process::id() as u16 % 500) * 16 + call * 211) % 16_000;
    for base in (start..32_000).step_by(7) {
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

/// Start `ringkv serve` with `extra` flags; returns it and its client address.
fn start_server(dir: &std::path::Path, extra: &[&str]) -> (Server, String) {
    let port = free_ports(3);
    let addr = format!("127.0.0.1:{port}");
    let server = Server(
        Command::new(ringkv_bin())
            .args(["serve", "--listen", &addr, "--shards", "2", "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    (server, addr)
}

/// With `client_auth_token` set, the load generator works with `--token` and fails
/// to connect (exit 3) without it.
#[test]
fn loadgen_presents_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(dir.path(), &["--client-auth-token", "lg-secret"]);
    let run = |extra: &[&str]| {
        Command::new(LOADGEN)
            .args([
                "--hosts",
                &addr,
                "--workload",
                "a",
                "--keys",
                "100",
                "--ops",
                "500",
                "--connections",
                "2",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let without = run(&[]);
    assert_eq!(
        without.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let with = run(&["--token", "lg-secret"]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
}

#[test]
fn loadgen_against_a_real_node_reports_sane_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(dir.path(), &[]);
    let json = dir.path().join("out.json");
    let hgrm = dir.path().join("out.hgrm");
    let out = Command::new(LOADGEN)
        .args([
            "--hosts",
            &addr,
            "--workload",
            "a",
            "--keys",
            "2000",
            "--load",
            "2000",
            "--connections",
            "4",
        ])
        .args([
            "--pipeline",
            "4",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--verify",
            "--json",
        ])
        .arg(&json)
        .arg("--hgrm")
        .arg(&hgrm)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let text = report.to_string();
    // Walk every per-operation latency summary in the report and check its shape.
    let mut checked = 0;
    fn walk(v: &serde_json::Value, checked: &mut usize) {
        match v {
            serde_json::Value::Object(map) => {
                if let (Some(p50), Some(p99), Some(max), Some(count)) = (
                    map.get("p50_us").and_then(|x| x.as_f64()),
                    map.get("p99_us").and_then(|x| x.as_f64()),
                    map.get("max_us").and_then(|x| x.as_f64()),
                    map.get("count").and_then(|x| x.as_u64()),
                ) {
                    if count > 0 {
                        assert!(
                            p50 > 0.0 && p50 <= p99 && p99 <= max,
                            "insane percentiles: {map:?}"
                        );
                        *checked += 1;
                    }
                }
                map.values().for_each(|x| walk(x, checked));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|x| walk(x, checked)),
            _ => {}
        }
    }
    walk(&report, &mut checked);
    assert!(
        checked >= 2,
        "expected read and update summaries with operations: {text}"
    );
    assert!(
        std::fs::read_to_string(&hgrm)
            .unwrap()
            .contains("Percentile"),
        "hgrm written"
    );
}

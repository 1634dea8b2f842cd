//! The binary's exit codes and outputs (runs against the in-process fake target).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv-loadgen"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &["--no-such-flag"],
        &["--workload", "a"], // no --hosts
        &["--hosts", "fake", "--workload", "z"],
        &["--hosts", "fake", "--workload", "a", "--read-ratio", "0.9"],
        &["--hosts", "fake", "--read-ratio", "1.5"],
        &["--hosts", "fake", "--distribution", "pareto"],
        &["--hosts", "fake", "--duration", "10s", "--ops", "5"],
        &["--hosts", "fake", "--duration", "soon"],
        &["--hosts", "fake", "--consistency", "most"],
        &["--hosts", "fake", "--connections", "1", "--threads", "2"],
        &["--hosts", "fake", "--rate", "0"],
        &["--hosts", "fake", "--plot", "out.png"],
        &["--hosts", "fake", "--verify", "--value-size", "4"],
        &[
            "--hosts",
            "fake",
            "--token",
            "a",
            "--token-file",
            "/nonexistent",
        ],
        &["--plot-from", "a.json"],
        &["plot", "/nonexistent.json", "--out", "x.svg"],
    ];
    for args in cases {
        let o = loadgen(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?} printed no reason");
    }
}

#[test]
fn workload_e_is_refused_with_the_reason() {
    let o = loadgen(&["--hosts", "fake", "--workload", "e"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no scans"), "{}", stderr(&o));
}

#[test]
fn help_exits_0() {
    let o = loadgen(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--hosts",
        "--workload",
        "--read-ratio",
        "--keys",
        "--distribution",
        "--value-size",
        "--connections",
        "--pipeline",
        "--threads",
        "--duration",
        "--ops",
        "--warmup",
        "--load",
        "--rate",
        "--consistency",
        "--json",
        "--hgrm",
        "--plot",
        "--verify",
        "--token",
        "--token-file",
        "--plot-from",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn unreachable_host_is_an_operational_failure() {
    let o = loadgen(&["--hosts", "127.0.0.1:1", "--ops", "10"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
}

#[test]
fn stale_reads_exit_4_with_key_expected_and_got() {
    let o = loadgen(&[
        "--hosts",
        "fake:stale",
        "--workload",
        "a",
        "--keys",
        "20",
        "--load",
        "20",
        "--ops",
        "2000",
        "--verify",
        "--connections",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("verify violation: key user"), "{err}");
    assert!(err.contains("expected write#"), "{err}");
    assert!(err.contains("got write#"), "{err}");
}

#[test]
fn a_run_writes_json_hgrm_and_plot_and_plots_merge() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (json_a, json_b, hgrm, svg, svg2) = (
        p("a.json"),
        p("b.json"),
        p("a.hgrm"),
        p("a.svg"),
        p("ab.svg"),
    );
    let o = loadgen(&[
        "--hosts",
        "fake:delay_us=20",
        "--workload",
        "b",
        "--keys",
        "100",
        "--load",
        "100",
        "--ops",
        "400",
        "--connections",
        "2",
        "--pipeline",
        "2",
        "--token",
        "hunter2",
        "--consistency",
        "quorum",
        "--json",
        &json_a,
        "--hgrm",
        &hgrm,
        "--plot",
        &svg,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("p99.99 ms") && table.contains("read") && table.contains("all"),
        "{table}"
    );
    let json = std::fs::read_to_string(&json_a).unwrap();
    assert!(!json.contains("hunter2"), "token leaked into the report");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["total"]["count"], 400);
    assert_eq!(v["settings"]["consistency"], "quorum");
    assert!(std::fs::read_to_string(&hgrm).unwrap().contains("#[Max"));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<polyline"));

    let o = loadgen(&[
        "--hosts",
        "fake",
        "--workload",
        "c",
        "--keys",
        "100",
        "--ops",
        "300",
        "--rate",
        "3000",
        "--json",
        &json_b,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("raw service latency"));

    let o = loadgen(&[
        "--plot-from",
        &format!("{json_a},{json_b}"),
        "--plot",
        &svg2,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let merged = std::fs::read_to_string(&svg2).unwrap();
    assert!(
        merged.contains(">a read<") && merged.contains(">b read<"),
        "{merged}"
    );
    let o = loadgen(&["plot", &json_a, &json_b, "--out", &svg2]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

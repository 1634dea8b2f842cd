//! Manifest on disk: fixtures of format version 1 and of corrupt files, and atomicity of
//! `Manifest::store` under a power loss at every step.
//!
//! Uses a small private in-memory `Disk` (below) until the shared `MemDisk` is merged:
//! files live in inodes with a volatile and a durable copy of their bytes; names live in
//! a volatile and a durable directory. `sync` makes a file's bytes durable, `sync_dir`
//! makes the names durable, `power_loss` reverts both to their durable copies.
#![allow(clippy::unwrap_used)]

use futures_lite::future::block_on;
use ringkv::conflict::{ConflictMode, Hlc};
use ringkv::storage::compaction::{CompactionTask, TableSummary};
use ringkv::storage::disk::{Disk, DiskFile, ALIGN};
use ringkv::storage::manifest::{Manifest, ManifestError, MANIFEST_FILE};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

// ---------------------------------------------------------------------------------------
// Private in-memory disk with power loss and a crash point.

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Operations left before the simulated process dies; `None` = never.
    ops_left: Option<u64>,
    /// Every operation attempted so far (for finding the number of steps of a store).
    ops_done: u64,
}

#[derive(Clone, Default)]
struct TestDisk {
    state: Rc<RefCell<State>>,
}

struct TestFile {
    state: Rc<RefCell<State>>,
    inode: u64,
}

fn crashed() -> io::Error {
    io::Error::other("injected crash: the process died")
}

impl State {
    /// Count one operation; fail it and every later one once the countdown runs out.
    fn step(&mut self) -> io::Result<()> {
        self.ops_done += 1;
        match self.ops_left {
            Some(0) => Err(crashed()),
            Some(n) => {
                self.ops_left = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl TestDisk {
    fn crash_after(&self, ops: u64) {
        self.state.borrow_mut().ops_left = Some(ops);
    }

    fn ops_done(&self) -> u64 {
        self.state.borrow().ops_done
    }

    /// Lose everything not synced: names revert to the last `sync_dir`, file bytes to
    /// the last `sync`; files no durable name points to are gone. The process restarts.
    fn power_loss(&self) {
        let mut s = self.state.borrow_mut();
        s.names = s.durable_names.clone();
        let live: Vec<u64> = s.names.values().copied().collect();
        s.inodes.retain(|id, _| live.contains(id));
        for inode in s.inodes.values_mut() {
            inode.data = inode.durable.clone();
        }
        s.ops_left = None;
    }

    /// The process dies but the machine stays up: nothing is lost.
    fn process_restart(&self) {
        self.state.borrow_mut().ops_left = None;
    }

    fn put_durable(&self, name: &str, bytes: &[u8]) {
        let mut s = self.state.borrow_mut();
        let id = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(
            id,
            Inode {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
            },
        );
        s.names.insert(name.to_string(), id);
        s.durable_names.insert(name.to_string(), id);
    }

    fn names(&self) -> Vec<String> {
        self.state.borrow().names.keys().cloned().collect()
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, name.to_string())
}

impl Disk for TestDisk {
    type File = TestFile;

    async fn create(&self, name: &str) -> io::Result<TestFile> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        if s.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let id = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(id, Inode::default());
        s.names.insert(name.to_string(), id);
        Ok(TestFile {
            state: self.state.clone(),
            inode: id,
        })
    }

    async fn open(&self, name: &str) -> io::Result<TestFile> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        let id = *s.names.get(name).ok_or_else(|| not_found(name))?;
        Ok(TestFile {
            state: self.state.clone(),
            inode: id,
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        s.names.remove(name).ok_or_else(|| not_found(name))?;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_string(), id);
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        Ok(s.names.keys().cloned().collect())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        s.durable_names = s.names.clone();
        Ok(())
    }

    fn path_of(&self, name: &str) -> String {
        format!("/test-disk/{name}")
    }
}

impl TestFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut Inode) -> T) -> io::Result<T> {
        let mut s = self.state.borrow_mut();
        s.step()?;
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("stale file handle"))?;
        Ok(f(inode))
    }
}

impl DiskFile for TestFile {
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        // Same contract as the real disks: direct I/O alignment.
        assert_eq!(offset % ALIGN as u64, 0, "unaligned write offset");
        assert_eq!(buf.len() % ALIGN, 0, "unaligned write length");
        self.with_inode(|inode| {
            let end = offset as usize + buf.len();
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[offset as usize..end].copy_from_slice(buf);
        })
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        assert_eq!(offset % ALIGN as u64, 0, "unaligned read offset");
        self.with_inode(|inode| {
            let start = (offset as usize).min(inode.data.len());
            let end = (start + len).min(inode.data.len());
            inode.data[start..end].to_vec()
        })
    }

    async fn sync(&self) -> io::Result<()> {
        self.with_inode(|inode| inode.durable = inode.data.clone())
    }

    async fn size(&self) -> io::Result<u64> {
        self.with_inode(|inode| inode.data.len() as u64)
    }

    async fn truncate(&self, size: u64) -> io::Result<()> {
        self.with_inode(|inode| inode.data.resize(size as usize, 0))
    }

    async fn close(self) -> io::Result<()> {
        self.state.borrow_mut().step()
    }
}

// ---------------------------------------------------------------------------------------
// Manifests used by the tests.

fn summary(id: u64, min_key: &[u8], max_key: &[u8]) -> TableSummary {
    TableSummary {
        id,
        size_bytes: 4096 * id,
        min_key: min_key.to_vec(),
        max_key: max_key.to_vec(),
        min_timestamp: Hlc::new(1_700_000_000_000, 0),
        max_timestamp: Hlc::new(1_700_000_000_000 + id, 3),
        tombstones: 1,
        entries: 100 + id,
        created_seq: 1000 + id,
    }
}

/// The content of `tests/fixtures/manifest/v1.manifest`. Never change it: the fixture
/// pins format version 1.
fn fixture_v1_manifest() -> Manifest {
    let mut m = Manifest::new(ConflictMode::Lww);
    for (min_key, max_key, replay_from) in [
        (&b"apple"[..], &b"melon"[..], 4),
        (b"", b"\xff\xfe", 7),
        (b"k", b"k", 9),
    ] {
        let id = m.allocate_sstable_id();
        m = m
            .apply_flush(summary(id, min_key, max_key), replay_from)
            .unwrap();
    }
    let out = m.allocate_sstable_id();
    m.apply_compaction(
        &CompactionTask {
            inputs: vec![1, 2],
            drop_tombstones: false,
        },
        vec![summary(out, b"", b"melon")],
    )
    .unwrap()
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifest")
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap()
}

fn decode_fixture(name: &str) -> Result<Manifest, ManifestError> {
    Manifest::decode(&read_fixture(name), name)
}

/// The corrupt fixtures, derived from the valid image.
fn corrupt_fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let good = fixture_v1_manifest().encode().unwrap();
    let mut bad_magic = good.clone();
    bad_magic[..8].copy_from_slice(b"RKVMANIX");
    let mut future_version = good.clone();
    future_version[8..12].copy_from_slice(&2u32.to_le_bytes());
    let mut crc_mismatch = good.clone();
    crc_mismatch[24 + 9] ^= 0x40; // a bit of next_sstable_id
    let truncated = good[..40].to_vec();
    vec![
        ("bad-magic.manifest", bad_magic),
        ("future-version.manifest", future_version),
        ("crc-mismatch.manifest", crc_mismatch),
        ("truncated.manifest", truncated),
    ]
}

/// Writes the fixture files. Run once when adding a format version:
/// `RINGKV_WRITE_FIXTURES=1 cargo test --test storage_manifest write_fixtures -- --ignored`
#[test]
#[ignore]
fn write_fixtures() {
    assert_eq!(std::env::var("RINGKV_WRITE_FIXTURES").as_deref(), Ok("1"));
    std::fs::create_dir_all(fixture_dir()).unwrap();
    let good = fixture_v1_manifest().encode().unwrap();
    std::fs::write(fixture_dir().join("v1.manifest"), good).unwrap();
    for (name, bytes) in corrupt_fixtures() {
        std::fs::write(fixture_dir().join(name), bytes).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures.

#[test]
fn v1_fixture_reads_back_and_encoding_is_stable() {
    let bytes = read_fixture("v1.manifest");
    assert_eq!(bytes.len(), ALIGN);
    let m = Manifest::decode(&bytes, "v1.manifest").unwrap();
    assert_eq!(m, fixture_v1_manifest());
    assert_eq!(m.generation(), 4);
    assert_eq!(m.next_sstable_id(), 5);
    assert_eq!(m.log_replay_from_segment(), 9);
    assert_eq!(m.conflict_mode(), ConflictMode::Lww);
    let ids: Vec<u64> = m.tables().iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![3, 4]);
    assert_eq!(m.tables()[0].min_key, b"k");
    assert_eq!(m.tables()[1].max_key, b"melon");
    // Today's encoder writes exactly the committed bytes: the format did not drift.
    assert_eq!(m.encode().unwrap(), bytes);
}

#[test]
fn v1_fixture_loads_through_a_disk() {
    let disk = TestDisk::default();
    disk.put_durable(MANIFEST_FILE, &read_fixture("v1.manifest"));
    let m = block_on(Manifest::load(&disk)).unwrap().unwrap();
    assert_eq!(m, fixture_v1_manifest());
    m.check_conflict_mode(&disk, ConflictMode::Lww).unwrap();
    let err = m
        .check_conflict_mode(&disk, ConflictMode::Causal)
        .unwrap_err();
    assert!(err.to_string().contains("/test-disk/MANIFEST"), "{err}");
}

#[test]
fn corrupt_fixtures_match_their_generator() {
    for (name, bytes) in corrupt_fixtures() {
        assert_eq!(
            read_fixture(name),
            bytes,
            "{name} differs from its generator"
        );
    }
}

#[test]
fn wrong_magic_is_an_error_naming_file_and_problem() {
    let err = decode_fixture("bad-magic.manifest").unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("bad-magic.manifest"), "{text}");
    assert!(text.contains("bad magic"), "{text}");
}

#[test]
fn future_version_is_an_error_naming_the_version() {
    let err = decode_fixture("future-version.manifest").unwrap_err();
    assert!(
        matches!(
            err,
            ManifestError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("future-version.manifest"));
}

#[test]
fn crc_mismatch_is_an_error() {
    let err = decode_fixture("crc-mismatch.manifest").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ManifestError::Corrupt { .. }), "{err:?}");
    assert!(text.contains("CRC32C mismatch"), "{text}");
    assert!(text.contains("crc-mismatch.manifest"), "{text}");
}

#[test]
fn truncated_file_is_an_error() {
    let err = decode_fixture("truncated.manifest").unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn corrupt_manifest_on_disk_is_never_treated_as_empty() {
    for (name, bytes) in corrupt_fixtures() {
        let disk = TestDisk::default();
        disk.put_durable(MANIFEST_FILE, &bytes);
        let result = block_on(Manifest::load(&disk));
        let err = result.expect_err(name);
        assert!(err.to_string().contains("/test-disk/MANIFEST"), "{err}");
    }
    // An empty MANIFEST file is corrupt too, not "no manifest".
    let disk = TestDisk::default();
    disk.put_durable(MANIFEST_FILE, &[]);
    assert!(block_on(Manifest::load(&disk)).is_err());
}

// ---------------------------------------------------------------------------------------
// Atomic replacement.

#[test]
fn no_manifest_file_means_a_new_shard() {
    let disk = TestDisk::default();
    assert_eq!(block_on(Manifest::load(&disk)).unwrap(), None);
    // A leftover temporary file alone is not a manifest.
    disk.put_durable("MANIFEST-1.tmp", &fixture_v1_manifest().encode().unwrap());
    assert_eq!(block_on(Manifest::load(&disk)).unwrap(), None);
}

#[test]
fn store_then_load_round_trips_and_leaves_one_file() {
    let disk = TestDisk::default();
    let m = fixture_v1_manifest();
    block_on(m.store(&disk)).unwrap();
    disk.power_loss();
    assert_eq!(block_on(Manifest::load(&disk)).unwrap(), Some(m.clone()));
    let mut next = m;
    let id = next.allocate_sstable_id();
    let next = next.apply_flush(summary(id, b"a", b"b"), 12).unwrap();
    block_on(next.store(&disk)).unwrap();
    disk.power_loss();
    assert_eq!(block_on(Manifest::load(&disk)).unwrap(), Some(next));
    assert_eq!(disk.names(), vec![MANIFEST_FILE.to_string()]);
}

/// Crash the store after `k` disk operations, for every `k`, then lose power: the
/// manifest that loads is the old one or the new one, never none, never corrupt. Once
/// `store` has returned Ok the new one must survive.
fn power_loss_at_every_step(old: Option<&Manifest>, new: &Manifest) {
    let mut successes = 0;
    let mut failures = 0;
    for k in 0..64 {
        let disk = TestDisk::default();
        if let Some(old) = old {
            block_on(old.store(&disk)).unwrap();
        }
        let before = disk.ops_done();
        disk.crash_after(k);
        let stored = block_on(new.store(&disk));
        let steps = disk.ops_done() - before;
        disk.power_loss();
        let loaded = block_on(Manifest::load(&disk))
            .unwrap_or_else(|e| panic!("crash after {k} steps left an unreadable manifest: {e}"));
        match stored {
            Ok(()) => {
                successes += 1;
                assert_eq!(
                    loaded.as_ref(),
                    Some(new),
                    "acknowledged store lost (k={k})"
                );
                // Every later k succeeds as well: no step left to crash in.
                assert!(
                    k >= steps,
                    "store succeeded although it crashed at step {k}"
                );
                break;
            }
            Err(_) => {
                failures += 1;
                assert!(
                    loaded.as_ref() == old || loaded.as_ref() == Some(new),
                    "crash after {k} steps left neither the old nor the new manifest: {loaded:?}"
                );
                // A retry after restart succeeds (stale temporary files are handled).
                block_on(new.store(&disk)).unwrap();
                disk.power_loss();
                assert_eq!(block_on(Manifest::load(&disk)).unwrap().as_ref(), Some(new));
            }
        }
    }
    assert_eq!(successes, 1, "store never completed");
    assert!(failures >= 6, "too few crash points exercised: {failures}");
}

#[test]
fn power_loss_at_any_step_of_an_update_keeps_old_or_new() {
    let old = fixture_v1_manifest();
    let mut new = old.clone();
    let id = new.allocate_sstable_id();
    let new = new.apply_flush(summary(id, b"x", b"z"), 20).unwrap();
    power_loss_at_every_step(Some(&old), &new);
}

#[test]
fn power_loss_at_any_step_of_the_first_store_keeps_none_or_new() {
    power_loss_at_every_step(None, &fixture_v1_manifest());
}

#[test]
fn regression_retry_after_process_crash_reuses_temp_name() {
    // The process dies after creating MANIFEST-<g>.tmp but before the rename; the
    // machine stays up, so the temporary file survives. The restarted process stores the
    // same generation again and must not fail on the existing name.
    let disk = TestDisk::default();
    let old = fixture_v1_manifest();
    block_on(old.store(&disk)).unwrap();
    let mut new = old.clone();
    let id = new.allocate_sstable_id();
    let new = new.apply_flush(summary(id, b"x", b"z"), 20).unwrap();
    disk.crash_after(4); // list, create, write, sync: dies at close
    assert!(block_on(new.store(&disk)).is_err());
    disk.process_restart();
    let temp = format!("MANIFEST-{}.tmp", new.generation());
    assert!(disk.names().contains(&temp), "{:?}", disk.names());
    assert_eq!(block_on(Manifest::load(&disk)).unwrap(), Some(old));
    block_on(new.store(&disk)).unwrap();
    assert_eq!(disk.names(), vec![MANIFEST_FILE.to_string()]);
    disk.power_loss();
    assert_eq!(block_on(Manifest::load(&disk)).unwrap(), Some(new));
}

#[test]
fn unsynced_manifest_bytes_never_become_current() {
    // Guard against reordering store's steps: if the rename could become durable before
    // the data, a power loss would leave an empty MANIFEST. Simulate exactly that state
    // and check load reports it instead of returning an empty manifest.
    let disk = TestDisk::default();
    disk.put_durable(MANIFEST_FILE, &vec![0u8; ALIGN]);
    let err = block_on(Manifest::load(&disk)).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
}

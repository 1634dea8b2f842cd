//! SSTable files on a real file system: the committed fixture of the current format is
//! read back (and rebuilt byte for byte), and every kind of damage — a flipped byte in a
//! data block, the index, the bloom filter, the stats or the footer, truncation, wrong
//! magic, a future version — is refused with an error that names the file, never a
//! wrong value and never a panic.
//!
//! Regenerate the fixture after an intentional format change (which must also bump
//! `FORMAT_VERSION` and keep a reader for the old one) with
//! `RINGKV_REGENERATE_FIXTURES=1 cargo test --test sstable_corruption`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_lite::future::block_on;
use ringkv::conflict::{Hlc, KeyState, LwwCell};
use ringkv::storage::cache::BlockCache;
use ringkv::storage::disk::{Disk, DiskFile, ALIGN};
use ringkv::storage::sstable::{
    Footer, Sstable, SstableBuilder, SstableError, SstableErrorKind, FORMAT_VERSION,
};
use zerocopy::IntoBytes;

/// A blocking `std::fs` directory behind the `Disk` trait (tests only).
struct DirDisk {
    root: PathBuf,
}

struct DirFile {
    file: std::fs::File,
}

impl Disk for DirDisk {
    type File = DirFile;
    async fn create(&self, name: &str) -> io::Result<DirFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.root.join(name))?;
        Ok(DirFile { file })
    }
    async fn open(&self, name: &str) -> io::Result<DirFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.root.join(name))?;
        Ok(DirFile { file })
    }
    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.root.join(name))
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.root.join(from), self.root.join(to))
    }
    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    async fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.root)?.sync_all()
    }
    fn path_of(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }
}

impl DiskFile for DirFile {
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        assert!(offset.is_multiple_of(ALIGN as u64) && buf.len().is_multiple_of(ALIGN));
        self.file.write_all_at(buf, offset)
    }
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        assert!(offset.is_multiple_of(ALIGN as u64));
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)?
            {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
    async fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    async fn truncate(&self, size: u64) -> io::Result<()> {
        self.file.set_len(size)
    }
    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

const FIXTURE: &str = "v1_small.sst";
const FIXTURE_CREATED_AT_MS: u64 = 1_700_000_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sstable")
}

/// The fixture's contents: 60 keys, every fifth a tombstone, values of varying size,
/// one value larger than a block.
fn fixture_entries() -> Vec<(Vec<u8>, KeyState)> {
    (0..60u64)
        .map(|i| {
            let value = match i {
                _ if i % 5 == 0 => None,
                41 => Some(vec![b'L'; 1500]),
                _ => Some(format!("value-{i}-{}", "x".repeat((i % 13) as usize)).into_bytes()),
            };
            let state = KeyState::Lww(LwwCell {
                timestamp: Hlc::new(1_700_000_000_000 + i * 10, (i % 3) as u16),
                value,
            });
            (format!("fixture-key-{i:04}").into_bytes(), state)
        })
        .collect()
}

fn build_fixture(disk: &DirDisk, name: &str) {
    let mut builder = SstableBuilder::new(512, 60).created_at_ms(FIXTURE_CREATED_AT_MS);
    for (key, state) in fixture_entries() {
        builder.add(&key, &state);
    }
    block_on(builder.finish(disk, name)).unwrap();
}

fn cache() -> Rc<BlockCache> {
    Rc::new(BlockCache::new(1 << 20))
}

/// A temp dir holding a copy of the fixture as `t.sst`, damaged by `damage`.
fn damaged_copy(damage: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, DirDisk) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture_dir().join(FIXTURE)).unwrap();
    damage(&mut bytes);
    std::fs::write(dir.path().join("t.sst"), bytes).unwrap();
    let disk = DirDisk {
        root: dir.path().to_path_buf(),
    };
    (dir, disk)
}

fn footer_of(bytes: &[u8]) -> Footer {
    Footer::from_tail(bytes).unwrap()
}

/// Open the damaged copy and look up every fixture key; returns the first error, and
/// asserts that no lookup returned a wrong value.
fn first_error(disk: &DirDisk) -> Option<SstableError> {
    let table = match block_on(Sstable::open(disk, "t.sst", 1, cache())) {
        Ok(table) => table,
        Err(e) => return Some(e),
    };
    let mut first = None;
    for (key, state) in fixture_entries() {
        match block_on(table.get(&key)) {
            Ok(found) => assert_eq!(found, Some(state), "wrong value for {key:?}"),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first
}

fn assert_names_file(err: &SstableError) {
    let text = err.to_string();
    assert!(
        text.contains("t.sst"),
        "error does not name the file: {text}"
    );
}

#[test]
fn fixture_of_the_current_format_reads_back() {
    let disk = DirDisk {
        root: fixture_dir(),
    };
    if std::env::var_os("RINGKV_REGENERATE_FIXTURES").is_some() {
        let _ = std::fs::remove_file(fixture_dir().join(FIXTURE));
        build_fixture(&disk, FIXTURE);
    }
    let table = block_on(Sstable::open(&disk, FIXTURE, 1, cache())).unwrap();
    let info = table.info();
    assert_eq!(info.format_version, FORMAT_VERSION);
    assert_eq!(info.stats.entry_count, 60);
    assert_eq!(info.stats.tombstone_count, 12);
    assert_eq!(info.stats.created_at_ms, FIXTURE_CREATED_AT_MS);
    assert_eq!(info.stats.first_key, b"fixture-key-0000");
    assert_eq!(info.stats.last_key, b"fixture-key-0059");
    assert_eq!(info.stats.min_timestamp, Hlc::new(1_700_000_000_000, 0));
    assert_eq!(info.stats.max_timestamp, Hlc::new(1_700_000_000_590, 2));
    for (key, state) in fixture_entries() {
        assert_eq!(block_on(table.get(&key)).unwrap(), Some(state));
    }
    assert_eq!(block_on(table.get(b"fixture-key-0060")).unwrap(), None);
    let scanned = block_on(async {
        let mut iter = table.iter();
        let mut out = Vec::new();
        while let Some(entry) = iter.next().await.unwrap() {
            out.push(entry);
        }
        out
    });
    assert_eq!(scanned, fixture_entries());
}

#[test]
fn the_builder_still_writes_the_fixture_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DirDisk {
        root: dir.path().to_path_buf(),
    };
    build_fixture(&disk, "rebuilt.sst");
    let rebuilt = std::fs::read(dir.path().join("rebuilt.sst")).unwrap();
    let committed = std::fs::read(fixture_dir().join(FIXTURE)).unwrap();
    assert!(
        rebuilt == committed,
        "the SSTable format changed: bump FORMAT_VERSION and regenerate the fixture"
    );
}

#[test]
fn a_flipped_byte_in_a_data_block_is_a_crc_error_naming_file_and_offset() {
    let (_dir, disk) = damaged_copy(|bytes| bytes[ALIGN + 40] ^= 0x20);
    let err = first_error(&disk).expect("damage detected");
    assert!(
        matches!(err.kind, SstableErrorKind::DataBlockCorrupt { offset, .. } if offset == ALIGN as u64),
        "{err}"
    );
    assert_names_file(&err);
    assert!(err.to_string().contains("offset 4096"), "{err}");
    assert!(err.is_corruption());
}

#[test]
fn a_flipped_byte_in_the_index_is_refused_at_open() {
    let (_dir, disk) = damaged_copy(|bytes| {
        let at = footer_of(bytes).index_offset.get() as usize + 13;
        bytes[at] ^= 0x01;
    });
    let err = first_error(&disk).unwrap();
    assert!(
        matches!(err.kind, SstableErrorKind::IndexCorrupt(_)),
        "{err}"
    );
    assert_names_file(&err);
}

#[test]
fn a_flipped_byte_in_the_bloom_filter_is_refused_at_open() {
    let (_dir, disk) = damaged_copy(|bytes| {
        let at = footer_of(bytes).bloom_offset.get() as usize + 30;
        bytes[at] ^= 0x80;
    });
    let err = first_error(&disk).unwrap();
    assert!(
        matches!(err.kind, SstableErrorKind::BloomCorrupt(_)),
        "{err}"
    );
    assert_names_file(&err);
}

#[test]
fn a_flipped_byte_in_the_stats_is_refused_at_open() {
    let (_dir, disk) = damaged_copy(|bytes| {
        let at = footer_of(bytes).stats_offset.get() as usize + 3;
        bytes[at] ^= 0x04;
    });
    let err = first_error(&disk).unwrap();
    assert!(
        matches!(err.kind, SstableErrorKind::StatsCorrupt(_)),
        "{err}"
    );
    assert_names_file(&err);
}

#[test]
fn a_flipped_byte_in_the_footer_is_refused_at_open() {
    let footer_start = std::fs::read(fixture_dir().join(FIXTURE)).unwrap().len() - 72;
    // Offsets, lengths, reserved fields and the CRC itself.
    for field_byte in [16, 25, 33, 47, 50, 60, 64, 68, 71] {
        let (_dir, disk) = damaged_copy(|bytes| bytes[footer_start + field_byte] ^= 0x10);
        let err = first_error(&disk).unwrap();
        assert!(
            matches!(err.kind, SstableErrorKind::FooterCorrupt(_)),
            "byte {field_byte}: {err}"
        );
        assert_names_file(&err);
    }
}

#[test]
fn every_flipped_metadata_byte_and_sampled_data_byte_is_caught() {
    let len = std::fs::read(fixture_dir().join(FIXTURE)).unwrap().len();
    let meta_start = {
        let bytes = std::fs::read(fixture_dir().join(FIXTURE)).unwrap();
        footer_of(&bytes).index_offset.get() as usize
    };
    let bytes = std::fs::read(fixture_dir().join(FIXTURE)).unwrap();
    let footer = footer_of(&bytes);
    let covered_meta = meta_start..footer.sections_end().unwrap() as usize;
    let positions = covered_meta
        .chain(len - 72..len)
        .chain((0..meta_start).step_by(61));
    for at in positions {
        let (_dir, disk) = damaged_copy(|bytes| bytes[at] ^= 0x01);
        // first_error asserts no wrong value; padding bytes in data may go unnoticed.
        if let Some(err) = first_error(&disk) {
            assert_names_file(&err);
            assert!(err.is_corruption(), "flip at {at}: {err}");
        } else {
            assert!(at < meta_start, "metadata flip at {at} went unnoticed");
        }
    }
}

#[test]
fn truncated_files_are_refused() {
    let len = std::fs::read(fixture_dir().join(FIXTURE)).unwrap().len();
    for keep in [0, 1, 100, ALIGN, ALIGN + 1, len - ALIGN, len - 1] {
        let (_dir, disk) = damaged_copy(|bytes| bytes.truncate(keep));
        let err = block_on(Sstable::open(&disk, "t.sst", 1, cache()))
            .err()
            .unwrap();
        assert!(
            matches!(
                err.kind,
                SstableErrorKind::Truncated { .. } | SstableErrorKind::BadMagic { .. }
            ),
            "kept {keep}: {err}"
        );
        assert_names_file(&err);
        if keep % ALIGN != 0 || keep < 2 * ALIGN {
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }
}

#[test]
fn wrong_magic_is_refused() {
    let (_dir, disk) = damaged_copy(|bytes| {
        let at = bytes.len() - 72;
        bytes[at..at + 8].copy_from_slice(b"NOTASST!");
    });
    let err = first_error(&disk).unwrap();
    assert!(
        matches!(err.kind, SstableErrorKind::BadMagic { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not an SSTable"), "{err}");
    assert_names_file(&err);
}

#[test]
fn a_future_format_version_is_refused() {
    let (_dir, disk) = damaged_copy(|bytes| {
        // A well-formed footer of the next version, CRC included.
        let mut footer = footer_of(bytes);
        footer.format_version.set(FORMAT_VERSION + 1);
        footer.footer_crc32c.set(footer.compute_crc32c());
        let at = bytes.len() - 72;
        bytes[at..].copy_from_slice(footer.as_bytes());
    });
    let err = first_error(&disk).unwrap();
    assert!(
        matches!(err.kind, SstableErrorKind::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");
    assert_names_file(&err);
}

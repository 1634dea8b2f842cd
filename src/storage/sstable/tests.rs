//! SSTable round trips, lookups, iteration and robustness against arbitrary bytes, on a
//! private in-memory [`Disk`] that enforces the alignment contract and counts reads.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;

use futures_lite::future::block_on;
use proptest::prelude::*;

use super::*;
use crate::conflict::{Hlc, KeyState, LwwCell};
use crate::storage::cache::BlockCache;
use crate::storage::disk::{Disk, DiskFile, ALIGN};

type Files = Rc<RefCell<HashMap<String, Vec<u8>>>>;

#[derive(Clone, Default)]
struct MemDisk {
    files: Files,
    reads: Rc<Cell<usize>>,
}

struct MemFile {
    files: Files,
    name: String,
    reads: Rc<Cell<usize>>,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, name.to_string())
}

impl Disk for MemDisk {
    type File = MemFile;
    async fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut files = self.files.borrow_mut();
        if files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        files.insert(name.to_string(), Vec::new());
        Ok(self.handle(name))
    }
    async fn open(&self, name: &str) -> io::Result<MemFile> {
        if !self.files.borrow().contains_key(name) {
            return Err(not_found(name));
        }
        Ok(self.handle(name))
    }
    async fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .borrow_mut()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.borrow_mut();
        let bytes = files.remove(from).ok_or_else(|| not_found(from))?;
        files.insert(to.to_string(), bytes);
        Ok(())
    }
    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self.files.borrow().keys().cloned().collect();
        names.sort();
        Ok(names)
    }
    async fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
    fn path_of(&self, name: &str) -> String {
        format!("mem://{name}")
    }
}

impl MemDisk {
    fn handle(&self, name: &str) -> MemFile {
        MemFile {
            files: self.files.clone(),
            name: name.to_string(),
            reads: self.reads.clone(),
        }
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        self.files.borrow()[name].clone()
    }
    fn put(&self, name: &str, bytes: Vec<u8>) {
        self.files.borrow_mut().insert(name.to_string(), bytes);
    }
}

impl DiskFile for MemFile {
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        assert!(
            offset.is_multiple_of(ALIGN as u64) && buf.len().is_multiple_of(ALIGN),
            "unaligned write"
        );
        let mut files = self.files.borrow_mut();
        let file = files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        let end = offset as usize + buf.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        assert!(offset.is_multiple_of(ALIGN as u64), "unaligned read");
        self.reads.set(self.reads.get() + 1);
        let files = self.files.borrow();
        let file = files.get(&self.name).ok_or_else(|| not_found(&self.name))?;
        let start = (offset as usize).min(file.len());
        let end = (start + len).min(file.len());
        Ok(file[start..end].to_vec())
    }
    async fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    async fn size(&self) -> io::Result<u64> {
        let files = self.files.borrow();
        Ok(files.get(&self.name).map_or(0, |f| f.len() as u64))
    }
    async fn truncate(&self, size: u64) -> io::Result<()> {
        let mut files = self.files.borrow_mut();
        let file = files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        file.resize(size as usize, 0);
        Ok(())
    }
    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

fn lww(timestamp: u64, value: Option<Vec<u8>>) -> KeyState {
    KeyState::Lww(LwwCell {
        timestamp: Hlc(timestamp),
        value,
    })
}

fn cache() -> Rc<BlockCache> {
    Rc::new(BlockCache::new(1 << 20))
}

/// Build a table of `entries` as `name` and open it.
fn build_and_open(
    disk: &MemDisk,
    name: &str,
    block_size_bytes: usize,
    entries: &BTreeMap<Vec<u8>, KeyState>,
) -> (SstableInfo, Sstable<MemDisk>) {
    let mut builder = SstableBuilder::new(block_size_bytes, entries.len()).created_at_ms(7);
    for (key, state) in entries {
        builder.add(key, state);
    }
    let info = block_on(builder.finish(disk, name)).unwrap();
    let table = block_on(Sstable::open(disk, name, 1, cache())).unwrap();
    (info, table)
}

fn collect(table: &Sstable<MemDisk>) -> Vec<(Vec<u8>, KeyState)> {
    block_on(async {
        let mut iter = table.iter();
        let mut out = Vec::new();
        while let Some(entry) = iter.next().await.unwrap() {
            out.push(entry);
        }
        out
    })
}

fn entries_strategy() -> impl Strategy<Value = BTreeMap<Vec<u8>, KeyState>> {
    let state = (
        0u64..1_000_000,
        proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(|(ts, value)| lww(ts, value));
    proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 0..40), state, 1..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_finds_every_key_and_nothing_else(
        entries in entries_strategy(),
        absent in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..100),
        block_size_bytes in prop_oneof![Just(64usize), Just(512), Just(4096), Just(16384)],
    ) {
        let disk = MemDisk::default();
        let (info, table) = build_and_open(&disk, "t.sst", block_size_bytes, &entries);
        prop_assert_eq!(table.info(), &info);
        prop_assert_eq!(info.file_size_bytes % ALIGN as u64, 0);
        prop_assert_eq!(info.stats.entry_count, entries.len() as u64);
        let tombstones = entries.values().filter(|s| s.is_tombstone()).count() as u64;
        prop_assert_eq!(info.stats.tombstone_count, tombstones);
        let min = entries.values().map(|s| s.timestamp_range().0).min().unwrap();
        let max = entries.values().map(|s| s.timestamp_range().1).max().unwrap();
        prop_assert_eq!((info.stats.min_timestamp, info.stats.max_timestamp), (min, max));
        prop_assert_eq!(&info.stats.first_key, entries.keys().next().unwrap());
        prop_assert_eq!(&info.stats.last_key, entries.keys().next_back().unwrap());
        for (key, state) in &entries {
            prop_assert!(table.may_contain(key));
            let found = block_on(table.get(key)).unwrap();
            prop_assert_eq!(found.as_ref(), Some(state));
        }
        for key in absent.iter().filter(|k| !entries.contains_key(*k)) {
            prop_assert_eq!(block_on(table.get(key)).unwrap(), None);
        }
        let scanned = collect(&table);
        let expected: Vec<(Vec<u8>, KeyState)> = entries.into_iter().collect();
        prop_assert_eq!(scanned, expected);
    }

    /// Arbitrary bytes as a table file: open, get and iteration return errors, never
    /// panic.
    #[test]
    fn random_bytes_never_panic(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..10_000),
            (1usize..4).prop_flat_map(|pages| proptest::collection::vec(any::<u8>(), pages * ALIGN)),
        ],
        key in proptest::collection::vec(any::<u8>(), 0..10),
    ) {
        let disk = MemDisk::default();
        disk.put("r.sst", bytes);
        if let Ok(table) = block_on(Sstable::open(&disk, "r.sst", 1, cache())) {
            let _ = block_on(table.get(&key));
            let _ = block_on(async { table.iter().next().await });
        }
    }

    /// A valid table with bytes overwritten anywhere: every lookup either errors or
    /// returns exactly the stored state; never a wrong value, never a panic.
    #[test]
    fn damaged_table_never_yields_a_wrong_value(
        entries in entries_strategy(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
    ) {
        let disk = MemDisk::default();
        build_and_open(&disk, "d.sst", 512, &entries);
        let mut bytes = disk.bytes("d.sst");
        for (at, xor) in &damage {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        disk.put("d.sst", bytes);
        let Ok(table) = block_on(Sstable::open(&disk, "d.sst", 2, cache())) else {
            return Ok(());
        };
        for (key, state) in &entries {
            if let Ok(found) = block_on(table.get(key)) {
                prop_assert_eq!(found.as_ref(), Some(state));
            }
        }
        let scanned = block_on(async {
            let mut iter = table.iter();
            let mut out = Vec::new();
            while let Ok(Some(entry)) = iter.next().await {
                out.push(entry);
            }
            out
        });
        let expected: Vec<(Vec<u8>, KeyState)> = entries.into_iter().take(scanned.len()).collect();
        prop_assert_eq!(scanned, expected);
    }
}

fn numbered(count: u32, value_len: usize) -> BTreeMap<Vec<u8>, KeyState> {
    (0..count)
        .map(|i| {
            let value = (i % 7 != 0).then(|| vec![(i % 251) as u8; value_len]);
            (
                format!("key-{i:08}").into_bytes(),
                lww(u64::from(i) + 1, value),
            )
        })
        .collect()
}

#[test]
fn a_get_reads_at_most_one_block_and_then_hits_the_cache() {
    let disk = MemDisk::default();
    let entries = numbered(2000, 100);
    let (info, table) = build_and_open(&disk, "c.sst", 4096, &entries);
    assert!(info.block_count > 10);
    for (key, state) in entries.iter().step_by(37) {
        let before = disk.reads.get();
        assert_eq!(block_on(table.get(key)).unwrap().as_ref(), Some(state));
        assert!(disk.reads.get() - before <= 1);
        let before = disk.reads.get();
        assert_eq!(block_on(table.get(key)).unwrap().as_ref(), Some(state));
        assert_eq!(disk.reads.get(), before, "second get served by the cache");
    }
    // Keys outside the range or between blocks cost no read.
    let before = disk.reads.get();
    assert_eq!(block_on(table.get(b"a")).unwrap(), None);
    assert_eq!(block_on(table.get(b"zzz")).unwrap(), None);
    assert_eq!(disk.reads.get(), before);
}

#[test]
fn blocks_are_aligned_and_near_the_target_size() {
    let disk = MemDisk::default();
    let entries = numbered(3000, 50);
    let (info, _table) = build_and_open(&disk, "a.sst", 4096, &entries);
    // 3000 entries of ~80 bytes plus offsets fill 4 KiB blocks to more than half.
    let data_bytes: usize = 3000 * (8 + 12 + 1 + 8 + 1 + 4 + 50 + 4);
    assert!(u64::from(info.block_count) <= (data_bytes / 2048) as u64);
    let bytes = disk.bytes("a.sst");
    let footer = Footer::from_tail(&bytes).unwrap();
    assert_eq!(footer.index_offset.get() % ALIGN as u64, 0);
    assert_eq!(
        footer.index_offset.get(),
        u64::from(info.block_count) * ALIGN as u64,
        "every block fits one aligned page"
    );
}

#[test]
fn an_entry_larger_than_a_block_gets_its_own_block() {
    let disk = MemDisk::default();
    let mut entries = numbered(10, 10);
    entries.insert(
        b"key-00000003x".to_vec(),
        lww(99, Some(vec![42; 3 * ALIGN])),
    );
    let (_info, table) = build_and_open(&disk, "big.sst", 4096, &entries);
    for (key, state) in &entries {
        assert_eq!(block_on(table.get(key)).unwrap().as_ref(), Some(state));
    }
    assert_eq!(collect(&table), entries.into_iter().collect::<Vec<_>>());
}

#[test]
fn iteration_spans_several_read_ahead_batches() {
    let disk = MemDisk::default();
    let entries = numbered(20_000, 40);
    let (info, table) = build_and_open(&disk, "i.sst", 4096, &entries);
    assert!(info.file_size_bytes > 3 * reader::ITERATOR_READAHEAD_BYTES as u64);
    let before = disk.reads.get();
    let scanned = collect(&table);
    let reads = disk.reads.get() - before;
    assert_eq!(scanned, entries.into_iter().collect::<Vec<_>>());
    assert!(
        reads < info.block_count as usize / 10,
        "{reads} reads for {} blocks",
        info.block_count
    );
    let raw = block_on(table.iter().next_raw()).unwrap().unwrap();
    assert_eq!(raw.0, b"key-00000000");
    assert_eq!(KeyState::decode(&raw.1).unwrap(), lww(1, None));
}

#[test]
fn table_bloom_false_positive_rate_is_at_most_two_percent() {
    let disk = MemDisk::default();
    let entries = numbered(10_000, 1);
    let (_info, table) = build_and_open(&disk, "b.sst", 4096, &entries);
    // Absent keys inside the table's key range, so only the bloom filter decides.
    let false_positives = (0..10_000)
        .filter(|i| table.may_contain(format!("key-{i:08}-absent").as_bytes()))
        .count();
    assert!(false_positives <= 200, "{false_positives} of 10000");
}

#[test]
fn an_empty_table_is_refused() {
    let disk = MemDisk::default();
    let err = block_on(SstableBuilder::new(4096, 0).finish(&disk, "e.sst")).unwrap_err();
    assert!(matches!(err.kind, SstableErrorKind::Empty), "{err}");
    assert!(disk.files.borrow().is_empty());
}

#[test]
fn finish_never_overwrites_an_existing_file() {
    let disk = MemDisk::default();
    disk.put("x.sst", vec![1; ALIGN]);
    let mut builder = SstableBuilder::new(4096, 1);
    builder.add(b"k", &lww(1, Some(b"v".to_vec())));
    let err = block_on(builder.finish(&disk, "x.sst")).unwrap_err();
    assert!(
        matches!(err.kind, SstableErrorKind::Io { op: "creating", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("mem://x.sst"), "{err}");
    assert_eq!(disk.bytes("x.sst"), vec![1; ALIGN]);
}

#[test]
#[should_panic(expected = "strictly increasing")]
fn keys_out_of_order_are_a_bug() {
    let mut builder = SstableBuilder::new(4096, 2);
    builder.add(b"b", &lww(1, None));
    builder.add(b"a", &lww(1, None));
}

#[test]
#[should_panic(expected = "strictly increasing")]
fn duplicate_keys_are_a_bug() {
    let mut builder = SstableBuilder::new(4096, 2);
    builder.add(b"a", &lww(1, None));
    builder.add(b"a", &lww(2, None));
}

#[test]
fn a_corrupt_data_block_is_an_error_naming_file_and_offset() {
    let disk = MemDisk::default();
    let entries = numbered(500, 20);
    build_and_open(&disk, "f.sst", 4096, &entries);
    let mut bytes = disk.bytes("f.sst");
    bytes[ALIGN + 100] ^= 0x01; // inside the second data block
    disk.put("f.sst", bytes);
    let table = block_on(Sstable::open(&disk, "f.sst", 3, cache())).unwrap();
    let errors: Vec<SstableError> = entries
        .keys()
        .filter_map(|key| block_on(table.get(key)).err())
        .collect();
    assert!(!errors.is_empty());
    for err in &errors {
        assert!(
            matches!(err.kind, SstableErrorKind::DataBlockCorrupt { offset, .. } if offset == ALIGN as u64),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("mem://f.sst") && text.contains("offset 4096"),
            "{text}"
        );
    }
    let scan = block_on(async {
        let mut iter = table.iter();
        loop {
            match iter.next().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    });
    assert!(matches!(
        scan,
        Err(SstableError {
            kind: SstableErrorKind::DataBlockCorrupt { .. },
            ..
        })
    ));
}

/// The builder and reader on real direct I/O: a minimal glommio `DmaFile` adapter over
/// a temp dir (the production `GlommioDisk` lives elsewhere). Needs `ulimit -l` raised.
mod on_glommio {
    use std::path::PathBuf;

    use glommio::io::{DmaFile, OpenOptions};

    use super::*;

    struct DmaDisk {
        root: PathBuf,
    }

    struct DmaDiskFile {
        file: DmaFile,
    }

    impl Disk for DmaDisk {
        type File = DmaDiskFile;
        async fn create(&self, name: &str) -> io::Result<DmaDiskFile> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .dma_open(self.root.join(name))
                .await?;
            Ok(DmaDiskFile { file })
        }
        async fn open(&self, name: &str) -> io::Result<DmaDiskFile> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(self.root.join(name))
                .await?;
            Ok(DmaDiskFile { file })
        }
        async fn remove(&self, name: &str) -> io::Result<()> {
            std::fs::remove_file(self.root.join(name))
        }
        async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            std::fs::rename(self.root.join(from), self.root.join(to))
        }
        async fn list(&self) -> io::Result<Vec<String>> {
            unimplemented!("not needed by SSTables")
        }
        async fn sync_dir(&self) -> io::Result<()> {
            std::fs::File::open(&self.root)?.sync_all()
        }
        fn path_of(&self, name: &str) -> String {
            self.root.join(name).display().to_string()
        }
    }

    impl DiskFile for DmaDiskFile {
        async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            assert!(offset.is_multiple_of(ALIGN as u64) && buf.len().is_multiple_of(ALIGN));
            let mut dma = self.file.alloc_dma_buffer(buf.len());
            dma.as_bytes_mut().copy_from_slice(buf);
            let written = self.file.write_at(dma, offset).await?;
            assert_eq!(written, buf.len(), "short DMA write");
            Ok(())
        }
        async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            let read = self.file.read_at(offset, len).await?;
            Ok(read.to_vec())
        }
        async fn sync(&self) -> io::Result<()> {
            Ok(self.file.fdatasync().await?)
        }
        async fn size(&self) -> io::Result<u64> {
            Ok(self.file.file_size().await?)
        }
        async fn truncate(&self, size: u64) -> io::Result<()> {
            Ok(self.file.truncate(size).await?)
        }
        async fn close(self) -> io::Result<()> {
            Ok(self.file.close().await?)
        }
    }

    #[test]
    fn round_trip_through_dma_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // glommio probes polled I/O on the first DmaFile of a disk; it must be non-empty.
        std::fs::write(root.join("sentinel"), vec![0u8; ALIGN]).unwrap();
        let entries = numbered(5000, 60);
        let executor = glommio::LocalExecutorBuilder::default().make().unwrap();
        executor.run(async move {
            DmaFile::open(root.join("sentinel"))
                .await
                .unwrap()
                .close()
                .await
                .unwrap();
            let disk = DmaDisk { root };
            let mut builder = SstableBuilder::new(4096, entries.len());
            for (key, state) in &entries {
                builder.add(key, state);
            }
            let info = builder.finish(&disk, "g.sst").await.unwrap();
            disk.sync_dir().await.unwrap();
            let table = Sstable::open(&disk, "g.sst", 9, cache()).await.unwrap();
            assert_eq!(table.info(), &info);
            for (key, state) in entries.iter().step_by(13) {
                assert_eq!(table.get(key).await.unwrap().as_ref(), Some(state));
            }
            assert_eq!(table.get(b"key-0000000x").await.unwrap(), None);
            let mut iter = table.iter();
            let mut count = 0;
            let mut expected = entries.iter();
            while let Some((key, state)) = iter.next().await.unwrap() {
                let (want_key, want_state) = expected.next().unwrap();
                assert_eq!((&key, &state), (want_key, want_state));
                count += 1;
            }
            assert_eq!(count, entries.len());
            table.close().await.unwrap();
        });
    }
}

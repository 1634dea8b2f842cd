//! An in-memory [`Disk`] with fault injection, for tests and the future simulator.
//!
//! [`MemDisk`] is a cheap clone-able handle to one shared in-memory directory
//! (single-threaded: `Rc<RefCell<..>>`). It models what a direct-I/O file system
//! promises and no more: every file keeps its *current* bytes (what reads see) and its
//! *durable* bytes (what survives power loss, updated by `sync`); the directory keeps
//! its current and durable name sets (the latter updated by `sync_dir`). It enforces the
//! [`ALIGN`] contract of `disk.rs`, failing misaligned I/O with `EINVAL` as O_DIRECT
//! does, so tests catch callers that break it.
//!
//! Fault injection: [`MemDisk::power_loss`], [`MemDisk::power_loss_tearing`],
//! [`MemDisk::power_loss_keeping`], [`MemDisk::process_crash`], [`MemDisk::fail_nth`], [`MemDisk::fail_nth_of`] and
//! [`MemDisk::halt_after`].
//! A handle from [`Disk::open_write_through`] makes each completed write durable at
//! once; a write through it that *fails* (injected fault or halt) is treated as cut by
//! the power loss that follows: its bytes reach the current contents and it becomes
//! the last unsynced write, so [`MemDisk::power_loss_tearing`] keeps a prefix of it and
//! [`MemDisk::power_loss`] none.
//! A *process crash* ([`MemDisk::process_crash`]) keeps every completed write and every
//! name, synced or not: with O_DIRECT a completed write is on the device, not in memory
//! owned by the process, so it survives the process (but not a later power loss, until
//! synced). Between two syncs a device may persist completed writes in any order, so
//! [`MemDisk::power_loss_keeping`] lets a test keep any subset of the unsynced writes
//! ([`MemDisk::unsynced_writes`]), a later one without an earlier one. Everything here is deterministic: there is no RNG, callers choose every cut
//! and every failing operation.
//!
//! It must never be used in production: nothing here touches a real file.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;

use super::disk::{Disk, DiskFile, ALIGN};

/// The kinds of operation that [`MemDisk`] counts and can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Create,
    Open,
    Remove,
    Rename,
    List,
    SyncDir,
    Write,
    Read,
    Sync,
    Size,
    Truncate,
}

/// The error an injected fault produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the device is full.
    Enospc,
}

impl Fault {
    fn to_error(self) -> io::Error {
        match self {
            Fault::Eio => io::Error::from_raw_os_error(libc::EIO),
            Fault::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

/// Operation counters, for tests (e.g. "fewer syncs than appends").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounters {
    pub creates: u64,
    pub opens: u64,
    pub removes: u64,
    pub renames: u64,
    pub lists: u64,
    pub dir_syncs: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub reads: u64,
    pub syncs: u64,
    pub sizes: u64,
    pub truncates: u64,
    /// Operations that returned an injected or halted error.
    pub failed: u64,
}

impl OpCounters {
    /// All operations attempted (failed ones included).
    pub fn total(&self) -> u64 {
        self.creates
            + self.opens
            + self.removes
            + self.renames
            + self.lists
            + self.dir_syncs
            + self.writes
            + self.reads
            + self.syncs
            + self.sizes
            + self.truncates
    }
}

/// The most recent write not yet covered by a `sync` of its file: the one
/// [`MemDisk::power_loss_tearing`] tears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsyncedWrite {
    /// File name at the time of the write.
    pub file: String,
    pub offset: u64,
    pub len: usize,
}

#[derive(Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
}

struct FaultPlan {
    only: Option<OpKind>,
    /// Matching operations still to let through before failing; the one that brings
    /// this to zero fails.
    remaining: u64,
    fault: Fault,
}

struct LastWrite {
    inode: u64,
    file: String,
    offset: u64,
    len: usize,
}

/// A completed write not yet covered by a `sync` of its file, with its bytes, so a power
/// loss can persist it or not independently of the others.
struct PendingWrite {
    inode: u64,
    file: String,
    offset: u64,
    bytes: Vec<u8>,
}

impl PendingWrite {
    fn describe(&self) -> UnsyncedWrite {
        UnsyncedWrite {
            file: self.file.clone(),
            offset: self.offset,
            len: self.bytes.len(),
        }
    }
}

#[derive(Default)]
struct MemFs {
    label: String,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    next_inode: u64,
    /// Bumped by every power loss; handles from an older epoch are stale.
    epoch: u64,
    counters: OpCounters,
    plans: Vec<FaultPlan>,
    halt_remaining: Option<u64>,
    halted: bool,
    last_write: Option<LastWrite>,
    /// Unsynced completed writes (not write-through), oldest first.
    pending: Vec<PendingWrite>,
    yield_on_io: bool,
}

impl MemFs {
    /// Count an operation and decide whether it fails.
    fn begin(&mut self, kind: OpKind) -> io::Result<()> {
        let c = &mut self.counters;
        match kind {
            OpKind::Create => c.creates += 1,
            OpKind::Open => c.opens += 1,
            OpKind::Remove => c.removes += 1,
            OpKind::Rename => c.renames += 1,
            OpKind::List => c.lists += 1,
            OpKind::SyncDir => c.dir_syncs += 1,
            OpKind::Write => c.writes += 1,
            OpKind::Read => c.reads += 1,
            OpKind::Sync => c.syncs += 1,
            OpKind::Size => c.sizes += 1,
            OpKind::Truncate => c.truncates += 1,
        }
        if let Some(remaining) = self.halt_remaining {
            if remaining == 0 {
                self.halt_remaining = None;
                self.halted = true;
            } else {
                self.halt_remaining = Some(remaining - 1);
            }
        }
        if self.halted {
            self.counters.failed += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut fired = None;
        for (i, plan) in self.plans.iter_mut().enumerate() {
            if plan.only.is_none_or(|k| k == kind) {
                assert!(plan.remaining > 0, "fault plans are removed when they fire");
                plan.remaining -= 1;
                if plan.remaining == 0 && fired.is_none() {
                    fired = Some(i);
                }
            }
        }
        if let Some(i) = fired {
            let plan = self.plans.remove(i);
            self.counters.failed += 1;
            return Err(plan.fault.to_error());
        }
        Ok(())
    }

    fn inode_mut(&mut self, handle: &MemFile) -> io::Result<&mut Inode> {
        if handle.epoch != self.epoch {
            return Err(io::Error::other(format!(
                "stale handle to {}/{} (power loss since open)",
                self.label, handle.name
            )));
        }
        self.inodes
            .get_mut(&handle.inode)
            .ok_or_else(|| io::Error::other("inode vanished"))
    }

    fn power_loss(&mut self, keep_bytes: Option<usize>) -> Option<UnsyncedWrite> {
        // Capture the torn write's surviving bytes before reverting current contents.
        let torn = match (keep_bytes, self.last_write.take()) {
            (Some(keep), Some(w)) => {
                let kept = keep.min(w.len);
                let start = usize::try_from(w.offset).unwrap_or(usize::MAX);
                let bytes = self
                    .inodes
                    .get(&w.inode)
                    .and_then(|i| i.current.get(start..start.saturating_add(kept)))
                    .map(<[u8]>::to_vec);
                bytes.map(|b| (w, b))
            }
            _ => None,
        };
        self.pending.clear();
        self.names = self.durable_names.clone();
        let live: std::collections::HashSet<u64> = self.durable_names.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
        for inode in self.inodes.values_mut() {
            inode.current.clone_from(&inode.durable);
        }
        let mut report = None;
        if let Some((w, bytes)) = torn {
            if let Some(inode) = self.inodes.get_mut(&w.inode) {
                let start = usize::try_from(w.offset).unwrap_or(usize::MAX);
                let end = start + bytes.len();
                if inode.current.len() < end {
                    inode.current.resize(end, 0);
                }
                inode.current[start..end].copy_from_slice(&bytes);
                inode.durable.clone_from(&inode.current);
                report = Some(UnsyncedWrite {
                    file: w.file,
                    offset: w.offset,
                    len: w.len,
                });
            }
        }
        self.epoch += 1;
        self.halted = false;
        self.halt_remaining = None;
        self.plans.clear();
        report
    }
}

/// Handle to a shared in-memory directory; clones see the same files.
#[derive(Clone, Default)]
pub struct MemDisk {
    fs: Rc<RefCell<MemFs>>,
}

impl MemDisk {
    pub fn new() -> Self {
        Self::with_label("mem")
    }

    /// `label` prefixes paths in error messages (`path_of`).
    pub fn with_label(label: &str) -> Self {
        let disk = Self::default();
        disk.fs.borrow_mut().label = label.to_string();
        disk
    }

    /// Power loss: every file reverts to its durable contents, the directory to its
    /// durable names, open handles become stale, pending faults and halts are cleared.
    pub fn power_loss(&self) {
        self.fs.borrow_mut().power_loss(None);
    }

    /// Power loss after the device persisted exactly the unsynced writes in `keep` (as
    /// returned by [`MemDisk::unsynced_writes`]), in any order relative to the others:
    /// those reach the durable contents, every other unsynced write is lost. Then as
    /// [`MemDisk::power_loss`].
    pub fn power_loss_keeping(&self, keep: &[UnsyncedWrite]) {
        let mut fs = self.fs.borrow_mut();
        let pending = std::mem::take(&mut fs.pending);
        for write in pending {
            if !keep.contains(&write.describe()) {
                continue;
            }
            if let Some(inode) = fs.inodes.get_mut(&write.inode) {
                let start = usize::try_from(write.offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(write.bytes.len());
                if inode.durable.len() < end {
                    inode.durable.resize(end, 0);
                }
                inode.durable[start..end].copy_from_slice(&write.bytes);
            }
        }
        fs.last_write = None;
        fs.power_loss(None);
    }

    /// Completed writes not yet covered by a `sync` of their file, oldest first.
    pub fn unsynced_writes(&self) -> Vec<UnsyncedWrite> {
        self.fs
            .borrow()
            .pending
            .iter()
            .map(PendingWrite::describe)
            .collect()
    }

    /// Process crash (kill -9, OOM kill): open handles become stale and pending faults and
    /// halts are cleared, but every file keeps its current contents and the directory
    /// its current names; what is durable is unchanged, so a later
    /// [`MemDisk::power_loss`] still drops what was never synced.
    pub fn process_crash(&self) {
        let mut fs = self.fs.borrow_mut();
        fs.epoch += 1;
        fs.halted = false;
        fs.halt_remaining = None;
        fs.plans.clear();
    }

    /// Power loss during the most recent unsynced write (see
    /// [`MemDisk::last_unsynced_write`]): like [`MemDisk::power_loss`], except that the
    /// first `keep_bytes` bytes of that write reach the disk (all of it if `keep_bytes`
    /// ≥ its length), extending the file if the write did. Returns the torn write, or
    /// `None` if there was none (or its file's name was not durable).
    pub fn power_loss_tearing(&self, keep_bytes: usize) -> Option<UnsyncedWrite> {
        self.fs.borrow_mut().power_loss(Some(keep_bytes))
    }

    /// The write [`MemDisk::power_loss_tearing`] would tear now.
    pub fn last_unsynced_write(&self) -> Option<UnsyncedWrite> {
        self.fs.borrow().last_write.as_ref().map(|w| UnsyncedWrite {
            file: w.file.clone(),
            offset: w.offset,
            len: w.len,
        })
    }

    /// The `n`-th operation from now (1 = the next one), of any kind, fails with `fault`
    /// without any effect.
    pub fn fail_nth(&self, n: u64, fault: Fault) {
        assert!(n >= 1, "fail_nth counts from 1");
        self.fs.borrow_mut().plans.push(FaultPlan {
            only: None,
            remaining: n,
            fault,
        });
    }

    /// The `n`-th operation of kind `op` from now (1 = the next one) fails with `fault`
    /// without any effect.
    pub fn fail_nth_of(&self, op: OpKind, n: u64, fault: Fault) {
        assert!(n >= 1, "fail_nth_of counts from 1");
        self.fs.borrow_mut().plans.push(FaultPlan {
            only: Some(op),
            remaining: n,
            fault,
        });
    }

    /// The device dies after `n` more operations: every later operation fails with `EIO`
    /// until [`MemDisk::power_loss`]. Models "power fails at operation n" together with a
    /// following `power_loss`.
    pub fn halt_after(&self, n: u64) {
        self.fs.borrow_mut().halt_remaining = Some(n);
    }

    /// When on, every operation yields to the executor once before completing, so
    /// concurrent callers interleave as they would on a real device (needed to observe
    /// group commit). Off by default.
    pub fn set_yield_on_io(&self, on: bool) {
        self.fs.borrow_mut().yield_on_io = on;
    }

    pub fn counters(&self) -> OpCounters {
        self.fs.borrow().counters
    }

    /// Current bytes of a file (what a read sees), for tests.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let fs = self.fs.borrow();
        let ino = fs.names.get(name)?;
        fs.inodes.get(ino).map(|i| i.current.clone())
    }

    /// Durable bytes of a file (what survives power loss), for tests.
    pub fn durable_file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let fs = self.fs.borrow();
        let ino = fs.durable_names.get(name)?;
        fs.inodes.get(ino).map(|i| i.durable.clone())
    }

    /// Install (or replace) a file with `bytes` as both current and durable contents and
    /// a durable name; not counted as an operation. For fixtures and corruption tests.
    pub fn put_file(&self, name: &str, bytes: &[u8]) {
        let mut fs = self.fs.borrow_mut();
        let ino = fs.next_inode;
        fs.next_inode += 1;
        fs.inodes.insert(
            ino,
            Inode {
                current: bytes.to_vec(),
                durable: bytes.to_vec(),
            },
        );
        fs.names.insert(name.to_string(), ino);
        fs.durable_names.insert(name.to_string(), ino);
    }

    async fn maybe_yield(&self) {
        let yield_now = self.fs.borrow().yield_on_io;
        if yield_now {
            futures_lite::future::yield_now().await;
        }
    }

    fn handle(&self, fs: &MemFs, name: &str, inode: u64) -> MemFile {
        MemFile {
            fs: Rc::clone(&self.fs),
            inode,
            epoch: fs.epoch,
            name: name.to_string(),
            yield_on_io: fs.yield_on_io,
            write_through: false,
        }
    }
}

fn einval(what: &str) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(libc::EINVAL).kind(),
        format!("misaligned direct I/O ({what}); EINVAL"),
    )
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn create(&self, name: &str) -> io::Result<MemFile> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Create)?;
        if fs.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}/{name} exists", fs.label),
            ));
        }
        let ino = fs.next_inode;
        fs.next_inode += 1;
        fs.inodes.insert(ino, Inode::default());
        fs.names.insert(name.to_string(), ino);
        Ok(self.handle(&fs, name, ino))
    }

    async fn open(&self, name: &str) -> io::Result<MemFile> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Open)?;
        let ino = *fs.names.get(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}/{name} not found", fs.label),
            )
        })?;
        Ok(self.handle(&fs, name, ino))
    }

    async fn open_write_through(&self, name: &str) -> io::Result<MemFile> {
        let mut file = self.open(name).await?;
        file.write_through = true;
        Ok(file)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Remove)?;
        match fs.names.remove(name) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}/{name} not found", fs.label),
            )),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Rename)?;
        let ino = fs.names.remove(from).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}/{from} not found", fs.label),
            )
        })?;
        fs.names.insert(to.to_string(), ino);
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::List)?;
        Ok(fs.names.keys().cloned().collect())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::SyncDir)?;
        fs.durable_names = fs.names.clone();
        Ok(())
    }

    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.fs.borrow().label)
    }
}

/// A file of a [`MemDisk`]. Survives renames and removes of its name (like an open fd);
/// becomes stale after a power loss.
pub struct MemFile {
    fs: Rc<RefCell<MemFs>>,
    inode: u64,
    epoch: u64,
    name: String,
    yield_on_io: bool,
    /// From [`Disk::open_write_through`]: a write that returns Ok is durable.
    write_through: bool,
}

impl MemFile {
    async fn maybe_yield(&self) {
        if self.yield_on_io {
            futures_lite::future::yield_now().await;
        }
    }

    /// Put `buf` into the file's current bytes.
    fn apply(&self, fs: &mut MemFs, offset: u64, buf: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| einval("offset"))?;
        let end = start + buf.len();
        let inode = fs.inode_mut(self)?;
        if inode.current.len() < end {
            inode.current.resize(end, 0);
        }
        inode.current[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn last_write(&self, offset: u64, len: usize) -> LastWrite {
        LastWrite {
            inode: self.inode,
            file: self.name.clone(),
            offset,
            len,
        }
    }
}

impl DiskFile for MemFile {
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        let already_halted = fs.halted;
        let outcome = fs.begin(OpKind::Write);
        if !offset.is_multiple_of(ALIGN as u64) || !buf.len().is_multiple_of(ALIGN) {
            return outcome.and(Err(einval("write_at")));
        }
        if let Err(e) = outcome {
            if self.write_through && !already_halted {
                // A write-through write that fails was in flight: like one cut by power
                // loss, any prefix of it may have reached the device. It becomes the
                // last unsynced write, which `power_loss_tearing` can keep a prefix of.
                // (Writes issued after a halt never reach the device.)
                if self.apply(&mut fs, offset, buf).is_ok() {
                    fs.last_write = Some(self.last_write(offset, buf.len()));
                }
            }
            return Err(e);
        }
        self.apply(&mut fs, offset, buf)?;
        fs.counters.written_bytes += buf.len() as u64;
        if self.write_through {
            let inode = fs.inode_mut(self)?;
            let start = usize::try_from(offset).map_err(|_| einval("offset"))?;
            let end = start + buf.len();
            if inode.durable.len() < end {
                inode.durable.resize(end, 0);
            }
            inode.durable[start..end].copy_from_slice(buf);
        } else {
            fs.last_write = Some(self.last_write(offset, buf.len()));
            fs.pending.push(PendingWrite {
                inode: self.inode,
                file: self.name.clone(),
                offset,
                bytes: buf.to_vec(),
            });
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Read)?;
        if !offset.is_multiple_of(ALIGN as u64) {
            return Err(einval("read_at"));
        }
        let inode = fs.inode_mut(self)?;
        let size = inode.current.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(size);
        let end = start.saturating_add(len).min(size);
        Ok(inode.current[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Sync)?;
        let inode = fs.inode_mut(self)?;
        inode.durable.clone_from(&inode.current);
        let synced = self.inode;
        fs.pending.retain(|w| w.inode != synced);
        if fs
            .last_write
            .as_ref()
            .is_some_and(|w| w.inode == self.inode)
        {
            fs.last_write = None;
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Size)?;
        Ok(fs.inode_mut(self)?.current.len() as u64)
    }

    async fn truncate(&self, size: u64) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        fs.begin(OpKind::Truncate)?;
        let size = usize::try_from(size).map_err(|_| einval("truncate"))?;
        fs.inode_mut(self)?.current.resize(size, 0);
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; ALIGN]
    }

    /// A new file `name` holding one block of `fill`, its data and name durable.
    async fn durable_file(disk: &MemDisk, name: &str, fill: u8) -> MemFile {
        let f = disk.create(name).await.unwrap();
        f.write_at(0, &block(fill)).await.unwrap();
        f.sync().await.unwrap();
        disk.sync_dir().await.unwrap();
        f
    }

    #[test]
    fn unsynced_data_and_names_vanish_on_power_loss() {
        block_on(async {
            let disk = MemDisk::new();
            let f = disk.create("a").await.unwrap();
            f.write_at(0, &block(1)).await.unwrap();
            f.sync().await.unwrap();
            // Name not durable yet: the file vanishes.
            disk.power_loss();
            assert!(disk.list().await.unwrap().is_empty());

            let f = durable_file(&disk, "a", 1).await;
            f.write_at(ALIGN as u64, &block(2)).await.unwrap();
            f.write_at(0, &block(3)).await.unwrap();
            assert_eq!(disk.file_bytes("a").unwrap().len(), 2 * ALIGN);
            disk.power_loss();
            assert_eq!(disk.file_bytes("a").unwrap(), block(1));
            // Old handles are stale after power loss.
            assert!(f.read_at(0, ALIGN).await.is_err());
            let f = disk.open("a").await.unwrap();
            assert_eq!(f.read_at(0, 10).await.unwrap(), vec![1; 10]);
        });
    }

    #[test]
    fn a_process_crash_keeps_unsynced_data_and_names_until_a_power_loss() {
        block_on(async {
            let disk = MemDisk::new();
            let f = durable_file(&disk, "a", 1).await;
            f.write_at(ALIGN as u64, &block(2)).await.unwrap();
            let g = disk.create("b").await.unwrap();
            g.write_at(0, &block(3)).await.unwrap();
            disk.process_crash();
            assert!(
                f.read_at(0, ALIGN).await.is_err(),
                "the process's handles are gone"
            );
            let mut both = block(1);
            both.extend(block(2));
            assert_eq!(disk.file_bytes("a").unwrap(), both);
            assert_eq!(disk.file_bytes("b").unwrap(), block(3));
            let f = disk.open("a").await.unwrap();
            assert_eq!(f.read_at(ALIGN as u64, 10).await.unwrap(), vec![2; 10]);
            // Still not durable: a power loss after the restart drops it.
            disk.power_loss();
            assert_eq!(disk.file_bytes("a").unwrap(), block(1));
            assert_eq!(disk.file_bytes("b"), None);
        });
    }

    #[test]
    fn removes_and_renames_are_durable_only_after_sync_dir() {
        block_on(async {
            let disk = MemDisk::new();
            durable_file(&disk, "a", 7).await;
            disk.rename("a", "b").await.unwrap();
            assert_eq!(disk.list().await.unwrap(), vec!["b".to_string()]);
            disk.power_loss();
            assert_eq!(disk.list().await.unwrap(), vec!["a".to_string()]);
            disk.remove("a").await.unwrap();
            disk.sync_dir().await.unwrap();
            disk.power_loss();
            assert!(disk.list().await.unwrap().is_empty());
        });
    }

    #[test]
    fn write_through_writes_are_durable_and_a_failed_one_is_tearable() {
        block_on(async {
            let disk = MemDisk::new();
            durable_file(&disk, "log", 1).await;
            let w = disk.open_write_through("log").await.unwrap();
            let syncs = disk.counters().syncs;
            w.write_at(ALIGN as u64, &block(2)).await.unwrap();
            assert_eq!(
                disk.last_unsynced_write(),
                None,
                "a completed write is durable"
            );
            disk.power_loss();
            let mut both = block(1);
            both.extend(block(2));
            assert_eq!(disk.durable_file_bytes("log").unwrap(), both);
            assert_eq!(disk.counters().syncs, syncs, "no fdatasync was needed");

            // A failed write-through write was in flight: a prefix of it may survive.
            let w = disk.open_write_through("log").await.unwrap();
            disk.fail_nth_of(OpKind::Write, 1, Fault::Eio);
            assert!(w.write_at(ALIGN as u64, &block(3)).await.is_err());
            let cut = disk.last_unsynced_write().unwrap();
            assert_eq!((cut.offset, cut.len), (ALIGN as u64, ALIGN));
            disk.power_loss_tearing(10);
            let got = disk.durable_file_bytes("log").unwrap();
            assert_eq!(got[ALIGN..ALIGN + 10], [3; 10]);
            assert_eq!(got[ALIGN + 10..], block(2)[10..]);

            // Writes issued after a halt never reach the device.
            let w = disk.open_write_through("log").await.unwrap();
            disk.halt_after(0);
            assert!(w.write_at(0, &block(4)).await.is_err(), "the cut write");
            assert!(w.write_at(ALIGN as u64, &block(5)).await.is_err());
            let cut = disk.last_unsynced_write().unwrap();
            assert_eq!(cut.offset, 0, "the write at the halt is the one in flight");
            disk.power_loss();
            assert_eq!(disk.durable_file_bytes("log").unwrap()[..ALIGN], block(1));
        });
    }

    #[test]
    fn power_loss_keeping_persists_a_later_write_without_an_earlier_one() {
        block_on(async {
            let disk = MemDisk::new();
            let f = durable_file(&disk, "f", 1).await;
            f.write_at(ALIGN as u64, &block(2)).await.unwrap();
            f.write_at(2 * ALIGN as u64, &block(3)).await.unwrap();
            let unsynced = disk.unsynced_writes();
            assert_eq!(unsynced.len(), 2);
            assert_eq!(
                (unsynced[0].offset, unsynced[1].offset),
                (ALIGN as u64, 2 * ALIGN as u64)
            );
            disk.power_loss_keeping(&unsynced[1..]);
            let mut expected = block(1);
            expected.extend(vec![0; ALIGN]);
            expected.extend(block(3));
            assert_eq!(disk.file_bytes("f").unwrap(), expected);
            assert!(disk.unsynced_writes().is_empty());

            // A sync covers a file's pending writes: nothing left to drop or keep.
            let f = disk.open("f").await.unwrap();
            f.write_at(0, &block(4)).await.unwrap();
            f.sync().await.unwrap();
            assert!(disk.unsynced_writes().is_empty());
        });
    }

    #[test]
    fn tearing_keeps_a_prefix_of_the_last_unsynced_write() {
        block_on(async {
            for keep in [0, 1, 100, ALIGN, ALIGN + 5, 2 * ALIGN, 10 * ALIGN] {
                let disk = MemDisk::new();
                let f = durable_file(&disk, "log", 1).await;
                let mut two = block(2);
                two.extend(block(3));
                f.write_at(0, &two).await.unwrap();
                let torn = disk.power_loss_tearing(keep).unwrap();
                assert_eq!(
                    (torn.file.as_str(), torn.offset, torn.len),
                    ("log", 0, 2 * ALIGN)
                );
                let bytes = disk.file_bytes("log").unwrap();
                let kept = keep.min(2 * ALIGN);
                assert_eq!(&bytes[..kept], &two[..kept]);
                assert_eq!(bytes.len(), kept.max(ALIGN));
                if kept < ALIGN {
                    assert!(bytes[kept..].iter().all(|&b| b == 1));
                }
                // The torn state is now durable.
                disk.power_loss();
                assert_eq!(disk.file_bytes("log").unwrap(), bytes);
            }
        });
    }

    #[test]
    fn synced_write_is_not_torn() {
        block_on(async {
            let disk = MemDisk::new();
            let f = disk.create("x").await.unwrap();
            f.write_at(0, &block(1)).await.unwrap();
            f.sync().await.unwrap();
            assert_eq!(disk.last_unsynced_write(), None);
            assert_eq!(disk.power_loss_tearing(3), None);
        });
    }

    #[test]
    fn fail_nth_fails_exactly_that_operation_without_effect() {
        block_on(async {
            let disk = MemDisk::new();
            let f = disk.create("x").await.unwrap();
            disk.fail_nth(2, Fault::Enospc);
            f.write_at(0, &block(1)).await.unwrap();
            let err = f.write_at(ALIGN as u64, &block(2)).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            assert_eq!(f.size().await.unwrap(), ALIGN as u64);
            disk.fail_nth_of(OpKind::Sync, 2, Fault::Eio);
            f.write_at(0, &block(3)).await.unwrap();
            f.sync().await.unwrap();
            f.write_at(0, &block(4)).await.unwrap();
            let err = f.sync().await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            assert_eq!(disk.durable_file_bytes("x"), None, "name never synced");
            f.sync().await.unwrap();
            let c = disk.counters();
            assert_eq!((c.writes, c.syncs, c.failed), (4, 3, 2));
            assert_eq!(c.total(), 9);
        });
    }

    #[test]
    fn halt_fails_everything_until_power_loss() {
        block_on(async {
            let disk = MemDisk::new();
            let f = disk.create("x").await.unwrap();
            disk.halt_after(1);
            f.write_at(0, &block(1)).await.unwrap();
            assert!(f.sync().await.is_err());
            assert!(disk.list().await.is_err());
            disk.power_loss();
            assert!(disk.list().await.unwrap().is_empty());
        });
    }

    #[test]
    fn misaligned_io_is_refused() {
        block_on(async {
            let disk = MemDisk::new();
            let f = disk.create("x").await.unwrap();
            assert!(f.write_at(1, &block(0)).await.is_err());
            assert!(f.write_at(0, &[0; 100]).await.is_err());
            assert!(f.read_at(512, 10).await.is_err());
            assert_eq!(f.read_at(0, 10).await.unwrap(), Vec::<u8>::new());
            assert!(disk.create("x").await.is_err());
            assert!(disk.open("y").await.is_err());
        });
    }
}

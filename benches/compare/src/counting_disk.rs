//! A [`Disk`] wrapper that counts what the engine asks of the file system: fdatasyncs,
//! directory syncs, write-through (`O_DSYNC`) writes, writes and bytes written. It lets the harness say how many syncs an
//! operation really cost instead of guessing (io_uring fsyncs are invisible to strace).
//!
//! It forwards every call unchanged and never alters, delays or fails one.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use ringkv::storage::disk::{Disk, DiskFile};

/// Running totals, shared by a disk, its clones and all files opened through them.
#[derive(Debug, Default)]
pub struct Counters {
    pub file_syncs: Cell<u64>,
    pub dir_syncs: Cell<u64>,
    /// Writes through a write-through handle: each is durable when it completes, a
    /// sync of its own.
    pub durable_writes: Cell<u64>,
    pub writes: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub reads: Cell<u64>,
}

impl Counters {
    fn bump(cell: &Cell<u64>, by: u64) {
        cell.set(cell.get() + by);
    }

    /// File fdatasyncs, directory fsyncs and write-through writes.
    pub fn syncs(&self) -> u64 {
        self.file_syncs.get() + self.dir_syncs.get() + self.durable_writes.get()
    }
}

#[derive(Clone)]
pub struct CountingDisk<D> {
    inner: D,
    pub counters: Rc<Counters>,
}

impl<D> CountingDisk<D> {
    pub fn new(inner: D, counters: Rc<Counters>) -> Self {
        CountingDisk { inner, counters }
    }

    fn wrap<F>(&self, inner: F, write_through: bool) -> CountingFile<F> {
        CountingFile {
            inner,
            counters: self.counters.clone(),
            write_through,
        }
    }
}

pub struct CountingFile<F> {
    inner: F,
    counters: Rc<Counters>,
    write_through: bool,
}

impl<D: Disk> Disk for CountingDisk<D> {
    type File = CountingFile<D::File>;

    async fn create(&self, name: &str) -> io::Result<Self::File> {
        Ok(self.wrap(self.inner.create(name).await?, false))
    }

    async fn open(&self, name: &str) -> io::Result<Self::File> {
        Ok(self.wrap(self.inner.open(name).await?, false))
    }

    async fn open_write_through(&self, name: &str) -> io::Result<Self::File> {
        Ok(self.wrap(self.inner.open_write_through(name).await?, true))
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list().await
    }

    async fn sync_dir(&self) -> io::Result<()> {
        Counters::bump(&self.counters.dir_syncs, 1);
        self.inner.sync_dir().await
    }

    fn path_of(&self, name: &str) -> String {
        self.inner.path_of(name)
    }
}

impl<F: DiskFile> DiskFile for CountingFile<F> {
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        Counters::bump(&self.counters.writes, 1);
        Counters::bump(&self.counters.bytes_written, buf.len() as u64);
        if self.write_through {
            Counters::bump(&self.counters.durable_writes, 1);
        }
        self.inner.write_at(offset, buf).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        Counters::bump(&self.counters.reads, 1);
        self.inner.read_at(offset, len).await
    }

    async fn sync(&self) -> io::Result<()> {
        Counters::bump(&self.counters.file_syncs, 1);
        self.inner.sync().await
    }

    async fn size(&self) -> io::Result<u64> {
        self.inner.size().await
    }

    async fn truncate(&self, size: u64) -> io::Result<()> {
        self.inner.truncate(size).await
    }

    async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }
}

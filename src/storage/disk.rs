//! The engine's only door to the file system: all of its I/O goes through this narrow
//! trait (docs/design.md §5).
//!
//! A [`Disk`] is one shard's data directory; a [`DiskFile`] is one file in it. The
//! production implementation (`GlommioDisk`) uses glommio DMA files (O_DIRECT through
//! io_uring); the test implementation (`MemDisk`) keeps everything in memory and can
//! lose unsynced data (power loss), tear the last write, and fail the N-th operation.
//!
//! Contract, enforced by both implementations so tests catch violations:
//! - `write_at` offsets and lengths are multiples of [`ALIGN`] (direct I/O);
//! - `read_at` offsets are multiples of [`ALIGN`]; it may return fewer bytes at EOF;
//! - data written is durable only after `sync` returns Ok, except through a handle from
//!   [`Disk::open_write_through`], where each `write_at` that returns Ok is durable; a
//!   created, renamed or removed name is durable only after `sync_dir` returns Ok;
//! - an error from `sync` means the covered writes may or may not be on disk: callers
//!   must fail them and must not retry-and-trust (the "fsyncgate" lesson).
//!
//! Futures here are `!Send`: everything runs on the shard's own executor thread.

use std::io;

/// Alignment of direct I/O offsets and lengths, in bytes.
pub const ALIGN: usize = 4096;

/// Round `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

#[expect(
    async_fn_in_trait,
    reason = "single-threaded executors; futures are never sent"
)]
pub trait Disk {
    type File: DiskFile;

    /// Create a new, empty file; fails if the name exists.
    async fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Open an existing file for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Open an existing file so that every `write_at` through this handle that returns Ok
    /// is durable when it returns (`O_DSYNC`): no `sync` is needed for it. Writes made
    /// through other handles still need their own `sync`. Disks that cannot do this
    /// return `Unsupported`.
    async fn open_write_through(&self, name: &str) -> io::Result<Self::File> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "write-through open of {} is not supported",
                self.path_of(name)
            ),
        ))
    }
    /// Remove a file (durable after `sync_dir`).
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically replace `to` with `from` (durable after `sync_dir`).
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Names of all files in the directory, sorted.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// fsync the directory itself, making creates, renames and removes durable.
    async fn sync_dir(&self) -> io::Result<()>;
    /// Human-readable path of a file, for error messages.
    fn path_of(&self, name: &str) -> String;
}

#[expect(
    async_fn_in_trait,
    reason = "single-threaded executors; futures are never sent"
)]
pub trait DiskFile {
    /// Write `buf` at `offset`; both multiples of [`ALIGN`].
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Read up to `len` bytes at `offset` (a multiple of [`ALIGN`]); short only at EOF.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// fdatasync.
    async fn sync(&self) -> io::Result<()>;
    /// Current size in bytes.
    async fn size(&self) -> io::Result<u64>;
    /// Truncate or extend (with zeros) to `size` bytes.
    async fn truncate(&self, size: u64) -> io::Result<()>;
    /// Close the file.
    async fn close(self) -> io::Result<()>;
}

/// A shared disk is a disk: lets the engine hand one `Rc<D>` to the commit log, the
/// SSTables and the manifest.
impl<T: Disk> Disk for std::rc::Rc<T> {
    type File = T::File;

    async fn create(&self, name: &str) -> io::Result<Self::File> {
        (**self).create(name).await
    }
    async fn open(&self, name: &str) -> io::Result<Self::File> {
        (**self).open(name).await
    }
    async fn open_write_through(&self, name: &str) -> io::Result<Self::File> {
        (**self).open_write_through(name).await
    }
    async fn remove(&self, name: &str) -> io::Result<()> {
        (**self).remove(name).await
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        (**self).rename(from, to).await
    }
    async fn list(&self) -> io::Result<Vec<String>> {
        (**self).list().await
    }
    async fn sync_dir(&self) -> io::Result<()> {
        (**self).sync_dir().await
    }
    fn path_of(&self, name: &str) -> String {
        (**self).path_of(name)
    }
}

//! The production [`Disk`]: one directory of glommio [`DmaFile`]s (O_DIRECT through
//! io_uring).
//!
//! It owns the translation from the narrow `Disk` contract to glommio: DMA buffers,
//! aligned reads, fdatasync, and converting `GlommioError` (not `Sync`) into
//! `std::io::Error`. It must be created and used on the shard's own executor thread and
//! must never open a file before [`GlommioDisk::open`] has opened the probe sentinel
//! (glommio issue #605, docs/design.md §9.4: if the first `DmaFile` an executor opens on
//! a device is empty, later direct reads fail with `EOPNOTSUPP`).
//!
//! Rare metadata operations (remove, rename, list) use `std::fs` synchronously: they
//! happen a few times per memtable flush, not per request.

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::disk::{align_up, Disk, DiskFile, ALIGN};

/// Name of the non-empty sentinel file opened first (probe bug #605). Hidden from
/// [`Disk::list`].
pub const PROBE_FILE_NAME: &str = ".probe";
const PROBE_FILE_BYTES: usize = ALIGN;

fn to_io<T>(err: glommio::GlommioError<T>) -> io::Error {
    io::Error::from(err)
}

/// A directory of direct-I/O files on the current glommio executor. Clones share the
/// directory (the probe has been done once per executor by `open`).
#[derive(Clone)]
pub struct GlommioDisk {
    dir: PathBuf,
}

impl GlommioDisk {
    /// Create `dir` if needed, then open the probe sentinel with `DmaFile` before any
    /// other file (it is written with `std::fs` first so that it is non-empty when
    /// glommio sees it).
    pub async fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        // glommio's `Directory::open` fails with EBADF on relative paths: keep it absolute.
        let dir = std::fs::canonicalize(dir.as_ref())?;
        let probe_path = dir.join(PROBE_FILE_NAME);
        let probe_ok = std::fs::metadata(&probe_path)
            .map(|m| m.len() >= PROBE_FILE_BYTES as u64)
            .unwrap_or(false);
        if !probe_ok {
            std::fs::write(&probe_path, [0x5a_u8; PROBE_FILE_BYTES])?;
        }
        let probe = DmaFile::open(&probe_path).await.map_err(to_io)?;
        probe.close().await.map_err(to_io)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Open `name` for reading and writing, with extra `open(2)` flags; `create_new`:
    /// create it, failing if it exists.
    async fn open_with(&self, name: &str, create_new: bool, flags: i32) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .custom_flags(flags)
            .dma_open(self.path(name)?)
            .await
            .map_err(to_io)?;
        Ok(GlommioFile { file })
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == PROBE_FILE_NAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid file name {name:?}"),
            ));
        }
        Ok(self.dir.join(name))
    }
}

impl Disk for GlommioDisk {
    type File = GlommioFile;

    async fn create(&self, name: &str) -> io::Result<GlommioFile> {
        self.open_with(name, true, 0).await
    }

    async fn open(&self, name: &str) -> io::Result<GlommioFile> {
        self.open_with(name, false, 0).await
    }

    async fn open_write_through(&self, name: &str) -> io::Result<GlommioFile> {
        // O_DSYNC with O_DIRECT: the kernel completes each write only once it is on
        // stable storage (a FUA write, or a cache flush after it, plus any metadata
        // needed to read it back), like a write followed by fdatasync of its range.
        self.open_with(name, false, libc::O_DSYNC).await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name)?)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from)?, self.path(to)?)
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                if name != PROBE_FILE_NAME {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = Directory::open(&self.dir).await.map_err(to_io)?;
        let synced = dir.sync().await.map_err(to_io);
        let closed = dir.close().await.map_err(to_io);
        synced.and(closed)
    }

    fn path_of(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// One direct-I/O file of a [`GlommioDisk`].
pub struct GlommioFile {
    file: DmaFile,
}

fn check_aligned(offset: u64, len: usize, what: &str) -> io::Result<()> {
    if !offset.is_multiple_of(ALIGN as u64) || !len.is_multiple_of(ALIGN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("misaligned direct I/O {what} (offset {offset}, len {len})"),
        ));
    }
    Ok(())
}

impl DiskFile for GlommioFile {
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check_aligned(offset, buf.len(), "write")?;
        let mut done = 0;
        // A direct write may be short (e.g. near ENOSPC); continue from where it stopped
        // as long as it stopped on a block boundary, which O_DIRECT guarantees.
        while done < buf.len() {
            let rest = &buf[done..];
            let mut dma = self.file.alloc_dma_buffer(rest.len());
            dma.as_bytes_mut().copy_from_slice(rest);
            let written = self
                .file
                .write_at(dma, offset + done as u64)
                .await
                .map_err(to_io)?;
            if written == 0 || written % ALIGN != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "short direct write of {written} bytes at {}",
                        offset + done as u64
                    ),
                ));
            }
            done += written;
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        check_aligned(offset, 0, "read")?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let result = self
            .file
            .read_at_aligned(offset, align_up(len))
            .await
            .map_err(to_io)?;
        let n = result.len().min(len);
        Ok(result[..n].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    async fn truncate(&self, size: u64) -> io::Result<()> {
        self.file.truncate(size).await.map_err(to_io)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn run<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move { f().await });
    }

    /// The file's `open(2)` flags, as the kernel reports them.
    fn open_flags(f: &GlommioFile) -> i32 {
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.file.as_raw_fd())).unwrap();
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap()
    }

    #[test]
    fn write_read_sync_list_rename_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard0");
        run(move || async move {
            let disk = GlommioDisk::open(&dir).await.unwrap();
            let f = disk.create("a").await.unwrap();
            let mut data = vec![0u8; 2 * ALIGN];
            for (i, b) in data.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            f.write_at(0, &data).await.unwrap();
            f.sync().await.unwrap();
            disk.sync_dir().await.unwrap();
            assert_eq!(f.size().await.unwrap(), 2 * ALIGN as u64);
            assert_eq!(f.read_at(0, 100).await.unwrap(), data[..100]);
            assert_eq!(
                f.read_at(ALIGN as u64, 10 * ALIGN).await.unwrap(),
                data[ALIGN..]
            );
            assert!(f.write_at(3, &data).await.is_err());
            assert!(f.write_at(0, &data[..10]).await.is_err());
            f.truncate(ALIGN as u64).await.unwrap();
            assert_eq!(f.size().await.unwrap(), ALIGN as u64);
            f.close().await.unwrap();
            assert!(disk.create("a").await.is_err(), "create must not clobber");
            assert_eq!(disk.list().await.unwrap(), vec!["a".to_string()]);
            disk.rename("a", "b").await.unwrap();
            disk.sync_dir().await.unwrap();
            let g = disk.open("b").await.unwrap();
            assert_eq!(g.read_at(0, ALIGN).await.unwrap(), data[..ALIGN]);
            assert_eq!(
                open_flags(&g) & libc::O_DSYNC,
                0,
                "a plain open is not O_DSYNC"
            );
            g.close().await.unwrap();
            // Write-through handles carry O_DSYNC (on top of glommio's O_DIRECT).
            let w = disk.open_write_through("b").await.unwrap();
            let flags = open_flags(&w);
            assert_eq!(flags & libc::O_DSYNC, libc::O_DSYNC, "flags {flags:#o}");
            assert_eq!(flags & libc::O_DIRECT, libc::O_DIRECT, "flags {flags:#o}");
            w.write_at(ALIGN as u64, &data[..ALIGN]).await.unwrap();
            assert_eq!(w.read_at(ALIGN as u64, ALIGN).await.unwrap(), data[..ALIGN]);
            w.close().await.unwrap();
            disk.remove("b").await.unwrap();
            disk.sync_dir().await.unwrap();
            assert!(disk.list().await.unwrap().is_empty());
            assert!(disk.path_of("b").ends_with("shard0/b"));
        });
    }
}

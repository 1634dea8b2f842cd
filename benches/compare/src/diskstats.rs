//! Ground truth from the kernel: the block device's write and flush counters
//! (`/proc/diskstats`) around each phase, and a refusal to run on tmpfs.
//!
//! The counters are for the whole device, so other processes writing to it at the same
//! time add noise; the harness reports them as a cross-check of its own sync counts, never
//! as the headline number. This module only reads `/proc`; it never writes anywhere.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Counters of one block device at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceSample {
    pub writes_completed: u64,
    pub sectors_written: u64,
    /// Cache-flush requests completed (the device-level cost of an fdatasync); 0 on
    /// kernels older than 5.5, which do not report it.
    pub flushes_completed: u64,
}

/// Difference of two samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceDelta {
    pub writes: u64,
    pub bytes_written: u64,
    pub flushes: u64,
}

/// The device holding a directory, found by its `st_dev` number.
#[derive(Clone, Debug)]
pub struct Device {
    pub name: Option<String>,
    major: u64,
    minor: u64,
}

impl Device {
    pub fn of(dir: &Path) -> std::io::Result<Device> {
        let dev = std::fs::metadata(dir)?.dev();
        // glibc's gnu_dev_major / gnu_dev_minor encoding.
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff);
        let mut device = Device {
            name: None,
            major,
            minor,
        };
        device.name = device.line().map(|fields| fields[2].to_string());
        Ok(device)
    }

    fn line(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string("/proc/diskstats").ok()?;
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|f| {
                f.len() >= 14
                    && f[0].parse::<u64>().ok() == Some(self.major)
                    && f[1].parse::<u64>().ok() == Some(self.minor)
            })
    }

    /// Current counters; all zero when the device is not listed (e.g. an overlay).
    pub fn sample(&self) -> DeviceSample {
        let Some(f) = self.line() else {
            return DeviceSample::default();
        };
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        DeviceSample {
            writes_completed: num(7),
            sectors_written: num(9),
            flushes_completed: num(18),
        }
    }
}

impl DeviceSample {
    pub fn until(&self, later: &DeviceSample) -> DeviceDelta {
        DeviceDelta {
            writes: later.writes_completed.saturating_sub(self.writes_completed),
            bytes_written: later.sectors_written.saturating_sub(self.sectors_written) * 512,
            flushes: later
                .flushes_completed
                .saturating_sub(self.flushes_completed),
        }
    }
}

/// File-system type of the mount holding `dir` (longest matching mount point).
pub fn fs_type(dir: &Path) -> Option<String> {
    let dir: PathBuf = std::fs::canonicalize(dir).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, t)| t)
}

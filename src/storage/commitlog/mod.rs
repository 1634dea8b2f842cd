//! The per-shard commit log (docs/design.md §4.3, §5.1): durable, ordered, checksummed
//! records in direct-I/O segment files, with group commit and crash recovery.
//!
//! It owns the segment files `commitlog-<generation:020>.log` of its [`Disk`] and the
//! spare segment `commitlog.spare` (other files in the directory are ignored) and the
//! durability of every append: in
//! [`SyncMode::Batch`] an append returns only after a durable write covering it; in
//! [`SyncMode::Periodic`] only after a completed write covering it, made durable by the
//! next [`CommitLog::sync`].
//! It never interprets payloads, never retries a failed write (a failure
//! puts the log into a failed state until the process restarts, the "fsyncgate"
//! lesson), and never silently skips a corrupt record that is not at the tail.
//!
//! Group commit needs no background task, so it works on any executor: an append
//! copies its payload into the open in-memory batch; if no flush is in flight it becomes
//! the *leader*, takes every buffered batch, writes them, then wakes the others.
//! Appends that arrive while a flush is in flight queue up; when it completes, one of
//! them becomes the next leader and writes the whole queue in one flush.
//!
//! **Write-through segments (batch mode).** Appends go through a handle opened with
//! [`Disk::open_write_through`] (`O_DSYNC`): a batch write is durable when it completes,
//! so a flush is one write per batch (usually one), not a write and then an fdatasync.
//! That costs less CPU than write + fdatasync (measured in docs/benchmarks.md, three
//! nodes, batch mode): the kernel completes the sync inside the write (a FUA write, or
//! a cache flush queued after it), where a separate fdatasync is one more io_uring
//! operation, which io_uring hands to a worker thread. Preallocation and headers are
//! still written through an ordinary handle and fdatasync'ed once.
//!
//! **Periodic mode.** [`SyncMode::Periodic`] takes the same path, group commit and
//! all, with one difference: segments are opened without `O_DSYNC`, so an append
//! returns once the direct write of its batch has *completed*, not once it is stable.
//! A completed direct write has left the process (it is in the device, possibly in its
//! volatile cache), so a process crash (kill -9, OOM kill, panic) loses no
//! acknowledged append: the next open reads it back. Nothing stays buffered in our
//! memory past an ack. Only power loss or a kernel crash can lose appends, those
//! written since the last [`CommitLog::sync`], which the shard driver calls every
//! `period_ms` and at shutdown: it fdatasyncs the active segment. A roll fdatasyncs the
//! segment it leaves before the next segment's name can become durable, so at any
//! moment only the newest segment on disk can hold unsynced writes; that costs one
//! extra fdatasync per segment, i.e. per `segment_size_bytes` of log, and it is what
//! lets recovery treat a hole in the newest segment as lost unsynced writes (below).
//! Recovery keeps that true across a process crash: it fdatasyncs the newest segment it
//! replays before starting a fresh one, which turns it into an older segment.
//! Directory entries need no periodic sync: a segment's name is made durable when it is
//! created, before anything is written to it.
//!
//! Recovery (`open`) replays every segment in generation order, applies the named
//! [`RecoveryPolicy`] and the [`HolePolicy`] of its sync mode, repairs a torn tail so that later recoveries see a clean segment,
//! and always starts a fresh segment: a recovered segment is never appended to, so bytes
//! of a torn batch can never be mistaken for a later valid batch.
//!
//! **Preallocation.** A segment is created full size: header, then zeros up to
//! `segment_size_bytes`, one fdatasync, one directory sync. Appends then overwrite
//! blocks that already exist, so an append's durable write commits data only, not a file
//! size or extent change (on ext4 that is a journal transaction per append; see
//! `benches/compare/README.md`). The zero tail is the end of the log for recovery, as
//! it always was: the log ends at the first block boundary where the rest of the file is
//! zeros. A batch with a valid header but broken records is still a torn tail, however
//! many zeros follow it, and damage followed by a valid batch is still mid-log
//! corruption (the search for a later batch covers the whole non-zero part of the file),
//! except for the periodic-mode hole of [`HolePolicy::UnsyncedHoleInNewestSegment`].
//! Costs: every segment is written twice (zeros, then batches), and recovery reads each
//! live segment in full, zero tail included.
//!
//! **Spare segment.** Writing `segment_size_bytes` of zeros takes a while, so it is done
//! ahead: when a flush leaves the active segment more than half full, its leader (after
//! publishing its flush, so other appends proceed) prepares `commitlog.spare`: header of
//! the next generation, zeros, fdatasync. Rolling then only renames the spare into place
//! and syncs the directory. The spare name is not a segment name, so recovery never
//! reads it (it removes a leftover one); a crash between rename and directory sync
//! leaves either the spare or a complete empty segment. If the roll comes before the
//! spare is ready, the segment is created and preallocated in place, as at open.
//!
//! **What is deliberately not done, and why.**
//! - *Recycling released segments* (rename, new header, stale records left in place).
//!   Stale records never replay, because the generation is inside every CRC (tested in
//!   `format`), but with this format the log would no longer end where the rest of the
//!   file is zeros: stale bytes after the last batch look exactly like a torn batch
//!   header. Recovery would then report a torn tail after every clean shutdown of a
//!   recycled segment, refuse it under [`RecoveryPolicy::Strict`], and refuse it as
//!   mid-log damage once a newer segment exists. Doing it right needs a format change
//!   (for example an explicit end-of-segment marker written at roll, or the generation
//!   stored in each batch header so stale headers can be told from torn ones). Until
//!   then a new segment costs one sequential zero write of `segment_size_bytes`.
//! - *Appending small batches into the partly filled last block* (rewriting it). A
//!   4 KiB direct write is not atomic on power loss: the device may persist some of its
//!   sectors and not others. Rewriting a block that already holds acknowledged records
//!   could then destroy them, and no checksum can bring them back. Making it safe needs
//!   either a device atomic-write guarantee of at least 4 KiB (`RWF_ATOMIC`, not exposed
//!   by glommio 0.9 and not promised by virtio disks) or writing every rewrite to
//!   alternate locations (ping-pong blocks) with a recovery rule to pick the newest
//!   complete copy, which is a format change with its own torn-write cases. So every
//!   batch still starts on a fresh block, and a block holding acknowledged records is
//!   never written again. The same holds in periodic mode: a partly filled block may
//!   hold records synced by an earlier period, which power loss must not take.
//! - *Telling every kind of unsynced loss from corruption in periodic mode.* Between
//!   two syncs the device may persist the completed writes in any order, so after a
//!   power loss a later batch can be on disk while an earlier one is not. The common
//!   case, an earlier batch that never reached the disk at all (its header block still
//!   the preallocated zeros) before a valid later batch in the newest segment, is the
//!   named rule [`HolePolicy::UnsyncedHoleInNewestSegment`]: the log ends there. What
//!   it does not cover, and still refuses naming file and offset: an earlier batch of
//!   several blocks of which only the header block landed, and a torn write that turns
//!   a synced block into garbage. Telling those apart needs the sync point on disk, for
//!   example a marker block written after each periodic fdatasync that recovery trusts
//!   as the end of the synced part: a format change (version 2).

mod format;

pub use format::{
    parse_segment_file_name, segment_file_name, SegmentLayout, FORMAT_VERSION, MAX_RECORD_BYTES,
    MAX_SEGMENT_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use format::{
    batch_disk_bytes, check_segment_header, encode_segment_header, record_frame_bytes,
    repaired_batch, scan_segment, BatchBuilder, HeaderProblem,
};

use crate::storage::disk::{Disk, DiskFile, ALIGN};

/// Identifies a segment; equal to its generation, which only grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl SegmentId {
    fn next(self) -> SegmentId {
        SegmentId(self.0 + 1)
    }
}

/// When appends become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// An append returns after an fdatasync covering it (group commit). The default.
    Batch,
    /// An append returns once the write covering it has completed (it survives a
    /// process crash); [`CommitLog::sync`], called every `period_ms`, makes it survive
    /// power loss.
    Periodic { period_ms: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitLogConfig {
    /// Segment file size limit; a multiple of 4096 between 8 KiB and 1 GiB. A record too
    /// large for an empty segment gets a segment of its own, larger than this.
    pub segment_size_bytes: u64,
    pub sync: SyncMode,
}

impl Default for CommitLogConfig {
    fn default() -> Self {
        Self {
            segment_size_bytes: 32 << 20,
            sync: SyncMode::Batch,
        }
    }
}

impl CommitLogConfig {
    fn validate(&self) -> Result<(), CommitLogError> {
        let size = self.segment_size_bytes;
        if !size.is_multiple_of(ALIGN as u64) || size < 2 * ALIGN as u64 || size > MAX_SEGMENT_BYTES
        {
            return Err(CommitLogError::InvalidConfig(format!(
                "segment_size_bytes {size} must be a multiple of {ALIGN} in [{}, {MAX_SEGMENT_BYTES}]",
                2 * ALIGN
            )));
        }
        Ok(())
    }
}

/// What recovery does with damage it finds (docs/design.md §5.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryPolicy {
    /// Damage at the tail of the newest segment (nothing valid after it: a write torn by
    /// power loss, never acknowledged in batch mode) is discarded, repaired on disk and
    /// reported in [`Recovery::torn_tail`]. Damage anywhere else is
    /// [`CommitLogError::Corrupt`], naming file and offset.
    #[default]
    TolerateCorruptTail,
    /// Any damage, even at the tail, is an error (for inspection tools).
    Strict,
}

/// What recovery makes of a hole in the newest segment: a damaged batch whose first
/// block is all zeros, with a valid batch of a later sequence after it. The choice
/// follows from [`SyncMode`] ([`HolePolicy::for_sync`]); [`RecoveryPolicy::Strict`]
/// refuses a hole under either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolePolicy {
    /// Batch mode: refused as [`CommitLogError::Corrupt`]. A hole cannot come from a
    /// crash there: one batch write is in flight at a time and each is durable
    /// (`O_DSYNC`) before the next is issued, so a later batch on disk proves every
    /// earlier one was too.
    Refuse,
    /// Periodic mode: between two syncs the device may persist completed writes in any
    /// order, so after power loss a later batch can be on disk while an earlier one
    /// never reached it, leaving the preallocated zeros. Only the newest segment can
    /// hold unsynced writes (a roll syncs the segment it leaves), so there the hole is
    /// the end of the log: the records before it are kept, everything from it on is
    /// discarded (all of it written since the last sync), the segment is repaired like
    /// a torn tail, and [`Recovery::unsynced_hole`] reports it. Non-zero damage before a
    /// valid batch, and a hole in any older segment, are still refused.
    UnsyncedHoleInNewestSegment,
}

impl HolePolicy {
    pub fn for_sync(sync: SyncMode) -> Self {
        match sync {
            SyncMode::Batch => HolePolicy::Refuse,
            SyncMode::Periodic { .. } => HolePolicy::UnsyncedHoleInNewestSegment,
        }
    }
}

/// Writes since the last periodic sync, lost to power loss: what
/// [`HolePolicy::UnsyncedHoleInNewestSegment`] discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsyncedHole {
    pub file: String,
    /// Offset of the first zero block, where the log now ends.
    pub offset: u64,
    /// Bytes discarded: from `offset` to the end of the last block holding a non-zero
    /// byte.
    pub bytes_dropped: u64,
    /// Valid batches found after the hole and discarded with it.
    pub batches_dropped: u64,
}

/// The discarded tail reported by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: String,
    /// Offset of the first byte that was not part of a whole valid record.
    pub offset: u64,
    /// Bytes discarded: from `offset` to the end of the last block holding a non-zero
    /// byte. The zero tail of a preallocated segment is not counted (it never held data).
    pub bytes_dropped: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredSegment {
    pub id: SegmentId,
    pub file: String,
    pub records: u64,
    pub bytes: u64,
}

/// What [`CommitLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Payloads in append order (empty when recovered through [`CommitLog::open_with`]).
    pub records: Vec<Vec<u8>>,
    /// Replayed segments, oldest first, with their record counts.
    pub segments: Vec<RecoveredSegment>,
    pub torn_tail: Option<TornTail>,
    /// Periodic mode only; see [`HolePolicy::UnsyncedHoleInNewestSegment`].
    pub unsynced_hole: Option<UnsyncedHole>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitLogError {
    #[error("commit log I/O error ({op}) on {file}: {source}")]
    Io {
        file: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("commit log corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("commit log segment {file} refused: {reason}")]
    BadSegment { file: String, reason: String },
    #[error("commit log failed after an earlier error ({cause}); restart the process")]
    Failed { cause: String },
    #[error("record of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    RecordTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("invalid commit log config: {0}")]
    InvalidConfig(String),
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitLogStats {
    pub appends: u64,
    pub batches_written: u64,
    pub bytes_written: u64,
    /// Flushes that wrote at least one batch: the group commits. In batch mode each
    /// batch write is durable when it completes (segments are open write-through,
    /// `O_DSYNC`), so there is no separate fdatasync of segment data; in periodic mode
    /// it is on the device but not yet synced.
    pub group_commits: u64,
    /// Time the group commits spent writing their batches (from the first write's
    /// submission to the last one's completion), in microseconds: divided by
    /// `group_commits`, the write latency an append waits for (durable writes in batch
    /// mode, plain direct writes in periodic mode).
    pub group_commit_micros: u64,
    /// fdatasyncs of segment data in periodic mode: by [`CommitLog::sync`] and by each
    /// roll, which syncs the segment it leaves.
    pub segment_syncs: u64,
    pub segments_created: u64,
    /// Of `segments_created`, those that were a prepared spare renamed into place.
    pub spares_used: u64,
}

const READ_CHUNK_BYTES: usize = 1 << 20;
/// Zeros written per `write_at` when preallocating a segment: bounded so the DMA buffer
/// fits glommio's I/O memory even when it falls back to 2 MiB.
const PREALLOC_CHUNK_BYTES: usize = 512 << 10;
/// File name of the spare segment; not a segment name, so recovery ignores it.
pub const SPARE_FILE_NAME: &str = "commitlog.spare";
const NEW_BUFFER_BYTES: usize = 64 << 10;
const SPARE_BUFFERS_MAX: usize = 4;
const SPARE_BUFFER_BYTES_MAX: usize = 8 << 20;

const _: () = assert!(READ_CHUNK_BYTES.is_multiple_of(ALIGN));
const _: () = assert!(PREALLOC_CHUNK_BYTES.is_multiple_of(ALIGN) && PREALLOC_CHUNK_BYTES >= ALIGN);

fn io_error(file: &str, op: &'static str, source: io::Error) -> CommitLogError {
    CommitLogError::Io {
        file: file.to_string(),
        op,
        source,
    }
}

/// The first failure, kept to answer every later append.
struct Failure {
    /// Batch tickets the failing flush covered: their appends get the I/O error itself.
    covered: Range<u64>,
    file: String,
    op: &'static str,
    kind: io::ErrorKind,
    raw_os_error: Option<i32>,
    message: String,
}

impl Failure {
    fn from_error(err: &CommitLogError, covered: Range<u64>) -> Self {
        let (file, op, kind, raw_os_error) = match err {
            CommitLogError::Io { file, op, source } => {
                (file.clone(), *op, source.kind(), source.raw_os_error())
            }
            _ => (String::new(), "flush", io::ErrorKind::Other, None),
        };
        Self {
            covered,
            file,
            op,
            kind,
            raw_os_error,
            message: err.to_string(),
        }
    }

    fn error_for(&self, ticket: Option<u64>) -> CommitLogError {
        match ticket {
            Some(t) if self.covered.contains(&t) => {
                let source = match self.raw_os_error {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(self.kind, self.message.clone()),
                };
                io_error(&self.file, self.op, source)
            }
            _ => CommitLogError::Failed {
                cause: self.message.clone(),
            },
        }
    }
}

/// A batch being filled by appends; its place on disk is already decided.
struct OpenBatch {
    ticket: u64,
    segment: SegmentId,
    start: u64,
    builder: BatchBuilder,
}

/// A batch ready to write: whole blocks destined for `segment` at `start`.
struct SealedBatch {
    ticket: u64,
    segment: SegmentId,
    start: u64,
    bytes: Vec<u8>,
}

/// Everything appends touch. Never borrowed across an await.
struct State {
    failed: Option<Failure>,
    /// Where the next new batch goes: segment, offset and batch sequence. Appends decide
    /// their segment at once (even in periodic mode) so `append` can return it.
    layout_segment: SegmentId,
    layout_pos: u64,
    layout_sequence: u64,
    open: Option<OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    /// Batches get consecutive tickets; every ticket below `written_below` has been
    /// written (and so is durable in batch mode, whose segments are write-through).
    next_ticket: u64,
    written_below: u64,
    flushing: bool,
    /// A [`CommitLog::sync`] is fdatasyncing segments; another one waits for it.
    syncing: bool,
    /// Bumped at the end of every flush; waiters sleep until it changes.
    epoch: u64,
    wakers: Vec<Waker>,
    live_segments: BTreeSet<SegmentId>,
    spare_buffers: Vec<Vec<u8>>,
    stats: CommitLogStats,
}

impl State {
    fn seal_open(&mut self) {
        if let Some(open) = self.open.take() {
            assert_eq!(
                open.start, self.layout_pos,
                "the open batch sits at the layout cursor"
            );
            let bytes = open.builder.finish();
            self.layout_pos = open.start + bytes.len() as u64;
            self.sealed.push_back(SealedBatch {
                ticket: open.ticket,
                segment: open.segment,
                start: open.start,
                bytes,
            });
        }
    }

    /// Copy `payload` into the open batch (opening one if needed) and return the batch
    /// ticket and segment it will be written to.
    fn buffer(&mut self, payload: &[u8], segment_size_bytes: u64) -> (u64, SegmentId) {
        let frame = record_frame_bytes(payload.len());
        self.stats.appends += 1;
        if let Some(open) = &mut self.open {
            let end = open.start + batch_disk_bytes(open.builder.records_len() + frame) as u64;
            if end <= segment_size_bytes {
                open.builder.push(payload);
                return (open.ticket, open.segment);
            }
        }
        self.seal_open();
        let need = batch_disk_bytes(frame) as u64;
        if self.layout_pos + need > segment_size_bytes && self.layout_pos > SEGMENT_HEADER_BYTES {
            self.move_layout_to_next_segment();
        }
        let buf = self
            .spare_buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_BUFFER_BYTES));
        let mut builder = BatchBuilder::new(self.layout_segment.0, self.layout_sequence, buf);
        builder.push(payload);
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.layout_sequence += 1;
        self.open = Some(OpenBatch {
            ticket,
            segment: self.layout_segment,
            start: self.layout_pos,
            builder,
        });
        (ticket, self.layout_segment)
    }

    fn move_layout_to_next_segment(&mut self) {
        assert!(self.open.is_none(), "seal before moving on");
        self.layout_segment = self.layout_segment.next();
        self.layout_pos = SEGMENT_HEADER_BYTES;
        self.layout_sequence = 0;
    }

    /// Seal and take every buffered batch (the leader's share).
    fn take_all(&mut self) -> Vec<SealedBatch> {
        self.seal_open();
        let batches: Vec<SealedBatch> = self.sealed.drain(..).collect();
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(
                b.ticket,
                self.written_below + i as u64,
                "tickets are contiguous"
            );
        }
        batches
    }

    fn wake_all(&mut self) -> Vec<Waker> {
        self.epoch += 1;
        std::mem::take(&mut self.wakers)
    }
}

/// The segment the flush leader writes to. Touched only by the leader (and by
/// [`CommitLog::sync`], which takes its unsynced writes).
struct Active<F> {
    id: SegmentId,
    name: String,
    file: Rc<F>,
    write_pos: u64,
    /// Periodic mode: written to since the last [`CommitLog::sync`] took it.
    unsynced: bool,
}

/// The preallocated next segment, under [`SPARE_FILE_NAME`].
enum Spare<F> {
    None,
    /// A leader is writing it (for this generation).
    Preparing {
        generation: u64,
    },
    /// Header of `generation` and zeros, fdatasync'ed; not yet renamed into place.
    Ready {
        generation: u64,
        file: F,
    },
}

struct Inner<D: Disk> {
    disk: D,
    cfg: CommitLogConfig,
    state: RefCell<State>,
    active: RefCell<Active<D::File>>,
    spare: RefCell<Spare<D::File>>,
}

/// Resets a spare left `Preparing` by a failed or cancelled preparation.
struct SpareGuard<'a, F> {
    spare: &'a RefCell<Spare<F>>,
    finished: bool,
}

impl<F> Drop for SpareGuard<'_, F> {
    fn drop(&mut self) {
        if !self.finished {
            *self.spare.borrow_mut() = Spare::None;
        }
    }
}

/// The per-shard commit log; see the module documentation. Cheap to clone (an `Rc`).
/// The on-disk layout is documented on [`SegmentLayout`].
pub struct CommitLog<D: Disk> {
    inner: Rc<Inner<D>>,
}

impl<D: Disk> Clone for CommitLog<D> {
    fn clone(&self) -> Self {
        Self {
            inner: Rc::clone(&self.inner),
        }
    }
}

impl<D: Disk> std::fmt::Debug for CommitLog<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.borrow();
        f.debug_struct("CommitLog")
            .field("current_segment", &st.layout_segment)
            .field("failed", &st.failed.as_ref().map(|x| &x.message))
            .field("stats", &st.stats)
            .finish()
    }
}

/// Resolves when the state's epoch moves past `seen_epoch` (a flush ended).
struct EpochChanged<'a> {
    state: &'a RefCell<State>,
    seen_epoch: u64,
    slot: Option<usize>,
}

impl Future for EpochChanged<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = this.state.borrow_mut();
        if st.epoch != this.seen_epoch {
            return Poll::Ready(());
        }
        // One waker slot per waiter per epoch, refreshed on re-poll, so repeated polls do
        // not grow the list.
        match this.slot {
            Some(i) if i < st.wakers.len() => st.wakers[i].clone_from(cx.waker()),
            _ => {
                st.wakers.push(cx.waker().clone());
                this.slot = Some(st.wakers.len() - 1);
            }
        }
        Poll::Pending
    }
}

/// Ends a flush even if the leader's future is dropped mid-way: then what reached the
/// disk is unknown, so the log fails rather than wedging every waiter.
struct FlushGuard<'a> {
    state: &'a RefCell<State>,
    covered: Range<u64>,
    /// Set by the leader when the flush ends; `None` on drop means it was cancelled.
    outcome: Option<Result<(), Failure>>,
}

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        let wakers = {
            let mut st = self.state.borrow_mut();
            assert!(st.flushing, "only the leader ends a flush");
            st.flushing = false;
            match self.outcome.take() {
                Some(Ok(())) => {
                    assert_eq!(
                        st.written_below, self.covered.start,
                        "flushes complete in order"
                    );
                    st.written_below = self.covered.end;
                }
                Some(Err(failure)) => {
                    if st.failed.is_none() {
                        st.failed = Some(failure);
                    }
                }
                None => {
                    if st.failed.is_none() {
                        st.failed = Some(Failure {
                            covered: self.covered.clone(),
                            file: String::new(),
                            op: "flush",
                            kind: io::ErrorKind::Interrupted,
                            raw_os_error: None,
                            message: "a flush was cancelled mid-way".into(),
                        });
                    }
                }
            }
            st.wake_all()
        };
        for w in wakers {
            w.wake();
        }
    }
}

enum Step {
    Done(Result<(), CommitLogError>),
    /// Yield to the other runnable tasks once before leading (appends).
    Yield,
    Lead(Vec<SealedBatch>),
    Wait(u64),
}

impl<D: Disk> CommitLog<D> {
    /// Recover the log in `disk` and open it for appends. See [`CommitLog::open_with`].
    pub async fn open(
        disk: D,
        cfg: CommitLogConfig,
        policy: RecoveryPolicy,
    ) -> Result<(Self, Recovery), CommitLogError> {
        let mut records = Vec::new();
        let (log, mut recovery) = Self::open_with(disk, cfg, policy, |_, payload| {
            records.push(payload.to_vec())
        })
        .await?;
        recovery.records = records;
        Ok((log, recovery))
    }

    /// Recover the log, handing each payload to `on_record` in append order instead of
    /// collecting them (an error return means some records may already have been handed
    /// over: discard them). Then start a new segment for appends.
    pub async fn open_with(
        disk: D,
        cfg: CommitLogConfig,
        policy: RecoveryPolicy,
        mut on_record: impl FnMut(SegmentId, &[u8]),
    ) -> Result<(Self, Recovery), CommitLogError> {
        cfg.validate()?;
        let names = disk
            .list()
            .await
            .map_err(|e| io_error(&disk.path_of(""), "list", e))?;
        if names.iter().any(|n| n == SPARE_FILE_NAME) {
            // Left by an earlier process; its generation may no longer be the next one.
            disk.remove(SPARE_FILE_NAME)
                .await
                .map_err(|e| io_error(&disk.path_of(SPARE_FILE_NAME), "remove", e))?;
        }
        let mut segments: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|n| parse_segment_file_name(&n).map(|g| (g, n)))
            .collect();
        segments.sort();
        let mut recovery = Recovery::default();
        let mut live_segments = BTreeSet::new();
        for (i, (generation, name)) in segments.iter().enumerate() {
            let is_newest = i + 1 == segments.len();
            let path = disk.path_of(name);
            let file = disk
                .open(name)
                .await
                .map_err(|e| io_error(&path, "open", e))?;
            let data = read_all(&file)
                .await
                .map_err(|e| io_error(&path, "read", e))?;
            match check_segment_header(&data, *generation) {
                Ok(()) => {}
                Err(HeaderProblem::Incomplete)
                    if is_newest && policy == RecoveryPolicy::TolerateCorruptTail =>
                {
                    // Its creation never completed (header not durable), so nothing in it
                    // was acknowledged: remove it.
                    let _ = file.close().await;
                    disk.remove(name)
                        .await
                        .map_err(|e| io_error(&path, "remove", e))?;
                    disk.sync_dir()
                        .await
                        .map_err(|e| io_error(&disk.path_of(""), "sync_dir", e))?;
                    recovery.torn_tail = Some(TornTail {
                        file: path,
                        offset: 0,
                        bytes_dropped: format::nonzero_data_end(&data) as u64,
                        reason: "segment header never completed".into(),
                    });
                    continue;
                }
                Err(HeaderProblem::Incomplete) => {
                    return Err(CommitLogError::BadSegment {
                        file: path,
                        reason: "incomplete segment header (short or zero header block)".into(),
                    })
                }
                Err(HeaderProblem::Invalid(reason)) => {
                    return Err(CommitLogError::BadSegment { file: path, reason })
                }
            }
            let scan = scan_segment(&data, *generation);
            let unsynced_hole = scan.damage.as_ref().is_some_and(|d| {
                is_newest
                    && policy == RecoveryPolicy::TolerateCorruptTail
                    && HolePolicy::for_sync(cfg.sync) == HolePolicy::UnsyncedHoleInNewestSegment
                    && format::is_hole(&data, d)
            });
            if let Some(d) = scan.damage.as_ref().filter(|_| !unsynced_hole) {
                let why = if !is_newest {
                    Some(format!("{} (a newer segment follows)", d.reason))
                } else if let Some(later) = d.later_valid_batch {
                    Some(format!(
                        "{}; a valid batch follows at offset {later}",
                        d.reason
                    ))
                } else if policy == RecoveryPolicy::Strict {
                    Some(format!("{} (strict recovery policy)", d.reason))
                } else {
                    None
                };
                if let Some(reason) = why {
                    return Err(CommitLogError::Corrupt {
                        file: path,
                        offset: d.offset,
                        reason,
                    });
                }
            }
            let id = SegmentId(*generation);
            for range in &scan.records {
                on_record(id, &data[range.clone()]);
            }
            if let Some(d) = &scan.damage {
                // Make the tail clean on disk, so that once a newer segment exists the next
                // recovery does not see this damage in a non-newest segment.
                repair_tail(&file, &data, *generation, d)
                    .await
                    .map_err(|e| io_error(&path, "repair", e))?;
                let bytes_dropped = scan.data_end.saturating_sub(d.offset);
                if unsynced_hole {
                    recovery.unsynced_hole = Some(UnsyncedHole {
                        file: path.clone(),
                        offset: d.offset,
                        bytes_dropped,
                        batches_dropped: format::count_later_batches(&data, *generation, d),
                    });
                } else {
                    recovery.torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: d.offset,
                        bytes_dropped,
                        reason: d.reason.clone(),
                    });
                }
            } else if is_newest {
                // After a process crash in periodic mode the newest segment can hold
                // writes that completed but were never synced. The fresh segment made
                // below turns it into an older one, which must hold no unsynced writes
                // ([`HolePolicy::UnsyncedHoleInNewestSegment`] trusts only the newest),
                // and its records are about to be served again: make them durable first.
                file.sync()
                    .await
                    .map_err(|e| io_error(&path, "fdatasync recovered segment", e))?;
            }
            file.close()
                .await
                .map_err(|e| io_error(&path, "close", e))?;
            recovery.segments.push(RecoveredSegment {
                id,
                file: path,
                records: scan.records.len() as u64,
                bytes: data.len() as u64,
            });
            live_segments.insert(id);
        }
        let next = match segments.last() {
            Some((g, _)) => g.checked_add(1).ok_or_else(|| CommitLogError::Corrupt {
                file: disk.path_of(&segment_file_name(*g)),
                offset: 0,
                reason: "generation space exhausted".into(),
            })?,
            None => 0,
        };
        let id = SegmentId(next);
        let (file, name) = create_segment(&disk, id, cfg).await?;
        live_segments.insert(id);
        let state = State {
            failed: None,
            layout_segment: id,
            layout_pos: SEGMENT_HEADER_BYTES,
            layout_sequence: 0,
            open: None,
            sealed: VecDeque::new(),
            next_ticket: 0,
            written_below: 0,
            flushing: false,
            syncing: false,
            epoch: 0,
            wakers: Vec::new(),
            live_segments,
            spare_buffers: Vec::new(),
            stats: CommitLogStats {
                segments_created: 1,
                ..CommitLogStats::default()
            },
        };
        let active = Active {
            id,
            name,
            file: Rc::new(file),
            write_pos: SEGMENT_HEADER_BYTES,
            unsynced: false,
        };
        let log = Self {
            inner: Rc::new(Inner {
                disk,
                cfg,
                state: RefCell::new(state),
                active: RefCell::new(active),
                spare: RefCell::new(Spare::None),
            }),
        };
        Ok((log, recovery))
    }

    /// Append one record. Returns once the group commit covering it has been written:
    /// durably in batch mode (write-through segments), to the device but not yet synced
    /// in periodic mode (it survives a process crash; [`CommitLog::sync`] makes it
    /// survive power loss). Returns the segment that holds the record.
    pub async fn append(&self, payload: &[u8]) -> Result<SegmentId, CommitLogError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(CommitLogError::RecordTooLarge {
                len_bytes: payload.len(),
                max_bytes: MAX_RECORD_BYTES,
            });
        }
        let (ticket, segment) = {
            let mut st = self.inner.state.borrow_mut();
            if let Some(f) = &st.failed {
                return Err(f.error_for(None));
            }
            st.buffer(payload, self.inner.cfg.segment_size_bytes)
        };
        self.wait_written(ticket).await?;
        Ok(segment)
    }

    /// Make every append that has returned durable. Periodic mode: fdatasync the active
    /// segment if it was written since the previous sync, the only one that can hold
    /// unsynced writes (the shard driver calls this every `period_ms` and at shutdown). Batch mode: nothing to sync. In both modes it first
    /// writes any batch left buffered by an append cancelled before it led a flush.
    ///
    /// A sync that fails puts the log into the failed state: the appends it covered
    /// were acknowledged and may or may not survive power loss, and a retried fdatasync
    /// would not tell (the "fsyncgate" lesson).
    pub async fn sync(&self) -> Result<(), CommitLogError> {
        self.lead_once(None).await?;
        if self.inner.cfg.sync == SyncMode::Batch {
            return Ok(());
        }
        loop {
            let busy = {
                let mut st = self.inner.state.borrow_mut();
                if let Some(f) = &st.failed {
                    return Err(f.error_for(None));
                }
                if st.syncing {
                    Some(st.epoch)
                } else {
                    st.syncing = true;
                    None
                }
            };
            match busy {
                // That sync may have taken its files before our appends were written:
                // wait for it, then sync again.
                Some(epoch) => self.epoch_changed(epoch).await,
                None => break,
            }
        }
        let mut guard = SyncGuard {
            state: &self.inner.state,
            outcome: None,
        };
        let result = self.sync_active_segment().await;
        guard.outcome = Some(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(Failure::from_error(e, 0..0)),
        });
        drop(guard);
        result
    }

    /// fdatasync the active segment if it has unsynced writes. Only the active segment
    /// can have them: a roll syncs the segment it leaves (see [`CommitLog::switch_to`]).
    /// Run by one [`CommitLog::sync`] at a time.
    async fn sync_active_segment(&self) -> Result<(), CommitLogError> {
        let active = {
            let mut a = self.inner.active.borrow_mut();
            // Cleared before the fdatasync: a write completing during it sets it again,
            // and the next sync covers that write.
            std::mem::replace(&mut a.unsynced, false).then(|| (a.name.clone(), Rc::clone(&a.file)))
        };
        if let Some((name, file)) = active {
            file.sync()
                .await
                .map_err(|e| io_error(&self.inner.disk.path_of(&name), "fdatasync", e))?;
            self.inner.state.borrow_mut().stats.segment_syncs += 1;
        }
        Ok(())
    }

    /// The segment new appends go to.
    pub fn current_segment(&self) -> SegmentId {
        self.inner.state.borrow().layout_segment
    }

    /// Start a new segment now (flushing everything buffered first), unless the current
    /// one is still empty. Returns the segment new appends go to. The engine calls this
    /// when it freezes a memtable, so segment ranges align with memtables.
    pub async fn roll(&self) -> Result<SegmentId, CommitLogError> {
        let target = {
            let mut st = self.inner.state.borrow_mut();
            if let Some(f) = &st.failed {
                return Err(f.error_for(None));
            }
            st.seal_open();
            if st.layout_pos > SEGMENT_HEADER_BYTES {
                st.move_layout_to_next_segment();
            }
            st.layout_segment
        };
        self.lead_once(Some(target)).await?;
        Ok(target)
    }

    /// Delete every segment older than `id` (never the segment being written), durably
    /// (sync_dir). The engine calls this once the memtables covering them are in durable
    /// SSTables listed in the manifest. Returns how many segments were removed.
    pub async fn release_before(&self, id: SegmentId) -> Result<usize, CommitLogError> {
        let active = self.inner.active.borrow().id;
        let victims: Vec<SegmentId> = {
            let mut st = self.inner.state.borrow_mut();
            if let Some(f) = &st.failed {
                return Err(f.error_for(None));
            }
            let limit = id.min(active);
            let victims: Vec<SegmentId> = st.live_segments.range(..limit).copied().collect();
            for v in &victims {
                st.live_segments.remove(v);
            }
            victims
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let disk = &self.inner.disk;
        for v in &victims {
            let name = segment_file_name(v.0);
            match disk.remove(&name).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&disk.path_of(&name), "remove", e)),
            }
        }
        disk.sync_dir()
            .await
            .map_err(|e| io_error(&disk.path_of(""), "sync_dir", e))?;
        Ok(victims.len())
    }

    /// True once a write or fdatasync failed; every later append fails until restart.
    pub fn is_failed(&self) -> bool {
        self.inner.state.borrow().failed.is_some()
    }

    pub fn stats(&self) -> CommitLogStats {
        self.inner.state.borrow().stats
    }

    /// Segments on disk that have not been released, oldest first.
    pub fn live_segments(&self) -> Vec<SegmentId> {
        self.inner
            .state
            .borrow()
            .live_segments
            .iter()
            .copied()
            .collect()
    }

    pub fn config(&self) -> &CommitLogConfig {
        &self.inner.cfg
    }

    /// Wait until batch `ticket` has been written, leading flushes as needed.
    async fn wait_written(&self, ticket: u64) -> Result<(), CommitLogError> {
        let mut yielded = false;
        loop {
            let step = {
                let mut st = self.inner.state.borrow_mut();
                if ticket < st.written_below {
                    Step::Done(Ok(()))
                } else if let Some(f) = &st.failed {
                    Step::Done(Err(f.error_for(Some(ticket))))
                } else if !st.flushing && !yielded {
                    Step::Yield
                } else if !st.flushing {
                    st.flushing = true;
                    Step::Lead(st.take_all())
                } else {
                    Step::Wait(st.epoch)
                }
            };
            match step {
                Step::Done(result) => return result,
                // Before leading a flush, let the tasks already runnable (the rest of
                // a batch of requests read in one go) append: they share this
                // write. Nothing is claimed meanwhile, so dropping this future
                // here leaves no flush half-led. (It buys throughput and CPU per
                // operation on the 3-node batch-mode benchmark: docs/benchmarks.md.)
                Step::Yield => {
                    yielded = true;
                    futures_lite::future::yield_now().await;
                }
                // The outcome is read back from the state on the next turn.
                Step::Lead(batches) => {
                    let _ = self.flush(batches, None).await;
                }
                Step::Wait(epoch) => self.epoch_changed(epoch).await,
            }
        }
    }

    /// Become leader once (after any flush in flight) and flush everything buffered,
    /// then switch to `roll_to` if given.
    async fn lead_once(&self, roll_to: Option<SegmentId>) -> Result<(), CommitLogError> {
        loop {
            let step = {
                let mut st = self.inner.state.borrow_mut();
                if let Some(f) = &st.failed {
                    Step::Done(Err(f.error_for(None)))
                } else if !st.flushing {
                    st.flushing = true;
                    Step::Lead(st.take_all())
                } else {
                    Step::Wait(st.epoch)
                }
            };
            match step {
                Step::Done(result) => return result,
                // Not produced here (sync and roll lead at once); harmless if it were.
                Step::Yield => futures_lite::future::yield_now().await,
                Step::Lead(batches) => return self.flush(batches, roll_to).await,
                Step::Wait(epoch) => self.epoch_changed(epoch).await,
            }
        }
    }

    fn epoch_changed(&self, seen_epoch: u64) -> EpochChanged<'_> {
        EpochChanged {
            state: &self.inner.state,
            seen_epoch,
            slot: None,
        }
    }

    /// The leader's work: write `batches` in order (moving to new segments as laid
    /// out), optionally switch to `roll_to`, then publish the outcome.
    async fn flush(
        &self,
        batches: Vec<SealedBatch>,
        roll_to: Option<SegmentId>,
    ) -> Result<(), CommitLogError> {
        let covered = {
            let st = self.inner.state.borrow();
            let start = batches.first().map_or(st.written_below, |b| b.ticket);
            start..start + batches.len() as u64
        };
        let mut guard = FlushGuard {
            state: &self.inner.state,
            covered: covered.clone(),
            outcome: None,
        };
        let result = self.write_batches(&batches, roll_to).await;
        guard.outcome = Some(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(Failure::from_error(e, covered)),
        });
        {
            let mut st = self.inner.state.borrow_mut();
            for b in batches {
                if st.spare_buffers.len() < SPARE_BUFFERS_MAX
                    && b.bytes.capacity() <= SPARE_BUFFER_BYTES_MAX
                {
                    st.spare_buffers.push(b.bytes);
                }
            }
        }
        drop(guard);
        if result.is_ok() {
            self.maybe_prepare_spare().await;
        }
        result
    }

    /// Prepare the spare segment if the active one is past half full and there is none.
    /// A failure only costs the spare (logged): the roll then creates the segment itself
    /// and reports any error there.
    async fn maybe_prepare_spare(&self) {
        let generation = {
            let a = self.inner.active.borrow();
            if a.write_pos <= self.inner.cfg.segment_size_bytes / 2 {
                return;
            }
            let Some(next) = a.id.0.checked_add(1) else {
                return;
            };
            let mut spare = self.inner.spare.borrow_mut();
            match &*spare {
                Spare::Preparing { .. } => return,
                Spare::Ready { generation, .. } if *generation == next => return,
                Spare::Ready { .. } | Spare::None => {}
            }
            *spare = Spare::Preparing { generation: next };
            next
        };
        let mut guard = SpareGuard {
            spare: &self.inner.spare,
            finished: false,
        };
        let disk = &self.inner.disk;
        let prepared = async {
            match disk.remove(SPARE_FILE_NAME).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let file = disk.create(SPARE_FILE_NAME).await?;
            write_preallocated(&file, generation, self.inner.cfg.segment_size_bytes).await?;
            file.sync().await?;
            file.close().await?;
            // Reopened for appends; the handle survives the rename.
            open_for_appends(disk, SPARE_FILE_NAME, self.inner.cfg.sync).await
        }
        .await;
        match prepared {
            Ok(file) => {
                guard.finished = true;
                let overtaken = self.inner.active.borrow().id.0 >= generation;
                if overtaken {
                    // A roll created this generation while the spare was being written.
                    *self.inner.spare.borrow_mut() = Spare::None;
                    let _ = file.close().await;
                } else {
                    *self.inner.spare.borrow_mut() = Spare::Ready { generation, file };
                }
            }
            Err(e) => {
                tracing::warn!(
                    file = %disk.path_of(SPARE_FILE_NAME),
                    error = %e,
                    "preparing the spare commit log segment failed; the next roll creates it"
                );
            }
        }
    }

    async fn write_batches(
        &self,
        batches: &[SealedBatch],
        roll_to: Option<SegmentId>,
    ) -> Result<(), CommitLogError> {
        let segment_size = self.inner.cfg.segment_size_bytes;
        let started = std::time::Instant::now();
        for batch in batches {
            self.switch_to(batch.segment).await?;
            let (file, name, pos) = {
                let a = self.inner.active.borrow();
                (Rc::clone(&a.file), a.name.clone(), a.write_pos)
            };
            let len = batch.bytes.len() as u64;
            assert_eq!(
                pos, batch.start,
                "batches are written back to back as laid out"
            );
            assert!(
                pos % ALIGN as u64 == 0 && len.is_multiple_of(ALIGN as u64),
                "direct I/O alignment"
            );
            assert!(
                pos + len <= segment_size || pos == SEGMENT_HEADER_BYTES,
                "a batch stays within its segment unless it is alone in it"
            );
            file.write_at(pos, &batch.bytes)
                .await
                .map_err(|e| io_error(&self.inner.disk.path_of(&name), "write", e))?;
            {
                let mut a = self.inner.active.borrow_mut();
                a.write_pos += len;
                a.unsynced |= matches!(self.inner.cfg.sync, SyncMode::Periodic { .. });
            }
            let mut st = self.inner.state.borrow_mut();
            st.stats.batches_written += 1;
            st.stats.bytes_written += len;
        }
        // Batch mode: every write above was durable when it completed (the segments are
        // open write-through). Periodic mode: they await the next sync.
        if !batches.is_empty() {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut st = self.inner.state.borrow_mut();
            st.stats.group_commits += 1;
            st.stats.group_commit_micros = st.stats.group_commit_micros.saturating_add(micros);
        }
        if let Some(target) = roll_to {
            self.switch_to(target).await?;
        }
        Ok(())
    }

    /// Make `target` the active segment. In batch mode the current one needs no sync:
    /// every write to it was durable on completion. In periodic mode it is fdatasync'ed
    /// first, before the next segment's name can become durable, so that at any moment
    /// only the newest segment on disk can hold unsynced writes: recovery's
    /// [`HolePolicy::UnsyncedHoleInNewestSegment`] relies on it.
    async fn switch_to(&self, target: SegmentId) -> Result<(), CommitLogError> {
        let current = self.inner.active.borrow().id;
        if target <= current {
            // Already there (or past it: another leader wrote batches laid out after a
            // concurrent roll).
            return Ok(());
        }
        assert_eq!(
            target,
            current.next(),
            "segment generations advance one at a time"
        );
        self.sync_before_roll().await?;
        let taken = std::mem::replace(&mut *self.inner.spare.borrow_mut(), Spare::None);
        let spare = match taken {
            Spare::Ready { generation, file } if generation == target.0 => Some(file),
            Spare::Preparing { generation } => {
                // Still being written: leave it to its leader, who sees it was overtaken.
                *self.inner.spare.borrow_mut() = Spare::Preparing { generation };
                None
            }
            Spare::Ready { .. } | Spare::None => None,
        };
        let (file, name) = match spare {
            Some(file) => {
                let disk = &self.inner.disk;
                let name = segment_file_name(target.0);
                disk.rename(SPARE_FILE_NAME, &name)
                    .await
                    .map_err(|e| io_error(&disk.path_of(&name), "rename spare", e))?;
                disk.sync_dir()
                    .await
                    .map_err(|e| io_error(&disk.path_of(""), "sync_dir", e))?;
                self.inner.state.borrow_mut().stats.spares_used += 1;
                (file, name)
            }
            None => create_segment(&self.inner.disk, target, self.inner.cfg).await?,
        };
        let old = std::mem::replace(
            &mut *self.inner.active.borrow_mut(),
            Active {
                id: target,
                name,
                file: Rc::new(file),
                write_pos: SEGMENT_HEADER_BYTES,
                unsynced: false,
            },
        );
        {
            let mut st = self.inner.state.borrow_mut();
            st.live_segments.insert(target);
            st.stats.segments_created += 1;
        }
        close_segment(old.file, &old.name).await;
        Ok(())
    }

    /// Periodic mode: fdatasync the active segment before a roll leaves it, if anything
    /// was written to it. Done whether or not a periodic sync ran since the last write: a
    /// sync clears `unsynced` before its fdatasync completes, so the flag cannot say that
    /// the data is stable yet. A failure fails the flush, and so the log.
    async fn sync_before_roll(&self) -> Result<(), CommitLogError> {
        if self.inner.cfg.sync == SyncMode::Batch {
            return Ok(());
        }
        let (name, file) = {
            let a = self.inner.active.borrow();
            if a.write_pos <= SEGMENT_HEADER_BYTES {
                return Ok(());
            }
            (a.name.clone(), Rc::clone(&a.file))
        };
        file.sync()
            .await
            .map_err(|e| io_error(&self.inner.disk.path_of(&name), "fdatasync before roll", e))?;
        self.inner.state.borrow_mut().stats.segment_syncs += 1;
        Ok(())
    }
}

/// Ends a [`CommitLog::sync`] even if its future is dropped mid-way: then which
/// fdatasyncs completed is unknown (and the active segment's unsynced flag it took is
/// cleared), so the log fails rather than let a later sync report success for them.
struct SyncGuard<'a> {
    state: &'a RefCell<State>,
    /// Set when the sync ends; `None` on drop means it was cancelled.
    outcome: Option<Result<(), Failure>>,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        let wakers = {
            let mut st = self.state.borrow_mut();
            assert!(st.syncing, "only the running sync ends one");
            st.syncing = false;
            let failure = match self.outcome.take() {
                Some(Ok(())) => None,
                Some(Err(failure)) => Some(failure),
                None => Some(Failure {
                    covered: 0..0,
                    file: String::new(),
                    op: "sync",
                    kind: io::ErrorKind::Interrupted,
                    raw_os_error: None,
                    message: "a sync was cancelled mid-way".into(),
                }),
            };
            if let (Some(failure), None) = (failure, &st.failed) {
                st.failed = Some(failure);
            }
            st.wake_all()
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// Close a segment handle no longer written to. Its writes are durable (synced at the
/// roll in periodic mode), so a close error cannot lose data.
async fn close_segment<F: DiskFile>(file: Rc<F>, name: &str) {
    if let Ok(file) = Rc::try_unwrap(file) {
        if let Err(e) = file.close().await {
            tracing::warn!(file = %name, error = %e, "closing a commit log segment failed");
        }
    }
}

/// Open a preallocated segment for appends: write-through (`O_DSYNC`) in batch mode, so
/// a completed write is durable; plain in periodic mode, so a write completes once it
/// is on the device and [`CommitLog::sync`] makes it durable.
async fn open_for_appends<D: Disk>(disk: &D, name: &str, sync: SyncMode) -> io::Result<D::File> {
    match sync {
        SyncMode::Batch => disk.open_write_through(name).await,
        SyncMode::Periodic { .. } => disk.open(name).await,
    }
}

/// Create a segment durably: file, header block, zeros up to the segment size
/// (preallocation), fdatasync, directory sync, then open it for appends as `cfg.sync`
/// says. Only then may records in it be acknowledged.
///
/// The zeros are written, not merely reserved: on ext4 neither `ftruncate` nor
/// `fallocate` is enough, because the first write into a hole or an unwritten extent
/// still allocates or converts the extent, and the appending fdatasync then commits a
/// journal transaction (measured in `benches/compare/README.md`: more device writes and
/// bytes per append). Writing zeros once per segment moves that cost to segment
/// creation, one fdatasync for the whole segment.
async fn create_segment<D: Disk>(
    disk: &D,
    id: SegmentId,
    cfg: CommitLogConfig,
) -> Result<(D::File, String), CommitLogError> {
    let name = segment_file_name(id.0);
    let path = disk.path_of(&name);
    let file = disk
        .create(&name)
        .await
        .map_err(|e| io_error(&path, "create", e))?;
    write_preallocated(&file, id.0, cfg.segment_size_bytes)
        .await
        .map_err(|e| io_error(&path, "write header and preallocate", e))?;
    file.sync()
        .await
        .map_err(|e| io_error(&path, "fdatasync header", e))?;
    disk.sync_dir()
        .await
        .map_err(|e| io_error(&disk.path_of(""), "sync_dir", e))?;
    file.close()
        .await
        .map_err(|e| io_error(&path, "close after preallocating", e))?;
    let file = open_for_appends(disk, &name, cfg.sync)
        .await
        .map_err(|e| io_error(&path, "open for appends", e))?;
    Ok((file, name))
}

/// Write the header of `generation` and zeros up to `size_bytes` (not synced).
///
/// The first write carries the header, so a crash mid-way leaves either a zero header
/// block (creation never completed: dropped at recovery) or a valid header over some
/// zeros, which reads as an empty segment.
async fn write_preallocated<F: DiskFile>(
    file: &F,
    generation: u64,
    size_bytes: u64,
) -> io::Result<()> {
    let size_bytes = size_bytes.max(SEGMENT_HEADER_BYTES);
    assert!(
        size_bytes.is_multiple_of(ALIGN as u64),
        "validated segment size"
    );
    let chunk_len = PREALLOC_CHUNK_BYTES.min(usize::try_from(size_bytes).unwrap_or(usize::MAX));
    let mut chunk = vec![0u8; chunk_len];
    chunk[..ALIGN].copy_from_slice(&encode_segment_header(generation));
    file.write_at(0, &chunk).await?;
    chunk[..ALIGN].fill(0);
    let mut pos = chunk_len as u64;
    while pos < size_bytes {
        let len = usize::try_from(size_bytes - pos).map_or(chunk_len, |rest| rest.min(chunk_len));
        file.write_at(pos, &chunk[..len]).await?;
        pos += len as u64;
    }
    Ok(())
}

async fn read_all<F: DiskFile>(file: &F) -> io::Result<Vec<u8>> {
    let size = file.size().await?;
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut offset = 0u64;
    loop {
        let chunk = file.read_at(offset, READ_CHUNK_BYTES).await?;
        data.extend_from_slice(&chunk);
        offset += chunk.len() as u64;
        if chunk.len() < READ_CHUNK_BYTES {
            return Ok(data);
        }
    }
}

/// Rewrite the damaged tail so the segment ends cleanly after its last whole record.
async fn repair_tail<F: DiskFile>(
    file: &F,
    data: &[u8],
    generation: u64,
    damage: &format::Damage,
) -> io::Result<()> {
    match repaired_batch(data, generation, damage) {
        Some(bytes) => {
            file.write_at(damage.batch_start, &bytes).await?;
            file.truncate(damage.batch_start + bytes.len() as u64)
                .await?;
        }
        None => file.truncate(damage.batch_start).await?,
    }
    file.sync().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem_disk::{Fault, MemDisk, OpKind};
    use futures_lite::future::block_on;

    fn cfg(segment_size_bytes: u64, sync: SyncMode) -> CommitLogConfig {
        CommitLogConfig {
            segment_size_bytes,
            sync,
        }
    }

    fn open(disk: &MemDisk, c: CommitLogConfig) -> (CommitLog<MemDisk>, Recovery) {
        block_on(CommitLog::open(disk.clone(), c, RecoveryPolicy::default())).unwrap()
    }

    #[test]
    fn append_then_reopen_replays_in_order() {
        let disk = MemDisk::new();
        let (log, rec) = open(&disk, CommitLogConfig::default());
        assert!(rec.records.is_empty() && rec.torn_tail.is_none());
        let file_syncs = disk.counters().syncs;
        block_on(async {
            for i in 0..10u32 {
                assert_eq!(log.append(&i.to_le_bytes()).await.unwrap(), SegmentId(0));
            }
        });
        assert_eq!(log.stats().group_commits, 10);
        assert_eq!(
            disk.counters().syncs,
            file_syncs,
            "the segment is open write-through: appends need no fdatasync"
        );
        drop(log);
        disk.power_loss();
        let (log, rec) = open(&disk, CommitLogConfig::default());
        let expected: Vec<Vec<u8>> = (0..10u32).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(rec.records, expected);
        assert_eq!(rec.segments.len(), 1);
        assert_eq!(log.current_segment(), SegmentId(1));
    }

    #[test]
    fn segments_fill_and_roll_and_oversized_records_get_their_own() {
        let disk = MemDisk::new();
        let c = cfg(4 * ALIGN as u64, SyncMode::Batch);
        let (log, _) = open(&disk, c);
        let big = vec![7u8; 5 * ALIGN];
        block_on(async {
            assert_eq!(log.append(&[1; 3000]).await.unwrap(), SegmentId(0));
            assert_eq!(log.append(&[2; 3000]).await.unwrap(), SegmentId(0));
            assert_eq!(log.append(&[3; 3000]).await.unwrap(), SegmentId(0));
            assert_eq!(log.append(&[4; 3000]).await.unwrap(), SegmentId(1));
            assert_eq!(log.append(&big).await.unwrap(), SegmentId(2));
            assert_eq!(log.append(&[5]).await.unwrap(), SegmentId(3));
            assert_eq!(log.roll().await.unwrap(), SegmentId(4));
            assert_eq!(
                log.roll().await.unwrap(),
                SegmentId(4),
                "empty segment: no roll"
            );
            assert_eq!(log.append(&[6]).await.unwrap(), SegmentId(4));
        });
        assert_eq!(log.live_segments().len(), 5);
        let removed = block_on(log.release_before(SegmentId(2))).unwrap();
        assert_eq!(removed, 2);
        drop(log);
        disk.power_loss();
        let (_, rec) = open(&disk, c);
        let expected: Vec<Vec<u8>> = vec![big, vec![5], vec![6]];
        assert_eq!(rec.records, expected);
        let ids: Vec<u64> = rec.segments.iter().map(|s| s.id.0).collect();
        assert_eq!(ids, vec![2, 3, 4]);
    }

    fn periodic() -> CommitLogConfig {
        cfg(1 << 20, SyncMode::Periodic { period_ms: 10 })
    }

    fn payloads(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    /// Periodic mode: "a" and "b" appended and synced, then "c" appended (written, not
    /// synced), as between two periodic syncs. Returns the disk with the log dropped.
    fn periodic_log_between_syncs() -> MemDisk {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, periodic());
        let before = disk.counters();
        block_on(async {
            log.append(b"a").await.unwrap();
            log.append(b"b").await.unwrap();
        });
        let after = disk.counters();
        assert_eq!(
            (log.stats().batches_written, after.writes - before.writes),
            (2, 2),
            "each append was written before it returned"
        );
        assert_eq!(after.syncs, before.syncs, "but not synced");
        let seg0 = segment_file_name(0);
        let durable = disk.durable_file_bytes(&seg0).unwrap();
        assert!(
            durable[ALIGN..].iter().all(|&b| b == 0),
            "the segment is not open write-through: nothing is durable before a sync"
        );
        assert_eq!(disk.last_unsynced_write().unwrap().file, seg0);
        block_on(log.sync()).unwrap();
        assert_eq!(disk.counters().syncs, after.syncs + 1, "one fdatasync");
        assert_eq!(log.stats().segment_syncs, 1);
        assert_eq!(disk.last_unsynced_write(), None);
        block_on(log.append(b"c")).unwrap();
        assert!(
            disk.last_unsynced_write().is_some(),
            "c awaits the next sync"
        );
        disk
    }

    #[test]
    fn periodic_append_is_written_before_it_returns_but_synced_only_by_sync() {
        // Process crash (kill -9): every acknowledged append is read back.
        let disk = periodic_log_between_syncs();
        disk.process_crash();
        let (_, rec) = open(&disk, periodic());
        assert_eq!(rec.records, payloads(&["a", "b", "c"]));
        assert_eq!(rec.torn_tail, None);

        // Power loss: what was written since the last sync is lost, nothing before it.
        let disk = periodic_log_between_syncs();
        disk.power_loss();
        let (_, rec) = open(&disk, periodic());
        assert_eq!(rec.records, payloads(&["a", "b"]));
        assert_eq!(rec.torn_tail, None);
    }

    #[test]
    fn periodic_group_commit_shares_one_write_and_no_sync() {
        let disk = MemDisk::new();
        disk.set_yield_on_io(true);
        let (log, _) = open(&disk, periodic());
        let before = disk.counters();
        let records: Vec<Vec<u8>> = (0..32u32).map(|i| i.to_le_bytes().to_vec()).collect();
        block_on(async {
            let mut appends: Vec<_> = records.iter().map(|r| Box::pin(log.append(r))).collect();
            // Poll all until done, in order, as one executor would.
            std::future::poll_fn(|cx| {
                let mut pending = false;
                for a in &mut appends {
                    match a.as_mut().poll(cx) {
                        Poll::Ready(r) => assert_eq!(r.unwrap(), SegmentId(0)),
                        Poll::Pending => pending = true,
                    }
                }
                if pending {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        });
        let after = disk.counters();
        assert_eq!(
            after.writes - before.writes,
            1,
            "one group commit, one write"
        );
        assert_eq!(after.syncs, before.syncs, "no fdatasync before the acks");
        drop(log);
        disk.process_crash();
        let (_, rec) = open(&disk, periodic());
        assert_eq!(rec.records, records);
    }

    #[test]
    fn periodic_roll_syncs_the_segment_it_leaves_so_only_the_active_one_is_unsynced() {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, periodic());
        let syncs = disk.counters().syncs;
        block_on(async {
            log.append(b"in 0").await.unwrap();
            assert_eq!(log.roll().await.unwrap(), SegmentId(1));
        });
        assert_eq!(log.stats().segment_syncs, 1, "the roll synced segment 0");
        assert!(
            disk.unsynced_writes()
                .iter()
                .all(|w| w.file != segment_file_name(0)),
            "nothing of segment 0 awaits a sync"
        );
        block_on(async {
            log.append(b"in 1").await.unwrap();
            // Synced by the periodic sync and then again by the roll: the roll does not
            // trust a sync that may still have been in flight.
            log.sync().await.unwrap();
            assert_eq!(log.roll().await.unwrap(), SegmentId(2));
            assert_eq!(log.roll().await.unwrap(), SegmentId(2), "empty: no roll");
            log.append(b"in 2").await.unwrap();
        });
        assert_eq!(log.stats().segment_syncs, 3);
        let before_sync = disk.counters().syncs;
        block_on(log.sync()).unwrap();
        assert_eq!(
            disk.counters().syncs - before_sync,
            1,
            "a periodic sync has only the active segment to sync"
        );
        block_on(log.sync()).unwrap();
        assert_eq!(
            disk.counters().syncs - before_sync,
            1,
            "nothing new to sync"
        );
        assert_eq!(log.stats().segment_syncs, 4);
        assert!(disk.counters().syncs > syncs);

        block_on(log.append(b"unsynced in 2")).unwrap();
        drop(log);
        disk.power_loss();
        let (_, rec) = open(&disk, periodic());
        assert_eq!(rec.records, payloads(&["in 0", "in 1", "in 2"]));
    }

    /// Periodic mode: "a" and "b" synced, then "c" and "d" written as two batches, and a
    /// power loss after which the device had persisted "d" but not "c". Returns the disk
    /// and the offset of "c"'s batch, now zeros.
    fn periodic_log_with_unsynced_hole() -> (MemDisk, u64) {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, periodic());
        block_on(async {
            log.append(b"a").await.unwrap();
            log.append(b"b").await.unwrap();
            log.sync().await.unwrap();
            log.append(b"c").await.unwrap();
            log.append(b"d").await.unwrap();
        });
        let unsynced = disk.unsynced_writes();
        assert_eq!(unsynced.len(), 2, "c and d, one write each");
        assert!(unsynced[0].offset < unsynced[1].offset);
        let hole = unsynced[0].offset;
        drop(log);
        disk.power_loss_keeping(&unsynced[1..]);
        let seg0 = disk.file_bytes(&segment_file_name(0)).unwrap();
        let at = usize::try_from(hole).unwrap();
        assert!(seg0[at..at + ALIGN].iter().all(|&b| b == 0), "c is a hole");
        assert!(seg0[at + ALIGN..].iter().any(|&b| b != 0), "d survived");
        (disk, hole)
    }

    fn open_err(disk: &MemDisk, c: CommitLogConfig) -> CommitLogError {
        match block_on(CommitLog::open(disk.clone(), c, RecoveryPolicy::default())) {
            Ok((_, rec)) => panic!("expected an error, recovered {rec:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn periodic_recovery_ends_the_log_at_an_unsynced_hole_and_repairs_it() {
        let (disk, hole) = periodic_log_with_unsynced_hole();
        let (log, rec) = open(&disk, periodic());
        assert_eq!(
            rec.records,
            payloads(&["a", "b"]),
            "everything synced is kept"
        );
        assert_eq!(rec.torn_tail, None);
        let lost = rec.unsynced_hole.expect("the hole is reported");
        assert!(lost.file.ends_with(&segment_file_name(0)));
        assert_eq!(lost.offset, hole);
        assert_eq!(
            (lost.batches_dropped, lost.bytes_dropped),
            (1, 2 * ALIGN as u64)
        );
        block_on(log.append(b"e")).unwrap();
        block_on(log.sync()).unwrap();
        drop(log);
        disk.power_loss();
        // The repair was durable: segment 0 is no longer the newest and is clean.
        let (_, rec) = open(&disk, periodic());
        assert_eq!(rec.records, payloads(&["a", "b", "e"]));
        assert_eq!((rec.torn_tail, rec.unsynced_hole), (None, None));
    }

    #[test]
    fn reopening_after_a_process_crash_syncs_what_the_crashed_process_had_not() {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, periodic());
        block_on(async {
            log.append(b"a").await.unwrap();
            log.append(b"b").await.unwrap();
        });
        drop(log);
        disk.process_crash();
        assert!(!disk.unsynced_writes().is_empty());
        let (log, rec) = open(&disk, periodic());
        assert_eq!(rec.records, payloads(&["a", "b"]));
        assert!(
            disk.unsynced_writes().is_empty(),
            "segment 0 is no longer the newest: recovery synced it"
        );
        drop(log);
        disk.power_loss();
        let (_, rec) = open(&disk, periodic());
        assert_eq!(
            rec.records,
            payloads(&["a", "b"]),
            "records served after the reopen survive"
        );
    }

    #[test]
    fn batch_mode_and_strict_recovery_refuse_the_same_hole() {
        for (c, policy) in [
            (CommitLogConfig::default(), RecoveryPolicy::default()),
            (periodic(), RecoveryPolicy::Strict),
        ] {
            let (disk, hole) = periodic_log_with_unsynced_hole();
            match block_on(CommitLog::open(disk.clone(), c, policy)) {
                Err(CommitLogError::Corrupt { file, offset, .. }) => {
                    assert!(file.ends_with(&segment_file_name(0)));
                    assert_eq!(offset, hole);
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn non_zero_damage_before_a_valid_batch_is_refused_in_both_modes() {
        for c in [periodic(), CommitLogConfig::default()] {
            let (disk, hole) = periodic_log_with_unsynced_hole();
            let name = segment_file_name(0);
            let mut seg0 = disk.file_bytes(&name).unwrap();
            let at = usize::try_from(hole).unwrap();
            seg0[at..at + ALIGN].fill(0x5a);
            disk.put_file(&name, &seg0);
            match open_err(&disk, c) {
                CommitLogError::Corrupt { file, offset, .. } => {
                    assert!(file.ends_with(&name));
                    assert_eq!(offset, hole);
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_hole_in_an_older_segment_is_refused() {
        let (disk, hole) = periodic_log_with_unsynced_hole();
        // A newer segment exists, so the hole is not in the newest one.
        let mut seg1 = encode_segment_header(1);
        seg1.resize(4 * ALIGN, 0);
        disk.put_file(&segment_file_name(1), &seg1);
        match open_err(&disk, periodic()) {
            CommitLogError::Corrupt { file, offset, .. } => {
                assert!(file.ends_with(&segment_file_name(0)));
                assert_eq!(offset, hole);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_sync_before_a_roll_fails_the_log() {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, periodic());
        block_on(log.append(b"acknowledged, never synced")).unwrap();
        disk.fail_nth_of(OpKind::Sync, 1, Fault::Eio);
        match block_on(log.roll()) {
            Err(CommitLogError::Io { op, .. }) => assert_eq!(op, "fdatasync before roll"),
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(log.is_failed());
        assert_eq!(
            block_on(disk.list()).unwrap(),
            vec![segment_file_name(0)],
            "no newer segment was created past the failed sync"
        );
    }

    #[test]
    fn a_failed_periodic_sync_fails_the_log() {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, periodic());
        block_on(log.append(b"acknowledged, never synced")).unwrap();
        disk.fail_nth_of(OpKind::Sync, 1, Fault::Eio);
        match block_on(log.sync()) {
            Err(CommitLogError::Io { source, op, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
                assert_eq!(op, "fdatasync");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(log.is_failed());
        assert!(matches!(
            block_on(log.append(b"later")),
            Err(CommitLogError::Failed { .. })
        ));
        assert!(matches!(
            block_on(log.sync()),
            Err(CommitLogError::Failed { .. })
        ));
    }

    #[test]
    fn failed_write_fails_covered_and_later_appends() {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, CommitLogConfig::default());
        block_on(log.append(b"ok")).unwrap();
        disk.fail_nth_of(OpKind::Write, 1, Fault::Eio);
        match block_on(log.append(b"covered")) {
            Err(CommitLogError::Io { source, op, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
                assert_eq!(op, "write");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(log.is_failed());
        assert!(matches!(
            block_on(log.append(b"later")),
            Err(CommitLogError::Failed { .. })
        ));
        assert!(matches!(
            block_on(log.roll()),
            Err(CommitLogError::Failed { .. })
        ));
    }

    #[test]
    fn invalid_config_and_oversized_record_are_refused() {
        let disk = MemDisk::new();
        let bad = block_on(CommitLog::open(
            disk.clone(),
            cfg(1000, SyncMode::Batch),
            RecoveryPolicy::default(),
        ));
        assert!(matches!(bad, Err(CommitLogError::InvalidConfig(_))));
        let (log, _) = open(&disk, CommitLogConfig::default());
        let huge = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            block_on(log.append(&huge)),
            Err(CommitLogError::RecordTooLarge { .. })
        ));
        assert!(!log.is_failed());
    }

    #[test]
    fn cancelled_leader_fails_the_log_instead_of_wedging_it() {
        let disk = MemDisk::new();
        disk.set_yield_on_io(true);
        let (log, _) = open(&disk, CommitLogConfig::default());
        block_on(async {
            let mut leader = Box::pin(log.append(b"dropped mid-flush"));
            // First poll: it yields before leading (nothing claimed yet); second: it
            // leads and stops inside the flush's first I/O.
            assert!(futures_lite::future::poll_once(&mut leader).await.is_none());
            assert!(!log.is_failed(), "a wait that only yielded claimed nothing");
            assert!(futures_lite::future::poll_once(&mut leader).await.is_none());
            drop(leader);
            assert!(log.is_failed());
            assert!(matches!(
                log.append(b"next").await,
                Err(CommitLogError::Failed { .. })
            ));
        });
    }

    #[test]
    fn a_spare_is_prepared_past_half_full_and_renamed_in_at_the_roll() {
        let disk = MemDisk::new();
        let c = cfg(8 * ALIGN as u64, SyncMode::Batch);
        let (log, _) = open(&disk, c);
        let names = |d: &MemDisk| block_on(d.list()).unwrap();
        let mut payloads = Vec::new();
        block_on(async {
            // Header and blocks 1..=3 hold batches: exactly half full, no spare yet.
            for i in 0..3u8 {
                payloads.push(vec![i; 100]);
                log.append(&payloads[i as usize]).await.unwrap();
            }
            assert!(!names(&disk).contains(&SPARE_FILE_NAME.to_string()));
            payloads.push(vec![3; 100]);
            log.append(&payloads[3]).await.unwrap();
        });
        assert!(names(&disk).contains(&SPARE_FILE_NAME.to_string()));
        let spare = disk.file_bytes(SPARE_FILE_NAME).unwrap();
        assert_eq!(spare.len(), 8 * ALIGN, "preallocated");
        check_segment_header(&spare, 1).unwrap();
        block_on(async {
            for i in 4..12u8 {
                payloads.push(vec![i; 100]);
                log.append(&payloads[i as usize]).await.unwrap();
            }
        });
        assert_eq!(log.current_segment(), SegmentId(1));
        let stats = log.stats();
        assert_eq!((stats.segments_created, stats.spares_used), (2, 1));
        let seg1 = disk.durable_file_bytes(&segment_file_name(1)).unwrap();
        assert_eq!(seg1.len(), 8 * ALIGN);
        // Segment 1 is past half full again, so the next spare (generation 2) is ready.
        let spare = disk.durable_file_bytes(SPARE_FILE_NAME);
        assert!(
            spare.is_none(),
            "a spare's name is durable only once renamed"
        );
        check_segment_header(&disk.file_bytes(SPARE_FILE_NAME).unwrap(), 2).unwrap();
        drop(log);
        disk.power_loss();
        let (log, rec) = open(&disk, c);
        assert_eq!(rec.records, payloads);
        assert_eq!(rec.torn_tail, None);
        assert_eq!(log.current_segment(), SegmentId(2));
        // A leftover spare (here: made durable by hand) is removed by recovery.
        drop(log);
        disk.put_file(SPARE_FILE_NAME, &[0x77; ALIGN]);
        let (_, rec) = open(&disk, c);
        assert_eq!(rec.records, payloads);
        assert!(!names(&disk).contains(&SPARE_FILE_NAME.to_string()));
    }

    #[test]
    fn a_failed_spare_costs_only_the_spare() {
        let disk = MemDisk::new();
        let c = cfg(4 * ALIGN as u64, SyncMode::Batch);
        let (log, _) = open(&disk, c);
        block_on(async {
            log.append(b"a").await.unwrap();
            // The next create is the spare's (segment 0 is more than half full after the
            // second append).
            disk.fail_nth_of(OpKind::Create, 1, Fault::Enospc);
            log.append(b"b").await.unwrap();
            log.append(b"c").await.unwrap();
            log.append(b"d").await.unwrap();
        });
        assert!(!log.is_failed());
        assert_eq!(log.current_segment(), SegmentId(1));
        drop(log);
        disk.power_loss();
        let (_, rec) = open(&disk, c);
        let expected: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d"]
            .iter()
            .map(|r| r.to_vec())
            .collect();
        assert_eq!(rec.records, expected);
    }

    #[test]
    fn incomplete_newest_segment_is_dropped() {
        let disk = MemDisk::new();
        let (log, _) = open(&disk, CommitLogConfig::default());
        block_on(log.append(b"x")).unwrap();
        drop(log);
        disk.put_file(&segment_file_name(1), &[]);
        let (_, rec) = open(&disk, CommitLogConfig::default());
        assert_eq!(rec.records, vec![b"x".to_vec()]);
        let torn = rec.torn_tail.unwrap();
        assert!(torn.file.ends_with(&segment_file_name(1)));
        assert_eq!((torn.offset, torn.bytes_dropped), (0, 0));
    }
}

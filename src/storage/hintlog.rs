//! The durable per-shard hint log (docs/design.md §6.7; bytes §4.6): writes kept for a
//! replica that did not acknowledge them, until that replica has them.
//!
//! It owns one directory (its [`Disk`]) holding a [`CommitLog`] whose payloads are
//! [`HintRecord`]s, and the index of which hints are still pending. Framing, CRC32C,
//! segment generations, group commit, preallocated segments and the named
//! [`RecoveryPolicy`] all come from the commit log, so the hint log recovers by the same
//! rules; on top of them it adds one rule: a payload that passes its CRC but does not
//! decode as a [`HintRecord`] is corruption, refused with file and offset unless it is at
//! the very tail and the policy is [`RecoveryPolicy::TolerateCorruptTail`].
//!
//! A hint is *appended* (durable, written through to the device, when `append`
//! returns) and later marked *delivered* by a [`HintRecord::Delivered`] marker (durable
//! when `mark_delivered` returns). Recovery replays both in log order, so an acknowledged marker always wins
//! over its hint and a delivered hint is never resurrected. A segment is released (its
//! file deleted) once it and every older segment hold no undelivered hint; segments are
//! released one at a time, oldest first, each removal made durable before the next, so a
//! crash can never leave an older segment (with its hints) behind a removed newer one
//! (holding their markers).
//!
//! It never interprets the key or the state bytes (encoded `KeyState`, opaque here),
//! never decides what to replay or when (that is `cluster::hints::HintBook`, a pure state
//! machine), and never retries a failed write: a failure fails the commit log, and with
//! it every later call, until the process restarts.
//!
//! **Ids.** Hint ids are assigned here, strictly increasing. Every marker also carries
//! the id high-water mark (`next_id`), and the newest record on disk is never released,
//! so after a restart ids continue above every id ever acknowledged, even when every
//! hint was delivered and its segment deleted.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;

use crate::storage::commitlog::{
    segment_file_name, CommitLog, CommitLogConfig, CommitLogError, RecoveredSegment,
    RecoveryPolicy, SegmentId, SyncMode, TornTail, MAX_RECORD_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::storage::disk::{align_up, Disk, DiskFile, ALIGN};

/// First two bytes of every hint record payload.
pub const HINT_RECORD_MAGIC: [u8; 2] = *b"HN";
/// Current (and only) hint record version.
pub const HINT_RECORD_VERSION: u8 = 1;
const KIND_HINT: u8 = 1;
const KIND_DELIVERED: u8 = 2;
/// Bytes of a hint record before its key.
pub const HINT_HEADER_BYTES: usize = 32;
/// Bytes of a delivered marker before its ids.
pub const DELIVERED_HEADER_BYTES: usize = 16;
/// Most ids one marker may carry; [`HintLog::mark_delivered`] splits longer lists.
pub const MAX_DELIVERED_IDS: usize = 1 << 16;
/// Largest key plus state one hint may carry: whatever fits in one commit log record.
pub const MAX_HINT_PAYLOAD_BYTES: usize = MAX_RECORD_BYTES - HINT_HEADER_BYTES - 4;

const _: () = assert!(DELIVERED_HEADER_BYTES + 8 * MAX_DELIVERED_IDS <= MAX_RECORD_BYTES);
const _: () = assert!(HINT_HEADER_BYTES + 4 < MAX_RECORD_BYTES);

/// One hint log record: the payload of one commit log record.
///
/// All integers little-endian. Bytes 0..4 are common to every kind:
///
/// ```text
///   0..2    magic      b"HN"
///   2       version    u8 = 1
///   3       kind       u8: 1 = Hint, 2 = Delivered
///
/// kind 1, Hint (36 + key + state bytes):
///   4..12   id         u64, assigned by the hint log, strictly increasing
///   12..20  target     u64, NodeId of the replica the write is for
///   20..28  created_ms u64, coordinator time when the hint was stored
///   28..32  key_len    u32
///   32..    key        key_len bytes
///   then    state_len  u32
///   then    state      state_len bytes (an encoded KeyState; opaque here)
///   nothing after it.  key_len + state_len ≤ MAX_HINT_PAYLOAD_BYTES.
///
/// kind 2, Delivered (16 + 8 × count bytes):
///   4..12   next_id    u64: every id below it had been handed out when this was
///                      written (the id high-water mark, so ids survive releases)
///   12..16  count      u32 ≤ MAX_DELIVERED_IDS (0 is allowed: a bare high-water mark)
///   16..    ids        count × u64, each < next_id: hints acknowledged by their target
///   nothing after it.
/// ```
///
/// What makes a record broken (a [`HintDecodeError`]): another magic, an unknown version
/// or kind, fewer bytes than the fields announce, more bytes than they announce, lengths
/// over the limits above, or a delivered id at or above `next_id`. The commit log's CRC
/// has already vouched for the bytes, so any of these means a bug or a foreign writer,
/// never a torn write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HintRecord {
    Hint {
        id: u64,
        target: u64,
        created_ms: u64,
        key: Vec<u8>,
        state: Vec<u8>,
    },
    Delivered {
        next_id: u64,
        ids: Vec<u64>,
    },
}

/// Why a payload is not a [`HintRecord`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HintDecodeError {
    #[error("bad magic {found:02x?} (expected {HINT_RECORD_MAGIC:02x?})")]
    BadMagic { found: Vec<u8> },
    #[error("unknown hint record version {0} (this build reads {HINT_RECORD_VERSION})")]
    UnknownVersion(u8),
    #[error("unknown hint record kind {0}")]
    UnknownKind(u8),
    #[error("truncated: {field} needs {needed_bytes} bytes at offset {offset}, {have_bytes} left")]
    Truncated {
        field: &'static str,
        offset: usize,
        needed_bytes: usize,
        have_bytes: usize,
    },
    #[error("{field} is {len} (limit {max})")]
    OverLimit {
        field: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
    #[error("delivered id {id} is not below the marker's next_id {next_id}")]
    IdAboveHighWater { id: u64, next_id: u64 },
}

/// Reads little-endian fields off a payload, naming the field when it is cut short.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], HintDecodeError> {
        let have_bytes = self.data.len() - self.pos;
        if len > have_bytes {
            return Err(HintDecodeError::Truncated {
                field,
                offset: self.pos,
                needed_bytes: len,
                have_bytes,
            });
        }
        let bytes = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, HintDecodeError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, HintDecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(field, 4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, HintDecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(field, 8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn finish(self) -> Result<(), HintDecodeError> {
        match self.data.len() - self.pos {
            0 => Ok(()),
            n => Err(HintDecodeError::TrailingBytes(n)),
        }
    }
}

fn encode_hint(id: u64, target: u64, created_ms: u64, key: &[u8], state: &[u8], out: &mut Vec<u8>) {
    assert!(
        key.len() + state.len() <= MAX_HINT_PAYLOAD_BYTES,
        "hint payload over the limit; callers check first"
    );
    out.reserve(HINT_HEADER_BYTES + 4 + key.len() + state.len());
    out.extend_from_slice(&HINT_RECORD_MAGIC);
    out.push(HINT_RECORD_VERSION);
    out.push(KIND_HINT);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&target.to_le_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(state);
}

impl HintRecord {
    /// Append the encoding to `out`. Panics if the record breaks the limits documented
    /// on the type (callers check sizes before building a record).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            HintRecord::Hint {
                id,
                target,
                created_ms,
                key,
                state,
            } => encode_hint(*id, *target, *created_ms, key, state, out),
            HintRecord::Delivered { next_id, ids } => {
                assert!(ids.len() <= MAX_DELIVERED_IDS, "marker over the id limit");
                assert!(
                    ids.iter().all(|id| id < next_id),
                    "delivered ids are below the high-water mark"
                );
                out.reserve(DELIVERED_HEADER_BYTES + 8 * ids.len());
                out.extend_from_slice(&HINT_RECORD_MAGIC);
                out.push(HINT_RECORD_VERSION);
                out.push(KIND_DELIVERED);
                out.extend_from_slice(&next_id.to_le_bytes());
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
    }

    /// Decode one payload; never panics, whatever the bytes.
    pub fn decode(data: &[u8]) -> Result<HintRecord, HintDecodeError> {
        let mut r = Reader { data, pos: 0 };
        let magic = r.take("magic", 2).map_err(|_| HintDecodeError::BadMagic {
            found: data.to_vec(),
        })?;
        if magic != HINT_RECORD_MAGIC {
            return Err(HintDecodeError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = r.u8("version")?;
        if version != HINT_RECORD_VERSION {
            return Err(HintDecodeError::UnknownVersion(version));
        }
        let record = match r.u8("kind")? {
            KIND_HINT => {
                let id = r.u64("id")?;
                let target = r.u64("target")?;
                let created_ms = r.u64("created_ms")?;
                let key_len = r.u32("key_len")? as usize;
                check_limit("key_len", key_len, MAX_HINT_PAYLOAD_BYTES)?;
                let key = r.take("key", key_len)?.to_vec();
                let state_len = r.u32("state_len")? as usize;
                check_limit(
                    "key_len + state_len",
                    key_len + state_len,
                    MAX_HINT_PAYLOAD_BYTES,
                )?;
                let state = r.take("state", state_len)?.to_vec();
                HintRecord::Hint {
                    id,
                    target,
                    created_ms,
                    key,
                    state,
                }
            }
            KIND_DELIVERED => {
                let next_id = r.u64("next_id")?;
                let count = r.u32("count")? as usize;
                check_limit("count", count, MAX_DELIVERED_IDS)?;
                let mut ids = Vec::with_capacity(count.min((data.len() - r.pos) / 8));
                for _ in 0..count {
                    let id = r.u64("ids")?;
                    if id >= next_id {
                        return Err(HintDecodeError::IdAboveHighWater { id, next_id });
                    }
                    ids.push(id);
                }
                HintRecord::Delivered { next_id, ids }
            }
            kind => return Err(HintDecodeError::UnknownKind(kind)),
        };
        r.finish()?;
        Ok(record)
    }
}

fn check_limit(field: &'static str, len: usize, max: usize) -> Result<(), HintDecodeError> {
    if len > max {
        return Err(HintDecodeError::OverLimit {
            field,
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// A hint as recovered from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHint {
    pub id: u64,
    pub target: u64,
    pub created_ms: u64,
    pub key: Vec<u8>,
    pub state: Vec<u8>,
}

impl StoredHint {
    /// The size the hint log (and `HintBook`) accounts for it: key plus state bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.key.len() + self.state.len()) as u64
    }
}

/// Undecodable records dropped from the tail under
/// [`RecoveryPolicy::TolerateCorruptTail`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndecodableTail {
    pub file: String,
    /// Offset of the first dropped record's payload in `file`, if it could be located.
    pub offset: Option<u64>,
    pub records_dropped: u64,
    pub reason: String,
}

/// What [`HintLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Hints with no delivered marker, in id order.
    pub pending: Vec<StoredHint>,
    /// Replayed commit log segments, oldest first (as the commit log reports them).
    pub segments: Vec<RecoveredSegment>,
    /// The torn tail the commit log discarded and repaired, if any.
    pub torn_tail: Option<TornTail>,
    /// CRC-valid but undecodable records dropped from the tail (tolerant policy only).
    pub undecodable_tail: Option<UndecodableTail>,
    /// Ids in markers whose hint was not seen: its segment was released. Ignored.
    pub markers_for_unknown_ids: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintLogStats {
    /// Commit log segments on disk (the active one included).
    pub live_segments: usize,
    pub pending_count: u64,
    /// Key plus state bytes of the pending hints.
    pub pending_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HintLogError {
    #[error(transparent)]
    Log(#[from] CommitLogError),
    #[error("hint log corrupt: {file} {}: {reason}", describe_position(*.offset, *.record_index))]
    Undecodable {
        file: String,
        /// Offset of the record's payload in `file`, if it could be located.
        offset: Option<u64>,
        /// Position of the record among the records of its segment (0-based).
        record_index: u64,
        reason: String,
    },
    #[error("hint of {len_bytes} key+state bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    #[error("hint id space exhausted")]
    IdsExhausted,
    #[error("hint log I/O error ({op}) on {file}: {source}")]
    Io {
        file: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn describe_position(offset: Option<u64>, record_index: u64) -> String {
    match offset {
        Some(offset) => format!("at offset {offset} (record {record_index} of the segment)"),
        None => format!("record {record_index} of the segment (offset unknown)"),
    }
}

/// Where a pending hint lives, for per-segment accounting.
#[derive(Clone, Copy, Debug)]
struct PendingEntry {
    segment: SegmentId,
    size_bytes: u64,
}

struct LogState {
    next_id: u64,
    pending: BTreeMap<u64, PendingEntry>,
    /// Undelivered hints per segment; a segment with none has no entry.
    undelivered_per_segment: BTreeMap<SegmentId, u64>,
    pending_bytes: u64,
    /// Appends not yet returned, by the segment their record goes to at the earliest
    /// (the current segment when they started). Their hints are not counted above yet,
    /// but the segment may already be flushed (together with a marker for other hints),
    /// so no segment from the lowest of these on may be released.
    appends_in_progress: BTreeMap<SegmentId, u64>,
}

impl LogState {
    fn add(&mut self, id: u64, entry: PendingEntry) {
        let previous = self.pending.insert(id, entry);
        assert!(previous.is_none(), "hint id {id} stored twice");
        *self
            .undelivered_per_segment
            .entry(entry.segment)
            .or_insert(0) += 1;
        self.pending_bytes += entry.size_bytes;
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.pending.remove(&id) else {
            return false;
        };
        let count = self
            .undelivered_per_segment
            .get_mut(&entry.segment)
            .filter(|c| **c > 0);
        match count {
            Some(c) => {
                *c -= 1;
                if *c == 0 {
                    self.undelivered_per_segment.remove(&entry.segment);
                }
            }
            None => panic!("pending hint {id} has no segment count"),
        }
        assert!(
            self.pending_bytes >= entry.size_bytes,
            "pending bytes underflow"
        );
        self.pending_bytes -= entry.size_bytes;
        true
    }

    /// The oldest segment that must be kept for its hints, finished or not.
    fn oldest_needed_segment(&self) -> Option<SegmentId> {
        let undelivered = self.undelivered_per_segment.keys().next().copied();
        let in_progress = self.appends_in_progress.keys().next().copied();
        match (undelivered, in_progress) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn invariants(&self) {
        let counted: u64 = self.undelivered_per_segment.values().sum();
        assert_eq!(counted, self.pending.len() as u64, "segment counts");
        assert!(self.undelivered_per_segment.values().all(|c| *c > 0));
        let bytes: u64 = self.pending.values().map(|e| e.size_bytes).sum();
        assert_eq!(bytes, self.pending_bytes, "pending bytes");
        if let Some((max, _)) = self.pending.last_key_value() {
            assert!(*max < self.next_id, "ids are below next_id");
        }
    }
}

/// Registers an unfinished append in `appends_in_progress` until dropped.
struct InProgress<'a> {
    state: &'a RefCell<LogState>,
    floor: SegmentId,
}

impl<'a> InProgress<'a> {
    fn start(state: &'a RefCell<LogState>, floor: SegmentId) -> Self {
        *state
            .borrow_mut()
            .appends_in_progress
            .entry(floor)
            .or_insert(0) += 1;
        Self { state, floor }
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut st = self.state.borrow_mut();
        match st.appends_in_progress.get_mut(&self.floor) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                st.appends_in_progress.remove(&self.floor);
            }
            None => panic!("append in progress at {:?} not registered", self.floor),
        }
    }
}

/// Recovery's view of the replayed records.
#[derive(Default)]
struct Replay {
    hints: BTreeMap<u64, (SegmentId, StoredHint)>,
    next_id: u64,
    markers_for_unknown_ids: u64,
    /// Position of the current record in its segment.
    segment: Option<SegmentId>,
    index_in_segment: u64,
    /// The first undecodable record: segment, index, reason; and records after it.
    first_bad: Option<(SegmentId, u64, HintDecodeError)>,
    records_after_bad: u64,
}

impl Replay {
    fn on_record(&mut self, segment: SegmentId, payload: &[u8]) {
        if self.segment != Some(segment) {
            self.segment = Some(segment);
            self.index_in_segment = 0;
        }
        let index = self.index_in_segment;
        self.index_in_segment += 1;
        if self.first_bad.is_some() {
            // Whatever follows the first bad record decides whether it is a tail; the
            // replay itself stops there (it is refused or dropped).
            self.records_after_bad += 1;
            return;
        }
        match HintRecord::decode(payload) {
            Ok(HintRecord::Hint {
                id,
                target,
                created_ms,
                key,
                state,
            }) => {
                self.next_id = self.next_id.max(id.saturating_add(1));
                let hint = StoredHint {
                    id,
                    target,
                    created_ms,
                    key,
                    state,
                };
                // A duplicate id would be a writer bug; the later record wins.
                self.hints.insert(id, (segment, hint));
            }
            Ok(HintRecord::Delivered { next_id, ids }) => {
                self.next_id = self.next_id.max(next_id);
                for id in ids {
                    if self.hints.remove(&id).is_none() {
                        self.markers_for_unknown_ids += 1;
                    }
                }
            }
            Err(e) => self.first_bad = Some((segment, index, e)),
        }
    }
}

/// The per-shard hint log; see the module documentation.
pub struct HintLog<D: Disk> {
    log: CommitLog<D>,
    state: RefCell<LogState>,
    /// Set when a release failed: no more releases until restart.
    release_failed: Cell<bool>,
}

impl<D: Disk> std::fmt::Debug for HintLog<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HintLog")
            .field("log", &self.log)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<D: Disk + Clone> HintLog<D> {
    /// Recover the hint log in `disk`, which must be a directory of its own (the commit
    /// log's segment names would collide with a data commit log), and open it for
    /// appends. `segment_size_bytes` as in [`CommitLogConfig`]; appends are always in
    /// [`SyncMode::Batch`].
    pub async fn open(
        disk: D,
        policy: RecoveryPolicy,
        segment_size_bytes: u64,
    ) -> Result<(HintLog<D>, Recovered), HintLogError> {
        let cfg = CommitLogConfig {
            segment_size_bytes,
            sync: SyncMode::Batch,
        };
        let mut replay = Replay::default();
        let (log, recovery) = CommitLog::open_with(disk.clone(), cfg, policy, |segment, p| {
            replay.on_record(segment, p)
        })
        .await?;
        let mut undecodable_tail = None;
        if let Some((segment, index, err)) = replay.first_bad.take() {
            let name = segment_file_name(segment.0);
            let file = disk.path_of(&name);
            let offset = locate_record(&disk, &name, index).await;
            let is_tail = replay.records_after_bad == 0;
            if policy == RecoveryPolicy::Strict || !is_tail {
                let why = if is_tail {
                    "(strict recovery policy)".to_string()
                } else {
                    format!("({} records follow it)", replay.records_after_bad)
                };
                return Err(HintLogError::Undecodable {
                    file,
                    offset,
                    record_index: index,
                    reason: format!("undecodable hint record: {err} {why}"),
                });
            }
            undecodable_tail = Some(UndecodableTail {
                file,
                offset,
                records_dropped: 1,
                reason: err.to_string(),
            });
        }
        let mut state = LogState {
            next_id: replay.next_id,
            pending: BTreeMap::new(),
            undelivered_per_segment: BTreeMap::new(),
            pending_bytes: 0,
            appends_in_progress: BTreeMap::new(),
        };
        let mut pending = Vec::with_capacity(replay.hints.len());
        for (id, (segment, hint)) in replay.hints {
            state.add(
                id,
                PendingEntry {
                    segment,
                    size_bytes: hint.size_bytes(),
                },
            );
            pending.push(hint);
        }
        state.invariants();
        let hint_log = HintLog {
            log,
            state: RefCell::new(state),
            release_failed: Cell::new(false),
        };
        if hint_log.releasable().is_some() {
            // Segments left over by a crash between a marker and its releases. Write a
            // bare high-water mark first, so that the newest record on disk still
            // carries the id high-water mark after they are gone.
            hint_log.append_marker(&[]).await?;
            if let Err(e) = hint_log.release_delivered_segments().await {
                tracing::warn!(error = %e, "releasing delivered hint segments failed; they are kept until restart");
            }
        }
        let recovered = Recovered {
            pending,
            segments: recovery.segments,
            torn_tail: recovery.torn_tail,
            undecodable_tail,
            markers_for_unknown_ids: replay.markers_for_unknown_ids,
        };
        Ok((hint_log, recovered))
    }
}

impl<D: Disk> HintLog<D> {
    /// Store a hint durably (a write-through write, group commit) and return its id. Ids strictly
    /// increase, also across restarts.
    pub async fn append(
        &self,
        target: u64,
        created_ms: u64,
        key: &[u8],
        state: &[u8],
    ) -> Result<u64, HintLogError> {
        let len_bytes = key.len() + state.len();
        if len_bytes > MAX_HINT_PAYLOAD_BYTES {
            return Err(HintLogError::TooLarge {
                len_bytes,
                max_bytes: MAX_HINT_PAYLOAD_BYTES,
            });
        }
        let id = {
            let mut st = self.state.borrow_mut();
            let id = st.next_id;
            st.next_id = id.checked_add(1).ok_or(HintLogError::IdsExhausted)?;
            id
        };
        let mut payload = Vec::new();
        encode_hint(id, target, created_ms, key, state, &mut payload);
        // Held until the hint is counted in its segment (or the append failed or was
        // dropped): the record may be durable before this task runs again.
        let _in_progress = InProgress::start(&self.state, self.log.current_segment());
        // Buffered in call order before the first await inside, so log order is id order
        // for concurrent appends too.
        let segment = self.log.append(&payload).await?;
        let mut st = self.state.borrow_mut();
        st.add(
            id,
            PendingEntry {
                segment,
                size_bytes: len_bytes as u64,
            },
        );
        Ok(id)
    }

    /// Record durably that these hints reached their target, then release every leading
    /// segment left with no undelivered hint. Ok means the markers are durable; a failed
    /// release is logged and only keeps files until restart. Ids that are not pending
    /// (already delivered, never appended, or still being appended) are ignored; if none
    /// is pending nothing is written.
    pub async fn mark_delivered(&self, ids: &[u64]) -> Result<(), HintLogError> {
        let mut known: Vec<u64> = {
            let st = self.state.borrow();
            ids.iter()
                .copied()
                .filter(|id| st.pending.contains_key(id))
                .collect()
        };
        known.sort_unstable();
        known.dedup();
        if known.is_empty() {
            return Ok(());
        }
        for chunk in known.chunks(MAX_DELIVERED_IDS) {
            self.append_marker(chunk).await?;
            let mut st = self.state.borrow_mut();
            for id in chunk {
                // A concurrent call may have delivered it meanwhile; its marker is as good.
                st.remove(*id);
            }
        }
        // The markers are durable: that is what the caller waits for. A failed release
        // only keeps files around (see `release_delivered_segments`).
        if let Err(e) = self.release_delivered_segments().await {
            tracing::warn!(error = %e, "releasing delivered hint segments failed; they are kept until restart");
        }
        Ok(())
    }

    pub fn stats(&self) -> HintLogStats {
        let st = self.state.borrow();
        HintLogStats {
            live_segments: self.log.live_segments().len(),
            pending_count: st.pending.len() as u64,
            pending_bytes: st.pending_bytes,
        }
    }

    /// True once a commit log write failed: every later call fails until restart.
    pub fn is_failed(&self) -> bool {
        self.log.is_failed()
    }

    /// The id the next append will get.
    pub fn next_id(&self) -> u64 {
        self.state.borrow().next_id
    }

    /// Check the internal accounting (cheap enough for tests after every step).
    pub fn invariants(&self) {
        let st = self.state.borrow();
        st.invariants();
        let live = self.log.live_segments();
        for segment in st.undelivered_per_segment.keys() {
            assert!(
                live.binary_search(segment).is_ok(),
                "segment {segment:?} holds undelivered hints but was released"
            );
        }
    }

    async fn append_marker(&self, ids: &[u64]) -> Result<(), HintLogError> {
        let mut payload = Vec::new();
        let next_id = self.state.borrow().next_id;
        HintRecord::Delivered {
            next_id,
            ids: ids.to_vec(),
        }
        .encode(&mut payload);
        self.log.append(&payload).await?;
        Ok(())
    }

    /// The oldest live segment, if it may be released: not one new appends go to, and
    /// holding no undelivered hint (every older one is already gone).
    fn releasable(&self) -> Option<SegmentId> {
        let oldest = *self.log.live_segments().first()?;
        let st = self.state.borrow();
        let keep_from = match st.oldest_needed_segment() {
            Some(s) => s.min(self.log.current_segment()),
            None => self.log.current_segment(),
        };
        (oldest < keep_from).then_some(oldest)
    }

    /// Release leading segments one by one, each removal durable before the next, so
    /// that a crash leaves a prefix removed and never a gap (see the module docs).
    ///
    /// After a failed release nothing more is released until restart: the commit log has
    /// already forgotten the segment whose removal failed, so releasing the next one
    /// could leave a gap (the failed one still on disk, the markers for its hints gone).
    /// Recovery at the next open releases leftovers in order.
    async fn release_delivered_segments(&self) -> Result<(), HintLogError> {
        if self.release_failed.get() {
            return Ok(());
        }
        while let Some(oldest) = self.releasable() {
            match self.log.release_before(SegmentId(oldest.0 + 1)).await {
                Ok(0) => break, // not yet flushed past it (the active segment lags): later
                Ok(_) => {}
                Err(e) => {
                    self.release_failed.set(true);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// Offset of the `index`-th record's payload in segment file `name`, walking the layout
/// documented on `commitlog::SegmentLayout` (24-byte batch headers on block boundaries,
/// 8-byte record headers). Only used to name the place of an undecodable record, whose
/// segment the commit log has already validated; `None` if anything does not add up.
async fn locate_record<D: Disk>(disk: &D, name: &str, index: u64) -> Option<u64> {
    const BATCH_HEADER_BYTES: usize = 24;
    const RECORD_HEADER_BYTES: usize = 8;
    const BATCH_MAGIC: [u8; 4] = *b"BTCH";
    let file = disk.open(name).await.ok()?;
    let mut data = Vec::new();
    loop {
        let chunk = file.read_at(data.len() as u64, 1 << 20).await.ok()?;
        let done = chunk.len() < 1 << 20;
        data.extend_from_slice(&chunk);
        if done {
            break;
        }
    }
    let _ = file.close().await;
    let u32_at = |at: usize| -> Option<usize> {
        let bytes = data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let mut batch = usize::try_from(SEGMENT_HEADER_BYTES).ok()?;
    let mut seen = 0u64;
    while data.get(batch..batch + 4)? == BATCH_MAGIC {
        let count = u32_at(batch + 4)?;
        let records_len = u32_at(batch + 16)?;
        let mut record = batch + BATCH_HEADER_BYTES;
        for _ in 0..count {
            if seen == index {
                return Some((record + RECORD_HEADER_BYTES) as u64);
            }
            seen += 1;
            record = record.checked_add(RECORD_HEADER_BYTES + u32_at(record)?)?;
        }
        batch = align_up(batch.checked_add(BATCH_HEADER_BYTES + records_len)?);
        debug_assert!(batch.is_multiple_of(ALIGN));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem_disk::MemDisk;
    use futures_lite::future::block_on;

    fn open(disk: &MemDisk) -> (HintLog<MemDisk>, Recovered) {
        block_on(HintLog::open(
            disk.clone(),
            RecoveryPolicy::TolerateCorruptTail,
            8 * ALIGN as u64,
        ))
        .unwrap()
    }

    #[test]
    fn record_layout_is_as_documented() {
        let mut out = Vec::new();
        HintRecord::Hint {
            id: 0x0102,
            target: 7,
            created_ms: 9,
            key: b"k".to_vec(),
            state: b"st".to_vec(),
        }
        .encode(&mut out);
        let mut want = b"HN\x01\x01".to_vec();
        want.extend_from_slice(&0x0102u64.to_le_bytes());
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"k");
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(b"st");
        assert_eq!(out, want);
        assert_eq!(out.len(), HINT_HEADER_BYTES + 4 + 3);

        let mut out = Vec::new();
        HintRecord::Delivered {
            next_id: 10,
            ids: vec![3, 4],
        }
        .encode(&mut out);
        let mut want = b"HN\x01\x02".to_vec();
        want.extend_from_slice(&10u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&4u64.to_le_bytes());
        assert_eq!(out, want);
        assert_eq!(out.len(), DELIVERED_HEADER_BYTES + 16);
    }

    #[test]
    fn decode_errors_are_specific() {
        let mut hint = Vec::new();
        encode_hint(1, 2, 3, b"key", b"state", &mut hint);
        assert!(matches!(
            HintRecord::decode(b"X"),
            Err(HintDecodeError::BadMagic { .. })
        ));
        let mut v = hint.clone();
        v[2] = 2;
        assert_eq!(
            HintRecord::decode(&v),
            Err(HintDecodeError::UnknownVersion(2))
        );
        let mut v = hint.clone();
        v[3] = 9;
        assert_eq!(HintRecord::decode(&v), Err(HintDecodeError::UnknownKind(9)));
        assert!(matches!(
            HintRecord::decode(&hint[..hint.len() - 1]),
            Err(HintDecodeError::Truncated { field: "state", .. })
        ));
        let mut v = hint.clone();
        v.push(0);
        assert_eq!(
            HintRecord::decode(&v),
            Err(HintDecodeError::TrailingBytes(1))
        );
        let mut v = hint.clone();
        v[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            HintRecord::decode(&v),
            Err(HintDecodeError::OverLimit {
                field: "key_len",
                ..
            })
        ));
        let mut marker = b"HN\x01\x02".to_vec();
        marker.extend_from_slice(&5u64.to_le_bytes());
        marker.extend_from_slice(&1u32.to_le_bytes());
        marker.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(
            HintRecord::decode(&marker),
            Err(HintDecodeError::IdAboveHighWater { id: 5, next_id: 5 })
        );
        marker[12..16].copy_from_slice(&(MAX_DELIVERED_IDS as u32 + 1).to_le_bytes());
        assert!(matches!(
            HintRecord::decode(&marker),
            Err(HintDecodeError::OverLimit { field: "count", .. })
        ));
    }

    #[test]
    fn append_deliver_reopen() {
        let disk = MemDisk::new();
        let (log, rec) = open(&disk);
        assert!(rec.pending.is_empty());
        let ids: Vec<u64> = block_on(async {
            let mut ids = Vec::new();
            for i in 0..4u8 {
                ids.push(log.append(u64::from(i), 100, &[i], &[i; 3]).await.unwrap());
            }
            ids
        });
        assert_eq!(ids, vec![0, 1, 2, 3]);
        block_on(log.mark_delivered(&[1, 3, 99])).unwrap();
        log.invariants();
        assert_eq!(
            log.stats(),
            HintLogStats {
                live_segments: 1,
                pending_count: 2,
                pending_bytes: 8
            }
        );
        drop(log);
        disk.power_loss();
        let (log, rec) = open(&disk);
        let got: Vec<u64> = rec.pending.iter().map(|h| h.id).collect();
        assert_eq!(got, vec![0, 2]);
        assert_eq!(rec.pending[1].state, vec![2; 3]);
        assert_eq!(log.next_id(), 4);
        log.invariants();
    }
}

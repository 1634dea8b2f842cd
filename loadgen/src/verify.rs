//! Verify mode: checks that every read returns the latest acknowledged write or a newer
//! one. Pure state machine: the engine feeds it events in the order it observed them
//! (one `Mutex` serialises all executors), and it never touches the clock or I/O.
//!
//! Time is a logical counter of observed events. The engine records a write's start
//! *before* sending it and its acknowledgement *after* the reply, and a read's start
//! before sending and its completion after the reply, so each observed interval
//! contains the real one. A check on observed intervals therefore never reports a
//! violation that did not happen (it may miss some).
//!
//! Rule. Let `floor(r)` be the largest start time of any write of the key acknowledged
//! before read `r` started. A value `v` returned by `r` is acceptable iff `v` was written
//! (start observed) and `v` was not acknowledged before `floor(r)`: a write `v` that
//! completed before another write `w` began, where `w` was acknowledged before the read
//! began, is stale. "Not found" is acceptable iff no write of the key was acknowledged
//! before the read began. Concurrent writes are all acceptable, since a last-write-wins
//! store may order them either way. With siblings (causal mode) the read is acceptable
//! if any sibling is.

use std::collections::{BTreeMap, HashMap};

/// Logical time: position in the stream of observed events.
type Tick = u64;

#[derive(Clone, Copy, Debug)]
struct WriteRecord {
    start: Tick,
    acked: Option<Tick>,
}

#[derive(Default, Debug)]
struct KeyState {
    /// Writes still needed to judge reads: in flight, or acknowledged at or after the
    /// lowest floor any outstanding read of this key may still use.
    writes: HashMap<u64, WriteRecord>,
    /// Largest start tick among acknowledged writes; `None` until the first ack.
    floor: Option<Tick>,
    /// The write id whose ack set `floor` (reported as "expected").
    floor_write: Option<u64>,
    /// Floors snapshotted by reads in flight (multiset), to know what can be pruned.
    reads_in_flight: BTreeMap<Option<Tick>, u32>,
}

impl KeyState {
    /// Forget writes that no present or future read may accept: acknowledged before
    /// the smallest floor still in use.
    fn prune(&mut self) {
        let Some(current) = self.floor else { return };
        let bound = match self.reads_in_flight.keys().next() {
            Some(None) => return,
            Some(Some(oldest)) => (*oldest).min(current),
            None => current,
        };
        self.writes
            .retain(|_, w| !matches!(w.acked, Some(a) if a < bound));
    }
}

/// Handle for a read in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadTicket {
    key: Vec<u8>,
    floor: Option<Tick>,
    expected: Option<u64>,
}

/// What was wrong with a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// Write id of the latest acknowledged write when the read began (None: none yet).
    pub expected: Option<u64>,
    /// What came back: write ids (None for a value without a recognisable id), empty
    /// for "not found".
    pub got: Vec<Option<u64>>,
    pub reason: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |id: &Option<u64>| match id {
            Some(id) => format!("write#{id}"),
            None => "unrecognised value".to_string(),
        };
        let expected = match &self.expected {
            Some(id) => format!("write#{id} or newer"),
            None => "nothing acknowledged yet".to_string(),
        };
        let got = if self.got.is_empty() {
            "not found".to_string()
        } else {
            self.got.iter().map(show).collect::<Vec<_>>().join(", ")
        };
        write!(
            f,
            "verify violation: key {} expected {expected}, got {got} ({})",
            String::from_utf8_lossy(&self.key),
            self.reason
        )
    }
}

/// The verifier. Write ids must be unique across the run (the engine embeds them in
/// values, see `workload::ValueSource`).
#[derive(Default, Debug)]
pub struct Verifier {
    now: Tick,
    keys: HashMap<Vec<u8>, KeyState>,
    reads_checked: u64,
    violations: u64,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn tick(&mut self) -> Tick {
        self.now += 1;
        self.now
    }

    /// Call before sending a put.
    pub fn write_started(&mut self, key: &[u8], write_id: u64) {
        let now = self.tick();
        let state = self.keys.entry(key.to_vec()).or_default();
        let previous = state.writes.insert(
            write_id,
            WriteRecord {
                start: now,
                acked: None,
            },
        );
        assert!(previous.is_none(), "write id {write_id} reused");
    }

    /// Call after the put was acknowledged.
    pub fn write_acked(&mut self, key: &[u8], write_id: u64) {
        let now = self.tick();
        let Some(state) = self.keys.get_mut(key) else {
            panic!("ack for a write never started");
        };
        let Some(record) = state.writes.get_mut(&write_id) else {
            panic!("ack for write id {write_id} never started");
        };
        record.acked = Some(now);
        let start = record.start;
        if state.floor.is_none_or(|f| start > f) {
            state.floor = Some(start);
            state.floor_write = Some(write_id);
        }
        state.prune();
    }

    /// Call after a put failed: its outcome is unknown (it may or may not have been
    /// applied), so it stays acceptable as "in flight" forever. Nothing to do.
    pub fn write_failed(&mut self, _key: &[u8], _write_id: u64) {}

    /// Call before sending a get.
    pub fn read_started(&mut self, key: &[u8]) -> ReadTicket {
        self.tick();
        let state = self.keys.entry(key.to_vec()).or_default();
        *state.reads_in_flight.entry(state.floor).or_insert(0) += 1;
        ReadTicket {
            key: key.to_vec(),
            floor: state.floor,
            expected: state.floor_write,
        }
    }

    fn release(&mut self, ticket: &ReadTicket) {
        if let Some(state) = self.keys.get_mut(&ticket.key) {
            if let Some(n) = state.reads_in_flight.get_mut(&ticket.floor) {
                *n -= 1;
                if *n == 0 {
                    state.reads_in_flight.remove(&ticket.floor);
                }
            }
            state.prune();
        }
    }

    /// Call when a get failed: nothing to judge.
    pub fn read_failed(&mut self, ticket: ReadTicket) {
        self.release(&ticket);
    }

    /// Call after a get returned. `got` holds the write ids of the returned values
    /// (empty = not found; `None` entries = values without a recognisable id).
    pub fn read_completed(
        &mut self,
        ticket: ReadTicket,
        got: &[Option<u64>],
    ) -> Result<(), Violation> {
        self.tick();
        self.reads_checked += 1;
        let verdict = self.judge(&ticket, got);
        self.release(&ticket);
        if verdict.is_err() {
            self.violations += 1;
        }
        verdict
    }

    fn judge(&self, ticket: &ReadTicket, got: &[Option<u64>]) -> Result<(), Violation> {
        let violation = |reason| Violation {
            key: ticket.key.clone(),
            expected: ticket.expected,
            got: got.to_vec(),
            reason,
        };
        let Some(floor) = ticket.floor else {
            // Nothing acknowledged before the read: not found is fine, and so is any
            // value whose write was started.
            if got.is_empty() {
                return Ok(());
            }
            return if got.iter().any(|id| self.started(ticket, *id)) {
                Ok(())
            } else {
                Err(violation("value was never written"))
            };
        };
        if got.is_empty() {
            return Err(violation("acknowledged write lost: not found"));
        }
        let state = self.keys.get(&ticket.key);
        let acceptable = |id: &Option<u64>| {
            let Some(id) = id else { return false };
            // Pruning keeps every write acknowledged at or after the oldest floor still
            // held by a read in flight, which is at most this ticket's floor; so a
            // write missing from the table is stale or was never written.
            match state.and_then(|s| s.writes.get(id)) {
                Some(record) => !matches!(record.acked, Some(a) if a < floor),
                None => false,
            }
        };
        if got.iter().any(acceptable) {
            Ok(())
        } else if got.iter().any(|id| self.started(ticket, *id)) {
            Err(violation(
                "stale read: an older value than the latest acknowledged write",
            ))
        } else {
            Err(violation("stale or never-written value"))
        }
    }

    fn started(&self, ticket: &ReadTicket, id: Option<u64>) -> bool {
        let Some(id) = id else { return false };
        self.keys
            .get(&ticket.key)
            .is_some_and(|s| s.writes.contains_key(&id))
    }

    /// Keys with at least one acknowledged write, sorted: what a final pass after the
    /// run must find (see `engine::run_with_final_check`). A final read is judged like
    /// any other: `read_started` when nothing is in flight any more sets its floor to
    /// the latest acknowledged write, so an older value or "not found" is a violation.
    pub fn acknowledged_keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .keys
            .iter()
            .filter(|(_, state)| state.floor.is_some())
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort_unstable();
        keys
    }

    pub fn reads_checked(&self) -> u64 {
        self.reads_checked
    }

    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// Write records held (for tests of pruning).
    pub fn tracked_writes(&self) -> usize {
        self.keys.values().map(|k| k.writes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"k";

    #[test]
    fn latest_acknowledged_value_is_accepted() {
        let mut v = Verifier::new();
        v.write_started(K, 1);
        v.write_acked(K, 1);
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[Some(1)]).is_ok());
    }

    #[test]
    fn older_value_after_newer_ack_is_a_violation() {
        let mut v = Verifier::new();
        v.write_started(K, 1);
        v.write_acked(K, 1);
        v.write_started(K, 2);
        v.write_acked(K, 2);
        let r = v.read_started(K);
        let err = v.read_completed(r, &[Some(1)]).unwrap_err();
        assert_eq!(err.expected, Some(2));
        assert_eq!(err.got, vec![Some(1)]);
        assert_eq!(v.violations(), 1);
        assert!(err.to_string().contains("key k"));
    }

    #[test]
    fn in_flight_and_later_writes_are_accepted() {
        let mut v = Verifier::new();
        v.write_started(K, 1);
        v.write_acked(K, 1);
        v.write_started(K, 2); // in flight when the read starts
        let r = v.read_started(K);
        v.write_started(K, 3); // started during the read
        assert!(v.read_completed(r.clone(), &[Some(2)]).is_ok());
        let r2 = v.read_started(K);
        assert!(v.read_completed(r2, &[Some(3)]).is_ok());
        let r3 = v.read_started(K);
        assert!(v.read_completed(r3, &[Some(1)]).is_ok(), "2 and 3 unacked");
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let mut v = Verifier::new();
        v.write_started(K, 1);
        v.write_started(K, 2);
        v.write_acked(K, 2);
        v.write_acked(K, 1);
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[Some(2)]).is_ok());
    }

    #[test]
    fn lost_write_and_unknown_value_are_violations() {
        let mut v = Verifier::new();
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[]).is_ok(), "nothing written yet");
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[Some(99)]).is_err());
        v.write_started(K, 1);
        v.write_acked(K, 1);
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[]).is_err());
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[None]).is_err());
    }

    #[test]
    fn a_final_pass_finds_every_acknowledged_key_and_judges_it_against_the_last_ack() {
        let mut v = Verifier::new();
        v.write_started(b"a", 1);
        v.write_acked(b"a", 1);
        v.write_started(b"a", 2);
        v.write_acked(b"a", 2);
        v.write_started(b"b", 3); // failed: outcome unknown, never acknowledged
        v.write_failed(b"b", 3);
        v.write_started(b"c", 4);
        v.write_acked(b"c", 4);
        v.write_started(b"c", 5); // failed after an acknowledged one
        v.write_failed(b"c", 5);
        assert_eq!(v.acknowledged_keys(), vec![b"a".to_vec(), b"c".to_vec()]);
        let r = v.read_started(b"a");
        assert!(v.read_completed(r, &[Some(2)]).is_ok());
        let r = v.read_started(b"a");
        let stale = v.read_completed(r, &[Some(1)]).unwrap_err();
        assert_eq!(stale.expected, Some(2));
        let r = v.read_started(b"a");
        assert!(v.read_completed(r, &[]).unwrap_err().got.is_empty());
        // The failed write may have landed: either value of c is acceptable.
        for got in [Some(4), Some(5)] {
            let r = v.read_started(b"c");
            assert!(v.read_completed(r, &[got]).is_ok());
        }
        assert_eq!(v.violations(), 2);
    }

    #[test]
    fn pruning_keeps_what_an_outstanding_read_may_return() {
        let mut v = Verifier::new();
        v.write_started(K, 1);
        v.write_acked(K, 1);
        let r = v.read_started(K); // floor = write 1
        for id in 2..10 {
            v.write_started(K, id);
            v.write_acked(K, id);
        }
        // The read began when 1 was the latest: 1 must still be accepted.
        assert!(v.read_completed(r, &[Some(1)]).is_ok());
        // Now nothing holds the old floor: only write 9 is kept.
        assert_eq!(v.tracked_writes(), 1);
        let r = v.read_started(K);
        assert!(v.read_completed(r, &[Some(1)]).is_err());
    }
}

//! Simulated clients and the history they record. Each client runs one operation at a
//! time (closed loop) against a coordinator node of its choosing, with values unique
//! across the run so every stored value names the write that produced it.
//!
//! The history is the checkers' only source of truth about what was promised: an
//! operation is `Ok` only if its coordinator answered success to the client. A client
//! that gives up (coordinator crashed) records `Unknown`: the write may or may not exist.

use ringkv::conflict::{CausalContext, Dot, LwwCell};
use std::collections::BTreeMap;

use crate::store::Key;

pub type OpId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    /// `None` is a delete.
    Put(Option<Vec<u8>>),
}

/// The version the coordinator gave a write, recorded when it stamped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteVersion {
    Lww(LwwCell),
    Causal { dot: Dot, context: CausalContext },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Ok,
    /// The coordinator answered with an error (unavailable, timeout, failed, refused).
    Failed,
    /// The client stopped waiting; the operation's effect is unknown.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct OpRecord {
    pub id: OpId,
    pub client: usize,
    pub key: Key,
    pub kind: OpKind,
    pub coordinator: u64,
    /// Global step at which the operation started / the client got its answer.
    pub start_step: u64,
    pub end_step: Option<u64>,
    pub outcome: Outcome,
    /// Writes only, once stamped by the coordinator.
    pub version: Option<WriteVersion>,
    /// Writes only: a sloppy-quorum stand-in's hint ack counted toward W.
    pub via_stand_in: bool,
}

#[derive(Default)]
pub struct History {
    pub ops: Vec<OpRecord>,
    /// Write ops by key, in start order (indexes into `ops`).
    pub writes_by_key: BTreeMap<Key, Vec<usize>>,
}

impl History {
    pub fn start(
        &mut self,
        client: usize,
        key: Key,
        kind: OpKind,
        coordinator: u64,
        step: u64,
    ) -> OpId {
        let id = self.ops.len() as OpId;
        if matches!(kind, OpKind::Put(_)) {
            self.writes_by_key
                .entry(key.clone())
                .or_default()
                .push(id as usize);
        }
        self.ops.push(OpRecord {
            id,
            client,
            key,
            kind,
            coordinator,
            start_step: step,
            end_step: None,
            outcome: Outcome::Pending,
            version: None,
            via_stand_in: false,
        });
        id
    }

    pub fn op(&self, id: OpId) -> &OpRecord {
        &self.ops[id as usize]
    }

    pub fn stamp(&mut self, id: OpId, version: WriteVersion) {
        let op = &mut self.ops[id as usize];
        assert!(op.version.is_none(), "write stamped twice");
        op.version = Some(version);
    }

    /// Record the client's answer; false if the op was already finished (the client
    /// gave up before a late answer).
    pub fn mark_via_stand_in(&mut self, id: OpId) {
        self.ops[id as usize].via_stand_in = true;
    }

    pub fn finish(&mut self, id: OpId, outcome: Outcome, step: u64) -> bool {
        let op = &mut self.ops[id as usize];
        if op.outcome != Outcome::Pending {
            return false;
        }
        op.outcome = outcome;
        op.end_step = Some(step);
        true
    }

    /// Writes on `key` that were acknowledged before `step`.
    pub fn acked_writes_before<'a>(
        &'a self,
        key: &[u8],
        step: u64,
    ) -> impl Iterator<Item = &'a OpRecord> + 'a {
        self.writes_of(key).filter(move |op| {
            op.outcome == Outcome::Ok && op.end_step.is_some_and(|end| end < step)
        })
    }

    pub fn writes_of<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = &'a OpRecord> + 'a {
        self.writes_by_key
            .get(key)
            .into_iter()
            .flatten()
            .map(|&i| &self.ops[i])
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.ops.iter().filter(|o| o.outcome == outcome).count()
    }
}

/// One closed-loop client.
pub struct Client {
    pub id: usize,
    pub current: Option<OpId>,
    pub ops_left: u32,
    /// Causal mode: the context of the last read of each key, handed back on writes.
    pub contexts: BTreeMap<Key, CausalContext>,
    pub next_value: u64,
}

impl Client {
    pub fn new(id: usize, ops: u32) -> Self {
        Self {
            id,
            current: None,
            ops_left: ops,
            contexts: BTreeMap::new(),
            next_value: 0,
        }
    }

    /// A value no other write of the run uses.
    pub fn unique_value(&mut self) -> Vec<u8> {
        self.next_value += 1;
        format!("c{}-v{}", self.id, self.next_value).into_bytes()
    }
}

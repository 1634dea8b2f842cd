//! Last-write-wins cells: the highest HLC timestamp wins; ties go to the delete, then to
//! the larger value bytes, so every replica picks the same survivor.

use super::codec::Reader;
use super::{DecodeError, Hlc};

/// A value or tombstone (`value: None`) stamped by its coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LwwCell {
    pub timestamp: Hlc,
    pub value: Option<Vec<u8>>,
}

/// The deterministic total order used by [`merge`]: timestamp, then delete over put,
/// then larger value bytes.
fn rank(c: &LwwCell) -> (Hlc, bool, Option<&[u8]>) {
    (c.timestamp, c.value.is_none(), c.value.as_deref())
}

pub fn merge(a: &LwwCell, b: &LwwCell) -> LwwCell {
    if rank(a) >= rank(b) {
        a.clone()
    } else {
        b.clone()
    }
}

impl LwwCell {
    /// Layout: timestamp u64 LE, flag u8 (0 tombstone, 1 value), [len u32 LE, bytes].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.0.to_le_bytes());
        match &self.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let timestamp = Hlc(r.u64()?);
        let value = match r.u8()? {
            0 => None,
            1 => {
                let len = r.u32()? as usize;
                Some(r.take(len)?.to_vec())
            }
            _ => return Err(DecodeError::Invalid("lww value flag")),
        };
        Ok(LwwCell { timestamp, value })
    }
}

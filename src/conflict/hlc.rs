//! Hybrid logical clock (Kulkarni et al.): 48 bits of physical milliseconds since the
//! Unix epoch, 16 bits of logical counter. Monotonic per node; advanced on every message
//! received. The caller passes the physical time, so this is testable without a clock.

/// One HLC timestamp. Ordered as a plain `u64`: physical millis, then logical counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const LOGICAL_BITS: u32 = 16;

    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms << Self::LOGICAL_BITS) | u64::from(logical))
    }
    pub fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }
    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

/// The clock state of one node. (Implementation of skew rejection: conflict helper.)
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp for a local event (a write this node coordinates) at physical `now_ms`.
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        let candidate = Hlc::new(now_ms, 0);
        self.last = if candidate > self.last {
            candidate
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last
    }

    pub fn last(&self) -> Hlc {
        self.last
    }
}

//! Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks"): 48 bits of physical
//! milliseconds since the Unix epoch, 16 bits of logical counter, packed in one `u64` so
//! that timestamps order as plain integers.
//!
//! This module owns the clock rules: a node's clock never goes backwards, advances on
//! every local event and on every message received, and refuses remote timestamps too
//! far in the future. It must never read the system clock itself: the caller passes
//! `now_ms`, so the clock is deterministic under test and in the simulator. Persisting
//! the high-water mark across restarts is the caller's job ([`HlcClock::starting_after`]).

/// One HLC timestamp. Ordered as a plain `u64`: physical millis, then logical counter.
///
/// Layout of the `u64`: bits 63..16 physical milliseconds since the Unix epoch, bits
/// 15..0 logical counter. On disk and on the wire it is the `u64` in little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const LOGICAL_BITS: u32 = 16;
    /// The largest physical time representable (year 10889).
    pub const MAX_PHYSICAL_MS: u64 = (1 << (64 - Self::LOGICAL_BITS)) - 1;
    /// The largest timestamp; a clock that reaches it stays there (saturates).
    pub const MAX: Hlc = Hlc(u64::MAX);

    /// Panics if `physical_ms` does not fit in 48 bits (a caller bug: no real clock
    /// reads that far in the future).
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        assert!(
            physical_ms <= Self::MAX_PHYSICAL_MS,
            "HLC physical time {physical_ms} ms exceeds 48 bits"
        );
        Hlc((physical_ms << Self::LOGICAL_BITS) | u64::from(logical))
    }
    pub fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }
    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The next timestamp after `self`. Because the logical counter is the low 16 bits,
    /// a logical overflow carries into the physical part (physical + 1, logical 0),
    /// which is exactly the HLC overflow rule. Saturates at [`Hlc::MAX`].
    pub fn successor(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }

    /// The earliest timestamp at physical time `now_ms` (clamped to 48 bits).
    fn at_physical(now_ms: u64) -> Hlc {
        Hlc::new(now_ms.min(Self::MAX_PHYSICAL_MS), 0)
    }
}

/// A remote timestamp was refused because its physical time is further ahead of our
/// physical clock than `max_clock_skew_ms` allows. Accepting it would drag this node's
/// clock (and so every later LWW write it coordinates) into the future.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote HLC timestamp {remote_physical_ms} ms is {ahead_ms} ms ahead of local clock \
     {now_ms} ms (max_clock_skew_ms = {max_clock_skew_ms})"
)]
pub struct ClockSkewError {
    pub remote_physical_ms: u64,
    pub now_ms: u64,
    pub ahead_ms: u64,
    pub max_clock_skew_ms: u64,
}

/// The clock state of one node.
///
/// Invariant: `last` never decreases; every timestamp handed out by [`HlcClock::now`]
/// or [`HlcClock::observe`] is strictly greater than every earlier one (until the
/// clock saturates at [`Hlc::MAX`], some eight thousand years from now).
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
    rejected_count: u64,
}

impl HlcClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that resumes above `high_water`: a restarted node passes the largest
    /// timestamp it persisted (or handed out) before, so it never reissues one.
    pub fn starting_after(high_water: Hlc) -> Self {
        Self {
            last: high_water,
            rejected_count: 0,
        }
    }

    /// A timestamp for a local event (a write this node coordinates) at physical
    /// `now_ms`. Strictly greater than every timestamp this clock returned before, even
    /// when `now_ms` goes backwards (the logical counter absorbs it).
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        let next = self.last.successor().max(Hlc::at_physical(now_ms));
        self.advance_to(next)
    }

    /// The receive rule: a message stamped `remote` arrived at physical `now_ms`. The
    /// clock moves past both its own last value and `remote`, and the returned
    /// timestamp is the receive event's own timestamp.
    ///
    /// A `remote` whose physical part is more than `max_clock_skew_ms` ahead of
    /// `now_ms` is refused: the clock is left untouched and the refusal counted.
    pub fn observe(
        &mut self,
        now_ms: u64,
        remote: Hlc,
        max_clock_skew_ms: u64,
    ) -> Result<Hlc, ClockSkewError> {
        let now_ms = now_ms.min(Hlc::MAX_PHYSICAL_MS);
        let remote_physical_ms = remote.physical_ms();
        if remote_physical_ms > now_ms.saturating_add(max_clock_skew_ms) {
            self.rejected_count += 1;
            return Err(ClockSkewError {
                remote_physical_ms,
                now_ms,
                ahead_ms: remote_physical_ms - now_ms,
                max_clock_skew_ms,
            });
        }
        // With the packed layout, max(last, remote) + 1 against (now, 0) is the textbook
        // rule: equal physical parts take max(logical) + 1, a larger physical part
        // resets the logical counter.
        let next = self
            .last
            .max(remote)
            .successor()
            .max(Hlc::at_physical(now_ms));
        Ok(self.advance_to(next))
    }

    /// The largest timestamp this clock has issued or observed (persist it to resume
    /// with [`HlcClock::starting_after`]).
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// How many remote timestamps [`HlcClock::observe`] refused for clock skew.
    pub fn rejected_count(&self) -> u64 {
        self.rejected_count
    }

    fn advance_to(&mut self, next: Hlc) -> Hlc {
        assert!(next >= self.last, "HLC would go backwards");
        self.last = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_strictly_monotonic_when_physical_time_goes_back() {
        let mut clock = HlcClock::new();
        let a = clock.now(1_000);
        let b = clock.now(500);
        let c = clock.now(500);
        assert_eq!(a, Hlc::new(1_000, 0));
        assert_eq!(b, Hlc::new(1_000, 1));
        assert_eq!(c, Hlc::new(1_000, 2));
        assert_eq!(clock.now(2_000), Hlc::new(2_000, 0));
    }

    #[test]
    fn logical_overflow_bumps_physical() {
        let mut clock = HlcClock::starting_after(Hlc::new(7, u16::MAX));
        assert_eq!(clock.now(0), Hlc::new(8, 0));
    }

    #[test]
    fn observe_follows_receive_rule() {
        let mut clock = HlcClock::starting_after(Hlc::new(100, 5));
        // Remote ahead (within skew) on physical time: take remote's physical, logical+1.
        assert_eq!(
            clock.observe(90, Hlc::new(110, 3), 50),
            Ok(Hlc::new(110, 4))
        );
        // Same physical on both: max logical + 1.
        assert_eq!(
            clock.observe(90, Hlc::new(110, 9), 50),
            Ok(Hlc::new(110, 10))
        );
        // Our physical clock now leads everything: logical resets.
        assert_eq!(
            clock.observe(200, Hlc::new(110, 9), 50),
            Ok(Hlc::new(200, 0))
        );
    }

    #[test]
    fn observe_rejects_skewed_remote_without_advancing() {
        let mut clock = HlcClock::new();
        let before = clock.now(1_000);
        let err = clock
            .observe(1_000, Hlc::new(1_501, 0), 500)
            .expect_err("skewed");
        assert_eq!(err.ahead_ms, 501);
        assert_eq!(clock.last(), before);
        assert_eq!(clock.rejected_count(), 1);
        // Exactly at the bound is accepted.
        assert!(clock.observe(1_000, Hlc::new(1_500, 0), 500).is_ok());
        assert_eq!(clock.rejected_count(), 1);
    }

    #[test]
    fn starting_after_resumes_above_high_water() {
        let high = Hlc::new(5_000, 17);
        let mut clock = HlcClock::starting_after(high);
        assert!(clock.now(1) > high);
    }

    #[test]
    fn huge_now_is_clamped_not_panicking() {
        let mut clock = HlcClock::new();
        let t = clock.now(u64::MAX);
        assert_eq!(t.physical_ms(), Hlc::MAX_PHYSICAL_MS);
        assert!(clock.observe(u64::MAX, Hlc::MAX, 0).is_ok());
        assert_eq!(clock.now(0), Hlc::MAX);
    }
}

//! Hybrid logical clock.
//!
//! Session events are ordered by HLC rather than by wall clock because the peers' clocks (store
//! appliance, hub) drift, and an event must always sort after the events its author had already
//! seen — otherwise a "resolve" could sort before the "claim" it was answering. An HLC stays close
//! to wall-clock time (so the order looks natural to humans) while guaranteeing that order.

use serde::{Deserialize, Serialize};

/// A hybrid-logical timestamp: `wall_ms << 16 | counter`.
///
/// Packed into one `u64` so that the derived ordering *is* the HLC ordering (wall time first,
/// then counter) and so it serialises as a plain JSON number. 48 bits of milliseconds last until
/// the year ~10889.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Bits reserved for the logical counter.
    pub const COUNTER_BITS: u32 = 16;
    /// The largest wall-clock value that fits (48 bits).
    pub const MAX_WALL_MS: u64 = u64::MAX >> Self::COUNTER_BITS;

    /// Packs a wall-clock time and counter. `wall_ms` beyond [`Self::MAX_WALL_MS`] saturates
    /// (rather than wrapping, which would break ordering).
    pub const fn new(wall_ms: u64, counter: u16) -> Self {
        let wall = if wall_ms > Self::MAX_WALL_MS {
            Self::MAX_WALL_MS
        } else {
            wall_ms
        };
        Hlc((wall << Self::COUNTER_BITS) | counter as u64)
    }

    /// Milliseconds since the Unix epoch (approximately: it is the wall clock of whichever peer
    /// was furthest ahead).
    pub const fn wall_ms(&self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }

    /// The logical counter distinguishing timestamps issued within the same millisecond.
    pub const fn counter(&self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }
}

/// Issues [`Hlc`] timestamps for one peer.
///
/// Not persisted: after a restart the peer should [`observe`](Self::observe) the largest HLC in
/// the documents it loads before issuing new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
}

impl Default for HlcClock {
    /// A clock that has issued and observed nothing.
    fn default() -> Self {
        HlcClock { last: Hlc(0) }
    }
}

impl HlcClock {
    /// A timestamp strictly greater than everything previously issued or observed by this clock.
    ///
    /// Uses the wall clock when it is ahead; otherwise (clock went backwards, same millisecond,
    /// or a remote peer is ahead) it increments the counter, which — because of the packing —
    /// carries into `wall_ms + 1` when the counter overflows.
    pub fn tick(&mut self, now_wall_ms: u64) -> Hlc {
        let wall = now_wall_ms.min(Hlc::MAX_WALL_MS);
        let next = if wall > self.last.wall_ms() {
            Hlc::new(wall, 0)
        } else {
            // Invariant: reaching u64::MAX would take ~8,800 years of timestamps at the 48-bit
            // wall-clock limit; treat it as a bug rather than silently repeating a timestamp.
            assert!(self.last.0 < u64::MAX, "HLC exhausted");
            Hlc(self.last.0 + 1)
        };
        self.last = next;
        next
    }

    /// Records a timestamp seen from another peer so that the next [`tick`](Self::tick) sorts
    /// after it.
    pub fn observe(&mut self, remote: Hlc) {
        self.last = self.last.max(remote);
    }

    /// The largest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing() {
        let h = Hlc::new(1_700_000_000_000, 42);
        assert_eq!(h.wall_ms(), 1_700_000_000_000);
        assert_eq!(h.counter(), 42);
        assert!(Hlc::new(5, u16::MAX) < Hlc::new(6, 0));
        assert_eq!(Hlc::new(u64::MAX, 1).wall_ms(), Hlc::MAX_WALL_MS);
        assert_eq!(
            serde_json::to_string(&h).expect("serialise"),
            h.0.to_string()
        );
    }

    #[test]
    fn tick_follows_the_wall_clock_when_it_advances() {
        let mut c = HlcClock::default();
        assert_eq!(c.tick(100), Hlc::new(100, 0));
        assert_eq!(c.tick(250), Hlc::new(250, 0));
    }

    #[test]
    fn tick_is_strictly_monotonic_when_the_wall_clock_stalls_or_goes_back() {
        let mut c = HlcClock::default();
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(900);
        assert!(a < b && b < d);
        assert_eq!(b, Hlc::new(1000, 1));
        assert_eq!(d, Hlc::new(1000, 2));
    }

    #[test]
    fn counter_overflow_advances_wall_ms() {
        let mut c = HlcClock::default();
        c.observe(Hlc::new(1000, u16::MAX));
        assert_eq!(c.tick(1000), Hlc::new(1001, 0));
    }

    #[test]
    fn observe_makes_next_tick_greater_than_remote() {
        let mut c = HlcClock::default();
        c.tick(1000);
        let remote = Hlc::new(5000, 7);
        c.observe(remote);
        let next = c.tick(1001);
        assert!(next > remote);
        assert_eq!(next, Hlc::new(5000, 8));
        // Observing something older changes nothing.
        c.observe(Hlc::new(10, 0));
        assert!(c.tick(0) > next);
    }

    #[test]
    fn many_ticks_with_a_jittery_clock_never_repeat() {
        let mut c = HlcClock::default();
        let mut prev = Hlc(0);
        for i in 0u64..200_000 {
            // Wall clock wobbles back and forth and stalls for long runs.
            let now = 1_000 + (i / 50_000) * 3 - (i % 3);
            let h = c.tick(now);
            assert!(h > prev, "{h:?} <= {prev:?} at {i}");
            prev = h;
        }
    }
}

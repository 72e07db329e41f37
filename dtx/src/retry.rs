//! Exponential backoff with jitter: the one retry schedule of dtx (command retries, saga steps
//! and compensations, outbox relays), and of users' calls ([`Backoff::retry`]).

mod call;

pub use call::{Attempts, Retry, no_retry_after};
use std::time::Duration;

/// How a [`Backoff`] spreads the pauses under its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// Anywhere between zero and the ceiling: spreads racing writers best (command retries).
    Full,
    /// Between half the ceiling and the ceiling: spreads retries without hammering the service
    /// that failed (saga steps, outbox relays).
    Equal,
}

/// An exponential backoff with jitter.
///
/// The pause before retry `attempt` (1 for the first retry) lies under the ceiling
///
/// ```text
/// ceiling(attempt) = min(max, base · 2^min(attempt − 1, 20))
/// ```
///
/// drawn uniformly from `[0, ceiling)` with [`Jitter::Full`] and from `[ceiling / 2, ceiling)`
/// with [`Jitter::Equal`]. A zero ceiling is no pause.
///
/// ```
/// use dtx::{Backoff, Jitter};
/// use std::time::Duration;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), Jitter::Equal);
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(1));
/// let pause = backoff.delay(3);
/// assert!(pause >= Duration::from_millis(200) && pause < Duration::from_millis(400));
/// // The same draw, made explicit: 0 is the shortest pause of the range.
/// assert_eq!(backoff.delay_with(3, 0), Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// The ceiling of the first retry.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// How pauses spread under the ceiling.
    pub jitter: Jitter,
}

impl Backoff {
    /// A backoff from `base`, doubling up to `max`.
    pub const fn new(base: Duration, max: Duration, jitter: Jitter) -> Self {
        Self { base, max, jitter }
    }

    /// `min(max, base · 2^(attempt − 1))`: the longest pause before retry `attempt` (the
    /// exponent stops growing at 20).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1 << attempt.saturating_sub(1).min(20))
            .min(self.max)
    }

    /// The pause before retry `attempt`, with a fresh random draw.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_u64())
    }

    /// The pause before retry `attempt` for a given draw: `random` places it in the jitter range,
    /// linearly, from `0` (the shortest pause) to `u64::MAX` (just under the ceiling). For
    /// callers that inject their randomness, and for tests.
    pub fn delay_with(&self, attempt: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let floor = match self.jitter {
            Jitter::Full => Duration::ZERO,
            Jitter::Equal => ceiling / 2,
        };
        floor + scale(ceiling.saturating_sub(floor), random)
    }
}

/// `span · random / 2^64`, for spans up to `u64::MAX` nanoseconds (about 584 years).
fn scale(span: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
    let scaled = (u128::from(nanos) * u128::from(random)) >> 64;
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// 64 random bits. A v4 UUID fixes 6 of its 128 bits, at different places in each half, so the
/// XOR of its halves is uniform.
pub(crate) fn random_u64() -> u64 {
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    high ^ low
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_exponentially_and_stays_capped() {
        let backoff = Backoff::new(10 * MS, 200 * MS, Jitter::Full);
        assert_eq!(backoff.ceiling(0), 10 * MS);
        assert_eq!(backoff.ceiling(1), 10 * MS);
        assert_eq!(backoff.ceiling(3), 40 * MS);
        assert_eq!(backoff.ceiling(60), 200 * MS);
        assert_eq!(backoff.ceiling(u32::MAX), 200 * MS);
    }

    #[test]
    fn the_draw_places_the_pause_in_the_jitter_range() {
        let full = Backoff::new(10 * MS, 200 * MS, Jitter::Full);
        let equal = Backoff {
            jitter: Jitter::Equal,
            ..full
        };
        assert_eq!(full.delay_with(3, 0), Duration::ZERO);
        assert_eq!(full.delay_with(3, 1 << 63), 20 * MS);
        assert!(full.delay_with(3, u64::MAX) < 40 * MS);
        assert!(full.delay_with(3, u64::MAX) > 39 * MS);
        assert_eq!(equal.delay_with(3, 0), 20 * MS);
        assert_eq!(equal.delay_with(3, 1 << 63), 30 * MS);
        assert!(equal.delay_with(3, u64::MAX) < 40 * MS);
        for attempt in 1..10 {
            let c = full.ceiling(attempt);
            assert!(full.delay(attempt) <= c);
            let e = equal.delay(attempt);
            assert!(e >= c / 2 && e <= c, "{e:?} outside [{:?}, {c:?}]", c / 2);
        }
    }

    #[test]
    fn a_zero_or_huge_ceiling_does_not_overflow() {
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO, Jitter::Equal);
        assert_eq!(zero.delay(5), Duration::ZERO);
        let huge = Backoff::new(Duration::MAX, Duration::MAX, Jitter::Full);
        let centuries = Duration::from_secs(500 * 365 * 24 * 3600);
        assert!(
            huge.delay_with(40, u64::MAX) > centuries,
            "capped at 2^64 ns"
        );
    }
}

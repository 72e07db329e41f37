//! Exponential backoff with jitter, shared by every retry loop (commands, saga steps, outbox).

use std::time::Duration;

/// `min(max, base * 2^(attempt - 1))`: the longest pause before retry number `attempt`.
pub(crate) fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(max)
}

fn random_below(nanos: u128) -> Duration {
    let pick = uuid::Uuid::new_v4().as_u128() % nanos.max(1);
    Duration::from_nanos(u64::try_from(pick).unwrap_or(u64::MAX))
}

/// "Full jitter": anywhere between zero and the ceiling. Spreads racing writers best.
pub(crate) fn full_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    random_below(ceiling(base, max, attempt).as_nanos())
}

/// "Equal jitter": between half the ceiling and the ceiling. Spreads retries without hammering
/// the service that failed.
pub(crate) fn equal_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    let half = ceiling(base, max, attempt) / 2;
    half + random_below(half.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_stays_capped() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(200));
        assert_eq!(ceiling(base, max, 1), base);
        assert_eq!(ceiling(base, max, 3), Duration::from_millis(40));
        assert_eq!(ceiling(base, max, 60), max);
        for attempt in 1..10 {
            let c = ceiling(base, max, attempt);
            assert!(full_jitter(base, max, attempt) <= c);
            let e = equal_jitter(base, max, attempt);
            assert!(e >= c / 2 && e <= c, "{e:?} outside [{:?}, {c:?}]", c / 2);
        }
    }
}

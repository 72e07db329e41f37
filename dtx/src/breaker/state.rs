//! The breaker's state machine, on an explicit clock: closed, open until a time, half-open with
//! a number of probes.

use super::config::BreakerConfig;
use std::time::Duration;
use tokio::time::Instant;

/// Where a breaker stands.
///
/// ```
/// use dtx::breaker::{BreakerState, CircuitBreaker, BreakerConfig};
///
/// let breaker = CircuitBreaker::new("inventory", BreakerConfig::new());
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast with [`BreakerOpen`](super::BreakerOpen) until the open period ends.
    Open,
    /// A limited number of probe calls go through; the others fail fast.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`: the label of metrics and events.
    ///
    /// ```
    /// assert_eq!(dtx::breaker::BreakerState::Open.as_str(), "open");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open: the value of the `dtx.breaker.state` gauge.
    pub(crate) const fn level(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// A state change, reported outside the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
}

/// What `acquire` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The call may go; its outcome is recorded under this generation.
    Admitted { generation: u64 },
    /// The call fails fast; the breaker may let calls through after this long.
    Rejected { retry_after: Duration },
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// The state machine. Every change of phase starts a new generation: outcomes of calls admitted
/// under an older one are ignored, so a slow call from before the breaker opened can neither
/// close nor reopen it.
#[derive(Debug)]
pub(crate) struct Machine {
    config: BreakerConfig,
    phase: Phase,
    generation: u64,
    consecutive: u32,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
}

impl Machine {
    pub(crate) fn new(config: BreakerConfig, now: Instant) -> Self {
        Self {
            config,
            phase: Phase::Closed,
            generation: 0,
            consecutive: 0,
            origin: now,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Lets a call through, or not. An open breaker whose period is over turns half-open here.
    pub(crate) fn acquire(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if let Phase::Open { until } = self.phase {
            if now < until {
                let retry_after = until - now;
                return (Admission::Rejected { retry_after }, None);
            }
            transition = Some(self.enter(Phase::HalfOpen {
                in_flight: 0,
                succeeded: 0,
            }));
        }
        let probes = self.config.probes;
        let admission = match &mut self.phase {
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if *in_flight + *succeeded < probes {
                    *in_flight += 1;
                    Admission::Admitted {
                        generation: self.generation,
                    }
                } else {
                    // The probes are out: their outcome decides. No better hint than "soon".
                    Admission::Rejected {
                        retry_after: Duration::ZERO,
                    }
                }
            }
            _ => Admission::Admitted {
                generation: self.generation,
            },
        };
        (admission, transition)
    }

    /// Records the outcome of an admitted call (`None`: the call was dropped before it ended).
    pub(crate) fn record(
        &mut self,
        generation: u64,
        failed: Option<bool>,
        now: Instant,
    ) -> Option<Transition> {
        if generation != self.generation {
            return None;
        }
        let open = Phase::Open {
            until: now + self.config.open_for,
        };
        match &mut self.phase {
            Phase::Open { .. } => None,
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                match failed {
                    None => None,
                    Some(true) => Some(self.enter(open)),
                    Some(false) => {
                        *succeeded += 1;
                        (*succeeded >= self.config.probes).then(|| self.enter(Phase::Closed))
                    }
                }
            }
            Phase::Closed => {
                let failed = failed?;
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let by_count = self
                    .config
                    .consecutive_threshold()
                    .is_some_and(|n| self.consecutive >= n);
                let by_rate = self.count(failed, now);
                (by_count || by_rate).then(|| self.enter(open))
            }
        }
    }

    /// Counts a call in the failure-rate window; whether the rate now opens the breaker.
    fn count(&mut self, failed: bool, now: Instant) -> bool {
        let Some(rate) = self.config.rate else {
            return false;
        };
        let step = (rate.window / 10).max(Duration::from_millis(1));
        let epoch = u64::try_from(now.duration_since(self.origin).as_nanos() / step.as_nanos())
            .unwrap_or(u64::MAX);
        let bucket = &mut self.buckets[usize::try_from(epoch % 10).unwrap_or(0)];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
        let (calls, failures) = self
            .buckets
            .iter()
            .filter(|b| b.epoch + 10 > epoch && b.epoch <= epoch)
            .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
        calls >= rate.minimum_calls && f64::from(failures) >= rate.threshold * f64::from(calls)
    }

    fn enter(&mut self, phase: Phase) -> Transition {
        let label = |phase: &Phase| match phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        let from = label(&self.phase);
        let to = label(&phase);
        self.phase = phase;
        self.generation += 1;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS];
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn admitted(machine: &mut Machine, now: Instant) -> u64 {
        match machine.acquire(now).0 {
            Admission::Admitted { generation } => generation,
            Admission::Rejected { .. } => panic!("rejected"),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut m = Machine::new(BreakerConfig::new().consecutive_failures(2), t0);
        let g = admitted(&mut m, t0);
        assert_eq!(m.record(g, Some(true), t0), None);
        assert_eq!(m.record(g, Some(false), t0), None);
        assert_eq!(m.record(g, Some(true), t0), None);
        let opened = m.record(g, Some(true), t0).expect("opens");
        assert_eq!(
            (opened.from, opened.to),
            (BreakerState::Closed, BreakerState::Open)
        );
        assert_eq!(
            m.acquire(t0 + SEC).0,
            Admission::Rejected {
                retry_after: 29 * SEC
            }
        );
    }

    #[test]
    fn the_rate_needs_the_minimum_of_calls_and_forgets_old_ones() {
        let t0 = Instant::now();
        let config = BreakerConfig::new().failure_rate(0.5, 10 * SEC, 4);
        let mut m = Machine::new(config, t0);
        let g = admitted(&mut m, t0);
        for _ in 0..3 {
            assert_eq!(m.record(g, Some(true), t0), None, "under the minimum");
        }
        // 11 s later the three failures left the window.
        let later = t0 + 11 * SEC;
        assert_eq!(m.record(g, Some(false), later), None);
        assert_eq!(m.record(g, Some(false), later), None);
        assert_eq!(m.record(g, Some(true), later), None);
        assert!(m.record(g, Some(true), later).is_some(), "2 of 4 failed");
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut m = Machine::new(
            BreakerConfig::new().consecutive_failures(1).open_for(SEC),
            t0,
        );
        let slow = admitted(&mut m, t0);
        let g = admitted(&mut m, t0);
        assert!(m.record(g, Some(true), t0).is_some());
        let probe = admitted(&mut m, t0 + SEC);
        assert_eq!(m.state(t0 + SEC), BreakerState::HalfOpen);
        assert_eq!(
            m.record(slow, Some(false), t0 + SEC),
            None,
            "from before it opened"
        );
        assert_eq!(m.state(t0 + SEC), BreakerState::HalfOpen);
        let closed = m.record(probe, Some(false), t0 + SEC).expect("closes");
        assert_eq!(closed.to, BreakerState::Closed);
    }
}

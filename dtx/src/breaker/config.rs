//! When a breaker opens, for how long, and how it tests the service again.

use std::time::Duration;

/// When a [`CircuitBreaker`](super::CircuitBreaker) opens, how long it stays open, and how many
/// probe calls it lets through when half-open.
///
/// A breaker opens on either threshold that is set: `consecutive_failures` failures in a row,
/// or a [`FailureRate`] over a sliding window once the window holds enough calls. With neither
/// set, [`BreakerConfig::new`] opens after 5 consecutive failures.
///
/// ```
/// use dtx::breaker::BreakerConfig;
/// use std::time::Duration;
///
/// let config = BreakerConfig::new()
///     .consecutive_failures(3)
///     .failure_rate(0.5, Duration::from_secs(60), 20)
///     .open_for(Duration::from_secs(10))
///     .half_open_probes(2);
/// assert_eq!(config.open_period(), Duration::from_secs(10));
/// assert_eq!(config.probes(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub(crate) consecutive: Option<u32>,
    pub(crate) rate: Option<FailureRate>,
    pub(crate) open_for: Duration,
    pub(crate) probes: u32,
}

/// Opens a breaker when at least `threshold` (0 to 1) of the calls in the last `window` failed,
/// once the window holds `minimum_calls` calls.
///
/// The window slides in ten steps of `window / 10`: calls older than the window are forgotten a
/// step at a time.
///
/// ```
/// use dtx::breaker::FailureRate;
/// use std::time::Duration;
///
/// let rate = FailureRate { threshold: 0.5, window: Duration::from_secs(30), minimum_calls: 10 };
/// assert!(rate.threshold > 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// The share of failed calls, from 0 to 1, that opens the breaker.
    pub threshold: f64,
    /// How far back calls count.
    pub window: Duration,
    /// Fewer calls in the window never open the breaker.
    pub minimum_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl BreakerConfig {
    /// 5 consecutive failures open the breaker for 30 s; then 1 probe call decides.
    ///
    /// ```
    /// use dtx::breaker::BreakerConfig;
    /// use std::time::Duration;
    ///
    /// let config = BreakerConfig::new();
    /// assert_eq!(config.open_period(), Duration::from_secs(30));
    /// ```
    pub const fn new() -> Self {
        Self {
            consecutive: None,
            rate: None,
            open_for: Duration::from_secs(30),
            probes: 1,
        }
    }

    /// Opens after `n` failures in a row (at least 1).
    ///
    /// ```
    /// let config = dtx::breaker::BreakerConfig::new().consecutive_failures(3);
    /// # let _ = config;
    /// ```
    #[must_use]
    pub const fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive = Some(if n == 0 { 1 } else { n });
        self
    }

    /// Opens when at least `threshold` (clamped to 0..=1) of the calls in the last `window`
    /// failed, once the window holds `minimum_calls` calls (at least 1).
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = dtx::breaker::BreakerConfig::new().failure_rate(0.5, Duration::from_secs(60), 20);
    /// # let _ = config;
    /// ```
    #[must_use]
    pub fn failure_rate(mut self, threshold: f64, window: Duration, minimum_calls: u32) -> Self {
        self.rate = Some(FailureRate {
            threshold: threshold.clamp(0.0, 1.0),
            window: window.max(Duration::from_millis(10)),
            minimum_calls: minimum_calls.max(1),
        });
        self
    }

    /// How long the breaker stays open before it lets probes through.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = dtx::breaker::BreakerConfig::new().open_for(Duration::from_secs(5));
    /// assert_eq!(config.open_period(), Duration::from_secs(5));
    /// ```
    #[must_use]
    pub const fn open_for(mut self, period: Duration) -> Self {
        self.open_for = period;
        self
    }

    /// How many probe calls a half-open breaker lets through (at least 1); when all of them
    /// succeed the breaker closes, and the first that fails opens it again.
    ///
    /// ```
    /// let config = dtx::breaker::BreakerConfig::new().half_open_probes(3);
    /// assert_eq!(config.probes(), 3);
    /// ```
    #[must_use]
    pub const fn half_open_probes(mut self, n: u32) -> Self {
        self.probes = if n == 0 { 1 } else { n };
        self
    }

    /// The open period.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(dtx::breaker::BreakerConfig::new().open_period(), Duration::from_secs(30));
    /// ```
    pub const fn open_period(&self) -> Duration {
        self.open_for
    }

    /// The number of half-open probes.
    ///
    /// ```
    /// assert_eq!(dtx::breaker::BreakerConfig::new().probes(), 1);
    /// ```
    pub const fn probes(&self) -> u32 {
        self.probes
    }

    /// The consecutive-failure threshold in force: the one set, else 5 when no rate is set.
    pub(crate) fn consecutive_threshold(&self) -> Option<u32> {
        match (self.consecutive, self.rate) {
            (Some(n), _) => Some(n),
            (None, None) => Some(5),
            (None, Some(_)) => None,
        }
    }
}

//! Circuit breakers for calls to other services: fail fast while a service is down, then let a
//! few probe calls find out whether it is back.
//!
//! A [`CircuitBreaker`] is **closed** while calls succeed. When too many fail (a number in a row,
//! or a [`FailureRate`] over a window) it **opens**: calls fail fast with [`BreakerOpen`],
//! without being made, for the open period. Then it is **half-open**: the configured number of
//! probe calls go through (the others still fail fast); if they all succeed it closes, and the
//! first failure opens it again.
//!
//! Breakers are shared **by name**: every call site that names `"payments"` (through
//! [`BreakerRegistry::breaker`], the [`#[dtx::circuit_breaker]`](macro@crate::circuit_breaker)
//! attribute or a [`BreakerLayer`]) uses one breaker, so calls from anywhere in the process
//! count together. The first call site to name a breaker sets its configuration.
//!
//! [`BreakerOpen`] is an ordinary error: in a saga step, `?` turns it into a retryable
//! [`StepError::transient`](crate::saga::StepError::transient), so the step is retried later
//! rather than compensated at once; around a [`Retry`](crate::Retry), its `retry_after` tells
//! when to try again.
//!
//! **Telemetry.** Every state change is a `tracing` event (target `dtx::breaker`, fields
//! `breaker`, `from`, `to`; a warning when it opens) on the current span. With the `otel`
//! feature, the `dtx.breaker.state` gauge (0 closed, 1 half-open, 2 open), the
//! `dtx.breaker.transitions` counter (`breaker`, `from`, `to`) and the `dtx.breaker.rejected`
//! counter (`breaker`) go to the global meter.
//!
//! **Time** is tokio's clock ([`tokio::time::Instant`]), so tests can pause it and move it past
//! an open period without sleeping (`#[tokio::test(start_paused = true)]` and
//! `tokio::time::advance`).
//!
//! **Why not a crate.** `failsafe` lets every call through while half-open (no probe limit),
//! reads the system clock directly, and depends on an old `rand`; `tower` 0.5 has no breaker
//! middleware. The state machine here is small (a `Mutex` around a few counters, two lock
//! round trips per call), and it reuses dtx's [`Backoff`](crate::Backoff) for retries.
//!
//! ```
//! use dtx::breaker::{BreakerConfig, BreakerOpen, BreakerRegistry, BreakerState};
//! use std::time::Duration;
//!
//! #[derive(Debug, thiserror::Error)]
//! enum PaymentError {
//!     #[error("payment service unavailable")]
//!     Down,
//!     #[error(transparent)]
//!     Open(#[from] BreakerOpen),
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let payments = BreakerRegistry::global().breaker("docs.payments", || {
//!     BreakerConfig::new().consecutive_failures(2).open_for(Duration::from_secs(30))
//! });
//! for _ in 0..2 {
//!     let failed = payments.call(|| async { Err::<(), _>(PaymentError::Down) }).await;
//!     assert!(matches!(failed, Err(PaymentError::Down)));
//! }
//! assert_eq!(payments.state(), BreakerState::Open);
//! let fast = payments.call(|| async { Ok::<_, PaymentError>("not called") }).await;
//! assert!(matches!(fast, Err(PaymentError::Open(open)) if open.name() == "docs.payments"));
//! # });
//! ```

mod config;
#[cfg(feature = "http")]
mod layer;
mod registry;
mod state;
mod telemetry;

pub use config::{BreakerConfig, FailureRate};
#[cfg(feature = "http")]
pub use layer::{BreakerLayer, BreakerService, Errors, FailureClassifier, ServerErrors};
pub use registry::BreakerRegistry;
pub use state::BreakerState;

use state::{Admission, Machine};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// A call refused by an open (or half-open and busy) circuit breaker; the call was not made.
///
/// Retryable: convert it into your error type (`#[from] BreakerOpen`) and retry after
/// [`retry_after`](Self::retry_after). In a saga step, `?` makes it a transient
/// [`StepError`](crate::saga::StepError).
///
/// ```
/// use dtx::breaker::{BreakerConfig, CircuitBreaker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let breaker = CircuitBreaker::new("search", BreakerConfig::new().consecutive_failures(1));
/// let _ = breaker.call(|| async { Err::<(), _>(dtx::breaker::BreakerOpen::from("boom")) }).await;
/// let open = breaker.try_acquire().unwrap_err();
/// assert_eq!(open.name(), "search");
/// assert!(open.retry_after() <= std::time::Duration::from_secs(30));
/// assert_eq!(open.to_string(), format!("circuit breaker `search` is open: retry after {:?}", open.retry_after()));
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerOpen {
    name: Arc<str>,
    retry_after: Duration,
}

impl BreakerOpen {
    /// The breaker's name.
    ///
    /// ```
    /// assert_eq!(dtx::breaker::BreakerOpen::from("payments").name(), "payments");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long until the breaker lets calls through again (zero when it is half-open and its
    /// probes are out: their outcome decides).
    ///
    /// ```
    /// let open = dtx::breaker::BreakerOpen::from("payments");
    /// assert_eq!(open.retry_after(), std::time::Duration::ZERO);
    /// ```
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// An open breaker named `name`, to be retried at once (for tests and fakes).
impl From<&str> for BreakerOpen {
    fn from(name: &str) -> Self {
        Self {
            name: name.into(),
            retry_after: Duration::ZERO,
        }
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is open: retry after {:?}",
            self.name, self.retry_after
        )
    }
}

impl std::error::Error for BreakerOpen {}

/// A circuit breaker. Cheap to clone: clones share one state.
///
/// Get a shared one by name from a [`BreakerRegistry`] (usually
/// [`BreakerRegistry::global`]), or make a private one with [`CircuitBreaker::new`].
///
/// ```
/// use dtx::breaker::{BreakerConfig, BreakerOpen, BreakerState, CircuitBreaker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let breaker = CircuitBreaker::new("geo", BreakerConfig::new().consecutive_failures(1));
/// let answer = breaker.call(|| async { Ok::<_, BreakerOpen>(42) }).await;
/// assert_eq!(answer, Ok(42));
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # });
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    config: BreakerConfig,
    machine: Mutex<Machine>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl CircuitBreaker {
    /// A breaker of its own, in no registry (two `new` breakers with one name do not share
    /// state; use [`BreakerRegistry::breaker`] for that).
    ///
    /// ```
    /// let breaker = dtx::breaker::CircuitBreaker::new("own", dtx::breaker::BreakerConfig::new());
    /// assert_eq!(breaker.name(), "own");
    /// ```
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        let name = name.into();
        telemetry::state(&name, BreakerState::Closed);
        Self {
            inner: Arc::new(Inner {
                name,
                config,
                machine: Mutex::new(Machine::new(config, Instant::now())),
            }),
        }
    }

    /// The breaker's name.
    ///
    /// ```
    /// # let breaker = dtx::breaker::CircuitBreaker::new("own", dtx::breaker::BreakerConfig::new());
    /// assert_eq!(breaker.name(), "own");
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The breaker's configuration.
    ///
    /// ```
    /// # use dtx::breaker::{BreakerConfig, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("own", BreakerConfig::new().half_open_probes(2));
    /// assert_eq!(breaker.config().probes(), 2);
    /// ```
    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }

    /// Where the breaker stands now (an open breaker whose period is over reads half-open).
    ///
    /// ```
    /// # use dtx::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("own", BreakerConfig::new());
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// ```
    pub fn state(&self) -> BreakerState {
        self.machine().state(Instant::now())
    }

    /// Runs `call` if the breaker lets it through, and records its outcome: every `Err` is a
    /// failure. Fails fast with `E::from(`[`BreakerOpen`]`)` otherwise, without calling.
    ///
    /// ```
    /// # use dtx::breaker::{BreakerConfig, BreakerOpen, CircuitBreaker};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let breaker = CircuitBreaker::new("own", BreakerConfig::new());
    /// assert_eq!(breaker.call(|| async { Ok::<_, BreakerOpen>(1) }).await, Ok(1));
    /// # });
    /// ```
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<BreakerOpen>,
    {
        self.call_counting(|_| true, call).await
    }

    /// [`call`](Self::call), counting as failures only the errors `is_failure` accepts (a
    /// refused payment is an answer, not an outage).
    ///
    /// ```
    /// # use dtx::breaker::{BreakerConfig, BreakerOpen, BreakerState, CircuitBreaker};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// #[derive(Debug)]
    /// enum Error { Declined, Open(BreakerOpen) }
    /// impl From<BreakerOpen> for Error { fn from(open: BreakerOpen) -> Self { Self::Open(open) } }
    ///
    /// let breaker = CircuitBreaker::new("own", BreakerConfig::new().consecutive_failures(1));
    /// let declined = breaker
    ///     .call_counting(|e| !matches!(e, Error::Declined), || async { Err::<(), _>(Error::Declined) })
    ///     .await;
    /// assert!(matches!(declined, Err(Error::Declined)));
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// # });
    /// ```
    pub async fn call_counting<T, E, F, Fut>(
        &self,
        is_failure: impl FnOnce(&E) -> bool,
        call: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<BreakerOpen>,
    {
        let permit = self.try_acquire()?;
        let result = call().await;
        permit.record(&result, is_failure);
        result
    }

    /// Asks to make one call: a [`Permit`] to report its outcome with, or [`BreakerOpen`].
    /// For callers that cannot wrap the call in a closure.
    ///
    /// ```
    /// # use dtx::breaker::{BreakerConfig, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("own", BreakerConfig::new());
    /// let permit = breaker.try_acquire().expect("closed");
    /// permit.success();
    /// ```
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let (admission, transition) = self.machine().acquire(Instant::now());
        if let Some(transition) = transition {
            telemetry::transition(&self.inner.name, transition);
        }
        match admission {
            Admission::Admitted { generation } => Ok(Permit {
                breaker: self.clone(),
                generation,
                recorded: false,
            }),
            Admission::Rejected { retry_after } => {
                telemetry::rejected(&self.inner.name);
                Err(BreakerOpen {
                    name: Arc::clone(&self.inner.name),
                    retry_after,
                })
            }
        }
    }

    fn record(&self, generation: u64, failed: Option<bool>) {
        let transition = self.machine().record(generation, failed, Instant::now());
        if let Some(transition) = transition {
            telemetry::transition(&self.inner.name, transition);
        }
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        self.inner
            .machine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Leave to make one call through a [`CircuitBreaker`]; report how it went with
/// [`success`](Self::success), [`failure`](Self::failure) or [`record`](Self::record). A permit
/// dropped without a report (a cancelled call) counts neither way and frees its probe slot.
///
/// ```
/// # use dtx::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
/// let breaker = CircuitBreaker::new("own", BreakerConfig::new().consecutive_failures(1));
/// breaker.try_acquire().unwrap().failure();
/// assert_eq!(breaker.state(), BreakerState::Open);
/// ```
#[must_use = "report the call's outcome with `success`, `failure` or `record`"]
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    recorded: bool,
}

impl Permit {
    /// The call succeeded.
    ///
    /// ```
    /// # let breaker = dtx::breaker::CircuitBreaker::new("own", dtx::breaker::BreakerConfig::new());
    /// breaker.try_acquire().unwrap().success();
    /// ```
    pub fn success(self) {
        self.finish(false);
    }

    /// The call failed.
    ///
    /// ```
    /// # let breaker = dtx::breaker::CircuitBreaker::new("own", dtx::breaker::BreakerConfig::new());
    /// breaker.try_acquire().unwrap().failure();
    /// ```
    pub fn failure(self) {
        self.finish(true);
    }

    /// Records a result: an `Err` that `is_failure` accepts is a failure, anything else a
    /// success.
    ///
    /// ```
    /// # let breaker = dtx::breaker::CircuitBreaker::new("own", dtx::breaker::BreakerConfig::new());
    /// let result: Result<u32, String> = Ok(1);
    /// breaker.try_acquire().unwrap().record(&result, |_| true);
    /// ```
    pub fn record<T, E>(self, result: &Result<T, E>, is_failure: impl FnOnce(&E) -> bool) {
        let failed = result.as_ref().err().is_some_and(is_failure);
        self.finish(failed);
    }

    fn finish(mut self, failed: bool) {
        self.recorded = true;
        self.breaker.record(self.generation, Some(failed));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.generation, None);
        }
    }
}

/// What `#[dtx::circuit_breaker]` expands to: a call site's breaker, found once.
#[doc(hidden)]
pub mod __private {
    use super::{BreakerConfig, BreakerRegistry, CircuitBreaker};
    use std::sync::OnceLock;

    /// The breaker of one call site of the global registry, looked up on first use.
    pub struct BreakerSite {
        name: &'static str,
        config: fn() -> BreakerConfig,
        breaker: OnceLock<CircuitBreaker>,
    }

    impl BreakerSite {
        /// The site of breaker `name`.
        pub const fn new(name: &'static str, config: fn() -> BreakerConfig) -> Self {
            Self {
                name,
                config,
                breaker: OnceLock::new(),
            }
        }

        /// The breaker.
        pub fn get(&self) -> &CircuitBreaker {
            self.breaker
                .get_or_init(|| BreakerRegistry::global().breaker(self.name, self.config))
        }
    }

    /// Breaker `name` of `registry`.
    pub fn breaker_in(
        registry: &BreakerRegistry,
        name: &'static str,
        config: fn() -> BreakerConfig,
    ) -> CircuitBreaker {
        registry.breaker(name, config)
    }

    /// Every error is a failure.
    pub fn every_error<E>(_: &E) -> bool {
        true
    }

    /// Requires the function to return a `Result`.
    #[diagnostic::on_unimplemented(
        message = "`#[dtx::circuit_breaker]` and `#[dtx::retry]` need a function returning `Result<T, E>`, not `{Self}`",
        label = "not a `Result`",
        note = "return `Result<T, E>`: the breaker counts and the retry inspects its `Err`s"
    )]
    pub trait CallResult {
        /// The error type.
        type Error;
        /// The error, if any.
        fn error(&self) -> Option<&Self::Error>;
        /// An `Err`.
        fn from_error(error: Self::Error) -> Self;
    }

    impl<T, E> CallResult for Result<T, E> {
        type Error = E;
        fn error(&self) -> Option<&E> {
            self.as_ref().err()
        }
        fn from_error(error: E) -> Self {
            Err(error)
        }
    }

    /// Requires the error type to report an open breaker.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot report an open circuit breaker: it needs `From<dtx::breaker::BreakerOpen>`",
        label = "the function returns this error when the breaker is open",
        note = "add a variant `#[error(transparent)] Open(#[from] dtx::breaker::BreakerOpen)`, or `impl From<dtx::breaker::BreakerOpen> for {Self}`"
    )]
    pub trait OpenError: From<super::BreakerOpen> {}
    impl<E: From<super::BreakerOpen>> OpenError for E {}

    /// Called under the return type's span.
    pub fn assert_result<R: CallResult>() {}

    /// What the function returns when the breaker refuses the call.
    pub fn rejected<R: CallResult>(open: super::BreakerOpen) -> R
    where
        R::Error: OpenError,
    {
        R::from_error(open.into())
    }

    /// Records the call's result on its permit.
    pub fn record<R: CallResult>(
        permit: super::Permit,
        result: &R,
        is_failure: impl FnOnce(&R::Error) -> bool,
    ) {
        let failed = result.error().is_some_and(is_failure);
        if failed {
            permit.failure();
        } else {
            permit.success();
        }
    }
}

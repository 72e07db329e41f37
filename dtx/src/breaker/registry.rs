//! Breakers shared by name.

use super::{BreakerConfig, BreakerState, CircuitBreaker};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Circuit breakers by name: every call site that asks for one name gets one breaker.
///
/// [`BreakerRegistry::global`] is the process's registry, used by
/// [`#[dtx::circuit_breaker]`](macro@crate::circuit_breaker) unless the attribute names another
/// (`registry = ..`); make your own with [`BreakerRegistry::new`] to isolate tests.
///
/// ```
/// use dtx::breaker::{BreakerConfig, BreakerRegistry};
///
/// let registry = BreakerRegistry::new();
/// let a = registry.breaker("stock", || BreakerConfig::new().consecutive_failures(2));
/// let b = registry.breaker("stock", BreakerConfig::new);
/// a.try_acquire().unwrap().failure();
/// b.try_acquire().unwrap().failure();
/// assert_eq!(a.state(), dtx::breaker::BreakerState::Open, "one breaker, two handles");
/// assert_eq!(registry.states(), [("stock".to_owned(), dtx::breaker::BreakerState::Open)]);
/// ```
#[derive(Debug, Default)]
pub struct BreakerRegistry {
    breakers: Mutex<BTreeMap<String, CircuitBreaker>>,
}

impl BreakerRegistry {
    /// An empty registry.
    ///
    /// ```
    /// assert!(dtx::breaker::BreakerRegistry::new().states().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's registry.
    ///
    /// ```
    /// let breaker = dtx::breaker::BreakerRegistry::global().breaker("docs.global", Default::default);
    /// assert_eq!(breaker.name(), "docs.global");
    /// ```
    pub fn global() -> &'static Self {
        static GLOBAL: OnceLock<BreakerRegistry> = OnceLock::new();
        GLOBAL.get_or_init(Self::new)
    }

    /// Breaker `name`, made with `config()` if it does not exist yet. A later call site that
    /// asks with another configuration gets the existing breaker, and a warning is logged (so
    /// `config` runs on every call: keep it cheap, or keep the breaker).
    ///
    /// ```
    /// # use dtx::breaker::{BreakerConfig, BreakerRegistry};
    /// let registry = BreakerRegistry::new();
    /// let breaker = registry.breaker("mail", || BreakerConfig::new().half_open_probes(2));
    /// assert_eq!(breaker.config().probes(), 2);
    /// ```
    pub fn breaker(&self, name: &str, config: impl FnOnce() -> BreakerConfig) -> CircuitBreaker {
        let config = config();
        let mut breakers = self.lock();
        if let Some(existing) = breakers.get(name) {
            if *existing.config() != config {
                tracing::warn!(
                    target: "dtx::breaker",
                    breaker = name,
                    "circuit breaker `{name}` is configured differently at two call sites; \
                     the first configuration is used",
                );
            }
            return existing.clone();
        }
        let breaker = CircuitBreaker::new(name, config);
        breakers.insert(name.to_owned(), breaker.clone());
        breaker
    }

    /// Breaker `name`, if some call site made it.
    ///
    /// ```
    /// assert!(dtx::breaker::BreakerRegistry::new().get("nothing").is_none());
    /// ```
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        self.lock().get(name).cloned()
    }

    /// Every breaker's name and state, sorted by name (for health checks and dashboards).
    ///
    /// ```
    /// let registry = dtx::breaker::BreakerRegistry::new();
    /// registry.breaker("b", Default::default);
    /// registry.breaker("a", Default::default);
    /// let names: Vec<_> = registry.states().into_iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// ```
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        self.lock()
            .iter()
            .map(|(name, breaker)| (name.clone(), breaker.state()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CircuitBreaker>> {
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

//! Retries: they stop at their limit, return a non-retryable error at once, wait at least what
//! an error asks for, and compose with the breaker (each attempt through it) and with
//! `#[dtx::trace]` (one span over all attempts).
//!
//! Backoff pauses pass on tokio's paused clock, which jumps to the next timer when idle.
#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::breaker::{BreakerOpen, BreakerRegistry, BreakerState};
use dtx::{Backoff, Jitter};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, PartialEq, thiserror::Error)]
enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("declined")]
    Declined,
    #[error(transparent)]
    Open(#[from] BreakerOpen),
}

impl CallError {
    fn is_transient(&self) -> bool {
        !matches!(self, Self::Declined)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Open(open) => Some(open.retry_after()),
            _ => None,
        }
    }
}

const QUICK: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(1),
    Jitter::Equal,
);

static TIMEOUTS: AtomicU32 = AtomicU32::new(0);

#[dtx::retry(attempts = 4, backoff = QUICK, when = CallError::is_transient)]
async fn always_times_out() -> Result<(), CallError> {
    TIMEOUTS.fetch_add(1, Ordering::SeqCst);
    Err(CallError::Timeout)
}

#[tokio::test(start_paused = true)]
async fn stops_at_its_limit_with_the_last_error() {
    let start = Instant::now();
    assert_eq!(always_times_out().await, Err(CallError::Timeout));
    assert_eq!(TIMEOUTS.load(Ordering::SeqCst), 4, "4 calls in all");
    // Equal jitter: each pause is at least half its ceiling (100, 200, 400 ms).
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_millis(700), "{waited:?}");
}

static DECLINES: AtomicU32 = AtomicU32::new(0);

#[dtx::retry(attempts = 4, backoff = QUICK, when = CallError::is_transient)]
async fn declined() -> Result<(), CallError> {
    DECLINES.fetch_add(1, Ordering::SeqCst);
    Err(CallError::Declined)
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_error_returns_at_once() {
    let start = Instant::now();
    assert_eq!(declined().await, Err(CallError::Declined));
    assert_eq!(DECLINES.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

struct Client {
    failures_left: AtomicU32,
    calls: AtomicU32,
}

impl Client {
    #[dtx::retry(attempts = 5)]
    async fn fetch(&self, sku: &str) -> Result<String, CallError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(CallError::Timeout);
        }
        Ok(format!("{sku}: 7 left"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_method_succeeds_after_transient_failures() {
    let client = Client {
        failures_left: AtomicU32::new(2),
        calls: AtomicU32::new(0),
    };
    assert_eq!(client.fetch("sku-1").await.unwrap(), "sku-1: 7 left");
    assert_eq!(client.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_function_form_waits_at_least_what_the_error_asks() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result = QUICK
        .retry(3)
        .when(CallError::is_transient)
        .retry_after(|_: &CallError| Some(Duration::from_secs(5)))
        .run(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(CallError::Timeout)
        })
        .await;
    assert_eq!(result, Err(CallError::Timeout));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "two pauses of 5 s"
    );
}

static PAYMENTS_CALLS: AtomicU32 = AtomicU32::new(0);

// The breaker above the retry: each attempt goes through the breaker.
#[dtx::circuit_breaker(name = "tests.retry.payments", failure_threshold = 2, open_secs = 10)]
#[dtx::retry(attempts = 5, backoff = QUICK, when = CallError::is_transient, retry_after = CallError::retry_after)]
async fn pay() -> Result<u32, CallError> {
    let call = PAYMENTS_CALLS.fetch_add(1, Ordering::SeqCst);
    if call < 2 {
        Err(CallError::Timeout)
    } else {
        Ok(call)
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_out_an_open_breaker_then_probes() {
    let start = Instant::now();
    // Two timeouts open the breaker; the third attempt fails fast and asks for 10 s; the fourth
    // is the half-open probe, which succeeds.
    assert_eq!(pay().await, Ok(2));
    assert_eq!(
        PAYMENTS_CALLS.load(Ordering::SeqCst),
        3,
        "the open breaker did not call"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let breaker = BreakerRegistry::global()
        .get("tests.retry.payments")
        .expect("made");
    assert_eq!(breaker.state(), BreakerState::Closed);
}

static TRACED_CALLS: AtomicU32 = AtomicU32::new(0);

#[dtx::retry(attempts = 3, backoff = QUICK)]
#[dtx::trace(name = "tests.retry.traced")]
async fn traced() -> Result<(), CallError> {
    TRACED_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(CallError::Timeout)
}

#[dtx::trace(name = "tests.retry.per_attempt")]
#[dtx::retry(attempts = 3, backoff = QUICK)]
async fn traced_per_attempt() -> Result<(), CallError> {
    Err(CallError::Timeout)
}

/// Counts the spans opened with a given name.
struct SpanCounter(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanCounter {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.lock().unwrap().push(attrs.metadata().name());
    }
}

#[tokio::test(start_paused = true)]
async fn a_trace_below_the_retry_is_one_span_over_all_attempts() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let spans = std::sync::Arc::default();
    let subscriber =
        tracing_subscriber::registry().with(SpanCounter(std::sync::Arc::clone(&spans)));
    let _guard = tracing::subscriber::set_default(subscriber);
    assert!(traced().await.is_err());
    assert!(traced_per_attempt().await.is_err());
    assert_eq!(TRACED_CALLS.load(Ordering::SeqCst), 3);
    let spans = spans.lock().unwrap().clone();
    let count = |name: &str| spans.iter().filter(|s| **s == name).count();
    assert_eq!(count("tests.retry.traced"), 1, "{spans:?}");
    assert_eq!(count("tests.retry.per_attempt"), 3, "{spans:?}");
}

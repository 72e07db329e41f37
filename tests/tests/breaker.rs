//! Circuit breakers: they open after their threshold, fail fast without calling while open,
//! let exactly their probes through when half-open (under concurrent callers), close on a
//! probe's success and reopen on its failure; one name is one breaker across call sites; and a
//! saga step behind an open breaker is retried later, not compensated.
//!
//! Open periods pass on tokio's paused clock (or are zero), never by sleeping.
#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(
    clippy::unused_async,
    reason = "saga steps are async, some have nothing to await"
)]

use dtx::breaker::{BreakerConfig, BreakerOpen, BreakerRegistry, BreakerState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::advance;

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("service down")]
    Down,
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Open(#[from] BreakerOpen),
}

impl CallError {
    fn is_outage(&self) -> bool {
        !matches!(self, Self::NotFound)
    }
}

fn breaker(name: &str) -> dtx::breaker::CircuitBreaker {
    BreakerRegistry::global()
        .get(name)
        .expect("made by its first call")
}

static INVENTORY_CALLS: AtomicU32 = AtomicU32::new(0);

#[dtx::circuit_breaker(name = "tests.inventory", failure_threshold = 3, open_secs = 30)]
async fn inventory(fail: bool) -> Result<u32, CallError> {
    INVENTORY_CALLS.fetch_add(1, Ordering::SeqCst);
    if fail { Err(CallError::Down) } else { Ok(7) }
}

#[tokio::test(start_paused = true)]
async fn opens_after_the_threshold_then_probes_closes_and_reopens() {
    let calls = || INVENTORY_CALLS.load(Ordering::SeqCst);
    // A success between failures resets the count.
    assert!(inventory(true).await.is_err());
    assert!(inventory(true).await.is_err());
    assert_eq!(inventory(false).await.unwrap(), 7);
    assert!(inventory(true).await.is_err());
    assert!(inventory(true).await.is_err());
    assert_eq!(breaker("tests.inventory").state(), BreakerState::Closed);
    assert!(matches!(inventory(true).await, Err(CallError::Down)));
    assert_eq!(breaker("tests.inventory").state(), BreakerState::Open);
    assert_eq!(calls(), 6);

    // Open: fails fast, the function is not called, and says when to come back.
    for _ in 0..10 {
        match inventory(false).await {
            Err(CallError::Open(open)) => {
                assert_eq!(open.name(), "tests.inventory");
                assert_eq!(open.retry_after(), Duration::from_secs(30));
            }
            other => panic!("expected a fast failure, got {other:?}"),
        }
    }
    assert_eq!(calls(), 6, "not called while open");
    advance(Duration::from_secs(29)).await;
    assert!(matches!(inventory(false).await, Err(CallError::Open(_))));
    assert_eq!(calls(), 6);

    // Half-open: the probe fails and the breaker opens again for a full period.
    advance(Duration::from_secs(1)).await;
    assert_eq!(breaker("tests.inventory").state(), BreakerState::HalfOpen);
    assert!(matches!(inventory(true).await, Err(CallError::Down)));
    assert_eq!(calls(), 7, "one probe went through");
    assert_eq!(breaker("tests.inventory").state(), BreakerState::Open);
    assert!(matches!(inventory(false).await, Err(CallError::Open(_))));
    assert_eq!(calls(), 7);

    // Half-open again: the probe succeeds and the breaker closes.
    advance(Duration::from_secs(30)).await;
    assert_eq!(inventory(false).await.unwrap(), 7);
    assert_eq!(breaker("tests.inventory").state(), BreakerState::Closed);
    assert_eq!(inventory(false).await.unwrap(), 7);
    assert_eq!(calls(), 9);
}

static PROBES_ENTERED: AtomicU32 = AtomicU32::new(0);
static PROBES_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

// Open for no time: the call after the one that opens it finds the breaker half-open.
#[dtx::circuit_breaker(
    name = "tests.probes",
    failure_threshold = 1,
    open_secs = 0,
    half_open_probes = 3
)]
async fn probed(fail: bool) -> Result<(), CallError> {
    if fail {
        return Err(CallError::Down);
    }
    PROBES_ENTERED.fetch_add(1, Ordering::SeqCst);
    PROBES_GATE.acquire().await.expect("never closed").forget();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_lets_exactly_its_probes_through_under_32_concurrent_callers() {
    assert!(matches!(probed(true).await, Err(CallError::Down)));
    assert_eq!(breaker("tests.probes").state(), BreakerState::HalfOpen);

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..32 {
        let start = std::sync::Arc::clone(&start);
        let done = done.clone();
        tokio::spawn(async move {
            start.wait().await;
            done.send(probed(false).await).expect("the test waits");
        });
    }
    // 29 callers fail fast while the 3 probes are held inside the function.
    for _ in 0..29 {
        let result = tokio::time::timeout(Duration::from_secs(30), results.recv())
            .await
            .expect("hung: more than 3 probes went through")
            .expect("a result");
        assert!(matches!(result, Err(CallError::Open(_))), "{result:?}");
    }
    assert_eq!(PROBES_ENTERED.load(Ordering::SeqCst), 3);
    assert_eq!(breaker("tests.probes").state(), BreakerState::HalfOpen);

    // The three probes succeed: the breaker closes.
    PROBES_GATE.add_permits(3);
    for _ in 0..3 {
        assert!(results.recv().await.expect("a result").is_ok());
    }
    assert_eq!(breaker("tests.probes").state(), BreakerState::Closed);
    assert_eq!(PROBES_ENTERED.load(Ordering::SeqCst), 3);
}

#[test]
fn half_open_admits_exactly_its_probes_across_32_threads() {
    let breaker = dtx::breaker::CircuitBreaker::new(
        "tests.threads",
        BreakerConfig::new()
            .consecutive_failures(1)
            .open_for(Duration::ZERO)
            .half_open_probes(5),
    );
    breaker.try_acquire().expect("closed").failure();
    let start = std::sync::Barrier::new(32);
    let permits: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    breaker.try_acquire()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let (admitted, refused): (Vec<_>, Vec<_>) = permits.into_iter().partition(Result::is_ok);
    assert_eq!((admitted.len(), refused.len()), (5, 27));
    for permit in admitted {
        permit.expect("admitted").success();
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

static STOCK_CALLS: AtomicU32 = AtomicU32::new(0);

#[dtx::circuit_breaker(name = "tests.stock", failure_threshold = 2)]
async fn reserve(fail: bool) -> Result<(), CallError> {
    STOCK_CALLS.fetch_add(1, Ordering::SeqCst);
    if fail { Err(CallError::Down) } else { Ok(()) }
}

#[dtx::circuit_breaker(name = "tests.stock", failure_threshold = 2)]
async fn release() -> Result<(), CallError> {
    STOCK_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn one_name_is_one_breaker_across_call_sites() {
    assert!(reserve(true).await.is_err());
    assert!(reserve(true).await.is_err());
    assert!(
        matches!(release().await, Err(CallError::Open(open)) if open.name() == "tests.stock"),
        "opened by the other function"
    );
    assert_eq!(
        STOCK_CALLS.load(Ordering::SeqCst),
        2,
        "`release` did not run"
    );
}

static LOOKUPS: AtomicU32 = AtomicU32::new(0);

#[dtx::circuit_breaker(name = "tests.lookup", failure_threshold = 1, is_failure = CallError::is_outage)]
async fn lookup(found: bool) -> Result<(), CallError> {
    LOOKUPS.fetch_add(1, Ordering::SeqCst);
    if found {
        Ok(())
    } else {
        Err(CallError::NotFound)
    }
}

#[tokio::test]
async fn errors_the_predicate_refuses_do_not_count() {
    for _ in 0..5 {
        assert!(matches!(lookup(false).await, Err(CallError::NotFound)));
    }
    assert_eq!(breaker("tests.lookup").state(), BreakerState::Closed);
    assert_eq!(LOOKUPS.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_needs_its_minimum_of_calls_in_the_window() {
    let breaker = BreakerRegistry::new().breaker("rate", || {
        BreakerConfig::new().failure_rate(0.5, Duration::from_secs(10), 4)
    });
    let outcome = |failed: bool| {
        let permit = breaker.try_acquire().expect("closed");
        if failed {
            permit.failure();
        } else {
            permit.success();
        }
    };
    outcome(true);
    outcome(true);
    outcome(true);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "3 calls, under the minimum"
    );
    advance(Duration::from_secs(11)).await;
    outcome(false);
    outcome(false);
    outcome(true);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the old failures left the window"
    );
    outcome(true);
    assert_eq!(breaker.state(), BreakerState::Open, "2 of 4 failed");
}

mod saga {
    use super::CallError;
    use dtx::breaker::BreakerState;
    use dtx::saga::testing::SagaTest;
    use dtx::saga::{SagaStatus, StepError, WorkerOptions};
    use serde::{Deserialize, Serialize};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    static PAYMENTS_DOWN: AtomicBool = AtomicBool::new(true);
    static CHARGES: AtomicU32 = AtomicU32::new(0);

    #[dtx::circuit_breaker(name = "tests.saga.payments", failure_threshold = 1, open_secs = 45)]
    async fn charge() -> Result<(), CallError> {
        CHARGES.fetch_add(1, Ordering::SeqCst);
        if PAYMENTS_DOWN.load(Ordering::SeqCst) {
            Err(CallError::Down)
        } else {
            Ok(())
        }
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Checkout {
        reserved: bool,
        paid: bool,
    }

    #[dtx::saga(name = "tests.BreakerCheckout", max_retries = 3)]
    impl Checkout {
        #[step(compensate = release)]
        async fn reserve(&mut self) -> Result<(), StepError> {
            self.reserved = true;
            Ok(())
        }

        async fn release(&mut self) -> Result<(), StepError> {
            self.reserved = false;
            Ok(())
        }

        #[step]
        async fn pay(&mut self) -> Result<(), StepError> {
            charge().await?; // `BreakerOpen`, like any error, is a transient `StepError`
            self.paid = true;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_behind_an_open_breaker_is_retried_later_not_compensated() {
        assert!(charge().await.is_err(), "the payment service is down");
        let breaker = super::breaker("tests.saga.payments");
        assert_eq!(breaker.state(), BreakerState::Open);

        let test = SagaTest::<Checkout>::new();
        let id = test.start(Checkout::default()).await;
        let worker = test.orchestrator().worker(WorkerOptions::default());
        worker.run_until_idle().await.unwrap();
        let saga = test.status(id).await;
        assert_eq!(saga.status, SagaStatus::Running, "{:?}", saga.last_error);
        assert_eq!(test.attempts(id, "pay"), 1);
        assert_eq!(
            CHARGES.load(Ordering::SeqCst),
            1,
            "failed fast: not charged again"
        );
        assert!(
            saga.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("is open"),
            "{:?}",
            saga.last_error
        );
        assert_eq!(test.ran(id), ["reserve"], "nothing compensated");

        // The service comes back and the open period passes: the retry goes through.
        PAYMENTS_DOWN.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(45)).await;
        test.advance(Duration::from_secs(1)).await;
        test.assert_status(id, SagaStatus::Completed).await;
        assert_eq!(test.ran(id), ["reserve", "pay"]);
        assert_eq!(test.attempts(id, "pay"), 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}

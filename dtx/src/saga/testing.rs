//! Testing sagas (feature `testing`): [`SagaTest`], a given/when/then harness with a manual
//! clock and failure injection, and the saga-store contract suite every backend passes.

#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic on broken expectations by design"
)]
#![allow(clippy::unwrap_used, reason = "test code")]

use super::{
    ManualClock, MemorySagaStore, Saga, SagaDefinition, SagaError, SagaEvent, SagaOrchestrator,
    SagaRecord, SagaStatus, SagaStore, SagaWorker, StepContext, StepError, StepFn, WorkerOptions,
};
use crate::{MemoryEventStore, SharedEventStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

pub mod contract;

/// How an injected failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Fail the first `n` attempts (transiently), then run normally.
    Times(u32),
    /// Fail every attempt (transiently).
    Always,
    /// Fail at once, permanently (no retries).
    Permanent,
}

type Log = Arc<Mutex<Vec<(Uuid, String)>>>;

/// A given/when/then harness for one saga type: an in-memory (or given) store, a manual clock,
/// failure injection, and a log of which steps and compensations ran, in order.
///
/// ```
/// use dtx::saga::testing::{Failure, SagaTest};
/// use dtx::saga::{SagaStatus, StepError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Order { reserved: bool, paid: bool }
///
/// #[dtx::saga(max_retries = 2)]
/// impl Order {
///     #[step(compensate = release)]
///     async fn reserve(&mut self) -> Result<(), StepError> { self.reserved = true; Ok(()) }
///     async fn release(&mut self) -> Result<(), StepError> { self.reserved = false; Ok(()) }
///     #[step]
///     async fn pay(&mut self) -> Result<(), StepError> { self.paid = true; Ok(()) }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let test = SagaTest::<Order>::new().fail_step("pay", Failure::Always);
/// let id = test.start(Order::default()).await;
/// test.run().await;
/// test.assert_status(id, SagaStatus::Compensated).await;
/// assert_eq!(test.ran(id), ["reserve", "undo reserve"]);
/// assert_eq!(test.attempts(id, "pay"), 3); // the first attempt and 2 retries
/// # });
/// ```
pub struct SagaTest<S: Saga> {
    definition: SagaDefinition<S>,
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
    clock: ManualClock,
    log: Log,
    attempts: Arc<Mutex<Vec<(Uuid, String)>>>,
    orchestrator: Mutex<Option<(SagaOrchestrator, SagaWorker)>>,
    state: Vec<
        Arc<dyn Fn(super::SagaOrchestratorBuilder) -> super::SagaOrchestratorBuilder + Send + Sync>,
    >,
}

impl<S: Saga> std::fmt::Debug for SagaTest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaTest")
            .field("saga", &S::NAME)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> Default for SagaTest<S> {
    fn default() -> Self {
        Self::new()
    }
}

fn logged<D: Send + 'static>(f: StepFn<D>, log: Log, label: String) -> StepFn<D> {
    Arc::new(move |data: &mut D, ctx: &StepContext| {
        let f = Arc::clone(&f);
        let log = Arc::clone(&log);
        let label = label.clone();
        Box::pin(async move {
            let result = f(data, ctx).await;
            if result.is_ok() {
                log.lock().unwrap().push((ctx.saga_id(), label));
            }
            result
        })
    })
}

fn failing<D: Send + 'static>(f: StepFn<D>, failure: Failure) -> StepFn<D> {
    let failed = Arc::new(AtomicU32::new(0));
    Arc::new(move |data: &mut D, ctx: &StepContext| {
        let f = Arc::clone(&f);
        let failed = Arc::clone(&failed);
        Box::pin(async move {
            match failure {
                Failure::Permanent => Err(StepError::permanent("injected permanent failure")),
                Failure::Always => Err(StepError::transient("injected failure")),
                Failure::Times(n) if failed.fetch_add(1, Ordering::SeqCst) < n => {
                    Err(StepError::transient("injected failure"))
                }
                Failure::Times(_) => f(data, ctx).await,
            }
        })
    })
}

impl<S: Saga> SagaTest<S> {
    /// A harness on the in-memory stores.
    pub fn new() -> Self {
        Self::with_stores(
            Arc::new(MemorySagaStore::new()),
            Arc::new(MemoryEventStore::new()),
        )
    }

    /// A harness on the given stores (to run the same scenario on PostgreSQL).
    pub fn with_stores(store: Arc<dyn SagaStore>, events: SharedEventStore) -> Self {
        let log: Log = Arc::default();
        let attempts: Log = Arc::default();
        let mut definition = S::definition();
        for name in definition.step_names() {
            definition.wrap_step(name, |f| logged(f, Arc::clone(&log), name.to_owned()));
            definition.wrap_compensation(name, |f| {
                logged(f, Arc::clone(&log), format!("undo {name}"))
            });
        }
        Self {
            definition,
            store,
            events,
            clock: ManualClock::default(),
            log,
            attempts,
            orchestrator: Mutex::new(None),
            state: Vec::new(),
        }
    }

    /// Shared state the steps read with `StepContext::state` (fake service clients).
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.state.push(Arc::new(move |b| b.state(state.clone())));
        self
    }

    /// Injects failures into a step's action.
    #[must_use]
    pub fn fail_step(mut self, step: &str, failure: Failure) -> Self {
        assert!(
            self.definition.wrap_step(step, |f| failing(f, failure)),
            "no step `{step}`"
        );
        self
    }

    /// Injects failures into a step's compensation.
    #[must_use]
    pub fn fail_compensation(mut self, step: &str, failure: Failure) -> Self {
        assert!(
            self.definition
                .wrap_compensation(step, |f| failing(f, failure)),
            "step `{step}` has no compensation"
        );
        self
    }

    fn runtime(&self) -> (SagaOrchestrator, SagaWorker) {
        let mut slot = self.orchestrator.lock().unwrap();
        slot.get_or_insert_with(|| {
            // Count attempts outermost, around injected failures.
            let mut definition = self.definition.clone();
            for name in definition.step_names() {
                definition.wrap_step(name, |f| {
                    counted(f, Arc::clone(&self.attempts), name.to_owned())
                });
            }
            let mut builder = SagaOrchestrator::builder(Arc::clone(&self.store))
                .events(Arc::clone(&self.events))
                .clock(Arc::new(self.clock.clone()))
                .backoff(Duration::from_millis(10), Duration::from_millis(40))
                .saga(definition);
            for state in &self.state {
                builder = state(builder);
            }
            let orchestrator = builder.build().unwrap();
            let worker = orchestrator.worker(WorkerOptions {
                lease: Duration::from_secs(30),
                ..WorkerOptions::default()
            });
            (orchestrator, worker)
        })
        .clone()
    }

    /// The orchestrator under test.
    pub fn orchestrator(&self) -> SagaOrchestrator {
        self.runtime().0
    }

    /// The manual clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Given: a started saga.
    pub async fn start(&self, data: S) -> Uuid {
        self.orchestrator().start(data).await.unwrap()
    }

    /// When: workers run every due saga, and the clock moves over retry backoffs (at most 10 s
    /// in all), until every saga is finished or waiting for an event.
    pub async fn run(&self) {
        let (orchestrator, worker) = self.runtime();
        for _ in 0..200 {
            worker.run_until_idle().await.unwrap();
            let counts = orchestrator.counts().await.unwrap();
            let moving = [SagaStatus::Running, SagaStatus::Compensating]
                .iter()
                .map(|s| counts.get(s).copied().unwrap_or(0))
                .sum::<u64>();
            if moving == 0 {
                return;
            }
            self.clock.advance(Duration::from_millis(50));
        }
    }

    /// When: time passes (then due sagas run).
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.run().await;
    }

    /// When: an external event arrives (then due sagas run).
    pub async fn deliver(&self, id: Uuid, event: SagaEvent) -> Result<(), SagaError> {
        self.orchestrator().handle_event(id, event).await?;
        self.run().await;
        Ok(())
    }

    /// The saga's state.
    pub async fn status(&self, id: Uuid) -> SagaRecord {
        self.orchestrator().status(id).await.unwrap()
    }

    /// Then: the saga is in this status.
    pub async fn assert_status(&self, id: Uuid, status: SagaStatus) {
        let saga = self.status(id).await;
        assert_eq!(saga.status, status, "saga {id}: {:?}", saga.last_error);
    }

    /// Then: the steps and compensations (as `"undo <step>"`) that completed, in order.
    pub fn ran(&self, id: Uuid) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(saga, _)| *saga == id)
            .map(|(_, label)| label.clone())
            .collect()
    }

    /// Then: how many times a step's action was attempted.
    pub fn attempts(&self, id: Uuid, step: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(saga, s)| *saga == id && s == step)
            .count()
    }
}

fn counted<D: Send + 'static>(f: StepFn<D>, log: Log, label: String) -> StepFn<D> {
    Arc::new(move |data: &mut D, ctx: &StepContext| {
        let f = Arc::clone(&f);
        log.lock().unwrap().push((ctx.saga_id(), label.clone()));
        Box::pin(async move { f(data, ctx).await })
    })
}

/// The clock's current time.
impl ManualClock {
    /// Now, for tests that call a store directly.
    pub fn now_for_tests(&self) -> chrono::DateTime<chrono::Utc> {
        use super::Clock;
        self.now()
    }
}

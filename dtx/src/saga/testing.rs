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

/// Generates one `#[tokio::test]` per saga contract case for a backend; `$stores` is an
/// expression (it may `.await`) yielding `(Arc<dyn SagaStore>, SharedEventStore)`.
#[macro_export]
macro_rules! saga_contract_tests {
    ($stores:expr) => {
        $crate::saga_contract_tests!(@cases $stores;
            completes_in_order, retry_then_success, retry_exhaustion_compensates_in_reverse,
            permanent_failure_skips_retries, failing_compensation_ends_failed_and_retries,
            deadline_triggers_compensation, awaited_event_resumes, awaited_event_timeout_compensates,
            handle_event_errors_are_typed, dead_workers_lease_expires, step_events_recorded_once);
    };
    (@cases $stores:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, events) = $stores;
                $crate::saga::testing::contract::$case(store, events).await;
            }
        )*
    };
}

/// The saga contract suite.
pub mod contract {
    use super::{Failure, SagaTest};
    use crate::saga::{SagaError, SagaEvent, SagaStatus, SagaStore, StepContext, StepError};
    use crate::{DomainEvent, SharedEventStore, StreamId};
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;
    use std::time::Duration;

    // Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
    #[doc(hidden)]
    /// The contract's saga data.
    #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    pub struct Fulfil {
        /// Set by `reserve`.
        pub reserved: bool,
        /// Set by `charge`.
        pub charged: bool,
        /// Set by `ship`.
        pub shipped: bool,
        /// The payment reference received with the awaited event.
        pub payment_ref: Option<String>,
    }

    // Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
    #[doc(hidden)]
    /// A payment confirmation delivered to the awaiting variant.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PaymentConfirmed {
        /// The payment's reference.
        pub reference: String,
    }

    // Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
    #[doc(hidden)]
    /// Recorded in the saga's stream by `ship`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Shipped {
        /// The carrier.
        pub carrier: String,
    }

    // Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
    #[doc(hidden)]
    /// The contract saga's events.
    #[derive(Debug, Clone, DomainEvent)]
    pub enum FulfilEvent {
        /// See [`Shipped`].
        Shipped(Shipped),
    }

    #[allow(clippy::unused_async, reason = "the contract's steps do no I/O")]
    #[crate::saga(crate = crate, name = "ContractFulfil", max_retries = 3, deadline_secs = 3600)]
    impl Fulfil {
        #[step(compensate = release)]
        async fn reserve(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
            self.reserved = true;
            Ok(())
        }

        async fn release(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
            self.reserved = false;
            Ok(())
        }

        #[step(compensate = refund)]
        async fn charge(&mut self) -> Result<(), StepError> {
            self.charged = true;
            Ok(())
        }

        async fn refund(&mut self) -> Result<(), StepError> {
            self.charged = false;
            Ok(())
        }

        #[step]
        async fn ship(&mut self, ctx: &StepContext) -> Result<FulfilEvent, StepError> {
            self.shipped = true;
            Ok(FulfilEvent::Shipped(Shipped {
                carrier: ctx.idempotency_key(),
            }))
        }
    }

    // Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
    #[doc(hidden)]
    /// The awaiting variant: after `request_payment` it waits for `PaymentConfirmed`.
    #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    pub struct Checkout {
        /// Set by `request_payment`.
        pub requested: bool,
        /// From the awaited event.
        pub payment_ref: Option<String>,
    }

    #[allow(clippy::unused_async, reason = "the contract's steps do no I/O")]
    #[crate::saga(crate = crate, name = "ContractCheckout")]
    impl Checkout {
        #[step(compensate = cancel_request, await_event = "PaymentConfirmed", await_timeout_secs = 60)]
        async fn request_payment(&mut self) -> Result<(), StepError> {
            self.requested = true;
            Ok(())
        }

        async fn cancel_request(&mut self) -> Result<(), StepError> {
            self.requested = false;
            Ok(())
        }

        #[step]
        async fn record_payment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
            let confirmed: PaymentConfirmed = ctx
                .event("PaymentConfirmed")
                .ok_or_else(|| StepError::permanent("no confirmation"))??;
            self.payment_ref = Some(confirmed.reference);
            Ok(())
        }
    }

    fn test(store: Arc<dyn SagaStore>, events: SharedEventStore) -> SagaTest<Fulfil> {
        SagaTest::with_stores(store, events)
    }

    /// Every step runs once, in order.
    pub async fn completes_in_order(store: Arc<dyn SagaStore>, events: SharedEventStore) {
        let t = test(store, events);
        let id = t.start(Fulfil::default()).await;
        t.run().await;
        t.assert_status(id, SagaStatus::Completed).await;
        assert_eq!(t.ran(id), ["reserve", "charge", "ship"]);
        let saga = t.status(id).await;
        assert_eq!(
            saga.completed
                .iter()
                .map(|c| c.step.as_str())
                .collect::<Vec<_>>(),
            ["reserve", "charge", "ship"]
        );
        assert_eq!(saga.data["shipped"], true);
        let listed = t
            .orchestrator()
            .list(SagaStatus::Completed, 100)
            .await
            .unwrap();
        assert!(listed.iter().any(|s| s.id == id));
    }

    /// A step that fails twice succeeds on its third attempt; nothing is compensated.
    pub async fn retry_then_success(store: Arc<dyn SagaStore>, events: SharedEventStore) {
        let t = test(store, events).fail_step("charge", Failure::Times(2));
        let id = t.start(Fulfil::default()).await;
        t.run().await;
        t.assert_status(id, SagaStatus::Completed).await;
        assert_eq!(t.attempts(id, "charge"), 3);
        assert_eq!(t.ran(id), ["reserve", "charge", "ship"]);
    }

    /// A step that keeps failing is retried `max_retries` times, then the completed steps are
    /// compensated in reverse order, and only those.
    pub async fn retry_exhaustion_compensates_in_reverse(
        store: Arc<dyn SagaStore>,
        events: SharedEventStore,
    ) {
        let t = test(store, events).fail_step("ship", Failure::Always);
        let id = t.start(Fulfil::default()).await;
        t.run().await;
        t.assert_status(id, SagaStatus::Compensated).await;
        assert_eq!(t.attempts(id, "ship"), 4, "the first attempt and 3 retries");
        assert_eq!(
            t.ran(id),
            ["reserve", "charge", "undo charge", "undo reserve"]
        );
        let saga = t.status(id).await;
        assert!(
            saga.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("ship"),
            "{saga:?}"
        );
        assert_eq!(
            (saga.data["reserved"].clone(), saga.data["charged"].clone()),
            (false.into(), false.into())
        );
    }

    /// A permanent failure compensates at once.
    pub async fn permanent_failure_skips_retries(
        store: Arc<dyn SagaStore>,
        events: SharedEventStore,
    ) {
        let t = test(store, events).fail_step("charge", Failure::Permanent);
        let id = t.start(Fulfil::default()).await;
        t.run().await;
        t.assert_status(id, SagaStatus::Compensated).await;
        assert_eq!(t.attempts(id, "charge"), 1);
        assert_eq!(
            t.ran(id),
            ["reserve", "undo reserve"],
            "no compensation for the step that failed"
        );
    }

    /// A compensation that keeps failing leaves the saga failed, visible, and retryable.
    pub async fn failing_compensation_ends_failed_and_retries(
        store: Arc<dyn SagaStore>,
        events: SharedEventStore,
    ) {
        let t = test(store, events)
            .fail_step("ship", Failure::Permanent)
            .fail_compensation("charge", Failure::Times(4));
        let id = t.start(Fulfil::default()).await;
        t.run().await;
        t.assert_status(id, SagaStatus::Failed).await;
        let saga = t.status(id).await;
        assert!(
            saga.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("compensation of `charge`"),
            "{saga:?}"
        );
        assert!(
            t.orchestrator()
                .list(SagaStatus::Failed, 100)
                .await
                .unwrap()
                .iter()
                .any(|s| s.id == id)
        );
        assert_eq!(
            t.ran(id),
            ["reserve", "charge"],
            "reserve is not undone before charge is"
        );

        // An operator retries; the compensation now succeeds (it failed 4 times).
        t.orchestrator().retry(id).await.unwrap();
        t.run().await;
        t.assert_status(id, SagaStatus::Compensated).await;
        assert_eq!(
            t.ran(id),
            ["reserve", "charge", "undo charge", "undo reserve"]
        );
        assert!(matches!(
            t.orchestrator().retry(id).await,
            Err(SagaError::NotWaiting { .. })
        ));
    }

    /// A saga past its deadline compensates.
    pub async fn deadline_triggers_compensation(
        store: Arc<dyn SagaStore>,
        events: SharedEventStore,
    ) {
        let t = test(store, events).fail_step("charge", Failure::Times(1));
        let id = t.start(Fulfil::default()).await;
        // The first attempt of `charge` fails; an hour passes before the retry is due.
        let (_, worker) = t.runtime();
        worker.run_until_idle().await.unwrap();
        assert_eq!(t.status(id).await.status, SagaStatus::Running);
        t.advance(Duration::from_secs(3601)).await;
        t.assert_status(id, SagaStatus::Compensated).await;
        assert!(
            t.status(id)
                .await
                .last_error
                .unwrap_or_default()
                .contains("deadline")
        );
        assert_eq!(t.ran(id), ["reserve", "undo reserve"]);
    }

    /// A waiting saga resumes when its event arrives, and later steps read it.
    pub async fn awaited_event_resumes(store: Arc<dyn SagaStore>, events: SharedEventStore) {
        let t = SagaTest::<Checkout>::with_stores(store, events);
        let id = t.start(Checkout::default()).await;
        t.run().await;
        let waiting = t.status(id).await;
        assert_eq!(
            (waiting.status, waiting.awaiting.as_deref()),
            (SagaStatus::Waiting, Some("PaymentConfirmed"))
        );
        t.deliver(
            id,
            SagaEvent::new(
                "PaymentConfirmed",
                &PaymentConfirmed {
                    reference: "pay-7".into(),
                },
            )
            .unwrap(),
        )
        .await
        .unwrap();
        t.assert_status(id, SagaStatus::Completed).await;
        assert_eq!(t.status(id).await.data["payment_ref"], "pay-7");
    }

    /// An awaited event that does not come in time compensates.
    pub async fn awaited_event_timeout_compensates(
        store: Arc<dyn SagaStore>,
        events: SharedEventStore,
    ) {
        let t = SagaTest::<Checkout>::with_stores(store, events);
        let id = t.start(Checkout::default()).await;
        t.run().await;
        t.advance(Duration::from_secs(30)).await;
        t.assert_status(id, SagaStatus::Waiting).await;
        t.advance(Duration::from_secs(31)).await;
        t.assert_status(id, SagaStatus::Compensated).await;
        assert!(
            t.status(id)
                .await
                .last_error
                .unwrap_or_default()
                .contains("PaymentConfirmed")
        );
        assert_eq!(t.ran(id), ["request_payment", "undo request_payment"]);
        let late = t
            .deliver(
                id,
                SagaEvent::new(
                    "PaymentConfirmed",
                    &PaymentConfirmed {
                        reference: "late".into(),
                    },
                )
                .unwrap(),
            )
            .await;
        assert!(
            matches!(
                late,
                Err(SagaError::Finished {
                    status: SagaStatus::Compensated,
                    ..
                })
            ),
            "{late:?}"
        );
    }

    /// `handle_event` for an unknown, finished or not-waiting saga is a typed error.
    pub async fn handle_event_errors_are_typed(
        store: Arc<dyn SagaStore>,
        events: SharedEventStore,
    ) {
        let t = SagaTest::<Checkout>::with_stores(store, events);
        let event = || {
            SagaEvent::new(
                "PaymentConfirmed",
                &PaymentConfirmed {
                    reference: "x".into(),
                },
            )
            .unwrap()
        };
        let unknown = uuid::Uuid::now_v7();
        assert!(
            matches!(t.orchestrator().handle_event(unknown, event()).await, Err(SagaError::NotFound { id }) if id == unknown)
        );

        let id = t.start(Checkout::default()).await;
        // Not yet waiting: the first step has not run.
        assert!(matches!(
            t.orchestrator().handle_event(id, event()).await,
            Err(SagaError::NotWaiting {
                status: SagaStatus::Running,
                ..
            })
        ));
        t.run().await;
        let wrong = SagaEvent::new("Refunded", &()).unwrap();
        assert!(matches!(
            t.orchestrator().handle_event(id, wrong).await,
            Err(SagaError::NotWaiting {
                status: SagaStatus::Waiting,
                awaiting: Some(_),
                ..
            })
        ));
        t.deliver(id, event()).await.unwrap();
        assert!(matches!(
            t.orchestrator().handle_event(id, event()).await,
            Err(SagaError::Finished {
                status: SagaStatus::Completed,
                ..
            })
        ));
    }

    /// A worker that claimed a saga and died holds it until its lease expires; then another
    /// worker finishes it, and the dead worker's late writes are refused.
    pub async fn dead_workers_lease_expires(store: Arc<dyn SagaStore>, events: SharedEventStore) {
        let t = test(Arc::clone(&store), events);
        let id = t.start(Fulfil::default()).await;
        let now = t.clock().now_for_tests();
        let claimed = store
            .claim("dead-worker", now, Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert!(claimed.iter().any(|s| s.id == id));
        assert!(
            store
                .claim("other", now, Duration::from_secs(30), 10)
                .await
                .unwrap()
                .is_empty(),
            "leased sagas are skipped"
        );

        let (_, worker) = t.runtime();
        assert_eq!(
            worker.run_until_idle().await.unwrap(),
            0,
            "nothing to claim while the lease lives"
        );
        t.assert_status(id, SagaStatus::Running).await;
        t.advance(Duration::from_secs(31)).await;
        t.assert_status(id, SagaStatus::Completed).await;

        let mut late = claimed.into_iter().find(|s| s.id == id).unwrap();
        late.version += 1;
        late.status = SagaStatus::Compensating;
        assert!(
            !store.save(&late, "dead-worker", None).await.unwrap(),
            "a lost lease refuses the write"
        );
        t.assert_status(id, SagaStatus::Completed).await;
    }

    /// Events a step returns are recorded in the saga's stream once, with the saga as causation.
    pub async fn step_events_recorded_once(store: Arc<dyn SagaStore>, events: SharedEventStore) {
        let t = test(store, Arc::clone(&events));
        let id = t.start(Fulfil::default()).await;
        t.run().await;
        let stream = StreamId::new(format!("ContractFulfil-{id}")).unwrap();
        let stored = events.read_stream(&stream, 1, 10).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].event_type, "Shipped");
        assert_eq!(stored[0].metadata.causation_id, Some(id));
        let saga = t.status(id).await;
        assert_eq!(saga.completed[2].events, vec![stored[0].event_id]);
    }
}

/// The clock's current time.
impl ManualClock {
    /// Now, for tests that call a store directly.
    pub fn now_for_tests(&self) -> chrono::DateTime<chrono::Utc> {
        use super::Clock;
        self.now()
    }
}

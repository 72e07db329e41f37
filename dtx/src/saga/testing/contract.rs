//! The saga contract suite: one scenario per guarantee of the saga runtime, run against every
//! saga store with [`saga_contract_tests!`](crate::saga_contract_tests).

mod batches;
mod versions;

pub use batches::{save_many_decides_each_save_alone, several_workers_run_each_saga_once};
pub use versions::{
    compensation_after_a_reorder_undoes_by_name, retired_or_edited_versions_park_the_saga,
    started_sagas_finish_on_their_version,
};

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
// A test fixture, not a published contract.
#[event(schema = false)]
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
pub async fn permanent_failure_skips_retries(store: Arc<dyn SagaStore>, events: SharedEventStore) {
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
pub async fn deadline_triggers_compensation(store: Arc<dyn SagaStore>, events: SharedEventStore) {
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
pub async fn handle_event_errors_are_typed(store: Arc<dyn SagaStore>, events: SharedEventStore) {
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

/// Saga data and delivered events with a NUL character (which PostgreSQL's `jsonb` refuses as
/// `\u0000`) are refused by every backend alike with [`crate::Error::Unstorable`] naming the
/// saga, and nothing is stored.
pub async fn unstorable_saga_data_is_refused(store: Arc<dyn SagaStore>, events: SharedEventStore) {
    use crate::saga::SagaRecord;
    let _ = events;
    let now = chrono::Utc::now();
    let record = SagaRecord::new(
        "Fulfil",
        serde_json::json!({"note": "a\u{0}b"}),
        now,
        None,
        None,
    );
    match store.insert(&record).await {
        Err(crate::Error::Unstorable { what, .. }) => {
            assert!(what.contains(&record.id.to_string()), "{what}");
        }
        other => panic!("NUL in saga data must be refused, got {other:?}"),
    }
    assert!(store.get(record.id).await.unwrap().is_none());

    let record = SagaRecord::new("Fulfil", serde_json::json!({"note": "ok"}), now, None, None);
    store.insert(&record).await.unwrap();
    let event = SagaEvent::new("PaymentConfirmed", &serde_json::json!({"\u{0}": 1})).unwrap();
    assert!(matches!(
        store.deliver(record.id, &event, now).await,
        Err(crate::Error::Unstorable { .. })
    ));
    let stored = store.get(record.id).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.received.len()), (1, 0), "unchanged");
}

/// A saga inserted under an id already stored leaves the stored one as it is (a start repeated
/// under an id derived from what started it starts once), and the unfinished sagas of a
/// correlation are found by it.
pub async fn repeated_insert_keeps_the_first_and_correlation_finds_it(
    store: Arc<dyn SagaStore>,
    events: SharedEventStore,
) {
    use crate::saga::SagaRecord;
    let _ = events;
    let now = chrono::Utc::now();
    let correlation = uuid::Uuid::now_v7();
    let first = SagaRecord::new(
        "Fulfil",
        serde_json::json!({"n": 1}),
        now,
        None,
        Some(correlation),
    );
    store.insert(&first).await.unwrap();
    let mut again = SagaRecord::new("Fulfil", serde_json::json!({"n": 2}), now, None, None);
    again.id = first.id;
    store.insert(&again).await.unwrap();
    let stored = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(
        stored.data,
        serde_json::json!({"n": 1}),
        "the first start stands"
    );
    assert_eq!(stored.correlation_id, Some(correlation));

    let other = SagaRecord::new("Fulfil", serde_json::json!({}), now, None, None);
    store.insert(&other).await.unwrap();
    let found = store.correlated(correlation).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].id, found[0].status),
        (first.id, SagaStatus::Running)
    );
    assert!(
        store
            .correlated(uuid::Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
}

/// An operator's cancellation: a waiting saga compensates what it did, its record keeps the
/// decision, and what cannot be cancelled (unknown, compensating or over, held by a worker) is
/// refused with a typed error, changing nothing.
pub async fn operator_cancel_compensates(store: Arc<dyn SagaStore>, events: SharedEventStore) {
    use crate::saga::Cancellation;
    let t = SagaTest::<Checkout>::with_stores(Arc::clone(&store), events);
    let id = t.start(Checkout::default()).await;
    t.run().await;
    t.assert_status(id, SagaStatus::Waiting).await;
    let decision = Cancellation::new("the customer withdrew the order", "alice");
    t.orchestrator().cancel(id, &decision).await.unwrap();
    let cancelled = t.status(id).await;
    assert_eq!(
        (cancelled.status, cancelled.awaiting.as_deref()),
        (SagaStatus::Compensating, None)
    );
    t.run().await;
    t.assert_status(id, SagaStatus::Compensated).await;
    assert_eq!(t.ran(id), ["request_payment", "undo request_payment"]);
    let saga = t.status(id).await;
    let recorded = saga.cancellation().expect("the decision is recorded");
    assert_eq!(
        (recorded.reason.as_str(), recorded.by.as_str()),
        ("the customer withdrew the order", "alice")
    );
    assert_eq!(
        saga.last_error.as_deref(),
        Some("cancelled by alice: the customer withdrew the order")
    );
    assert!(
        matches!(
            t.orchestrator().cancel(id, &decision).await,
            Err(SagaError::NotCancellable {
                status: SagaStatus::Compensated,
                ..
            })
        ),
        "a finished saga is not cancelled"
    );
    let unknown = uuid::Uuid::now_v7();
    assert!(matches!(
        t.orchestrator().cancel(unknown, &decision).await,
        Err(SagaError::NotFound { id }) if id == unknown
    ));

    // A saga a worker holds is refused until its lease is over.
    let held = t.start(Checkout::default()).await;
    let now = t.clock().now_for_tests();
    let claimed = store
        .claim("busy-worker", now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert!(claimed.iter().any(|s| s.id == held));
    match t.orchestrator().cancel(held, &decision).await {
        Err(SagaError::Busy { id, owner, .. }) => {
            assert_eq!((id, owner.as_str()), (held, "busy-worker"));
        }
        other => panic!("a held saga must be refused as busy, got {other:?}"),
    }
    let unchanged = t.status(held).await;
    assert_eq!(
        (unchanged.status, unchanged.version),
        (SagaStatus::Running, 1)
    );
    assert!(unchanged.cancellation().is_none());
    t.clock().advance(Duration::from_secs(31));
    t.orchestrator().cancel(held, &decision).await.unwrap();
    t.run().await;
    t.assert_status(held, SagaStatus::Compensated).await;
    assert!(t.ran(held).is_empty(), "nothing ran, so nothing is undone");

    let bad = Cancellation::new("a\u{0}b", "alice");
    let fresh = t.start(Checkout::default()).await;
    assert!(matches!(
        store.cancel(fresh, &bad, t.clock().now_for_tests()).await,
        Err(crate::Error::Unstorable { .. })
    ));
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
            handle_event_errors_are_typed, dead_workers_lease_expires, step_events_recorded_once,
            unstorable_saga_data_is_refused,
            repeated_insert_keeps_the_first_and_correlation_finds_it,
            started_sagas_finish_on_their_version, retired_or_edited_versions_park_the_saga,
            compensation_after_a_reorder_undoes_by_name, operator_cancel_compensates,
            save_many_decides_each_save_alone, several_workers_run_each_saga_once);
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

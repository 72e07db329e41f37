//! Sagas driven by the feed: a projection starts a saga for each `Placed` event (once, however
//! often the event is handled: runners that come and go, two runners, a reset that replays
//! the feed) and completes its awaited step with the `Paid` event of the same correlation, on
//! PostgreSQL and in memory.

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::projection::{CheckpointStore, MemoryCheckpointStore, ProjectionRunner, RunnerConfig};
use dtx::saga::{SagaError, SagaOrchestrator, SagaStatus, SagaStore, StepError, WorkerOptions};
use dtx::{
    DomainEvent, EventMetadata, EventStore, ExpectedVersion, MemoryEventStore, NewEvent,
    RecordedEvent, StreamId, UnitOfWork,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
/// An order was placed.
pub struct Placed {
    /// The order.
    pub order: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
/// An order was paid.
pub struct Paid {
    /// The order.
    pub order: String,
}

#[derive(Debug, Clone, DomainEvent)]
/// The shop's events.
pub enum ShopEvent {
    /// Placed.
    Placed(Placed),
    /// Paid.
    Paid(Paid),
}

#[derive(Debug, Default, Serialize, Deserialize)]
/// The saga the events drive.
pub struct Shipment {
    /// The order.
    pub order: String,
}

#[dtx::saga(name = "FeedShipment")]
#[allow(clippy::unused_async, reason = "steps are async")]
impl Shipment {
    #[step(await_event = "Paid", await_timeout_secs = 600)]
    async fn reserve(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[step]
    async fn ship(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

/// The projection that drives the shipments: no hand-written `handle_event` anywhere.
#[derive(Clone)]
struct Triggers {
    sagas: SagaOrchestrator,
}

#[dtx::projection(name = "shipment_triggers")]
impl Triggers {
    async fn placed(
        &self,
        placed: &Placed,
        event: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), SagaError> {
        let shipment = Shipment {
            order: placed.order.clone(),
        };
        self.sagas
            .start_on_event_in(uow, event, shipment)
            .await
            .map(drop)
    }

    async fn paid(
        &self,
        _paid: &Paid,
        event: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), SagaError> {
        self.sagas.deliver_from_feed_in(uow, event).await.map(drop)
    }
}

const ORDERS: usize = 40;

async fn append(store: &dyn EventStore, order: usize, correlation: Uuid, event: ShopEvent) {
    let stream = StreamId::new(format!("Order-{order}")).unwrap();
    let event = NewEvent::encode(&stream, &event, EventMetadata::correlated(correlation)).unwrap();
    store
        .append(&stream, ExpectedVersion::Any, vec![event])
        .await
        .unwrap();
}

async fn wait_until(what: &str, sagas: &SagaOrchestrator, done: impl Fn(u64, u64) -> bool) {
    let started = Instant::now();
    loop {
        let counts = sagas.counts().await.unwrap();
        let total: u64 = counts.values().sum();
        let count = |status| counts.get(&status).copied().unwrap_or(0);
        if done(total, count(SagaStatus::Completed)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_mins(2),
            "timed out waiting for {what}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sagas_follow_the_feed(
    store: Arc<dyn EventStore>,
    saga_store: Arc<dyn SagaStore>,
    checkpoints: Arc<dyn CheckpointStore>,
) {
    let sagas = SagaOrchestrator::builder(saga_store)
        .saga(<Shipment as dtx::saga::Saga>::definition())
        .build()
        .unwrap();
    let worker = sagas.worker(WorkerOptions {
        poll_interval: Duration::from_millis(10),
        ..WorkerOptions::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let working = tokio::spawn(async move {
        worker
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    let runner = || {
        ProjectionRunner::new(Arc::clone(&store), Arc::clone(&checkpoints))
            .config(RunnerConfig {
                poll_interval: Duration::from_millis(50),
                retry: dtx::Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(200),
                    dtx::Jitter::Equal,
                ),
                max_attempts: 50,
                lease: Duration::from_secs(1),
                ..RunnerConfig::default()
            })
            .projection(Triggers {
                sagas: sagas.clone(),
            })
    };
    let correlations: Vec<Uuid> = (0..ORDERS).map(|_| Uuid::now_v7()).collect();
    // Runners that come and go while the first orders come in (each finishes its batch and
    // gives its lease up when dropped).
    for (order, &correlation) in correlations.iter().enumerate().take(ORDERS / 2) {
        let placed = Placed {
            order: format!("o-{order}"),
        };
        append(&*store, order, correlation, placed.into()).await;
        if order % 5 == 0 {
            drop(runner().start().unwrap());
        }
    }
    // Two runners compete for the projection.
    let first = runner().start().unwrap();
    let second = runner().start().unwrap();
    for (order, &correlation) in correlations.iter().enumerate() {
        if order >= ORDERS / 2 {
            let placed = Placed {
                order: format!("o-{order}"),
            };
            append(&*store, order, correlation, placed.into()).await;
        }
        // Half the payments arrive at once, before their saga can await them.
        if order % 2 == 0 {
            let paid = Paid {
                order: format!("o-{order}"),
            };
            append(&*store, order, correlation, paid.into()).await;
        }
    }
    wait_until("every saga started", &sagas, |total, _| {
        total == ORDERS as u64
    })
    .await;
    for (order, &correlation) in correlations.iter().enumerate().filter(|(o, _)| o % 2 == 1) {
        let paid = Paid {
            order: format!("o-{order}"),
        };
        append(&*store, order, correlation, paid.into()).await;
    }
    wait_until("every saga completed", &sagas, |total, completed| {
        total == ORDERS as u64 && completed == ORDERS as u64
    })
    .await;

    // A reset replays every event: no saga starts twice, no finished saga is touched.
    first.stop().await;
    let replay = runner();
    replay.reset("shipment_triggers").await.unwrap();
    replay.run_once().await.unwrap();
    let counts = sagas.counts().await.unwrap();
    assert_eq!(counts.values().sum::<u64>(), ORDERS as u64, "{counts:?}");
    assert_eq!(counts.get(&SagaStatus::Completed), Some(&(ORDERS as u64)));
    // Each saga has the id derived from its Placed event.
    let placed = store
        .read_all(dtx::GlobalPosition::START, 1000)
        .await
        .unwrap();
    for event in placed.iter().filter(|e| e.event_type == "Placed") {
        let id = SagaOrchestrator::saga_id_for_event::<Shipment>(event.event_id);
        let record = sagas.status(id).await.unwrap();
        assert_eq!(record.status, SagaStatus::Completed);
        assert_eq!(record.correlation_id, event.metadata.correlation_id);
    }
    second.stop().await;
    stop.send(()).unwrap();
    working.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sagas_start_once_and_complete_from_the_feed() {
    sagas_follow_the_feed(
        Arc::new(MemoryEventStore::new()),
        Arc::new(dtx::saga::MemorySagaStore::new()),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sagas_start_once_and_complete_from_the_feed() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    sagas_follow_the_feed(
        Arc::new(store),
        Arc::new(dtx_postgres::PgSagaStore::new(pool.clone())),
        Arc::new(dtx_postgres::PgCheckpointStore::new(pool)),
    )
    .await;
}
